"""Deployment.wait_until_running gives up on a deployment that keeps reporting `Error` (a failed restore after a
deployer restart, every replica exited) with DeploymentFailed and the server's reasons, instead of polling until its
timeout; a short `Error` (a replica being restarted) is waited through."""

from __future__ import annotations

import time

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


def test_a_steady_error_fails_fast_with_the_servers_reason():
    deployment = Deployment(Statuses("Error"), {"name": "dep-1"}, None)
    started = time.monotonic()
    with pytest.raises(DeploymentFailed, match="dep-1 reports Error: failed to restore: sha256 mismatch"):
        deployment.wait_until_running(timeout=30)
    assert time.monotonic() - started < 5


def test_a_short_error_is_waited_through():
    deployment = Deployment(Statuses("Starting", "Error", "Starting", "Running"), {"name": "dep-1"}, None)
    assert deployment.wait_until_running(timeout=30) is deployment
