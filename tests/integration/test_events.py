"""Events go through JetStream durably: the lineage service's durable consumer records every event
exactly once, including events published while it was dead."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import nats as nats_client
import pytest
from faststream.nats import NatsBroker

from shared import subjects
from shared.bus import ensure_streams, publish_event, request
from shared.messages import CountEvents, EventCount, ServiceStarted
from tests.integration.test_dead_letters import handled

pytestmark = pytest.mark.integration


async def _count(broker: NatsBroker, subject: str) -> int:
    reply = await request(broker, subjects.LINEAGE_EVENTS_COUNT, CountEvents(subject=subject), timeout=5,
                          reply_model=EventCount)
    return reply.count


async def _wait_count(broker: NatsBroker, subject: str, expected: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        try:
            count = await _count(broker, subject)
        except Exception:  # the service may be restarting
            count = -1
        if count >= expected:
            return count
        await asyncio.sleep(0.2)
    return count


async def test_event_survives_consumer_restart(stack):
    subject = f"events.test.happened{os.getpid()}x{int(time.time())}"
    broker = NatsBroker(stack.settings().nats.url)
    await broker.connect()
    try:
        await ensure_streams(broker)
        first = [ServiceStarted(name="probe", version="t", pid=i) for i in range(5)]
        for event in first:
            await publish_event(broker, subject, event)
        assert await _wait_count(broker, subject, 5) == 5

        # kill the consumer, publish while it is down, and publish one event twice (same id)
        os.kill(stack.state()["components"]["workflow_lineage"]["pid"], signal.SIGKILL)
        later = [ServiceStarted(name="probe", version="t", pid=100 + i) for i in range(20)]
        for event in later:
            await publish_event(broker, subject, event)
        await publish_event(broker, subject, later[0])

        assert await _wait_count(broker, subject, 25) == 25
        # A wait of fixed length could end before a wrongly recorded duplicate (the test proved nothing on a slow
        # host): a later event, then until the consumer has settled everything up to it (acknowledged once stored)
        marker = ServiceStarted(name="probe", version="t", pid=999)
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            js = nc.jetstream()
            seq = (await js.publish(f"{subject}.marker", marker.model_dump_json().encode(),
                                    stream=subjects.EVENTS_STREAM,
                                    headers={"Nats-Msg-Id": str(marker.event_id)})).seq
            await handled(js, subjects.LINEAGE_EVENTS_DURABLE, seq)
        finally:
            await nc.close()
        assert await _count(broker, f"{subject}.marker") == 1
        assert await _count(broker, subject) == 25  # the duplicate was not recorded
    finally:
        await broker.stop()
