"""Seed 003's feedback methods on a `Deployment`: reviews, the feedback loop, the training-data reference and
get_stats (routes under `/v1/api/deployments/`, answered by the monitoring service). A seed "dataset version" is an
images dataset of a project (its id, or the dict `Lineage.create_dataset` answers), optionally with the project
version it was taken from."""

from __future__ import annotations

import time
from enum import Enum
from typing import Any

from railyard_client.errors import InvalidInput, boolean_input
from railyard_client.session import API_PREFIX, Session

DatasetVersionLike = int | dict[str, Any]


class ServiceMetrics(str, Enum):
    """The statistics get_stats computes (seed 003)."""

    PREDICTIONS_OUTLYING_SCORE = "PREDICTIONS_OUTLYING_SCORE"
    PREDICTIONS_DATA = "PREDICTIONS_DATA"
    REVIEWS_OBJECT_DETECTION_STATS = "REVIEWS_OBJECT_DETECTION_STATS"
    REVIEWS_CLASSIFICATION_STATS = "REVIEWS_CLASSIFICATION_STATS"
    REVIEWS_LABEL_DISTRIBUTION_STATS = "REVIEWS_LABEL_DISTRIBUTION_STATS"
    AGGREGATED_LABEL_DISTRIBUTION = "AGGREGATED_LABEL_DISTRIBUTION"
    AGGREGATED_OBJECT_DETECTION_STATS = "AGGREGATED_OBJECT_DETECTION_STATS"
    AGGREGATED_PREDICTIONS_DATA = "AGGREGATED_PREDICTIONS_DATA"
    AGGREGATED_DRIFTING_PREDICTIONS = "AGGREGATED_DRIFTING_PREDICTIONS"


def dataset_version_ref(dataset_version: DatasetVersionLike, version_id: int | None = None) -> dict[str, Any]:
    """{dataset_id, version_id} from a dataset id or a dataset dict (`id` or `dataset_id`, optional `version_id`)."""
    if isinstance(dataset_version, int) and not isinstance(dataset_version, bool):
        ref = {"dataset_id": dataset_version}
    elif isinstance(dataset_version, dict) and ("dataset_id" in dataset_version or "id" in dataset_version):
        ref = {"dataset_id": dataset_version.get("dataset_id", dataset_version.get("id"))}
        version_id = version_id if version_id is not None else dataset_version.get("version_id")
    else:
        raise InvalidInput(f"give a dataset id or a dataset dict, not {dataset_version!r}")
    return ref | ({"version_id": version_id} if version_id is not None else {})


