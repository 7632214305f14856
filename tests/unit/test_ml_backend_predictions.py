"""An ML backend's Label Studio answers as the seed's PredictionFormat (services/monitoring/ml_backend_predictions.py):
the labeling config read from a real `railyard-ml deploy railyard` package, each kind's conversion, and answers the
config cannot hold."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from services.monitoring.ml_backend_predictions import (
    BackendAnswerInvalid,
    BackendLabeling,
    _state_label_config,
    parse_labeling,
    task_json,
    to_prediction,
)
from shared.errors import Conflict

CHOICES = BackendLabeling(control="colour", kind="classification", labels=["Red", "Blue", "Green"], value="image")
BOXES = BackendLabeling(control="found", kind="detection", labels=["Blue", "Red"], value="image")
POLYGONS = BackendLabeling(control="outline", kind="segmentation", labels=["cat", "dog"], value="img")


def answer(*results, score=None) -> str:
    return json.dumps({"result": list(results), **({"score": score} if score is not None else {})})


def test_choices_become_classes_best_first_each_once_and_thresholded():
    made = to_prediction(answer(
        {"from_name": "colour", "type": "choices", "score": 0.3, "value": {"choices": ["Red"]}},
        {"from_name": "colour", "type": "choices", "score": 0.7, "value": {"choices": ["Green"]}},
        {"from_name": "colour", "type": "choices", "score": 0.1, "value": {"choices": ["Red"]}},
        {"from_name": "other", "type": "choices", "score": 0.9, "value": {"choices": ["Nope"]}}), CHOICES, 10, 10, None)
    assert made == {"detection_classes": [2, 0], "detection_scores": [0.7, 0.3]}
    only = to_prediction(answer({"type": "choices", "value": {"choices": ["Blue"]}}, score=0.4), CHOICES, 10, 10, 0.5)
    assert only == {"detection_classes": [], "detection_scores": []}  # the prediction's own score, below threshold
    assert to_prediction(answer(), CHOICES, 10, 10, None) == {"detection_classes": [], "detection_scores": []}


def test_rectangles_become_pixel_boxes_and_a_rotated_one_its_bounding_box():
    made = to_prediction(answer(
        {"from_name": "found", "type": "rectanglelabels", "score": 2.0,
         "value": {"x": 10, "y": 25, "width": 50, "height": 50, "rectanglelabels": ["Red"]}},
        {"from_name": "found", "type": "rectanglelabels", "score": 0.5,
         "value": {"x": 50, "y": 0, "width": 10, "height": 10, "rotation": 90, "rectanglelabels": ["Blue"]}}),
        BOXES, 40, 200, None)
    assert made["detection_classes"] == [1, 0] and made["detection_scores"] == [1.0, 0.5]  # scores clipped to 0..1
    assert made["detection_boxes"] == [[10, 20, 30, 120], [0, 96, 20, 100]]
    assert "detection_masks" not in made


def test_polygons_become_pixel_polygons_with_their_bounding_boxes():
    made = to_prediction(answer({"from_name": "outline", "type": "polygonlabels", "score": 0.8, "value": {
        "points": [[10, 10], [90, 20], [50, 120]], "polygonlabels": ["dog"]}}), POLYGONS, 50, 100, None)
    assert made == {"detection_classes": [1], "detection_scores": [0.8], "detection_boxes": [[5, 10, 50, 90]],
                    "detection_masks": [[10, 5, 90, 10, 50, 50]]}  # clipped to the image


@pytest.mark.parametrize("bad, message", [
    ("not json", "not JSON"),
    (json.dumps({"result": "x"}), "'result' list"),
    (answer({"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 1, "height": 1,
                                                  "rectanglelabels": ["Green"]}}), "label 'Green'"),
    (answer({"type": "rectanglelabels", "value": {"x": "a", "y": 1, "width": 1, "height": 1,
                                                  "rectanglelabels": ["Red"]}}), "not numbers"),
])
def test_answers_the_labeling_config_cannot_hold_are_the_models_error(bad, message):
    with pytest.raises(BackendAnswerInvalid, match=message) as raised:
        to_prediction(bad, BOXES, 10, 10, None)
    assert raised.value.code == "inference_failed"
    with pytest.raises(BackendAnswerInvalid, match="at least 3"):
        to_prediction(answer({"type": "polygonlabels", "value": {"points": [[1, 1]], "polygonlabels": ["cat"]}}),
                      POLYGONS, 10, 10, None)


def test_the_first_control_over_an_image_decides_the_kind():
    assert parse_labeling('<View><Text name="t" value="$text"/><Choices name="s" toName="t"><Choice value="a"/>'
                          '</Choices><Image name="i" value="$img"/><PolygonLabels name="p" toName="i">'
                          '<Label value="x"/><Label value="y"/></PolygonLabels></View>') == BackendLabeling(
        control="p", kind="segmentation", labels=["x", "y"], value="img")
    with pytest.raises(Conflict, match="no <Choices>"):
        parse_labeling('<View><Image name="i" value="$img"/><BrushLabels name="b" toName="i"><Label value="x"/>'
                       '</BrushLabels></View>')
    with pytest.raises(Conflict, match="DOCTYPE"):
        parse_labeling('<!DOCTYPE x [<!ENTITY a "b">]><View/>')


def test_the_labeling_config_is_read_from_a_deploy_package(tmp_path):
    from railyard_ml.railyard_step import package

    (tmp_path / "b.py").write_text("from railyard_ml import LabelStudioMLBase\nclass B(LabelStudioMLBase):\n    pass\n")
    (tmp_path / "railyard-ml.json").write_text(json.dumps({"script": "b.py", "model_class": "B"}))
    (tmp_path / "requirements.txt").write_text("railyard-ml\n")
    config = '<View><Image name="i" value="$img"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
    archive, _ = package(tmp_path, None, config)
    reads = []

    def read_range(offset: int, length: int) -> bytes:
        reads.append(length)
        return archive[offset:offset + length]

    assert _state_label_config(read_range, len(archive)) == config
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as zipped:
        zipped.writestr("model.py", "x = 1")
    assert _state_label_config(lambda o, n: other.getvalue()[o:o + n], len(other.getvalue())) is None
    task = json.loads(task_json(parse_labeling(config), b"\x89PNG", "image/png"))
    assert task == {"id": 0, "data": {"img": "data:image/png;base64,iVBORw=="}}


@pytest.mark.parametrize("labeling, result_type, value", [
    (BOXES, "rectanglelabels", {"x": 10, "y": 10, "width": 20, "height": 20}),
    (POLYGONS, "polygonlabels", {"points": [[10, 10], [90, 20], [50, 120]]}),
])
def test_more_regions_than_a_prediction_holds_keep_the_best_scoring(labeling, result_type, value):
    from shared.messages.monitoring_predictions import PredictionFormat

    regions = [{"from_name": labeling.control, "type": result_type, "score": (i + 1) / 1001,
                "value": value | {result_type: [labeling.labels[0]]}} for i in range(1001)]  # the worst first
    made = to_prediction(answer(*regions), labeling, 50, 100, None)
    assert len(made["detection_scores"]) == 1000 == len(made["detection_boxes"])
    assert made["detection_scores"][0] == 1.0 and min(made["detection_scores"]) == 2 / 1001
    PredictionFormat.model_validate(made)  # it fits: predict stores it


def test_more_classes_than_a_prediction_holds_keep_the_best_scoring():
    many = BackendLabeling(control="colour", kind="classification", labels=[f"c{i}" for i in range(1001)],
                           value="image")
    made = to_prediction(answer(*({"from_name": "colour", "type": "choices", "score": (i + 1) / 1001,
                                   "value": {"choices": [f"c{i}"]}} for i in range(1001))), many, 10, 10, None)
    assert len(made["detection_classes"]) == 1000 and 0 not in made["detection_classes"]
