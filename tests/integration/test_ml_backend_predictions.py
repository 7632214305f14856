"""Seed 003's predict on deployments served by an ML backend (seed 004), on the real stack: a small backend class
written here (it finds coloured squares and names their colour) is packaged as `railyard-ml deploy railyard` does,
deployed, and asked through the SDK and the gateway route. Its Label Studio answers, made by its own predict in the
engine's sandboxed worker, come back as PredictionFormats (boxes in pixels, polygons, class ids indexing its labeling
config's labels), kept as predictions like an ONNX model's; bad input, an outsider and an answer its labeling config
cannot hold store nothing."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile

import pytest
from PIL import Image
from railyard_client import Client

from tests.integration.conftest import make_account, post, query, rows_of, undeploy_all
from tests.integration.conftest import sdk_client as sdk

pytestmark = pytest.mark.integration

BACKEND = '''"""Finds the coloured squares of an image and names their colour (a test backend)."""

import numpy as np
from PIL import Image
from railyard_ml import LabelStudioMLBase, ModelResponse
from scipy import ndimage

COLOURS = ("Red", "Green", "Blue")


class Squares(LabelStudioMLBase):
    def setup(self):
        self.set("model_version", "squares-1")

    def regions(self, path):
        # bytes as they are, summed in 16 bits (3 x 255 fits): as int64 a 2000 x 2000 camera frame was a 96 MB copy
        # and its sum another 32 MB, ~1 s of the frame's ~1.4 s idle, past the test stack's 5-s limit when loaded
        pixels = np.asarray(Image.open(path).convert("RGB"))
        height, width = pixels.shape[:2]
        labels, count = ndimage.label(pixels.sum(axis=2, dtype=np.uint16) > 60)
        for index, found in enumerate(ndimage.find_objects(labels)):
            colour = COLOURS[int(np.argmax(pixels[found].reshape(-1, 3).sum(axis=0)))]
            rows, cols = found
            yield (colour, 100.0 * cols.start / width, 100.0 * rows.start / height,
                   100.0 * (cols.stop - cols.start) / width, 100.0 * (rows.stop - rows.start) / height,
                   round(0.9 - 0.1 * index, 2))

    def predict(self, tasks, context=None, **kwargs):
        name, control = next(iter(self.parsed_label_config.items()))
        to_name, value = control["to_name"][0], control["inputs"][0]["value"]
        predictions = []
        for task in tasks:
            result = []
            for colour, x, y, w, h, score in self.regions(self.get_local_path(task["data"][value])):
                item = {"from_name": name, "to_name": to_name, "score": score}
                if control["type"] == "Choices":
                    item |= {"type": "choices", "value": {"choices": [colour]}}
                elif control["type"] == "RectangleLabels":
                    item |= {"type": "rectanglelabels",
                             "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": [colour]}}
                else:
                    item |= {"type": "polygonlabels", "value": {"points": [[x, y], [x + w, y], [x + w, y + h]],
                                                                "polygonlabels": [colour]}}
                result.append(item)
            predictions.append({"result": result, "score": 0.5})
        return ModelResponse(predictions=predictions)

    def fit(self, event, data, **kwargs):
        # keeps what the annotations held, so a test can see what reached fit
        seen = [[r["type"], r["value"]] for task in kwargs.get("annotations") or []
                for annotation in task.get("annotations", []) for r in annotation.get("result", [])]
        return {"seen": seen} if seen else None
'''

DETECTION_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="found" toName="image">
    <Label value="Blue"/>
    <Label value="Red"/>
  </RectangleLabels>
</View>"""


def squares(size: tuple[int, int], boxes: list[tuple[tuple[int, int, int], tuple[int, int, int, int]]]) -> bytes:
    """A black PNG of `size` (width, height) with filled boxes: (rgb, (top, left, bottom, right))."""
    image = Image.new("RGB", size)
    for colour, (top, left, bottom, right) in boxes:
        image.paste(colour, (left, top, right, bottom))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def deploy_backend(client: Client, tmp_path, name: str, label_config: str):
    """The test backend packaged with this labeling config (`railyard-ml deploy railyard`'s steps), deployed."""
    from railyard_ml.railyard_step import package

    folder = tmp_path / name
    folder.mkdir()
    (folder / "squares.py").write_text(BACKEND)
    (folder / "railyard-ml.json").write_text(json.dumps({"script": "squares.py", "model_class": "Squares"}))
    (folder / "requirements.txt").write_text("railyard-ml\n")
    archive, _ = package(folder, None, label_config)
    version = client.upload_model(name, archive, framework="custom", progress=False)
    pipeline = client.build_pipeline(name).add_model_step(version)
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    return pipeline, version


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "mlpred")
    yield account
    undeploy_all(stack, account)


POLYGON_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="outline" toName="image">
    <Label value="Blue"/>
    <Label value="Red"/>
  </PolygonLabels>
