"""Data survives a full stop and start of the stack: PostgreSQL rows, S3 objects and JetStream
events recorded by a service."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from faststream.nats import NatsBroker

from shared import subjects
from shared.bus import publish_event, request
from shared.messages import CountEvents, EventCount, ServiceStarted
from shared.objectstore import BUCKET_DATASETS, MinioObjectStore
from tests.stack import stop_process

pytestmark = pytest.mark.integration


async def _lineage_count(url: str, subject: str, expected: int) -> int:
    broker = NatsBroker(url)
    await broker.connect()
    try:
        count = -1
        for _ in range(100):
            reply = await request(broker, subjects.LINEAGE_EVENTS_COUNT, CountEvents(subject=subject),
                                  reply_model=EventCount)
            count = reply.count
            if count >= expected:
                break
            await asyncio.sleep(0.2)
        return count
    finally:
        await broker.stop()


async def test_data_survives_stop_and_start(stack, admin):
    """On the session's stack (what the files before this one stored in it as well), started again for the files
    after it: a stack of the test's own cost a start and a stop more (~15 s of CPU; 26 s for the test in session
    40's run). A stack stopped and not started again would fail every later test of the process: it is started again
    whatever the stop's checks found."""
    key, payload, subject = f"keep/{uuid.uuid4()}", uuid.uuid4().bytes * 100, f"events.keep.made{uuid.uuid4().hex}"
    try:
        settings = stack.settings()
        await MinioObjectStore(settings.s3).put_bytes(BUCKET_DATASETS, key, payload)
        conn = await asyncpg.connect(settings.postgres.dsn)
        await conn.execute("CREATE TABLE IF NOT EXISTS public.keepsake (v text)")
        await conn.execute("INSERT INTO public.keepsake VALUES ($1)", key)
        await conn.close()
        broker = NatsBroker(settings.nats.url)
        await broker.connect()
        for i in range(3):
            await publish_event(broker, subject, ServiceStarted(name="keep", version="1", pid=i))
        await broker.stop()
        assert await _lineage_count(settings.nats.url, subject, 3) == 3
        stack.lease_ports_again()  # the session's stack's leases ended minutes ago: none between the stop and start
        stopping = time.monotonic()
        assert await asyncio.to_thread(stop_process, stack.process, 90) == 0
        # a healthy stack's SIGTERM: every process gone within seconds (~2.5 s measured), no socket, pid or state
        # file left (a signal during the start: test_stack_stop.py)
        assert time.monotonic() - stopping < 15
        assert stack.leftovers() == []
    finally:
        if stack.process.poll() is not None:
            await asyncio.to_thread(stack.start_again)  # a failed start: every later test of the stack fails at once
    settings = stack.settings()
    assert await MinioObjectStore(settings.s3).get_bytes(BUCKET_DATASETS, key) == payload
    conn = await asyncpg.connect(settings.postgres.dsn)
    assert await conn.fetchval("SELECT count(*) FROM public.keepsake WHERE v = $1", key) == 1
    await conn.close()
    assert await _lineage_count(settings.nats.url, subject, 3) == 3
    # a token issued before the stop is still taken (its signing key is stored): the session's admin, which the
    # files after this one sign their users up with
    assert await asyncio.to_thread(admin.post, "workspaces/list", {})
