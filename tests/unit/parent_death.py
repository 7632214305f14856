"""What the parent-death tests share (test_stack_parent_death.py: the embedded stack's servers and services;
test_deployer_crash_parent.py: the deployer's replicas): a parent process, run from a script of the test's, forks a
child that waits between its fork and its exec, before or after it asks for its parent-death signal
(shared/sched_hint.py); the parent is killed while the child waits, and the child must not run on."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

WAITING = """
import os, sys, time
from pathlib import Path
from shared import sched_hint

pid_file, when = sys.argv[2], sys.argv[4]
ask, slice_hint = sched_hint.parent_death_signal, sched_hint.request_path_slice


def waiting(call):  # in the child between fork and exec: the parent is killed while it waits here
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
"""
"""The start of a parent's script (`python -c`, argv: work dir, pid file, the child's program, `when`, then the
script's own): the child writes its pid and waits 1 s at the step `when` names."""


def assert_the_child_dies_with_its_parent(tmp_path: Path, script: str, when: str, *args: str, child: str,
                                          parent: str) -> None:
    """Run WAITING + `script` as the parent (its child's program: a shell that sleeps 60 s), kill it (SIGKILL) while
    its child waits, and fail if the child still runs 10 s later. `child`, `parent`: their names in the failures."""
    program = tmp_path / f"{child}.sh"
    program.write_text("#!/bin/sh\nexec sleep 60\n")
    program.chmod(0o755)
    pid_file = tmp_path / f"{child}.pid"
    parent_process = subprocess.Popen([sys.executable, "-c", WAITING + script, str(tmp_path), str(pid_file),
                                       str(program), when, *args], cwd=Path(__file__).resolve().parents[2])
    pid = None
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent_process.poll() is None, f"the {child} was never forked"
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        parent_process.kill()  # SIGKILL, while the child waits (before or after its ask)
        parent_process.wait(10)

        def running() -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 10  # its wait (1 s) and an exec
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(), f"the {child} runs on with its {parent} gone"
    finally:
        if parent_process.poll() is None:
            parent_process.kill()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
