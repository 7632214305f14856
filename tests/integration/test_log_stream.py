"""INFERENCE_LOGS stays bounded (issue 14): a record leaves the stream once the log store has stored it, the byte
cap refuses publishes with a clear error (nothing dropped silently), and a service start adds only what a stream
lacks, never undoing an operator's limits."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import time

import nats as nats_client
import numpy as np
import pytest
from faststream.nats import NatsBroker
from nats.js.api import DiscardPolicy, RetentionPolicy
from nats.js.errors import APIError

from shared import subjects
from shared.bus import ensure_streams
from tests.integration.log_owners import fake_deployment
from tests.integration.test_logs import _create, _publish, wait_rows

pytestmark = pytest.mark.integration
STREAM = subjects.INFERENCE_LOGS_STREAM


async def _subject_count(js, subject: str) -> int:
    info = await js.stream_info(STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_streams_are_bounded_and_keep_only_what_is_not_stored(stack, alice):
    settings = stack.settings()
    nc = await nats_client.connect(settings.nats.url)
    js = nc.jetstream()
    log_store = stack.state()["components"]["log_store"]["pid"]
    try:
        info = await js.stream_info(STREAM)
        assert info.config.retention == RetentionPolicy.INTEREST and info.config.discard == DiscardPolicy.NEW
        assert info.config.max_bytes == settings.logs.stream_max_bytes
        assert info.config.max_age == settings.logs.stream_max_age
        events = await js.stream_info(subjects.EVENTS_STREAM)
        assert events.config.retention == RetentionPolicy.LIMITS and events.config.discard == DiscardPolicy.NEW
        assert events.config.max_age == settings.nats.events_max_age
        assert events.config.max_bytes == settings.nats.events_max_bytes

        # records wait in the stream while the log store is paused, and leave it once stored
        await asyncio.to_thread(_create, stack, alice, "streamed")
        subject = f"logs.inference.{fake_deployment(alice.workspace_id, 'streamed')}"
        now = int(time.time() * 1000)
        os.kill(log_store, signal.SIGSTOP)
        try:
            for i in range(20):
                await _publish(nc, "streamed", alice.workspace_id, [float(i)], now + i)
            assert await _subject_count(js, subject) == 20
        finally:
            os.kill(log_store, signal.SIGCONT)
        await asyncio.to_thread(wait_rows, stack, alice, "streamed", 20)

        async def drained() -> bool:
            return await _subject_count(js, subject) == 0

        await _until(drained)

        # an operator lowers the cap; a service start keeps it
        tight = copy.deepcopy((await js.stream_info(STREAM)).config)
        cap = int((await js.stream_info(STREAM)).state.bytes) + 3 * 1024 * 1024
        tight.max_bytes = cap
        await js.update_stream(tight)
        broker = NatsBroker(settings.nats.url)
        await broker.connect()
        try:
            await ensure_streams(broker, settings)
        finally:
            await broker.stop()
        assert (await js.stream_info(STREAM)).config.max_bytes == cap

        # with the log store paused, publishes fill the stream to the cap, then are refused with an error
        big = [float(v) for v in np.arange(40_000)]  # ~0.6 MB a batch
        accepted, refused = 0, None
        os.kill(log_store, signal.SIGSTOP)
        try:
            for _ in range(20):
                try:
                    await _publish(nc, "streamed", alice.workspace_id, big, now + 100)
                    accepted += 1
                except APIError as exc:
                    refused = exc
                    break
            state = (await js.stream_info(STREAM)).state
            assert state.bytes <= cap
        finally:
            os.kill(log_store, signal.SIGCONT)
        assert refused is not None and "maximum bytes" in str(refused).lower(), refused
        assert 1 <= accepted < 20
        # everything accepted is stored, and leaves the stream
        await asyncio.to_thread(wait_rows, stack, alice, "streamed", 20 + accepted * len(big), 60.0)
        await _until(drained, 60.0)
    finally:
        try:
            restored = copy.deepcopy((await js.stream_info(STREAM)).config)
            restored.max_bytes = settings.logs.stream_max_bytes
            await js.update_stream(restored)
        finally:
            await nc.close()
