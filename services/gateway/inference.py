"""The inference API: `POST /v1/api/pipelines/infer/<deployment>/<pipeline>` with pandas-records JSON or an
Arrow IPC file/stream, answered in the seed's shape (time, in, out, check_failures, metadata) or as Arrow when
`Accept` asks for it. The gateway converts formats and checks who may call; the engine replicas validate the
tensors against the model and run it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import nats.errors
import numpy as np
import orjson
import pyarrow as pa
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from services.gateway.accept import answer_type
from services.gateway.body import read_request_body
from services.gateway.bus_request import requester_of
from services.gateway.coalesce import Coalescer
from services.gateway.errors import send_error
from services.gateway.limits import declared_length, too_large
from services.gateway.records_answer import check_json_answerable, seed_records_json
from services.gateway.records_parse import read_records
from shared import subjects
from shared.arrow_codec import (
    NARROWED_FOR,
    NO_ROWS,
    STALE_ROUTE,
    check_column_count,
    flat_array,
    float_narrowing,
    from_ipc,
    narrow,
    to_ipc_file,
    to_ipc_stream,
)
from shared.authz import (
    KIND_INFERENCE,
    Principal,
    bus_membership,
    deployment_not_found,
    out_of_scope,
    require_inference_access,
)
from shared.bus import BUS_DOWN, ENGINE_FIRST_ATTEMPT, raise_for_error_header, request
from shared.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RailyardError,
    Unauthorized,
    Unavailable,
    UpstreamTimeout,
    rows_changed,
)
from shared.logrecords import ATTEMPT, REQUEST_ID, TIME_HEADER, page_values
from shared.messages.deployer import DeploymentRoute, ResolveDeployment
from shared.not_serving import CRASH_LOOP, CrashLoop, not_serving  # noqa: F401 (CRASH_LOOP, CrashLoop: here before)
from shared.objectstore import BUCKET_TABLES
from shared.service import Runtime
from shared.table_transport import INFERENCE_PREFIX, META_HEADER, TABLE_REF, above_bus_limit, put_table, take_table

log = logging.getLogger("railyard.gateway.inference")
OIP_HEADER_LENGTH = "Inference-Header-Content-Length"  # services/gateway/oip.py's binary extension
ARROW_FILE = "application/vnd.apache.arrow.file"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
JSON = "application/json"
INFER_TYPES = (JSON, ARROW_FILE, ARROW_STREAM)
"""What the records route answers by Accept (services/gateway/accept.py): the seed's records JSON (the default: `*/*`
or no Accept, as Wallaroo's clients send), an Arrow file or stream; 406 for none of them."""
INFER_ROUTE = "pipelines/infer"  # the 406's words
JSON_RECORDS = "application/json; format=pandas-records"
NARROW_MIN_ROWS = 64  # the gateway narrows a request's float64/int columns from this many rows (RouteCache.narrowed)
ROUTE_TTL = 2.0
ROUTE_MAX_AGE = 20.0  # seconds a running deployment's route is used while it is refreshed in the background
MEMBER_TTL = 30.0
INFER_TIMEOUT = 30.0
FIRST_ATTEMPT = ENGINE_FIRST_ATTEMPT  # one figure for every engine caller's re-send (shared.bus.request_engine)


@functools.lru_cache(maxsize=256)
def _float_columns(input_schema: str) -> dict[str, pa.DataType]:
    """A route's float32/float16 input columns, from its base64 Arrow schema (decoded once per schema)."""
    return float_narrowing(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(input_schema))))


