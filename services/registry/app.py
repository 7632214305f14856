"""registry: transport only. Subscribers parse their typed message, identify the caller and call one handler."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faststream.nats import NatsRouter

from services.registry import handlers
from shared import subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import CallContext, command, publish_event
from shared.messages.registry import (
    GetModel,
    GetModelById,
    GetModelConfig,
    ListModels,
    ListModelVersions,
    ModelConfig,
    ModelDetails,
    ModelInserted,
    ModelList,
    ModelVersions,
    ModelWithVersions,
    UploadModel,
)
from shared.service import Runtime, ServiceSpec

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

    @command(router, subjects.REGISTRY_MODELS_LIST, service=NAME)
    async def list_models(cmd: ListModels, ctx: CallContext) -> ModelList:
        """Models of a workspace."""
        return await handlers.list_models(deps(), await caller(ctx), ctx.token, cmd.workspace_id)

    @command(router, subjects.REGISTRY_MODELS_GET_BY_ID, service=NAME)
    async def get_by_id(cmd: GetModelById, ctx: CallContext) -> ModelDetails:
        """A model's details."""
        return await handlers.get_model_by_id(deps(), await caller(ctx), ctx.token, cmd.id)

    @command(router, subjects.REGISTRY_MODELS_LIST_VERSIONS, service=NAME)
    async def list_versions(cmd: ListModelVersions, ctx: CallContext) -> ModelVersions:
        """A model's versions."""
        return await handlers.list_versions(deps(), await caller(ctx), ctx.token, cmd.models_pk_id, cmd.model_id)

    @command(router, subjects.REGISTRY_MODELS_GET_CONFIG, service=NAME)
    async def get_config(cmd: GetModelConfig, ctx: CallContext) -> ModelConfig:
        """A model's configuration."""
        return await handlers.get_model_config(deps(), await caller(ctx), ctx.token, cmd.model_id)

    @command(router, subjects.REGISTRY_MODELS_GET, service=NAME)
    async def get_model(cmd: GetModel, ctx: CallContext) -> ModelWithVersions:
        """A model with its versions."""
        return await handlers.get_model(deps(), await caller(ctx), ctx.token, cmd.id)

    return router


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker

    async def publish(subject, event) -> None:
        await publish_event(broker, subject, event)

    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(broker.config.connection_state.connection)
    deps = handlers.RegistryDeps(
        pool=runtime.db, objects=runtime.objects, settings=settings.registry, publish=publish,
        membership=lambda token: bus_membership(broker, token, timeout))
    runtime.extras.update(deps=deps, verifier=verifier, verifier_feed=feed)
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


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    uses_object_store=True,
    on_start=start,
    on_stop=stop,
)
