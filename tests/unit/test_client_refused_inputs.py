"""Inputs the SDK cannot send are refused with its own error, `InvalidInput` (an `InvalidRequest`, exit 2 in the
CLI), naming what is wrong, and nothing is sent. Before, two came out as bare `ValueError`s a caller catching the
SDK's errors (`RailyardError`) missed, worded by the library that raised them:

- a continuous-training trigger or continuous-deployment policy that is not one of the enum's values
  (`setup_continuous_deployment("deploy_now")`: "'deploy_now' is not a valid ContinuousDeploymentPolicy", with no
  word of the values there are);
- a NaN or infinity anywhere in a JSON body (an assay's `baseline_values` with a missing value, a `monitor`
  latency): httpx's encoder said "Out of range float values are not JSON compliant", naming no field."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from railyard_client.errors import InvalidInput, RailyardError
from railyard_client.pipelines import Deployment
from railyard_client.session import Session, non_finite


class NothingSent:
    """A session that fails the test if anything reaches it."""

    def post(self, route: str, body: dict[str, Any]) -> Any:
        raise AssertionError(f"sent {route} {body}")


@pytest.fixture
def deployment() -> Deployment:
    return Deployment(NothingSent(), {"name": "fraud-1", "pipeline_id": 1}, None)


def test_an_unknown_trigger_names_the_triggers_there_are(deployment):
    with pytest.raises(InvalidInput) as caught:
        deployment.setup_continuous_training(1, threshold=5, trigger="BOGUS", experiment_parameters={})
    assert "'BOGUS'" in str(caught.value) and "FEEDBACK_LOOP" in str(caught.value) \
        and "ASSAY_ALERT" in str(caught.value)
    assert isinstance(caught.value, RailyardError)


def test_an_unknown_policy_names_the_policies_there_are(deployment):
    with pytest.raises(InvalidInput) as caught:
        deployment.setup_continuous_deployment("deploy_now")
    assert str(caught.value) == "policy 'deploy_now' is not one of DEPLOY_MANUAL, DEPLOY_SHADOW, DEPLOY_AUTO"


@pytest.fixture
def session(tmp_path) -> tuple[Session, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"ok": True})

    made = Session("http://gateway:1", token="t", credentials_file=tmp_path / "none.json")
    made.http = httpx.Client(base_url=made.url, transport=httpx.MockTransport(answer))
    return made, sent


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_number_is_refused_naming_where_it_is(session, bad):
    made, sent = session
    body = {"name": "a", "baseline": {"Static": {"values": [0.1, bad, 0.3]}}}
    with pytest.raises(InvalidInput) as caught:
        made.post("assays/run_interactive", body)
    assert str(caught.value).startswith("baseline.Static.values[1] is NaN or infinite")
    assert sent == []


def test_finite_bodies_are_sent_as_before(session):
    made, sent = session
    assert made.post("assays/run_interactive", {"values": [0.1, 2, None, "nan"], "x": {"y": 1e300}}) == {"ok": True}
    assert len(sent) == 1


def test_non_finite_finds_the_first_one_or_none():
    assert non_finite({"a": [1, {"b": (2.0, math.nan)}]}) == "a[1].b[1]"
    assert non_finite({"a": [1, 2.5, "x", None, True]}) is None


def test_a_large_image_s_metadata_is_checked_too(session):
    """An image above INLINE_IMAGE_BYTES goes as multipart, its metadata written by json.dumps, which writes NaN: the
    gateway answered "the 'metadata' part is not valid JSON". Now the same InvalidInput as a JSON body's."""
    from railyard_client import monitoring_predictions

    made, sent = session
    deployment = Deployment(made, {"name": "cam-1", "pipeline_id": 1}, None)
    image = b"\x89PNG\r\n\x1a\n" + bytes(monitoring_predictions.INLINE_IMAGE_BYTES)
    with pytest.raises(InvalidInput, match="^latency is NaN or infinite"):
        deployment.monitor_bytes(image, "image/png", "a.png", latency=math.nan, height=1, width=1,
                                 prediction={"detection_classes": [0]})
    assert sent == []
    deployment.monitor_bytes(image, "image/png", "a.png", latency=0.5, height=1, width=1,
                             prediction={"detection_classes": [0]})
    assert len(sent) == 1 and sent[0].headers["content-type"].startswith("multipart/form-data")


def test_an_orchestration_folder_is_refused_saying_to_zip_it(tmp_path):
    """`Orchestrations.upload("orch")` of the folder holding main.py said "no such file: orch"."""
    from railyard_client.orchestrations import Orchestrations

    (tmp_path / "orch").mkdir()
    orchestrations = Orchestrations(type("C", (), {"_session": NothingSent()})(), 1)
    with pytest.raises(InvalidInput) as caught:
        orchestrations.upload(tmp_path / "orch")
    assert str(caught.value) == (f"{tmp_path / 'orch'} is a folder: upload a zip of it, main.py at its root "
                                 f"(cd {tmp_path / 'orch'} && zip -r ../orch.zip .)")
    with pytest.raises(InvalidInput, match="^no such file: "):
        orchestrations.upload(tmp_path / "missing.zip")
