"""A batch the log store holds for its deployment's announcement (services/log_store/handlers.py, "Whose records a
batch holds" in docs/logs.md) holds no other pipeline's assay. It holds the log store consumer's ack floor, which the
assay runner reads to know the log complete; before, every assay's windows waited for it, up to `max_log_wait` (600 s)
each and then scored with `logs_complete: false`, for the hour until such a batch is quarantined. Now the log store
notes its held batches' pipelines in the consumer's metadata and a window waits only for its own pipeline's."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import nats as nats_client
import numpy as np
import pytest

from shared import subjects
from shared.bus import read_held_note
from shared.logrecords import log_header
from tests.integration.conftest import post
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_assays import config, iso, publish_rows
from tests.integration.test_log_owners import _send, _table
from tests.integration.test_logs import _values, all_rows, wait_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_batch_held_for_another_pipeline_s_announcement_holds_no_window_of_this_one(stack, alice):
    held_pipeline, name = f"unheard-{uuid.uuid4().hex[:6]}", f"assayed{uuid.uuid4().hex[:6]}"
    post(stack, "pipelines/create", alice.token, {"pipeline_id": held_pipeline, "workspace_id": alice.workspace_id,
                                                  "definition": {}})
    created = post(stack, "pipelines/create", alice.token, {"pipeline_id": name, "workspace_id": alice.workspace_id,
                                                            "definition": {}}).json()
    pipeline = {**created, "name": name}
    unannounced = fake_deployment(alice.workspace_id, held_pipeline)
    settings = stack.settings()

    async def hold() -> None:
        nc = await nats_client.connect(settings.nats.url)
        try:
            header = log_header(alice.workspace_id, held_pipeline, unannounced, "v")
            await _send(nc, unannounced, header, _table([7.0], int(time.time() * 1000)))
            js = nc.jetstream()
            deadline = time.monotonic() + 30
            while True:  # held: the log store has noted it
                info = await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
                if (alice.workspace_id, held_pipeline) in read_held_note(info.config.metadata)[1]:
                    return
                assert time.monotonic() < deadline, f"the held batch was not noted: {info.config.metadata}"
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def release() -> None:  # stored, so that it holds nothing for the rest of the session
        nc = await nats_client.connect(settings.nats.url)
        try:
            await announce(nc, alice.workspace_id, unannounced)
        finally:
            await nc.close()

    asyncio.run(hold())
    try:
        start = int(time.time() * 1000)
        static = {"Static": {"values": np.linspace(5.0, 6.0, 50).tolist()}}
        body = config(alice, pipeline, "beside a held batch", static, iso(start), "1 seconds")
        assay_id = post(stack, "assays/create", alice.token, body).json()["assay_id"]
        asyncio.run(publish_rows(stack, alice, name, np.linspace(0.0, 1.0, 40), start + 300))
        deadline = time.monotonic() + 30
        while not (results := post(stack, "assays/get_results", alice.token, {"assay_id": assay_id}).json()):
            assert time.monotonic() < deadline, "the window waits for a batch held for another pipeline"
            time.sleep(0.2)
        first = results[-1]
        first_end = datetime.fromtimestamp(start / 1000 + 1, UTC)
        assert datetime.fromisoformat(first["window_start"].replace("Z", "+00:00")) == first_end - timedelta(seconds=1)
        assert first["window_summary"]["count"] == 40 and first["logs_complete"] is True
        post(stack, "assays/set_active", alice.token, {"id": assay_id, "active": False})
        assert all_rows(stack, alice, held_pipeline) == []  # still held, not stored
    finally:
        asyncio.run(release())
    assert _values(wait_rows(stack, alice, held_pipeline, 1, timeout=30)) == [7.0]
