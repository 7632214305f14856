"""log_store: transport only. The durable consumer of INFERENCE_LOGS, the get_logs query (raw NATS: JSON in,
Arrow IPC out, so a page is not re-encoded on the way), retention settings and the maintenance timer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import nats
from faststream.nats import NatsRouter
from pydantic import ValidationError

from services.log_store import handlers, store
from services.log_store.deployments import LISTEN_WAIT, Deployments
from services.log_store.segments import SegmentReader
from shared import sealed, subjects
from shared.authz import Principal, bus_membership, bus_verifier
from shared.bus import (
    CallContext,
    answers_elsewhere,
    command,
    connect_options,
    error_headers,
    log_refused_reply,
    publish_event,
    reply_too_large,
)
from shared.bus_workers import ConcurrentCallback, drain_raw
from shared.data_errors import database_503_said, database_call_site, database_unavailable
from shared.errors import InvalidRequest, RailyardError, validation_message
from shared.lean_imports import lazy_module
from shared.messages.logs import (
    GetLogs,
    ListQuarantinedLogs,
    LogField,
    LogMaintenanceReport,
    LogRetention,
    QuarantinedLogs,
    ReadLogField,
    RunLogMaintenance,
    SetLogRetention,
)
from shared.outbox import Outbox
from shared.pipeline_pages import workspace_pipelines
from shared.request_values import refuse_lax_scalars
from shared.service import Runtime, ServiceSpec
from shared.table_transport import FIELD_HEADER, FIELD_PREFIX, PAGE_HEADER, TABLE_REF, above_bus_limit, put_table

if TYPE_CHECKING:
    import pyarrow as pa

    import shared.arrow_codec as arrow_codec
else:  # imported with the first log batch or read, not at start (~50 MiB of RSS idle)
    pa = lazy_module("pyarrow")
    arrow_codec = lazy_module("shared.arrow_codec")

NAME = "log_store"
log = logging.getLogger("railyard.log_store")
PAGE_TOO_LARGE = "ask for fewer records: lower page_size and follow the cursor (x-iteration-cursor)"
"""What a log page above the bus limit advises (pages are also capped in bytes: logs.page_max_bytes)."""


def build_router(runtime: Runtime) -> NatsRouter:
    router = NatsRouter()

    def deps() -> handlers.Deps:
        return runtime.extras["deps"]

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    @command(router, subjects.LOG_STORE_SET_RETENTION, service=NAME)
    async def set_retention(cmd: SetLogRetention, ctx: CallContext) -> LogRetention:
        """Keep a pipeline's logs a number of days (members of its workspace)."""
        return await handlers.set_retention(deps(), await caller(ctx), ctx.token, cmd)

    @command(router, subjects.LOG_STORE_QUARANTINE_LIST, service=NAME)
    async def list_quarantined(cmd: ListQuarantinedLogs, ctx: CallContext) -> QuarantinedLogs:
        """Inference log batches set aside because they could not be stored (administrators)."""
        return await handlers.list_quarantined(deps(), await caller(ctx), cmd)

    @command(router, subjects.LOG_STORE_MAINTENANCE, service=NAME)
    async def run_maintenance(cmd: RunLogMaintenance, ctx: CallContext) -> LogMaintenanceReport:
        """Run retention, compaction and purging now (internal; the same pass runs on a timer)."""
        return await handlers.maintain(deps(), cmd.compact, cmd.retention, cmd.purge, wait=True)

    return router


def _parse(model: Any, data: bytes) -> Any:
    """The raw subjects' command (get_logs, read_field), its booleans and numbers JSON's as every other command's
    (shared/bus.py run_command: refuse_lax_scalars). Before session 41 they were pydantic's lax reads here alone:
    {"workspace_id": "5"} or true on the bus read as workspace 5 or 1 (the gateway refuses both before it asks)."""
    try:
        cmd = model.model_validate_json(data or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors())) from None
    try:
        payload = json.loads(data or b"{}")  # pydantic's parse passed: JSON (json.loads reads its NaN too)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("message body is not valid JSON") from None
    refuse_lax_scalars(payload, cmd)
    return cmd


