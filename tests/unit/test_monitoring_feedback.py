"""The feedback slice's pure parts: ground-truth checks, what a reviewed prediction's dataset file is named and
labelled, and the SDK's dataset-version argument."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from railyard_client.errors import InvalidInput
from railyard_client.monitoring_feedback import dataset_version_ref

from services.monitoring import feedback, stats
from services.monitoring import feedback_store as fs
from services.monitoring.handlers import OwnerRefused
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


async def test_a_failed_suspension_of_one_feedback_loop_does_not_end_the_sweep_for_the_others(monkeypatch, caplog):
    """Auth refuses the first loop's owner, and the write that suspends that loop (suspended_reason) itself fails (the
    database away for a moment). Before, that exception ended the Exporter's sweep: the second loop's dataset was not
    written in it (nor in any later sweep while the write kept failing: the refused loop comes first). Now the
    failure is logged and the other loops go on; the refused loop stays on, so the next sweep suspends it."""
    pairs = [{"deployment_id": 1, "dataset_id": 11, "owner_id": "refused"},
             {"deployment_id": 2, "dataset_id": 21, "owner_id": "member"}]
    exported: list[int] = []

    async def active_loop_datasets(pool):
        return pairs

    async def suspend_feedback_loop(pool, deployment_id, owner_id, reason):
        raise ConnectionError("the database went away")

    async def export(self, pair):
        if pair["owner_id"] == "refused":
            raise OwnerRefused("the task's owner is no longer a member of workspace 1")
        exported.append(pair["dataset_id"])

    monkeypatch.setattr(fs, "active_loop_datasets", active_loop_datasets)
    monkeypatch.setattr(fs, "suspend_feedback_loop", suspend_feedback_loop)
    monkeypatch.setattr(feedback.Exporter, "export", export)
    deps = SimpleNamespace(monitoring=SimpleNamespace(pool=None))
    await feedback.Exporter(deps).sweep()
    assert exported == [21]
    assert any("suspending it failed" in r.getMessage() for r in caplog.records)
