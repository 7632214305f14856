"""Loaded by every Python process of a stack started with this folder on PYTHONPATH (bench/gateway_meter.py); does
something only in the gateway, and only when RAILYARD_BENCH_METER is set: wraps the gateway's request functions
with the thread's CPU clock (a coroutine's own steps, not the time it waits), counting between SIGUSR1 (start)
and SIGUSR2 (stop, then the totals go to $RAILYARD_BENCH_METER/meter-<pid>.json)."""

import os

try:
    _CMDLINE = open("/proc/self/cmdline", "rb").read().split(b"\0")  # noqa: SIM115 - read once at start
except OSError:
    _CMDLINE = []

if b"services.gateway" in _CMDLINE and os.environ.get("RAILYARD_BENCH_METER"):
    import functools
    import json
    import signal
    import sys
    import threading
    import time

    _OUT = os.environ["RAILYARD_BENCH_METER"]
    _CLOCK = time.thread_time_ns
    _TOTALS: dict[str, int] = {}
    _ON = [False]

    def _add(name: str, started: int) -> None:
        if _ON[0]:
            _TOTALS[name] = _TOTALS.get(name, 0) + _CLOCK() - started

    class _Metered:
        def __init__(self, coro, name: str) -> None:  # noqa: ANN001
            self.coro, self.name = coro, name

        def __await__(self):  # noqa: ANN204
            coro, name, value, error = self.coro, self.name, None, None
            while True:
                started = _CLOCK()
                try:
                    step = coro.throw(error) if error is not None else coro.send(value)
                except StopIteration as done:
                    _add(name, started)
                    return done.value
                except BaseException:
                    _add(name, started)
                    raise
                _add(name, started)
                value, error = None, None
                try:
                    value = yield step
                except BaseException as exc:  # noqa: BLE001 - handed to the coroutine, as a task would
                    error = exc

    def _wrap_async(owner, attribute: str, name: str) -> None:  # noqa: ANN001
        function = getattr(owner, attribute)

        @functools.wraps(function)
        async def metered(*args, **kwargs):  # noqa: ANN202
            return await _Metered(function(*args, **kwargs), name)

        setattr(owner, attribute, metered)

    def _wrap(owner, attribute: str, name: str) -> None:  # noqa: ANN001
        function = getattr(owner, attribute)

        @functools.wraps(function)
        def metered(*args, **kwargs):  # noqa: ANN202
            started = _CLOCK()
            try:
                return function(*args, **kwargs)
            finally:
                _add(name, started)

        setattr(owner, attribute, metered)

    def _patch() -> None:
        while not hasattr(sys.modules.get("services.gateway.inference"), "InferenceFastPath"):
            time.sleep(0.05)
        from uvicorn.protocols.http import httptools_impl

        import services.gateway.coalesce as coalesce
        import services.gateway.inference as inference
        import services.gateway.oip as oip

        _wrap_async(inference, "read_request_body", "body read")
        _wrap_async(inference.Inference, "run_oip", "run_oip (all of it on the request's task)")
        _wrap_async(inference.Inference, "run", "run (records, Arrow; all of it on the request's task)")
        _wrap_async(inference, "_ask_engine", "bus request")
        _wrap(oip, "parse_request", "OIP parse_request")
        _wrap(oip, "_read_json_fast", "OIP JSON read (simdjson)")
        _wrap(oip, "_parse", "simdjson parse")
        _wrap(oip, "encode_response", "OIP answer")
        _wrap(inference, "read_records", "records read")
        _wrap(inference, "seed_records_json", "records answer")
        _wrap(coalesce, "to_ipc_stream", "Arrow IPC write (to the engine)")
        _wrap(coalesce, "from_ipc", "Arrow IPC read (the answer)")
        _wrap(httptools_impl.HttpToolsProtocol, "data_received", "uvicorn feeding httptools")
        _wrap_async(httptools_impl.RequestResponseCycle, "send", "uvicorn send (the answer's head and body)")
        _wrap(inference, "_read_body", "records / Arrow body read into a table")
        _wrap(inference, "to_ipc_stream", "Arrow answer write (stream)")
        _wrap(inference, "to_ipc_file", "Arrow answer write (file)")
        _wrap_async(inference.RouteCache, "reach", "route and membership")
        _wrap_async(inference.RouteCache, "ask", "ask (all of the engine hop on the request's task)")
        import nats.protocol.parser as nats_parser

        _wrap_async(nats_parser.Parser, "parse", "nats-py parser (answers read)")

    threading.Thread(target=_patch, daemon=True).start()

    def _start(signum, frame) -> None:  # noqa: ANN001, ARG001
        _TOTALS.clear()
        _TOTALS["process"] = -time.process_time_ns()
        _ON[0] = True

    def _stop(signum, frame) -> None:  # noqa: ANN001, ARG001
        _ON[0] = False
        _TOTALS["process"] += time.process_time_ns()
        path = os.path.join(_OUT, f"meter-{os.getpid()}.json")
        with open(path + ".part", "w") as out:
            json.dump(_TOTALS, out)
        os.replace(path + ".part", path)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
