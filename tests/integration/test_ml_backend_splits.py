"""ML backends in the two other multi-model steps, on the real stack (test_ml_backend_shadow.py has a ShadowDeploy
of backends): an A/B split (`RandomSplit`) of two backends answering under different control names, and an ONNX
champion shadowed by an ML-backend challenger. Through the gateway each arm of the split answers with its own
labeling config's control and `_model_split` names it, and seed 003's predict on images is recorded under the arm
that answered (read with its control; get_stats per arm counts its own); the ONNX champion answers a row holding
its tensor and the backend's `task`, and the log holds the challenger's prediction."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from shared.arrow_codec import from_ipc
from tests.image_models import detector_image_config, detector_onnx, squares_png
from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.integration.test_ml_backend_predictions import DETECTION_CONFIG, squares
from tests.integration.test_ml_backend_shadow import ARROW, RIVAL_CONFIG, upload_backend
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "mlsplit")
    yield account
    undeploy_all(stack, account)
    account.client.close()


def infer(stack, owner, pipeline: str, rows: list[dict]) -> httpx.Response:
    url = post(stack, "admin/get_pipeline_external_url", owner.token,
               {"workspace_id": owner.workspace_id, "pipeline_name": pipeline}).json()["url"]
    return httpx.post(url, json=rows, timeout=60, headers={
        "Authorization": f"Bearer {owner.token}", "Content-Type": "application/json; format=pandas-records"})


@pytest.fixture(scope="module")
def deployed(stack, owner, tmp_path_factory):
    """The module's three deployments (an A/B split of two backends, an ONNX champion shadowed by a backend, an
    image-configured ONNX detector shadowed by a backend), started side by side: (client, the split's arms, fraud)."""
    client = sdk(stack, owner)
    folder = tmp_path_factory.mktemp("backends")
    found, spotted = (upload_backend(client, folder, name, config) for name, config in (
        ("squares-found", DETECTION_CONFIG), ("squares-spotted", RIVAL_CONFIG)))
    fraud = client.upload_model("fraud", ccfraud_onnx(), progress=False)
    detector = client.upload_model("bright", detector_onnx(), progress=False)
    split = client.build_pipeline("squares-ab").add_random_split([1, 1], [found, spotted])
    shadowed = client.build_pipeline("fraud-shadowed").add_shadow_deploy(fraud, [spotted])
    # the detector's classes named as the backend's colours: its class 1 (a bright cell) is "Red", which the backend
    # calls a white square (its colour is the first channel of the largest sum)
    image_config = {**detector_image_config(), "labels": ["Blue", "Red"]}
    watched = client.build_pipeline("bright-shadowed").add_shadow_deploy(detector, [spotted], image=image_config)
    for pipeline in (split, shadowed, watched):
        pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    for pipeline in (split, shadowed, watched):
        pipeline.deployment().wait_until_running(180)
    yield client, found, spotted, fraud
    client.close()


def test_an_ab_split_of_backends_and_an_onnx_champion_with_a_backend_challenger(stack, owner, deployed):
    from tests.ml_backend.conftest import wait_until

    client, found, spotted, _ = deployed
    png = squares((16, 16), [((200, 0, 0), (2, 4, 10, 12))])
    task = json.dumps({"id": 1, "data": {"image": "data:image/png;base64," + base64.b64encode(png).decode()}})

    # the A/B split: one arm per request, each answering with its own control; both arms answer within 20 requests
    # (each is chosen with probability 1/2)
    answered: dict[str, list] = {}
    for _ in range(20):
        answer = infer(stack, owner, "squares-ab", [{"task": task}])
        assert answer.status_code == 200, answer.text
        out = answer.json()[0]["out"]
        arm = json.loads(out["_model_split"][0])["name"]
        answered[arm] = [(r["from_name"], r["value"]["rectanglelabels"])
                         for r in json.loads(out["prediction"])["result"]]
        if len(answered) == 2:
            break
    assert answered == {"squares-found": [("found", ["Red"])], "squares-spotted": [("spotted", ["Red"])]}

    # seed 003's predict on images goes through the engine like any inference: the split picks the arm, the
    # prediction is recorded under the model version that answered, read with that arm's own control (read with the
    # first arm's "found", the spotted arm's boxes were an empty prediction); both arms within 20 predictions
    deployment = client.get_deployment("squares-ab")
    arms = {"squares-found": found, "squares-spotted": spotted}
    predicted: dict[str, int] = {}
    for _ in range(20):
        result = deployment.predict_bytes("red.png", png)
        version = result["model_version"]
        assert (version["version"], version["sha"]) == (arms[version["name"]].version, arms[version["name"]].sha)
        assert result["prediction"]["detection_classes"] == [1] and result["labels"] == ["Red"]
        assert result["prediction"]["detection_boxes"] == [[2, 4, 10, 12]] and result["shadow_prediction"] is None
        predicted[version["name"]] = predicted.get(version["name"], 0) + 1
        if len(predicted) == 2:
            break
    assert set(predicted) == set(arms), predicted
    # the stored rows: get_stats per model version counts each arm's own predictions
    for name, arm in arms.items():
        stats = deployment.get_stats("PREDICTIONS_DATA", model_version=arm)
        assert stats["predictions"] == predicted[name]
        assert {one["model_version"]["name"] for one in stats["stats"]["predictions"]} == {name}

    # the ONNX champion takes its tensor, the backend challenger the task of the same row: the champion answers
    rows = [{"tensor": sample_rows(1)[0].tolist(), "task": task}]
    answer = infer(stack, owner, "fraud-shadowed", rows)
    assert answer.status_code == 200, answer.text
    record = answer.json()[0]
    assert json.loads(record["metadata"]["last_model"])["model_name"] == "fraud"
    assert set(record["out"]) == {"dense_1"} and len(record["out"]["dense_1"]) == 1

    def logged():
        response = httpx.post(f"{stack.api}/pipelines/get_logs", timeout=30, json={
            "pipeline_id": "fraud-shadowed", "workspace_id": owner.workspace_id, "order": "Asc"},
            headers={"Authorization": f"Bearer {owner.token}", "Accept": ARROW})
        table = from_ipc(response.content) if response.status_code == 200 else None
        return table if table is not None and "out_squares-spotted.prediction" in table.column_names else None

    table = wait_until(logged, timeout=30, every=0.2)
    assert table.num_rows == 1 and "out.dense_1" in table.column_names
    challenger = json.loads(table.column("out_squares-spotted.prediction")[0].as_py())["result"]
    assert [(r["from_name"], r["value"]["rectanglelabels"]) for r in challenger] == [("spotted", ["Red"])]

    # seed 003's predict on an ONNX champion with an ML-backend challenger: the champion takes the image as its
    # configured tensor, the challenger the image as a task in the same row, and the prediction keeps both (the
    # challenger's boxes read with its control, as the image configuration's class ids); it had no shadow part
    white = squares_png({(1, 1): 255}, size=32)
    predicted = client.get_deployment("bright-shadowed").predict_bytes("white.png", white)
    assert predicted["model_version"]["name"] == "bright"
    assert predicted["shadow_model_version"]["name"] == "squares-spotted"
    assert predicted["prediction"]["detection_classes"][0] == 1
    assert predicted["prediction"]["detection_boxes"][0] == [8, 8, 16, 16]
    assert predicted["shadow_prediction"] == {"detection_classes": [1], "detection_scores": [0.9],
                                              "detection_boxes": [[8, 8, 16, 16]], "detection_masks": None}
    assert predicted["shadow_latency"] > 0


def test_an_ab_splits_model_versions_monitor_and_set_model(deployed):
    """Seed 003's deployment methods on the A/B split: the views list both arms and name the first as the model
    version, monitor records the arm the caller names (none when not named) and refuses a model no arm serves or a
    class the first arm's labels lack, set_model says why it cannot and what to deploy instead."""
    from railyard_client import Conflict, InvalidRequest

    client, found, spotted, fraud = deployed
    deployment = client.get_deployment("squares-ab")
    pinned = {arm.name: {"name": arm.name, "version": arm.version, "sha": arm.sha} for arm in (found, spotted)}
    information = deployment.retrieve_information()
    assert information["split"] == {"hash_key": None, "arms": [
        pinned[name] | {"weight": 1.0, "share": 0.5} for name in ("squares-found", "squares-spotted")]}
    assert information["model_version"] == pinned["squares-found"] and information["shadow_model_version"] is None
    assert deployment.get_model_version() == pinned["squares-found"] and deployment.get_shadow_model() is None

    def counted(model_version=None) -> int:
        return deployment.get_stats("PREDICTIONS_DATA", model_version=model_version)["predictions"]

    before = (counted(), counted(found), counted(spotted))
    png = squares((16, 16), [((200, 0, 0), (2, 4, 10, 12))])
    made = {"detection_classes": [1], "detection_scores": [0.8], "detection_boxes": [[2, 4, 10, 12]]}
    kept = deployment.monitor_bytes(png, "image/png", "red.png", 0.01, 16, 16, made, model_version=spotted.name)
    assert kept["model_version"] == pinned["squares-spotted"]
    unnamed = deployment.monitor_bytes(png, "image/png", "red.png", 0.01, 16, 16, made)
    assert unnamed["model_version"] is None
    with pytest.raises(InvalidRequest, match="'fraud' version .* is not an arm of deployment .* give one of "
                                             "'squares-found' version"):
        deployment.monitor_bytes(png, "image/png", "red.png", 0.01, 16, 16, made, model_version=fraud)
    # checked against the first arm's labels (Blue, Red), as predict records every arm's class ids
    with pytest.raises(InvalidRequest, match="detection_classes"):
        deployment.monitor_bytes(png, "image/png", "red.png", 0.01, 16, 16, made | {"detection_classes": [2]},
                                 model_version=spotted)
    # the named arm counts it, the other does not, the deployment counts both; the refused one is nowhere
    assert (counted(), counted(found), counted(spotted)) == (before[0] + 2, before[1], before[2] + 1)

    for change in (deployment.set_model, deployment.set_shadow_model):
        with pytest.raises(Conflict, match=r"'squares-found' \(weight 1\), 'squares-spotted' \(weight 1\) \(an A/B "
                                           r"split, RandomSplit\).*client.pipeline\('squares-ab'\).clear\(\)"):
            change(fraud)
    assert deployment.get_model_version() == pinned["squares-found"]
