"""Loaded by every Python process of a stack started with this folder on PYTHONPATH (bench/tail_stages.py); does
something only when RAILYARD_BENCH_GC names a folder. First bench/gc_trace_site's sitecustomize (every collection,
the replica's log steps: <folder>/gc-<pid>.tsv); then, in the gateway and an engine replica, a stamp at each stage
of a batch-1 request on CLOCK_MONOTONIC (the load generator's clock), one line `kind, start, duration` each in
<folder>/stage-<pid>.tsv, written in one piece every STAGE_FLUSH s (not a write a stamp: the stamps cost ~1 us
each). Kinds (STAGES): the gateway's raw ASGI inference entry to its answer sent (1), the body read (2), its parse
(3: records, Arrow or OIP v2), the engine asked until its answer is in (4), the answer encoded (5: the seed's
records JSON, OIP v2 JSON or an Arrow file); a message written to nats-server at once (`write_now`: 6 in the gateway,
the request; 12 in the replica, the answer); the replica's subscription callback (11: the request handed over to
it until it returns, the answer written) and its fast lane's answer (13)."""

import os
import runpy

if os.environ.get("RAILYARD_BENCH_GC"):
    import sys
    import time

    _GC_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gc_trace_site",
                            "sitecustomize.py")
    runpy.run_path(_GC_SITE, run_name="gc_trace_site")

    STAGE_FLUSH = 0.5
    _CLOCK = time.monotonic
    _EVENTS: list[str] = []
    _OUT: list = []
    _LAST = [0.0]

    def _stamp(kind: int, started: float, took: float) -> None:
        _EVENTS.append(f"{kind}\t{started:.7f}\t{took:.7f}\n")
        now = started + took
        if now - _LAST[0] >= STAGE_FLUSH:
            _LAST[0] = now
            if not _OUT:
                try:
                    cmdline = open("/proc/self/cmdline", "rb").read().replace(b"\0", b" ").decode()  # noqa: SIM115
                    handle = open(os.path.join(os.environ["RAILYARD_BENCH_GC"], f"stage-{os.getpid()}.tsv"),
                                  "a")  # noqa: SIM115
                except OSError:
                    return
                handle.write(f"# {cmdline}\n")
                _OUT.append(handle)
            _OUT[0].write("".join(_EVENTS))
            _OUT[0].flush()
            _EVENTS.clear()

    def _wrap(owner, attribute: str, kind: int) -> None:  # noqa: ANN001
        import functools
        import inspect

        function = getattr(owner, attribute)
        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def stamped(*args, **kwargs):  # noqa: ANN202
                started = _CLOCK()
                try:
                    return await function(*args, **kwargs)
                finally:
                    _stamp(kind, started, _CLOCK() - started)
        else:
            @functools.wraps(function)
            def stamped(*args, **kwargs):  # noqa: ANN202
                started = _CLOCK()
                try:
                    return function(*args, **kwargs)
                finally:
                    _stamp(kind, started, _CLOCK() - started)
        setattr(owner, attribute, stamped)

    try:
        _CMD = open("/proc/self/cmdline", "rb").read()  # noqa: SIM115
    except OSError:
        _CMD = b""
    _GATEWAY = b"services.gateway" in _CMD
    _REPLICA = b"services.engine.replica" in _CMD

    def _gateway_inference(module) -> None:  # noqa: ANN001
        call = module.InferenceFastPath.__call__

        async def entry(self, scope, receive, send) -> None:  # noqa: ANN001 - uvicorn calls the app without
            started = _CLOCK()  # arguments to tell a factory: a TypeError says it is not one, as the original's
            try:
                return await call(self, scope, receive, send)
            finally:
                _stamp(1, started, _CLOCK() - started)
        module.InferenceFastPath.__call__ = entry
        _wrap(module, "read_request_body", 2)
        _wrap(module, "_read_body", 3)
        _wrap(module, "_ask_engine", 4)
        _wrap(module, "seed_records_json", 5)
        _wrap(module, "to_ipc_file", 5)

    def _gateway_oip(module) -> None:  # noqa: ANN001
        _wrap(module, "parse_request", 3)
        _wrap(module, "encode_response", 5)

    def _nats_direct(module) -> None:  # noqa: ANN001
        _wrap(module, "write_now", 6 if _GATEWAY else 12)

    def _batching(module) -> None:  # noqa: ANN001
        _wrap(module.RequestBatcher, "submit", 11)

    def _fast_lane(module) -> None:  # noqa: ANN001
        _wrap(module.FastLane, "answer", 13)

    _HOOKS = {}
    if _GATEWAY:
        _HOOKS = {"services.gateway.inference": _gateway_inference, "services.gateway.oip": _gateway_oip,
                  "shared.nats_direct": _nats_direct}
    elif _REPLICA:
        _HOOKS = {"shared.nats_direct": _nats_direct, "services.engine.batching": _batching,
                  "services.engine.fast_lane": _fast_lane}
    if _HOOKS:
        import importlib.abc
        from importlib.util import find_spec

        class _After(importlib.abc.MetaPathFinder):
            """Wraps a hooked module's functions once it is imported."""

            def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
                hook = _HOOKS.pop(fullname, None)
                if hook is None:
                    return None
                sys.meta_path.remove(self)
                try:
                    spec = find_spec(fullname)
                finally:
                    if _HOOKS:
                        sys.meta_path.insert(0, self)
                loader = spec.loader
                run = loader.exec_module

                def exec_module(module) -> None:  # noqa: ANN001
                    run(module)
                    hook(module)
                loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, _After())