class DeploymentFeedback:
    """The seed's feedback methods, mixed into `Deployment` (which provides `_session` and `name`)."""

    _session: Session
    name: str

    def _feedback(self, route: str, **body: Any) -> Any:
        return self._session.post(f"deployments/{route}", {"deployment": self.name, **body})

    # --- reviews ---------------------------------------------------------------------------------------

    def review_prediction(self, prediction_id: str, ground_truth: dict[str, Any] | None = None) -> dict[str, Any]:
        """Review a prediction: without `ground_truth` it is accepted as it is; with one (a PredictionFormat:
        detection_classes as class ids (integers), optional detection_scores, detection_boxes [top, left, bottom,
        right] for detection) it is corrected. A later review of the same prediction replaces this one; returns the
        review."""
        body: dict[str, Any] = {"prediction_id": str(prediction_id),
                                "decision": "accepted" if ground_truth is None else "corrected"}
        if ground_truth is not None:
            body["ground_truth"] = ground_truth
        return self._feedback("review_prediction", **body)

    def list_predictions_to_review(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """The review queue: {"predictions": [...] oldest first, "pending": how many wait in all}."""
        return self._feedback("list_predictions_to_review", limit=limit, offset=offset)

    def get_prediction_image(self, prediction_id: str) -> bytes:
        """The image a prediction was made on (PNG or JPEG bytes)."""
        response = self._session.send("POST", f"{API_PREFIX}/deployments/get_prediction_image",
                                      json={"deployment": self.name, "prediction_id": str(prediction_id)})
        return response.content

    # --- the feedback loop -----------------------------------------------------------------------------

    def setup_feedback_loop(self, dataset_version: DatasetVersionLike | None = None) -> dict[str, Any]:
        """Set up the feedback loop (acting with your rights): reviewed predictions become new versions of the
        attached datasets. Optionally attach one dataset now; returns the loop's status."""
        body = {"dataset_version": dataset_version_ref(dataset_version)} if dataset_version is not None else {}
        return self._feedback("setup_feedback_loop", **body)

    def attach_dataset_version_to_feedback_loop(self, dataset_version: DatasetVersionLike) -> dict[str, Any]:
        """Attach an images dataset of the deployment's workspace to the feedback loop."""
        return self._feedback("attach_dataset_version_to_feedback_loop",
                              dataset_version=dataset_version_ref(dataset_version))

    def detach_dataset_version_from_feedback_loop(self, dataset_version: DatasetVersionLike) -> dict[str, Any]:
        """Detach a dataset (what was written into it stays)."""
        return self._feedback("detach_dataset_version_from_feedback_loop",
                              dataset_version=dataset_version_ref(dataset_version))

    def list_feedback_loop_datasets(self) -> list[dict[str, Any]]:
        """The attached datasets, each with the last project version the loop made and its pending reviews."""
        return self._feedback("list_feedback_loop_datasets")["dataset_versions"]

    def check_feedback_loop_status(self) -> dict[str, Any]:
        """The loop's state: configured, active, reviews, pending_reviews, datasets."""
        return self._feedback("check_feedback_loop_status")

    def disable_feedback_loop(self) -> dict[str, Any]:
        """Remove the feedback loop (reviews and the dataset versions already written stay)."""
        return self._feedback("disable_feedback_loop")

    def toggle_feedback_loop(self, active: bool) -> dict[str, Any]:
        """(De)activate the feedback loop."""
        return self._feedback("toggle_feedback_loop", active=boolean_input(active, "active"))

    # --- the training-data reference -------------------------------------------------------------------

    def set_training_data(self, dataset_version: DatasetVersionLike) -> dict[str, Any]:
        """Use an images dataset as the training-data reference; it is computed in the background (see
        check_training_data_metrics_status)."""
        return self._feedback("set_training_data", dataset_version=dataset_version_ref(dataset_version))

    def check_training_data_metrics_status(self) -> str:
        """The reference's status: none, computing, ready, failed or disabled (details: training_data_status)."""
        return self.training_data_status()["status"]

    def training_data_status(self) -> dict[str, Any]:
        """The reference's status with its progress (images_done / images_total) and error."""
        return self._feedback("check_training_data_metrics_status")

    def wait_for_training_data(self, timeout: float = 120.0, poll: float = 0.25) -> dict[str, Any]:
        """Wait until the reference is computed (or failed); returns its status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.training_data_status()
            if status["status"] != "computing" or time.monotonic() > deadline:
                return status
            time.sleep(poll)

    def disable_training_data_reference(self) -> dict[str, Any]:
        """Stop using the training-data reference."""
        return self._feedback("disable_training_data_reference")

    # --- stats -----------------------------------------------------------------------------------------

    def get_stats(self, service: ServiceMetrics | str, model_version: Any = None,
                  from_timestamp: float | None = None, to_timestamp: float | None = None, since: int | None = None,
                  includes: list[str] | None = None, excludes: list[str] | None = None,
                  tags: list[str] | None = None) -> dict[str, Any]:
        """A ServiceMetrics value computed now from this deployment's predictions and reviews, filtered by the
        champion model version (a ModelVersion, a Model's name or {name, version}), prediction time
        (from/to_timestamp in epoch seconds, since = the last seconds), prediction ids (includes, excludes) and
        tags (predictions with all of them). Returns {"deployment", "service", "predictions", "stats"}."""
        body: dict[str, Any] = {"service": service.value if isinstance(service, ServiceMetrics) else str(service)}
        if isinstance(model_version, dict):
            body["model_version"] = model_version
        elif model_version is not None:
            from railyard_client.monitoring import _model_version_ref
            body["model_version"] = _model_version_ref(model_version)
        for key, value in (("from_timestamp", from_timestamp), ("to_timestamp", to_timestamp), ("since", since),
                           ("includes", includes), ("excludes", excludes), ("tags", tags)):
            if value is not None:
                body[key] = [str(v) for v in value] if isinstance(value, list) else value
        return self._feedback("get_stats", **body)
