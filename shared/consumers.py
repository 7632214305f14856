"""Durable JetStream consumers of the EVENTS stream: one delivery policy for every service's (poison messages).

A message is handed to its handler only once it decodes (JSON, then the subscriber's pydantic model). Then:
- a message that is not JSON (or not a JSON object) can never succeed: it is recorded as a dead letter and
  terminated (`term`: the server never delivers it again), at its first delivery;
- a JSON object that is not the subscriber's model is redelivered as a failed handler's is (below): it may be a
  newer (or older) publisher's version of the event, which events refuse (unknown fields), and this consumer, once
  upgraded too, reads it within the redeliveries;
- a handler that raises is taken to have failed for a passing reason (its database, another service away): the
  message is negatively acknowledged with a delay that doubles from `nats.consumer_backoff` seconds up to
  `nats.consumer_backoff_max` (`nak(delay=...)`, the server redelivers it then), until its `nats.consumer_max_deliver`th
  delivery fails too: that one is recorded as a dead letter and terminated;
- a dead letter is terminated only once its row is committed: while it cannot be written (PostgreSQL away) the
  message is redelivered with the backoff again, so nothing is terminated unrecorded.

Dead letters are rows of the consuming service's own `dead_letters` table (its migration; one row per message,
keyed by (durable, stream sequence, the message's time in the stream), so a redelivery after a crash between the
insert and the term records nothing twice, and a stream made again, numbering from 1 again, cannot pass a new
message for an old one's row), with the subject, the delivery count, the error (bounded text), the payload (its
first 64 KiB and its full size) and the headers; an ERROR names the durable, subject, sequence and error once per
message (a message's first failure is a WARNING with its traceback, its later ones INFO).

The bound is the handler's (the delivery count JetStream gives with each message), not the server's `max_deliver`:
a server bound stops delivering the last time without telling the handler, so the message would be left in the
stream unrecorded exactly when recording fails. The log store's INFERENCE_LOGS consumer does not use this: its
quarantine (services/log_store/handlers.py) already keeps a batch that cannot be stored at once and waits, unbounded,
while its stores are away (docs/architecture.md, "Poison messages")."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg
from faststream import AckPolicy
from faststream.nats import JStream, NatsRouter, PullSub
from faststream.nats.annotations import NatsMessage
from nats.js.api import ConsumerConfig
from pydantic import BaseModel, ValidationError

from shared import subjects
from shared.dead_letters import REPLAY_FOR_HEADER  # a replay's durable: the subject's others acknowledge it unread
from shared.pg_text import headers_jsonb, no_nul

log = logging.getLogger("railyard.consumers")

PAYLOAD_KEEP = 64 * 1024
"""Bytes of a dead letter's payload kept (its full size is kept too)."""
ERROR_KEEP = 2000
"""Characters of a dead letter's error kept."""


class Undecodable(Exception):
    """A message that is not what its subscriber reads. `permanent` (not JSON, not an object, not an event): no
    redelivery helps; else (a JSON object, not the subscriber's model) it may be another version's event, read once
    the consumer is upgraded too: redelivered with the backoff, a dead letter at its last delivery."""

    def __init__(self, reason: str, permanent: bool = True) -> None:
        super().__init__(reason)
        self.permanent = permanent


@dataclass(frozen=True)
class DeliveryPolicy:
    """How often and how fast a message whose handler fails is delivered again (shared.settings.NatsSettings)."""

    max_deliver: int = 10
    backoff: float = 2.0
    backoff_max: float = 300.0

    @classmethod
    def from_settings(cls, nats: Any) -> DeliveryPolicy:
        return cls(nats.consumer_max_deliver, nats.consumer_backoff, nats.consumer_backoff_max)

    def delay(self, delivered: int) -> float:
        """Seconds before the redelivery of a message whose `delivered`th delivery failed."""
        # the exponent bounded: past ~1024 doublings a float overflows (OverflowError), and a message is delivered
        # that often (a dead letter whose row cannot be written, nak'ed every backoff_max; one delivered thousands
        # of times before this policy) exactly when settle must not fail: FastStream would nak it without a delay
        return min(self.backoff * 2.0 ** min(max(delivered - 1, 0), 1000), self.backoff_max)


