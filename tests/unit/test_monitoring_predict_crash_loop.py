"""Monitoring's predict on images refuses a deployment whose route is not Running in the gateway's words
(shared/not_serving.py): a crash loop (the deployer's route says Error, 9c82caad) is a 503 deployment_crash_loop
saying it is failing to start, why (the caller is a member of its workspace: predict is a user's, _deployment checked
membership) and when the deployer starts a replica again, not 'deployment X is error; retry shortly'."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import pytest
from PIL import Image

from services.gateway.errors import error_parts
from services.monitoring import predictions
from shared.errors import ErrorBody, RailyardError, Unavailable, error_from_body
from shared.messages.deployer import DeploymentRoute
from shared.not_serving import CRASH_LOOP, CrashLoop
from tests.image_models import digits_image_config

REASON = "CrashLoopBackOff: ValueError: bad weights (4 exits in a row soon after start)"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), 128).save(out, format="PNG")
    return out.getvalue()


def _view(status: str, **crash: object) -> SimpleNamespace:
    route = DeploymentRoute(deployment_id=1, name="digits", pipeline_name="p", workspace_id=7, status=status,
                            pipeline_version="v1", input_schema=None, **crash)
    step = {"ModelInference": {"models": [{"name": "digits", "version": "v1"}], "image": digits_image_config()}}
    return SimpleNamespace(route=route, definition={"steps": [step]})


def _refusal(view: SimpleNamespace) -> Unavailable:
    cmd = SimpleNamespace(deployment="digits", content_type=None)
    with pytest.raises(Unavailable) as caught:  # deps unused: refused before the bus or the engine is asked
        asyncio.run(predictions._prepare_predict(None, cmd, view, _png(), None))
    return caught.value


def test_a_crash_looping_deployment_is_refused_in_the_gateway_s_words_with_its_reason_and_back_off():
    exc = _refusal(_view("Error", reason=REASON, retry_after=11.6))
    assert isinstance(exc, CrashLoop) and exc.code == CRASH_LOOP and exc.status == 503, repr(exc)
    assert exc.msg.startswith("deployment 'digits' is failing to start: its engine replicas keep exiting"), exc.msg
    assert REASON in exc.msg and "again in 12 s" in exc.msg and "is error" not in exc.msg, exc.msg
    status, headers, _ = error_parts(exc)
    assert (status, headers["Retry-After"]) == (503, "12")
    # over the bus the code, words and back-off travel as they are (ErrorBody: code, msg and retry_after)
    rebuilt = error_from_body(ErrorBody.model_validate(exc.body().model_dump()), exc.status)
    assert (rebuilt.code, rebuilt.status, rebuilt.msg, rebuilt.retry_after) == (CRASH_LOOP, 503, exc.msg, 11.6)
    assert error_parts(rebuilt)[1]["Retry-After"] == "12"


def test_a_crash_loop_while_a_replica_starts_says_so_and_a_starting_deployment_keeps_its_words():
    exc = _refusal(_view("Error", reason=REASON))  # no retry_after: one is starting now
    assert exc.code == CRASH_LOOP and "a replica is starting again now" in exc.msg, exc.msg
    assert error_parts(exc)[1]["Retry-After"] == "1"
    starting = _refusal(_view("Starting"))
    assert type(starting) is Unavailable and starting.code == "unavailable"
    assert starting.msg == "deployment 'digits' is starting; retry shortly"


def test_through_the_gateway_s_predict_route_the_crash_loop_keeps_its_retry_after(monkeypatch):
    """The gateway's /deployments/predict forwards to monitoring over the bus: monitoring's refusal (the command
    subscriber's envelope, shared.bus.run_command and encode_reply) is read back by the gateway's real JSON forwarding
    and answered with the deployer's back-off as Retry-After. Before, the bus's ErrorBody had code and msg only, and
    the gateway answered Retry-After: 1 for a back-off of minutes."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from services.gateway.errors import error_response
    from services.gateway.http import JSON_ROUTES, _forwarding_endpoint
    from shared import bus
    from shared.errors import RailyardError
    from shared.messages.monitoring_predictions import PredictImage
    from shared.settings import Settings

    view = _view("Error", reason=REASON, retry_after=11.6)

    async def predict_image(cmd: PredictImage, ctx: object) -> object:  # monitoring's refusal, as in predict
        return await predictions._prepare_predict(None, cmd, view, _png(), None)

    sent: list[dict] = []

    async def send(broker, subject, message, timeout, token):  # the bus: monitoring's subscriber answers
        sent.append(message.model_dump(mode="json"))
        reply = await bus.run_command(predict_image, PredictImage, sent[-1], SimpleNamespace(subject=subject))
        return SimpleNamespace(body=bus.encode_reply(reply, None, subject))

    monkeypatch.setattr(bus, "_send", send)
    route = next(route for route in JSON_ROUTES if route.path == "/deployments/predict")
    runtime = SimpleNamespace(settings=Settings(), broker=None)
    app = FastAPI()
    app.add_exception_handler(RailyardError, lambda _request, exc: error_response(exc))
    app.post("/predict")(_forwarding_endpoint(runtime, route, lambda: None))
    answer = TestClient(app).post("/predict", json={"deployment": "digits", "image": "aGk="},
                                  headers={"Authorization": "Bearer t"})
    assert sent and sent[0]["deployment"] == "digits"
    assert (answer.status_code, answer.headers.get("retry-after")) == (503, "12"), (answer.headers, answer.text)
    body = answer.json()
    assert body["code"] == CRASH_LOOP and "again in 12 s" in body["msg"] and REASON in body["msg"], body


class _NoReplica:
    """A bus connection on which nobody listens on the deployment's queue (every replica exited since the route)."""

    max_payload = 1 << 20

    def __init__(self) -> None:
        self.asked = 0

    async def request(self, subject, payload, timeout, headers):
        import nats.errors

        self.asked += 1
        raise nats.errors.NoRespondersError


@pytest.mark.parametrize("now,expected", [
    ("Error", CRASH_LOOP), ("Starting", "unavailable"), ("Running", "unavailable"), ("gone", "not_found"),
    ("deployer away", "unavailable"),
])
def test_no_replica_taking_a_predict_asks_the_deployer_once_more(monkeypatch, now, expected):
    """The route _deployment read said Running; no replica takes the image: the deployer is asked again, once, with
    the caller's token, and its word answers (the gateway's inference does the same: RouteCache.ask). Before, the
    answer was 'no running engine' whatever the deployer would have said (a crash loop: Retry-After 1)."""
    import pyarrow as pa

    from shared.errors import NotFound
    from shared.messages.deployer import ResolveDeployment

    resolves: list[tuple] = []

    async def request(broker, subject, message, *, token, timeout, reply_model):
        resolves.append((subject, message, token, timeout, reply_model))
        if now == "gone":
            raise NotFound("deployment 'digits' not found")
        if now == "deployer away":
            raise Unavailable("deployer is not running")
        crash = {"reason": REASON, "retry_after": 11.6} if now == "Error" else {}
        return _view(now, **crash).route

    monkeypatch.setattr(predictions, "request", request)
    nc = _NoReplica()
    deps = SimpleNamespace(broker=SimpleNamespace(config=SimpleNamespace(connection_state=SimpleNamespace(
        connection=nc))), timeout=4.0, objects=None)
    with pytest.raises(RailyardError) as caught:
        asyncio.run(predictions._ask_engine(deps, "digits", pa.table({"x": [1.0]}), token="alice's"))
    exc = caught.value
    assert exc.code == expected, repr(exc)
    assert nc.asked == 1 and len(resolves) == 1  # bounded: the deployer once, the engine not again
    subject, message, token, timeout, _ = resolves[0]
    assert message == ResolveDeployment(name="digits") and (token, timeout) == ("alice's", 4.0)
    if now == "Error":
        assert REASON in exc.msg and error_parts(exc)[1]["Retry-After"] == "12", exc.msg
    elif now == "Starting":
        assert exc.msg == "deployment 'digits' is starting; retry shortly"
    elif now == "gone":
        assert exc.status == 404 and exc.msg == "deployment 'digits' is not deployed"
    else:
        assert exc.msg == "deployment 'digits' has no running engine; retry shortly"
