"""A replica that never answers after its start (services/deployer/backend.py, _start_overdue / _give_up;
docs/deployment.md, "A replacement that never answers"): the supervisor's replacements (after an exit or a hung kill)
and autoscaling's added replicas have deployer.ready_timeout to answer a status probe, as a deploy's own replicas
have; past it, after one last probe of its own, the replica is killed (SIGTERM, SIGKILL after the grace), reported
`Error` with the reason, and replaced as one that exited before it came up (crash-loop back-off). Before 2026-12-05
such a replica read `Starting` for ever: liveness counts only replicas that answered before, and the supervisor
replaced only replicas that exited or hung. A redeploy's new set that never answers is the start's to bound: it is
stopped and the running set keeps serving (checked here too). Stand-in processes and bus; fake clock."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import SimpleNamespace

import nats.errors
import pytest

import services.deployer.backend as backend_module
from services.deployer.backend import LIVENESS_PROBE_WAIT, LocalBackend, Replica, ReplicaSet
from services.deployer.handlers import deployment_state
from tests.unit.test_deployer_liveness import Process, _pass
from tests.unit.test_deployer_replica_status import RUNNING, Bus

READY = 30.0


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(backend_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _world(tmp_path, monkeypatch, clock: list[float], *, liveness_timeout: float = 0.0,
           epoch: list | None = None) -> SimpleNamespace:
    """Deployment d-1: replica "0" came up and exits now; its replacements run and answer nothing (loading, or a
    load that hangs: the bus times out) until the test says otherwise (`bus.answers`)."""
    bus = Bus()
    probes: list[float] = []

    async def request(subject: str, payload: bytes, wait: float) -> bytes:
        probes.append(wait)
        return await bus.request(subject, payload, wait)

    backend = LocalBackend(tmp_path, request, scale_down_after=60, ready_timeout=READY, stop_timeout=0.05,
                           liveness_timeout=liveness_timeout, liveness_probes=3,
                           bus_epoch=(lambda: epoch[0]) if epoch is not None else (lambda: 0))
    first = Replica(replica_id="0", process=Process(100), started_at=0.0, answered=RUNNING)
    first.process.returncode = 1
    replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json", ready=True, replicas=[first])
    backend.sets["d-1"] = replica_set
    spawned: list[Replica] = []

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        replica = Replica(replica_id=replica_id, process=Process(101 + len(spawned)), started_at=clock[0])
        bus.answers[replica_id] = nats.errors.TimeoutError()
        spawned.append(replica)
        return replica

    monkeypatch.setattr(backend, "_spawn", spawn)
    return SimpleNamespace(backend=backend, bus=bus, set=replica_set, spawned=spawned, probes=probes)


async def _run_for(backend: LocalBackend, clock: list[float], seconds: float, step: float = 0.5) -> None:
    end = clock[0] + seconds
    while clock[0] < end - 1e-9:
        clock[0] = round(clock[0] + step, 6)
        await _pass(backend)


async def test_a_replacement_that_never_answers_is_killed_and_replaced(tmp_path, monkeypatch, clock, caplog):
    world = _world(tmp_path, monkeypatch, clock)
    caplog.set_level(logging.WARNING, logger="railyard.deployer.backend")
    await _run_for(world.backend, clock, 0.5)
    [stuck] = world.spawned
    await _run_for(world.backend, clock, READY - 1)
    assert world.set.replicas == [stuck] and not stuck.process.signals  # within ready_timeout: left to load
    [engine] = await world.backend.status("d-1")
    assert engine["status"] == "Starting", engine
    await _run_for(world.backend, clock, 1.5)
    # killed: SIGTERM, SIGKILL after the grace (a hung load does not stop on SIGTERM), after one last probe of 2 s
    assert stuck.process.signals == [signal.SIGTERM, signal.SIGKILL], stuck.process.signals
    assert LIVENESS_PROBE_WAIT in world.probes
    warned = [r.getMessage() for r in caplog.records if "answered no status probe" in r.getMessage()]
    assert len(warned) == 1 and f"pid {stuck.process.pid}" in warned[0], warned
    [engine] = await world.backend.status("d-1")  # waiting out its back-off (it never came up): Error, and why
    assert engine["status"] == "Error" and engine["crashes"] == 1 and engine["restart_in"] > 0, engine
    assert f"it did not answer within {READY:g} s of its start" in engine["reason"], engine
    assert deployment_state([engine]) == "Error"
    await _run_for(world.backend, clock, 1.5)
    fresh = world.set.replicas[0]
    assert fresh is not stuck and fresh is world.spawned[-1] and fresh.restarts == stuck.restarts + 1
    assert fresh.last_restart == stuck.gave_up and fresh.crashes == 1
    world.bus.answers[fresh.replica_id] = RUNNING  # this one loads: kept, Running
    await _run_for(world.backend, clock, READY + 5)
    assert world.set.replicas == [fresh] and not fresh.process.signals
    [engine] = await world.backend.status("d-1")
    assert engine["status"] == "Running" and engine["last_restart"] == stuck.gave_up, engine


async def test_one_that_answers_late_within_the_bound_is_kept(tmp_path, monkeypatch, clock):
    world = _world(tmp_path, monkeypatch, clock)
    await _run_for(world.backend, clock, READY - 2)
    [slow] = world.spawned
    world.bus.answers[slow.replica_id] = RUNNING  # loaded after 28 s; nobody read the status (liveness off)
    await _run_for(world.backend, clock, 3 * READY)
    # the supervisor's last probe found it answering: kept (it did not kill a replica nobody had asked)
    assert world.set.replicas == [slow] and not slow.process.signals and slow.answered == RUNNING


async def test_not_killed_while_the_deployers_own_bus_is_down(tmp_path, monkeypatch, clock):
    epoch = [0]
    world = _world(tmp_path, monkeypatch, clock, epoch=epoch)
    await _run_for(world.backend, clock, 0.5)
    [replica] = world.spawned
    epoch[0] = None  # the deployer's connection is down: its probes tell nothing of the replica
    await _run_for(world.backend, clock, 2 * READY)
    assert world.set.replicas == [replica] and not replica.process.signals
    epoch[0] = 1  # back (reconnected), and the replica still answers nothing: killed
    await _run_for(world.backend, clock, 5)
    assert replica.process.signals == [signal.SIGTERM, signal.SIGKILL]


async def test_a_redeploy_whose_new_replicas_never_answer_leaves_the_old_set_serving(tmp_path, monkeypatch, clock):
    """The start's wait for the new set ends at ready_timeout (0.3 s) of the backend's clock, which moves here only
    by the wait's own pauses (asyncio.sleep): counted, not timed (a wall-clock bound of 5 s could fail on a loaded
    machine; a start that waited its default 60 s, or for ever, still fails)."""
    sleep = asyncio.sleep

    async def paused(delay: float, result=None):
        clock[0] = round(clock[0] + delay, 6)
        return await sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", paused)
    bus = Bus()
    backend = LocalBackend(tmp_path, bus.request, scale_down_after=60, ready_timeout=0.3, stop_timeout=0.05)
    old = ReplicaSet(name="d-1", spec_path=tmp_path / "old.json", ready=True, replicas=[
        Replica(replica_id="old", process=Process(100), started_at=0.0, answered=RUNNING)])
    backend.sets["d-1"] = old
    bus.answers["old"] = RUNNING
    new: list[Replica] = []

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        new.append(Replica(replica_id=replica_id, process=Process(101), started_at=0.0))
        bus.answers[replica_id] = nats.errors.TimeoutError()  # subscribed, never answering: a hung load
        return new[-1]

    backend._spawn = spawn
    spec = SimpleNamespace(model_dump_json=lambda: "{}")  # written to the set's folder, read by no stand-in
    started = clock[0]
    with pytest.raises(TimeoutError):
        await backend.start("d-1", spec, 1)
    assert clock[0] - started == pytest.approx(0.3, abs=0.05 + 1e-6), clock[0] - started
    assert backend.sets["d-1"] is old and not old.stopping and not old.replicas[0].process.signals
    assert new[0].process.signals == [signal.SIGTERM, signal.SIGKILL]  # the new one stopped (killed: hung)
    [engine] = await backend.status("d-1")
    assert engine["status"] == "Running" and engine["pid"] == 100
