"""A test process's session stack stopped after the process has gone, not on its last test's path.

The session's stack (tests/conftest.py's `stack` fixture) is stopped when the session ends, in the teardown of the
process's last test: SIGTERM, then `railyard up`'s graceful stop of ten services and three servers (3.5-4 s quiet,
up to ~10 s loaded), and its folder removed. Under `make test` (RAILYARD_TEST_STACK_STOP_LATER=1) nothing waits for
that stop: no test reads the stack after it, and the run is over once both workers are done. The stack is sent its
SIGTERM there and then, as before, and a process of its own (its own session: the worker's end does not reach it)
waits for the supervisor to exit (SIGKILL after the same 90 s grace as RunningStack.stop), then removes the folder.
The supervisor's servers and services die with it (their parent-death signal); the ports' leases end with the test
process (tests/stack.py: a lease whose process is gone is free).

    python -m tests.stack_stop_later PID START_TIME FOLDER [GRACE]"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

GRACE = 90.0  # RunningStack.stop's
VARIABLE = "RAILYARD_TEST_STACK_STOP_LATER"


def _running(pid: int, started: float) -> bool:
    """pid is still the supervisor (the same start time: not a process that took its pid) and not a zombie."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_later(process: subprocess.Popen, folder: Path, grace: float = GRACE) -> subprocess.Popen:
    """SIGTERM to the stack's supervisor now; the wait for its exit and the folder's removal left to a process of
    their own, which is returned (nobody needs to wait for it)."""
    started = psutil.Process(process.pid).create_time() if process.poll() is None else 0.0
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return subprocess.Popen([sys.executable, "-m", "tests.stack_stop_later", str(process.pid), repr(started),
                             str(folder), str(grace)], cwd=Path(__file__).resolve().parent.parent,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def finish(pid: int, started: float, folder: Path, grace: float = GRACE) -> None:
    """Until the supervisor has exited (SIGKILL after `grace` seconds, as RunningStack.stop), then the folder
    removed."""
    deadline = time.monotonic() + grace
    while _running(pid, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(pid, started):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _running(pid, started) and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    finish(int(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else GRACE)
