"""Messages of the registry service: model uploads, models and their versions.

Field names and reply shapes follow the seed's "Model Management" section.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import ConfigDict, Field

from shared.messages.base import WITHOUT_CONTROLS, Command, Event, Message
from shared.paging import NextCursor, cursor_field, key_cursor_field, limit_field


class Conversion(Message):
    """How an uploaded file becomes something the engine runs."""

    model_config = ConfigDict(extra="ignore")  # clients send extra hints (e.g. accelerator); they are not needed

    framework: str
    python_version: str | None = None
    requirements: list[str] = Field(default_factory=list)
    input_schema: str | None = None
    output_schema: str | None = None


class UploadModel(Command):
    """Register a file already staged in object storage (the gateway streams it there) as a model version."""

    workspace_id: int
    name: str
    visibility: str = "private"
    conversion: Conversion
    input_schema: str | None = None
    output_schema: str | None = None
    staged_key: str = Field(description="Key of the uploaded bytes in the artifacts bucket, staging/<user id>/<uuid> "
                            "(staging/<user id>/ws-<workspace id>/<uuid> for a task run's token): staged for the "
                            "caller by the HTTP upload (another user's key: 403; one staged with another token "
                            "scope: 403 out_of_scope).")
    file_name: str


class ModelInserted(Message):
    """`{"insert_models": {"returning": [{"models": [{"id": N, "model_version": UUID}]}]}}`: the seed's answer, with
    the version the upload made (Railyard's)."""

    insert_models: dict[str, Any]


class ListModels(Command):
    """models/list: a workspace's models, newest first; all of them, or a page (`limit`, then `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("models")
    cursor: str | None = cursor_field("models/list")


class ModelSummary(Message):
    id: int
    name: str
    owner_id: str
    created_at: str
    updated_at: str


class ModelList(Message, NextCursor):
    models: list[ModelSummary]


class GetModelById(Command):
    id: int


class ModelDetails(Message):
    id: int
    owner_id: str
    workspace_id: int
    name: str
    updated_at: str
    created_at: str
    model_config_: Any = Field(None, alias="model_config", serialization_alias="model_config")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ListModelVersions(Command):
    """models/list_versions: a model's versions, oldest first (the seed's order: the newest is the last), or newest
    first with `order` "newest"; all of them, or a page (`limit`, then `cursor`)."""

    model_id: str | None = Field(None, description="The model's name.")
    models_pk_id: int
    limit: int | None = limit_field("versions")
    cursor: str | None = cursor_field("models/list_versions")
    order: Literal["oldest", "newest"] = Field(
        "oldest", description="Railyard: \"oldest\" (the seed's order: uploads oldest first, the newest last) or "
        "\"newest\" (the newest upload first: `limit` 1 is the latest version); a cursor continues the order it was "
        "answered in.")


class ModelVersionRecord(Message):
    sha: str | None
    models_pk_id: int
    model_version: str
    owner_id: str
    model_id: str
    id: int
    file_name: str
    image_path: str | None = None
    status: str
    framework: str
    runtime: str | None
    error: str | None = None


class ModelVersions(Message, NextCursor):
    """The versions, oldest first (the gateway answers with the bare list, as the seed does; a page's next cursor in
    the x-next-cursor header)."""

    versions: list[ModelVersionRecord]


class GetModelConfig(Command):
    model_id: int


class ModelConfig(Message):
    model_config_: Any = Field(None, alias="model_config", serialization_alias="model_config")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GetModel(Command):
    id: int


class ModelWithVersions(Message):
    id: int
    name: str
    owner_id: str
    created_at: str
    updated_at: str
    models: list[ModelVersionRecord]


class ModelUploaded(Event):
    """A new model version exists (ready, or converting)."""

    workspace_id: int
    model_id: int
    model_version: uuid.UUID
    name: str
    framework: str
    status: str
    sha256: str | None = Field(None, description="Railyard: sha256 of the uploaded bytes (the lineage graph links"
                               " the workspace files holding the same bytes to this version).")
    task_id: str | None = Field(None, description="Railyard: the task whose run uploaded it (the uploader's task-run"
                                " token names it); continuous training finds its run's output model version by it.")


class ModelVersionFinished(Event):
    """A conversion ended: the version is ready or in error."""

    workspace_id: int
    model_id: int
    model_version: uuid.UUID
    status: str
    error: str | None = None


# --- data connections (seed section 10) ----------------------------------------------------------------


class CreateConnection(Command):
    """A named connection to an external data store; `details` are kept encrypted."""

    name: str = Field(max_length=200, pattern=WITHOUT_CONTROLS)
    type: str = Field(max_length=100)
    details: dict[str, Any]


class ConnectionId(Message):
    id: str


class AddConnectionToWorkspace(Command):
    workspace_id: int
    connection_id: str


class ListConnections(Command):
    """connections/list: a workspace's connections, oldest first; all, or a page (`limit`, then `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("connections")
    cursor: str | None = key_cursor_field("connections/list")


class ConnectionRecord(Message):
    id: str
    name: str
    type: str
    details: dict[str, Any]
    created_at: str
    workspace_names: list[str]


class Connections(Message, NextCursor):
    connections: list[ConnectionRecord]


class GetConnection(Command):
    name: str


class GetConnectionById(Command):
    id: str


class RemoveConnectionFromWorkspace(Command):
    workspace_id: int
    connection_id: str


class DeleteConnection(Command):
    name: str


class NoContent(Message):
    """Answered as HTTP 204."""


# --- external model registries (seed section 4) -----------------------------------------------------------


