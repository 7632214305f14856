"""The embedded stack's servers and services die with their supervisor (shared/embedded/stack.py, Child.start: the
kernel's parent-death signal, asked for in the child between fork and exec). The window this closes is the child's
own start: a supervisor that dies while a child is between its fork and its exec."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

SUPERVISING = """
import os, signal, sys, time
from pathlib import Path
from shared import sched_hint
from shared.embedded import stack

work, pid_file, program, when, stop = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ask, slice_hint = sched_hint.parent_death_signal, sched_hint.request_path_slice


def waiting(call):  # in the child between fork and exec: the supervisor is killed while it waits here
    def late(*args):
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(1.0)
        return call(*args)
    return late


# "before": before the child asks for its death signal; "after": after it asked (its last step before the exec)
if when == "before":
    sched_hint.parent_death_signal = waiting(ask)
else:
    sched_hint.request_path_slice = waiting(slice_hint)

# up()'s own handlers, which a forked child has until its exec: they only set the supervisor's flag
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda signum, frame: None)
child = stack.Child("a-server", [program], dict(os.environ), work / "child.log", stop_signal=stop, slice_us=1000)
child.start()
time.sleep(60)
"""


# the services' stop signal in one window, PostgreSQL's (a fast shutdown) in the other: the handler a child must drop
# before the exec is its own stop signal's
@pytest.mark.parametrize("when, stop", [("before", signal.SIGTERM), ("after", signal.SIGINT)],
                         ids=["before-sigterm", "after-sigint"])
def test_a_child_whose_supervisor_dies_before_its_exec_does_not_run_on(tmp_path, when, stop):
    """A supervisor killed before the child asked for its death signal (the kernel then sends nothing to a child
    already reparented), or after it asked and before the exec (the supervisor's handler, still the child's then,
    took the signal), left the server or service running with no supervisor, for good. Now the child takes its stop
    signal's default action (SIGINT: PostgreSQL's), asks, then checks its parent, and exits when the supervisor is
    gone. Before, the stand-in server ran on in both windows (`when` the supervisor dies)."""
    program = tmp_path / "server.sh"
    program.write_text("#!/bin/sh\nexec sleep 60\n")
    program.chmod(0o755)
    pid_file = tmp_path / "child.pid"
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISING, str(tmp_path), str(pid_file), str(program),
                                   when, str(int(stop))], cwd=Path(__file__).resolve().parents[2])
    child = None
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and supervisor.poll() is None, "the child was never forked"
            time.sleep(0.02)
        child = int(pid_file.read_text())
        supervisor.kill()  # SIGKILL, while the child waits (before or after its ask)
        supervisor.wait(10)

        def running() -> bool:
            try:
                return psutil.Process(child).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 10  # its wait (1 s) and an exec
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(), "the child runs on with its supervisor gone"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
