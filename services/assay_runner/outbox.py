"""The assay runner's transactional outbox: events of committed changes are rows of `outbox`, written in the
change's own transaction (store.record_results, handlers.create), and published from there.

`Outbox.send` publishes the unsent rows oldest first and deletes each once JetStream has acknowledged its event
(`publish_event` waits for the ack). A row that fails counts an attempt and keeps its place, and the later rows
of its assay wait with it for the next round (one assay's events go out in order); what was acknowledged before
stays sent. A failure of the bus (a timeout, the connection, JetStream unavailable) ends the round; a failure of
the row itself (its event no longer reads, JetStream refuses that message: e.g. larger than the stream's largest
message) holds up only its own assay's events, so one bad row does not stop every assay's events for good. `run`
sends at start, whenever woken (after each commit) and every `retry` seconds (a failed round's rows, rows another
runner committed). Rows are
locked while sent (`FOR UPDATE SKIP LOCKED`), so two assay runners never send one row at once. A runner that dies
after JetStream's ack but before the delete commits sends the row again at its next round with the same
`Nats-Msg-Id` (the event's `event_id`): the EVENTS stream drops it within its duplicate window (120 s), and
lineage records an event once by its event_id whenever it comes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from nats.js import errors as js_errors

from services.assay_runner import store
from shared import subjects
from shared.messages.assays import AssayThresholdCrossed, AssayWasCreated
from shared.messages.base import Event

log = logging.getLogger("railyard.assay_runner")

RETRY = 2.0
"""Seconds between rounds while events are left unsent (the bus away, a timeout)."""
BATCH = 100

EVENT_TYPES: dict[str, type[Event]] = {
    subjects.EVENT_ASSAY_CREATED: AssayWasCreated,
    subjects.EVENT_ASSAY_WARNING: AssayThresholdCrossed,
    subjects.EVENT_ASSAY_ALERT: AssayThresholdCrossed,
}


def assay_of(row: Any) -> Any:
    """The assay a row's event is about (the order key: an assay's events go out in order), or the row itself when
    its payload names none."""
    payload = row["payload"]
    try:
        assay_id = (json.loads(payload) if isinstance(payload, str | bytes) else payload).get("assay_id")
    except (ValueError, AttributeError):
        assay_id = None
    return ("assay", assay_id) if isinstance(assay_id, int) else ("row", row["id"])


def row_refused(exc: Exception) -> bool:
    """Whether a failed publish is the row's own (JetStream answered about that message, e.g. larger than the
    stream allows), not the bus's (a timeout, the connection, JetStream unavailable or failing), which the next
    rows would meet as well."""
    return isinstance(exc, js_errors.APIError) and not isinstance(
        exc, js_errors.ServiceUnavailableError | js_errors.ServerError)


def event_of(subject: str, payload: Any) -> Event:
    """The event a row holds, as it was put there (its event_id and occurred_at included)."""
    return EVENT_TYPES[subject].model_validate(json.loads(payload) if isinstance(payload, str) else payload)


class Outbox:
    def __init__(self, pool: asyncpg.Pool, publish: Callable[[str, Any], Awaitable[None]],
                 retry: float = RETRY) -> None:
        self.pool = pool
        self.publish = publish
        self.retry = retry
        self.woken = asyncio.Event()
        self._sending = asyncio.Lock()
        self.failing_since: float | None = None

    def wake(self) -> None:
        """Something was committed with events: send them now (the running loop does)."""
        self.woken.set()

    async def send(self) -> int:
        """Publish what is unsent (module docstring); how many events were sent. Raises only a database error
        (nothing is lost: rows not deleted are sent again). One round at a time in a process (the loop's and a
        route's), so its own rounds send in order: another's `SKIP LOCKED` read would pass the rows a round holds."""
        async with self._sending:
            return await self._send()

    async def _send(self) -> int:
        sent = 0
        after = 0  # the last row id this round has read (held rows are not read again)
        held: set[Any] = set()  # the assays whose row failed this round: their later rows wait for the next one
        failed = False
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await store.unsent_events(conn, BATCH, after)
                for row in rows:
                    after = row["id"]
                    key = assay_of(row)
                    if key in held:
                        continue
                    try:
                        event = event_of(row["subject"], row["payload"])
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
                        await store.event_failed(conn, row["id"], f"{type(error).__name__}: {error}")
                        self._failed(row, error)
                        if not its_own:
                            return sent  # the transaction commits: what was acknowledged before stays sent
                        held.add(key)
                        continue
                    await store.event_sent(conn, row["id"])
                    sent += 1
            if len(rows) < BATCH:
                if self.failing_since is not None and not failed:
                    log.info("assay events are published again")
                    self.failing_since = None
                return sent

    def _failed(self, row: Any, exc: Exception) -> None:
        if self.failing_since is None or time.monotonic() - self.failing_since > 60:
            log.warning("could not publish %s (event %s; kept, tried again every %.0f s): %s: %s", row["subject"],
                        row["event_id"], self.retry, type(exc).__name__, exc)
            self.failing_since = time.monotonic()

    async def run(self) -> None:
        """Send at start, when woken, and every `retry` seconds."""
        while True:
            self.woken.clear()
            try:
                await self.send()
            except Exception:
                log.exception("the assay event outbox failed a round")
            try:
                await asyncio.wait_for(self.woken.wait(), self.retry)
            except TimeoutError:
                pass
