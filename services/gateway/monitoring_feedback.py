"""Seed 003's feedback routes of the gateway (reviews, feedback loop, training-data reference, get_stats), under
/v1/api/deployments/, forwarded as commands to the monitoring service; and the one byte-carrying route, a
prediction's image, which the monitoring service authorizes and the gateway streams from object storage."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from services.gateway import handlers
from services.gateway.openapi_body import request_schema
from shared import subjects
from shared.authz import Principal
from shared.errors import InvalidRequest, NotFound, validation_message
from shared.messages import monitoring as mon
from shared.messages import monitoring_feedback as fb
from shared.objectstore import BUCKET_MONITORING
from shared.service import Runtime

# (path, subject, request model, reply model, summary, unwrap, status, long_running) rows for http.py's table
JSON_ROUTE_SPECS: list[tuple[Any, ...]] = [
    ("/deployments/review_prediction", subjects.MONITORING_REVIEW_PREDICTION, fb.ReviewPrediction, fb.Review,
     "Review a prediction: accept it, or correct its classes/boxes (a later review replaces it)."),
    ("/deployments/list_predictions_to_review", subjects.MONITORING_PREDICTIONS_TO_REVIEW,
     fb.ListPredictionsToReview, fb.PredictionsToReview, "The review queue: predictions without a review, oldest "
     "first; a page of `limit`, the next by its `next_cursor` as `cursor`."),
    ("/deployments/setup_feedback_loop", subjects.MONITORING_FEEDBACK_SETUP, fb.SetupFeedbackLoop,
     fb.FeedbackLoopStatus, "Set up the feedback loop (reviews become new versions of the attached datasets)."),
    ("/deployments/attach_dataset_version_to_feedback_loop", subjects.MONITORING_FEEDBACK_ATTACH,
     fb.FeedbackLoopDatasetCommand, fb.FeedbackLoopStatus, "Attach an images dataset to the feedback loop."),
    ("/deployments/detach_dataset_version_from_feedback_loop", subjects.MONITORING_FEEDBACK_DETACH,
     fb.FeedbackLoopDatasetCommand, fb.FeedbackLoopStatus, "Detach a dataset from the feedback loop."),
    ("/deployments/list_feedback_loop_datasets", subjects.MONITORING_FEEDBACK_LIST, mon.DeploymentQuery,
     fb.FeedbackLoopDatasets, "The datasets attached to the feedback loop, with what was written into them."),
    ("/deployments/check_feedback_loop_status", subjects.MONITORING_FEEDBACK_STATUS, mon.DeploymentQuery,
     fb.FeedbackLoopStatus, "The feedback loop's state: active, datasets, reviews written and pending."),
    ("/deployments/disable_feedback_loop", subjects.MONITORING_FEEDBACK_DISABLE, mon.DeploymentQuery,
     fb.FeedbackLoopStatus, "Remove the feedback loop (reviews and the dataset versions written stay)."),
    ("/deployments/toggle_feedback_loop", subjects.MONITORING_FEEDBACK_TOGGLE, fb.ToggleFeedbackLoop,
     fb.FeedbackLoopStatus, "(De)activate the feedback loop."),
    ("/deployments/set_training_data", subjects.MONITORING_TRAINING_SET, fb.SetTrainingData, fb.TrainingDataStatus,
     "Use an images dataset as the training-data reference (computed in the background)."),
    ("/deployments/check_training_data_metrics_status", subjects.MONITORING_TRAINING_STATUS, mon.DeploymentQuery,
     fb.TrainingDataStatus, "The training-data reference's status and progress."),
    ("/deployments/disable_training_data_reference", subjects.MONITORING_TRAINING_DISABLE, mon.DeploymentQuery,
     fb.TrainingDataStatus, "Stop using the training-data reference."),
    ("/deployments/get_stats", subjects.MONITORING_GET_STATS, fb.GetStats, fb.DeploymentStats,
     "A ServiceMetrics value of the deployment, computed from its predictions and reviews.", None, 200, True),
]


def add_feedback_routes(app: FastAPI, runtime: Runtime, user_caller, bearer_token) -> None:
    """The prediction image route (the review queue's pictures)."""
    timeout = runtime.settings.nats.request_timeout

    @app.post("/v1/api/deployments/get_prediction_image", tags=["deployments"],
              openapi_extra=request_schema(fb.PredictionImageQuery))
    async def get_prediction_image(request: Request, principal: Principal = Depends(user_caller)) -> Any:
        """A prediction's image bytes ({"deployment": ..., "prediction_id": ...}), as image/png or image/jpeg."""
        raw = await request.body()
        takes = "get_prediction_image takes {deployment, prediction_id}"
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except ValueError as exc:  # with the reader's reason and place, as the other routes say it
            raise InvalidRequest(f"{takes}: the request body is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(body, dict):
            raise InvalidRequest(f"{takes}: the request body must be a JSON object")
        try:
            cmd = fb.PredictionImageQuery.model_validate(body)
        except ValidationError as exc:
            # with the field's name: "Field required" alone did not say which of the two was missing
            raise InvalidRequest(f"{takes}: {validation_message(exc.errors())}") from None
        found = fb.PredictionImage.model_validate(await handlers.forward(
            runtime.broker, subjects.MONITORING_PREDICTION_IMAGE, cmd, bearer_token(request), timeout))
        key = f"images/{found.image_sha256}"
        if not await runtime.objects.exists(BUCKET_MONITORING, key):
            raise NotFound("the prediction's image is missing from storage")
        return StreamingResponse(runtime.objects.get_stream(BUCKET_MONITORING, key), media_type=found.content_type)
