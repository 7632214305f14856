"""Seed 003's feedback messages (monitoring service): reviews of predictions, the feedback loop that writes reviewed
predictions into datasets, the training-data reference and get_stats. A deployment is named `<deploy_id>-<id>`; a
seed "dataset version" is a workflow-lineage images dataset (`dataset_id`), optionally with the project version
(`version_id`) it was taken from."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from shared.messages.base import INT32, Command, Event, Message
from shared.messages.monitoring import ModelVersionRef
from shared.paging import NextCursor, key_cursor_field

SERVICE_METRICS = ("PREDICTIONS_OUTLYING_SCORE", "PREDICTIONS_DATA", "REVIEWS_OBJECT_DETECTION_STATS",
                   "REVIEWS_CLASSIFICATION_STATS", "REVIEWS_LABEL_DISTRIBUTION_STATS", "AGGREGATED_LABEL_DISTRIBUTION",
                   "AGGREGATED_OBJECT_DETECTION_STATS", "AGGREGATED_PREDICTIONS_DATA",
                   "AGGREGATED_DRIFTING_PREDICTIONS")
"""The seed's ServiceMetrics values, the only `service` get_stats accepts."""

MAX_ITEMS = 1000


class GroundTruth(Message):
    """A reviewed annotation in the seed's PredictionFormat shape: class ids (indexes into the model's labels) with
    optional scores (default 1.0), and for detection/segmentation boxes `[top, left, bottom, right]` in pixels, for
    segmentation polygons `[x1, y1, x2, y2, ...]`."""

    detection_classes: list[int] = Field(max_length=MAX_ITEMS)
    detection_scores: list[float] | None = Field(None, max_length=MAX_ITEMS)
    detection_boxes: list[list[int]] | None = Field(None, max_length=MAX_ITEMS)
    detection_masks: list[list[int]] | None = Field(None, max_length=MAX_ITEMS)


class ReviewPrediction(Command):
    """Review a prediction: `accepted` (its prediction is right: the ground truth is a copy of it) or `corrected`
    (give `ground_truth`). A later review of the same prediction replaces the earlier one."""

    deployment: str = Field(min_length=1, max_length=200)
    prediction_id: uuid.UUID
    decision: Literal["accepted", "corrected"] = "accepted"
    ground_truth: GroundTruth | None = None


class Review(Message):
    """A prediction's review (review_prediction's answer)."""

    review_id: uuid.UUID
    prediction_id: uuid.UUID
    deployment: str
    decision: str
    ground_truth: dict[str, Any]
    reviewer: str | None
    revision: int = Field(description="1 for the first review; a later review replacing it counts up.")
    created_at: datetime


class ReviewCreated(Event):
    """A review was committed (a replacing review too): the wake-up for whoever counts reviews from the table."""

    review_id: uuid.UUID
    prediction_id: uuid.UUID
    deployment_id: int
    workspace_id: int


class ListPredictionsToReview(Command):
    """The review queue: the deployment's predictions without a review, oldest first (predicted_at, then id). A page
    of `limit`; the next one by `cursor` (Railyard: keyset, so a prediction reviewed meanwhile neither hides another
    nor repeats one) or by the seed's `offset` (which shifts when others review between two pages)."""

    deployment: str = Field(min_length=1, max_length=200)
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)
    cursor: str | None = key_cursor_field("deployments/list_predictions_to_review")


class PredictionToReview(Message):
    """A prediction waiting for review (its image: get_prediction_image)."""

    id: uuid.UUID
    predicted_at: datetime
    origin: str
    source: str | None
    tags: list[str]
    kind: str
    prediction: dict[str, Any]
    shadow_prediction: dict[str, Any] | None
    height: int
    width: int
    content_type: str


class PredictionsToReview(Message, NextCursor):
    """A page of the review queue and how many predictions wait in all (`next_cursor` when more follow the page)."""

    predictions: list[PredictionToReview]
    pending: int
    labels: list[str] | None = Field(None, description="The deployment's labels (class id i is labels[i]), when its "
                                     "image configuration names them.")


class PredictionImageQuery(Command):
    """A prediction's image (the gateway streams its bytes)."""

    deployment: str = Field(min_length=1, max_length=200)
    prediction_id: uuid.UUID


class PredictionImage(Message):
    """Where a prediction's image is (internal: the gateway answers the bytes, never this)."""

    image_sha256: str
    content_type: str


class DatasetVersionRef(Message):
    """A seed "dataset version": an images dataset of a workflow-lineage project, and optionally a version of that
    project holding it: the dataset is then read as that version saved it (docs/monitoring.md)."""

    dataset_id: int = Field(gt=0, le=INT32[1])  # monitoring keeps both in `integer` columns
    version_id: int | None = Field(None, gt=0, le=INT32[1])


class SetupFeedbackLoop(Command):
    """setup_feedback_loop: create (or re-activate) the deployment's feedback loop, optionally attaching a dataset."""

    deployment: str = Field(min_length=1, max_length=200)
    dataset_version: DatasetVersionRef | None = None