class Verdict(NamedTuple):
    dead: bool  # record it as a dead letter and terminate it
    delay: float  # else: redeliver it after this many seconds


def verdict(policy: DeliveryPolicy, delivered: int, permanent: bool) -> Verdict:
    """What to do with a message whose `delivered`th delivery failed (`permanent`: it did not decode)."""
    if permanent or delivered >= policy.max_deliver:
        return Verdict(True, 0.0)
    return Verdict(False, policy.delay(delivered))


async def record_dead_letter(pool: asyncpg.Pool, durable: str, msg: Any, error: str) -> bool:
    """Keep a message as a dead letter of `durable` (a NATS JetStream message); False when it was kept before."""
    meta = msg.metadata
    data = bytes(msg.data or b"")
    # NULs removed (PostgreSQL refuses them in text and jsonb: the row never written, the message never terminated)
    headers = headers_jsonb(msg.headers)
    # the key is the message's: its stream sequence and its time in the stream (the same at every redelivery). A
    # stream that is deleted and made again numbers its messages from 1 again: by (durable, sequence) alone, a new
    # poison message's row "was there" (an old one's), nothing was written and the message was terminated unrecorded
    inserted = await pool.fetchval(
        "INSERT INTO dead_letters (durable, stream_seq, stream, subject, deliveries, error, payload, payload_size,"
        " headers, stream_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)"
        " ON CONFLICT (durable, stream_seq, stream_time) DO NOTHING RETURNING true",
        durable, meta.sequence.stream, meta.stream, no_nul(msg.subject), meta.num_delivered,
        no_nul(error)[:ERROR_KEEP], data[:PAYLOAD_KEEP], len(data), headers, meta.timestamp)
    return bool(inserted)


def describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):  # the fields and why, not the input (it is in the payload column)
        return f"ValidationError: {exc.errors(include_url=False, include_input=False)[:5]}"[:ERROR_KEEP]
    return f"{type(exc).__name__}: {exc}"[:ERROR_KEEP]


def json_model(model: type[BaseModel] | None) -> Callable[[bytes], Any]:
    """A decoder: the message's JSON as `model` (None: any JSON object, as a dict)."""

    def decode(data: bytes) -> Any:
        try:
            body = json.loads(data)
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; json.loads raises RecursionError for nesting past
        # the interpreter's limit (~100k brackets)
        except (ValueError, RecursionError) as exc:
            raise Undecodable(describe(exc)) from None
        if not isinstance(body, dict):
            raise Undecodable(f"not a JSON object: {type(body).__name__}")
        if model is None:
            return body
        try:
            return model.model_validate(body)
        except ValidationError as exc:  # events refuse unknown fields: a publisher upgraded first adds some
            raise Undecodable(describe(exc), permanent=False) from None

    return decode


FETCH_WAIT = 5.0
"""Seconds one pull request of a consumer waits on the server for a message. A message that comes meanwhile is
handed over at once: nats-py's first pull request of a fetch carries `no_wait` and `expires`, which the server
(2.10 and later) answers with what is there as soon as one message is, so this is not a delivery delay. It is the
idle cost (one request and its timeout reply per consumer per wait: 1 s had auth, monitoring and lineage's
consumers send ~17 requests a second to an idle bus; docs/performance.md item 80), and how long a consumer whose
connection came back after NATS was away waits before it asks again (its request was lost with the connection)."""
FAILURES_KEPT = 4096
"""Messages whose failure this process logged, remembered (oldest forgotten first) so that a message's first failed
delivery it sees is the WARNING with the traceback, whatever its delivery count."""
_failed: OrderedDict[tuple, None] = OrderedDict()


def _first_failure(durable: str, meta: Any) -> bool:
    """Is this the first failure of the message this process logs? Its first delivery's failure is; a later one is
    when no failure of it was logged here before: the earlier deliveries went past their ack wait (lineage's is 5 s:
    a handler waiting for a recording slot) or were taken by a process that died, so the delivery count alone made
    the first failure anyone saw an INFO line without its traceback."""
    key = (durable, meta.stream, meta.sequence.stream, meta.timestamp)
    seen = key in _failed
    _failed[key] = None
    _failed.move_to_end(key)
    while len(_failed) > FAILURES_KEPT:
        _failed.popitem(last=False)
    return meta.num_delivered == 1 or not seen


