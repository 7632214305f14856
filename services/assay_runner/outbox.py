"""The assay runner's transactional outbox: events of committed changes are rows of `outbox`, written in the
change's own transaction (store.record_results, handlers.create), and published from there.

`Outbox.send` publishes the unsent rows oldest first and deletes each once JetStream has acknowledged its event
(`publish_event` waits for the ack); the first publish that fails ends the round (its row counts an attempt and
keeps its place, so one assay's alerts go out in order), and what was acknowledged before it stays sent. `run`
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
        self.failing_since: float | None = None

    def wake(self) -> None:
        """Something was committed with events: send them now (the running loop does)."""
        self.woken.set()

    async def send(self) -> int:
        """Publish what is unsent (module docstring); how many events were sent. Raises only a database error
        (nothing is lost: rows not deleted are sent again)."""
        sent = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await store.unsent_events(conn, BATCH)
                for row in rows:
                    try:
                        await self.publish(row["subject"], event_of(row["subject"], row["payload"]))
                    except Exception as exc:
                        await store.event_failed(conn, row["id"], f"{type(exc).__name__}: {exc}")
                        self._failed(row, exc)
                        return sent  # the transaction commits: what was acknowledged before stays sent
                    await store.event_sent(conn, row["id"])
                    sent += 1
            if self.failing_since is not None and rows:
                log.info("assay events are published again")
                self.failing_since = None
            if len(rows) < BATCH:
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
