"""A deployment whose restore after a deployer restart fails, over HTTP on the real stack (docs/inference.md,
"Deployments"): its status is Error with the reason, its inference a 503 `deployment_failed` saying to redeploy
(it said "Starting" forever, with nothing running), and a redeploy brings it back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time

import onnx
import pytest
import requests

from shared import subjects
from tests.integration.bus_events import stream_events
from tests.integration.conftest import Account, post
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

RECORDS = "application/json; format=pandas-records"


def _infer(url: str, token: str) -> requests.Response:
    return requests.post(url, data=json.dumps([{"tensor": sample_rows(1)[0].tolist()}]), timeout=60,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": RECORDS})


def _status(stack, account: Account, name: str) -> dict:
    """The deployment's status; {} while the deployer does not answer (it is restarting)."""
    response = requests.post(f"{stack.api}/status/get_deployment", json={"name": name}, timeout=30,
                             headers={"Authorization": f"Bearer {account.token}"})
    return response.json() if response.status_code == 200 else {}


def test_a_deployment_whose_restore_fails_says_so_and_a_redeploy_brings_it_back(stack, alice):
    model = onnx.load_from_string(ccfraud_onnx())
    model.doc_string = "restore failure"  # an artifact of its own: no other test's replicas read its cache file
    content = model.SerializeToString()
    uploaded = requests.post(f"{stack.api}/models/upload_stream", files={"file": ("restorefail", content)},
                             data={"name": "restorefail", "workspace_id": alice.workspace_id},
                             headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    version = post(stack, "pipelines/create", alice.token, {
        "pipeline_id": "restorefail", "workspace_id": alice.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [{"name": "restorefail"}]}}]}}).json()
    deploy = {"deploy_id": "restorefail", "pipeline_id": version["pipeline_pk_id"],
              "pipeline_version_pk_id": version["pipeline_variant_pk_id"]}
    deployed = post(stack, "pipelines/deploy", alice.token, deploy)
    assert deployed.status_code == 200, deployed.text
    name = f"restorefail-{deployed.json()['id']}"
    url = post(stack, "admin/get_pipeline_external_url", alice.token,
               {"workspace_id": alice.workspace_id, "pipeline_name": "restorefail"}).json()["url"]
    assert _infer(url, alice.token).status_code == 200  # the gateway caches its route as Running

    # the replicas' cached artifact goes bad (the running replica loaded it already), then the deployer dies
    cached = stack.data_dir / "engine-cache" / hashlib.sha256(content).hexdigest()
    assert cached.exists(), cached
    cached.write_bytes(b"not the model")
    os.kill(stack.state()["components"]["deployer"]["pid"], signal.SIGKILL)
    # the restore's verdict: for a moment before it, the replica that exited is listed, Error with its own reason
    # (LocalBackend.replica_state), until the restore's start gives up on it and drops the set
    deadline = time.monotonic() + 60
    while (status := _status(stack, alice, name)).get("status") != "Error" or status["engines"]:
        assert status.get("status") != "Running" and time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["engines"] == [] and len(status["details"]) == 1, status
    assert "sha256" in status["details"][0] and "failed to restore" in status["details"][0], status
    # the restarted deployer named it at its start (events.pipeline.serving, for the log store: whose it is does not
    # depend on the restore)
    deadline = time.monotonic() + 30
    while not (serving := asyncio.run(stream_events(stack, subjects.EVENT_PIPELINE_SERVING, "name", {name}))):
        assert time.monotonic() < deadline, "the restarted deployer did not name its deployment serving"
        time.sleep(0.3)
    assert {(e["deployment_id"], e["workspace_id"]) for e in serving} == {(deployed.json()["id"], alice.workspace_id)}
    answer = _infer(url, alice.token)
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "deployment_failed", answer.text
    assert "failed to restore" in answer.json()["msg"] and "redeploy" in answer.json()["msg"], answer.text

    # the failing replica dropped the bad file: a redeploy downloads the artifact again and serves
    redeployed = post(stack, "pipelines/deploy", alice.token, deploy)
    assert redeployed.status_code == 200, redeployed.text
    assert _status(stack, alice, name)["status"] == "Running"
    assert _infer(url, alice.token).status_code == 200
    undeployed = post(stack, "pipelines/undeploy", alice.token,
                      {"pipeline_id": version["pipeline_pk_id"], "deployment_id": deployed.json()["id"]})
    assert undeployed.status_code == 200, undeployed.text
