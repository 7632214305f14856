"""What a crash loop looks like in status/get_deployment (services/deployer/backend.py, replica_state;
services/deployer/handlers.py, deployment_state; docs/deployment.md, "Crash-loop back-off"), and the back-off's
timings as settings (settings.deployer.crash_backoff, crash_backoff_max, crash_stable_after).

Before 2026-12-05 a deployment with a replica slot in a crash loop read `Starting` (mixed states) while its other
replicas served, for up to 60 s at a time and as long as the loop lasted; the slot's replacement read a bare
`Starting` between two exits (nothing said it was the n-th try), so a one-replica deployment in a loop flipped
between `Error` and `Starting` (the SDK's wait_until_running, which gives up on an `Error` lasting ERROR_SETTLE, waited
its whole timeout). And the back-off's 1 s, 60 s and 10 s were module constants. Stand-in processes and bus
(tests/unit/test_deployer_liveness.py's Process, test_deployer_replica_status.py's Bus); fake clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

import services.deployer.backend as backend_module
from services.deployer.backend import LocalBackend, Replica, ReplicaSet
from services.deployer.handlers import deployment_state
from shared.settings import DeployerSettings, Settings
from tests.unit.test_deployer_liveness import Process, _pass
from tests.unit.test_deployer_replica_status import RUNNING, Bus

LAST_LINE = "railyard-engine: model 'm' failed to load: out of memory"


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(backend_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _world(tmp_path, monkeypatch, clock: list[float], **timings) -> SimpleNamespace:
    """Deployment d-1 with two replicas that came up: "0" (its slot loops once `mode[0]` says so) and "1" (runs).
    mode: "crash" (a replacement exits at once, its log's last line LAST_LINE), "load" (it runs and answers nothing:
    loading), "up" (it answers Running)."""
    bus = Bus()
    backend = LocalBackend(tmp_path, bus.request, scale_down_after=60, ready_timeout=600, stop_timeout=0.05,
                           **timings)
    replicas = [Replica(replica_id=str(i), process=Process(100 + i), started_at=0.0, answered=RUNNING)
                for i in range(2)]
    replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json", ready=True, replicas=replicas)
    backend.sets["d-1"] = replica_set
    bus.answers["1"] = RUNNING
    (tmp_path / "d-1").mkdir()
    spawns: list[float] = []
    mode = ["crash"]

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        spawns.append(clock[0])
        replica = Replica(replica_id=replica_id, process=Process(200 + len(spawns)), started_at=clock[0])
        if mode[0] == "crash":
            (tmp_path / "d-1" / f"replica-{replica_id}.log").write_text(f"loading\n{LAST_LINE}\n")
            replica.process.returncode = 1
        elif mode[0] == "up":
            bus.answers[replica_id] = RUNNING
        return replica

    monkeypatch.setattr(backend, "_spawn", spawn)
    return SimpleNamespace(backend=backend, bus=bus, set=replica_set, spawns=spawns, mode=mode)


async def _run_for(backend: LocalBackend, clock: list[float], seconds: float, step: float = 0.2) -> None:
    end = clock[0] + seconds
    while clock[0] < end - 1e-9:
        clock[0] = round(clock[0] + step, 6)
        await _pass(backend)


async def test_a_slot_in_a_crash_loop_beside_a_serving_replica(tmp_path, monkeypatch, clock):
    world = _world(tmp_path, monkeypatch, clock)
    world.set.replicas[0].process.returncode = 1  # it came up, then exits: replaced at once, then the loop
    await _run_for(world.backend, clock, 8)  # spawned at 0.2, 1.4, 3.6, 7.8: 3 exits in a row, waiting 8 s
    assert len(world.spawns) == 4, world.spawns
    engines = await world.backend.status("d-1")
    waiting, serving = engines
    assert waiting["status"] == "Error" and waiting["crashes"] == 4 and 0 < waiting["restart_in"] <= 8, waiting
    assert waiting["reason"].startswith(f"CrashLoopBackOff: {LAST_LINE} (4 exits in a row"), waiting
    assert serving["status"] == "Running" and "crashes" not in serving, serving
    # the deployment serves on "1": Running, the loop named in the details (was: Starting)
    assert deployment_state(engines) == "Running"

    world.mode[0] = "load"  # the next replacement runs and loads for a while
    await _run_for(world.backend, clock, 8.4)
    assert len(world.spawns) == 5, world.spawns
    engines = await world.backend.status("d-1")
    starting = engines[0]
    assert starting["status"] == "Starting" and starting["crashes"] == 4 and starting["restarts"] == 5, starting
    assert starting["reason"] == (f"CrashLoopBackOff: restarted after 4 exits in a row soon after start (the last: "
                                  f"{LAST_LINE}); starting"), starting
    assert deployment_state(engines) == "Running"

    world.bus.answers[world.set.replicas[0].replica_id] = RUNNING  # it answers: the loop is over
    engines = await world.backend.status("d-1")
    assert engines[0]["status"] == "Running" and "crashes" not in engines[0] and not engines[0]["reason"]
    assert deployment_state(engines) == "Running"


async def test_a_one_replica_deployment_in_a_crash_loop_is_an_error_throughout(tmp_path, monkeypatch, clock):
    world = _world(tmp_path, monkeypatch, clock)
    world.set.replicas.pop()  # "0" alone
    world.set.replicas[0].process.returncode = 1
    seen = set()
    for _ in range(3):
        world.mode[0] = "crash"
        await _run_for(world.backend, clock, 4)
        seen.add(deployment_state(await world.backend.status("d-1")))
        world.mode[0] = "load"  # the next replacement loads (Starting) before it exits in turn
        await _run_for(world.backend, clock, 8)
        [engine] = await world.backend.status("d-1")
        if engine["status"] == "Starting":
            assert engine["reason"].startswith("CrashLoopBackOff: restarted after"), engine
        seen.add(deployment_state([engine]))
        world.set.replicas[0].process.returncode = 1
    assert seen == {"Error"}, seen  # was Error, Starting, Error, Starting ...


def test_the_deployment_state_rule():
    running, starting, error = {"status": "Running"}, {"status": "Starting"}, {"status": "Error"}
    looping_error, looping_starting = error | {"crashes": 3}, starting | {"crashes": 3}
    assert deployment_state([]) == "Starting"
    assert deployment_state([running, running]) == "Running"
    assert deployment_state([running, looping_error]) == "Running"
    assert deployment_state([running, looping_starting, looping_error]) == "Running"
    assert deployment_state([looping_starting]) == "Error"
    assert deployment_state([error, looping_starting]) == "Error"
    assert deployment_state([error, error]) == "Error"
    # one exit before coming up is a restart, not yet a loop (a replica killed once while loading)
    assert deployment_state([running, error | {"crashes": 1}]) == "Starting"
    assert deployment_state([running, starting | {"crashes": 1}]) == "Starting"
    assert deployment_state([starting | {"crashes": 1}]) == "Starting"
    assert deployment_state([error | {"crashes": 1}]) == "Error"
    # as before: a first start, a replica replaced after it came up (no loop), or one silent for long
    assert deployment_state([starting, starting]) == "Starting"
    assert deployment_state([running, starting]) == "Starting"
    assert deployment_state([running, error]) == "Starting"
    assert deployment_state([running, looping_starting, starting]) == "Starting"
    assert deployment_state([looping_error, starting]) == "Starting"


async def test_the_back_off_timings_are_settings(tmp_path, monkeypatch, clock):
    world = _world(tmp_path, monkeypatch, clock, crash_backoff=0.4, crash_backoff_max=3, crash_stable_after=30)
    world.set.replicas.pop()
    first = world.set.replicas[0]
    first.started_at = clock[0] - 20  # answered and lived 20 s: under crash_stable_after's 30, so not up
    first.process.returncode = 1
    await _run_for(world.backend, clock, 12)
    gaps = [round(b - a, 1) for a, b in zip(world.spawns, world.spawns[1:], strict=False)]
    assert round(world.spawns[0] - 1000, 1) == 0.6, world.spawns  # 0.4 s after the pass that saw the exit
    assert gaps[:4] == [1.0, 1.8, 3.2, 3.2], gaps  # 0.8, 1.6, 3 (the max), each plus the pass that sees the exit


def test_the_settings_are_read_and_checked(monkeypatch):
    defaults = DeployerSettings()
    assert (defaults.crash_backoff, defaults.crash_backoff_max, defaults.crash_stable_after) == (1.0, 60.0, 10.0)
    monkeypatch.setenv("RAILYARD_DEPLOYER__CRASH_BACKOFF", "0.5")
    monkeypatch.setenv("RAILYARD_DEPLOYER__CRASH_BACKOFF_MAX", "5")
    monkeypatch.setenv("RAILYARD_DEPLOYER__CRASH_STABLE_AFTER", "2")
    read = Settings().deployer
    assert (read.crash_backoff, read.crash_backoff_max, read.crash_stable_after) == (0.5, 5.0, 2.0)
    monkeypatch.setenv("RAILYARD_DEPLOYER__CRASH_BACKOFF", "10")
    with pytest.raises(ValidationError, match="CRASH_BACKOFF .10 s. is above RAILYARD_DEPLOYER__CRASH_BACKOFF_MAX"):
        Settings()
    for value in ("0", "inf", "-1"):
        monkeypatch.setenv("RAILYARD_DEPLOYER__CRASH_BACKOFF", value)
        with pytest.raises(ValidationError):
            Settings()