async def settle(message: Any, durable: str, pool: Callable[[], asyncpg.Pool], policy: DeliveryPolicy,
                 error: str, permanent: bool) -> None:
    """A failed delivery of `message` (a FastStream NatsMessage): redelivered later, or a dead letter."""
    msg = message.raw_message
    meta = msg.metadata
    decided = verdict(policy, meta.num_delivered, permanent)
    # Levels (docs/architecture.md, "Poison messages"): a dead letter, and one that cannot be recorded, is an ERROR
    # (a message given up on: what an alert on ERROR must see); a message's first failure a WARNING with its
    # traceback (settle runs in the handler's except block), its later ones INFO, one line each
    if decided.dead:
        try:
            if await record_dead_letter(pool(), durable, msg, error):
                log.error("dead letter of %s: %s #%d (delivery %d): %s", durable, msg.subject,
                          meta.sequence.stream, meta.num_delivered, error)
        except Exception as exc:  # not terminated unrecorded: try again later
            log.error("could not record the dead letter of %s: %s #%d (delivery %d: %s): %s; redelivering it",
                      durable, msg.subject, meta.sequence.stream, meta.num_delivered, error, exc)
            await message.nack(delay=policy.delay(meta.num_delivered))
            return
        await message.reject()  # term: never delivered again
        return
    first = _first_failure(durable, meta)
    log.log(logging.WARNING if first else logging.INFO, "%s: %s #%d failed (delivery %d of %d), again in %.1f s: %s",
            durable, msg.subject, meta.sequence.stream, meta.num_delivered, policy.max_deliver, decided.delay, error,
            exc_info=first)
    await message.nack(delay=decided.delay)


def _raw(msg: Any) -> bytes:
    return msg.body


def durable_subscriber(router: NatsRouter, subject: str, *, durable: str, service: str,
                       decode: Callable[[bytes], Any], pool: Callable[[], asyncpg.Pool], policy: DeliveryPolicy,
                       ack_wait: float, batch_size: int, title: str, description: str):
    """Register `handler(value, message)` as the durable pull consumer `durable` of `subject` on the EVENTS stream,
    `value` being `decode(data)`, under this module's delivery policy; the message is acknowledged when the handler
    returns."""

    def decorate(handler: Callable[[Any, Any], Awaitable[None]]):
        # the body as it came (`_raw`), decoded here: a body FastStream could not decode into the handler's
        # parameters failed before any handler code ran, and was negatively acknowledged for ever
        async def subscriber(body: Any, message: NatsMessage) -> None:
            meant_for = (message.raw_message.headers or {}).get(REPLAY_FOR_HEADER)
            if meant_for is not None and meant_for != durable:  # another durable's dead letter, replayed to it only
                await message.ack()
                return
            try:
                value = decode(body)
            except Undecodable as exc:
                await settle(message, durable, pool, policy, str(exc), permanent=exc.permanent)
                return
            except Exception as exc:  # the decoder's own failure: no redelivery decodes it either (escaping here, it
                # was FastStream's NACK_ON_ERROR: a nak without a delay, for ever)
                await settle(message, durable, pool, policy, describe(exc), permanent=True)
                return
            try:
                await handler(value, message)
            except Exception as exc:
                await settle(message, durable, pool, policy, describe(exc), permanent=False)
                return
            await message.ack()

        subscriber.__name__ = handler.__name__
        subscriber.__doc__ = handler.__doc__
        return router.subscriber(
            subject,
            stream=JStream(subjects.EVENTS_STREAM, declare=False),
            durable=durable,
            pull_sub=PullSub(batch_size=batch_size, timeout=FETCH_WAIT),
            # the pull requests' replies come to this service's own inbox (its bus identity may read only that one)
            inbox_prefix=f"_INBOX.{service}.".encode(),
            # what the handler's failures become is settle's; a failure of settle itself (the bus away while it
            # answers) leaves the message to be redelivered
            ack_policy=AckPolicy.NACK_ON_ERROR,
            decoder=_raw,
            config=ConsumerConfig(ack_wait=ack_wait),
            title=title,
            description=description,
        )(subscriber)

    return decorate
