"""Messages of the deployer service and the engine: pipelines, versions, deployments, inference.

Request fields and reply shapes follow the seed's "Pipeline Management" section.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from shared.messages.base import MAX_JSON_OBJECT, Command, Event, Message, json_at_most, omit_when_unset
from shared.paging import cursor_field, limit_field


class CreatePipeline(Command):
    """Create a pipeline (or a new version of it when the name exists and the definition changed)."""

    pipeline_id: str = Field(description="The pipeline's name.")
    workspace_id: int
    definition: dict[str, Any] = Field(default_factory=dict)


class NewPipeline(CreatePipeline):
    """The body of pipelines/create (the HTTP route and the deployer's subscriber, so a caller on the bus is bounded
    too): a CreatePipeline whose definition takes at most MAX_JSON_OBJECT bytes of JSON. Every version keeps its
    definition and pipelines/get and pipelines/list answer with them all. Stored versions are read as they are; the
    monitoring service's set_model sends a stored definition back with a model swapped, which is a new version and
    bounded like any other (docs/inference.md). Its definition is required, as the seed has it (`{}` for none): a
    create without one made a new version with an empty definition (a 200 that changed the pipeline's latest version);
    CreatePipeline, the deployer's own and its callers' in-process, keeps the default."""

    definition: dict[str, Any] = Field(description=f"Required (`{{}}` for none). At most {MAX_JSON_OBJECT} bytes of "
                                       "JSON.")

    @field_validator("definition")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        return json_at_most(value)


class PipelineCreated(Message):
    pipeline_pk_id: int
    pipeline_variant_pk_id: int
    pipeline_variant_version: str


class CopyPipeline(Command):
    name: str
    workspace_id: int
    source_pipeline: int
    deploy: str | None = None
    engine_config: dict[str, Any] | None = Field(None, description=f"At most {MAX_JSON_OBJECT} bytes of JSON.")
    pipeline_version: str | None = None

    @field_validator("engine_config")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return json_at_most(value)  # kept whole with the deployment, in every pipelines/get and list answer


class PipelineCopied(Message):
    pipeline_pk_id: int
    pipeline_variant_pk_id: int
    pipeline_version: str | None
    deployment: dict[str, Any] | None


class ListPipelines(Command):
    """pipelines/list: a workspace's pipelines, oldest first; all of them, or a page (`limit`, then `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("pipelines")
    cursor: str | None = cursor_field("pipelines/list")


class PipelineRecord(Message):
    id: int
    name: str
    workspace_id: int
    created_at: str
    updated_at: str
    versions: list[dict[str, Any]]
    deployment: dict[str, Any] | None
    versions_cursor: str | None = Field(None, description="Railyard: set when the versions' definitions passed 4 MiB "
                                        "and older versions are not listed (the newest and the deployed one are): "
                                        "pass it as pipelines/get's `versions_cursor` for the next older ones.")
    versions_omitted: int | None = Field(None, description="Railyard: how many older versions are not listed (with "
                                         "`versions_cursor`).")

    # a pipeline whose versions all fit is answered as it was
    _without_unset_cut = omit_when_unset("versions_cursor", "versions_omitted", decided_by="versions_cursor")


class Pipelines(Message):
    pipelines: list[PipelineRecord]
    next_cursor: str | None = Field(None, description="Set when more pipelines follow this page: pass it as `cursor`.")

    _without_empty_cursor = omit_when_unset("next_cursor")  # the answer of a whole list stays as it was


class GetPipeline(Command):
    pipeline_id: int
    versions_cursor: str | None = Field(None, min_length=1, max_length=19, description="Railyard: the "
                                        "`versions_cursor` a pipeline record answered: its versions older than those "
                                        "listed, the newest first up to 4 MiB (the deployed one too when among them).")


class ModelRef(Message):
    name: str
    version: str | None = None
    sha: str | None = None


class DeployPipeline(Command):
    deploy_id: str
    pipeline_version_pk_id: int
    pipeline_id: int
    models: list[ModelRef] | None = None
    model_ids: list[int] | None = None
    model_configs: list[int] | None = None
    engine_config: dict[str, Any] | None = None
    only_if_serving: int | None = Field(
        None, description="Railyard: a precondition. The pk id of a pipeline version (the `pipeline_version_pk_id` a "
        "deploy was given) that must be the one this pipeline's deployment serves (active, its engine replicas "
        "running; a deployment whose restore after a deployer restart failed serves nothing) when the deploy takes "
        "the pipeline's turn (deploys of one pipeline run one at a time): otherwise the deploy changes nothing and "
        "is refused with 409 `serving_changed`, naming what serves now. Without it, a deploy replaces whatever "
        "serves (the seed's contract).")


class NewDeployment(DeployPipeline):
    """The body of pipelines/deploy (the HTTP route and the deployer's subscriber, so a caller on the bus is bounded
    too): a DeployPipeline whose engine_config takes at most MAX_JSON_OBJECT bytes of JSON (kept whole with the
    deployment, in every pipelines/get and list answer). The monitoring service redeploys with a deployment's stored
    engine_config: a new deploy, bounded like any other (docs/inference.md)."""

    engine_config: dict[str, Any] | None = Field(None, description=f"At most {MAX_JSON_OBJECT} bytes of JSON.")

    @field_validator("engine_config")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return json_at_most(value)


class Deployed(Message):
    id: int


class GetDeploymentStatus(Command):
    name: str = Field(description="`<deploy_id>-<deployment id>`")


class DeploymentStatus(Message):
    status: str
    details: list[Any]
    engines: list[dict[str, Any]]
    engine_lbs: list[dict[str, Any]]
    sidekicks: list[Any]


class UndeployPipeline(Command):
    pipeline_id: int
    deployment_id: int


class GetExternalUrl(Command):
    workspace_id: int
    pipeline_name: str


class ExternalUrl(Message):
    url: str


class ResolveDeployment(Command):
    """Where to send an inference for `<deploy_id>-<id>`, and who may."""

    name: str


class DeploymentRoute(Message):
    deployment_id: int
    name: str
    pipeline_name: str
    workspace_id: int
    status: str = Field(description="Running (a replica serves), Starting, or Error (every replica is in a crash loop: "
                        "`reason`).")
    pipeline_version: str
    input_schema: str | None = Field(description="base64 Arrow schema of the first step's input")
    output_schema: str | None = Field(None, description="base64 Arrow schema of the last step's output")
    batchable: bool = Field(False, description="Concurrent requests may travel to the engine as one table: every "
                            "step is a plain ONNX ModelInference and engine batching is on (gateway/coalesce.py).")
    pipeline_id: int | None = Field(None, description="The deployed pipeline's id (its record: pipelines/get); absent "
                                    "in a reply from a deployer older than the field.")
    reason: str | None = Field(None, description="With `status` Error: why no replica serves, the deployer's reason "
                               "(every replica is in a crash loop: it keeps exiting soon after it starts; "
                               "CrashLoopBackOff and the last line of its log), at most 500 characters. Absent "
                               "otherwise, and from a deployer older than the field (it said Starting then).")
    retry_after: float | None = Field(None, description="With `status` Error: seconds until the deployer starts a "
                                      "replica again (crash-loop back-off), when none is starting now.")

    # left out when unset: messages refuse unknown fields, so a gateway (monitoring, lineage) older than them could
    # read no route of a newer deployer during a rolling update (every inference 503 'deployer answered with a reply
    # that could not be read'); only a crash loop's Error route carries them
    _without_unset_crash_loop = omit_when_unset("reason", "retry_after")


class PipelineDeployed(Event):
    deployment_id: int
    name: str
    pipeline_id: int
    workspace_id: int
    pipeline_version: str
    pipeline_name: str | None = Field(None, description="The pipeline's name (the log store checks a log batch's "
                                      "header by it); absent in an event of a deployer older than the field.")


class PipelineServing(PipelineDeployed):
    """The deployer, at a start, names a deployment it serves (active, its events.pipeline.deployed written before):
    the log store learns whose it is even when that deployed event aged out of EVENTS. Lineage draws nothing of it."""


class PipelineUndeployed(Event):
    deployment_id: int
    name: str
    pipeline_id: int
    workspace_id: int


class PipelineVersionCreated(Event):
    pipeline_id: int
    workspace_id: int
    name: str
    pipeline_version: str
    models: list[dict[str, str | None]] = Field(
        [], description="Railyard: the models the definition names ({name, version}), for the lineage graph.")
