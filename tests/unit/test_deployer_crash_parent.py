"""Replicas die with the deployer (services/deployer/backend.py, LocalBackend._spawn: the kernel's parent-death
signal), so a deployer killed and restarted leaves no replica that no row names: the restore starts each active
deployment again and nothing else runs. The window this closes is the replica's own start, between fork and exec."""

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

SPAWNING = """
import asyncio, os, signal, sys, time
from pathlib import Path
from services.deployer import backend
from shared import sched_hint

work, pid_file, program, when = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ask, slice_hint = sched_hint.parent_death_signal, sched_hint.request_path_slice


def waiting(call):  # in the replica between fork and exec: the deployer is killed while it waits here
    def late(*args):
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(1.0)
        return call(*args)
    return late


# "before": before the replica asks for its death signal; "after": after it asked (its last step before the exec)
if when == "before":
    sched_hint.parent_death_signal = waiting(ask)
else:
    sched_hint.request_path_slice = waiting(slice_hint)


async def deployer():
    # the deployer's own SIGTERM handler (shared/service.py), which its forked children have until their exec
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
    local = backend.LocalBackend(work, None, scale_down_after=10, ready_timeout=10, stop_timeout=1,
                                 request_slice_us=1000)
    (work / "x-5").mkdir()
    await local._spawn(backend.ReplicaSet(name="x-5", spec_path=work / "spec.json"), "r1")


sys.executable = program  # the replica: a process that runs until it is stopped
asyncio.run(deployer())
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_replica_whose_deployer_dies_before_its_exec_does_not_run_on(tmp_path, when):
    """Replicas die with the deployer (LocalBackend._spawn: the kernel's parent-death signal), so a restart leaves
    none that no row names; but the replica asks for that signal between fork and exec, and a deployer killed
    before it asked (the kernel then sends nothing) or before the exec (the deployer's own SIGTERM handler, still
    the child's then, took the signal) left the replica running, reparented, for good. Now the child takes SIGTERM's
    default action, asks, then checks its parent, and exits when the deployer is gone. Before, the stand-in replica
    ran on, in both windows (`when` the deployer dies: before the ask, or after it and before the exec)."""
    program = tmp_path / "replica.sh"
    program.write_text("#!/bin/sh\nexec sleep 60\n")
    program.chmod(0o755)
    pid_file = tmp_path / "replica.pid"
    deployer = subprocess.Popen([sys.executable, "-c", SPAWNING, str(tmp_path), str(pid_file), str(program), when],
                                cwd=Path(__file__).resolve().parents[2])
    replica = None
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and deployer.poll() is None, "the replica was never forked"
            time.sleep(0.02)
        replica = int(pid_file.read_text())
        deployer.kill()  # SIGKILL, while the replica waits (before or after its ask)
        deployer.wait(10)

        def running() -> bool:
            try:
                return psutil.Process(replica).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 10  # its wait (1 s) and an exec
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(), "the replica runs on with its deployer gone"
    finally:
        if deployer.poll() is None:
            deployer.kill()
        if replica is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(replica, signal.SIGKILL)
