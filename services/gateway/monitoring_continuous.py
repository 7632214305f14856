"""Continuous training and continuous deployment routes of the gateway (seed 003's `Deployment` methods, under
/v1/api/deployments/), forwarded as commands to the monitoring service (services/monitoring/continuous.py)."""

from __future__ import annotations

from typing import Any

from shared import subjects
from shared.messages import monitoring_continuous as cont

REGISTER_EXTRA = 60.0
"""services/monitoring/ml_backend.py's REGISTER_EXTRA: seconds beyond the request timeout its upload of the built-in
orchestration waits (the task scheduler checks the zip), as orchestration/upload's does here."""


def setup_answers(settings: Any) -> float:
    """setup_continuous_training answers after its lookups (the deployment, the model, the project, the dataset, the
    workspace's orchestrations: each a bus request) and, the first time an ML backend's is set up in a workspace, the
    built-in orchestration's upload, which monitoring waits the request timeout and REGISTER_EXTRA for: this is the
    part beyond the request timeout Route.wait adds (one request timeout for the lookups, as set_model's route
    counts them). It waited the request timeout alone (5 s), less than the upload by itself: a 504 while the set-up
    carried on (and, under load, for the lookups alone)."""
    return settings.nats.request_timeout + REGISTER_EXTRA


# (path, subject, request model, reply model, summary[, unwrap, status, long_running, waits]) rows for http.py's table
JSON_ROUTE_SPECS: list[tuple[Any, ...]] = [
    ("/deployments/setup_continuous_training", subjects.MONITORING_CT_SETUP, cont.SetupContinuousTraining,
     cont.ContinuousInformation, "Run an orchestration once every `threshold` reviewed predictions (exactly one of "
     "experiment_parameters or scan_config).", None, 200, False, setup_answers),
    ("/deployments/attach_dataset_version_to_continuous_training", subjects.MONITORING_CT_ATTACH,
     cont.ContinuousTrainingDataset, cont.ContinuousInformation,
     "Give continuous training's runs a dataset version under an alias."),
    ("/deployments/detach_dataset_version_from_continuous_training", subjects.MONITORING_CT_DETACH,
     cont.DetachContinuousTrainingDataset, cont.ContinuousInformation,
     "Remove a dataset version from continuous training."),
    ("/deployments/toggle_continuous_training", subjects.MONITORING_CT_TOGGLE, cont.ToggleContinuous,
     cont.ContinuousInformation, "Activate or deactivate continuous training."),
    ("/deployments/setup_continuous_deployment", subjects.MONITORING_CD_SETUP, cont.SetupContinuousDeployment,
     cont.ContinuousInformation, "What a trained model version does: DEPLOY_MANUAL, DEPLOY_SHADOW (promoted or "
     "rolled back by the sequential test) or DEPLOY_AUTO."),
    ("/deployments/toggle_continuous_deployment", subjects.MONITORING_CD_TOGGLE, cont.ToggleContinuous,
     cont.ContinuousInformation, "Activate or deactivate continuous deployment."),
]
