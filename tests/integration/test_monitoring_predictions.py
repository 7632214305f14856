"""Seed 003's predictions on the real stack: predict / predict_bytes run real ONNX models (a digits classifier with a
shadow challenger, a bright-square detector) through the engine over the bus and keep each prediction (row, image,
event); monitor / monitor_bytes keep predictions made elsewhere after strict checks; bad input, outsiders and
inference tokens are refused with nothing stored. One classifier and one detector deployment serve the module."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
import uuid
from datetime import datetime
from functools import cache

import httpx
import numpy as np
import pytest
from PIL import Image

from shared import subjects
from shared.objectstore import BUCKET_MONITORING, MinioObjectStore
from shared.sealed import sealed_request
from tests.image_models import (
    detector_image_config,
    detector_onnx,
    digit_png,
    digits_classifier,
    digits_classifier_onnx,
    digits_image_config,
    squares_png,
)
from tests.integration.bus_events import announced
from tests.integration.conftest import inference_token, make_account, post, query, rows_of, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.integration.test_isolation import task_token

pytestmark = pytest.mark.integration

WEAK = 40  # training digits of the shadow challenger


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "pred")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def deployed(stack, owner) -> dict:
    """The classifier (champion + weak shadow challenger) and the detector, deployed side by side."""
    client = sdk(stack, owner)
    digits = client.upload_model("digits", digits_classifier_onnx(), progress=False)
    weak = client.upload_model("digits-weak", digits_classifier_onnx(train_size=WEAK), progress=False)
    detector = client.upload_model("squares", detector_onnx(), progress=False)
    classifier = client.build_pipeline("digits").add_shadow_deploy(digits, [weak], image=digits_image_config())
    finder = client.build_pipeline("squares").add_model_step(detector, image=detector_image_config())
    for pipeline in (classifier, finder):
        pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    for pipeline in (classifier, finder):
        pipeline.deployment().wait_until_running(180)
    return {"client": client, "digits": client.get_deployment("digits"), "squares": client.get_deployment("squares"),
            "versions": {"digits": digits, "digits-weak": weak, "squares": detector}}


def image_stored(stack, data: bytes) -> bytes | None:
    import hashlib

    store = MinioObjectStore(stack.settings().s3)
    key = f"images/{hashlib.sha256(data).hexdigest()}"

    async def run():
        return await store.get_bytes(BUCKET_MONITORING, key) if await store.exists(BUCKET_MONITORING, key) else None

    return asyncio.run(run())


def created_events(stack, ids: set[str], timeout: float = 10.0) -> set[str]:
    """Which of these prediction ids have a prediction_created event (waits until all have, or timeout)."""
    return announced(stack, subjects.EVENT_MONITORING_PREDICTION_CREATED, "prediction_id", ids, timeout)


def expected_scores(png: bytes, train_size: int = 1200) -> np.ndarray:
    """The scikit-learn model's probabilities on the PNG's pixels brought back to 0-16 (computed here, not by the
    service)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32).reshape(1, 64) * 16 / 255
    return digits_classifier(train_size).predict_proba(pixels)[0]


