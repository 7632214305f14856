"""assay_runner: transport only. The assay commands, and the scheduler that scores closed windows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faststream.nats import NatsRouter

from services.assay_runner import handlers, store
from services.assay_runner.outbox import Outbox
from shared import paging, subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import CallContext, command, publish_event, raw_request, request
from shared.db import background_pass
from shared.lean_imports import lazy_module
from shared.messages.assays import (
    AssayActive,
    AssayCreated,
    AssayResults,
    Assays,
    BaselineRows,
    GetAssayResults,
    GetBaseline,
    ListAssays,
    NewAssayConfig,
    SetAssayActive,
)
from shared.messages.deployer import GetPipeline, PipelineRecord
from shared.messages.logs import LogPage, ReadLogField
from shared.messages.monitoring_feedback import ReferenceFeature, ReferenceFeatureQuery
from shared.service import Runtime, ServiceSpec
from shared.table_transport import PAGE_HEADER, take_table

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # imported by the first assay that runs, not at start (~10 MiB of RSS idle)

NAME = "assay_runner"
FIELD_TIMEOUT = 60.0
log = logging.getLogger("railyard.assay_runner")


def build_router(runtime: Runtime) -> NatsRouter:
    router = NatsRouter()

    def deps() -> handlers.Deps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    @command(router, subjects.ASSAYS_CREATE, service=NAME)
    async def create(cmd: NewAssayConfig, ctx: CallContext) -> AssayCreated:
        """Create an assay (its baseline is summarized now and kept)."""
        return await handlers.create(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.ASSAYS_LIST, service=NAME, too_large_hint=paging.too_large_hint("assays/list", True))
    async def list_assays(cmd: ListAssays, ctx: CallContext) -> Assays:
        """The assays of a pipeline (a page with `limit`)."""
        return await handlers.list_assays(deps(), await caller(ctx), ctx.token, cmd.pipeline_id, cmd.limit, cmd.cursor)

    @command(router, subjects.ASSAYS_SET_ACTIVE, service=NAME)
    async def set_active(cmd: SetAssayActive, ctx: CallContext) -> AssayActive:
        """Activate or deactivate an assay."""
        return await handlers.set_active(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.ASSAYS_RUN_BASELINE, service=NAME)
    async def run_baseline(cmd: NewAssayConfig, ctx: CallContext) -> dict[str, Any]:
        """Summarize a baseline (status BaselineRun)."""
        return await handlers.run_baseline(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.ASSAYS_RUN_INTERACTIVE, service=NAME)
    async def run_interactive(cmd: NewAssayConfig, ctx: CallContext) -> AssayResults:
        """Score every window of an assay configuration now (nothing is stored)."""
        return await handlers.run_interactive(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.ASSAYS_GET_BASELINE, service=NAME)
    async def get_baseline(cmd: GetBaseline, ctx: CallContext) -> BaselineRows:
        """Logged rows a baseline could be made of."""
        return await handlers.get_baseline(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.ASSAYS_GET_RESULTS, service=NAME)
    async def get_results(cmd: GetAssayResults, ctx: CallContext) -> AssayResults:
        """The stored results of an assay, newest window first."""
        return await handlers.get_results(deps(), await caller(ctx), ctx.token, cmd)

    return router


async def _raw(nc: Any, subject: str, body: dict[str, Any], token: str | None) -> Any:
    return await raw_request(nc, subject, json.dumps(body).encode(), token=token, timeout=FIELD_TIMEOUT)


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker
    nc = broker.config.connection_state.connection
    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(nc)

    async def read_field(token, workspace_id, pipeline, model, column, index, start_ms, end_ms) -> np.ndarray:
        cmd = ReadLogField(workspace_id=workspace_id, pipeline=pipeline, model=model, column=column, index=index,
                           start_ms=start_ms, end_ms=end_ms)
        reply = await _raw(nc, subjects.LOG_STORE_READ_FIELD, cmd.model_dump(), token)
        data = await take_table(runtime.objects, reply.headers, reply.data)
        from shared.arrow_codec import from_ipc  # here: the idle service does without pyarrow (~25 MiB)

        column_values = from_ipc(data).column("value")
        return column_values.to_numpy().astype(np.float64, copy=False) if len(column_values) else np.zeros(0)

    async def pipeline_of(token, pipeline_id: int) -> dict[str, Any]:
        record = await request(broker, subjects.DEPLOYER_PIPELINES_GET, GetPipeline(pipeline_id=pipeline_id),
                               token=token, timeout=timeout, reply_model=PipelineRecord)
        return {"workspace_id": record.workspace_id, "name": record.name}

    async def log_page(token, body: dict[str, Any]) -> list[dict[str, Any]]:
        reply = await _raw(nc, subjects.LOG_STORE_QUERY, body, token)
        LogPage.model_validate_json(reply.headers[PAGE_HEADER])
        import pyarrow as pa

        from shared.arrow_codec import from_ipc

        table: pa.Table = from_ipc(reply.data)
        for name in table.column_names:
            if pa.types.is_dictionary(table.schema.field(name).type):
                table = table.set_column(table.schema.get_field_index(name), name,
                                         table.column(name).cast(pa.string()))
        return table.to_pylist()

    async def publish(subject: str, event: Any) -> None:
        await publish_event(broker, subject, event)

    async def reference_feature(token, body: dict[str, Any]) -> dict[str, Any]:
        answer = await request(broker, subjects.MONITORING_REFERENCE_FEATURE, ReferenceFeatureQuery(**body),
                               token=token, timeout=FIELD_TIMEOUT, reply_model=ReferenceFeature)
        return answer.model_dump()

    js = nc.jetstream(timeout=timeout)

    async def log_progress() -> handlers.LogProgress:
        """The stream's last sequence first, then how far the log store's consumer has acknowledged (info requests
        only: deploy/nats-permissions.json, `watches`)."""
        stream = await js.stream_info(subjects.INFERENCE_LOGS_STREAM)
        consumer = await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
        return handlers.log_progress(stream.state.last_seq, consumer.ack_floor.stream_seq if consumer.ack_floor else 0,
                                     consumer.num_pending, consumer.num_ack_pending,
                                     consumer.config.metadata if consumer.config else None)

    events = Outbox(runtime.db, publish)  # events of committed changes: sent from the outbox table
    deps = handlers.Deps(pool=runtime.db, settings=settings.assays,
                         membership=lambda token: bus_membership(broker, token, timeout), read_field=read_field,
                         pipeline_of=pipeline_of, log_page=log_page, outbox=events,
                         reference_feature=reference_feature, log_progress=log_progress)

    runtime.extras.update(deps=deps, verifier=verifier, verifier_feed=feed,
                          scheduler=asyncio.create_task(run_scheduler(deps)), outbox=asyncio.create_task(events.run()))


async def run_scheduler(deps: handlers.Deps) -> None:
    """The scheduler's loop: a pass when woken (`deps.scheduled`: an assay created or changed here) or when the next
    window is due (handlers.scheduler_wait); `stop` cancels it."""
    wait, first = deps.settings.tick, True
    while True:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the loop is woken in the step the stop's
        # cancel comes (bpo-42130); the cancel was lost, the loop went on and the stop waited for it until a kill
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await deps.scheduled.wait()
        # the start's pass, and one after a long wait not asked for, close the connection they opened (shared/db.py)
        quiet = (first or wait >= handlers.SCHEDULER_IDLE) and not deps.scheduled.is_set()
        first = False
        deps.scheduled.clear()
        try:
            async with background_pass(deps.pool) if quiet else contextlib.nullcontext():
                await handlers.run_due(deps)
                next_run = await store.next_due(deps.pool)
            wait = handlers.scheduler_wait(next_run, datetime.now(UTC), deps.settings)
        except Exception:
            wait = deps.settings.tick
            log.exception("the assay scheduler failed a pass")


async def stop(runtime: Runtime) -> None:
    task = runtime.extras.get("scheduler")
    if task is not None:  # a pass cut short commits nothing: the next start redoes it
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # its connection back in the pool (its advisory lock released) before the pool closes
    task, deps = runtime.extras.get("outbox"), runtime.extras.get("deps")
    if task is not None:  # what is unsent: now if the bus takes it, else at a start (this or another process), as
        # the deployer's, registry's, monitoring's and task scheduler's stops do
        await deps.outbox.stop(task)
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
)
