"""set_model and set_shadow_model refuse a model version that takes other inputs than the deployment's model (journey,
session 28): set_model of an ML backend's deployment to an ONNX model answered 200, and every inference after was a
400 ("the model takes columns ['tensor']: missing columns ['tensor']; unexpected columns ['task']"). Now a 400
incompatible_model naming the inputs, with no pipeline version made and the old model still serving; a version of the
same inputs is still swapped in. A Python step (inputs not recorded: its code's) is refused too, 400
model_inputs_unknown (session 30; it was swapped in unchecked). Real NATS, PostgreSQL, S3 and onnxruntime
(services/monitoring/model_inputs.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.monitoring.handlers import _with_model
from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.integration.test_ml_backend_predictions import DETECTION_CONFIG
from tests.integration.test_ml_backend_shadow import upload_backend
from tests.models import ccfraud_onnx, sample_rows, wide_onnx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "setinputs")
    yield account
    undeploy_all(stack, account)


def versions(stack, owner) -> list[int]:
    listed = post(stack, "pipelines/list", owner.token, {"workspace_id": owner.workspace_id}).json()
    return sorted(len(p["versions"]) for p in listed["pipelines"])


def test_a_model_of_other_inputs_is_refused_and_the_deployment_keeps_serving(stack, owner, tmp_path):
    client = sdk(stack, owner)
    onnx = tmp_path / "ccfraud.onnx"
    onnx.write_bytes(ccfraud_onnx())
    first = client.upload_model("fraud", onnx, progress=False)
    same = client.upload_model("fraud-b", onnx, progress=False)  # the same inputs: tensor float[?, 29]
    wide = tmp_path / "wide.onnx"
    wide.write_bytes(wide_onnx(64))  # input image float[?, 64]
    other = client.upload_model("wide", wide, progress=False)
    backend = upload_backend(client, tmp_path, "squares-backend", DETECTION_CONFIG)  # one column, task
    script = tmp_path / "step.py"
    script.write_text("def wallaroo_json(data):\n    return data\n")
    step = client.upload_model("step", script, framework="python", progress=False)  # no input_schema: not known
    pipeline = client.build_pipeline("inputs").add_model_step(first).deploy(replicas=1, cpus=0.5, timeout=180)
    name = client.get_deployment("inputs").name
    rows = pd.DataFrame({"tensor": list(sample_rows(3, seed=3).astype(np.float64))})
    baseline = np.stack(pipeline.infer(rows)["out.dense_1"].to_numpy())
    before = versions(stack, owner)

    for route in ("set_model", "set_shadow_model"):
        for refused, says in ((other, "it takes ['image']"), (backend, "it takes ['task']"),
                              (step, "(a Python step) has no recorded inputs")):
            answer = post(stack, f"deployments/{route}", owner.token, {
                "deployment": name, "model_version": {"name": refused.name, "version": refused.version}})
            assert answer.status_code == 400, (route, refused.name, answer.text)
            body = answer.json()
            assert "'tensor' (float[29])" in body["msg"] and says in body["msg"] and f"{route}:" in body["msg"], body
            if refused is step:
                assert body["code"] == "model_inputs_unknown" and "input_schema" in body["msg"], body
            else:
                assert body["code"] == "incompatible_model", body
                assert "does not take ['tensor']" in body["msg"], body
    assert versions(stack, owner) == before  # no pipeline version made, nothing deployed
    information = post(stack, "deployments/retrieve_information", owner.token, {"deployment": name}).json()
    assert information["model_version"]["version"] == first.version and information["shadow_model_version"] is None
    np.testing.assert_allclose(np.stack(pipeline.infer(rows)["out.dense_1"].to_numpy()), baseline, rtol=1e-5)

    # the same inputs under another model: swapped in, serving. As asked again after a first try whose version was
    # created and whose deploy then failed (a 503: the deployer's database away): that try's version, made here as
    # it made it, is the one deployed, and no second one is made (services/monitoring/handlers.py set_model)
    listed = post(stack, "pipelines/list", owner.token, {"workspace_id": owner.workspace_id}).json()
    (record,) = [p for p in listed["pipelines"] if p["name"] == "inputs"]
    first_try = post(stack, "pipelines/create", owner.token, {
        "pipeline_id": "inputs", "workspace_id": owner.workspace_id, "definition": _with_model(
            record["versions"][-1]["definition"], {"name": same.name, "version": same.version, "sha": same.sha},
            shadow=False)})
    assert first_try.status_code == 200, first_try.text
    assert versions(stack, owner) == [before[0] + 1]
    swapped = post(stack, "deployments/set_model", owner.token, {
        "deployment": name, "model_version": {"name": same.name, "version": same.version}})
    assert swapped.status_code == 200, swapped.text
    assert swapped.json()["model_version"]["name"] == "fraud-b"
    assert swapped.json()["pipeline_version"] == first_try.json()["pipeline_variant_version"], swapped.text
    assert versions(stack, owner) == [before[0] + 1]
    np.testing.assert_allclose(np.stack(pipeline.infer(rows)["out.dense_1"].to_numpy()), baseline, rtol=1e-5)