def given(prediction: dict) -> dict:
    """A PredictionFormat without the fields its kind does not have (answered as null)."""
    return {key: value for key, value in prediction.items() if value is not None}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_predict_on_a_classifier_with_a_shadow_challenger(stack, owner, deployed, tmp_path):
    deployment, versions = deployed["digits"], deployed["versions"]
    answers = []
    for index in range(3):
        png, _ = digit_png(index)
        path = tmp_path / f"digit-{index}.png"
        path.write_bytes(png)
        answer = deployment.predict(path, tags=["camera 1", "night"], source="camera-1")  # the seed's predict
        champion, challenger = expected_scores(png), expected_scores(png, WEAK)
        assert answer["kind"] == "classification" and answer["origin"] == "predict"
        assert answer["prediction"]["detection_classes"] == [int(champion.argmax())]
        assert answer["prediction"]["detection_scores"] == pytest.approx([champion.max()], abs=1e-5)
        assert answer["labels"] == [str(champion.argmax())]
        assert answer["shadow_prediction"]["detection_classes"] == [int(challenger.argmax())]
        assert answer["shadow_prediction"]["detection_scores"] == pytest.approx([challenger.max()], abs=1e-5)
        assert answer["model_version"] == {"name": "digits", "version": versions["digits"].version,
                                           "sha": versions["digits"].sha}
        assert answer["shadow_model_version"]["version"] == versions["digits-weak"].version
        assert 0 < answer["latency"] < 5 and 0 < answer["shadow_latency"] < 5
        assert (answer["height"], answer["width"], answer["content_type"]) == (8, 8, "image/png")
        assert image_stored(stack, png) == png
        answers.append(answer)
    # predict_bytes over HTTP: same model, same answer for the same image; content type from the bytes
    png, _ = digit_png(0)
    response = post(stack, "deployments/predict_bytes", owner.token,
                    {"deployment": deployment.name, "image": b64(png), "filename": "frame.png"})
    assert response.status_code == 200, response.text
    again = response.json()
    assert again["prediction"] == answers[0]["prediction"] and again["id"] != answers[0]["id"]
    assert again["tags"] == [] and again["source"] is None and again["filename"] == "frame.png"

    rows = {str(r["id"]): r for r in query(stack, "SELECT * FROM monitoring.predictions WHERE deployment_id = $1",
                                           deployment.id)}
    ids = {a["id"] for a in answers} | {again["id"]}
    assert ids <= set(rows)
    row = rows[answers[1]["id"]]
    assert (row["origin"], row["kind"], row["source"], list(row["tags"])) == (
        "predict", "classification", "camera-1", ["camera 1", "night"])
    assert row["workspace_id"] == owner.workspace_id and row["content_type"] == "image/png"
    assert json.loads(row["prediction"]) == given(answers[1]["prediction"])
    assert json.loads(row["shadow_prediction"]) == given(answers[1]["shadow_prediction"])
    assert json.loads(row["shadow_model_version"])["name"] == "digits-weak"
    features = json.loads(row["features"])
    assert features["height"] == 8 and features["brightness_mean"] == pytest.approx(
        np.asarray(Image.open(io.BytesIO(digit_png(1)[0]))).mean(), abs=1e-3)
    assert created_events(stack, ids) == ids


def test_predict_applies_min_threshold_to_boxes_and_classes(stack, owner, deployed):
    deployment = deployed["squares"]
    image = squares_png({(1, 2): 255, (3, 0): 128, (0, 0): 40}, size=64, fmt="PNG")
    deployment.update(min_threshold=0.3)
    answer = deployment.predict_bytes("squares.png", image, tags="bench", source="synthetic")
    assert answer["kind"] == "detection" and answer["shadow_prediction"] is None
    assert answer["prediction"]["detection_classes"] == [1, 0] and answer["labels"] == ["white", "grey"]
    assert answer["prediction"]["detection_boxes"] == [[16, 32, 32, 48], [48, 0, 64, 16]]  # [top, left, bottom, right]
    scores = answer["prediction"]["detection_scores"]
    assert scores[0] > 0.85 and 0.4 < scores[1] < 0.6
    deployment.update(min_threshold=0.6)
    response = post(stack, "deployments/predict", owner.token,  # the seed's predict route, over HTTP
                    {"deployment": deployment.name, "image": b64(image), "content_type": "image/png"})
    assert response.status_code == 200, response.text
    stricter = response.json()
    assert stricter["prediction"]["detection_boxes"] == [[16, 32, 32, 48]]
    assert answer["image_sha256"] == stricter["image_sha256"]  # one object for one image
    # a classification below the threshold names no class (kept, so a review can still say what it was)
    digits, (png, _) = deployed["digits"], digit_png(3)
    assert expected_scores(png).max() < 0.9  # the classifier hesitates on this one
    digits.update(min_threshold=0.9)
    try:
        unsure = digits.predict_bytes("three.png", png)
    finally:
        digits.update(min_threshold=0)  # 0 filters nothing: the other tests see every class
    assert unsure["prediction"]["detection_classes"] == [] and unsure["labels"] == []
    stored = query(stack, "SELECT prediction FROM monitoring.predictions WHERE id = $1", uuid.UUID(unsure["id"]))
    assert json.loads(stored[0]["prediction"]) == {"detection_classes": [], "detection_scores": []}


