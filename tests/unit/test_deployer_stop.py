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


def _recorded(signals: list[tuple[str, int]], what: str, index: int, send):
    def recording(*args):
        signals.append((what, index))
        return send(*args)

    return recording


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
        signals: list[tuple[str, int]] = []  # what each replica was sent, and each wait for its exit, in order
        for index, replica in enumerate(replica_set.replicas):
            process = replica.process
            process.send_signal = _recorded(signals, "term", index, process.send_signal)
            process.kill = _recorded(signals, "kill", index, process.kill)
            process.wait = _recorded(signals, "wait", index, process.wait)
        started = time.monotonic()
        await backend.stop("stuck-1")
        elapsed = time.monotonic() - started
        assert all(r.process.returncode == -9 for r in replica_set.replicas)  # killed, none left running
        # one timeout for all, not one after another: every replica was sent SIGTERM before any was killed (one
        # after another: term 0, kill 0, term 1, ...). Ordered, not timed: an upper bound on the wall time failed
        # on a loaded machine. Each was killed only once the timeout was up (a lower bound load cannot break)
        # Nor all sent SIGTERM and then each waited its own timeout after the previous one's kill (term 0, 1, 2, wait
        # 0, kill 0, wait 1, kill 1, ...): every replica's wait for its exit had begun before any was killed
        sent = [event for event in signals if event[0] != "wait"]
        assert sorted(sent[:3]) == [("term", 0), ("term", 1), ("term", 2)], signals
        assert sorted(sent[3:]) == [("kill", 0), ("kill", 1), ("kill", 2)], signals
        first_kill = signals.index(next(event for event in signals if event[0] == "kill"))
        assert {("wait", i) for i in range(3)} <= set(signals[:first_kill]), signals
        assert elapsed >= 0.6, elapsed
        assert backend.sets == {}

    asyncio.run(scenario())


def test_a_replica_dying_while_its_set_starts_is_not_replaced_behind_the_start(tmp_path):
    """A first deploy (or a restore) shows its set while it starts; a replica failing its start must fail the
    start (a restore then says so), not be replaced by the supervisor first (under load that replacement won the
    race, downloaded the artifact again and the failed restore read Running). Once ready, dead replicas are
    replaced."""

    async def scenario() -> None:
        defaults = DeployerSettings()
        backend = LocalBackend(tmp_path, nats_request=None, scale_down_after=defaults.scale_down_after,
                               ready_timeout=defaults.ready_timeout, stop_timeout=0.6)
        dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await dead.wait()
        spawned: list[str] = []

        async def spawn(replica_set, replica_id):
            spawned.append(replica_id)
            return Replica(replica_id=replica_id, process=dead, started_at=time.monotonic())

        backend._spawn = spawn
        replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json",
                                 replicas=[Replica(replica_id="0", process=dead, started_at=time.monotonic())])
        # it came up (answered, lived past crash_stable_after): once ready, replaced at once, not after the
        # crash-loop back-off's delay (tests/unit/test_deployer_crash_backoff.py)
        replica_set.replicas[0].answered = {"status": "Running"}
        replica_set.replicas[0].started_at -= 60
        backend.sets["d-1"] = replica_set
        passes = 0
        supervise_pass = backend._supervise_pass

        async def counted() -> None:
            nonlocal passes
            await supervise_pass()
            passes += 1

        backend._supervise_pass = counted
        supervisor = asyncio.create_task(backend._supervise())
        async with asyncio.timeout(20):  # two passes over it, not a fixed sleep (on a slow host it could see none)
            while passes < 2:  # noqa: ASYNC110 - the supervisor's own passes, counted
                await asyncio.sleep(0.05)
        assert spawned == []  # starting: left to the start's wait
        replica_set.ready = True
        async with asyncio.timeout(20):
            while not spawned:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        supervisor.cancel()
        assert spawned  # ready: a dead replica is replaced

    asyncio.run(scenario())
