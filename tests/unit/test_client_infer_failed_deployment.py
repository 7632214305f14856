"""An inference on a deployment that failed to restore (503 `deployment_failed`) raises at once: the SDK retried
every 503 for UNAVAILABLE_RETRY (15 s), so `pipeline.infer` and `railyard infer` took 16 s to say what only a
redeploy mends. A deployment still starting (503 without that code) is still retried until it serves."""

from __future__ import annotations

import pytest
from railyard_client import pipelines
from railyard_client.errors import Unavailable


class Session:
    """Answers the inference route from a script of outcomes, the last one repeated."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.calls = 0

    def send(self, method: str, path: str, **kwargs):
        outcome = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def waits(monkeypatch) -> list[float]:
    """The SDK's sleeps between tries, recorded (none taken): a retry shows as a call more and a wait, not as time."""
    slept: list[float] = []
    monkeypatch.setattr(pipelines.time, "sleep", slept.append)
    return slept


def test_a_failed_deployment_is_not_retried(monkeypatch):
    slept = waits(monkeypatch)
    failed = Unavailable(503, "deployment_failed", "deployment 'fraud-1' failed to restore ...: redeploy it")
    session = Session(failed)
    with pytest.raises(Unavailable) as raised:
        pipelines._send_retrying(session, "/v1/api/pipelines/infer/fraud-1/fraud", {"headers": {}}, 30)
    assert raised.value.code == "deployment_failed" and session.calls == 1
    assert slept == []


def test_a_crash_looping_deployment_is_not_retried(monkeypatch):
    """Every replica keeps exiting soon after it starts (503 deployment_crash_loop, the gateway's since 9c82caad): its
    back-off runs up to a minute and the message says why, so it is raised at once as deployment_failed is (it was
    retried for 15 s, then raised)."""
    slept = waits(monkeypatch)
    looping = Unavailable(503, "deployment_crash_loop", "deployment 'fraud-1' is failing to start: ... (crash loop)")
    session = Session(looping, "answer")
    with pytest.raises(Unavailable) as raised:
        pipelines._send_retrying(session, "/v1/api/pipelines/infer/fraud-1/fraud", {"headers": {}}, 30)
    assert raised.value.code == "deployment_crash_loop" and session.calls == 1
    assert slept == []


def test_a_starting_deployment_is_retried_until_it_serves(monkeypatch):
    monkeypatch.setattr(pipelines.time, "sleep", lambda seconds: None)
    session = Session(Unavailable(503, "unavailable", "starting; retry shortly"), "answer")
    assert pipelines._send_retrying(session, "/v1/api/pipelines/infer/fraud-1/fraud", {"headers": {}}, 30) == "answer"
    assert session.calls == 2
