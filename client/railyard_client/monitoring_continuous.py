"""Seed 003's continuous training and continuous deployment on a `Deployment` (routes under `/v1/api/deployments/`,
answered by the monitoring service). Every method answers the deployment's continuous state: `training`,
`deployment` (the policy), `last_training`, `pending_model_version` and `challenge` (the shadow challenger under
the sequential test, with its evidence)."""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from railyard_client.errors import InvalidInput, boolean_input
from railyard_client.monitoring_feedback import DatasetVersionLike, dataset_version_ref
from railyard_client.session import Session


class ContinuousDeploymentPolicy(str, Enum):
    """What a model version trained by continuous training does (seed 003)."""

    DEPLOY_MANUAL = "DEPLOY_MANUAL"
    DEPLOY_SHADOW = "DEPLOY_SHADOW"
    DEPLOY_AUTO = "DEPLOY_AUTO"


class ContinuousTrainingTrigger(str, Enum):
    """What starts a training: FEEDBACK_LOOP (seed 003), `threshold` reviewed predictions since the last training;
    ASSAY_ALERT (Railyard), `threshold` (default 1) alerts of the assays on the deployment's pipeline (drift: an
    assay's window scored above its alert threshold; warnings do not count) since the last training."""

    FEEDBACK_LOOP = "FEEDBACK_LOOP"
    ASSAY_ALERT = "ASSAY_ALERT"


def _member(kind: type[Enum], value: Any, what: str) -> Any:
    """`kind(value)`, or InvalidInput naming the values there are (the enum's own ValueError, "'X' is not a valid
    ContinuousDeploymentPolicy", was no error of the SDK's and said neither what `what` takes nor that case
    matters)."""
    try:
        return kind(value)
    except ValueError:
        taken = ", ".join(member.value for member in kind)  # type: ignore[attr-defined]
        raise InvalidInput(f"{what} {value!r} is not one of {taken}") from None


def _id_of(thing: Any, what: str) -> Any:
    """An id from an id, a dict with `id`, or an object with an `id` attribute."""
    if isinstance(thing, dict) and "id" in thing:
        return thing["id"]
    if hasattr(thing, "id") and not isinstance(thing, int | str | uuid.UUID):
        return thing.id
    if isinstance(thing, int | str | uuid.UUID) and not isinstance(thing, bool):
        return thing
    raise InvalidInput(f"give a {what} id or a {what} with an id, not {thing!r}")


class DeploymentContinuous:
    """The seed's continuous training and deployment methods, mixed into `Deployment`."""

    _session: Session
    name: str

    def _continuous(self, route: str, **body: Any) -> dict[str, Any]:
        return self._session.post(f"deployments/{route}", {"deployment": self.name, **body})

    def setup_continuous_training(self, project: Any, dataset_version: DatasetVersionLike | None = None,
                                  model_version: Any = None, trigger: ContinuousTrainingTrigger | str | None = None,
                                  threshold: int | None = None, experiment_parameters: dict[str, Any] | None = None,
                                  scan_config: dict[str, Any] | None = None, *, orchestration: Any = None,
                                  model_name: str | None = None, timeout: int | None = None) -> dict[str, Any]:
        """Every `threshold` reviewed predictions (`trigger` FEEDBACK_LOOP, the default), or every `threshold`
        (default 1) alerts of an assay on the deployment's pipeline (`trigger` ASSAY_ALERT: drift), run
        `orchestration` (an orchestration id or record: Railyard's
        training recipe) once with `experiment_parameters` or `scan_config` (exactly one) and the attached dataset
        versions as its task arguments; the run registers a version of `model_name` (default: the deployment's
        model) with the SDK. Without `orchestration`, a deployment served by an ML backend (`railyard-ml deploy
        railyard`) is trained by the backend's own `fit` (experiment_parameters as its keywords; no scan_config).
        `project` is a lineage project (id or dict); `dataset_version` is attached as `train`. `model_version` is
        deprecated in the seed and ignored."""
        del model_version
        trigger = _member(ContinuousTrainingTrigger, trigger, "trigger") if trigger is not None else None
        if threshold is None and trigger != ContinuousTrainingTrigger.ASSAY_ALERT:
            raise InvalidInput("threshold (the number of reviewed predictions that starts a training) is required")
        body: dict[str, Any] = {"project_id": _id_of(project, "project")}
        if threshold is not None:
            body["threshold"] = threshold
        if orchestration is not None:
            body["orchestration_id"] = str(_id_of(orchestration, "orchestration"))
        if dataset_version is not None:
            body["dataset_version"] = dataset_version_ref(dataset_version)
        if trigger is not None:
            body["trigger"] = trigger.value
        for key, value in (("experiment_parameters", experiment_parameters), ("scan_config", scan_config),
                           ("model_name", model_name), ("timeout", timeout)):
            if value is not None:
                body[key] = value
        return self._continuous("setup_continuous_training", **body)

    def attach_dataset_version_to_continuous_training(self, alias: str,
                                                      dataset_version: DatasetVersionLike) -> dict[str, Any]:
        """Give the training runs a dataset version under `alias` (`train`, `test`, `eval`...)."""
        return self._continuous("attach_dataset_version_to_continuous_training", alias=alias,
                                dataset_version=dataset_version_ref(dataset_version))

    def detach_dataset_version_from_continuous_training(self, dataset_version: DatasetVersionLike) -> dict[str, Any]:
        """Remove a dataset version from continuous training."""
        return self._continuous("detach_dataset_version_from_continuous_training",
                                dataset_version=dataset_version_ref(dataset_version))

    def toggle_continuous_training(self, active: bool) -> dict[str, Any]:
        """(De)activate continuous training (reviews keep counting while it is off)."""
        return self._continuous("toggle_continuous_training", active=boolean_input(active, "active"))

    def setup_continuous_deployment(self, policy: ContinuousDeploymentPolicy | str, alpha: float = 0.05,
                                    min_sample: int = 30) -> dict[str, Any]:
        """What a trained model version does: DEPLOY_MANUAL (waits for you), DEPLOY_SHADOW (runs as the shadow
        challenger; the sequential test at error rate `alpha`, after `min_sample` reviewed pairs, promotes or rolls
        it back), DEPLOY_AUTO (served at once)."""
        policy = _member(ContinuousDeploymentPolicy, policy, "policy")
        return self._continuous("setup_continuous_deployment", policy=policy.value,
                                alpha=alpha, min_sample=min_sample)

    def toggle_continuous_deployment(self, active: bool) -> dict[str, Any]:
        """(De)activate continuous deployment (inactive: new model versions wait as under DEPLOY_MANUAL)."""
        return self._continuous("toggle_continuous_deployment", active=boolean_input(active, "active"))
