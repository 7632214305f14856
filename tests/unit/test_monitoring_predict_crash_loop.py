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
from shared.errors import ErrorBody, Unavailable, error_from_body
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
    # over the bus the code and words travel as they are (ErrorBody: code and msg)
    rebuilt = error_from_body(ErrorBody.model_validate(exc.body().model_dump()), exc.status)
    assert (rebuilt.code, rebuilt.status, rebuilt.msg) == (CRASH_LOOP, 503, exc.msg)


def test_a_crash_loop_while_a_replica_starts_says_so_and_a_starting_deployment_keeps_its_words():
    exc = _refusal(_view("Error", reason=REASON))  # no retry_after: one is starting now
    assert exc.code == CRASH_LOOP and "a replica is starting again now" in exc.msg, exc.msg
    assert error_parts(exc)[1]["Retry-After"] == "1"
    starting = _refusal(_view("Starting"))
    assert type(starting) is Unavailable and starting.code == "unavailable"
    assert starting.msg == "deployment 'digits' is starting; retry shortly"
