"""A batch whose row count or headers the quarantine row cannot hold as they are is still quarantined, and ingestion
goes on past it. An engine's segment description counting 2**31 rows or more (log_store.quarantine.rows and
segments.row_count are integer columns) failed to be stored, and then to be quarantined, at every try: the
quarantine's INSERT failed on the count, the ingest loop retried it for ever and no later batch of any pipeline was
stored. A header holding the text backslash-u0000 did the same (below).

The messages go onto INFERENCE_LOGS as an engine publishes them (tests/integration/test_log_quarantine_outbox.py
publishes a batch the same way); the quarantine table and the stream are read directly."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import nats as nats_client
import pytest

from shared.log_segments import ENGINE_SUFFIX, SEGMENT_HEADER, key_prefix
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, log_header
from tests.integration.bus_events import stream_events
from tests.integration.log_owners import announce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def quarantined_rows(stack, batch_id: str) -> tuple[bool, int | None]:
    """(whether the batch has a quarantine row, its rows)."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        row = await conn.fetchrow("SELECT rows FROM log_store.quarantine WHERE batch_id = $1", batch_id)
    finally:
        await conn.close()
    return row is not None, row["rows"] if row is not None else None


def test_a_segment_description_counting_more_rows_than_the_table_holds_is_quarantined(stack, alice):
    batch_id = str(uuid.uuid4())
    pipeline = f"uncounted-{uuid.uuid4().hex[:6]}"
    key = f"{key_prefix(alice.workspace_id, pipeline)}2026/12/03/{uuid.uuid4().hex}{ENGINE_SUFFIX}"
    now = int(time.time() * 1000)
    description = {"key": key, "bytes": 100, "rows": 2**31, "min_time": now, "max_time": now}

    async def run() -> tuple[bool, int | None]:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await announce(nc, alice.workspace_id, f"{pipeline}-1")
            await nc.jetstream().publish(
                f"logs.inference.{pipeline}-1", json.dumps(description).encode(),
                headers={MSG_ID: batch_id, BATCH_ID: batch_id, SEGMENT_HEADER: "1",
                         LOG_HEADER: log_header(alice.workspace_id, pipeline, f"{pipeline}-1", "v")})
        finally:
            await nc.close()
        deadline = time.monotonic() + 90
        while not (found := await quarantined_rows(stack, batch_id))[0]:
            assert time.monotonic() < deadline, "the description was never quarantined: the ingest loop is stuck on it"
            await asyncio.sleep(0.2)
        return found

    assert asyncio.run(run()) == (True, None)  # a count the column cannot hold is left out, as a bad workspace id is
    deadline = time.monotonic() + 30
    while not (events := asyncio.run(stream_events(stack, "events.logs.batch_quarantined", "batch_id", {batch_id}))):
        assert time.monotonic() < deadline, "the quarantine event never reached the stream"
        time.sleep(0.2)
    assert [(e["pipeline"], e["rows"]) for e in events] == [(pipeline, None)]


def test_a_batch_whose_header_holds_the_text_backslash_u0000_is_quarantined_with_it(stack, alice):
    """The quarantine row keeps the batch's headers as jsonb, which refuses NUL: NULs are removed from the header
    strings themselves. Removed as the escape from the JSON text instead, a header's own backslash-u0000 text lost its
    backslash-u0000 and left a backslash escaping the next character: not JSON, the quarantine failed at every try and
    the ingest loop was stuck on the batch for ever (shared/consumers.py's dead letters met the same)."""
    batch_id = str(uuid.uuid4())
    pipeline = f"noted-{uuid.uuid4().hex[:6]}"
    note = "a\\u0000x"  # the text backslash-u0000, no NUL

    async def run() -> dict:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await nc.jetstream().publish(
                f"logs.inference.{pipeline}", b"not arrow at all",
                headers={MSG_ID: batch_id, BATCH_ID: batch_id, "Railyard-Note": note,
                         LOG_HEADER: log_header(alice.workspace_id, pipeline, f"{pipeline}-1", "v")})
        finally:
            await nc.close()
        deadline = time.monotonic() + 90
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            while (headers := await conn.fetchval("SELECT headers::text FROM log_store.quarantine"
                                                  " WHERE batch_id = $1", batch_id)) is None:
                assert time.monotonic() < deadline, "the batch was never quarantined: the ingest loop is stuck on it"
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        return json.loads(headers)

    assert asyncio.run(run())["Railyard-Note"] == note  # kept as it came