class FeedbackLoopDatasetCommand(Command):
    """attach_/detach_dataset_version_(to|from)_feedback_loop."""

    deployment: str = Field(min_length=1, max_length=200)
    dataset_version: DatasetVersionRef


class ToggleFeedbackLoop(Command):
    """toggle_feedback_loop: (de)activate the loop (inactive: reviews are kept, nothing is written to datasets)."""

    deployment: str = Field(min_length=1, max_length=200)
    active: bool = Field(strict=True, description="JSON true or false (\"yes\", 1 or \"false\": 400).")


class FeedbackLoopDataset(Message):
    """A dataset attached to the feedback loop and what the loop wrote into it."""

    dataset_id: int
    project_id: int
    dataset_name: str
    attached_version_id: int | None
    last_version_id: int | None = Field(description="The newest project version the loop created.")
    last_version_number: int | None
    exported_reviews: int
    pending_reviews: int
    last_error: str | None
    attached_at: datetime


class FeedbackLoopDatasets(Message):
    """list_feedback_loop_datasets' answer."""

    dataset_versions: list[FeedbackLoopDataset]


class FeedbackLoopStatus(Message):
    """check_feedback_loop_status' answer (and setup/toggle/disable/attach/detach's)."""

    deployment: str
    configured: bool
    active: bool
    reviews: int
    pending_reviews: int = Field(description="Reviews not yet written to every attached dataset.")
    datasets: list[FeedbackLoopDataset]
    suspended_reason: str | None = Field(
        None, description="Railyard: why the feedback loop was turned off by the service (its owner's token was "
        "refused: they left the workspace or were deactivated); set up again or turned on again, it is cleared.")


class SetTrainingData(Command):
    """set_training_data: compute the reference distributions of this images dataset in the background."""

    deployment: str = Field(min_length=1, max_length=200)
    dataset_version: DatasetVersionRef


class TrainingDataStatus(Message):
    """check_training_data_metrics_status' answer: `none` (never set), `computing`, `ready`, `failed`, `disabled`."""

    deployment: str
    status: Literal["none", "computing", "ready", "failed", "disabled"]
    dataset_id: int | None = None
    version_id: int | None = None
    images_done: int = 0
    images_total: int = 0
    error: str | None = None
    requested_at: datetime | None = None
    computed_at: datetime | None = None


MAX_SINCE = 3_155_760_000
"""get_stats' `since` at most (seconds: 100 years). A bigger one overflowed the date arithmetic: a 500, found by
hand after `make fuzz-api`."""
MIN_EPOCH_MS, MAX_EPOCH_MS = -62_135_596_800_000, 253_402_300_799_999
"""Epoch milliseconds of 0001-01-01 and 9999-12-31T23:59:59.999 UTC: the times a window bound can be."""


class ReferenceFeatureQuery(Command):
    """The assay runner asking for one image feature of a deployment's training-data reference and, with
    `start_ms`/`end_ms`, that feature's values in the deployment's predictions of the window. With a token the
    deployment is named by `deployment` and resolved with the caller's rights; without one (the assay scheduler,
    trusted on the bus) by `deployment_id`, which must be of `workspace_id`. `pipeline_name` (with a token): the
    assay's pipeline; a deployment serving another pipeline is a 400 before its reference's readiness is looked at."""

    workspace_id: int
    feature: str = Field(min_length=1, max_length=100)
    deployment: str | None = Field(None, max_length=200)
    pipeline_name: str | None = Field(None, max_length=255)  # an assay's (MAX_ASSAY_NAME)
    deployment_id: int | None = Field(None, ge=INT32[0], le=INT32[1])
    start_ms: int | None = Field(None, ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)
    end_ms: int | None = Field(None, ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)


class ReferenceFeature(Message):
    """The feature's reference summary (`count`, `mean`, `std`, `min`, `max`, `edges`: the inner deciles) and its
    values in the window's predictions (empty without a window)."""

    deployment_id: int
    workspace_id: int
    pipeline_name: str | None = None
    feature: str
    reference: dict[str, Any]
    values: list[float]


class GetStats(Command):
    """get_stats: `service` is a ServiceMetrics value; the filters narrow the predictions (and their reviews):
    `model_version` (the champion that answered), `from_timestamp` / `to_timestamp` (epoch seconds on the
    prediction time), `since` (the last seconds), `includes` (only these prediction ids), `excludes`, `tags`
    (predictions that have every one of them)."""

    deployment: str = Field(min_length=1, max_length=200)
    service: str = Field(min_length=1, max_length=100)
    model_version: ModelVersionRef | None = None
    from_timestamp: float | None = None
    to_timestamp: float | None = None
    since: int | None = Field(None, gt=0, le=MAX_SINCE, description="Seconds back from now; at most 100 years.")
    includes: list[str] | None = Field(None, max_length=MAX_ITEMS)
    excludes: list[str] | None = Field(None, max_length=MAX_ITEMS)
    tags: list[str] | None = Field(None, max_length=100)


class DeploymentStats(Message):
    """get_stats' answer: the metric asked for, computed now from the predictions and reviews the filters keep."""

    deployment: str
    service: str
    predictions: int = Field(description="How many predictions the filters kept.")
    stats: dict[str, Any]
