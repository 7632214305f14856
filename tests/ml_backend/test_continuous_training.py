"""Railyard's continuous training of an ML backend, in memory: reviewed predictions (the feedback loop's file
labels) become Label Studio tasks with annotations, and a `railyard-ml deploy railyard` package is fitted on them
through the server's dispatch (2.x `fit(event, data)` and 1.x `fit(annotations, workdir)`) into a new package whose
model serves what it learned; a `fit` that raises or learns nothing gives no package."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import pytest
from railyard_ml.continuous_training import FitFailed, fit_package, orchestration_zip, review_task
from railyard_ml.label_config import parse_config
from railyard_ml.railyard_step import StepModel, package

from tests.ml_backend.conftest import REPO
from tests.ml_backend.test_examples import IMAGE_CONFIG, image

BOXES_CONFIG = """<View>
  <Image name="img" value="$picture"/>
  <RectangleLabels name="boxes" toName="img"><Label value="Cat"/><Label value="Dog"/></RectangleLabels>
</View>"""

LS1_STYLE = '''
from railyard_ml import LabelStudioMLBase


class Counter(LabelStudioMLBase):
    """1.x style: counts the choices it was trained on; predicts the most frequent one."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.counts = (self.train_output or {}).get("counts", {})

    def predict(self, tasks, **kwargs):
        best = max(self.counts, key=self.counts.get) if self.counts else None
        return [{"result": [{"from_name": "colour", "to_name": "image", "type": "choices",
                             "value": {"choices": [best]}}] if best else [], "score": 1.0} for _ in tasks]

    def fit(self, annotations, workdir=None, boost=1, **kwargs):
        if kwargs.get("fail"):
            raise RuntimeError("asked to fail")
        counts = {}
        for task in annotations:
            for annotation in task["annotations"]:
                for result in annotation["result"]:
                    label = result["value"]["choices"][0]
                    counts[label] = counts.get(label, 0) + boost
        return {"counts": counts, "workdir_given": bool(workdir)}