class RouteCache:
    """Deployment routes and memberships, cached briefly so an inference costs no extra round trip.

    A running deployment's route older than ROUTE_TTL is still used while one request refreshes it in the
    background (resolving asks the deployer, which probes every replica unless one answered Running within 10 s,
    deployer/backend.py serving_now, and before 2026-12-05 probed them on every resolve: done inline, it was a
    latency spike every ROUTE_TTL seconds); past ROUTE_MAX_AGE, or when the deployment was not running, a request
    waits for a fresh one. Who may call is checked on every request either way (`authorize`), and only a caller
    who passed it starts the refresh (`reach`): an outsider's token resolves to NotFound, which drops the route."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[float, DeploymentRoute]] = {}
        self.members: dict[tuple[str, int], float] = {}
        self.membership_changes = 0  # heard by gateway/app.py forget_membership: a check under way is not kept
        self.refreshing: dict[str, asyncio.Task] = {}
        self.resolving: dict[str, tuple[str, float, asyncio.Task]] = {}  # a resolve requests wait for: its token,
        # when it started, it
        self.coalescer: Coalescer | None = None

    async def _resolve(self, runtime: Runtime, name: str, token: str) -> DeploymentRoute:
        if "\x00" in name:  # no deployment's name holds a NUL, and no command may carry one (ValidationError: 500)
            raise deployment_not_found(name)
        started = time.monotonic()
        route = await request(runtime.broker, subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, ResolveDeployment(name=name),
                              token=token, timeout=runtime.settings.nats.request_timeout, reply_model=DeploymentRoute)
        self.routes[name] = (started, route)
        return route

    async def _resolve_shared(self, runtime: Runtime, name: str, token: str, since: float = 0.0,
                              again: bool = True) -> DeploymentRoute:
        """The deployer's route now, for a request that waits for it: concurrent requests for one deployment share
        one resolve under way (the deployer probes every replica for each unless one answered Running lately; before
        2026-12-05 each request to a deployment not Running made its own). Its route is each request's, authorized by
        each (`reach`), as a cached route is. Its error is shared by the requests with the resolving request's token
        only, and never cached: a resolve answers by its token (an outsider's is NotFound, a member's may say more),
        so a request with another token, whose resolve failed, asks the deployer with its own (shared again by the
        requests of its token: with none of another's the second time). `since`: a resolve started before then is
        not joined (the engine had no responder for this request: what the deployer says from then on)."""
        joined = self.resolving.get(name)
        if joined is None or joined[1] < since:
            task = asyncio.create_task(self._resolve(runtime, name, token))
            joined = self.resolving[name] = (token, time.monotonic(), task)
            task.add_done_callback(functools.partial(self._resolved, name, joined))
        leader, _, task = joined
        try:
            return await asyncio.shield(task)  # shared: one caller's cancel does not end it for the others
        except Exception:
            if leader == token:
                raise
        if again:
            return await self._resolve_shared(runtime, name, token, since, again=False)
        return await self._resolve(runtime, name, token)

    def _resolved(self, name: str, joined: tuple[str, float, asyncio.Task], task: asyncio.Task) -> None:
        if self.resolving.get(name) is joined:
            del self.resolving[name]
        if not task.cancelled():
            task.exception()  # retrieved: every request that waited for it may have gone

    async def reach(self, runtime: Runtime, principal: Principal, token: str, name: str) -> DeploymentRoute:
        """The route of deployment `name` for a caller who may infer on it (else the not-found error), its
        background refresh started when it is due. Only an authorized caller's token refreshes a route: an
        outsider's resolve answers NotFound, and `_refreshed` would drop the route for every member."""
        route = await self.route(runtime, name, token)
        await self.authorize(runtime, principal, token, route)
        self._refresh_if_due(runtime, name, token)
        return route

    async def fresh(self, runtime: Runtime, principal: Principal, token: str, name: str) -> DeploymentRoute:
        """The deployer's route now, not the cache's (which may be ROUTE_MAX_AGE old, from before a model swap), for
        a caller who may infer on it: asked only where the cached one refused a request (OIP outputs). It joins a
        resolve under way (the refresh `reach` started, or another refusal's): requests refused at once cost the
        deployer one resolve (a probe of every replica when none answered Running lately), as a request for a
        deployment not running does."""
        task = self.refreshing.get(name) or self._start_refresh(runtime, name, token)
        route = await asyncio.shield(task)  # shared: one caller's cancel does not end it for the others
        await self.authorize(runtime, principal, token, route)
        return route

    async def route(self, runtime: Runtime, name: str, token: str) -> DeploymentRoute:
        """The cached route (running, younger than ROUTE_MAX_AGE) or a fresh one. Not yet authorized (`reach`)."""
        cached = self.routes.get(name)
        if cached and cached[1].status == "Running" and time.monotonic() - cached[0] < ROUTE_MAX_AGE:
            return cached[1]
        return await self._resolve_shared(runtime, name, token)

    def _refresh_if_due(self, runtime: Runtime, name: str, token: str) -> None:
        cached = self.routes.get(name)
        if cached and cached[1].status == "Running" and time.monotonic() - cached[0] >= ROUTE_TTL \
                and name not in self.refreshing:
            self._start_refresh(runtime, name, token)

    def _start_refresh(self, runtime: Runtime, name: str, token: str) -> asyncio.Task:
        task = asyncio.create_task(self._resolve(runtime, name, token))
        self.refreshing[name] = task
        task.add_done_callback(lambda done: self._refreshed(name, done))
        return task

    async def ask(self, runtime: Runtime, route: DeploymentRoute, token: str, table: pa.Table,
                  principal: Principal | None = None) -> tuple[dict[str, str], pa.Table]:
        """(the engine's answer headers, the output table), or its typed error. Concurrent requests to a
        deployment whose steps allow it travel together (services/gateway/coalesce.py). When no replica answers,
        what the deployer says now (the cached route may be stale: undeployed is 404, starting 503; a crash loop's
        reason only to a `principal` who may read the deployment's status: not_serving)."""
        name, asked = route.name, time.monotonic()
        try:
            if route.batchable:
                if self.coalescer is None:
                    async def send(deployment: str, payload: bytes) -> tuple[dict[str, str], bytes]:
                        reply = await _ask_engine(runtime, deployment, payload)
                        return dict(reply.headers or {}), reply.data

                    self.coalescer = Coalescer(send)
                sent = self.narrowed(route, table)
                try:
                    return await self.coalescer.ask(name, sent)
                except Conflict as exc:  # a replica of another version: the route is stale, resend as sent
                    if exc.code != STALE_ROUTE or sent is table:
                        raise
                    self.routes.pop(name, None)
                    return await self.coalescer.ask(name, table)
            reply = await _ask_engine(runtime, name, to_ipc_stream(table))
            raise_for_error_header(reply.headers)
            return dict(reply.headers or {}), from_ipc(reply.data)
        except Unavailable as exc:
            # a Running route may be the cache's (up to ROUTE_MAX_AGE old): what the deployer says now (NotFound
            # when it is gone). Any other was resolved for this very request (`route` resolves a route not Running
            # every time), so it is the deployer's word already: asked again, a request to a starting deployment
            # cost two resolves, each probing every replica (none answered Running lately: deployer/backend.py
            # serving_now). Its word answers a request no replica took; a replica's own 503 (or the bus down) keeps
            # its words
            if route.status == "Running":
                route = await self._resolve_shared(runtime, name, token, since=asked)
            elif not isinstance(exc, NoEngine):
                raise
            if route.status != "Running":
                raise not_serving(route, reason_shown=principal is not None and principal.kind != KIND_INFERENCE
                                  ) from None
            raise

    def narrowed(self, route: DeploymentRoute, table: pa.Table) -> pa.Table:
        """The request's float64 and integer columns cast to the float32 (or float16) the route's model takes (a
        JSON body's numbers are float64 or int64; the model casts them anyway), marked with the pipeline version it
        was typed for, or the table itself. Only the columns the model takes as float32/float16 (an int64 input
        keeps its integers), and never an integer narrower than that type (arrow_codec.narrows: a uint8 image would
        grow 4x). The bus and the engine then carry half the bytes; the answer's echo stays the request as
        sent (docs/logs.md, "Types")."""
        if not route.input_schema or table.num_rows < NARROW_MIN_ROWS:
            return table  # a small table's bytes hardly matter, the cast's ~15 us do: the replica narrows it
        columns = _float_columns(route.input_schema)
        narrowed = narrow(table, columns) if columns else table
        if narrowed is table:
            return table
        return narrowed.replace_schema_metadata({**(narrowed.schema.metadata or {}),
                                                 NARROWED_FOR: route.pipeline_version.encode()})

    def _refreshed(self, name: str, task: asyncio.Task) -> None:
        self.refreshing.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            if isinstance(task.exception(), NotFound):  # gone: the next request resolves it and says so
                self.routes.pop(name, None)
            else:
                log.warning("refreshing the route of %s failed: %s", name, task.exception())

    async def authorize(self, runtime: Runtime, principal: Principal, token: str, route: DeploymentRoute) -> None:
        """May the caller infer on this deployment? Users: members of its workspace (cached briefly); inference
        tokens: that workspace's own. Out of reach answers exactly as a deployment that does not exist (a
        cached route was resolved for someone else, so this runs on every request, before anything else is
        said about the deployment)."""
        user = principal.kind != KIND_INFERENCE
        if not user and principal.workspace_id == route.workspace_id:
            return  # an inference token of the deployment's own workspace (require_inference_access's rule)
        key = (principal.subject, route.workspace_id)
        # the cache is the user's: a task run's token of theirs scoped to another workspace must not ride on it
        if user and not out_of_scope(principal, route.workspace_id) and \
                time.monotonic() - self.members.get(key, 0.0) < MEMBER_TTL:
            return
        changes = self.membership_changes
        await require_inference_access(bus_membership(runtime.broker, token, runtime.settings.nats.request_timeout),
                                       principal, route.workspace_id, deployment_not_found(route.name))
        if user and changes == self.membership_changes:  # read before a change heard meanwhile: maybe stale
            self.members[key] = time.monotonic()


def _read_body(content_type: str, body: bytes, max_bytes: int) -> pa.Table:
    kind = content_type.split(";")[0].strip().lower()
    if kind in (ARROW_FILE, ARROW_STREAM):
        table = from_ipc(body, max_decoded_bytes=max_bytes, validate=True)  # a compressed body decodes within the limit
        names = table.column_names  # records and OIP bodies cannot name a column twice; Arrow can
        check_column_count(len(names))
        if len(set(names)) != len(names):
            twice = sorted(name for name, times in Counter(names).items() if times > 1)
            raise InvalidRequest(f"the Arrow body names columns {twice} more than once")
        if not table.num_rows:  # as records `[]` and an OIP batch of 0 (it was sent to the engine and answered empty)
            raise InvalidRequest(f"{NO_ROWS} (an Arrow table of 0 rows)")
        return table
    if kind in ("application/json", ""):
        return read_records(body)
    raise InvalidRequest(f"unsupported Content-Type {content_type!r}: send {JSON_RECORDS!r} or {ARROW_FILE!r}")


TIME_DIGITS = 18  # ms since the epoch: 13 digits until the year 2286; 18 still fit int64 (the Arrow answer's column)


def answer_time(headers: dict[str, str], stamped: int) -> int:
    """The answer's `time`: the engine's (TIME_HEADER, the time of the request's log rows), else `stamped`, the
    gateway's own (an engine without the header; a value that is not a whole number of ms is not taken, nor one of
    more than TIME_DIGITS digits: past int64 it failed the answer's encoding, past 4,300 digits int() itself, a 500
    for an inference the engine had answered)."""
    said = headers.get(TIME_HEADER)
    if said is None or len(said) > TIME_DIGITS or not (said.isascii() and said.isdigit()):
        return stamped
    return int(said)


def seed_records(inputs: pa.Table, outputs: pa.Table, meta: dict[str, Any], at_ms: int) -> list[dict[str, Any]]:
    """One record per row: {time, in: {...}, out: {...}, check_failures: [], metadata: {...}} as the seed shows.
    float32 and float16 values are numpy's, as a log page's (`page_values`): serialize with orjson's
    OPT_SERIALIZE_NUMPY, which prints them in their shortest form (records_answer.py)."""
    ins = {name: page_values(inputs.column(name)) for name in inputs.column_names}
    outs = {name: page_values(outputs.column(name)) for name in outputs.column_names}
    metadata = {"last_model": meta.get("last_model", ""), "pipeline_version": meta.get("pipeline_version", ""),
                "elapsed": meta.get("elapsed", [])}
    return [{"time": at_ms, "in": i, "out": o, "check_failures": [], "metadata": metadata}
            for i, o in zip(_row_objects(ins, inputs.num_rows), _row_objects(outs, outputs.num_rows), strict=True)]


def _row_objects(columns: dict[str, list[Any]], rows: int) -> list[dict[str, Any]]:
    names = list(columns)
    if not names:  # an Arrow body may hold rows without columns
        return [{} for _ in range(rows)]
    if len(names) == 1:
        name = names[0]
        return [{name: value} for value in columns[name]]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


class NoEngine(Unavailable):
    """No replica took the request (no responders on the deployment's queue): the deployer's word on the deployment
    is the answer (RouteCache.ask)."""


@dataclass
class EngineReply:
    """An engine's answer with its table bytes fetched (from object storage when they were too large)."""

    headers: dict[str, str]
    data: bytes


async def _ask_engine(runtime: Runtime, deployment: str, payload: bytes) -> EngineReply:
    """Send to the deployment's queue group. A table above the bus payload limit goes through object storage
    by reference (both ways), and those objects are deleted once the answer is read. A replica killed while
    holding a request never answers, so a request unanswered after FIRST_ATTEMPT seconds is sent once more
    (to a live replica)."""
    nc = runtime.broker.config.connection_state.connection
    requester = requester_of(nc)
    subject = subjects.engine_infer(deployment)
    # one id for both attempts: a replica still running the first answers the second from it, and the log
    # store stores a slow or re-sent request's record once (docs/logs.md, "Re-sent requests"). 128 random bits as
    # 32 hex digits, the shape uuid4().hex had, at a quarter of its CPU (~2.7 against ~10 us a request under load:
    # docs/performance.md item 81)
    headers, staged = {REQUEST_ID: os.urandom(16).hex()}, None
    if above_bus_limit(payload, nc.max_payload):
        staged = await put_table(runtime.objects, INFERENCE_PREFIX, payload)
        headers[TABLE_REF], payload = staged, b""
    try:
        for attempt, wait in enumerate((FIRST_ATTEMPT, INFER_TIMEOUT - FIRST_ATTEMPT)):
            try:
                reply = await requester.request(subject, payload, wait,
                                                {**headers, ATTEMPT: "2"} if attempt else headers)
                break
            except nats.errors.NoRespondersError:
                raise NoEngine(f"deployment {deployment!r} has no running engine; retry shortly") from None
            except BUS_DOWN:  # a 503 as in shared.bus.request, not a 500 with a stack trace for every inference
                # of the outage
                raise Unavailable("the gateway's connection to the bus is down; retry shortly") from None
            except nats.errors.TimeoutError:
                if attempt == 1:
                    raise UpstreamTimeout(f"the engine did not answer within {INFER_TIMEOUT:g}s") from None
        answer_headers = dict(reply.headers or {})
        data = reply.data
        reference = answer_headers.get(TABLE_REF)
        if reference and reference.startswith(INFERENCE_PREFIX):
            data = await take_table(runtime.objects, answer_headers, data)
        return EngineReply(answer_headers, data)
    finally:
        if staged is not None:
            await runtime.objects.delete(BUCKET_TABLES, staged)


NO_FAILURES_CACHED_ROWS = 10_000  # larger answers build theirs: 64 kept columns of millions of rows were gigabytes


def _no_failures(rows: int) -> pa.Array:
    """The answer's `check_failures` column: an empty list per row (built once per row count up to
    NO_FAILURES_CACHED_ROWS)."""
    if rows <= NO_FAILURES_CACHED_ROWS:
        return _cached_no_failures(rows)
    return _build_no_failures(rows)


@functools.lru_cache(maxsize=64)
def _cached_no_failures(rows: int) -> pa.Array:
    return _build_no_failures(rows)


def _build_no_failures(rows: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(rows + 1, np.int32)), pa.array([], pa.string()))


