"""What the deployer hands an engine replica: the deployment and its resolved steps (a file the replica reads at
start, `python -m services.engine.replica <spec.json> <replica id>`, and the row the deployer keeps to restore
deployments after a restart)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.messages.base import Message
from shared.messages.registry import ResolvedModel


class ReplicaDeployment(Message):
    """The deployment a replica serves; `id` and `name` are set once the deployment row exists."""

    pipeline: str = Field(description="The pipeline's name.")
    pipeline_version: str
    workspace_id: int
    id: int | None = None
    name: str | None = Field(None, description="<deploy_id>-<deployment id>: the engine subjects' token.")


class ReplicaStep(Message):
    """One pipeline step with its models resolved to versions and artifacts."""

    kind: Literal["ModelInference", "ShadowDeploy", "RandomSplit"]
    models: list[ResolvedModel] = Field(description="ModelInference: one; ShadowDeploy: the champion first; "
                                        "RandomSplit: one per weight.")
    weights: list[float] | None = Field(None, description="RandomSplit: the models' weights.")
    hash_key: str | None = Field(None, description="RandomSplit: the column whose value picks the model.")


class ReplicaSpec(Message):
    """Everything one engine replica serves."""

    deployment: ReplicaDeployment
    steps: list[ReplicaStep]
    engine_config: dict[str, Any] = Field(default_factory=dict, description="The deployment's engine_config.")
