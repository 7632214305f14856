"""Deployment.wait_until_running gives up on a deployment that keeps reporting `Error` (a failed restore after a
deployer restart, every replica exited) with DeploymentFailed and the server's reasons, instead of polling until its
timeout; a short `Error` (a replica being restarted) is waited through."""

from __future__ import annotations

import pytest
from railyard_client import pipelines
from railyard_client.errors import DeploymentFailed
from railyard_client.pipelines import Deployment


class Statuses:
    """Answers status/get_deployment from a script of statuses, the last one repeated."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.calls = 0

    def post(self, route: str, body: dict) -> dict:
        assert route == "status/get_deployment" and body == {"name": "dep-1"}
        status = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return {"status": status, "details": ["failed to restore: sha256 mismatch"] if status == "Error" else []}


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(pipelines, "ERROR_SETTLE", 0.6)


class Clock:
    """The SDK's clock (pipelines.time): its time moves only when the wait sleeps, so the test counts the wait's
    seconds without taking them (a wall-clock bound of 5 s could fail on a loaded machine)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_steady_error_fails_fast_with_the_servers_reason(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(pipelines, "time", clock)
    statuses = Statuses("Error")
    deployment = Deployment(statuses, {"name": "dep-1"}, None)
    with pytest.raises(DeploymentFailed, match="dep-1 reports Error: failed to restore: sha256 mismatch"):
        deployment.wait_until_running(timeout=30)
    # given up once Error held ERROR_SETTLE (0.6 s), at the first poll past it: not at the 30 s timeout
    assert clock.now - 1000.0 == pytest.approx(0.75) and statuses.calls == 4


def test_a_short_error_is_waited_through():
    deployment = Deployment(Statuses("Starting", "Error", "Starting", "Running"), {"name": "dep-1"}, None)
    assert deployment.wait_until_running(timeout=30) is deployment