class Inference:
    """The inference path, shared by the FastAPI route (docs) and the raw ASGI fast path in front of it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.cache = RouteCache()

    async def run(self, principal: Principal, token: str, deployment: str, pipeline: str, content_type: str,
                  accept: str, body: bytes) -> tuple[bytes, str, dict[str, str]]:
        """(answer body, media type, extra headers) for one inference."""
        runtime = self.runtime
        # the Accept header first (a 406 parses no body; the fast path asks before reading it), then the body: a
        # malformed body or an Arrow bomb (413) is refused before any bus round trip
        media = answer_type(accept, INFER_TYPES, INFER_ROUTE)
        table = _read_body(content_type, body, runtime.settings.gateway.max_body_bytes)
        arrow_answer = media != JSON
        if not arrow_answer:
            check_json_answerable(table, ARROW_STREAM)
        route = await self.cache.reach(runtime, principal, token, deployment)
        if route.pipeline_name != pipeline:
            raise NotFound(f"deployment {deployment!r} does not serve pipeline {pipeline!r}")
        # a route said "Starting" is sent all the same (as OIP's is): the deployer says it when no replica answered
        # its status probe (one that answered before, busy, keeps Running for a while: deployer/backend.py
        # SILENT_KEPT_FOR), and this refusal was a 503 while a replica served; with no replica serving, `ask`
        # answers the 503 of this route's word (no responders)
        at_ms = int(time.time() * 1000)
        headers, outputs = await self.cache.ask(runtime, route, token, table, principal)
        at_ms = answer_time(headers, at_ms)
        rows = table.num_rows
        if outputs.num_rows != rows:  # both answers pair the rows: the engine refuses this (handlers.rows_changed),
            raise rows_changed(None, outputs.num_rows, rows)  # an older one answered it: its words (no step known)
        meta = headers.get(META_HEADER, "{}")
        if arrow_answer:
            combined = pa.Table.from_arrays(
                [flat_array(np.full(rows, at_ms, np.int64)), *table.columns, *outputs.columns, _no_failures(rows)],
                names=["time", *(f"in.{c}" for c in table.column_names),
                       *(f"out.{c}" for c in outputs.column_names), "check_failures"])
            encode = to_ipc_stream if media == ARROW_STREAM else to_ipc_file
            return encode(combined), media, {META_HEADER: meta}  # the engine's JSON, passed on as it is
        return seed_records_json(table, outputs, orjson.loads(meta), at_ms, seed_records), "application/json", {}


    async def run_oip(self, principal: Principal, token: str, model: str, header_length: str | None,
                      body: bytes) -> tuple[bytes, dict[str, str]]:
        """(answer body, headers) for one Open Inference Protocol inference (services/gateway/oip.py)."""
        from services.gateway.oip import check_outputs, encode_response, in_oip_words, parse_request

        runtime = self.runtime
        route = await self.cache.reach(runtime, principal, token, model)
        parsed, table = parse_request(body, header_length)
        try:
            check_outputs(parsed, route)
        except InvalidRequest:  # the cached route may predate a model swap: its outputs are the old model's
            route = await self.cache.fresh(runtime, principal, token, model)
            check_outputs(parsed, route)
        try:
            _, outputs = await self.cache.ask(runtime, route, token, table, principal)
        except RailyardError as exc:  # the engine's words are the records route's (columns): OIP's are inputs
            raise in_oip_words(exc) from None
        if outputs.num_rows != table.num_rows:  # as run's (an older engine answered it): a client reads the
            # outputs' first dimension as the request's batch, a row for each of its rows
            raise rows_changed(None, outputs.num_rows, table.num_rows)
        return encode_response(parsed, model, route.pipeline_version, outputs)


INFER_PREFIX = "/v1/api/pipelines/infer/"
OIP_PREFIX = "/v2/models/"
OIP_SUFFIX = "/infer"


class InferenceFastPath:
    """Serves `POST /v1/api/pipelines/infer/<deployment>/<pipeline>` straight from ASGI, without the web
    framework's routing, middleware and dependency resolution (most of an inference's cost at batch 1);
    everything else goes to the application behind it."""

    def __init__(self, app: Any, inference: Inference, verifier, max_body_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.inference = inference
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: dict, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if path.startswith(INFER_PREFIX):  # <deployment>/<pipeline>
            parts = path[len(INFER_PREFIX):].split("/")
            served = len(parts) == 2 and all(parts)
        elif path.startswith(OIP_PREFIX) and path.endswith(OIP_SUFFIX):  # /v2/models/<model>/infer
            parts = [path[len(OIP_PREFIX):-len(OIP_SUFFIX)]]
            served = bool(parts[0]) and "/" not in parts[0]
        else:
            served = False
        if not served:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        read = False
        # the Open Inference Protocol answers every error in its own shape, a refused token or size included
        shape = "oip" if len(parts) == 1 else "api"
        try:
            declared = declared_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                raise too_large(self.max_body_bytes)
            # the token before any body byte: an unauthenticated client gets 401 without being read
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
            principal = await self.verifier().verify(token.strip())
            if len(parts) == 2:  # a 406 before the body is read: a client asking for CSV does not upload its rows
                answer_type(headers.get("accept", ""), INFER_TYPES, INFER_ROUTE)
            body = await read_request_body(receive, self.max_body_bytes, self.body_timeout)
            if body is None:
                return
            read = True
            if len(parts) == 1:  # the Open Inference Protocol
                answer, extra = await self.inference.run_oip(principal, token.strip(), parts[0],
                                                             headers.get(OIP_HEADER_LENGTH.lower()), body)
                media = extra.pop("Content-Type")
            else:
                answer, media, extra = await self.inference.run(
                    principal, token.strip(), parts[0], parts[1], headers.get("content-type", ""),
                    headers.get("accept", ""), body)
        except RailyardError as exc:
            # not read (whole): close the connection, the rest of the body is never parsed as a next request
            await send_error(send, exc, shape, close=not read)
            return
        except Exception:  # like the app's own handler: no details leave the gateway
            log.exception("inference failed in the gateway")
            await send_error(send, RailyardError("internal error"), shape)
            return
        raw = [(b"content-type", media.encode()), (b"content-length", str(len(answer)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": answer})


def add_inference_routes(app: FastAPI, runtime: Runtime, caller, inference: Inference) -> None:
    from services.gateway.oip import add_oip_routes

    add_oip_routes(app, runtime, caller, inference)

    @app.post("/v1/api/pipelines/infer/{deployment}/{pipeline}", tags=["inference"])
    async def infer(deployment: str, pipeline: str, request_: Request,
                    principal: Principal = Depends(caller)) -> Response:
        """Run an inference: pandas-records JSON or Arrow in; the seed's records or Arrow out (served by the
        fast path in front of the application; this route documents it)."""
        token = request_.headers["authorization"].partition(" ")[2].strip()
        body, media, extra = await inference.run(principal, token, deployment, pipeline,
                                                 request_.headers.get("content-type", ""),
                                                 request_.headers.get("accept", ""), await request_.body())
        return Response(body, media_type=media, headers=extra)