def test_new_predictions_land_in_the_target_datalake(stack, owner, deployed):
    digits = deployed["digits"]
    project = post(stack, "projects/create", owner.token, {"workspace_id": owner.workspace_id, "name": "lake"}).json()
    lake = post(stack, "datasets/create", owner.token, {"project_id": project["id"], "name": "frames",
                                                        "kind": "images"}).json()
    table = post(stack, "datasets/create", owner.token, {"project_id": project["id"], "name": "rows"}).json()
    refused = post(stack, "deployments/update", owner.token, {"deployment": digits.name,
                                                             "target_datalake": str(table["id"])})
    assert refused.status_code == 400 and "tabular dataset" in refused.json()["msg"], refused.text
    assert digits.update(target_datalake="frames")["target_datalake"] == "frames"  # by name
    png, _ = digit_png(7)
    answer = digits.predict_bytes("seven.png", png, tags=["lake"], source="camera-3")
    assert answer["datalake_file"] == f"{answer['id']}.png"
    files = post(stack, "datasets/list_files", owner.token, {"dataset_id": lake["id"]}).json()["files"]
    written = next(f for f in files if f["name"] == answer["datalake_file"])
    assert written["content_type"] == "image/png" and written["size"] == len(png)
    assert written["labels"]["prediction"] == given(answer["prediction"]) and written["labels"]["tags"] == ["lake"]
    assert written["labels"]["labels"] == answer["labels"] and written["labels"]["origin"] == "predict"
    # null (or left out) keeps the datalake, "" clears it: the next prediction goes nowhere else
    kept = post(stack, "deployments/update", owner.token, {"deployment": digits.name, "target_datalake": None,
                                                           "min_threshold": 0})
    assert kept.status_code == 200 and kept.json()["target_datalake"] == "frames", kept.text
    assert digits.update(target_datalake="")["target_datalake"] is None
    assert digits.retrieve_information()["target_datalake"] is None
    assert digits.predict_bytes("seven.png", png)["datalake_file"] is None
    after = post(stack, "datasets/list_files", owner.token, {"dataset_id": lake["id"]}).json()["files"]
    assert [f["name"] for f in after] == [f["name"] for f in files]


def test_monitor_keeps_predictions_made_elsewhere(stack, owner, deployed, tmp_path):
    squares, digits = deployed["squares"], deployed["digits"]
    image = squares_png({(0, 1): 255}, size=40, fmt="JPEG")
    path = tmp_path / "frame.jpg"
    path.write_bytes(image)
    at = time.time() - 3600
    prediction = {"detection_classes": [1, 0], "detection_scores": [0.9, 0.35],
                  "detection_boxes": [[0, 10, 10, 20], [20, 0, 40, 40]]}
    answer = squares.monitor(path, latency=0.042, height=40, width=40, prediction=prediction, source="edge-7",
                             tags=["edge"], timestamp=at)
    assert answer["origin"] == "monitor" and answer["kind"] == "detection" and answer["content_type"] == "image/jpeg"
    assert given(answer["prediction"]) == prediction and answer["model_version"]["name"] == "squares"
    digit, _ = digit_png(5)
    shadow = {"detection_classes": [3], "detection_scores": [0.5]}
    bytes_answer = digits.monitor_bytes(digit, "image/png", "d.png", latency=0.01, height=8, width=8,
                                        prediction={"detection_classes": [5], "detection_scores": [0.8]},
                                        shadow_latency=0.02, shadow_prediction=shadow)
    assert given(bytes_answer["shadow_prediction"]) == shadow
    assert bytes_answer["shadow_model_version"]["name"] == "digits-weak"
    row = query(stack, "SELECT * FROM monitoring.predictions WHERE id = $1", uuid.UUID(answer["id"]))[0]
    assert (row["origin"], row["latency"], row["source"], list(row["tags"])) == ("monitor", 0.042, "edge-7", ["edge"])
    assert row["predicted_at"].timestamp() == pytest.approx(at, abs=1e-3)
    assert (row["height"], row["width"], row["image_sha256"]) == (40, 40, answer["image_sha256"])
    assert image_stored(stack, image) == image
    assert created_events(stack, {answer["id"], bytes_answer["id"]}) == {answer["id"], bytes_answer["id"]}


