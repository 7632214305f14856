"""Seed 003's continuous training and continuous deployment (monitoring service), and the events of the statistical
promotion of a shadow challenger. A deployment is named `<deploy_id>-<id>`; a seed "dataset version" is F's
`DatasetVersionRef` (an images dataset of a workflow-lineage project, optionally with a project version)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shared.messages.base import INT32, MAX_JSON_OBJECT, Command, Event, Message, json_at_most, omit_when_unset
from shared.messages.monitoring import ModelVersionRef
from shared.messages.monitoring_feedback import DatasetVersionRef

POLICIES = ("DEPLOY_MANUAL", "DEPLOY_SHADOW", "DEPLOY_AUTO")
"""The seed's ContinuousDeploymentPolicy values."""

Policy = Literal["DEPLOY_MANUAL", "DEPLOY_SHADOW", "DEPLOY_AUTO"]
Trigger = Literal["FEEDBACK_LOOP", "ASSAY_ALERT"]
TRIGGERS = ("FEEDBACK_LOOP", "ASSAY_ALERT")
"""What starts a training: FEEDBACK_LOOP (seed 003), `threshold` reviewed predictions since the last training;
ASSAY_ALERT (Railyard), `threshold` (default 1) `events.assay.alert` of an assay on the deployment's pipeline (its
logs, or its training reference) since the last training. Warnings never count."""
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class SetupContinuousTraining(Command):
    """setup_continuous_training: when `threshold` predictions have been reviewed since the last training (trigger
    FEEDBACK_LOOP), or `threshold` assay alerts on the deployment's pipeline arrived (trigger ASSAY_ALERT), run the
    orchestration `orchestration_id` once with the parameters (or the scan configuration: exactly one of the two)
    and the attached dataset versions as its arguments. Setting up again replaces the configuration (attached
    datasets stay)."""

    deployment: str = Field(min_length=1, max_length=200)
    project_id: int = Field(gt=0, le=INT32[1], description="The seed's project: the workflow-lineage project hosting "
                            "the run.")
    dataset_version: DatasetVersionRef | None = Field(None, description="Attached under the alias `train`.")
    trigger: Trigger = Field("FEEDBACK_LOOP", description="FEEDBACK_LOOP: reviewed predictions start a training; "
                             "ASSAY_ALERT (Railyard): alerts (events.assay.alert, not warnings) of the assays on the "
                             "deployment's pipeline do.")
    threshold: int | None = Field(None, gt=0, le=1_000_000, description="Reviewed predictions (FEEDBACK_LOOP, "
                                  "required) or assay alerts (ASSAY_ALERT, default 1) since the last training that "
                                  "start a training.")
    experiment_parameters: dict[str, Any] | None = Field(None, description=f"At most {MAX_JSON_OBJECT} bytes of "
                                                         "JSON.")
    scan_config: dict[str, Any] | None = Field(None, description=f"At most {MAX_JSON_OBJECT} bytes of JSON.")
    orchestration_id: uuid.UUID | None = Field(None, description="Railyard: the orchestration (the training "
                                               "recipe) to run; optional when the deployment serves an ML backend "
                                               "(`railyard-ml deploy railyard`), whose own fit is then run.")
    model_name: str | None = Field(None, min_length=1, max_length=63, description="Railyard: the model the run "
                                   "registers a version of (default: the deployment's current model's name).")
    timeout: int | None = Field(None, gt=0, le=INT32[1], description="Railyard: the run's time limit in seconds.")

    @field_validator("experiment_parameters", "scan_config")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return json_at_most(value)

    @model_validator(mode="after")
    def _threshold(self) -> SetupContinuousTraining:
        if self.threshold is None:
            if self.trigger != "ASSAY_ALERT":
                raise ValueError("threshold (reviewed predictions that start a training) is required with the "
                                 "FEEDBACK_LOOP trigger")
            self.threshold = 1
        return self


class ContinuousTrainingDataset(Command):
    """attach_dataset_version_to_continuous_training: a dataset version under an alias (`train`, `test`, ...)."""

    deployment: str = Field(min_length=1, max_length=200)
    alias: str = Field(pattern=ALIAS_PATTERN)
    dataset_version: DatasetVersionRef


class DetachContinuousTrainingDataset(Command):
    """detach_dataset_version_from_continuous_training."""

    deployment: str = Field(min_length=1, max_length=200)
    dataset_version: DatasetVersionRef


class ToggleContinuous(Command):
    """toggle_continuous_training / toggle_continuous_deployment."""

    deployment: str = Field(min_length=1, max_length=200)
    active: bool = Field(strict=True, description="JSON true or false (\"yes\", 1 or \"false\": 400).")


class SetupContinuousDeployment(Command):
    """setup_continuous_deployment: what a model version a continuous training produced does. DEPLOY_MANUAL: waits
    for a person (retrieve_information shows it pending); DEPLOY_SHADOW: runs as the shadow challenger until the
    sequential test promotes or rolls it back; DEPLOY_AUTO: served at once."""

    deployment: str = Field(min_length=1, max_length=200)
    policy: Policy
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Railyard: the sequential test's error rate.")
    min_sample: int = Field(30, ge=1, le=1_000_000, description="Railyard: reviewed pairs before any decision.")


