"""A real engine replica (services/engine/replica.py, its `serve` wiring) takes the fast lane for a lone batch-1
request of a one-ONNX-model pipeline, and answers it with the bytes the general path gives: a real nats-server with
JetStream, the replica served in this process with a real ONNX model (tests/models.py), requests sent as the
gateway sends them. The lane's own tests (test_engine_fast_lane.py) set `batcher.lane` by hand: nothing there fails
if the replica never wires it."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pytest

from services.engine import handlers
from shared import subjects
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from shared.logrecords import REQUEST_ID
from shared.table_transport import META_HEADER
from tests.local_nats import local_nats_server
from tests.models import sample_rows, sklearn_predict_proba
from tests.unit.replica_world import ccfraud_replica, logged_tables, until_batcher_subscribed


@pytest.fixture
def nats_url(tmp_path: Path):
    """A nats-server with JetStream (tests/local_nats.py)."""
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


def test_a_real_replica_answers_a_lone_request_through_the_lane_as_the_general_path(nats_url, tmp_path):
    rows = sample_rows(1).astype(np.float64)  # float64, as JSON bodies arrive: narrowed to the model's float32
    request = to_ipc_stream(pa.table({"tensor": tensor_array(rows)}))

    async def main():
        client = await nats.connect(nats_url)
        async with ccfraud_replica(client, nats_url, tmp_path, "lane") as (replica, serving):
            await until_batcher_subscribed(replica, serving)
            batcher = replica.request_batcher
            lane = batcher.lane
            assert lane is not None and lane.answered == 0  # the replica wired the lane for this pipeline

            async def ask():
                return await client.request(subjects.engine_infer("lane"), request, timeout=10,
                                            headers={REQUEST_ID: uuid.uuid4().hex})

            first = await ask()  # a replica's first request takes the thread: its model's cost is not known yet
            assert lane.answered == 0 and replica.ns_per_call < handlers.INLINE_NS  # ccfraud's call: quick
            fast = [await ask() for _ in range(3)]  # one at a time: each alone
            assert lane.answered == 3
            batcher.lane = None  # the same requests through the general path
            general = await ask()
            assert lane.answered == 3
            assert first.data == general.data
            for answer in fast:
                assert answer.data == general.data  # byte for byte
                meta, expected = json.loads(answer.headers[META_HEADER]), json.loads(general.headers[META_HEADER])
                assert meta.keys() == expected.keys() and meta["last_model"] == expected["last_model"]
            predicted = from_ipc(general.data).column(0).to_pylist()
            assert np.allclose(np.array(predicted).ravel(), sklearn_predict_proba(rows.astype(np.float32)), atol=1e-5)
        # every request's row was logged, the lane's three too (published at the replica's stop at last)
        assert sum(table.num_rows for table in await logged_tables(client)) == 5
        await client.close()

    asyncio.run(main())