class CreateRegistry(Command):
    """Connect an MLflow registry to a workspace; the token is kept encrypted."""

    workspace_id: int
    name: str = Field(max_length=200, description="At most 200 characters, as a connection's name.")
    url: str = Field(max_length=2048)
    token: str | None = Field(None, max_length=16 * 1024)


class RegistryCreated(Message):
    """create_registry's answer, the seed's `{'id', 'workspace_id'}`."""

    id: str
    workspace_id: int


class RegistryAttachment(Message):
    """attach/remove_registry's answer: the seed's example shows `registry_id`, its RETURNS list `id`; both are the
    registry's UUID, so a script reading either works."""

    id: str
    registry_id: str
    workspace_id: int


class AttachRegistry(Command):
    """Attach (or detach) a registry to a workspace; the seed sends the id as `id` or `registry_id`."""

    workspace_id: int
    registry_id: str | None = None
    id: str | None = None


class GetRegistry(Command):
    registry_id: str | None = None
    id: str | None = None


class RegistryRecord(Message):
    id: str
    name: str
    url: str
    token: str | None
    created_at: str
    updated_at: str


class ListRegistries(Command):
    """models/list_registries: a workspace's registries, oldest first; all, or a page (`limit`, then `cursor`)."""

    workspace_id: int
    limit: int | None = limit_field("registries")
    cursor: str | None = key_cursor_field("models/list_registries")


class RegistryList(Message, NextCursor):
    """The registries (tokens masked; the gateway answers with the bare list, as the seed does; a page's next cursor
    in the x-next-cursor header)."""

    registries: list[RegistryRecord]


class ListRegistryModels(Command):
    registry_id: str | None = None
    id: str | None = None
    page_token: str | None = None
    max_results: int = Field(100, ge=1, le=1000)


class RegistryModels(Message):
    next_page_token: str | None
    registered_models: list[dict[str, Any]]


class ListRegistryArtifacts(Command):
    registry_id: str
    name: str
    version: str


class RegistryArtifact(Message):
    file_size: int | None
    full_path: str
    is_dir: bool
    modification_time: int | None
    path: str


class RegistryArtifacts(Message):
    artifacts: list[RegistryArtifact]


class UploadFromRegistry(Command):
    """Copy an artifact (a `full_path` from the artifacts listing) into a workspace as a model version."""

    registry_id: str
    name: str
    path: str
    visibility: str = "private"
    workspace_id: int
    conversion: Conversion
    input_schema: str | None = None
    output_schema: str | None = None


class UploadedFromRegistry(Message):
    """`{"model_id": N}` as the seed answers, with the version the copy made (Railyard's `model_version`, as
    ModelInserted names it)."""

    model_id: int
    model_version: uuid.UUID | None = None


class ConnectionChanged(Event):
    """A connection was created, attached to or removed from a workspace, or deleted."""

    connection_id: uuid.UUID
    action: str
    workspace_id: int | None = None


class RegistryChanged(Event):
    """An external registry was created, attached to or removed from a workspace."""

    registry_id: uuid.UUID
    action: str
    workspace_id: int | None = None


class ResolveModel(Command):
    """Find a ready model version in a workspace by name (or model id) and version UUID (or sha), or its latest
    version."""

    workspace_id: int
    name: str | None = None
    version: str | None = None
    sha: str | None = None
    model_id: int | None = Field(None, description="The model's id (models_pk_id), instead of its name.")


class ModelLookup(ResolveModel):
    """registry.models.resolve's body: a ResolveModel (a ready version, answered as a ResolvedModel), or with
    `exists_only` the deployer's check that a pipeline definition's model exists (pipelines/create). The gateway's
    models/download reads its body as a ResolveModel, which has no `exists_only`: its answer is always a
    ResolvedModel."""

    exists_only: bool = Field(False, description="Whether the version exists, in any status (a model still "
                              "converting right after its upload, or whose conversion failed, exists): answered as "
                              "a ModelExists, not a ResolvedModel; not found is the same 404 as without it.")


class ModelExists(Message):
    """An exists_only lookup's answer: the version found, whatever its status (ready, converting, error)."""

    model_id: int
    name: str
    model_version: str
    status: str


MODELS_LOOKED_UP_AT_ONCE = 1000
"""Model references one registry.models.exist asks about at most (a 64 KiB definition names ~4,000 at most)."""


class ModelReference(Message):
    """A model version as a pipeline definition names it: a name, and a version UUID and sha when given."""

    name: str
    version: str | None = None
    sha: str | None = None


class ModelsLookup(Command):
    """registry.models.exist's body: whether each of a pipeline definition's models exists in the workspace, in any
    status, as registry.models.resolve's exists_only answers one (the deployer's pipelines/create and pipelines/copy:
    one request for up to MODELS_LOOKED_UP_AT_ONCE references, where one request each made a definition of ~4,000
    references a 504)."""

    workspace_id: int
    models: list[ModelReference] = Field(max_length=MODELS_LOOKED_UP_AT_ONCE)
    explained: int = Field(10, ge=0, le=MODELS_LOOKED_UP_AT_ONCE, description="How many of the missing ones, "
                           "first in order, are said why in resolve's words (another sha, no such version, no such "
                           "model); the others are only counted (their `why` is null).")


class MissingModel(Message):
    """A reference registry.models.exist did not find: its place in the request and why (null past `explained`)."""

    index: int
    why: str | None = None


class ModelsFound(Message):
    """registry.models.exist's answer: the references the workspace does not have, in the request's order (none:
    every one exists)."""

    missing: list[MissingModel]


class ResolvedModel(Message):
    """What an engine needs to load a model version."""

    model_id: int
    name: str
    model_version: str
    sha: str
    runtime: str
    framework: str
    input_schema: str | None = None
    output_schema: str | None = None
