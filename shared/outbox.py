"""A service's transactional outbox: events of committed changes are rows of its `outbox` table (in the service's
own schema; the migration is the service's, e.g. services/assay_runner/migrations/003_outbox.sql), written in the
change's own transaction (`add_event`), and published from there by `Outbox`.

`Outbox.send` publishes the unsent rows oldest first and deletes each once JetStream has acknowledged its event
(`publish_event` waits for the ack). A row that fails counts an attempt and keeps its place, and the later rows
of its order key (`order_field` of the payload: an assay, a task run) wait with it for the next round, so one
thing's events go out in order; what was acknowledged before stays sent. A failure of the bus (a timeout, the
connection, JetStream unavailable) ends the round; a failure of the row itself (its event no longer reads,
JetStream refuses that message: e.g. larger than the stream's largest message) holds up only its own key's events,
so one bad row does not stop every event for good. `run` sends at start, whenever woken (after each commit) and
every `retry` seconds while a round left rows unsent (a row failing for itself: for its first OWN_RETRIES tries),
IDLE seconds otherwise (rows another process left). Rows are locked while sent (`FOR UPDATE SKIP LOCKED`), so two
processes of a service never send one row at once, and one process of a service sends at a time (`unsent_events`:
the others retry at the RETRY pace), so one thing's events keep their order across processes too. A process that
dies after JetStream's ack but before the delete commits sends the row again at its next round with the same
`Nats-Msg-Id` (the event's `event_id`): the EVENTS stream drops it within its duplicate window (120 s), and lineage
records an event once by its event_id whenever it comes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import asyncpg
from nats.js import errors as js_errors

from shared.db import background_pass
from shared.messages.base import Event

log = logging.getLogger("railyard.outbox")

RETRY = 2.0
"""Seconds between rounds while events are left unsent (the bus away, a timeout)."""
IDLE = 60.0
"""Seconds between rounds while nothing failed: a process sends its own rows when woken after its commit, so this
round only finds rows another process left (one that stopped mid-send). Longer than the pools' 30 s idle close
(`postgres.pool_min` 0), so an idle service's outbox holds no PostgreSQL backend, as before it had an outbox."""
BATCH = 100
STOP_SEND = 2.0
"""Seconds a stop's last send may take. Each event's JetStream ack is waited up to shared.bus.JETSTREAM_TIMEOUT (5 s,
session 33), so a bus that does not answer would otherwise hold the stop that long, and with the pool's close after it
run past the embedded stack's 5 s stop grace into a SIGKILL. The rows stay unsent either way and go at a start (their
message ids de-duplicate a send that did land)."""
SENDER_LOCK = "outbox.sender:"
"""The sender's advisory lock (`unsent_events`): this text and the service's schema, hashed."""
OWN_RETRIES = 10
"""Tries of a row that fails for itself (its event no longer reads, JetStream refuses that message) at the RETRY
pace; after them it is tried at the IDLE rounds and wake-ups only (still holding up its key's later rows, still
logged): such a row may fail for good (larger than the stream allows), and kept at RETRY it had the service poll
PostgreSQL every 2 s for as long as the row stayed, holding a backend an idle service otherwise gives back."""


# --- the table (the service's `outbox`, in its schema) ----------------------------------------------------------

async def add_event(conn: asyncpg.Connection, subject: str, event: Any) -> None:
    """Put an event in the outbox, in the caller's transaction (`Outbox` publishes it once that commits)."""
    await conn.execute("INSERT INTO outbox (event_id, subject, payload) VALUES ($1, $2, $3::jsonb)",
                       event.event_id, subject, event.model_dump_json())


class SendingElsewhere(Exception):
    """Another process of the service is sending from its outbox now (`unsent_events`)."""


