"""The log store's events.logs.batch_quarantined is not lost when the EVENTS stream refuses it: it is written to the
log store's outbox (shared/outbox.py, migration 007) in the transaction of the batch's quarantine row and reaches the
stream once it accepts again, once, with Nats-Msg-Id = event_id. Before, the ingest loop published it after the
commit and after acknowledging the batch: a refused publish was a warning in the log and the event was gone.

A batch that is not Arrow goes onto INFERENCE_LOGS (not refused: another stream) as in test_log_quarantine; the
stream refuses as in test_assay_events; the quarantine and outbox tables and the stream are read directly."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import nats as nats_client
import pytest

from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, log_header
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.test_assay_events import events_refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SUBJECT = "events.logs.batch_quarantined"


async def tables(stack, batch_id: str) -> tuple[int | None, list[dict]]:
    """The batch's quarantine row id (None while it has none) and the outbox's unsent rows of its event."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        quarantined = await conn.fetchval("SELECT id FROM log_store.quarantine WHERE batch_id = $1", batch_id)
        rows = await conn.fetch("SELECT event_id, subject FROM log_store.outbox WHERE payload->>'batch_id' = $1",
                                batch_id)
    finally:
        await conn.close()
    return quarantined, [dict(r) for r in rows]


def test_a_quarantine_event_the_stream_refused_is_published_once_it_accepts_it(stack, alice):
    batch_id = str(uuid.uuid4())

    async def quarantined_while_refused() -> int:
        async with events_refused(stack):
            nc = await nats_client.connect(stack.settings().nats.url)
            try:
                await nc.jetstream().publish(
                    f"logs.inference.outboxed-{uuid.uuid4().hex[:6]}", b"not arrow at all",
                    headers={MSG_ID: batch_id, BATCH_ID: batch_id,
                             LOG_HEADER: log_header(alice.workspace_id, "outboxed", "outboxed-1", "v")})
            finally:
                await nc.close()
            deadline = time.monotonic() + 60
            while (found := await tables(stack, batch_id))[0] is None:
                assert time.monotonic() < deadline, "the batch was never quarantined"
                await asyncio.sleep(0.2)
            quarantine_id, kept = found
            assert [r["subject"] for r in kept] == [SUBJECT]  # committed with the row, kept while the stream refuses
            assert await stream_events(stack, SUBJECT, "batch_id", {batch_id}) == []  # refused: not on it
            return quarantine_id

    quarantine_id = asyncio.run(quarantined_while_refused())
    deadline = time.monotonic() + 90  # a row refused OWN_RETRIES times is tried at the outbox's IDLE rounds
    while not asyncio.run(stream_events(stack, SUBJECT, "batch_id", {batch_id})):
        assert time.monotonic() < deadline, "the refused quarantine event never reached the stream"
        time.sleep(0.2)
    asyncio.run(outbox_sent(stack, "log_store", "batch_id", {batch_id}))  # a copy would be on the stream too
    events = asyncio.run(stream_events(stack, SUBJECT, "batch_id", {batch_id}))
    assert len(events) == 1, events  # once
    event = events[0]
    assert event["_msg_id"] == event["event_id"]
    assert (event["quarantine_id"], event["workspace_id"], event["pipeline"]) == (quarantine_id, alice.workspace_id,
                                                                                 "outboxed")
    assert "not an inference log batch" in event["reason"]
    assert asyncio.run(tables(stack, batch_id))[1] == []  # deleted once acknowledged
