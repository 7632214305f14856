"""Continuous training and continuous deployment routes of the gateway (seed 003's `Deployment` methods, under
/v1/api/deployments/), forwarded as commands to the monitoring service (services/monitoring/continuous.py)."""

from __future__ import annotations

from typing import Any

from shared import subjects
from shared.messages import monitoring_continuous as cont

# (path, subject, request model, reply model, summary) rows for http.py's table
JSON_ROUTE_SPECS: list[tuple[Any, ...]] = [
    ("/deployments/setup_continuous_training", subjects.MONITORING_CT_SETUP, cont.SetupContinuousTraining,
     cont.ContinuousInformation, "Run an orchestration once every `threshold` reviewed predictions (exactly one of "
     "experiment_parameters or scan_config)."),
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
