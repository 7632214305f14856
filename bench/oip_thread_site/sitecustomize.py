"""Loaded by every Python process of a stack started by bench/oip_thread.py (this folder on PYTHONPATH); does something
only in the gateway, and only when RAILYARD_BENCH_OIP_THREAD is set: SIGUSR1 switches its OIP reading to the next
variant of bench/oip_thread.py's VARIANTS (today's simdjson on the loop; the whole parse in a thread; the `data` list
read by pyarrow's CSV reader, which lets go of the GIL, in a thread), so the variants alternate on one stack."""

import os

try:
    _CMDLINE = open("/proc/self/cmdline", "rb").read().split(b"\0")  # noqa: SIM115 - read once at start
except OSError:
    _CMDLINE = []

if b"services.gateway" in _CMDLINE and os.environ.get("RAILYARD_BENCH_OIP_THREAD"):
    import signal
    import sys
    import threading
    import time

    _STATE = {"variant": 0, "installed": False}

    def _install() -> None:
        while not hasattr(sys.modules.get("services.gateway.inference"), "InferenceFastPath"):
            time.sleep(0.05)
        from bench.oip_thread import install

        _STATE["switch"] = install()
        _STATE["installed"] = True

    threading.Thread(target=_install, daemon=True).start()

    def _next(signum, frame) -> None:  # noqa: ANN001, ARG001
        if _STATE["installed"]:
            _STATE["variant"] = (_STATE["variant"] + 1) % 3
            _STATE["switch"](_STATE["variant"])

    signal.signal(signal.SIGUSR1, _next)