class ContinuousTrainingState(Message):
    """The continuous training of a deployment (None fields: not set up)."""

    active: bool
    project_id: int
    orchestration_id: uuid.UUID
    kind: Literal["orchestration", "ml_backend"] = Field(
        "orchestration", description="Railyard: what trains: the orchestration, or the ML backend's fit (through "
        "the built-in orchestration `orchestration_id` names).")
    trigger: str
    threshold: int
    experiment_parameters: dict[str, Any] | None
    scan_config: dict[str, Any] | None
    model_name: str
    datasets: dict[str, DatasetVersionRef]
    reviews: int = Field(description="Predictions of the deployment reviewed so far.")
    reviews_at_last_training: int
    alerts: int = Field(0, description="Railyard: assay alerts counted for this deployment so far (ASSAY_ALERT: "
                        "those that arrived while it was active).")
    alerts_at_last_training: int = 0
    suspended_reason: str | None = Field(
        None, description="Railyard: why continuous training was turned off by the service (its owner's token was "
        "refused: they left the workspace or were deactivated); set up again or turned on again, it is cleared.")


class ContinuousDeploymentState(Message):
    """The continuous deployment policy of a deployment."""

    active: bool
    policy: str
    alpha: float
    min_sample: int
    suspended_reason: str | None = Field(
        None, description="Railyard: why continuous deployment was turned off by the service (its owner's token was "
        "refused: they left the workspace or were deactivated); set up again or turned on again, it is cleared.")


class TrainingRecord(Message):
    """One training a continuous training started, and what became of its model version."""

    id: uuid.UUID
    state: str = Field(description="starting, running, succeeded (run done, model awaited), done or failed.")
    reviews: int = Field(description="The review count when it was triggered (FEEDBACK_LOOP: the count that "
                         "triggered it).")
    trigger: str = Field("FEEDBACK_LOOP", description="Railyard: what triggered it.")
    alerts: int | None = Field(None, description="Railyard: the assay alert count that triggered it (ASSAY_ALERT).")
    task_id: uuid.UUID | None
    run_id: uuid.UUID | None
    model_version: ModelVersionRef | None
    outcome: str | None = Field(description="pending (DEPLOY_MANUAL or no active policy: waits for a person), "
                                "shadow, deployed, or failed.")
    reason: str | None
    created_at: str
    updated_at: str
    delivery_held_up: str | None = Field(
        None, description="Railyard: while its model version's delivery (DEPLOY_AUTO, DEPLOY_SHADOW) is left for "
        "the resume, what held its last try up: '<status> <code>: <message>' (a 503, 504 or 429, its deploy "
        "unanswered or held up behind another), at most 300 characters. Absent otherwise: nothing held it up, or "
        "it ended (a give-up's `reason` quotes it).")

    # left out when unset: messages refuse unknown fields, so a reader older than the field (a gateway during a
    # rolling update, an SDK's model) reads every other record's bytes as before
    _without_unset_held_up = omit_when_unset("delivery_held_up")


class ChallengeRecord(Message):
    """A shadow challenger under the sequential test: its evidence and the decision."""

    id: uuid.UUID
    champion: ModelVersionRef
    challenger: ModelVersionRef
    state: str = Field(description="running, promoting, rolling_back, promoted, rolled_back, superseded or failed.")
    evidence: dict[str, Any] | None
    started_at: str
    decided_at: str | None
    reason: str | None
    swap_held_up: str | None = Field(
        None, description="Railyard: while the decision's swap (promoting, rolling_back) is left for the resume, "
        "what held its last try up: '<status> <code>: <message>' (a 503, 504 or 429, its deploy unanswered or held "
        "up behind another), at most 300 characters. Absent otherwise: nothing held it up, or it ended (a "
        "give-up's `reason` quotes it).")

    _without_unset_held_up = omit_when_unset("swap_held_up")  # as TrainingRecord's delivery_held_up


class ContinuousInformation(Message):
    """What setup/toggle answer, and what retrieve_information shows under `continuous`."""

    training: ContinuousTrainingState | None
    deployment: ContinuousDeploymentState | None
    last_training: TrainingRecord | None
    pending_model_version: ModelVersionRef | None = Field(description="A trained model version waiting for a "
                                                          "person (DEPLOY_MANUAL).")
    challenge: ChallengeRecord | None = Field(description="The current or last shadow challenge.")


class TrainingStarted(Event):
    """events.monitoring.training_started: the trigger (the review threshold, or assay alerts) started one training
    run."""

    deployment_id: int
    workspace_id: int
    training_id: uuid.UUID
    task_id: uuid.UUID
    reviews: int
    trigger: str = "FEEDBACK_LOOP"
    alerts: int | None = Field(None, description="ASSAY_ALERT: the alert count that triggered it.")


class TrainingFinished(Event):
    """events.monitoring.training_finished: a training's run ended; `outputs` is what lineage draws from the run
    (`[{kind: "model_version", ref}]`)."""

    deployment_id: int
    workspace_id: int
    training_id: uuid.UUID
    run_id: uuid.UUID | None
    status: Literal["done", "failed"]
    outcome: str
    model_version: ModelVersionRef | None
    outputs: list[dict[str, str]] = Field(default_factory=list)
    reason: str | None = None


class ChallengerDecided(Event):
    """events.monitoring.challenger_decided: the sequential test's decision and its evidence."""

    deployment_id: int
    workspace_id: int
    challenge_id: uuid.UUID
    decision: Literal["promote", "roll_back"]
    champion: ModelVersionRef
    challenger: ModelVersionRef
    evidence: dict[str, Any]


class ModelSwapped(Event):
    """events.monitoring.model_swapped: continuous deployment changed what a deployment serves."""

    deployment_id: int
    workspace_id: int
    action: Literal["shadow_set", "promoted", "rolled_back", "deployed"]
    model_version: ModelVersionRef | None = Field(description="The model served (or shadowed) afterwards.")
    shadow_model_version: ModelVersionRef | None
    pipeline_version: str | None
    reason: str
