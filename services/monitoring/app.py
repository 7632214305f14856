"""monitoring: transport only. Subscribers parse their typed message, identify the caller and call one handler."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faststream.nats import NatsRouter

from services.monitoring import aggregates, continuous, feedback, handlers, predictions, reference
from shared import subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import CallContext, command
from shared.messages.monitoring import (
    AddDeploymentTags,
    DeleteDeployment,
    DeploymentDeleted,
    DeploymentInformation,
    DeploymentModel,
    DeploymentQuery,
    DeploymentTags,
    SetDeploymentModel,
    UpdateDeployment,
)
from shared.objectstore import BUCKET_MONITORING
from shared.service import Runtime, ServiceSpec
from shared.settings import deploy_wait
from shared.staging import StagedBucket

NAME = "monitoring"
# An image the gateway stages for predict/monitor is deleted by this service once read and by the gateway once the
# command answered, so one is left behind only when a process died in between: the sweep deletes staged images older
# than an hour (far longer than any request may take), every ten minutes.
STAGED_IMAGE_GRACE_SECONDS = 3600.0
STAGED_IMAGE_SWEEP_EVERY_SECONDS = 600.0


def build_router(runtime: Runtime) -> NatsRouter:
    """The service's command and event subscribers (health is added by the runner)."""
    router = NatsRouter()

    def deps() -> handlers.MonitoringDeps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    @command(router, subjects.MONITORING_DEPLOYMENTS_ADD_TAGS, service=NAME)
    async def add_tags(cmd: AddDeploymentTags, ctx: CallContext) -> DeploymentTags:
        """Add tags to a deployment."""
        return await handlers.add_tags(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_DEPLOYMENTS_GET_TAGS, service=NAME)
    async def get_tags(cmd: DeploymentQuery, ctx: CallContext) -> DeploymentTags:
        """A deployment's tags."""
        return await handlers.get_tags(deps(), await caller(ctx), ctx.token, cmd.deployment)

    @command(router, subjects.MONITORING_DEPLOYMENTS_RETRIEVE_INFORMATION, service=NAME)
    async def retrieve_information(cmd: DeploymentQuery, ctx: CallContext) -> DeploymentInformation:
        """What is known about a deployment."""
        return await handlers.retrieve_information(deps(), await caller(ctx), ctx.token, cmd.deployment)

    @command(router, subjects.MONITORING_DEPLOYMENTS_UPDATE, service=NAME)
    async def update(cmd: UpdateDeployment, ctx: CallContext) -> DeploymentInformation:
        """Change a deployment's display name, target datalake or minimum threshold."""
        return await handlers.update(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_DEPLOYMENTS_DELETE, service=NAME)
    async def delete(cmd: DeleteDeployment, ctx: CallContext) -> DeploymentDeleted:
        """Stop a deployment and forget its tags and settings."""
        return await handlers.delete(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_DEPLOYMENTS_GET_MODEL_VERSION, service=NAME)
    async def get_model_version(cmd: DeploymentQuery, ctx: CallContext) -> DeploymentModel:
        """The model version a deployment serves."""
        return await handlers.get_model_version(deps(), await caller(ctx), ctx.token, cmd.deployment)

    @command(router, subjects.MONITORING_DEPLOYMENTS_SET_MODEL, service=NAME)
    async def set_model(cmd: SetDeploymentModel, ctx: CallContext) -> DeploymentModel:
        """Serve another model version (a new pipeline version, swapped in)."""
        return await handlers.set_model(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_DEPLOYMENTS_GET_SHADOW_MODEL, service=NAME)
    async def get_shadow_model(cmd: DeploymentQuery, ctx: CallContext) -> DeploymentModel:
        """The shadow model version of a deployment (none without one)."""
        return await handlers.get_shadow_model(deps(), await caller(ctx), ctx.token, cmd.deployment)

    @command(router, subjects.MONITORING_DEPLOYMENTS_SET_SHADOW_MODEL, service=NAME)
    async def set_shadow_model(cmd: SetDeploymentModel, ctx: CallContext) -> DeploymentModel:
        """Run a model version as the deployment's shadow challenger (a new pipeline version, swapped in)."""
        return await handlers.set_model(deps(), await caller(ctx), ctx.token, cmd, shadow=True)

    predictions.register(router, deps, caller)
    feedback.register(router, lambda: runtime.extras["feedback"], caller, NAME)
    reference.register(router, lambda: runtime.extras["feedback"], caller, NAME)
    continuous.register(router, runtime)
    return router


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker
    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(broker.config.connection_state.connection)
    deps = handlers.MonitoringDeps(pool=runtime.db, broker=broker,
                                   membership=lambda token: bus_membership(broker, token, timeout),
                                   timeout=timeout, deploy_timeout=deploy_wait(settings),
                                   objects=runtime.objects, max_image_bytes=settings.monitoring.max_image_bytes,
                                   image_slots=asyncio.Semaphore(settings.monitoring.images_at_once),
                                   stats_slots=asyncio.Semaphore(settings.monitoring.stats_at_once),
                                   events_committed=continuous._outbox(runtime).wake)
    fold = aggregates.HourFold(runtime.db)
    runtime.extras.update(deps=deps, verifier=verifier, verifier_feed=feed, hour_fold=fold)
    fold.start()
    await feedback.start(runtime)
    await continuous.start(runtime)


async def stop(runtime: Runtime) -> None:
    if (fold := runtime.extras.get("hour_fold")) is not None:
        await fold.stop()
    await continuous.stop(runtime)
    await feedback.stop(runtime)
    feed = runtime.extras.get("verifier_feed")
    if feed is not None:
        await feed.stop()


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    on_start=start,
    on_stop=stop,
    uses_object_store=True,
    # its staged images live for one request: an hour's grace, swept every ten minutes
    staged_bucket=StagedBucket(BUCKET_MONITORING, grace_seconds=STAGED_IMAGE_GRACE_SECONDS,
                               every=STAGED_IMAGE_SWEEP_EVERY_SECONDS),
)
