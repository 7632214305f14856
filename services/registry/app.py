"""registry: transport only. Subscribers parse their typed message, identify the caller and call one handler."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faststream.nats import NatsRouter

from services.registry import handlers, store
from services.registry.connections import ConnectionService
from services.registry.registries import EITHER, RegistryService, _registry_id
from shared import paging, subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import CallContext, command, publish_event
from shared.messages.auth import ListWorkspaces, Workspaces
from shared.messages.registry import (
    AddConnectionToWorkspace,
    AttachRegistry,
    ConnectionId,
    ConnectionRecord,
    Connections,
    CreateConnection,
    CreateRegistry,
    DeleteConnection,
    GetConnection,
    GetConnectionById,
    GetModel,
    GetModelById,
    GetModelConfig,
    GetRegistry,
    ListConnections,
    ListModels,
    ListModelVersions,
    ListRegistries,
    ListRegistryArtifacts,
    ListRegistryModels,
    ModelConfig,
    ModelDetails,
    ModelExists,
    ModelInserted,
    ModelList,
    ModelLookup,
    ModelsFound,
    ModelsLookup,
    ModelVersions,
    ModelWithVersions,
    NoContent,
    RegistryArtifacts,
    RegistryAttachment,
    RegistryCreated,
    RegistryList,
    RegistryModels,
    RegistryRecord,
    RemoveConnectionFromWorkspace,
    ResolvedModel,
    UploadedFromRegistry,
    UploadFromRegistry,
    UploadModel,
)
from shared.objectstore import BUCKET_ARTIFACTS
from shared.outbox import Outbox
from shared.pipeline_pages import caller_pages
from shared.secretbox import SecretBox
from shared.service import Runtime, ServiceSpec
from shared.staging import StagedBucket
from shared.urlcheck import OutboundRules

NAME = "registry"


def build_router(runtime: Runtime) -> NatsRouter:
    router = NatsRouter()

    def deps() -> handlers.RegistryDeps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    @command(router, subjects.REGISTRY_MODELS_UPLOAD, service=NAME)
    async def upload(cmd: UploadModel, ctx: CallContext) -> ModelInserted:
        """Register an uploaded (staged) file as a new model version."""
        return await handlers.upload_model(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_MODELS_LIST, service=NAME, too_large_hint=paging.too_large_hint("models/list"))
    async def list_models(cmd: ListModels, ctx: CallContext) -> ModelList:
        """Models of a workspace, newest first (a page with `limit`)."""
        return await handlers.list_models(deps(), await caller(ctx), ctx.token, cmd.workspace_id, cmd.limit,
                                          cmd.cursor)

    @command(router, subjects.REGISTRY_MODELS_GET_BY_ID, service=NAME)
    async def get_by_id(cmd: GetModelById, ctx: CallContext) -> ModelDetails:
        """A model's details."""
        return await handlers.get_model_by_id(deps(), await caller(ctx), ctx.token, cmd.id)

    @command(router, subjects.REGISTRY_MODELS_LIST_VERSIONS, service=NAME,
             too_large_hint=paging.too_large_hint("models/list_versions", True))
    async def list_versions(cmd: ListModelVersions, ctx: CallContext) -> ModelVersions:
        """A model's versions, oldest first or with `order` "newest" newest first (a page with `limit`)."""
        return await handlers.list_versions(deps(), await caller(ctx), ctx.token, cmd.models_pk_id, cmd.model_id,
                                            cmd.limit, cmd.cursor, cmd.order)

    @command(router, subjects.REGISTRY_MODELS_GET_CONFIG, service=NAME)
    async def get_config(cmd: GetModelConfig, ctx: CallContext) -> ModelConfig:
        """A model's configuration."""
        return await handlers.get_model_config(deps(), await caller(ctx), ctx.token, cmd.model_id)

    @command(router, subjects.REGISTRY_MODELS_RESOLVE, service=NAME)
    async def resolve(cmd: ModelLookup, ctx: CallContext) -> ResolvedModel | ModelExists:
        """A ready model version, for deploying it (or with exists_only whether a version exists, in any status)."""
        return await handlers.resolve_model(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_MODELS_EXIST, service=NAME)
    async def exist(cmd: ModelsLookup, ctx: CallContext) -> ModelsFound:
        """Which of several model versions a workspace does not have, in any status (a pipeline definition's)."""
        return await handlers.models_exist(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_MODELS_GET, service=NAME)
    async def get_model(cmd: GetModel, ctx: CallContext) -> ModelWithVersions:
        """A model with its versions."""
        return await handlers.get_model(deps(), await caller(ctx), ctx.token, cmd.id)

    def connections() -> ConnectionService:
        return runtime.extras["connections"]

    @command(router, subjects.REGISTRY_CONNECTIONS_CREATE, service=NAME)
    async def create_connection(cmd: CreateConnection, ctx: CallContext) -> ConnectionId:
        """Create a data connection."""
        return await connections().create(await caller(ctx), cmd)

    @command(router, subjects.REGISTRY_CONNECTIONS_ADD_TO_WORKSPACE, service=NAME)
    async def add_connection(cmd: AddConnectionToWorkspace, ctx: CallContext) -> ConnectionId:
        """Attach a connection to a workspace."""
        return await connections().add_to_workspace(await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_CONNECTIONS_LIST, service=NAME,
             too_large_hint=paging.too_large_hint("connections/list"))
    async def list_connections(cmd: ListConnections, ctx: CallContext) -> Connections:
        """Connections of a workspace (secrets masked)."""
        return await connections().list(await caller(ctx), ctx.token, cmd.workspace_id, cmd.limit, cmd.cursor)

    @command(router, subjects.REGISTRY_CONNECTIONS_GET, service=NAME)
    async def get_connection(cmd: GetConnection, ctx: CallContext) -> ConnectionRecord:
        """A connection by name."""
        return await connections().get(await caller(ctx), ctx.token, name=cmd.name)

    @command(router, subjects.REGISTRY_CONNECTIONS_GET_BY_ID, service=NAME)
    async def get_connection_by_id(cmd: GetConnectionById, ctx: CallContext) -> ConnectionRecord:
        """A connection by id."""
        return await connections().get(await caller(ctx), ctx.token, connection_id=cmd.id)

    @command(router, subjects.REGISTRY_CONNECTIONS_REMOVE_FROM_WORKSPACE, service=NAME)
    async def remove_connection(cmd: RemoveConnectionFromWorkspace, ctx: CallContext) -> NoContent:
        """Detach a connection from a workspace."""
        return await connections().remove_from_workspace(await caller(ctx), ctx.token, cmd.workspace_id,
                                                         cmd.connection_id)

    @command(router, subjects.REGISTRY_CONNECTIONS_DELETE, service=NAME)
    async def delete_connection(cmd: DeleteConnection, ctx: CallContext) -> NoContent:
        """Delete a connection attached to no workspace."""
        return await connections().delete(await caller(ctx), ctx.token, cmd.name)

    def registries() -> RegistryService:
        return runtime.extras["registries"]

    @command(router, subjects.REGISTRY_REGISTRIES_CREATE, service=NAME)
    async def create_registry(cmd: CreateRegistry, ctx: CallContext) -> RegistryCreated:
        """Connect an MLflow registry to a workspace."""
        return await registries().create(await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_REGISTRIES_ATTACH, service=NAME)
    async def attach_registry(cmd: AttachRegistry, ctx: CallContext) -> RegistryAttachment:
        """Attach a registry to a workspace."""
        return await registries().attach(await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_REGISTRIES_DETACH, service=NAME)
    async def detach_registry(cmd: AttachRegistry, ctx: CallContext) -> RegistryAttachment:
        """Detach a registry from a workspace."""
        return await registries().detach(await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_REGISTRIES_GET, service=NAME)
    async def get_registry(cmd: GetRegistry, ctx: CallContext) -> RegistryRecord:
        """A registry's details, token included."""
        return await registries().get(await caller(ctx), ctx.token,
                                      _registry_id(cmd.registry_id, cmd.id, names=EITHER))

    @command(router, subjects.REGISTRY_REGISTRIES_LIST, service=NAME,
             too_large_hint=paging.too_large_hint("models/list_registries", True))
    async def list_registries(cmd: ListRegistries, ctx: CallContext) -> RegistryList:
        """The registries of a workspace, oldest first (tokens masked; a page with `limit`)."""
        return await registries().list(await caller(ctx), ctx.token, cmd.workspace_id, cmd.limit, cmd.cursor)

    @command(router, subjects.REGISTRY_REGISTRIES_LIST_MODELS, service=NAME)
    async def list_registry_models(cmd: ListRegistryModels, ctx: CallContext) -> RegistryModels:
        """Registered models of a registry, paged."""
        return await registries().list_models(await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_REGISTRIES_LIST_ARTIFACTS, service=NAME)
    async def list_registry_artifacts(cmd: ListRegistryArtifacts, ctx: CallContext) -> RegistryArtifacts:
        """The artifacts of a model version in a registry."""
        return await registries().list_artifacts(await caller(ctx), ctx.token, cmd)

    @command(router, subjects.REGISTRY_REGISTRIES_UPLOAD, service=NAME)
    async def upload_from_registry(cmd: UploadFromRegistry, ctx: CallContext) -> UploadedFromRegistry:
        """Copy a registry artifact into a workspace as a model version."""
        return await registries().upload(await caller(ctx), ctx.token, cmd)

    return router


