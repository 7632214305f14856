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
from tests.stack import stack_directory, start_stack

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


async def test_data_survives_stop_and_start():
    with stack_directory() as data_dir:
        first = start_stack(data_dir)
        key, payload, subject = f"keep/{uuid.uuid4()}", uuid.uuid4().bytes * 100, f"events.keep.made{uuid.uuid4().hex}"
        try:
            await asyncio.to_thread(first.wait_healthy)
            settings = first.settings()
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
        finally:
            stopping = time.monotonic()
            assert await asyncio.to_thread(first.stop) == 0
        # a healthy stack's SIGTERM: every process gone within seconds (~2.5 s measured), no socket, pid or state
        # file left (a signal during the start: test_stack_stop.py)
        assert time.monotonic() - stopping < 15
        assert first.leftovers() == []

        second = start_stack(data_dir, env=first.env)
        try:
            await asyncio.to_thread(second.wait_healthy)
            settings = second.settings()
            assert await MinioObjectStore(settings.s3).get_bytes(BUCKET_DATASETS, key) == payload
            conn = await asyncpg.connect(settings.postgres.dsn)
            assert await conn.fetchval("SELECT count(*) FROM public.keepsake WHERE v = $1", key) == 1
            await conn.close()
            assert await _lineage_count(settings.nats.url, subject, 3) == 3
        finally:
            assert await asyncio.to_thread(second.stop) == 0
