"""task_scheduler: transport only. Subscribers parse their typed message and call one handler; the scheduler loop
(scheduler.py) starts with the service."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from faststream.nats import NatsRouter

from services.task_scheduler import handlers, packaging
from services.task_scheduler.scheduler import Scheduler
from shared import paging, subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import CallContext, command, publish_event, request
from shared.messages.tasks import (
    RUNS_PAGES_HINT,
    GetRunLogs,
    GetTask,
    GetTasksByOrchSha,
    IssueTaskToken,
    KillTask,
    ListOrchestrations,
    ListTaskRuns,
    ListTasks,
    OrchestrationCreated,
    Orchestrations,
    RunLogs,
    RunTaskOnce,
    RunTaskScheduled,
    TaskCreated,
    TaskIds,
    TaskRecord,
    TaskRuns,
    Tasks,
    TaskTokenIssued,
    UploadOrchestration,
)
from shared.objectstore import BUCKET_ORCHESTRATIONS
from shared.service import Runtime, ServiceSpec
from shared.staging import StagedBucket

NAME = "task_scheduler"
log = logging.getLogger("railyard.task_scheduler")


def build_router(runtime: Runtime) -> NatsRouter:
    """The service's command subscribers (health is added by the runner)."""
    router = NatsRouter()

    def deps() -> handlers.Deps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    @command(router, subjects.TASKS_ORCHESTRATIONS_UPLOAD, service=NAME)
    async def upload(cmd: UploadOrchestration, ctx: CallContext) -> OrchestrationCreated:
        """Accept a staged orchestration zip after checking it (nothing is kept when it is refused)."""
        return await handlers.upload_orchestration(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.TASKS_ORCHESTRATIONS_LIST, service=NAME,
             too_large_hint=paging.too_large_hint("orchestration/list", True))
    async def list_orchestrations(cmd: ListOrchestrations, ctx: CallContext) -> Orchestrations:
        """The orchestrations of a workspace, with their packaging status (a page with `limit`)."""
        return await handlers.list_orchestrations(deps(), await caller(ctx), ctx.token, cmd.workspace_id, cmd.limit,
                                                  cmd.cursor)

    @command(router, subjects.TASKS_RUN_ONCE, service=NAME)
    async def run_once(cmd: RunTaskOnce, ctx: CallContext) -> TaskCreated:
        """Run an orchestration once."""
        return await handlers.run_once(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.TASKS_RUN_SCHEDULED, service=NAME)
    async def run_scheduled(cmd: RunTaskScheduled, ctx: CallContext) -> TaskCreated:
        """Run an orchestration on a cron schedule until killed."""
        return await handlers.run_scheduled(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.TASKS_GET, service=NAME)
    async def get_task(cmd: GetTask, ctx: CallContext) -> TaskRecord:
        """A task with its last runs."""
        return await handlers.get_task(deps(), await caller(ctx), ctx.token, cmd.id)

    @command(router, subjects.TASKS_BY_ORCH_SHA, service=NAME)
    async def by_orch_sha(cmd: GetTasksByOrchSha, ctx: CallContext) -> TaskIds:
        """The ids of an orchestration's tasks (in the caller's workspaces)."""
        return await handlers.tasks_by_orch_sha(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.TASKS_LIST, service=NAME, too_large_hint=paging.too_large_hint("task/list", True))
    async def list_tasks(cmd: ListTasks, ctx: CallContext) -> Tasks:
        """The tasks of a workspace with their last runs (a page with `limit`)."""
        return await handlers.list_tasks(deps(), await caller(ctx), ctx.token, cmd.workspace_id, cmd.limit,
                                         cmd.cursor)

    @command(router, subjects.TASKS_KILL, service=NAME)
    async def kill(cmd: KillTask, ctx: CallContext) -> TaskRecord:
        """Stop a task: no new runs, a run in progress is stopped."""
        return await handlers.kill_task(deps(), await caller(ctx), ctx.token, cmd.id)

    @command(router, subjects.TASKS_LIST_RUNS, service=NAME, too_large_hint=RUNS_PAGES_HINT)
    async def list_runs(cmd: ListTaskRuns, ctx: CallContext) -> TaskRuns:
        """A task's runs, most recently updated first (order "created": newest first, pages with `limit`)."""
        return await handlers.list_runs(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.TASKS_RUN_LOGS, service=NAME)
    async def run_logs(cmd: GetRunLogs, ctx: CallContext) -> RunLogs:
        """A run's log lines."""
        return await handlers.run_logs(deps(), await caller(ctx), ctx.token, cmd)

    return router


def gateway_url(runtime: Runtime) -> str:
    """The gateway's URL as a run sees it. In the sandbox (GATEWAY_ONLY) the only way out is the relay listening on
    127.0.0.1:<gateway port> inside it, whatever host the scheduler itself reaches the gateway at (`gateway` in
    docker-compose and Kubernetes, a name the sandbox could not resolve); without isolation, the real address."""
    settings = runtime.settings
    gateway = settings.gateway
    if settings.sandbox.mode != "off-for-single-user" or gateway.host in ("0.0.0.0", "::", ""):
        return f"http://127.0.0.1:{gateway.port}"
    return f"http://{gateway.host}:{gateway.port}"


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker
    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(broker.config.connection_state.connection)

    async def publish(subject: str, event: Any) -> None:
        await publish_event(broker, subject, event)

    async def mint(owner_id: str, workspace_id: int, ttl: int, task_id: str, run_id: str) -> str:
        issued = await request(broker, subjects.AUTH_TOKEN_ISSUE_TASK,
                               IssueTaskToken(user_id=owner_id, workspace_id=workspace_id, ttl=ttl, task_id=task_id,
                                              run_id=run_id),
                               timeout=timeout, reply_model=TaskTokenIssued)
        return issued.access_token

    work_root = packaging.work_dir(settings.tasks, settings.stack.data_dir)
    work_root.mkdir(parents=True, exist_ok=True)
    work_root.chmod(0o755)
    deps = handlers.Deps(pool=runtime.db, objects=runtime.objects, settings=settings.tasks, work_root=work_root,
                         membership=lambda token: bus_membership(broker, token, timeout), publish=publish)
    scheduler = Scheduler(deps=deps, mint=mint, gateway_url=gateway_url(runtime))
    deps.events_committed = scheduler.events_committed
    scheduler.start()
    runtime.extras.update(deps=deps, verifier=verifier, verifier_feed=feed, scheduler=scheduler)
    log.info("task scheduler %s: work directory %s", scheduler.identity, work_root)


async def stop(runtime: Runtime) -> None:
    scheduler = runtime.extras.get("scheduler")
    if scheduler is not None:
        await scheduler.stop()
    feed = runtime.extras.get("verifier_feed")
    if feed is not None:
        await feed.stop()


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    uses_object_store=True,
    on_start=start,
    on_stop=stop,
    # staged zips no tasks.orchestrations.upload consumed (shared/staging.py): deleted after a day
    staged_bucket=StagedBucket(BUCKET_ORCHESTRATIONS),
)
