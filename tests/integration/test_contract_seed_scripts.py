"""Seed 001's scripts run as a user has them: `requests` calls in the guide's order, each taking its header from
`wl.auth.auth_header()` with `wl` our SDK's Client, and each answer read the way the script reads it (the keys it
indexes, `pd.DataFrame.from_records` of the inference and log answers). The routes' shapes have their own tests
(test_users_workspaces.py, test_registry.py, test_pipelines.py, test_logs.py); this one is the journey a script
written against the guide makes, which must work unchanged."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import requests

from tests.integration.conftest import sdk_client
from tests.models import ccfraud_onnx

# seed 001, section 6 "Perform Inference Through External URL": the guide's one row
TENSOR = [1.0678324729, 0.2177810266, -1.7115145262, 0.682285721, 1.0138553067, -0.4335000013, 0.7395859437,
          -0.2882839595, -0.447262688, 0.5146124988, 0.3791316964, 0.5190619748, -0.4904593222, 1.1656456469,
          -0.9776307444, -0.6322198963, -0.6891477694, 0.1783317857, 0.1397992467, -0.3554220649, 0.4394217877,
          1.4588397512, -0.3886829615, 0.4353492889, 1.7420053483, -0.4434654615, -0.1515747891, -0.2668451725,
          -1.4549617756]


def test_the_guides_script_runs_unchanged_with_the_sdks_auth_header(stack, alice, tmp_path):
    wl = sdk_client(stack, alice)
    APIURL = stack.base_url  # noqa: N806 (the guide's names)
    (tmp_path / "ccfraud.onnx").write_bytes(ccfraud_onnx())

    # section 2, Create Workspace / List Workspaces
    headers = wl.auth.auth_header()
    assert set(headers) == {"Authorization"} and headers["Authorization"].startswith("Bearer ")
    response = requests.post(f"{APIURL}/v1/api/workspaces/create", json={"workspace_name": "apiworkspaces"},
                             headers=headers, verify=True).json()
    example_workspace_id = response["workspace_id"]
    headers = wl.auth.auth_header()
    response = requests.post(f"{APIURL}/v1/api/workspaces/list", json={}, headers=headers, verify=True).json()
    listed = next(w for w in response["workspaces"] if w["id"] == example_workspace_id)
    assert listed["name"] == "apiworkspaces" and listed["models"] == [] and listed["pipelines"] == []

    # section 5, Upload Native Runtime Model Example (ONNX, multipart metadata + file)
    headers = wl.auth.auth_header()
    model_name = "apimodel"
    data = {"name": model_name, "visibility": "public", "workspace_id": example_workspace_id,
            "conversion": {"framework": "onnx", "python_version": "3.8", "requirements": []}}
    with open(tmp_path / "ccfraud.onnx", "rb") as model_file:
        files = {"metadata": (None, json.dumps(data), "application/json"),
                 "file": (model_name, model_file, "application/octet-stream")}
        response = requests.post(f"{APIURL}/v1/api/models/upload_and_convert", files=files, headers=headers).json()
    assert isinstance(response["insert_models"]["returning"][0]["models"][0]["id"], int)

    # section 3, List Models in Workspace, then List model versions
    headers = wl.auth.auth_header()
    response = requests.post(f"{APIURL}/v1/api/models/list", json={"workspace_id": example_workspace_id},
                             headers=headers, verify=True).json()
    model = next(model for model in response["models"] if model["name"] == "apimodel")
    example_model_id = model["id"]
    headers = wl.auth.auth_header()
    response = requests.post(f"{APIURL}/v1/api/models/list_versions",
                             json={"model_id": model_name, "models_pk_id": example_model_id},
                             headers=headers, verify=True).json()
    example_model_version = response[-1]["model_version"]
    example_model_sha = response[-1]["sha"]

    # section 6, Create Pipeline in a Workspace with models, Deploy, Get Deployment Status
    headers = wl.auth.auth_header()
    data = {"pipeline_id": "pipelinemodels", "workspace_id": example_workspace_id,
            "definition": {"steps": [{"ModelInference": {"models": [
                {"name": model_name, "version": example_model_version, "sha": example_model_sha}]}}]}}
    response = requests.post(f"{APIURL}/v1/api/pipelines/create", json=data, headers=headers, verify=True).json()
    model_pipeline_id = response["pipeline_pk_id"]
    model_pipeline_variant_id = response["pipeline_variant_pk_id"]
    headers = wl.auth.auth_header()
    data = {"deploy_id": "pipelinemodels", "pipeline_version_pk_id": model_pipeline_variant_id,
            "models": [{"name": model_name, "version": example_model_version, "sha": example_model_sha}],
            "pipeline_id": model_pipeline_id}
    response = requests.post(f"{APIURL}/v1/api/pipelines/deploy", json=data, headers=headers, verify=True).json()
    model_deployment_id = response["id"]
    deadline = time.monotonic() + 60  # the guide sleeps 45 s; a script that polls the status instead
    while True:
        headers = wl.auth.auth_header()
        response = requests.post(f"{APIURL}/v1/api/status/get_deployment",
                                 json={"name": f"pipelinemodels-{model_deployment_id}"},
                                 headers=headers, verify=True).json()
        if response["status"] == "Running" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response["status"] == "Running", response
    assert response["engines"][0]["model_statuses"]["models"][0]["sha"] == example_model_sha

    # Get External Inference URL, then Perform Inference Through External URL
    headers = wl.auth.auth_header()
    response = requests.post(f"{APIURL}/v1/api/admin/get_pipeline_external_url",
                             json={"workspace_id": example_workspace_id, "pipeline_name": "pipelinemodels"},
                             headers=headers, verify=True).json()
    deployurl = response["url"]
    headers = wl.auth.auth_header()
    headers["Content-Type"] = "application/json; format=pandas-records"
    response = pd.DataFrame.from_records(requests.post(deployurl, json=[{"tensor": TENSOR}], headers=headers).json())
    assert list(response.columns) == ["time", "in", "out", "check_failures", "metadata"]
    assert list(response.loc[0, "out"]) == ["dense_1"] and len(response.loc[0, "out"]["dense_1"]) == 1
    inferred = response.loc[0, "out"]["dense_1"]

    # section 7, Standard Pipeline Logs Example (the log store writes after the answer: poll, bounded)
    deadline = time.monotonic() + 30
    while True:
        headers = wl.auth.auth_header()
        response = requests.post(f"{APIURL}/v1/api/pipelines/get_logs", headers=headers,
                                 json={"pipeline_id": "pipelinemodels", "workspace_id": example_workspace_id})
        standard_logs = pd.DataFrame.from_records(response.json())
        if len(standard_logs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(standard_logs) == 1 and response.headers["x-iteration-status"] == "All"
    logged = standard_logs.head(5).loc[:, ["time", "in", "out"]]
    assert logged.loc[0, "out"]["dense_1"] == pytest.approx(inferred, rel=1e-6)  # float32 as logged
    assert logged.loc[0, "in"]["tensor"] == pytest.approx(TENSOR, rel=1e-6)

    # Undeploy a Pipeline, then Copy a Pipeline
    headers = wl.auth.auth_header()
    response = requests.post(f"{APIURL}/v1/api/pipelines/undeploy",
                             json={"pipeline_id": model_pipeline_id, "deployment_id": model_deployment_id},
                             headers=headers, verify=True).json()
    assert response == {}
    headers = wl.auth.auth_header()
    response = requests.post(f"{APIURL}/v1/api/pipelines/copy",
                             json={"name": "copiedmodelpipeline", "workspace_id": example_workspace_id,
                                   "source_pipeline": model_pipeline_id}, headers=headers, verify=True).json()
    assert set(response) == {"pipeline_pk_id", "pipeline_variant_pk_id", "pipeline_version", "deployment"}
    wl.close()
