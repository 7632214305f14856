"""deployer: transport only. Subscribers parse their typed message, identify the caller and call one handler."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from faststream.nats import NatsRouter

from services.deployer import handlers, store
from services.deployer.backend import LocalBackend
from shared import paging, sandbox, subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import CallContext, command, publish_event
from shared.messages.deployer import (
    CopyPipeline,
    Deployed,
    DeploymentRoute,
    DeploymentStatus,
    ExternalUrl,
    GetDeploymentStatus,
    GetExternalUrl,
    GetPipeline,
    ListPipelines,
    NewDeployment,
    NewPipeline,
    PipelineCopied,
    PipelineCreated,
    PipelineRecord,
    Pipelines,
    ResolveDeployment,
    UndeployPipeline,
)
from shared.outbox import Outbox
from shared.service import Runtime, ServiceSpec

NAME = "deployer"


def build_router(runtime: Runtime) -> NatsRouter:
    router = NatsRouter()

    def deps() -> handlers.DeployerDeps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    @command(router, subjects.DEPLOYER_PIPELINES_CREATE, service=NAME)
    async def create_pipeline(cmd: NewPipeline, ctx: CallContext) -> PipelineCreated:
        """Create a pipeline or a new version of it (a definition of at most 64 KiB of JSON, from any caller)."""
        return await handlers.create_pipeline(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.DEPLOYER_PIPELINES_COPY, service=NAME)
    async def copy_pipeline(cmd: CopyPipeline, ctx: CallContext) -> PipelineCopied:
        """Copy a pipeline (optionally deploying the copy)."""
        return await handlers.copy_pipeline(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.DEPLOYER_PIPELINES_LIST, service=NAME, too_large_hint=paging.too_large_hint(
        "pipelines/list"))
    async def list_pipelines(cmd: ListPipelines, ctx: CallContext) -> Pipelines:
        """Pipelines of a workspace with their versions and deployment (a page with `limit`)."""
        return await handlers.list_pipelines(deps(), await caller(ctx), ctx.token, cmd.workspace_id, cmd.limit,
                                             cmd.cursor)

    @command(router, subjects.DEPLOYER_PIPELINES_GET, service=NAME)
    async def get_pipeline(cmd: GetPipeline, ctx: CallContext) -> PipelineRecord:
        """A pipeline with its versions and deployment."""
        return await handlers.get_pipeline(deps(), await caller(ctx), ctx.token, cmd.pipeline_id, cmd.versions_cursor)

    @command(router, subjects.DEPLOYER_PIPELINES_DEPLOY, service=NAME)
    async def deploy(cmd: NewDeployment, ctx: CallContext) -> Deployed:
        """Deploy a pipeline version; answers once its replicas serve (engine_config: 64 KiB of JSON at most)."""
        return await handlers.deploy(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.DEPLOYER_PIPELINES_UNDEPLOY, service=NAME)
    async def undeploy(cmd: UndeployPipeline, ctx: CallContext) -> dict:
        """Stop a deployment."""
        return await handlers.undeploy(deps(), await caller(ctx), ctx.token, cmd.pipeline_id, cmd.deployment_id)

    @command(router, subjects.DEPLOYER_DEPLOYMENTS_STATUS, service=NAME)
    async def status(cmd: GetDeploymentStatus, ctx: CallContext) -> DeploymentStatus:
        """A deployment's status with each engine replica."""
        return await handlers.deployment_status(deps(), await caller(ctx), ctx.token, cmd.name)

    @command(router, subjects.DEPLOYER_DEPLOYMENTS_EXTERNAL_URL, service=NAME)
    async def external_url(cmd: GetExternalUrl, ctx: CallContext) -> ExternalUrl:
        """The inference URL of a deployed pipeline."""
        return await handlers.external_url(deps(), await caller(ctx), ctx.token, cmd.workspace_id, cmd.pipeline_name)

    @command(router, subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, service=NAME)
    async def resolve(cmd: ResolveDeployment, ctx: CallContext) -> DeploymentRoute:
        """Where a deployment's inferences go (for the gateway)."""
        return await handlers.resolve_deployment(deps(), await caller(ctx), ctx.token, cmd.name)

    return router


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker
    nc = broker.config.connection_state.connection

    async def publish(subject, event) -> None:
        await publish_event(broker, subject, event)

    async def nats_request(subject: str, payload: bytes, wait: float) -> bytes:
        return (await nc.request(subject, payload, timeout=wait)).data

    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(nc)
    work_dir = settings.stack.data_dir.expanduser().resolve() / "deployments"
    backend = LocalBackend(work_dir, nats_request, scale_down_after=settings.deployer.scale_down_after,
                           ready_timeout=settings.deployer.ready_timeout, stop_timeout=settings.deployer.stop_timeout,
                           request_slice_us=settings.request_path_slice_us,
                           liveness_timeout=settings.deployer.liveness_timeout,
                           liveness_probes=settings.deployer.liveness_probes,
                           crash_backoff=settings.deployer.crash_backoff,
                           crash_backoff_max=settings.deployer.crash_backoff_max,
                           crash_stable_after=settings.deployer.crash_stable_after,
                           silent_kept_for=settings.deployer.silent_kept_for,
                           bus_epoch=lambda: nc.stats["reconnects"] if nc.is_connected else None,
                           engine_work_dir=settings.stack.data_dir.expanduser().resolve() / "engine-work",
                           sweep_cgroups=sandbox.sweep_unused_cgroups)
    backend.start_supervising()
    # a previous deployer's replicas' work folders, and the sandbox cgroups of replicas killed (in the background)
    backend.sweep_stale_work()
    public_url = settings.gateway.public_url or f"http://{settings.gateway.host}:{settings.gateway.port}"
    # a pipeline's events go out from the outbox (store.EVENT_TYPES; shared/outbox.py), in order per pipeline
    outbox = Outbox(runtime.db, publish, event_types=store.EVENT_TYPES, order_field="pipeline_id",
                    what="pipeline events", rows=store)
    deps = handlers.DeployerDeps(pool=runtime.db, broker=broker, backend=backend,
                                 membership=lambda token: bus_membership(broker, token, timeout),
                                 public_url=public_url.rstrip("/"), timeout=timeout, events_committed=outbox.wake,
                                 lock_wait=handlers.deploy_lock_wait(settings),
                                 deploy_within=handlers.deploy_answers_within(settings))
    outbox_task = asyncio.create_task(outbox.run())
    runtime.extras.update(deps=deps, verifier=verifier, verifier_feed=feed, outbox=outbox, outbox_task=outbox_task)
    runtime.extras["restore"] = await handlers.restore_deployments(deps)
    # the folders of deployment names no deployment has any more (before session 32 an undeploy left them). Awaited
    # here, before the subscriptions start (shared/service.py runs on_start before broker.start): no deploy or
    # undeploy runs between its query and its removal, so what the query read is what the rows say. Run in the
    # background, a deploy meanwhile (one that failed under a name a folder from before session 32 has, its logs
    # kept) could see its folders removed on the query's stale read. Then again every GONE_SWEEP_EVERY (a failed
    # deploy's kept logs go KEPT_FAILED_FOR after their failure): those runs skip a name a start began or ended for
    # after their listing (LocalBackend.remove_gone's `since`), which such a stale read would otherwise remove
    await handlers.sweep_gone_folders(deps)
    runtime.extras["gone_sweep"] = asyncio.create_task(handlers.sweep_gone_folders_every(deps))


async def stop(runtime: Runtime) -> None:
    feed = runtime.extras.get("verifier_feed")
    if feed is not None:
        await feed.stop()
    restore = runtime.extras.get("restore")
    if restore is not None:  # restarts still loading are cancelled (their replicas stopped) before the backend closes
        await restore.stop()
    gone_sweep = runtime.extras.get("gone_sweep")
    if gone_sweep is not None:
        gone_sweep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone_sweep
    deps = runtime.extras.get("deps")
    if deps is not None:
        await deps.owed.stop()  # owed deployed events not written yet stay owed (deployed_pending): the next restore
        await deps.deactivations.stop()  # rows left active by a failed deploy stay so: the next restore starts them
        await deps.rechecks.stop()  # a recorded redeploy not started again yet: the next restore starts it
    outbox_task, outbox = runtime.extras.get("outbox_task"), runtime.extras.get("outbox")
    if outbox_task is not None:  # what is unsent: now if the bus takes it, else at a start (this or another process)
        await outbox.stop(outbox_task)
    if deps is not None:
        await deps.backend.close()


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    on_start=start,
    on_stop=stop,
)
