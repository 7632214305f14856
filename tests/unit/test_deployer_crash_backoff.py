"""Crash-loop back-off (services/deployer/backend.py; settings.deployer.crash_backoff, crash_backoff_max,
crash_stable_after; docs/deployment.md, "Crash-loop back-off"): a replica that exits before it came up (answered a
probe and lived crash_stable_after) is replaced after a delay doubling from 1 s to 60 s; one that came up is replaced
at once and resets the count. Before 2026-12-05 every exited replica was respawned on the supervisor's next 0.2 s
pass: one crashing at its start (a bad model, OOM at load) was started five times a second for ever. And an exited
replica's reason (the last line of its log) read the whole log file on the deployer's loop at every status read. The
processes are stand-ins (tests/unit/test_deployer_liveness.py's fake clock and supervisor pass)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

import services.deployer.backend as backend_module
from services.deployer.backend import LocalBackend, Replica, ReplicaSet
from tests.unit.test_deployer_liveness import Process, _pass
from tests.unit.test_deployer_replica_status import RUNNING


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(backend_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _world(tmp_path, monkeypatch, clock: list[float]) -> tuple[LocalBackend, ReplicaSet, list[float]]:
    """One deployment whose first replica came up and exits now; every replacement exits at once (`crashing`), or
    stays up when `crashing[0]` is False. Returns the backend, the set and the times of the spawns."""

    async def request(subject: str, payload: bytes, wait: float) -> bytes:
        raise AssertionError("liveness is off here: nothing probes")

    backend = LocalBackend(tmp_path, request, scale_down_after=60, ready_timeout=10, stop_timeout=0.05)
    first = Replica(replica_id="0", process=Process(100), started_at=0.0, answered=RUNNING)
    first.process.returncode = 1
    replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json", ready=True, replicas=[first])
    backend.sets["d-1"] = replica_set
    spawns: list[float] = []
    backend.crashing = [True]

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        spawns.append(clock[0])
        replica = Replica(replica_id=replica_id, process=Process(100 + len(spawns)), started_at=clock[0])
        if backend.crashing[0]:
            replica.process.returncode = 1
        else:
            replica.answered = RUNNING
        return replica

    monkeypatch.setattr(backend, "_spawn", spawn)
    return backend, replica_set, spawns


async def _run_for(backend: LocalBackend, clock: list[float], seconds: float, step: float = 0.2) -> None:
    end = clock[0] + seconds
    while clock[0] < end - 1e-9:
        clock[0] = round(clock[0] + step, 6)
        await _pass(backend)


async def test_a_replica_crashing_at_its_start_is_respawned_with_growing_delays(tmp_path, monkeypatch, clock):
    backend, replica_set, spawns = _world(tmp_path, monkeypatch, clock)
    start = clock[0]
    await _run_for(backend, clock, 200)
    # the first replica came up: replaced at once (the next 0.2 s pass); then 1, 2, 4, 8, 16, 32, 60, 60 s apart
    # (and the pass that notices the exit)
    gaps = [round(b - a) for a, b in zip(spawns, spawns[1:], strict=False)]
    assert round(spawns[0] - start, 1) == 0.2, spawns
    assert gaps == [1, 2, 4, 8, 16, 32, 60, 60], gaps  # on the old code: 1000 spawns, 0.2 s apart
    [waiting] = replica_set.replicas
    assert waiting.restarts == len(spawns) and waiting.crashes == 9
    state = await backend.replica_state(replica_set, waiting)
    assert state["status"] == "Error" and 0 < state["restart_in"] <= 60, state
    assert state["reason"].startswith("CrashLoopBackOff: exited with 1 (9 exits in a row"), state
    assert state["restarts"] == waiting.restarts and state["last_restart"] == "exited with 1", state


async def test_a_replica_that_came_up_resets_the_back_off(tmp_path, monkeypatch, clock):
    backend, replica_set, spawns = _world(tmp_path, monkeypatch, clock)
    await _run_for(backend, clock, 8)  # spawned at 0.2, 1.4, 3.6, 7.8; the next at 16.0
    assert len(spawns) == 4, spawns
    backend.crashing[0] = False
    await _run_for(backend, clock, 8.4)  # the next one comes up
    assert len(spawns) == 5, spawns
    [up] = replica_set.replicas
    await _run_for(backend, clock, backend.crash_stable_after)
    assert len(spawns) == 5 and replica_set.replicas == [up]
    backend.crashing[0] = True
    up.process.returncode = 1  # it came up and exits: replaced at once, and the next crash waits 1 s again
    at = clock[0]
    await _run_for(backend, clock, 3)
    assert [round(t - at, 1) for t in spawns[5:]] == [0.2, 1.4], spawns


async def test_a_replica_exiting_before_it_answered_is_not_up_however_long_it_lived(tmp_path, monkeypatch, clock):
    backend, replica_set, spawns = _world(tmp_path, monkeypatch, clock)
    replica_set.replicas[0].answered = None  # loaded for a long time, never answered, exited
    start = clock[0]
    await _run_for(backend, clock, 5)
    assert [round(t - start, 1) for t in spawns] == [1.2, 3.4], spawns  # not at once: 1 s, then 2 s


async def test_undeploy_during_the_back_off_returns_at_once(tmp_path, monkeypatch, clock):
    backend, replica_set, spawns = _world(tmp_path, monkeypatch, clock)
    await _run_for(backend, clock, 20)
    [waiting] = replica_set.replicas
    assert waiting.respawn_at - clock[0] > 5, (waiting.respawn_at, clock[0])
    async with asyncio.timeout(2):
        await backend.stop("d-1")
    count = len(spawns)
    await _run_for(backend, clock, 120)
    assert len(spawns) == count and "d-1" not in backend.sets


def test_the_reason_is_the_last_line_of_a_big_log_read_from_its_tail(tmp_path, monkeypatch):
    backend = LocalBackend(tmp_path, None, scale_down_after=60, ready_timeout=10, stop_timeout=0.05)
    replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json")
    replica = Replica(replica_id="0", process=Process(100), started_at=0.0)
    (tmp_path / "d-1").mkdir()
    log_path = tmp_path / "d-1" / "replica-0.log"
    with log_path.open("wb") as handle:
        handle.write(b"railyard-engine: an early error\n")
        handle.write(b"x" * 5_000_000 + b"\n")  # one long line, cut at the tail's start
        handle.write(b"loading\n" * 10_000 + b"railyard-engine: model failed to load: bad input\nTraceback end\n\n")
    read: list[int] = []
    real_open = type(log_path).open

    def counting_open(self, *args, **kwargs):
        handle = real_open(self, *args, **kwargs)
        real_read = handle.read

        def counted(size=-1):
            data = real_read(size)
            read.append(len(data))
            return data

        handle.read = counted
        return handle

    monkeypatch.setattr(type(log_path), "open", counting_open)
    monkeypatch.setattr(type(log_path), "read_text", lambda *a, **k: (_ for _ in ()).throw(AssertionError("whole")))
    assert backend._last_log_line(replica_set, replica) == "railyard-engine: model failed to load: bad input"
    assert sum(read) <= backend_module.TAIL_BYTES, read
    log_path.write_bytes(b"only line\n")
    assert backend._last_log_line(replica_set, replica) == "only line"