def reply_size(body: bytes, headers: dict[str, str]) -> int:
    """The bytes NATS counts against max_payload: the body and the headers block (`NATS/1.0\\r\\n`, one
    `key: value\\r\\n` each, `\\r\\n`)."""
    if not headers:
        return len(body)
    return len(body) + 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def _raw_responder(nc: Any, work: Callable[[Any, str | None], Awaitable[tuple[bytes, dict[str, str]]]],
                   too_large_hint: str) -> Callable:
    """A raw subscription callback: the caller's bearer token from the headers, `work`'s body and headers as
    the reply, or a typed error in the `Railyard-Error` header (Arrow bodies are not wrapped in JSON); sealed with the
    caller's reply key, and refused without one when the reply goes to the shared `client` inbox (shared/sealed.py);
    a request with no reply subject, or one that is not a caller's inbox, is not run and not answered.
    A reply above the connection's max_payload is the typed 422 reply_too_large naming the sizes and
    `too_large_hint` (what to ask instead): NATS refuses to publish it, and the caller waited for its timeout (504)."""

    async def respond(msg: Any) -> None:
        if not msg.reply or answers_elsewhere(msg.reply):
            # nobody to answer, or a reply subject that is no caller's inbox (`events.logs.x`, which this service
            # may publish itself): not run, nothing published (shared/raw_bus.py)
            if msg.reply:
                log_refused_reply(log, msg.subject, msg.reply)
            return
        headers = msg.headers or {}
        try:
            # before `work` (so before its token check): a reply to the shared `client` inbox is sealed with the
            # caller's key, a request without one refused having done nothing (shared/sealed.py)
            key = sealed.reply_key(headers, msg.reply)
        except RailyardError as exc:
            await nc.publish(msg.reply, b"", headers=error_headers(exc))
            return
        for name in (sealed.REPLY_KEY_HEADER, sealed.REPLY_KEY_HEADER.lower()):
            headers.pop(name, None)  # `work` never sees the caller's key
        auth = headers.get("authorization") or headers.get("Authorization") or ""
        token = auth[7:] if auth.lower().startswith("bearer ") else (auth or None)
        try:
            body, out = await work(msg, token)
        except RailyardError as exc:
            body, out = b"", error_headers(exc)
        except Exception as exc:
            # the log store's database restarting or failing over: the 503 every command answers (bus.run_command)
            unavailable = database_unavailable(exc, msg.subject)
            if unavailable is not None:
                log.warning("%s: 503, %s: %r%s", msg.subject, database_503_said(exc), exc, database_call_site(exc))
            else:
                log.exception("%s failed", msg.subject)
            body, out = b"", error_headers(unavailable or RailyardError("internal error"))
        sent, sent_headers = sealed.seal_reply(key, msg.reply, body, out)
        if (size := reply_size(sent, sent_headers or {})) > nc.max_payload:
            log.warning("the reply to %s is %d bytes, above the bus limit (%d): answered reply_too_large",
                        msg.subject, size, nc.max_payload)
            sent, sent_headers = sealed.seal_reply(
                key, msg.reply, b"", error_headers(reply_too_large(size, nc.max_payload, too_large_hint)))
        await nc.publish(msg.reply, sent, headers=sent_headers)

    return respond


