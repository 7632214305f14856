"""Deployment management messages of the monitoring service (seed 003's `Deployment` methods). A deployment is
named `<deploy_id>-<id>` everywhere; its "model version" is the pipeline's model step (the ShadowDeploy champion
when there is one, else an A/B split's first arm) and its "shadow model" the ShadowDeploy step's first challenger."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from shared.messages.base import WITHOUT_CONTROLS, Command, Message

TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,99}$"


class ModelVersionRef(Message):
    """A model version of the deployment's workspace: its name and version UUID (or sha); no version: the newest
    ready one."""

    name: str = Field(min_length=1, max_length=200)
    version: str | None = Field(None, max_length=100)
    sha: str | None = Field(None, max_length=100)


class SplitArm(ModelVersionRef):
    """One arm of an A/B split (a `RandomSplit` holding the deployment's models): its model version as the pipeline
    names it, its weight and its share of the requests split by weight (weight / sum of the weights)."""

    weight: float
    share: float


class ModelSplit(Message):
    """The A/B split that holds a deployment's models: its arms in the pipeline's order (the first is the one
    `model_version` names where one value is required) and the column that picks the arm (`hash_key`; none: by
    weight)."""

    arms: list[SplitArm]
    hash_key: str | None = None


class DeploymentQuery(Command):
    """Names a deployment (`<deploy_id>-<id>`) for get_tags, retrieve_information, get_model_version and
    get_shadow_model."""

    deployment: str = Field(min_length=1, max_length=200)


class AddDeploymentTags(Command):
    """add_tags: tags (1-100 letters, digits, space, `_ . : / -`) added to the deployment; existing ones are kept."""

    deployment: str = Field(min_length=1, max_length=200)
    tags: list[str] = Field(min_length=1, max_length=100)


class DeploymentTags(Message):
    """The deployment's tags, in the order they were first added."""

    tags: list[str]


class UpdateDeployment(Command):
    """update: a new display name, target datalake (an images dataset of the workspace, by id or unique name, that
    receives new predictions; "" clears it) or minimum confidence threshold in [0, 1] (0 filters nothing); fields
    left out (or null) keep their value."""

    deployment: str = Field(min_length=1, max_length=200)
    name: str | None = Field(None, min_length=1, max_length=200, pattern=WITHOUT_CONTROLS)
    # "" rather than null clears: the gateway forwards a validated command, where null and left out are the same
    target_datalake: str | None = Field(None, max_length=200, description='An images dataset (id or unique name); '
                                        '"" stops sending predictions to a datalake.')
    min_threshold: float | None = Field(None, ge=0.0, le=1.0)


class DeleteDeployment(Command):
    """delete: stop the deployment and forget what monitoring keeps for it (tags, settings). Without
    `force_delete`, a deployment with such data is refused (409), so it is not lost by accident."""

    deployment: str = Field(min_length=1, max_length=200)
    force_delete: bool = Field(False, strict=True, description="JSON true or false (\"yes\", 1 or \"false\": 400).")


class DeploymentDeleted(Message):
    """delete's answer."""

    deployment: str
    deleted: bool


class DeploymentInformation(Message):
    """retrieve_information's answer."""

    deployment: str = Field(description="`<deploy_id>-<id>`: the name inference URLs use (never changes).")
    id: int
    name: str = Field(description="The display name (`update(name=...)`); the deployment's name until set.")
    pipeline_name: str
    pipeline_version: str
    workspace_id: int
    status: str
    tags: list[str]
    target_datalake: str | None
    min_threshold: float | None
    model_version: ModelVersionRef | None
    shadow_model_version: ModelVersionRef | None
    split: ModelSplit | None = Field(None, description="The A/B split holding the deployment's models, with every "
                                     "arm and its weight; none without one (`model_version` is then its first arm).")
    updated_at: str | None
    continuous: dict[str, Any] | None = Field(None, description="Continuous training and deployment: their "
                                              "settings, the last training, a model version pending for a person "
                                              "(DEPLOY_MANUAL) and the current or last shadow challenge with the "
                                              "sequential test's evidence and decision (ContinuousInformation).")
    feedback: dict[str, Any] | None = Field(None, description="Reviews and feedback: the review count, the feedback "
                                            "loop (active, attached datasets with their last version and error) "
                                            "and the training-data reference (status, dataset, progress).")


class SetDeploymentModel(Command):
    """set_model / set_shadow_model: a new pipeline version with this model in the model step (or as the shadow
    challenger), deployed in place of the running one."""

    deployment: str = Field(min_length=1, max_length=200)
    model_version: ModelVersionRef  # names a registry model as stored: one named before cb581b6e ('churn\n') too


class DeploymentModel(Message):
    """get_model_version / get_shadow_model (and set_*'s answer): the model version, none when there is no shadow
    model, and the pipeline version that serves it; for an A/B split, get_model_version's model version is its
    first arm and `split` lists every arm."""

    model_version: ModelVersionRef | None
    pipeline_version: str
    split: ModelSplit | None = Field(None, description="get_model_version of a deployment whose models sit in an A/B "
                                     "split: every arm with its weight (`model_version` is the first).")
