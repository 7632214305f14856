"""workflow_lineage: transport only. Subscribers parse their typed message and call one handler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from faststream.nats import NatsRouter

from services.workflow_lineage import auto_benchmarks, handlers, links, object_gc, store
from shared import subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import (
    REPLY_HEADROOM,
    CallContext,
    command,
    publish_event,
    raise_for_error_header,
    request,
    request_engine,
)
from shared.consumers import DeliveryPolicy, durable_subscriber
from shared.errors import InvalidRequest, Unavailable
from shared.messages import CountEvents, EventCount
from shared.messages import lineage as m
from shared.messages.deployer import DeploymentRoute, ResolveDeployment
from shared.outbox import Outbox
from shared.service import Runtime, ServiceSpec
from shared.table_transport import take_table

NAME = "workflow_lineage"
ENGINE_TIMEOUT = 30.0
RECORDING_SLOTS = 2
"""Events.> messages written to PostgreSQL at a time (recorded, or kept as dead letters): a burst (the services'
start events) holds two backends instead of pool_max, ~15-20 MiB of RSS each (docs/performance.md)."""


class SlotPool:
    """The pool, each use of it taking one of the recording slots first: what lineage hands shared/consumers.py to
    write its dead letters with (`record_dead_letter`: pool.fetchval), so a burst of messages that do not decode (each
    a dead letter at its first delivery, written outside the handler) holds no more backends than the recordings."""

    def __init__(self, pool: Callable[[], Any], slots: asyncio.Semaphore) -> None:
        self._pool = pool
        self._slots = slots

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self._slots, self._pool().acquire() as conn:
            yield conn

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        async with self._slots:
            return await self._pool().fetchval(*args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        async with self._slots:
            return await self._pool().execute(*args, **kwargs)


def build_router(runtime: Runtime) -> NatsRouter:
    """Every domain event (durable pull consumer, acknowledged after it is stored) and the commands."""
    router = NatsRouter()
    recording = asyncio.Semaphore(RECORDING_SLOTS)
    dead_letters = SlotPool(lambda: runtime.db, recording)  # written in the same slots as the recordings

    def deps() -> handlers.Deps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    # Messages handed to a replica that then dies are redelivered after ack_wait: keep it short, recording is
    # idempotent (by event id) so an early redelivery costs nothing. A message that is not an event, or whose
    # recording fails at every delivery, is kept in dead_letters (shared/consumers.py), not redelivered for ever.
    @durable_subscriber(
        router, "events.>", durable=subjects.LINEAGE_EVENTS_DURABLE, service=NAME, decode=handlers.decode_event,
        pool=lambda: dead_letters, policy=DeliveryPolicy.from_settings(runtime.settings.nats), ack_wait=5.0,
        batch_size=64, title="events.>:Event",
        description="Record every domain event once and draw it on the lineage graph.")
    async def on_event(body: dict[str, Any], message: Any) -> None:
        # A pulled batch is handled concurrently; RECORDING_SLOTS recordings (and dead letters) at a time
        async with recording:
            recorded = await handlers.record_event(runtime.db, message.raw_message.subject, body)
        if recorded:
            runtime.extras["auto_benchmarks"].wake()  # set in start(), before the broker delivers

    @command(router, subjects.LINEAGE_EVENTS_COUNT, service=NAME)
    async def count_events(cmd: CountEvents, ctx: CallContext) -> EventCount:
        """Count the recorded domain events."""
        return await handlers.count_events(runtime.db, cmd.subject)

    @command(router, subjects.LINEAGE_PROJECTS_CREATE, service=NAME)
    async def create_project(cmd: m.CreateProject, ctx: CallContext) -> m.ProjectInfo:
        """Create a project in a workspace."""
        return await handlers.create_project(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_PROJECTS_LIST, service=NAME)
    async def list_projects(cmd: m.ListProjects, ctx: CallContext) -> m.Projects:
        """The projects of a workspace."""
        return await handlers.list_projects(deps(), await caller(ctx), ctx.token, cmd.workspace_id)

    @command(router, subjects.LINEAGE_PROJECTS_GET, service=NAME)
    async def get_project(cmd: m.ProjectRef, ctx: CallContext) -> m.ProjectInfo:
        """A project with its datasets and content hash."""
        return await handlers.get_project(deps(), await caller(ctx), ctx.token, cmd.project_id)

    @command(router, subjects.LINEAGE_PROJECTS_DELETE, service=NAME)
    async def delete_project(cmd: m.ProjectRef, ctx: CallContext) -> m.Deleted:
        """Delete a project with its datasets and versions."""
        return await handlers.delete_project(deps(), await caller(ctx), ctx.token, cmd.project_id)

    @command(router, subjects.LINEAGE_DATASETS_CREATE, service=NAME)
    async def create_dataset(cmd: m.CreateDataset, ctx: CallContext) -> m.DatasetInfo:
        """Create a dataset in a project."""
        return await handlers.create_dataset(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_DATASETS_LIST, service=NAME)
    async def list_datasets(cmd: m.ProjectRef, ctx: CallContext) -> m.Datasets:
        """The datasets of a project."""
        return await handlers.list_datasets(deps(), await caller(ctx), ctx.token, cmd.project_id)

    @command(router, subjects.LINEAGE_DATASETS_GET, service=NAME)
    async def get_dataset(cmd: m.DatasetRef, ctx: CallContext) -> m.DatasetInfo:
        """A dataset."""
        return await handlers.get_dataset(deps(), await caller(ctx), ctx.token, cmd.dataset_id)

    @command(router, subjects.LINEAGE_DATASETS_DELETE, service=NAME)
    async def delete_dataset(cmd: m.DatasetRef, ctx: CallContext) -> m.Deleted:
        """Delete a dataset."""
        return await handlers.delete_dataset(deps(), await caller(ctx), ctx.token, cmd.dataset_id)

    @command(router, subjects.LINEAGE_DATASETS_PUT_ROWS, service=NAME)
    async def put_rows(cmd: m.PutDatasetRows, ctx: CallContext) -> m.DatasetInfo:
        """Append to or replace a tabular dataset's rows (staged Arrow IPC)."""
        return await handlers.put_rows(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_DATASETS_ROWS, service=NAME)
    async def rows(cmd: m.DatasetRef, ctx: CallContext) -> m.DatasetRows:
        """Where a tabular dataset's rows are (for the gateway)."""
        return await handlers.rows(deps(), await caller(ctx), ctx.token, cmd.dataset_id)

    @command(router, subjects.LINEAGE_DATASETS_ADD_FILE, service=NAME)
    async def add_file(cmd: m.AddDatasetFile, ctx: CallContext) -> m.DatasetFile:
        """Add a file (staged) to an images/files dataset."""
        return await handlers.add_file(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_DATASETS_LIST_FILES, service=NAME,
             too_large_hint="ask for pages: pass limit (e.g. 1000) and follow next_cursor")
    async def list_files(cmd: m.DatasetFilesQuery, ctx: CallContext) -> m.DatasetFiles:
        """The files of a dataset (now, or as a project version saved them)."""
        return await handlers.list_files(deps(), await caller(ctx), ctx.token, cmd.dataset_id, cmd.version_id,
                                         limit=cmd.limit, cursor=cmd.cursor)

    @command(router, subjects.LINEAGE_DATASETS_GET_FILE, service=NAME,
             too_large_hint="the file's labels are larger than a reply may carry, so they cannot be read through "
             "the API; its content can (datasets/download_file). Upload it again with smaller labels, or delete it")
    async def get_file(cmd: m.DatasetFileQuery, ctx: CallContext) -> m.DatasetFile:
        """A dataset file's hash, size, type and labels (now, or as a project version saved it)."""
        return await handlers.get_file(deps(), await caller(ctx), ctx.token, cmd.dataset_id, cmd.name,
                                       cmd.version_id, labels=cmd.labels)

    @command(router, subjects.LINEAGE_DATASETS_SAVED, service=NAME)
    async def saved_dataset(cmd: m.SavedDatasetQuery, ctx: CallContext) -> m.SavedDatasetInfo:
        """That a project version holds the dataset, with its file and row counts (not the files)."""
        return await handlers.saved_dataset(deps(), await caller(ctx), ctx.token, cmd.dataset_id, cmd.version_id)

    @command(router, subjects.LINEAGE_DATASETS_DELETE_FILE, service=NAME)
    async def delete_file(cmd: m.DatasetFileRef, ctx: CallContext) -> m.Deleted:
        """Delete a dataset file."""
        return await handlers.delete_file(deps(), await caller(ctx), ctx.token, cmd.dataset_id, cmd.name)

    @command(router, subjects.LINEAGE_FILES_PUT, service=NAME)
    async def put_workspace_file(cmd: m.PutWorkspaceFile, ctx: CallContext) -> m.WorkspaceFile:
        """Store a (staged) file in the workspace's file space."""
        return await handlers.put_workspace_file(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_FILES_LIST, service=NAME)
    async def list_workspace_files(cmd: m.ListWorkspaceFiles, ctx: CallContext) -> m.WorkspaceFolder:
        """The files and folders under a folder."""
        return await handlers.list_workspace_files(deps(), await caller(ctx), ctx.token, cmd.workspace_id,
                                                   cmd.folder)

    @command(router, subjects.LINEAGE_FILES_GET, service=NAME)
    async def workspace_file(cmd: m.WorkspaceFileRef, ctx: CallContext) -> m.WorkspaceFile:
        """A workspace file's hash and size."""
        return await handlers.workspace_file(deps(), await caller(ctx), ctx.token, cmd.workspace_id, cmd.path)

    @command(router, subjects.LINEAGE_FILES_DELETE, service=NAME)
    async def delete_workspace_file(cmd: m.WorkspaceFileRef, ctx: CallContext) -> m.Deleted:
        """Delete a workspace file."""
        return await handlers.delete_workspace_file(deps(), await caller(ctx), ctx.token, cmd.workspace_id,
                                                    cmd.path)

    @command(router, subjects.LINEAGE_VERSIONS_CREATE, service=NAME)
    async def create_version(cmd: m.CreateProjectVersion, ctx: CallContext) -> m.ProjectVersionInfo:
        """Save a project version (or return the identical last one)."""
        return await handlers.create_version(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_VERSIONS_LIST, service=NAME)
    async def list_versions(cmd: m.ListProjectVersions, ctx: CallContext) -> m.ProjectVersions:
        """A project's versions, filtered."""
        return await handlers.list_versions(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_VERSIONS_RESTORE, service=NAME)
    async def restore_version(cmd: m.RestoreProjectVersion, ctx: CallContext) -> m.ProjectRestored:
        """Recreate a version as a new project."""
        return await handlers.restore_version(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_VERSIONS_VERIFY, service=NAME)
    async def verify_version(cmd: m.VersionRef, ctx: CallContext) -> m.VersionVerification:
        """Check a version's manifest hash and objects."""
        return await handlers.verify_version(deps(), await caller(ctx), ctx.token, cmd.version_id)

    @command(router, subjects.LINEAGE_WORKFLOW_GRAPH, service=NAME)
    async def workflow_graph(cmd: m.GetWorkflowGraph, ctx: CallContext) -> m.WorkflowGraph:
        """A card's ancestors and descendants, or a workspace's graph."""
        return await links.graph_query(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_BENCHMARKS_CLASSIFICATION, service=NAME)
    async def run_classification(cmd: m.RunClassificationBenchmark, ctx: CallContext) -> m.BenchmarkReport:
        """Run a dataset through deployments and store a classification report with speed."""
        # here, not at the top: numpy, pyarrow and Pillow load on the first benchmark call, not in the idle service
        from services.workflow_lineage import benchmark_runs

        return await benchmark_runs.run_classification(deps(), runtime.extras["infer"], runtime.extras["resolve"],
                                                       await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_BENCHMARKS_DETECTION, service=NAME)
    async def evaluate_detections(cmd: m.EvaluateDetections, ctx: CallContext) -> m.BenchmarkReport:
        """Score submitted detections, or run detection deployments, against an images dataset's boxes (COCO)."""
        from services.workflow_lineage import benchmark_runs

        return await benchmark_runs.evaluate_detections(deps(), runtime.extras["infer"], runtime.extras["resolve"],
                                                        await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_BENCHMARKS_GET, service=NAME)
    async def get_report(cmd: m.ReportRef, ctx: CallContext) -> m.BenchmarkReport:
        """A stored benchmark report."""
        from services.workflow_lineage import benchmark_runs

        return await benchmark_runs.get_report(deps(), await caller(ctx), ctx.token, cmd.report_id)

    @command(router, subjects.LINEAGE_BENCHMARKS_LIST, service=NAME)
    async def list_reports(cmd: m.ListReports, ctx: CallContext) -> m.BenchmarkReports:
        """A workspace's benchmark reports."""
        from services.workflow_lineage import benchmark_runs

        return await benchmark_runs.list_reports(deps(), await caller(ctx), ctx.token, cmd.workspace_id)

    @command(router, subjects.LINEAGE_BENCHMARKS_COMPARE, service=NAME)
    async def compare_reports(cmd: m.CompareReports, ctx: CallContext) -> m.ReportComparison:
        """Reports' candidates side by side, metric by metric, with differences."""
        from services.workflow_lineage import benchmark_runs

        return await benchmark_runs.compare_reports(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LINEAGE_OBJECTS_COLLECT, service=NAME)
    async def collect_objects(cmd: m.CollectObjects, ctx: CallContext) -> m.ObjectsCollected:
        """Delete the content-addressed objects nothing refers to any more (administrators)."""
        return await object_gc.collect_objects(deps(), await caller(ctx), cmd)

    for subject in subjects.LINEAGE_WORKFLOW_LINKS:
        _link_subscriber(router, runtime, subject, caller)

    return router