'''


def reviewed(kind: str, classes: list[int], scores: list[float] | None = None, boxes: list | None = None,
             decision: str = "corrected") -> dict:
    truth = {"detection_classes": classes, "detection_scores": scores or [1.0] * len(classes)}
    if boxes is not None:
        truth["detection_boxes"] = boxes
    return {"kind": kind, "decision": decision, "prediction_id": f"p-{classes}", "ground_truth": truth}


def test_a_classification_review_becomes_a_choices_annotation():
    parsed = parse_config(IMAGE_CONFIG)
    task = review_task(3, "/data/3.png", reviewed("classification", [1]), parsed)
    assert task["id"] == 3 and task["data"] == {"image": "/data/3.png"}
    [annotation] = task["annotations"]
    assert annotation["task"] == 3 and not annotation["was_cancelled"]
    assert annotation["meta"]["railyard"] == {"decision": "corrected", "prediction_id": "p-[1]"}
    assert [(r["from_name"], r["to_name"], r["type"], r["value"]) for r in annotation["result"]] == [
        ("colour", "image", "choices", {"choices": ["Blue"]})]
    # several classes: the top-scored one; class ids outside the control's labels, or no control: no task
    several = review_task(1, "x", reviewed("classification", [1, 0], [0.2, 0.8], decision="accepted"), parsed)
    assert several["annotations"][0]["result"][0]["value"]["choices"] == ["Red"]
    assert review_task(1, "x", reviewed("classification", [2]), parsed) is None
    assert review_task(1, "x", reviewed("classification", [0]), parse_config(BOXES_CONFIG)) is None
    assert review_task(1, "x", {"kind": "classification"}, parsed) is None


def test_detection_boxes_become_rectanglelabels_in_percent():
    parsed = parse_config(BOXES_CONFIG)
    labels = reviewed("detection", [1, 0], boxes=[[10, 20, 30, 60], [0, 0, 50, 100]])  # [top, left, bottom, right]
    task = review_task(7, "/data/7.png", labels, parsed, size=(100, 50))  # width 100, height 50
    assert task["data"] == {"picture": "/data/7.png"}
    first, second = task["annotations"][0]["result"]
    assert first["type"] == "rectanglelabels" and (first["from_name"], first["to_name"]) == ("boxes", "img")
    assert first["value"] == {"x": 20.0, "y": 20.0, "width": 40.0, "height": 40.0, "rotation": 0,
                              "rectanglelabels": ["Dog"]}
    assert (first["original_width"], first["original_height"]) == (100, 50)
    assert second["value"]["rectanglelabels"] == ["Cat"] and (second["value"]["width"], second["value"]["height"]) \
        == (100.0, 100.0)
    assert review_task(7, "x", labels, parsed, size=None) is None  # percent needs the image's size


def test_segmentation_polygons_become_polygonlabels_and_without_that_control_boxes():
    segmented = reviewed("segmentation", [1], boxes=[[10, 20, 30, 60]])
    segmented["ground_truth"]["detection_masks"] = [[20, 10, 60, 10, 60, 30]]  # [x1, y1, ...] pixels
    polygons = parse_config('<View><Image name="img" value="$picture"/><RectangleLabels name="boxes" toName="img">'
                            '<Label value="Cat"/><Label value="Dog"/></RectangleLabels><PolygonLabels name="shapes" '
                            'toName="img"><Label value="Cat"/><Label value="Dog"/></PolygonLabels></View>')
    [result] = review_task(2, "/data/2.png", segmented, polygons, size=(100, 50))["annotations"][0]["result"]
    assert (result["type"], result["from_name"]) == ("polygonlabels", "shapes")
    assert result["value"] == {"points": [[20.0, 20.0], [60.0, 20.0], [60.0, 60.0]], "closed": True,
                               "polygonlabels": ["Dog"]}
    [boxed] = review_task(2, "x", segmented, parse_config(BOXES_CONFIG), size=(100, 50))["annotations"][0]["result"]
    assert boxed["type"] == "rectanglelabels" and boxed["value"]["rectanglelabels"] == ["Dog"]


def backend_folder(tmp_path, script_text: str | None = None):
    folder = tmp_path / "backend_src"
    folder.mkdir()
    if script_text is None:
        shutil.copy(REPO / "examples" / "ml_backend" / "image_classifier" / "image_classifier.py", folder)
        config = {"script": "image_classifier.py", "model_class": "ImageClassifier"}
    else:
        (folder / "counter.py").write_text(script_text)
        config = {"script": "counter.py", "model_class": "Counter"}
    (folder / "railyard-ml.json").write_text(json.dumps(config))
    (folder / "requirements.txt").write_text("railyard-ml\n")
    return folder


def colour_reviews(count: int) -> list[tuple[str, bytes, dict]]:
    return [(f"{i}.png", image(colour, i), reviewed("classification", [0 if colour == "Red" else 1]))
            for i, colour in enumerate(["Red", "Blue"] * (count // 2))]


def test_a_2x_backend_package_is_fitted_into_a_new_package(tmp_path):
    archive, _ = package(backend_folder(tmp_path), label_config=IMAGE_CONFIG)  # deployed untrained
    new_archive, done = fit_package(archive, tmp_path / "work", colour_reviews(4), {"unused": 1})
    assert done["tasks"] == 4 and done["skipped"] == 0
    assert done["train_output"]["labels"] == ["Blue", "Red"] and done["train_output"]["trained_on"] == 4
    assert done["version"] != "image-classifier-0.0.1"
    unpacked = tmp_path / "served"
    zipfile.ZipFile(io.BytesIO(new_archive)).extractall(unpacked)
    shutil.rmtree(tmp_path / "work")  # the new package stands alone
    model = StepModel.load(unpacked / "backend")
    (tmp_path / "q").mkdir()
    red, blue = tmp_path / "q" / "red.png", tmp_path / "q" / "blue.png"
    red.write_bytes(image("Red", 99))
    blue.write_bytes(image("Blue", 98))
    predictions, _, versions = model.predict_json([json.dumps({"image": str(red)}), json.dumps({"image": str(blue)})])
    assert [json.loads(p)["result"][0]["value"]["choices"] for p in predictions] == [["Red"], ["Blue"]]
    assert versions == [done["version"]] * 2

    # fitted again from the new package: it starts from that state
    again, second = fit_package(new_archive, tmp_path / "work2", colour_reviews(2))
    assert second["train_output"]["trained_on"] == 2 and second["version"] != done["version"]
    # one label only teaches the example nothing: no package
    with pytest.raises(FitFailed, match="skipped"):
        fit_package(again, tmp_path / "work3", colour_reviews(2)[:1])


def test_a_1x_backend_gets_annotations_and_parameters_and_a_raising_fit_gives_nothing(tmp_path):
    archive, _ = package(backend_folder(tmp_path, LS1_STYLE), label_config=IMAGE_CONFIG)
    new_archive, done = fit_package(archive, tmp_path / "work", colour_reviews(4)[:3], {"boost": 10, "workdir": "x"})
    assert done["train_output"] == {"counts": {"Red": 20, "Blue": 10}, "workdir_given": True}
    state = json.loads(zipfile.ZipFile(io.BytesIO(new_archive)).read("backend/railyard_state/state.json"))
    assert json.loads(state["values"]["train_output"])["counts"] == {"Red": 20, "Blue": 10}
    with pytest.raises(FitFailed, match="RuntimeError: asked to fail"):
        fit_package(new_archive, tmp_path / "work2", colour_reviews(2), {"fail": True})


def test_the_orchestration_is_the_same_bytes_every_time():
    assert orchestration_zip() == orchestration_zip()
    assert zipfile.ZipFile(io.BytesIO(orchestration_zip())).namelist() == ["main.py"]
