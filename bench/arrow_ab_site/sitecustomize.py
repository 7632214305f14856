"""Loaded by every Python process of a stack started by bench/arrow_ab.py (this folder on PYTHONPATH); does something
only when its BENCH_* variable is set, so an arm can change what the stack's settings cannot:
- BENCH_NATS_ENV (`GOGC=400,GOMEMLIMIT=96MiB`): nats-server's own environment (the supervisor's `nats_server` spec),
  not SeaweedFS's, which an exported variable would reach too;
- BENCH_WEED_ARGS (`-flag=value,-flag`): more `weed server` flags;
- BENCH_WRITES_AT_ONCE (`1`): an engine replica's segment writes under way at once (services/engine/logbatcher.py);
- BENCH_SPILL_FACTOR (`16`): how many times `engine_segment_bytes` a flush may hold and still be written as a segment
  (logbatcher.SPILL_FACTOR; more goes through the stream as rows)."""

import os

try:
    _CMDLINE = open("/proc/self/cmdline", "rb").read().split(b"\0")  # noqa: SIM115 - read once at start
except OSError:
    _CMDLINE = []

if b"shared.cli" in _CMDLINE and b"up" in _CMDLINE and (os.environ.get("BENCH_NATS_ENV")
                                                         or os.environ.get("BENCH_WEED_ARGS")):
    from shared.embedded import servers as _servers

    _nats, _weed = _servers.nats_server, _servers.seaweedfs_server
    _nats_env = dict(item.split("=", 1) for item in filter(None, os.environ.get("BENCH_NATS_ENV", "").split(",")))
    _weed_args = list(filter(None, os.environ.get("BENCH_WEED_ARGS", "").split(",")))

    def _nats_server(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        spec = _nats(*args, **kwargs)
        spec.env = {**spec.env, **_nats_env}
        return spec

    def _seaweedfs_server(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        spec = _weed(*args, **kwargs)
        spec.argv = [*spec.argv, *_weed_args]
        return spec

    _servers.nats_server, _servers.seaweedfs_server = _nats_server, _seaweedfs_server

if b"services.engine.replica" in _CMDLINE and os.environ.get("BENCH_WRITES_AT_ONCE"):
    import services.engine.logbatcher as _logbatcher

    _logbatcher.WRITES_AT_ONCE = int(os.environ["BENCH_WRITES_AT_ONCE"])

if b"services.engine.replica" in _CMDLINE and os.environ.get("BENCH_SPILL_FACTOR"):
    import services.engine.logbatcher as _logbatcher

    _logbatcher.SPILL_FACTOR = int(os.environ["BENCH_SPILL_FACTOR"])

if b"services.engine.replica" in _CMDLINE and os.environ.get("BENCH_SPILL_LOG"):
    # each flush that goes through the stream because more than SPILL_FACTOR x the segment bytes were gathered while
    # segments were being written, and each segment write of more than 0.3 s, in the replica's log ("bench:" lines)
    import logging as _logging
    import time as _time

    import services.engine.logbatcher as _lb

    _bench_log = _logging.getLogger("railyard.engine")
    _flush, _store = _lb.LogBatcher.flush, _lb.LogBatcher._store_segment

    async def _flush_counted(self):  # noqa: ANN001, ANN202
        if self.objects is not None and self.pending_bytes > _lb.SPILL_FACTOR * self.flush_bytes:
            _bench_log.warning("bench: spill %d bytes, %d writes under way", self.pending_bytes, len(self.writes))
        if self.objects is not None and _time.monotonic() < self.segments_after:
            _bench_log.warning("bench: backoff rows %d bytes", self.pending_bytes)
        return await _flush(self)

    async def _store_timed(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        began = _time.monotonic()
        try:
            return await _store(self, *args, **kwargs)
        finally:
            if _time.monotonic() - began > 0.3:
                _bench_log.warning("bench: slow segment write %.2f s", _time.monotonic() - began)

    _lb.LogBatcher.flush, _lb.LogBatcher._store_segment = _flush_counted, _store_timed
