"""Continuous training of a deployment served by an ML backend, on the real stack: examples/ml_backend's image
classifier deployed untrained with `railyard-ml deploy railyard`; continuous training set up without an
orchestration (the backend's own fit trains it; scan_config refused); two predictions made elsewhere, reviewed
(corrected) into the feedback loop's dataset; the threshold starts exactly one task run of the built-in
orchestration, which fits the backend in the sandbox on those reviews and registers a new version of the same model
— its state learned the reviewed labels and it answers them — left pending under DEPLOY_MANUAL; then a fit that
learns nothing fails its run and registers nothing."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from railyard_client import Client, Lineage, Orchestrations

from tests.integration.conftest import PASSWORD, make_account, post, undeploy_all
from tests.ml_backend.test_examples import IMAGE_CONFIG, image

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "railyard-ml")


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return value


def model_id(stack, owner) -> int:
    listed = post(stack, "models/list", owner.token, {"workspace_id": owner.workspace_id}).json()["models"]
    return next(m["id"] for m in listed if m["name"] == "colours")


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "mlfit")
    yield account
    undeploy_all(stack, account)


def test_reviews_retrain_the_backend_through_its_fit_into_a_new_model_version(stack, owner, tmp_path):
    secrets = stack.secrets()
    client = Client(stack.base_url, username=owner.email, password=PASSWORD, client_id=secrets["client_id"],
                    client_secret=secrets["client_secret"], workspace=owner.workspace_id)
    folder = tmp_path / "colours"
    folder.mkdir()
    script = REPO / "examples" / "ml_backend" / "image_classifier" / "image_classifier.py"
    (folder / script.name).write_text(script.read_text())
    (folder / "railyard-ml.json").write_text(json.dumps({"script": script.name, "model_class": "ImageClassifier"}))
    (folder / "requirements.txt").write_text("railyard-ml\n")
    (tmp_path / "config.xml").write_text(IMAGE_CONFIG)
    deployed = subprocess.run(
        [CLI, "deploy", "railyard", str(folder), "--pipeline", "colours", "--label-config",
         str(tmp_path / "config.xml"), "--url", stack.base_url, "--username", owner.email, "--password", PASSWORD,
         "--client-id", secrets["client_id"], "--client-secret", secrets["client_secret"],
         "--workspace", str(owner.workspace_id)], capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stderr
    deployment = client.get_deployment("colours")
    served = deployment.get_model_version()
    assert served["name"] == "colours"

    lineage = Lineage(client, owner.workspace_id)
    project = lineage.create_project("colours")
    train = lineage.create_dataset(project["id"], "reviewed", kind="images")
    deployment.setup_feedback_loop(train)

    # a backend has no scan: 400 with a typed code, nothing stored
    refused = post(stack, "deployments/setup_continuous_training", owner.token, {
        "deployment": deployment.name, "project_id": project["id"], "threshold": 2, "scan_config": {"c": [1, 2]}})
    assert refused.status_code == 400 and refused.json()["code"] == "scan_config_unsupported", refused.text
    # the backend's fit reads reviews from images datasets and trains the model it serves (journey, session 28: a
    # tabular dataset was stored, its every run to fail; another model_name was told the model is no backend)
    rows = lineage.create_dataset(project["id"], "rows", kind="tabular")
    for extra, words in [
        ({"dataset_version": {"dataset_id": rows["id"]}},
         f"dataset {rows['id']} is a tabular dataset: continuous training through the deployment's ML backend"),
        ({"model_name": "other"}, "model_name 'other' is not the model of the deployment's ML backend ('colours')"),
    ]:
        refused = post(stack, "deployments/setup_continuous_training", owner.token, {
            "deployment": deployment.name, "project_id": project["id"], "threshold": 2, "experiment_parameters": {},
            **extra})
        assert refused.status_code == 400 and refused.json()["code"] == "invalid_request", refused.text
        assert words in refused.json()["msg"], refused.text
    assert deployment.retrieve_information()["continuous"]["training"] is None

    info = deployment.setup_continuous_training(project, train, threshold=2,
                                                experiment_parameters={"note": "from reviews"})["training"]
    assert info["kind"] == "ml_backend" and info["model_name"] == "colours"
    refused = post(stack, "deployments/attach_dataset_version_to_continuous_training", owner.token, {
        "deployment": deployment.name, "alias": "eval", "dataset_version": {"dataset_id": rows["id"]}})
    assert refused.status_code == 400 and "is a tabular dataset" in refused.json()["msg"], refused.text
    assert deployment.retrieve_information()["continuous"]["training"]["datasets"] == {
        "train": {"dataset_id": train["id"], "version_id": None}}
    builtin = [o for o in Orchestrations(client, owner.workspace_id).list() if o["id"] == info["orchestration_id"]]
    assert [o["name"] for o in builtin] == ["railyard-ml continuous training"]

    # two predictions made elsewhere (both wrong), corrected by a reviewer: red is class 0, blue class 1
    for index, (colour, truth) in enumerate([("Red", 0), ("Blue", 1)]):
        made = deployment.monitor_bytes(image(colour, index), "image/png", f"{colour}.png", latency=0.01,
                                        height=24, width=24,
                                        prediction={"detection_classes": [1 - truth], "detection_scores": [0.6]})
        deployment.review_prediction(made["id"], {"detection_classes": [truth]})

    training = wait_for(lambda: (t := deployment.retrieve_information()["continuous"]["last_training"]) and
                        t["state"] in ("done", "failed") and t, 120, "the training")
    tasks = [t for t in Orchestrations(client, owner.workspace_id).tasks()
             if (t["name"] or "").startswith("continuous training of")]
    runs = Orchestrations(client, owner.workspace_id).runs(tasks[0]["id"])
    assert training["state"] == "done", (training, runs)
    assert len(tasks) == 1 and [r["status"] for r in runs] == ["success"]
    assert tasks[0]["input_data"]["ml_backend"] == {"name": "colours", "version": served["version"]}
    assert tasks[0]["input_data"]["experiment_parameters"] == {"note": "from reviews"}
    trained = training["model_version"]
    assert training["outcome"] == "pending" and trained["name"] == "colours"
    assert trained["version"] != served["version"]
    assert deployment.retrieve_information()["continuous"]["pending_model_version"] == trained
    assert deployment.get_model_version()["version"] == served["version"]  # DEPLOY_MANUAL: a person decides

    # the new version is the backend with what fit learned from the two reviews, and it answers them
    package = client.download_model("colours", trained["version"])
    unpacked = tmp_path / "trained"
    zipfile.ZipFile(io.BytesIO(package)).extractall(unpacked)
    state = json.loads((unpacked / "backend" / "railyard_state" / "state.json").read_text())
    output = json.loads(state["values"]["train_output"])
    assert output["labels"] == ["Blue", "Red"] and output["trained_on"] == 2
    assert state["values"]["model_version"] != "image-classifier-0.0.1"
    from railyard_ml.railyard_step import StepModel

    model = StepModel.load(unpacked / "backend")
    for colour in ("Red", "Blue"):
        (tmp_path / f"{colour}.png").write_bytes(image(colour, 50))
    predictions, _, _ = model.predict_json([json.dumps({"image": str(tmp_path / f"{c}.png")}) for c in ("Red", "Blue")])
    assert [json.loads(p)["result"][0]["value"]["choices"] for p in predictions] == [["Red"], ["Blue"]]

    # a fit that learns nothing (a `train` dataset holding one label only) fails its run: no new version
    single = lineage.create_dataset(project["id"], "one-colour", kind="images")
    lineage.upload_file(single["id"], image("Red", 7), name="red.png", labels={
        "kind": "classification", "decision": "accepted", "prediction_id": "elsewhere-1",
        "ground_truth": {"detection_classes": [0], "detection_scores": [1.0]}})
    deployment.setup_continuous_training(project, single, threshold=1, experiment_parameters={})
    made = deployment.monitor_bytes(image("Blue", 8), "image/png", "blue.png", latency=0.01, height=24, width=24,
                                    prediction={"detection_classes": [1], "detection_scores": [0.9]})
    deployment.review_prediction(made["id"])
    failed = wait_for(lambda: (t := deployment.retrieve_information()["continuous"]["last_training"])["id"] !=
                      training["id"] and t["state"] in ("done", "failed") and t, 120, "the second training")
    assert failed["state"] == "failed" and failed["model_version"] is None, failed
    assert "training run failed" in failed["reason"]
    assert deployment.retrieve_information()["continuous"]["pending_model_version"] == trained
    versions = post(stack, "models/list_versions", owner.token, {"models_pk_id": model_id(stack, owner)})
    assert len(versions.json()) == 2, versions.text  # the deployed one and the first training's

    graph = post(stack, "workflow/graph", owner.token, {"workspace_id": owner.workspace_id, "kind": "model_version",
                                                        "ref": trained["version"], "direction": "ancestors"})
    assert graph.status_code == 200, graph.text
    assert ("task_run", training["run_id"]) in {(n["kind"], n["ref"]) for n in graph.json()["nodes"]}

    # session 28 (setmodel): without orchestration_id and experiment_parameters, the answer says to pass
    # experiment_parameters (the seed's "exactly one of experiment_parameters or scan_config" named scan_config too,
    # which a backend refuses)
    ours = {"deployment": deployment.name, "project_id": project["id"], "threshold": 5}
    refused = post(stack, "deployments/setup_continuous_training", owner.token, ours)
    assert refused.status_code == 400 and refused.json()["code"] == "experiment_parameters_missing", refused.text
    assert "experiment_parameters={}" in refused.json()["msg"], refused.text
    # set up with a recipe of its own, a tabular dataset attached (allowed: the recipe reads what it wants); set up
    # again as the backend's fit, that dataset would fail every run: 400 naming it, nothing changed
    own = deployment.setup_continuous_training(project, None, threshold=5, experiment_parameters={},
                                               orchestration=info["orchestration_id"])["training"]
    assert own["kind"] == "orchestration"
    kept = post(stack, "deployments/attach_dataset_version_to_continuous_training", owner.token, {
        "deployment": deployment.name, "alias": "eval", "dataset_version": {"dataset_id": rows["id"]}})
    assert kept.status_code == 200, kept.text
    before = deployment.retrieve_information()["continuous"]["training"]
    refused = post(stack, "deployments/setup_continuous_training", owner.token, ours | {"experiment_parameters": {}})
    assert refused.status_code == 400, refused.text
    assert f"dataset {rows['id']}, attached as 'eval'" in refused.json()["msg"], refused.text
    assert deployment.retrieve_information()["continuous"]["training"] == before

    # set_model of an ONNX model (input tensor) onto the backend's deployment (input task): 400, still the backend
    from tests.models import ccfraud_onnx

    (tmp_path / "ccfraud.onnx").write_bytes(ccfraud_onnx())
    fraud = client.upload_model("ccfraud", tmp_path / "ccfraud.onnx", progress=False)
    for route in ("set_model", "set_shadow_model"):
        refused = post(stack, f"deployments/{route}", owner.token, {
            "deployment": deployment.name, "model_version": {"name": fraud.name, "version": fraud.version}})
        assert refused.status_code == 400 and refused.json()["code"] == "incompatible_model", refused.text
        assert "does not take ['task']" in refused.json()["msg"], refused.text
    assert deployment.get_model_version()["version"] == served["version"] and deployment.get_shadow_model() is None
