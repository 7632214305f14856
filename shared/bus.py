"""The bus: broker factory, typed commands with an error envelope, requests, streams and events.

A command handler is a plain async function `handler(cmd: SomeCommand, ctx: CallContext)` that
returns a pydantic model (or a dict). `command(router, subject, service=...)` turns it into a
FastStream subscriber in the service's queue group which always answers with a `Reply`: invalid
input becomes `invalid_request`, a `RailyardError` keeps its code, anything else is logged and
answered as a bare `internal` error; a reply that would not fit the bus's payload limit is answered
`reply_too_large` (422) at once, where publishing it would fail and leave the caller waiting for its timeout.
It answers on its caller's inbox only: a request naming another reply subject is not run and not answered
(`answers_elsewhere`, shared/raw_bus.py), and replies to the shared `client` inbox are sealed (shared/sealed.py).
`request()` is the other half: it sends a command, waits, and returns the reply's data or raises the error the
service raised.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import nats.errors
import pydantic_core
from faststream.exceptions import SkipMessage
from faststream.nats import NatsBroker, NatsResponse, NatsRouter
from faststream.nats.annotations import Client, NatsMessage
from pydantic import BaseModel, ValidationError

from shared import sealed, subjects
from shared.bus_workers import default_command_workers
from shared.data_errors import database_503_said, database_call_site, database_unavailable, refused_request_value
from shared.errors import (
    ErrorBody,
    InvalidRequest,
    PayloadTooLarge,
    RailyardError,
    ReplyTooLarge,
    Unavailable,
    UpstreamTimeout,
    error_from_body,
    validation_message,
)
from shared.faststream_logs import PULL_TIMEOUT_RETRIES
from shared.logrecords import ATTEMPT, REQUEST_ID
from shared.messages.base import Event, Message, Reply
from shared.raw_bus import (  # noqa: F401 - defined there for FastStream-free processes
    ERROR_HEADER,
    PublishRefusals,
    PublishRefused,
    answers_elsewhere,
    connect_options,
    error_headers,
    log_refused_reply,
)
from shared.request_values import refuse_lax_scalars
from shared.settings import COMMAND_DRAIN_TIMEOUT, Settings

log = logging.getLogger("railyard.bus")

TOKEN_HEADER = "authorization"
_MALFORMED = object()
REPLY_HEADROOM = 4 * 1024
"""Bytes of the bus payload limit kept for a reply's headers (NATS counts them in the limit)."""
JSON_HEADERS = {"content-type": "application/json"}
BUS_DOWN = (nats.errors.OutboundBufferLimitError, nats.errors.ConnectionClosedError,
            nats.errors.ConnectionDrainingError)
"""A request's failures that mean this process's connection to NATS is away (its reconnect buffer full: every
request of a NATS outage past the first ~2 MiB) or closing: answered as Unavailable (503) like nobody listening,
not as an uncaught nats error (a 500, and the end of any loop that only expects RailyardError, e.g. the token
verifiers' revocation poll). `request`, `raw_request` and the gateway's inference path catch these."""

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class CallContext:
    """What a handler knows about the call besides its message: the caller's token and headers."""

    subject: str
    token: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def nats_address(url: str) -> tuple[str, int]:
    """host and port of the first server in a NATS URL list."""
    first = url.split(",")[0].strip()
    parsed = urlparse(first if "://" in first else f"nats://{first}")
    return parsed.hostname or "127.0.0.1", parsed.port or 4222