async def caller_workspaces(broker: Any, token: str | None, timeout: float) -> dict[int, str]:
    """The caller's workspaces, id -> name (a task run's token: its own only), read a page at a time: a workspace's
    record lists the id of each of its models and pipelines, so a user's whole workspaces/list can pass a bus reply
    (why 63169cc made it pageable), and asked whole it made every connections route answer its 422."""
    listed = caller_pages(broker, subjects.AUTH_WORKSPACES_LIST, lambda cursor: ListWorkspaces(
        limit=paging.MAX_PAGE, cursor=cursor), Workspaces, token, timeout)
    return {w.id: w.name async for page in listed for w in page.workspaces}


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker

    async def publish(subject, event) -> None:
        await publish_event(broker, subject, event)

    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(broker.config.connection_state.connection)
    # the registry's events go out from the outbox (store.EVENT_TYPES; shared/outbox.py), in order per model version,
    # connection or registry
    outbox = Outbox(runtime.db, publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                    what="registry events", rows=store)
    deps = handlers.RegistryDeps(
        pool=runtime.db, objects=runtime.objects, settings=settings.registry,
        membership=lambda token: bus_membership(broker, token, timeout), events_committed=outbox.wake)
    outbox_task = asyncio.create_task(outbox.run())
    async def my_workspaces(token: str | None) -> dict[int, str]:
        return await caller_workspaces(broker, token, timeout)

    box = SecretBox(settings.registry.secrets_key)
    rules = OutboundRules.from_settings(settings)  # what tenants' URLs may reach
    runtime.extras.update(
        deps=deps, verifier=verifier, verifier_feed=feed, outbox=outbox, outbox_task=outbox_task,
        connections=ConnectionService(runtime.db, box, deps.membership, my_workspaces, rules,
                                      events_committed=outbox.wake),
        registries=RegistryService(deps, box, rules))
    await handlers.resume_conversions(deps)


async def stop(runtime: Runtime) -> None:
    feed = runtime.extras.get("verifier_feed")
    if feed is not None:
        await feed.stop()
    deps = runtime.extras.get("deps")
    if deps is not None and deps.tasks:
        # conversions cut short resume at the next start (their versions stay 'converting')
        for task in list(deps.tasks):
            task.cancel()
        await asyncio.gather(*deps.tasks, return_exceptions=True)
    outbox_task, outbox = runtime.extras.get("outbox_task"), runtime.extras.get("outbox")
    if outbox_task is not None:  # what is unsent: now if the bus takes it, else at a start (this or another process)
        await outbox.stop(outbox_task)


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    uses_object_store=True,
    on_start=start,
    on_stop=stop,
    staged_bucket=StagedBucket(BUCKET_ARTIFACTS),  # the staged model uploads it consumes
)
