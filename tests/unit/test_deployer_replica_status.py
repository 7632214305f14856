"""A replica's state from its status probe (services/deployer/backend.py, LocalBackend.replica_state). A replica that
answered before and whose probe times out (busy: the probe is answered on its event loop, beside its requests) keeps
its last answer until its probes went unanswered for SILENT_KEPT_FOR seconds and SILENT_KEPT_PROBES probes in a row;
before 2026-12-05 one probe unanswered within 0.5 s made it `Starting`, and the deployment with it. A replica that
never answered, or that has no status subscriber (draining), is not kept. The bus is a stand-in here; the real replica
is tests/integration/test_deploy_busy_status.py's."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import nats.errors
import pytest

import services.deployer.backend as backend_module
from services.deployer.backend import SILENT_KEPT_FOR, SILENT_KEPT_PROBES, LocalBackend, Replica, ReplicaSet
from shared.settings import DeployerSettings

RUNNING = {"status": "Running", "pipeline_statuses": {"pipelines": [{"id": "p", "status": "Running"}]},
           "model_statuses": {"models": [{"name": "m", "version": "v", "sha": "s", "status": "Running"}]}}


class Bus:
    """Answers each replica's status probe as told: the answer, or an exception to raise."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def request(self, subject: str, payload: bytes, wait: float) -> bytes:
        replica = subject.split(".")[-2]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            answer = self.answers[replica]
            if isinstance(answer, BaseException):
                raise answer
            return json.dumps(answer).encode()
        finally:
            self.in_flight -= 1


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(backend_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def _world(tmp_path, replicas: int = 1, **timings: float) -> tuple[LocalBackend, Bus, ReplicaSet]:
    bus = Bus()
    backend = LocalBackend(tmp_path, bus.request, scale_down_after=60, ready_timeout=10, stop_timeout=1, **timings)
    replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json", replicas=[
        Replica(replica_id=str(i), process=SimpleNamespace(pid=100 + i, returncode=None), started_at=0.0)
        for i in range(replicas)])
    backend.sets["d-1"] = replica_set
    return backend, bus, replica_set


async def _status(backend: LocalBackend) -> list[str]:
    return [e["status"] for e in await backend.status("d-1")]


async def test_a_replica_that_answered_keeps_running_while_busy_then_is_starting_with_the_reason(tmp_path, clock):
    backend, bus, _ = _world(tmp_path)
    bus.answers["0"] = RUNNING
    assert await _status(backend) == ["Running"]
    bus.answers["0"] = nats.errors.TimeoutError()  # busy: the probe is not answered within its wait
    for _ in range(SILENT_KEPT_PROBES + 5):  # many probes, but within SILENT_KEPT_FOR: kept, with its models
        clock[0] += SILENT_KEPT_FOR / (SILENT_KEPT_PROBES + 10)
        [engine] = await backend.status("d-1")
        assert engine["status"] == "Running" and engine["model_statuses"] == RUNNING["model_statuses"], engine
        assert engine["reason"] is None and engine["pid"] == 100
    clock[0] += SILENT_KEPT_FOR  # silent past the bound: not Running any more, and told why
    [engine] = await backend.status("d-1")
    assert engine["status"] == "Starting" and "answered no status probe for" in engine["reason"], engine
    bus.answers["0"] = RUNNING  # it answers again: Running, and a later silence is counted afresh
    assert await _status(backend) == ["Running"]
    bus.answers["0"] = nats.errors.TimeoutError()
    clock[0] += 1
    assert await _status(backend) == ["Running"]


async def test_the_time_a_silent_replica_is_kept_is_the_deployer_setting(tmp_path, clock):
    """settings.deployer.silent_kept_for (the test stack's is 5 s: test_deploy_busy_status holds a replica that long)
    bounds the keeping, not the default, both ways; the route's serving_now counts the same span."""
    backend, bus, _ = _world(tmp_path, silent_kept_for=2.0)
    bus.answers["0"] = RUNNING
    assert await _status(backend) == ["Running"] and backend.serving_now("d-1")
    clock[0] += 2.5  # a last answer older than the setting: asked again
    assert not backend.serving_now("d-1")
    bus.answers["0"] = nats.errors.TimeoutError()
    for _ in range(SILENT_KEPT_PROBES):
        assert await _status(backend) == ["Running"]
        clock[0] += 0.6
    assert await _status(backend) == ["Starting"]  # 2.3 s silent, well below the default's 10
    assert SILENT_KEPT_FOR == 10.0 == DeployerSettings().silent_kept_for


async def test_one_late_probe_after_a_long_quiet_is_not_a_long_silence(tmp_path, clock):
    """Nobody asked for a while (no status read): the replica's first unanswered probe then keeps it Running; the
    bound counts unanswered probes in a row, not the age of the last answer."""
    backend, bus, _ = _world(tmp_path)
    bus.answers["0"] = RUNNING
    assert await _status(backend) == ["Running"]
    clock[0] += 10 * SILENT_KEPT_FOR
    bus.answers["0"] = nats.errors.TimeoutError()
    for _ in range(SILENT_KEPT_PROBES - 1):
        assert await _status(backend) == ["Running"]
        clock[0] += 2 * SILENT_KEPT_FOR  # long apart, but too few in a row
    assert await _status(backend) == ["Starting"]


async def test_a_replica_that_never_answered_is_starting(tmp_path, clock):
    backend, bus, _ = _world(tmp_path)
    bus.answers["0"] = nats.errors.TimeoutError()  # loading its models
    assert await _status(backend) == ["Starting"]
    bus.answers["0"] = nats.errors.NoRespondersError()  # not subscribed yet
    assert await _status(backend) == ["Starting"]


async def test_a_replica_with_no_status_subscriber_is_not_kept(tmp_path, clock):
    """A replica unsubscribes its status when it drains (SIGTERM): no responders is not busy."""
    backend, bus, _ = _world(tmp_path)
    bus.answers["0"] = RUNNING
    assert await _status(backend) == ["Running"]
    assert backend.serving_now("d-1")  # a route's resolve takes its answer without a probe (serving_now)
    bus.answers["0"] = nats.errors.NoRespondersError()
    assert await _status(backend) == ["Starting"]
    assert not backend.serving_now("d-1")  # and no longer once a probe found no subscriber: it probes again


async def test_an_exited_replica_is_an_error_whatever_it_answered(tmp_path, clock):
    backend, bus, replica_set = _world(tmp_path)
    bus.answers["0"] = RUNNING
    assert await _status(backend) == ["Running"]
    replica_set.replicas[0].process.returncode = 1
    assert await _status(backend) == ["Error"]


async def test_the_replicas_are_probed_at_once(tmp_path, clock):
    """One after another, each silent replica added its probe's wait to every status and route read."""
    backend, bus, _ = _world(tmp_path, replicas=3)
    bus.answers.update({"0": RUNNING, "1": nats.errors.TimeoutError(), "2": RUNNING})
    assert await _status(backend) == ["Running", "Starting", "Running"]  # in the set's order
    assert bus.most_in_flight == 3