def test_bad_monitored_predictions_are_refused_and_nothing_is_stored(stack, owner, deployed):
    squares, digits = deployed["squares"], deployed["digits"]
    before = rows_of(stack, squares.id), rows_of(stack, digits.id)
    good = {"detection_classes": [1], "detection_scores": [0.9], "detection_boxes": [[0, 0, 10, 10]]}
    cases = [
        ("squares", {"prediction": good | {"detection_scores": [0.9, 0.1]}}, "detection_scores has 2"),
        ("squares", {"prediction": good | {"detection_boxes": [[0, 0, 10]]}}, "a box is [top, left, bottom, right]"),
        ("squares", {"prediction": good | {"detection_boxes": [[0, 0, 10.5, 10]]}}, "valid integer"),
        ("squares", {"prediction": good | {"detection_scores": [1.5]}}, "between 0 and 1"),
        ("squares", {"prediction": good | {"detection_classes": [2]}}, "below 2"),
        ("squares", {"prediction": good | {"detection_boxes": [[0, 0, 50, 10]]}}, "inside the 40x40 image"),
        ("squares", {"prediction": {"detection_classes": [1], "detection_scores": [0.9]}}, "is a classification"),
        ("squares", {"prediction": good, "height": 41}, "the image is 40 high"),
        ("squares", {"prediction": good, "timestamp": 12.0}, "between 2000 and tomorrow"),
        ("squares", {"prediction": good, "shadow_latency": 0.1}, "shadow_latency without shadow_prediction"),
        ("digits", {"prediction": {"detection_classes": [1], "detection_scores": [0.9]},
                    "shadow_prediction": good}, "shadow_prediction is a detection"),
    ]
    for index, (which, fields, message) in enumerate(cases):
        image = squares_png({(index % 4, index // 4): 200}, size=40)  # an image no other call sent
        body = {"deployment": deployed[which].name, "image": b64(image), "latency": 0.1, "height": 40, "width": 40,
                "content_type": "image/png"} | fields
        response = post(stack, "deployments/monitor_bytes", owner.token, body)
        assert response.status_code == 400, (message, response.text)
        assert response.json()["code"] == "invalid_request" and message in response.json()["msg"], response.text
        assert image_stored(stack, image) is None
    assert (rows_of(stack, squares.id), rows_of(stack, digits.id)) == before


def test_bad_images_outsiders_and_inference_tokens_change_nothing(stack, admin, owner, deployed):
    squares = deployed["squares"]
    outsider = make_account(stack, admin, "outsider")
    before = rows_of(stack, squares.id)
    png = squares_png({(2, 2): 255}, size=48)
    monitor_fields = {"latency": 0.1, "height": 48, "width": 48,
                      "prediction": {"detection_classes": [], "detection_scores": [], "detection_boxes": []}}
    bad = [
        ("predict_bytes", {"image": b64(b"GIF89a not an image")}, 400, "neither a PNG nor a JPEG"),
        ("predict_bytes", {"image": b64(png[: len(png) // 2])}, 400, "does not decode"),
        ("predict_bytes", {"image": "%%% not base64"}, 400, "not valid base64"),
        ("predict", {"image": b64(png), "content_type": "image/gif"}, 400, "unsupported content type"),
        ("monitor", {"image": b64(png), "content_type": "image/jpeg", **monitor_fields}, 400, "bytes are a PNG"),
        ("predict", {"image": b64(png), "tags": ["#bad"]}, 400, "invalid tag"),
    ]
    for route, fields, status, message in bad:
        response = post(stack, f"deployments/{route}", owner.token, {"deployment": squares.name} | fields)
        assert response.status_code == status and message in response.json()["msg"], (route, response.text)
    token = inference_token(stack, owner)
    for route, fields in (("predict", {}), ("predict_bytes", {}), ("monitor", monitor_fields),
                          ("monitor_bytes", monitor_fields)):
        body = {"deployment": squares.name, "image": b64(png)} | fields
        outside = post(stack, f"deployments/{route}", outsider.token, body)
        assert outside.status_code == 404 and outside.json()["code"] == "not_found", outside.text
        missing = post(stack, f"deployments/{route}", owner.token, body | {"deployment": "nothing-999999"})
        assert missing.status_code == 404, missing.text
        assert post(stack, f"deployments/{route}", token, body).status_code == 403
        assert post(stack, f"deployments/{route}", None, body).status_code == 401
    assert rows_of(stack, squares.id) == before and image_stored(stack, png) is None


# --- camera frames: images above the bus payload limit, staged in object storage by the gateway ---------------------


@cache
def camera_frame(seed: int) -> bytes:
    """A 2048x2048 PNG of more than 2 MB (noise in the low 6 bits, which PNG cannot squeeze) whose detector cell
    (1, 2) is bright and the rest dark."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 64, size=(2048, 2048), dtype=np.uint8)
    cells = np.zeros((2048, 2048), dtype=bool)
    cells[512:1024, 1024:1536] = True
    frame = squares_png({}, pixels=np.where(cells, 255 - noise, noise).astype(np.uint8))
    assert len(frame) > 2 * 1024 * 1024
    return frame


def staged_keys(stack, user_id: str) -> list[str]:
    """The staged uploads of one user left in the monitoring bucket."""
    store = MinioObjectStore(stack.settings().s3)
    return [key for key, _ in asyncio.run(store.list_keys(BUCKET_MONITORING, f"staging/{user_id}/"))]


def multipart(stack, route: str, token: str | None, image: bytes, metadata: dict) -> httpx.Response:
    return httpx.post(f"{stack.api}/deployments/{route}", headers={"Authorization": f"Bearer {token}"},
                      files={"image": ("frame.png", image, "image/png"),
                             "metadata": (None, json.dumps(metadata), "application/json")}, timeout=60)


def test_camera_frames_above_the_bus_limit_are_predicted_and_monitored(stack, owner, deployed, tmp_path):
    squares = deployed["squares"]
    squares.update(min_threshold=0.5)
    frame = camera_frame(1)
    path = tmp_path / "frame.png"
    path.write_bytes(frame)
    answer = squares.predict(path, tags=["4k"], source="camera-9")  # the SDK: a multipart upload above 512 KiB
    assert (answer["height"], answer["width"], answer["filename"]) == (2048, 2048, "frame.png")
    assert answer["prediction"]["detection_boxes"] == [[512, 1024, 1024, 1536]] and answer["labels"] == ["white"]
    assert 0.75 < answer["prediction"]["detection_scores"][0] < 0.95
    assert answer["image_sha256"] == hashlib.sha256(frame).hexdigest() and image_stored(stack, frame) == frame
    # raw HTTP: the seed's predict route, the image as a file part and the JSON body's other fields as metadata
    response = multipart(stack, "predict", owner.token, frame, {"deployment": squares.name, "tags": ["raw"]})
    assert response.status_code == 200, response.text
    raw = response.json()
    assert raw["prediction"] == answer["prediction"] and raw["tags"] == ["raw"] and raw["filename"] == "frame.png"
    monitored = squares.monitor_bytes(frame, "image/png", "frame.png", latency=0.2, height=2048, width=2048,
                                      prediction=given(answer["prediction"]))
    assert monitored["origin"] == "monitor" and monitored["image_sha256"] == answer["image_sha256"]
    rows = query(stack, "SELECT id, origin, height FROM monitoring.predictions WHERE id = ANY($1::uuid[])",
                 [uuid.UUID(a["id"]) for a in (answer, raw, monitored)])
    assert sorted((r["origin"], r["height"]) for r in rows) == [("monitor", 2048), ("predict", 2048),
                                                               ("predict", 2048)]
    assert staged_keys(stack, owner.user_id) == []


def bus_predict(stack, token: str, body: dict) -> dict:
    """monitoring.deployments.predict through the bus's front door (the `client` identity) with a user's token: the
    service's reply envelope."""
    import nats

    async def run() -> dict:
        nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
        try:
            reply = await sealed_request(nc, subjects.MONITORING_PREDICT, json.dumps(body).encode(),
                                         headers={"authorization": f"Bearer {token}"}, timeout=30)
            return json.loads(reply.data)
        finally:
            await nc.close()

    return asyncio.run(run())


def test_bad_oversize_and_foreign_staged_images_are_refused_and_leave_nothing(stack, admin, owner, deployed):
    squares = deployed["squares"]
    outsider = make_account(stack, admin, "stager")
    before = rows_of(stack, squares.id)
    limit = stack.settings().monitoring.max_image_bytes
    body = {"deployment": squares.name}
    image = squares_png({(3, 3): 99}, size=48)  # multipart takes an image of any size: a small one is enough here
    bad = [
        (owner, multipart(stack, "predict", owner.token, b"\x89PNG\r\n\x1a\n" + b"\0" * limit, body),
         413, "payload_too_large", "larger than"),
        (owner, multipart(stack, "predict_bytes", owner.token, b"GIF89a" + b"\0" * 600_000, body),
         400, "invalid_request", "neither a PNG nor a JPEG"),
        (owner, multipart(stack, "predict", owner.token, camera_frame(1)[:1_000_000], body),  # staged, then refused
         400, "invalid_request", "does not decode"),
        (owner, multipart(stack, "predict", owner.token, image, {"deployment": "nothing-999999"}),
         404, "not_found", "nothing-999999"),
        (owner, multipart(stack, "monitor", owner.token, image, body | {"latency": 0.1}),
         400, "invalid_request", "height"),
        (owner, multipart(stack, "predict", owner.token, image, body | {"image": "aGk="}),
         400, "invalid_request", "came twice"),
        (outsider, multipart(stack, "predict", outsider.token, image, body), 404, "not_found", ""),
    ]
    for account, response, status, code, message in bad:
        assert response.status_code == status and response.json()["code"] == code, response.text
        assert message in response.json()["msg"], response.text
        assert staged_keys(stack, account.user_id) == []
    store = MinioObjectStore(stack.settings().s3)
    key = f"staging/{owner.user_id}/{uuid.uuid4()}"
    asyncio.run(store.put_bytes(BUCKET_MONITORING, key, image))
    # staged_key is the gateway's field: a JSON body naming it is refused before anything is forwarded
    named = post(stack, "deployments/predict", owner.token, {"deployment": squares.name, "staged_key": key})
    assert named.status_code == 400 and named.json()["code"] == "staged_key_not_accepted", named.text
    assert staged_keys(stack, owner.user_id) == [key]
    # the bus is a front door too: a staged key is consumed only for the user it was staged for
    stolen = bus_predict(stack, outsider.token, {"deployment": squares.name, "staged_key": key})
    assert stolen["status"] == 403 and stolen["error"]["code"] == "forbidden", stolen
    assert staged_keys(stack, owner.user_id) == [key]  # neither read nor deleted
    # nor by a task run's token of that user (scoped to the deployment's own workspace): the key was staged from a
    # session reaching all the owner's workspaces (docs/security.md, "Task-run tokens")
    run = task_token(stack, owner.user_id, owner.workspace_id)
    scoped = bus_predict(stack, run, {"deployment": squares.name, "staged_key": key})
    assert scoped["status"] == 403 and scoped["error"]["code"] == "out_of_scope", scoped
    assert staged_keys(stack, owner.user_id) == [key]
    odd = bus_predict(stack, owner.token, {"deployment": squares.name, "staged_key": "staging/x/../y"})
    assert odd["status"] == 400 and "staged_key" in odd["error"]["msg"], odd
    missing = bus_predict(stack, owner.token, {"deployment": "nothing-999999", "staged_key": key})
    assert missing["status"] == 404 and staged_keys(stack, owner.user_id) == []  # consumed on the error path
    assert rows_of(stack, squares.id) == before and image_stored(stack, image) is None
    # the run's own multipart upload is staged with its scope and consumed with it
    answered = multipart(stack, "predict", run, image, body)
    assert answered.status_code == 200 and staged_keys(stack, owner.user_id) == [], answered.text


def test_a_prediction_and_its_logged_inference_carry_one_time(stack, owner, deployed, tmp_path):
    """predicted_at is the time the engine logged the inference at (its answer's Railyard-Time), not the moment
    monitoring received the image, before its look-ups, decode and the engine's queue: the prediction's row in the
    pipeline's log (pipelines/get_logs) has the very same millisecond, so it is found by it, and both fall in the
    same window (an hour of monitoring's statistics, an assay's window of the log)."""
    png, _ = digit_png(7)
    path = tmp_path / "digit-7.png"
    path.write_bytes(png)
    answer = deployed["digits"].predict(path, source="time-check")
    at = datetime.fromisoformat(answer["predicted_at"].replace("Z", "+00:00"))
    at_ms = round(at.timestamp() * 1000)
    assert at.microsecond % 1000 == 0, answer["predicted_at"]  # a whole ms: the engine's
    deadline = time.monotonic() + 20
    while True:
        logs = post(stack, "pipelines/get_logs", owner.token, {"pipeline_id": "digits",
                                                               "workspace_id": owner.workspace_id, "order": "Desc"})
        assert logs.status_code == 200, logs.text[:300]
        times = [record["time"] for record in logs.json()]
        if at_ms in times:
            break
        assert time.monotonic() < deadline, (at_ms, times[:10])
        time.sleep(0.2)