async def start(runtime: Runtime) -> None:
    settings = runtime.settings
    timeout = settings.nats.request_timeout
    broker = runtime.broker
    nc = broker.config.connection_state.connection
    verifier, feed = bus_verifier(broker, settings.auth, timeout)
    await feed.start(nc)
    runtime.extras.update(verifier_feed=feed)

    async def pipeline_exists(token: str | None, workspace_id: int, name: str) -> bool:
        async for listed in workspace_pipelines(broker, workspace_id, token, timeout):
            if any(p.name == name for p in listed.pipelines):
                return True
        return False

    deps = handlers.Deps(pool=runtime.db, objects=runtime.objects, settings=settings.logs,
                         reader=SegmentReader(runtime.objects),
                         membership=lambda token: bus_membership(broker, token, timeout),
                         pipeline_exists=pipeline_exists)
    # ingestion has its own connection: its large fetches never hold up commands and queries
    ingest_nc = await nats.connect(settings.nats.url, name="railyard-log_store-ingest", max_reconnect_attempts=-1,
                                   reconnect_time_wait=0.5, **connect_options(settings.nats))
    runtime.extras.update(ingest_nc=ingest_nc)

    async def publish(subject: str, event: Any) -> None:
        await publish_event(broker, subject, event)

    # a quarantined batch's event goes out from the outbox (store.EVENT_TYPES; shared/outbox.py), written with its
    # quarantine row: a publish that fails no longer loses it, nor holds up ingestion while it waits for the ack
    outbox = Outbox(runtime.db, publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELD,
                    what="log store events", rows=store)
    outbox_task = asyncio.create_task(outbox.run())
    runtime.extras.update(outbox=outbox, outbox_task=outbox_task)
    # whose each deployment is, from the deployer's events.pipeline.deployed: ingestion checks each batch's header
    # the LISTEN for deployments other log-store processes record (held batches) has a connection of its own, not
    # one of the pool's (Deployments.listen)
    deployments = Deployments(runtime.db, connect=partial(asyncpg.connect, settings.postgres.dsn,
                                                          timeout=LISTEN_WAIT, command_timeout=LISTEN_WAIT))
    # the consumers' set-up tries (up to shared.service.CONSUMERS_WITHIN while JetStream does not answer) end at
    # once on a SIGTERM (runtime.stop): nothing more is started, and serve runs the stop hook
    await deployments.start(ingest_nc.jetstream(), runtime.stop)
    runtime.extras.update(deployments=deployments)
    if runtime.stop.is_set():
        return
    ingestor = handlers.Ingestor(deps, ingest_nc.jetstream(), events_committed=outbox.wake, deployments=deployments,
                                 nc=ingest_nc)
    runtime.extras.update(ingestor=ingestor)
    await ingestor.start(runtime.stop)
    if runtime.stop.is_set():
        return

    async def query(msg: Any, token: str | None) -> tuple[bytes, dict[str, str]]:
        cmd = _parse(GetLogs, msg.data)
        table, page = await handlers.get_logs(deps, await verifier.verify(token), token, cmd)
        return await asyncio.to_thread(arrow_codec.to_ipc_stream, table), {PAGE_HEADER: page.model_dump_json()}

    async def field(msg: Any, token: str | None) -> tuple[bytes, dict[str, str]]:
        """Values of one logged field; above the bus limit they go through object storage by reference."""
        cmd = _parse(ReadLogField, msg.data)
        # no token: another service (the assay scheduler) asking on the bus, which is trusted like the
        # engine's subjects; with a token the caller must be a member of the workspace
        principal = await verifier.verify(token) if token else None
        values = await handlers.read_field(deps, principal, token, cmd)
        body = await asyncio.to_thread(arrow_codec.to_ipc_stream, pa.table({"value": values}))
        out = {FIELD_HEADER: LogField(count=len(values), segments=0).model_dump_json()}
        if above_bus_limit(body, nc.max_payload):
            out[TABLE_REF], body = await put_table(runtime.objects, FIELD_PREFIX, body), b""
        return body, out

    # several at once, as the command subscribers (shared/bus_workers.py): a large page must not hold up the others
    at_once = settings.nats.command_workers
    query_cb = ConcurrentCallback(_raw_responder(nc, query, PAGE_TOO_LARGE), at_once)
    field_cb = ConcurrentCallback(_raw_responder(nc, field, "ask for a narrower window (start_ms, end_ms)"),
                                  at_once)
    query_sub = await nc.subscribe(subjects.LOG_STORE_QUERY, queue=subjects.queue_group(NAME), cb=query_cb.take)
    field_sub = await nc.subscribe(subjects.LOG_STORE_READ_FIELD, queue=subjects.queue_group(NAME), cb=field_cb.take)

    async def maintenance_timer() -> None:
        while True:
            await asyncio.sleep(settings.logs.maintenance_interval)
            try:
                report = await handlers.maintain(deps)
                if report.compacted_segments or report.expired_segments or report.purged_objects:
                    log.info("log maintenance: %s", report.model_dump())
            except Exception:
                log.exception("log maintenance failed")

    timer = asyncio.create_task(maintenance_timer())
    runtime.extras.update(deps=deps, verifier=verifier, timer=timer, field_sub=field_sub, field_cb=field_cb,
                          query_sub=query_sub, query_cb=query_cb)


async def stop(runtime: Runtime) -> None:
    for name in ("timer",):
        task = runtime.extras.get(name)
        if task is not None:
            task.cancel()
    for name in ("query", "field"):  # every query taken is answered first, while what it reads is still open
        sub = runtime.extras.get(f"{name}_sub")
        if sub is not None:
            await drain_raw(sub, runtime.extras[f"{name}_cb"], runtime.broker.config.graceful_timeout or 15.0)
    ingestor = runtime.extras.get("ingestor")
    if ingestor is not None:
        await ingestor.stop()
    deployments = runtime.extras.get("deployments")
    if deployments is not None:
        await deployments.stop()
    ingest_nc = runtime.extras.get("ingest_nc")
    if ingest_nc is not None:
        await ingest_nc.close()  # unacknowledged messages are simply redelivered
    outbox_task, outbox = runtime.extras.get("outbox_task"), runtime.extras.get("outbox")
    if outbox_task is not None:  # what is unsent: now if the bus takes it, else at a start (this or another process)
        await outbox.stop(outbox_task)
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
