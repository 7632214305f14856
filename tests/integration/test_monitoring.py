"""Seed 003's deployment management on the real stack: every method over HTTP and through the SDK's `Deployment`,
one workspace's deployment out of another's reach, bad arguments answered 4xx with nothing changed."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration.conftest import inference_token, post
from tests.integration.conftest import sdk_client as sdk
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

READS = ["get_tags", "retrieve_information", "get_model_version", "get_shadow_model"]


def call(stack, account_or_token, route: str, body: dict):
    token = getattr(account_or_token, "token", account_or_token)  # an Account, a raw token or None
    return post(stack, f"deployments/{route}", token, body)


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def state(stack, account, name: str) -> dict:
    """Everything a failed call must leave as it was."""
    info = ok(call(stack, account, "retrieve_information", {"deployment": name}))
    versions = ok(post(stack, "pipelines/list", account.token, {"workspace_id": account.workspace_id}))
    return {"info": {k: v for k, v in info.items() if k != "status"},
            "pipeline_versions": sorted(len(p["versions"]) for p in versions["pipelines"])}


def test_deployment_management_over_http_and_the_sdk(stack, alice, bob, tmp_path):
    client = sdk(stack, alice)
    model = tmp_path / "ccfraud.onnx"
    model.write_bytes(ccfraud_onnx())
    first = client.upload_model("ccfraud", model, progress=False)
    second = client.upload_model("ccfraud-b", model, progress=False)
    pipeline = client.build_pipeline("monitored").add_model_step(first).deploy(replicas=1, cpus=0.5, timeout=180)
    deployment = client.get_deployment("monitored")
    name = deployment.name
    rows = pd.DataFrame({"tensor": list(sample_rows(3, seed=7).astype(np.float64))})
    baseline = np.stack(pipeline.infer(rows)["out.dense_1"].to_numpy())

    # tags: HTTP then SDK, order of first addition, duplicates kept once
    assert ok(call(stack, alice, "add_tags", {"deployment": name, "tags": ["cool", "camera 1"]}))["tags"] == [
        "cool", "camera 1"]
    assert deployment.add_tags("extra") == ["cool", "camera 1", "extra"]
    assert deployment.add_tags(["cool", "night"]) == ["cool", "camera 1", "extra", "night"]
    assert deployment.get_tags() == ok(call(stack, alice, "get_tags", {"deployment": name}))["tags"] == [
        "cool", "camera 1", "extra", "night"]

    # information and update
    info = deployment.retrieve_information()
    assert info["deployment"] == info["name"] == name and info["pipeline_name"] == "monitored"
    assert info["workspace_id"] == alice.workspace_id and info["status"] == "Running"
    assert info["model_version"] == {"name": "ccfraud", "version": first.version, "sha": first.sha}
    assert info["shadow_model_version"] is None and info["min_threshold"] is None
    updated = ok(call(stack, alice, "update", {"deployment": name, "name": "awesome deploy", "min_threshold": 0.4}))
    assert (updated["name"], updated["min_threshold"], updated["target_datalake"]) == ("awesome deploy", 0.4, None)
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id, "name": "lake"}))
    ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "reviews", "kind": "images"}))
    updated = deployment.update(target_datalake="reviews")  # an images dataset of the workspace, by name
    assert (updated["name"], updated["min_threshold"], updated["target_datalake"]) == (
        "awesome deploy", 0.4, "reviews")
    assert ok(call(stack, alice, "retrieve_information", {"deployment": name})) | {"status": "Running"} == \
        deployment.retrieve_information() | {"status": "Running"}
    assert deployment.get_model_version() == ok(call(stack, alice, "get_model_version", {"deployment": name}))[
        "model_version"] == {"name": "ccfraud", "version": first.version, "sha": first.sha}
    assert deployment.get_shadow_model() is None
    assert ok(call(stack, alice, "get_shadow_model", {"deployment": name}))["model_version"] is None

    # bad arguments: 4xx with a typed code, nothing changed
    before = state(stack, alice, name)
    bad = [("add_tags", {"deployment": name, "tags": []}, 400),
           ("add_tags", {"deployment": name, "tags": ["tab\there"]}, 400),
           ("add_tags", {"deployment": name, "tags": ["ok"], "color": "red"}, 400),
           ("update", {"deployment": name, "min_threshold": 1.5}, 400),
           ("update", {"deployment": name}, 400),
           ("update", {"deployment": name, "name": ""}, 400),
           ("update", {"deployment": name, "target_datalake": "no-such-dataset"}, 404),
           ("set_model", {"deployment": name, "model_version": {"name": "no-such-model"}}, 404),
           ("set_model", {"deployment": name}, 400),
           ("set_shadow_model", {"deployment": name, "model_version": {"name": "ccfraud", "version": "nope"}},
            (400, 404)),
           ("get_tags", {"deployment": "monitored-999999"}, 404),
           ("get_tags", {"deployment": "no-number"}, 404)]
    for route, body, status in bad:
        answer = call(stack, alice, route, body)
        assert answer.status_code in (status if isinstance(status, tuple) else (status,)), (route, body, answer.text)
        assert answer.json()["code"] and answer.json()["msg"], answer.text
    assert state(stack, alice, name) == before

    # isolation: bob (another workspace) finds nothing and changes nothing; an inference token manages nothing
    for route in READS:
        assert call(stack, bob, route, {"deployment": name}).status_code == 404
    for route, body in [("add_tags", {"tags": ["bobs"]}), ("update", {"min_threshold": 0.9, "name": "bob"}),
                        ("set_model", {"model_version": {"name": "ccfraud-b"}}),
                        ("set_shadow_model", {"model_version": {"name": "ccfraud-b"}})]:
        assert call(stack, bob, route, {"deployment": name, **body}).status_code == 404, route
    scoring = inference_token(stack, alice)
    assert call(stack, scoring, "add_tags", {"deployment": name, "tags": ["scorer"]}).status_code == 403
    assert call(stack, None, "get_tags", {"deployment": name}).status_code == 401
    assert state(stack, alice, name) == before

    # set_model (SDK): a new pipeline version, deployed in place under the same name with no failed request
    # (raw HTTP while it swaps: the SDK's retries would hide a failure); settings and tags kept
    statuses: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def keep_inferring() -> None:
        record = [{"tensor": rows["tensor"][0].tolist()}]
        with httpx.Client(timeout=30) as http:
            while not done.is_set():
                reply = http.post(f"{stack.api}/pipelines/infer/{name}/monitored", json=record, headers={
                    "Authorization": f"Bearer {alice.token}",
                    "Content-Type": "application/json; format=pandas-records"})
                statuses.append(reply.status_code)
                if reply.status_code != 200:
                    failures.append(reply.text[:300])

    worker = threading.Thread(target=keep_inferring)
    worker.start()
    try:
        answer = deployment.set_model(second)
    finally:
        done.set()
        worker.join()
    assert len(statuses) > 5 and set(statuses) == {200}, (len(statuses), statuses.count(200), failures[:3])
    assert answer["model_version"] == {"name": "ccfraud-b", "version": second.version, "sha": second.sha}
    assert ok(call(stack, alice, "get_model_version", {"deployment": name}))["model_version"]["name"] == "ccfraud-b"
    after = deployment.retrieve_information()
    assert after["deployment"] == name and after["pipeline_version"] == answer["pipeline_version"]
    assert after["pipeline_version"] != info["pipeline_version"]
    assert after["tags"] == before["info"]["tags"] and after["min_threshold"] == 0.4
    assert pipeline.refresh().to_dict()["deployment"]["engine_config"]["cpus"] == 0.5  # the engine config is kept
    definition = pipeline.refresh().definition
    assert len(pipeline.versions()) == 2
    served = np.stack(pipeline.infer(rows)["out.dense_1"].to_numpy())
    np.testing.assert_allclose(served, baseline, rtol=1e-5)  # the same network under another name, serving

    # set_shadow_model (HTTP): the model step becomes a ShadowDeploy with the champion kept
    shadow = ok(call(stack, alice, "set_shadow_model", {"deployment": name, "model_version": {"name": "ccfraud"}}))
    assert shadow["model_version"] == {"name": "ccfraud", "version": first.version, "sha": first.sha}
    assert deployment.get_shadow_model() == shadow["model_version"]
    assert deployment.get_model_version()["name"] == "ccfraud-b"
    steps = client.pipeline("monitored").versions()[-1]["definition"]["steps"]
    assert list(steps[0]) == ["ShadowDeploy"] and steps[0]["ShadowDeploy"]["champion"]["name"] == "ccfraud-b"
    assert definition != client.pipeline("monitored").definition
    assert np.stack(pipeline.infer(rows)["out.dense_1"].to_numpy()).shape == baseline.shape
    # setting the same shadow model again changes nothing
    again = deployment.set_shadow_model(first)
    assert again["pipeline_version"] == shadow["pipeline_version"] and len(pipeline.versions()) == 3

    # delete: refused while tags and settings would be lost (and to bob), then forced; the pipeline stays
    assert call(stack, bob, "delete", {"deployment": name, "force_delete": True}).status_code == 404
    assert call(stack, alice, "delete", {"deployment": name, "force_delete": "maybe"}).status_code == 400
    refused = call(stack, alice, "delete", {"deployment": name})
    assert refused.status_code == 409 and refused.json()["code"] == "conflict", refused.text
    assert deployment.get_tags() == before["info"]["tags"]
    deployment.delete(force_delete=True)
    assert call(stack, alice, "retrieve_information", {"deployment": name}).status_code == 404
    assert deployment.status()["status"] == "Stopped"
    assert len(client.pipeline("monitored").versions()) == 3