</View>"""


@pytest.fixture(scope="module")
def backends(stack, owner, tmp_path_factory) -> dict:
    """The test backend deployed twice: with a RectangleLabels config and with a PolygonLabels one."""
    client = sdk(stack, owner)
    folder = tmp_path_factory.mktemp("backend")
    pipelines = [deploy_backend(client, folder, name, config)[0]
                 for name, config in (("square-finder", DETECTION_CONFIG), ("square-outliner", POLYGON_CONFIG))]
    for pipeline in pipelines:
        pipeline.deployment().wait_until_running(180)
    return {"client": client, "finder": client.get_deployment("square-finder"),
            "outliner": client.get_deployment("square-outliner")}


@pytest.fixture(scope="module")
def detector(backends) -> dict:
    return {"client": backends["client"], "deployment": backends["finder"]}


def test_predict_asks_the_ml_backend_and_keeps_its_answer_as_a_prediction(stack, owner, detector, tmp_path):
    deployment = detector["deployment"]
    png = squares((40, 20), [((200, 0, 0), (2, 4, 12, 14)), ((0, 0, 220), (10, 20, 18, 36))])
    (tmp_path / "two.png").write_bytes(png)
    assert deployment.predict(tmp_path / "two.png")["prediction"]["detection_classes"] == [1, 0]  # the seed's predict
    answer = deployment.predict_bytes("two.png", png, tags=["backend"], source="camera-1")
    assert answer["kind"] == "detection" and answer["origin"] == "predict"
    # class ids index the labeling config's labels (Blue, Red); Label Studio's percent back to the image's pixels
    assert answer["prediction"]["detection_classes"] == [1, 0] and answer["labels"] == ["Red", "Blue"]
    assert answer["prediction"]["detection_scores"] == [0.9, 0.8]
    assert answer["prediction"]["detection_boxes"] == [[2, 4, 12, 14], [10, 20, 18, 36]]
    assert answer["prediction"]["detection_masks"] is None
    assert answer["model_version"]["name"] == "square-finder"
    assert (answer["height"], answer["width"], answer["tags"], answer["source"]) == (20, 40, ["backend"], "camera-1")
    row = query(stack, "SELECT kind, prediction, image_sha256, origin FROM monitoring.predictions WHERE id = $1",
                answer["id"])
    assert len(row) == 1 and row[0]["kind"] == "detection" and row[0]["origin"] == "predict"
    assert json.loads(row[0]["prediction"])["detection_boxes"] == [[2, 4, 12, 14], [10, 20, 18, 36]]

    # the gateway route, with the deployment's min_threshold filtering the backend's boxes as an ONNX model's
    deployment.update(min_threshold=0.85)
    try:
        routed = post(stack, "deployments/predict", owner.token, {
            "deployment": deployment.name, "image": base64.b64encode(png).decode()})
        assert routed.status_code == 200, routed.text
        assert routed.json()["prediction"]["detection_classes"] == [1]
    finally:
        deployment.update(min_threshold=0)
    # a reviewer sees the backend's labels and corrects it like any prediction (class ids within those labels)
    assert deployment.list_predictions_to_review()["labels"] == ["Blue", "Red"]
    outside = post(stack, "deployments/review_prediction", owner.token, {
        "deployment": deployment.name, "prediction_id": answer["id"], "decision": "corrected",
        "ground_truth": {"detection_classes": [2], "detection_scores": [1.0], "detection_boxes": [[1, 1, 5, 5]]}})
    assert outside.status_code == 400 and "deployment's labels" in outside.json()["msg"], outside.text
    reviewed = post(stack, "deployments/review_prediction", owner.token, {
        "deployment": deployment.name, "prediction_id": answer["id"], "decision": "corrected",
        "ground_truth": {"detection_classes": [0], "detection_scores": [1.0], "detection_boxes": [[10, 20, 18, 36]]}})
    assert reviewed.status_code == 200, reviewed.text


def test_a_camera_frame_above_the_bus_limit_reaches_the_backend_by_reference(stack, owner, detector):
    """A 10 MiB task (the image as a data URI) cannot ride the bus (8 MiB here): it goes through object storage."""
    import numpy as np

    from shared.embedded.servers import NATS_MAX_PAYLOAD

    pixels = np.random.default_rng(0).integers(0, 21, size=(2000, 2000, 3), dtype=np.uint8)  # dark noise
    pixels[100:300, 200:500] = (220, 0, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    frame = buffer.getvalue()
    assert len(frame) * 4 / 3 > NATS_MAX_PAYLOAD
    answer = detector["deployment"].predict_bytes("frame.png", frame)  # the SDK sends it as multipart
    assert answer["labels"] == ["Red"] and answer["prediction"]["detection_boxes"] == [[100, 200, 300, 500]]
    assert (answer["height"], answer["width"]) == (2000, 2000)


def test_bad_input_outsiders_and_answers_outside_the_labeling_config_store_nothing(stack, admin, owner, detector):
    deployment = detector["deployment"]
    before = rows_of(stack, deployment.id)
    png = squares((16, 16), [((200, 0, 0), (1, 1, 5, 5))])
    body = {"deployment": deployment.name, "image": base64.b64encode(png).decode()}
    bad = post(stack, "deployments/predict", owner.token, body | {"image": base64.b64encode(b"GIF89a x").decode()})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request", bad.text
    outsider = make_account(stack, admin, "mlpredout")
    outside = post(stack, "deployments/predict", outsider.token, body)
    assert outside.status_code == 404 and outside.json()["code"] == "not_found", outside.text
    # monitor checks a prediction made elsewhere against the backend's labeling config (2 labels, boxes)
    monitored = {"deployment": deployment.name, "image": body["image"], "latency": 0.01, "height": 16, "width": 16}
    for prediction, message in (
            ({"detection_classes": [2], "detection_scores": [0.9], "detection_boxes": [[1, 1, 5, 5]]}, "labels"),
            ({"detection_classes": [0], "detection_scores": [0.9]}, "makes detections")):
        refused = post(stack, "deployments/monitor", owner.token, monitored | {"prediction": prediction})
        assert refused.status_code == 400 and message in refused.json()["msg"], refused.text
    # a green square: the backend answers "Green", which its labeling config does not have
    green = squares((16, 16), [((0, 200, 0), (1, 1, 5, 5))])
    wrong = post(stack, "deployments/predict", owner.token, body | {"image": base64.b64encode(green).decode()})
    assert wrong.status_code == 500 and wrong.json()["code"] == "inference_failed", wrong.text
    assert "'Green'" in wrong.json()["msg"]
    assert rows_of(stack, deployment.id) == before


def test_a_backend_answering_more_boxes_than_a_prediction_holds_keeps_the_best_1000(stack, owner, detector):
    """1,024 red squares: the backend answers 1,024 rectanglelabels; predict keeps the 1,000 best scoring (it stored
    them all, then answered 500, so a retry stored them again)."""
    deployment = detector["deployment"]
    before = rows_of(stack, deployment.id)
    grid = [((200, 0, 0), (3 * row, 3 * col, 3 * row + 2, 3 * col + 2)) for row in range(32) for col in range(32)]
    answer = deployment.predict_bytes("crowd.png", squares((96, 96), grid))
    prediction = answer["prediction"]
    assert len(prediction["detection_boxes"]) == 1000 == len(answer["labels"])
    assert prediction["detection_scores"][:2] == [0.9, 0.8]  # the backend's best first
    assert rows_of(stack, deployment.id) == before + 1


def test_a_backends_polygons_are_predicted_and_reviewed_ones_reach_its_fit(stack, owner, backends):
    """PolygonLabels answers become a segmentation; a corrected one, written by the feedback loop, reaches the
    backend's fit as polygonlabels (in percent of the image) through continuous training."""
    from railyard_client import Lineage

    client, deployment = backends["client"], backends["outliner"]
    png = squares((40, 20), [((200, 0, 0), (2, 4, 12, 14))])
    answer = deployment.predict_bytes("red.png", png)
    assert answer["kind"] == "segmentation" and answer["labels"] == ["Red"]
    assert answer["prediction"]["detection_masks"] == [[4, 2, 14, 2, 14, 12]]
    assert answer["prediction"]["detection_boxes"] == [[2, 4, 12, 14]]

    lineage = Lineage(client, owner.workspace_id)
    project = lineage.create_project("outlines")
    train = lineage.create_dataset(project["id"], "reviewed", kind="images")
    deployment.setup_feedback_loop(train)
    deployment.setup_continuous_training(project, train, threshold=1, experiment_parameters={})
    corrected = {"detection_classes": [1], "detection_scores": [1.0], "detection_boxes": [[2, 4, 12, 14]],
                 "detection_masks": [[4, 2, 14, 2, 14, 12, 4, 12]]}
    deployment.review_prediction(answer["id"], corrected)
    deadline = time.monotonic() + 120
    while not ((training := deployment.retrieve_information()["continuous"]["last_training"]) and
               training["state"] in ("done", "failed")):
        assert time.monotonic() < deadline, "timed out waiting for the training"
        time.sleep(0.25)
    assert training["state"] == "done", training
    package = client.download_model("square-outliner", training["model_version"]["version"])
    state = json.loads(zipfile.ZipFile(io.BytesIO(package)).read("backend/railyard_state/state.json"))
    seen = json.loads(state["values"]["train_output"])["seen"]
    assert seen == [["polygonlabels", {"points": [[10.0, 10.0], [35.0, 10.0], [35.0, 60.0], [10.0, 60.0]],
                                       "closed": True, "polygonlabels": ["Red"]}]]
