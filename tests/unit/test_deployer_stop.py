"""Stopping a replica set (services/deployer/backend.py): its replicas drain at once, each killed past
stop_timeout, so an undeploy of N replicas takes the slowest one's time, not the sum. Real child processes that
ignore SIGTERM stand for replicas stuck draining."""

from __future__ import annotations

import asyncio
import sys
import time

from services.deployer.backend import LocalBackend, Replica, ReplicaSet
from shared.settings import DeployerSettings

STUCK = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


async def _stuck_replica(index: int) -> Replica:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", STUCK, stdout=asyncio.subprocess.PIPE)
    assert await process.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    return Replica(replica_id=str(index), process=process, started_at=time.monotonic())


def test_a_sets_stuck_replicas_are_killed_together_after_one_stop_timeout(tmp_path):
    """Three replicas that do not stop on SIGTERM: each waited its own timeout after the previous one's, 3 x the
    timeout (3 x 20 s with the default) before the undeploy answered; now they are killed together after one."""

    async def scenario() -> None:
        defaults = DeployerSettings()
        backend = LocalBackend(tmp_path, nats_request=None, scale_down_after=defaults.scale_down_after,
                               ready_timeout=defaults.ready_timeout, stop_timeout=0.6)
        replica_set = ReplicaSet(name="stuck-1", spec_path=tmp_path / "spec.json",
                                 replicas=[await _stuck_replica(i) for i in range(3)])
        backend.sets["stuck-1"] = replica_set
        started = time.monotonic()
        await backend.stop("stuck-1")
        elapsed = time.monotonic() - started
        assert all(r.process.returncode == -9 for r in replica_set.replicas)  # killed, none left running
        assert 0.6 <= elapsed < 1.5, elapsed  # one ~0.6 s timeout, not three
        assert backend.sets == {}

    asyncio.run(scenario())