async def check_reachable(url: str, timeout: float) -> None:
    """Raise Unavailable with a one-line reason when nothing answers at the NATS URL."""
    host, port = nats_address(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
        raise Unavailable(f"cannot reach NATS at {host}:{port} ({reason})") from None
    writer.close()


def _with_credentials(url: str, user: str, password: str) -> list[str]:
    """The server URLs with the identity's credentials in them (FastStream passes URLs through to nats.py)."""
    from urllib.parse import quote

    if not user:
        return [u.strip() for u in url.split(",")]
    servers = []
    for server in url.split(","):
        server = server.strip()
        scheme, _, rest = server.rpartition("://")
        servers.append(f"{scheme or 'nats'}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}")
    return servers


JETSTREAM_TIMEOUT = 5.0
"""Seconds a JetStream request waits for the server's answer: a publish's ack (`publish_event`) and the API
requests made on the broker's JetStream context (`make_broker`'s `js_options`: at `broker.start()` each durable pull
consumer's CONSUMER.INFO, and CREATE when it is missing; `ensure_streams`, `wait_for_streams`). nats-py's own default
for the API requests, named here so a publish waits as long: FastStream waits 0.5 s for a publish's ack when not told
otherwise, too short for a JetStream that fsyncs every write before it acknowledges (`sync_interval: always`, the
embedded stack's and docker-compose's) on a loaded host. A fixed figure, not `nats.request_timeout`: that is how long
a caller waits for another service's answer (an operator raises it for slow handlers), this is the server's own
answer, and `publish_event`'s callers hold no settings."""


def make_broker(settings: Settings, name: str) -> NatsBroker:
    """A NatsBroker for one service process, connecting as the process's bus identity; it connects only when
    started."""

    refusals = PublishRefusals()

    async def quiet_error(exc: Exception) -> None:
        log.warning("nats: %s", exc or type(exc).__name__)
        refusals.note(exc)

    options = connect_options(settings.nats)
    logger = logging.getLogger(f"railyard.{name}.faststream")
    logger.addFilter(PULL_TIMEOUT_RETRIES)  # a pull consumer's fetch timeout is no error (shared/faststream_logs.py)
    broker = NatsBroker(
        _with_credentials(settings.nats.url, settings.nats.user, settings.nats.password),
        inbox_prefix=options.get("inbox_prefix", "_INBOX"),
        name=f"railyard-{name}",
        connect_timeout=settings.nats.connect_timeout,
        error_cb=quiet_error,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        graceful_timeout=COMMAND_DRAIN_TIMEOUT,
        js_options={"timeout": JETSTREAM_TIMEOUT},
        logger=logger,
        log_level=logging.DEBUG,  # per-message "Received/Processed" lines only when debugging
    )
    _REFUSALS[broker] = refusals
    return broker


_REFUSALS: weakref.WeakKeyDictionary[Any, PublishRefusals] = weakref.WeakKeyDictionary()


def publish_refusals(broker: Any) -> PublishRefusals | None:
    """make_broker's PublishRefusals of `broker`; None for a broker it did not make (a test's, FastStream's in-memory
    one): its violations are not known, and a call to a refused subject ends at its timeout as before."""
    try:
        return _REFUSALS.get(broker)
    except TypeError:  # not weakly referable
        return None


def _decode_json(msg: Any) -> Any:
    raw = msg.body
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _MALFORMED


def _command_model(handler: Callable[..., Any]) -> type[Message]:
    params = list(inspect.signature(handler, eval_str=True).parameters.values())
    model = params[0].annotation if params else None
    if not (isinstance(model, type) and issubclass(model, Message)):
        raise TypeError(f"{handler.__qualname__}: first parameter must be annotated with a Message model")
    return model


def reply_ok(result: BaseModel | dict[str, Any] | None) -> Reply:
    if result is None:
        data: dict[str, Any] = {}
    elif isinstance(result, BaseModel):
        data = result.model_dump(mode="json", by_alias=True)
    else:
        data = result
    return Reply(ok=True, data=data)


def reply_error(exc: RailyardError) -> Reply:
    return Reply(ok=False, error=exc.body(), status=exc.status)


async def run_command(
    handler: Callable[[Any, CallContext], Awaitable[Any]],
    model: type[Message],
    payload: Any,
    ctx: CallContext,
) -> Reply | EncodedData:
    """Validate the payload, call the handler, and wrap whatever happens in a Reply (an EncodedData answer is left as
    it is: encode_reply wraps it)."""
    cmd: Message | None = None
    try:
        if payload is _MALFORMED:
            raise InvalidRequest("message body is not valid JSON")
        try:
            cmd = model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest(validation_message(exc.errors())) from None
        refuse_lax_scalars(payload, cmd)  # {"dry_run": "false"} is no boolean, {"id": true} no number
        result = await handler(cmd, ctx)
        return result if isinstance(result, EncodedData) else reply_ok(result)
    except RailyardError as exc:
        return reply_error(exc)
    except Exception as exc:
        refused = refused_request_value(exc, cmd)
        if refused is not None:
            # PostgreSQL (or asyncpg encoding a parameter) refused a value the caller sent: a number beyond an
            # `integer` column, a text beyond a `varchar(n)`. A backstop behind the commands' own checks
            # (shared/messages/base.py); the answer names the field, never the SQL. Any other data error (a
            # division by zero, an overflow of our own arithmetic) is a fault of ours: a 500 below.
            log.warning("refused a value of the request in %s: %s", ctx.subject, exc)
            return reply_error(refused)
        unavailable = database_unavailable(exc, ctx.subject)
        if unavailable is not None:
            # PostgreSQL restarting, failing over, out of connections: 503 `unavailable`, which clients ask again
            # (the gateway's Retry-After), not the 500 of a bug; logged without its traceback, once per command, with
            # the line that asked the database (a slow query's timeout is answered so too). A deadlock or serialization
            # failure is such a 503 too (the transaction rolled back whole), logged as that, not as no answer
            log.warning("%s: 503, %s: %r%s", ctx.subject, database_503_said(exc), exc, database_call_site(exc))
            return reply_error(unavailable)
        log.exception("unhandled error in %s", ctx.subject)
        return reply_error(RailyardError("internal error"))


class EncodedData(bytes):
    """A command's answer already encoded: the JSON object that is an ok reply's `data`, as bytes. A handler that
    answers a long list builds it from its rows at once (auth's users/query: docs/performance.md item 57) instead of
    a model per item encoded twice; `encode_reply` puts it in the envelope as it is, and the gateway passes it on
    (`request_encoded`). Its content must be what the command's reply model would encode (a test says so)."""


_OK_HEAD, _OK_TAIL = pydantic_core.to_json(Reply(ok=True, data={"_": 0})).split(b'{"_":0}')
"""An ok reply's JSON around its data, as pydantic encodes a Reply: `{"ok":true,"data":` and
`,"error":null,"status":200}`."""


def reply_limit(max_payload: Any) -> int | None:
    """The bytes a reply may carry on a bus whose payload limit is `max_payload` (a connection's `max_payload`, learnt
    from the server when connecting): that less REPLY_HEADROOM for headers; None when it is not known (not an int:
    not connected, FastStream's in-memory broker). encode_reply's bound, and auth's early users/query check."""
    return max_payload - REPLY_HEADROOM if isinstance(max_payload, int) else None


def encode_reply(reply: Reply | EncodedData, max_payload: int | None, subject: str,
                 too_large_hint: str | None = None) -> bytes:
    """The reply's JSON bytes (EncodedData: an ok reply with that data), or a `reply_too_large` error's when they would
    not fit a bus whose payload limit is `max_payload` (less REPLY_HEADROOM for headers; None: no known limit, as in
    FastStream's in-memory broker). NATS refuses a larger message, so publishing it would only be logged and the
    caller would wait for its timeout (a 504 telling nobody what to change). The error names the sizes and what to
    ask instead: `too_large_hint` (the command's paging or filters), or a generic line."""
    try:
        body = _OK_HEAD + reply + _OK_TAIL if isinstance(reply, EncodedData) else pydantic_core.to_json(reply)
    except pydantic_core.PydanticSerializationError:
        log.exception("the reply to %s cannot be encoded as JSON", subject)
        return pydantic_core.to_json(reply_error(RailyardError("internal error")))
    if (limit := reply_limit(max_payload)) is None or len(body) <= limit:
        return body
    log.warning("the reply to %s is %d bytes, above the bus limit (%d): answered reply_too_large", subject,
                len(body), limit)
    return pydantic_core.to_json(reply_error(reply_too_large(len(body), limit, too_large_hint)))


def reply_too_large(size: int, limit: int, hint: str | None = None) -> ReplyTooLarge:
    """The typed 422 for an answer of `size` bytes that a bus carrying at most `limit` cannot take: the sizes, and
    `hint` (what to ask instead) or a generic line. Commands (encode_reply) and the log store's raw replies."""
    hint = hint or "ask for less: a page (limit and cursor where the command has them) or narrower filters"
    return ReplyTooLarge(f"the answer would be {byte_size(size)}, above the {byte_size(limit)} a reply may carry on "
                         f"the bus: {hint}")


def byte_size(count: int) -> str:
    """`count` bytes for a message: "8.0 MiB" from 1 MiB, "100.6 KiB" below."""
    return f"{count / 1024**2:.1f} MiB" if count >= 1024**2 else f"{count / 1024:.1f} KiB"


def command(router: NatsRouter | NatsBroker, subject: str, *, service: str, max_workers: int | None = None,
            too_large_hint: str | None = None):
    """Register `handler(cmd, ctx)` as the service's queue-group subscriber for a command subject; `max_workers`
    commands at once (None: the process's `nats.command_workers`, shared/bus_workers.py; 1: each handled before
    the next is read, for a handler that must see one at a time, which says why). `too_large_hint` tells a caller
    whose answer is above the bus limit how to ask for less (`encode_reply`). Before the handler: a request whose
    reply subject is not an inbox is dropped (`answers_elsewhere`: not run, nothing published, a rate-limited
    warning), one to the shared `client` inbox without a reply key refused (shared/sealed.py)."""

    def decorate(handler: Callable[[Any, CallContext], Awaitable[Any]]):
        model = _command_model(handler)
        workers = default_command_workers() if max_workers is None else max_workers

        async def subscriber(body: Any, message: NatsMessage, nc: Client) -> NatsResponse:
            reply_to = message.raw_message.reply
            if answers_elsewhere(reply_to):
                # a reply subject that is no caller's inbox (`events.model.x`): the bus would let this service's
                # answer out on any subject it may publish itself, so nothing is run and nothing answered.
                # FastStream publishes whatever a subscriber returns to the reply subject; a HandlerException
                # ends the message with no answer (its acknowledgement middleware takes it; a core message has
                # no ack to send)
                log_refused_reply(log, message.raw_message.subject, reply_to)
                raise SkipMessage
            headers = dict(message.headers or {})
            try:
                # before the handler (so before its token check): a reply to the shared `client` inbox is sealed
                # with the caller's key, and a request without one is refused having done nothing (shared/sealed.py)
                key = sealed.reply_key(headers, reply_to)
            except RailyardError as exc:
                return NatsResponse(pydantic_core.to_json(reply_error(exc)), headers=JSON_HEADERS)
            for name in (sealed.REPLY_KEY_HEADER, sealed.REPLY_KEY_HEADER.lower()):
                headers.pop(name, None)  # the handler never sees the caller's key (reply_key reads either spelling)
            auth = headers.get(TOKEN_HEADER) or headers.get(TOKEN_HEADER.title())
            token = auth[7:] if auth and auth.lower().startswith("bearer ") else auth
            ctx = CallContext(subject=message.raw_message.subject, token=token, headers=headers)
            reply = await run_command(handler, model, body, ctx)
            # the server's payload limit, learnt when connecting (reply_limit: None when it is not an int); a sealed
            # reply's few dozen bytes more than its plain JSON fit REPLY_HEADROOM
            encoded = encode_reply(reply, getattr(nc, "max_payload", None), ctx.subject, too_large_hint)
            if key is None:
                return NatsResponse(encoded, headers=JSON_HEADERS)
            sealed_body, marker = sealed.seal(key, reply_to, encoded, JSON_HEADERS)
            return NatsResponse(sealed_body, headers=marker)

        subscriber.__name__ = handler.__name__
        subscriber.__doc__ = handler.__doc__
        router.subscriber(
            subject,
            queue=subjects.queue_group(service),
            decoder=_decode_json,
            title=f"{subject}:{model.__name__}",
            description=(handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else None,
            **({"max_workers": workers} if workers > 1 else {}),
        )(subscriber)
        return handler

    return decorate


async def request(
    broker: NatsBroker,
    subject: str,
    message: BaseModel | dict[str, Any],
    *,
    timeout: float = 5.0,
    token: str | None = None,
    reply_model: type[M] | None = None,
) -> Any:
    """Send a command and return the reply's data (validated as reply_model when given).

    Raises the RailyardError the service raised, UpstreamTimeout when nobody answered in time,
    Unavailable when no service listens on the subject, its reply cannot be read (not a Reply, or its data not
    a reply_model) or the connection to the bus is down, and PayloadTooLarge when the command itself is above the
    bus payload limit (NATS refuses to send it).
    """
    response = await _send(broker, subject, message, timeout, token)
    return _reply_data(subject, response.body, reply_model)


async def request_encoded(broker: NatsBroker, subject: str, message: BaseModel | dict[str, Any], *, timeout: float,
                          reply_model: type[BaseModel], token: str | None = None) -> bytes:
    """As `request`, but the reply's data as JSON bytes: those the service encoded, passed on without reading them
    (an EncodedData answer; the gateway's users/query, docs/performance.md item 57) when their top level is shaped as
    `reply_model`'s, else the data read, checked against `reply_model` and encoded again (`reply_data_bytes`). The
    same errors as `request`."""
    response = await _send(broker, subject, message, timeout, token)
    return reply_data_bytes(subject, response.body or b"", reply_model)


def reply_data_bytes(subject: str, body: bytes, reply_model: type[BaseModel] | None = None) -> bytes:
    """The data of a reply to `subject` as JSON bytes (request_encoded's): cut out of the envelope encode_reply makes
    around an EncodedData or a model, else read and encoded again; the error an error reply carries raised.

    With `reply_model`, the cut-out bytes are passed on as they are only when their top level is the model's (an
    object whose first key is one of its fields and that has each of its required fields as a key, `_shaped_as`: a
    few byte searches, not a parse); anything else is read and validated as `request` does, so an answer of another
    shape (a list, another command's data, a required field missing) is a typed 503, not passed to the caller as it
    is. What is under the keys (auth's users) is not checked here: auth's tests compare it with the model's."""
    if body.startswith(_OK_HEAD) and body.endswith(_OK_TAIL) and len(body) > len(_OK_HEAD) + len(_OK_TAIL):
        data = body[len(_OK_HEAD):len(body) - len(_OK_TAIL)]
        if reply_model is None or _shaped_as(data, reply_model):
            return data
        log.warning("the encoded answer on %s (%d bytes) is not shaped as %s: read and checked", subject, len(data),
                    reply_model.__name__)
    read = _reply_data(subject, body, reply_model)
    return read.model_dump_json().encode() if isinstance(read, BaseModel) else pydantic_core.to_json(read)


@functools.cache
def _top_level_keys(model: type[BaseModel]) -> tuple[frozenset[bytes], tuple[bytes, ...]]:
    """A model's top-level keys as compact JSON writes them, with their colon (`"users":`): every field's, and the
    required fields'."""
    keys = {name: json.dumps(field.serialization_alias or field.alias or name).encode() + b":"
            for name, field in model.model_fields.items()}
    return frozenset(keys.values()), tuple(keys[name] for name, field in model.model_fields.items()
                                           if field.is_required())


def _shaped_as(data: bytes, model: type[BaseModel]) -> bool:
    """Whether compact JSON bytes (orjson's, pydantic's) are an object whose first key is one of `model`'s fields and
    that has each required field as a key of its own: `,"name":` cannot be inside a JSON string (its quote would be
    escaped), so a required field found so is a key, and one with no `{` or `[` before it (past the first byte) is
    the object's, not a nested one's (before, any `,"users":` counted, a nested object's too). False sends the bytes
    to the full check (reply_data_bytes), so a shape this misreads (a string before it holding a bracket) costs time,
    never a wrong answer."""
    every, required = _top_level_keys(model)
    if not (data.startswith(b'{"') and data.endswith(b"}")):
        return False
    first = data[1:data.find(b'":', 1) + 2]
    return first in every and all(data.startswith(key, 1) or _top_level_at(data, data.find(b"," + key))
                                  for key in required)


def _top_level_at(data: bytes, at: int) -> bool:
    """Whether position `at` of an object's compact JSON (a key found by `_shaped_as`; -1: none) is in the object
    itself: nothing before it opened an object or a list."""
    return at > 0 and data.find(b"{", 1, at) < 0 and data.find(b"[", 1, at) < 0


async def _send(broker: NatsBroker, subject: str, message: BaseModel | dict[str, Any], timeout: float,
                token: str | None) -> Any:
    """The reply message of a command, or the error of its sending (`request`'s)."""
    payload = message.model_dump(mode="json") if isinstance(message, BaseModel) else message
    headers = {TOKEN_HEADER: f"Bearer {token}"} if token else None
    try:
        return await broker.request(payload, subject, headers=headers, timeout=timeout)
    except (TimeoutError, nats.errors.TimeoutError):
        raise UpstreamTimeout(f"{subject.split('.')[0]} did not answer within {timeout:g}s") from None
    except nats.errors.NoRespondersError:
        raise Unavailable(f"{subject.split('.')[0]} is not running") from None
    except nats.errors.MaxPayloadError:  # refused before sending: nobody would ever answer it
        raise PayloadTooLarge(f"the command to {subject.split('.')[0]} is above the bus payload limit: send less at "
                              "once") from None
    except BUS_DOWN:  # a 503 like nobody listening, not an uncaught nats error (BUS_DOWN)
        raise Unavailable(f"{subject.split('.')[0]} cannot be reached: the connection to the bus is down") from None


def _reply_data(subject: str, body: bytes | None, reply_model: type[M] | None) -> Any:
    """An ok reply's data (as reply_model when given), or the error the reply carries raised."""
    # every reading of the reply inside the try: a reply this process cannot read (a service of another version,
    # a bug, a foreign responder on the subject) is a typed 503 naming the service, not an uncaught ValidationError
    # (a 500 with a stack trace at the gateway)
    try:
        reply = Reply.model_validate_json(body)
        if reply.ok:
            data = reply.data or {}
            return reply_model.model_validate(data) if reply_model is not None else data
    except ValidationError as exc:
        log.warning("unreadable reply on %s (%d bytes): %s", subject, len(body or b""),
                    exc.errors(include_url=False, include_input=False)[:3])
        raise Unavailable(f"{subject.split('.')[0]} answered with a reply that could not be read") from None
    raise error_from_body(reply.error or ErrorBody(code="internal", msg="internal error"), reply.status)


def stream_configs(settings: Settings) -> list[Any]:
    """The platform's JetStream streams as Railyard wants them.

    INFERENCE_LOGS: interest retention (a record is removed once the log store's durable consumer acknowledged
    it, i.e. once it is in a segment), capped in bytes and age, and `discard: new` (a publish beyond the cap is
    refused with an error the engine counts; nothing is dropped silently). Interest rather than work-queue: a
    stream created with limits retention can be moved to interest by an update (never to or from work-queue),
    and a debugging consumer may read alongside. EVENTS: limits retention with an age and a byte cap: several
    services read it with their own durable consumers (lineage reads everything), and a consumer created after
    an event was published must still find it, which interest retention would have deleted."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    return [
        StreamConfig(name=subjects.EVENTS_STREAM, subjects=list(subjects.EVENTS_SUBJECTS), storage=StorageType.FILE,
                     retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.NEW,
                     max_age=settings.nats.events_max_age, max_bytes=settings.nats.events_max_bytes,
                     duplicate_window=120.0, num_replicas=settings.nats.stream_replicas),
        StreamConfig(name=subjects.INFERENCE_LOGS_STREAM, subjects=list(subjects.INFERENCE_LOGS_SUBJECTS),
                     storage=StorageType.FILE, retention=RetentionPolicy.INTEREST, discard=DiscardPolicy.NEW,
                     max_age=settings.logs.stream_max_age, max_bytes=settings.logs.stream_max_bytes,
                     duplicate_window=120.0, num_replicas=settings.nats.stream_replicas),
    ]


def log_store_consumer_config(ack_wait: float = 30.0) -> Any:
    """The log store's durable consumer of INFERENCE_LOGS. The bootstrap step creates it with the streams when it
    does not exist yet (`ensure_log_store_consumer`), so the stream keeps every record from the first start on,
    even one published before the log store ever ran (interest retention keeps nothing nobody has asked for); the
    log store creates (and so updates) it again when it starts, no other service may."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(durable_name=subjects.INFERENCE_LOGS_DURABLE, ack_policy=AckPolicy.EXPLICIT,
                          deliver_policy=DeliverPolicy.ALL, ack_wait=ack_wait, max_ack_pending=50_000, max_deliver=-1,
                          filter_subject="logs.inference.>")


HELD_NOTE = "railyard_held"
"""Key of the log store consumer's metadata that says which batches it holds for announcements (`held_note`)."""
HELD_NOTE_BYTES = 16 * 1024


def held_note(through: int, held: dict[tuple[int, str], int]) -> dict[str, str] | None:
    """The log store consumer's metadata while it holds batches unacknowledged for their deployments' announcements
    (services/log_store/handlers.py, `Ingestor.note_held`): every message of INFERENCE_LOGS up to `through` is
    acknowledged but the held ones, whose lowest sequence per (workspace, pipeline) their headers name is `held`.
    The assay runner reads it with the consumer's info (`read_held_note`): a window waits only for batches held
    for its own pipeline. None when it does not fit HELD_NOTE_BYTES (then nothing is noted)."""
    body = json.dumps({"through": through, "held": [[w, p, seq] for (w, p), seq in sorted(held.items())]},
                      separators=(",", ":"))
    return {HELD_NOTE: body} if len(body) <= HELD_NOTE_BYTES else None


def read_held_note(metadata: dict[str, str] | None) -> tuple[int, dict[tuple[int, str], int]]:
    """`held_note`'s (through, held); (0, {}) when there is no note or it cannot be read."""
    try:
        body = json.loads((metadata or {})[HELD_NOTE])
        return int(body["through"]), {(int(w), str(p)): int(seq) for w, p, seq in body["held"]}
    except (KeyError, ValueError, TypeError):
        return 0, {}


def missing_stream_settings(current: Any, wanted: Any) -> Any | None:
    """`current` with what it lacks of `wanted` (subjects, an age or byte cap, a duplicate window; limits
    retention becomes interest only while the stream has no limits at all, i.e. it is Railyard's old default);
    None when nothing is missing. An operator's own limits are never changed."""
    import copy

    from nats.js.api import RetentionPolicy

    update = copy.deepcopy(current)
    changed = False
    missing_subjects = [s for s in wanted.subjects if s not in (update.subjects or [])]
    if missing_subjects:
        update.subjects = list(update.subjects or []) + missing_subjects
        changed = True
    unlimited = (current.max_bytes in (None, -1) and not current.max_age
                 and current.max_msgs in (None, -1))
    if wanted.max_bytes and current.max_bytes in (None, -1):
        update.max_bytes, changed = wanted.max_bytes, True
    if wanted.max_age and not current.max_age:
        update.max_age, changed = wanted.max_age, True
    if wanted.duplicate_window and not current.duplicate_window:
        update.duplicate_window, changed = wanted.duplicate_window, True
    if unlimited and current.retention == RetentionPolicy.LIMITS and wanted.retention == RetentionPolicy.INTEREST:
        update.retention, update.discard, changed = RetentionPolicy.INTEREST, wanted.discard, True
    return update if changed else None


async def ensure_streams(broker: NatsBroker, settings: Settings | None = None) -> None:
    """Create the platform's JetStream streams, or add to an existing one only what it lacks (an operator's
    limits stay as they are); safe when many processes race. The bootstrap step's (shared/bus_streams.py, as the
    `bootstrap` identity) and the operator's: no service identity may create or update a stream."""
    from nats.js.errors import APIError, BadRequestError, NotFoundError

    settings = settings or Settings()
    js = broker.config.connection_state.stream
    for config in stream_configs(settings):
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as refused:  # created meanwhile by another process: read it
                try:
                    info = await js.stream_info(config.name)
                except NotFoundError:  # not there: JetStream refused this config (its limits, a subject another
                    raise _refused(f"the stream {config.name}", refused) from refused  # stream has), not "not found"
            except APIError as refused:  # a 500 of JetStream's own limits: no room for the stream's byte cap
                raise _refused(f"the stream {config.name}", refused, config.max_bytes) from refused
            else:
                info = None
        if info is not None:
            update = missing_stream_settings(info.config, config)
            if update is not None:
                try:
                    await js.update_stream(update)
                    log.info("stream %s: added what it lacked of Railyard's settings", config.name)
                except APIError as exc:  # refused (a 400, or a 500: no room for the byte cap it lacked)
                    log.warning("stream %s keeps its configuration (%s)", config.name, exc)


async def ensure_log_store_consumer(broker: NatsBroker, settings: Settings | None = None) -> None:
    """The bootstrap step's: create the log store's durable consumer if it does not exist; an existing one is left
    as it is (it is the log store's, which re-creates it with its own settings at every start)."""
    from nats.js.errors import BadRequestError, NotFoundError

    settings = settings or Settings()
    js = broker.config.connection_state.stream
    try:
        await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
        return
    except NotFoundError:
        pass
    try:
        await js.add_consumer(subjects.INFERENCE_LOGS_STREAM, log_store_consumer_config(settings.logs.ack_wait))
    except BadRequestError as refused:  # created meanwhile by the log store: read it
        try:
            await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
        except NotFoundError:  # not there: JetStream refused this config (the stream's consumer limit)
            raise _refused(f"the consumer {subjects.INFERENCE_LOGS_DURABLE} of stream "
                           f"{subjects.INFERENCE_LOGS_STREAM}", refused) from refused


JS_INSUFFICIENT_STORAGE = 10047
"""JetStream's err_code for a stream whose byte cap does not fit in the server's file storage left."""


def _refused(what: str, refused: Any, max_bytes: int | None = None) -> RailyardError:
    """One line naming what JetStream refused to create and its own words (a read-back's 404 hid them), and for a
    byte cap with no room left, what to change."""
    hint = ""
    if refused.err_code == JS_INSUFFICIENT_STORAGE and max_bytes:
        hint = (f": its byte cap ({max_bytes / 1024**3:g} GiB) does not fit in the file storage JetStream has left "
                "(nats-server's `max_file_store`; unset, 75 % of the disk free when it started). Give NATS more "
                "(set `max_file_store` in its jetstream block, a larger volume, or free disk) or lower the caps "
                "(RAILYARD_LOGS__STREAM_MAX_BYTES, RAILYARD_NATS__EVENTS_MAX_BYTES)")
    return RailyardError(f"JetStream refused {what}: {refused.description or type(refused).__name__} (code "
                         f"{refused.code}, err_code {refused.err_code}){hint}")


async def wait_for_streams(broker: NatsBroker, timeout: float = 30.0) -> None:
    """Wait until the platform's JetStream streams exist (a service's start: the bootstrap step creates them,
    services may only look); Unavailable naming the step when one is still missing after `timeout` seconds."""
    from nats.js.errors import NotFoundError

    js = broker.config.connection_state.stream
    deadline = time.monotonic() + timeout
    for stream in subjects.STREAMS:
        while True:
            try:
                await js.stream_info(stream)
                break
            except (NotFoundError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"the JetStream stream {stream} does not exist: the stack's bootstrap step creates it before "
                        "the services start (`railyard up` does; in containers run `python -m shared.bus_streams` "
                        "as the `bootstrap` bus identity first)") from None
                await asyncio.sleep(0.2)


async def publish_event(broker: NatsBroker, subject: str, event: Event, *, timeout: float | None = None) -> None:
    """Publish an event durably: waits for the JetStream ack up to `timeout` seconds (JETSTREAM_TIMEOUT when None),
    else nats.errors.TimeoutError (the event may still have been stored). The event id is the message's Nats-Msg-Id:
    the EVENTS stream keeps one of its retries within its duplicate window (120 s)."""
    await broker.publish(
        event,
        subject,
        stream=subjects.EVENTS_STREAM,
        headers={"Nats-Msg-Id": str(event.event_id)},
        timeout=JETSTREAM_TIMEOUT if timeout is None else timeout,
    )


# --- raw (non-JSON) replies: Arrow bodies, typed errors in a header -------------------------------------------

def raise_for_error_header(headers: dict[str, str] | None) -> None:
    """Raise the typed error a raw reply carries, if any."""
    raw = (headers or {}).get(ERROR_HEADER)
    if raw:
        error = json.loads(raw)
        raise error_from_body(ErrorBody(code=error["code"], msg=error["msg"]), int(error.get("status", 500)))


async def raw_request(nc: Any, subject: str, data: bytes, *, token: str | None, timeout: float) -> Any:
    """A request to a raw subject (the log store's Arrow subjects) with the caller's token; the reply message,
    or its typed error raised; Unavailable when nobody listens, UpstreamTimeout when nobody answers."""
    service = subject.split(".")[0]
    headers = {TOKEN_HEADER: f"Bearer {token}"} if token else {}
    try:
        reply = await nc.request(subject, data, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError:
        raise Unavailable(f"{service} is not running") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise UpstreamTimeout(f"{service} did not answer within {timeout:g}s") from None
    except BUS_DOWN:  # as `request`
        raise Unavailable(f"{service} cannot be reached: the connection to the bus is down") from None
    raise_for_error_header(reply.headers)
    return reply


ENGINE_FIRST_ATTEMPT = 3.0
"""Seconds an engine request waits before `request_engine` sends it once more (the gateway's FIRST_ATTEMPT)."""


async def request_engine(request: Callable[..., Awaitable[Any]], subject: str, data: bytes, headers: dict[str, str],
                         *, timeout: float, first_attempt: float = ENGINE_FIRST_ATTEMPT) -> Any | None:
    """An engine request (`engine.<deployment>.infer`) sent once more if no replica answered it within
    `first_attempt` seconds: a replica killed while it held a request never answers, and the caller waited the whole
    `timeout` for it while the deployment's other replicas (or the dead one's replacement) were idle. Both attempts
    carry one Railyard-Request-Id (the caller's, else a new one), the second `Railyard-Attempt: 2`: a replica still
    running the first answers the second from that one run (services/engine/answers.py); the second waits the rest
    of `timeout`. `request(subject, data, timeout=, headers=)` is the connection's (nc.request) or a requester with
    its signature. The reply message (its error header not read: the caller reads it); None when nobody listens (the
    caller says why: the deployer's word); UpstreamTimeout after `timeout` in all; Unavailable when the bus is down."""
    headers = {**headers, REQUEST_ID: headers.get(REQUEST_ID) or os.urandom(16).hex()}
    # a timeout no longer than the first attempt's wait is one attempt of `timeout` (no negative second wait)
    waits = (first_attempt, timeout - first_attempt) if timeout > first_attempt else (timeout,)
    for attempt, wait in enumerate(waits):
        try:
            return await request(subject, data, timeout=wait, headers={**headers, ATTEMPT: "2"} if attempt else headers)
        except nats.errors.NoRespondersError:
            return None
        except (TimeoutError, nats.errors.TimeoutError):
            if attempt == len(waits) - 1:
                raise UpstreamTimeout(f"the engine did not answer within {timeout:g}s") from None
            log.info("no replica answered a request on %s within %g s (one may have died holding it): sent once more",
                     subject, first_attempt)
        except BUS_DOWN:  # as `request`
            raise Unavailable("the engine cannot be reached: the connection to the bus is down") from None
    return None  # not reached: the second attempt returns or raises