def _link_subscriber(router: NatsRouter, runtime: Runtime, subject: str, caller: Any) -> None:
    """One seed input/output method: `add_<direction>_<card>` with the card's message model."""
    direction, card = subject.rsplit(".", 1)[-1].removeprefix("add_").split("_", 1)

    async def add_link(cmd: m.WorkflowLink, ctx: CallContext) -> m.LinkAdded:
        return await links.add(runtime.extras["deps"], await caller(ctx), ctx.token, direction, card, cmd)

    add_link.__annotations__ = {"cmd": links.MODELS[card], "ctx": CallContext, "return": m.LinkAdded}
    add_link.__name__ = f"add_{direction}_{card}"
    add_link.__doc__ = f"Seed add_{direction}_{card}: connect a {card} card to a task run."
    command(router, subject, service=NAME)(add_link)


async def engine_infer(nc: Any, objects: Any, deployment: str, payload: bytes) -> tuple[dict[str, str], bytes]:
    """One engine call of a benchmark, as the gateway makes it (answers above the bus limit come by reference): sent
    once more if no replica answered within ENGINE_FIRST_ATTEMPT (a replica killed while it held the batch never
    answers: the benchmark waited ENGINE_TIMEOUT for it and failed), with the same request id
    (shared.bus.request_engine). Nobody listening: 503 (an auto-benchmark's claim is tried again later)."""
    if len(payload) > nc.max_payload - 64 * 1024:
        raise InvalidRequest("a batch is larger than the bus allows: lower batch_size")
    reply = await request_engine(nc.request, subjects.engine_infer(deployment), payload, {}, timeout=ENGINE_TIMEOUT)
    if reply is None:
        raise Unavailable(f"deployment {deployment!r} has no running engine; retry shortly")
    headers = dict(reply.headers or {})
    raise_for_error_header(headers)
    return headers, await take_table(objects, headers, reply.data)


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker
    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(broker.config.connection_state.connection)

    async def publish(subject: str, event: Any) -> None:
        await publish_event(broker, subject, event)

    nc = broker.config.connection_state.connection

    async def infer(deployment: str, payload: bytes) -> tuple[dict[str, str], bytes]:
        return await engine_infer(nc, runtime.objects, deployment, payload)

    async def resolve(token: str | None, deployment: str) -> dict[str, Any]:
        route = await request(broker, subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, ResolveDeployment(name=deployment),
                              token=token, timeout=timeout, reply_model=DeploymentRoute)
        return route.model_dump()

    # lineage's events go out from the outbox (store.EVENT_TYPES; shared/outbox.py), in order per project: a publish
    # that fails no longer turns a committed change into an error, nor loses its event
    outbox = Outbox(runtime.db, publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                    what="lineage events", rows=store)
    deps = handlers.Deps(pool=runtime.db, objects=runtime.objects,
                         membership=lambda token: bus_membership(broker, token, timeout),
                         events_committed=outbox.wake,
                         page_bytes=nc.max_payload // 2, reply_bytes=nc.max_payload - REPLY_HEADROOM)
    worker = auto_benchmarks.AutoBenchmarks(deps, infer)
    deps.wake_benchmarks = worker.wake
    collection = object_gc.PeriodicCollection(deps)
    runtime.extras.update(infer=infer, resolve=resolve, auto_benchmarks=worker, object_collection=collection)
    outbox_task = asyncio.create_task(outbox.run())
    runtime.extras.update(verifier=verifier, feed=feed, deps=deps, outbox=outbox, outbox_task=outbox_task)
    worker.start()
    collection.start()


async def stop(runtime: Runtime) -> None:
    for worker in (runtime.extras.get("auto_benchmarks"), runtime.extras.get("object_collection")):
        if worker is not None:
            await worker.stop()
    feed = runtime.extras.get("feed")
    if feed is not None:
        await feed.stop()
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
)
