"""Loaded by every Python process of a stack started with this folder on PYTHONPATH (bench/tail_gc.py); does
something only when RAILYARD_BENCH_GC names a folder. Each garbage collection's generation, start
(CLOCK_MONOTONIC, the load generator's clock), duration and objects collected go to <folder>/gc-<pid>.tsv, one line
an event, with the process's command line first. In an engine replica the log batcher's steps are written the same
way, their kind in place of the generation (SPANS: 10 + their index; + 100 when run off the event loop's thread):
the segment's table, its Parquet write, the rows' encoding, the PUT and the publish (the last two awaited, so
their spans include waiting), and inside them `build_batch`, `drop_oversized`, `encode_segment_buffer`,
`describe` and `sort_by_time` (SPANS_INNER: 20 + their index); a step the module no longer has is left out. A
step's line also holds its thread's CPU seconds, minor page faults and context switches during it.

RAILYARD_BENCH_SKIP (diagnostics only: the rows are not logged) leaves out the engine segment's PUT (`put`), the
publish of its description (`publish`: the log store then indexes nothing) or both (`both`), to tell each one's
share of what a flush costs the requests beside it (docs/performance.md item 86)."""

import os

if os.environ.get("RAILYARD_BENCH_GC"):
    import gc
    import resource
    import sys
    import threading
    import time

    _CLOCK = time.monotonic
    _STARTED = [0.0]
    _FILE = []
    SPANS = ("_table", "_segment", "_encode", "put", "_publish")
    SPANS_INNER = ("build_batch", "drop_oversized", "encode_segment_buffer", "describe", "sort_by_time")
    SKIP = os.environ.get("RAILYARD_BENCH_SKIP", "")

    def _usage() -> tuple[float, int, int]:
        """This thread's CPU seconds, minor faults and context switches so far."""
        used = resource.getrusage(resource.RUSAGE_THREAD)
        return time.thread_time(), used.ru_minflt, used.ru_nvcsw + used.ru_nivcsw

    def _write(kind: int, started: float, took: float, count: int,
               usage: tuple[float, int, int] = (0.0, 0, 0)) -> None:
        if not _FILE:
            try:
                cmdline = open("/proc/self/cmdline", "rb").read().replace(b"\0", b" ").decode()  # noqa: SIM115
                name = os.path.join(os.environ["RAILYARD_BENCH_GC"], f"gc-{os.getpid()}.tsv")
                handle = open(name, "a")  # noqa: SIM115
            except OSError:
                return
            handle.write(f"# {cmdline}\n")
            _FILE.append(handle)
        _FILE[0].write(f"{kind}\t{started:.6f}\t{took:.6f}\t{count}\t{usage[0]:.6f}\t{usage[1]}\t{usage[2]}\n")
        _FILE[0].flush()

    def _on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            _STARTED[0] = _CLOCK()
        else:
            _write(info["generation"], _STARTED[0], _CLOCK() - _STARTED[0], info["collected"])

    gc.callbacks.append(_on_collection)

    def _spans(module) -> None:  # noqa: ANN001
        import functools
        import inspect

        batcher = module.LogBatcher
        main = threading.main_thread()

        def wrap(owner, attribute: str, kind: int) -> None:  # noqa: ANN001
            function = getattr(owner, attribute)
            if inspect.iscoroutinefunction(function):
                @functools.wraps(function)
                async def spanned(*args, **kwargs):  # noqa: ANN202
                    started = _CLOCK()
                    try:
                        return await function(*args, **kwargs)
                    finally:
                        _write(kind, started, _CLOCK() - started, 0)
            else:
                @functools.wraps(function)
                def spanned(*args, **kwargs):  # noqa: ANN202
                    before = _usage()
                    started = _CLOCK()
                    try:
                        return function(*args, **kwargs)
                    finally:
                        took = _CLOCK() - started
                        after = _usage()
                        off = threading.current_thread() is not main
                        spent = tuple(a - b for a, b in zip(after, before, strict=True))
                        _write(kind + 100 * off, started, took, 0, spent)
            setattr(owner, attribute, spanned)

        for index, name in enumerate(SPANS):
            if name != "put" and hasattr(batcher, name):
                wrap(batcher, name, 10 + index)
        for index, name in enumerate(SPANS_INNER):
            if hasattr(module, name):
                wrap(module, name, 20 + index)
        original = batcher._store_segment

        async def skipped(*args, **kwargs):  # noqa: ANN202
            return None

        @functools.wraps(original)
        async def store(self, *args, **kwargs):  # noqa: ANN001, ANN202
            objects = self.objects
            if SKIP in ("publish", "both") and not getattr(self, "_unpublished", False):
                publish = self._publish

                async def unpublished(payload, requests, segment=False):  # noqa: ANN001, ANN202
                    return None if segment else await publish(payload, requests, segment)
                self._publish, self._unpublished = unpublished, True
            if objects is not None and not getattr(objects, "_spanned", False):
                if SKIP in ("put", "both"):
                    objects.put_bytes = skipped
                wrap(objects, "put_bytes", 10 + SPANS.index("put"))
                objects._spanned = True
            return await original(self, *args, **kwargs)
        batcher._store_segment = store

    try:
        _REPLICA = b"services.engine.replica" in open("/proc/self/cmdline", "rb").read()  # noqa: SIM115
    except OSError:
        _REPLICA = False
    if _REPLICA:
        import importlib.abc

        class _After(importlib.abc.MetaPathFinder):
            """Wraps services.engine.logbatcher's steps once it is imported."""

            def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
                if fullname != "services.engine.logbatcher":
                    return None
                sys.meta_path.remove(self)
                from importlib.util import find_spec

                spec = find_spec(fullname)
                loader = spec.loader
                run = loader.exec_module

                def exec_module(module) -> None:  # noqa: ANN001
                    run(module)
                    _spans(module)
                loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, _After())
