"""Deployment management routes of the gateway (seed 003's `Deployment` methods, under /v1/api/deployments/),
forwarded as commands to the monitoring service like every other JSON route."""

from __future__ import annotations

from typing import Any

from shared import subjects
from shared.messages import monitoring as mon
from shared.messages import monitoring_predictions as pred

# (path, subject, request model, reply model, summary, unwrap, status, long_running) rows for http.py's table
JSON_ROUTE_SPECS: list[tuple[Any, ...]] = [
    ("/deployments/add_tags", subjects.MONITORING_DEPLOYMENTS_ADD_TAGS, mon.AddDeploymentTags, mon.DeploymentTags,
     "Add tags to a deployment (answers with all its tags)."),
    ("/deployments/get_tags", subjects.MONITORING_DEPLOYMENTS_GET_TAGS, mon.DeploymentQuery, mon.DeploymentTags,
     "A deployment's tags."),
    ("/deployments/retrieve_information", subjects.MONITORING_DEPLOYMENTS_RETRIEVE_INFORMATION, mon.DeploymentQuery,
     mon.DeploymentInformation, "What is known about a deployment: names, status, tags, settings, models."),
    ("/deployments/update", subjects.MONITORING_DEPLOYMENTS_UPDATE, mon.UpdateDeployment, mon.DeploymentInformation,
     "Set a deployment's display name, target datalake or minimum threshold."),
    ("/deployments/delete", subjects.MONITORING_DEPLOYMENTS_DELETE, mon.DeleteDeployment, mon.DeploymentDeleted,
     "Stop a deployment and forget its tags and settings (409 while it has any, unless force_delete).",
     None, 200, True),
    ("/deployments/get_model_version", subjects.MONITORING_DEPLOYMENTS_GET_MODEL_VERSION, mon.DeploymentQuery,
     mon.DeploymentModel, "The model version a deployment serves."),
    ("/deployments/set_model", subjects.MONITORING_DEPLOYMENTS_SET_MODEL, mon.SetDeploymentModel,
     mon.DeploymentModel, "Serve another model version: a new pipeline version, swapped in (answers once it serves).",
     None, 200, True),
    ("/deployments/get_shadow_model", subjects.MONITORING_DEPLOYMENTS_GET_SHADOW_MODEL, mon.DeploymentQuery,
     mon.DeploymentModel, "The deployment's shadow model version (null without one)."),
    ("/deployments/set_shadow_model", subjects.MONITORING_DEPLOYMENTS_SET_SHADOW_MODEL, mon.SetDeploymentModel,
     mon.DeploymentModel, "Run a model version as the deployment's shadow challenger (a new pipeline version).",
     None, 200, True),
]

# seed 003's predictions on images: the image rides base64 in the JSON body (within the JSON body limit); long-running
# (the gateway waits past the bus's default 5 s: predict waits for the engine, up to 30 s, and images go to storage)
JSON_ROUTE_SPECS += [
    ("/deployments/predict", subjects.MONITORING_PREDICT, pred.PredictImage, pred.PredictionResult,
     "Run the deployment's model on a PNG/JPEG image (base64) and keep the prediction (SDK: predict).",
     None, 200, True),
    ("/deployments/predict_bytes", subjects.MONITORING_PREDICT, pred.PredictImage, pred.PredictionResult,
     "As predict (SDK: predict_bytes, the image's bytes in memory).", None, 200, True),
    ("/deployments/monitor", subjects.MONITORING_MONITOR, pred.MonitorImage, pred.PredictionResult,
     "Keep a prediction made elsewhere on an image, checked strictly, like the deployment's own (SDK: monitor).",
     None, 200, True),
    ("/deployments/monitor_bytes", subjects.MONITORING_MONITOR, pred.MonitorImage, pred.PredictionResult,
     "As monitor (SDK: monitor_bytes).", None, 200, True),
]