async def unsent_events(conn: asyncpg.Connection, limit: int, after: int = 0) -> list[asyncpg.Record]:
    """The oldest unsent events past row `after`, locked until the caller's transaction ends. One transaction of a
    service sends at a time: the sender's advisory lock of the service's schema is taken (until the transaction
    ends) or SendingElsewhere raised. Two processes sending at once put one thing's events out of order: the
    second's read skipped the rows the first's open batch held (`SKIP LOCKED`, which also keeps a process without
    that lock from sending a row another sends) and sent a later row of the same assay / run / model version first."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtextextended($1 || current_schema(), 0))",
                               SENDER_LOCK):
        raise SendingElsewhere
    return await conn.fetch("SELECT id, event_id, subject, payload, attempts FROM outbox WHERE id > $2 ORDER BY id"
                            " LIMIT $1 FOR UPDATE SKIP LOCKED", limit, after)


async def event_sent(conn: asyncpg.Connection, outbox_id: int) -> None:
    await conn.execute("DELETE FROM outbox WHERE id = $1", outbox_id)


async def event_failed(conn: asyncpg.Connection, outbox_id: int, error: str) -> None:
    await conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1", outbox_id,
                       error[:1000])


# --- sending ------------------------------------------------------------------------------------------------------

def order_key(row: Any, field: str | tuple[str, ...]) -> Any:
    """What a row's event is about (its payload's `field`: an assay's id, a task run's id; of several fields, the
    first the payload names: a model version, or else a connection), the order key: one thing's events go out in
    order; the row itself when its payload names none."""
    payload = row["payload"]
    try:
        body = json.loads(payload) if isinstance(payload, str | bytes) else payload
        for name in (field,) if isinstance(field, str) else field:
            value = body.get(name)
            if isinstance(value, int | str) and not isinstance(value, bool):
                return name, value
    except (ValueError, AttributeError):
        pass
    return "row", row["id"]


def row_refused(exc: Exception) -> bool:
    """Whether a failed publish is the row's own (JetStream answered about that message, e.g. larger than the
    stream allows), not the bus's (a timeout, the connection, JetStream unavailable or failing), which the next
    rows would meet as well."""
    return isinstance(exc, js_errors.APIError) and not isinstance(
        exc, js_errors.ServiceUnavailableError | js_errors.ServerError)


@dataclass
class SendRound:
    """What one round of `Outbox.send_round` did with the rows it read, by event_id: `sent` (JetStream acknowledged
    them, their rows deleted), `failed` (tried and left unsent, or held behind a failed row of their key, which
    fails the same way until the next round). `bus_failed`: a failure of the bus ended the round, so the rows after
    it were not read (they would have met it too); `elsewhere`: another process was sending (SendingElsewhere), so
    this round read nothing. A row in neither set was not this round's: sent by an earlier round (this process's
    loop, another process) or committed after the round read its batch."""

    sent: set[Any] = field(default_factory=set)
    failed: set[Any] = field(default_factory=set)
    bus_failed: bool = False
    elsewhere: bool = False

    def left_unsent(self, event_id: Any) -> bool:
        """Whether this round tried the event, or met a failure of the bus before reaching it, and left it unsent:
        the next round is the outbox's retry (RETRY seconds on)."""
        return event_id in self.failed or (self.bus_failed and event_id not in self.sent)


