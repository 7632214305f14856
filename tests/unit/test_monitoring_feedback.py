"""The feedback slice's pure parts: ground-truth checks, what a reviewed prediction's dataset file is named and
labelled, and the SDK's dataset-version argument."""

from __future__ import annotations

import uuid

import pytest
from railyard_client.errors import InvalidInput
from railyard_client.monitoring_feedback import dataset_version_ref

from services.monitoring import feedback, stats
from shared.errors import InvalidRequest
from shared.messages.monitoring_feedback import GroundTruth


def truth(**fields) -> GroundTruth:
    return GroundTruth.model_validate(fields)


def test_classification_ground_truth_defaults_scores_and_refuses_boxes():
    assert feedback._check_ground_truth("classification", truth(detection_classes=[3]), 8, 8) == {
        "detection_classes": [3], "detection_scores": [1.0]}
    for bad in (truth(detection_classes=[]), truth(detection_classes=[1], detection_boxes=[[0, 0, 1, 1]]),
                truth(detection_classes=[-2]), truth(detection_classes=[1], detection_scores=[0.5, 0.5]),
                truth(detection_classes=[1], detection_scores=[1.5])):
        with pytest.raises(InvalidRequest):
            feedback._check_ground_truth("classification", bad, 8, 8)


def test_detection_ground_truth_needs_one_box_per_class_inside_the_image():
    ok = feedback._check_ground_truth("detection", truth(detection_classes=[0, 1],
                                                         detection_boxes=[[0, 0, 10, 10], [5, 5, 64, 32]]), 64, 32)
    assert ok["detection_boxes"] == [[0, 0, 10, 10], [5, 5, 64, 32]] and ok["detection_scores"] == [1.0, 1.0]
    assert feedback._check_ground_truth("detection", truth(detection_classes=[]), 64, 32)["detection_boxes"] == []
    for bad in (truth(detection_classes=[0]),  # no box
                truth(detection_classes=[0], detection_boxes=[[0, 0, 65, 10]]),  # below the image
                truth(detection_classes=[0], detection_boxes=[[10, 0, 5, 10]]),  # bottom above top
                truth(detection_classes=[0], detection_boxes=[[0, 0, 10]]),  # three numbers
                truth(detection_classes=[0], detection_boxes=[[0, 0, 1, 1]], detection_masks=[[0, 0, 1, 0, 1, 1]])):
        with pytest.raises(InvalidRequest):
            feedback._check_ground_truth("detection", bad, 64, 32)


def test_segmentation_ground_truth_needs_polygons():
    good = truth(detection_classes=[0], detection_boxes=[[0, 0, 4, 4]], detection_masks=[[0, 0, 4, 0, 4, 4]])
    assert feedback._check_ground_truth("segmentation", good, 8, 8)["detection_masks"] == [[0, 0, 4, 0, 4, 4]]
    with pytest.raises(InvalidRequest):
        feedback._check_ground_truth("segmentation", truth(detection_classes=[0], detection_boxes=[[0, 0, 4, 4]],
                                                           detection_masks=[[0, 0, 4, 0]]), 8, 8)


def test_a_reviewed_file_is_named_by_its_prediction_and_labelled_with_coco_boxes():
    pid = uuid.uuid4()
    review = {"prediction_id": pid, "kind": "detection", "decision": "corrected", "content_type": "image/jpeg",
              "ground_truth": {"detection_classes": [2], "detection_scores": [1.0], "detection_boxes": [[1, 2, 5, 10]]}}
    assert feedback.file_name(review) == f"{pid}.jpg"
    labels = feedback.file_labels(review)
    # [top, left, bottom, right] = [1, 2, 5, 10] is x=2, y=1, width 8, height 4
    assert labels["boxes"] == [{"bbox": [2, 1, 8, 4], "category": 2}] and labels["prediction_id"] == str(pid)
    assert stats.labels_of(labels) == ["2"]  # what a training reference made from the dataset reads back
    classification = {**review, "kind": "classification", "content_type": "image/png",
                      "ground_truth": {"detection_classes": [4], "detection_scores": [1.0]}}
    assert "boxes" not in feedback.file_labels(classification) and feedback.file_name(classification).endswith(".png")


def test_sdk_dataset_version_argument():
    assert dataset_version_ref(5) == {"dataset_id": 5}
    assert dataset_version_ref({"id": 5, "kind": "images"}, version_id=2) == {"dataset_id": 5, "version_id": 2}
    assert dataset_version_ref({"dataset_id": 5, "version_id": 3}) == {"dataset_id": 5, "version_id": 3}
    for bad in ("5", True, {"name": "x"}):
        with pytest.raises(InvalidInput):
            dataset_version_ref(bad)
