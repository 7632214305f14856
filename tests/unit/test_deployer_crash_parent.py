"""Replicas die with the deployer (services/deployer/backend.py, LocalBackend._spawn: the kernel's parent-death
signal), so a deployer killed and restarted leaves no replica that no row names: the restore starts each active
deployment again and nothing else runs. The window this closes is the replica's own start, between fork and exec."""

from __future__ import annotations

import pytest

from tests.unit.parent_death import assert_the_child_dies_with_its_parent

SPAWNING = """
import asyncio, signal
from services.deployer import backend

work, program = Path(sys.argv[1]), sys.argv[3]


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
    assert_the_child_dies_with_its_parent(tmp_path, SPAWNING, when, child="replica", parent="deployer")