class Outbox:
    """The sender of one service's outbox. `event_types`: the event class of each subject the service puts there;
    `order_field`: the payload field (or fields, the first present) whose value is the order key (`order_key`);
    `rows`: where the table's functions are looked up at each call (this module, or a service's store module
    that re-exports them)."""

    def __init__(self, pool: asyncpg.Pool, publish: Callable[[str, Any], Awaitable[None]], *,
                 event_types: dict[str, type[Event]], order_field: str | tuple[str, ...], what: str,
                 retry: float = RETRY,
                 rows: Any = None) -> None:
        self.pool = pool
        self.publish = publish
        self.event_types = event_types
        self.order_field = order_field
        self.what = what  # "assay events", "task run events": for the log
        self.retry = retry
        self.rows: ModuleType | Any = rows if rows is not None else _this_module()
        self.woken = asyncio.Event()
        self._sending = asyncio.Lock()
        self.failing_since: float | None = None
        # the last round left rows to try again at the RETRY pace: the bus failed, or a row failed for itself fewer
        # than OWN_RETRIES times
        self.retry_soon = False
        self._later: asyncio.TimerHandle | None = None  # the round `_round_later` asked the loop for

    def event_of(self, subject: str, payload: Any) -> Event:
        """The event a row holds, as it was put there (its event_id and occurred_at included)."""
        return self.event_types[subject].model_validate(json.loads(payload) if isinstance(payload, str) else payload)

    def wake(self) -> None:
        """Something was committed with events: send them now (the running loop does)."""
        self.woken.set()

    async def send(self) -> int:
        """Publish what is unsent (module docstring); how many events were sent. Raises only a database error
        (nothing is lost: rows not deleted are sent again). One round at a time in a process (the loop's and a
        route's), so its own rounds send in order: another's `SKIP LOCKED` read would pass the rows a round holds."""
        return len((await self.send_round()).sent)

    async def send_round(self) -> SendRound:
        """`send`, telling which events the round sent and which it tried and left unsent (SendRound): for a caller
        that answers once its own event is out, and wants to know when this round has tried it (auth's
        handlers._published). A round that left rows to try again soon (`retry_soon`) has the loop try them RETRY
        seconds on (`_round_later`): the loop may be waiting its IDLE round, and the caller must not wake it now
        either (its round would try a refused row again milliseconds later, spending its OWN_RETRIES twice as fast,
        and meet a failing bus again at once)."""
        return await self._round(from_loop=False)

    async def _round(self, *, from_loop: bool) -> SendRound:
        async with self._sending:
            done = SendRound()
            await self._send(done)
            if self.retry_soon and not from_loop and not done.elsewhere:  # SendingElsewhere asked for it already
                self._round_later()
            return done

    async def _send(self, done: SendRound) -> None:
        self.retry_soon = False
        after = 0  # the last row id this round has read (held rows are not read again)
        held: set[Any] = set()  # the keys whose row failed this round: their later rows wait for the next one
        failed = False
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                try:
                    rows = await self.rows.unsent_events(conn, BATCH, after)
                except SendingElsewhere:  # it sends what it read; what was committed after, this process soon
                    self.retry_soon = True
                    done.elsewhere = True
                    self._round_later()
                    return
                for row in rows:
                    after = row["id"]
                    key = order_key(row, self.order_field)
                    if key in held:
                        done.failed.add(row["event_id"])
                        continue
                    try:
                        event = self.event_of(row["subject"], row["payload"])
                    except Exception as exc:  # noqa: BLE001 - the row's own: its event no longer reads
                        error, its_own = exc, True
                    else:
                        try:
                            await self.publish(row["subject"], event)
                            error = None
                        except Exception as exc:
                            error, its_own = exc, row_refused(exc)
                    if error is not None:
                        failed = True
                        tried_before = _attempts(row)
                        await self.rows.event_failed(conn, row["id"], f"{type(error).__name__}: {error}")
                        self._failed(row, error)
                        done.failed.add(row["event_id"])
                        if not its_own:
                            self.retry_soon = True
                            done.bus_failed = True
                            return  # the transaction commits: what was acknowledged before stays sent
                        if tried_before + 1 < OWN_RETRIES:
                            self.retry_soon = True
                        held.add(key)
                        continue
                    await self.rows.event_sent(conn, row["id"])
                    done.sent.add(row["event_id"])
            if len(rows) < BATCH:
                if self.failing_since is not None and not failed:
                    log.info("%s are published again", self.what)
                    self.failing_since = None
                return

    async def stop(self, task: asyncio.Task) -> None:
        """Stop the sending loop `task` (this outbox's `run`) and send what is unsent once more: now if the bus takes
        it within STOP_SEND seconds, else at a start (this or another process)."""
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send(), STOP_SEND)

    def _round_later(self) -> None:
        """Have the loop (`run`) try a round RETRY seconds from now. A round that found another process sending
        (SendingElsewhere) may be a route's or a stop's send, not the loop's, and the loop, waiting its IDLE round,
        would otherwise leave the rows committed meanwhile unsent for up to a minute."""
        if self._later is not None:
            self._later.cancel()
        self._later = asyncio.get_running_loop().call_later(self.retry, self.woken.set)

    def _failed(self, row: Any, exc: Exception) -> None:
        if self.failing_since is None or time.monotonic() - self.failing_since > 60:
            log.warning("could not publish %s (event %s; kept, tried again every %.0f s): %s: %s", row["subject"],
                        row["event_id"], self.retry, type(exc).__name__, exc)
            self.failing_since = time.monotonic()

    async def run(self) -> None:
        """Send at start, when woken, every `retry` seconds while a round left rows to try again soon (`retry_soon`),
        else every IDLE. The start's round and the IDLE rounds (nothing asked for them: they look for rows another
        process left) close the connection they opened when they end (`shared.db.background_pass`): an idle service
        holds no PostgreSQL backend for its outbox."""
        quiet = True  # this round was not asked for (the start's, an IDLE one)
        while True:
            self.woken.clear()
            if self._later is not None:  # this round is the one it asked for
                self._later.cancel()
                self._later = None
            failed = False
            try:
                if quiet:
                    async with background_pass(self.pool):
                        await self._round(from_loop=True)
                else:
                    await self._round(from_loop=True)
            except Exception:
                failed = True
                log.exception("the %s outbox failed a round", self.what)
            wait = self.retry if failed or self.retry_soon else max(self.retry, IDLE)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the loop is woken in the step
                # `stop`'s cancel comes (bpo-42130), and the cancel was lost: the loop went on, the stop waited for it
                async with asyncio.timeout(wait):
                    await self.woken.wait()
                quiet = False
            except TimeoutError:
                quiet = wait >= IDLE


def _attempts(row: Any) -> int:
    """How often the row was tried before (0 when the table's reader gives no count)."""
    try:
        return int(row["attempts"] or 0)
    except (KeyError, TypeError, ValueError):
        return 0


def _this_module() -> ModuleType:
    import sys

    return sys.modules[__name__]
