"""A real engine replica (services/engine/replica.py, its `serve` wiring) takes the fast lane for a lone batch-1
request of a one-ONNX-model pipeline, and answers it with the bytes the general path gives: a real nats-server with
JetStream, the replica served in this process with a real ONNX model (tests/models.py), requests sent as the
gateway sends them. The lane's own tests (test_engine_fast_lane.py) set `batcher.lane` by hand: nothing there fails
if the replica never wires it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pytest

from services.engine.replica import Replica, Step, first_step_narrowing
from services.engine.runtimes import OnnxRuntime
from shared import subjects
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from shared.logrecords import REQUEST_ID, expand_runs
from shared.settings import Settings
from shared.table_transport import META_HEADER
from tests.local_nats import local_nats_server
from tests.models import ccfraud_onnx, sample_rows, sklearn_predict_proba


@pytest.fixture
def nats_url(tmp_path: Path):
    """A nats-server with JetStream (tests/local_nats.py)."""
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


async def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_real_replica_answers_a_lone_request_through_the_lane_as_the_general_path(nats_url, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(ccfraud_onnx())
    settings = Settings(nats={"url": nats_url}, stack={"data_dir": tmp_path / "data"})
    spec = {"deployment": {"name": "lane", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "ModelInference", "models": [{"name": "ccfraud", "model_version": "1", "sha": "abc",
                                                            "runtime": "onnx"}]}]}
    rows = sample_rows(1).astype(np.float64)  # float64, as JSON bodies arrive: narrowed to the model's float32
    request = to_ipc_stream(pa.table({"tensor": tensor_array(rows)}))

    async def main():
        from nats.js.api import StreamConfig

        client = await nats.connect(nats_url)
        await client.jetstream().add_stream(StreamConfig(name=subjects.INFERENCE_LOGS_STREAM,
                                                         subjects=list(subjects.INFERENCE_LOGS_SUBJECTS)))
        replica = Replica(spec, "r1", settings)
        runtime = OnnxRuntime(model)
        runtime.load()
        replica.steps = [Step(spec["steps"][0], [runtime])]  # as load() builds them, without an object store
        replica.narrowing = first_step_narrowing(replica.steps)
        serving = asyncio.create_task(replica.serve())
        try:
            await _wait_for(lambda: getattr(replica, "request_batcher", None) is not None
                            and replica.request_batcher.subscription is not None or serving.done())
            batcher = replica.request_batcher
            lane = batcher.lane
            assert lane is not None and lane.answered == 0  # the replica wired the lane for this pipeline

            async def ask():
                return await client.request(subjects.engine_infer("lane"), request, timeout=10,
                                            headers={REQUEST_ID: uuid.uuid4().hex})

            fast = [await ask() for _ in range(3)]  # one at a time: each alone
            assert lane.answered == 3
            batcher.lane = None  # the same requests through the general path
            general = await ask()
            assert lane.answered == 3
            for answer in fast:
                assert answer.data == general.data  # byte for byte
                meta, expected = json.loads(answer.headers[META_HEADER]), json.loads(general.headers[META_HEADER])
                assert meta.keys() == expected.keys() and meta["last_model"] == expected["last_model"]
            predicted = from_ipc(general.data).column(0).to_pylist()
            assert np.allclose(np.array(predicted).ravel(), sklearn_predict_proba(rows.astype(np.float32)), atol=1e-5)
        finally:
            replica.stop.set()
            await asyncio.wait_for(serving, 30)
        # every request's row was logged, the lane's three too (published at the replica's stop at last)
        info = await client.jetstream().stream_info(subjects.INFERENCE_LOGS_STREAM)
        logged = 0
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            stored = await client.jetstream().get_msg(subjects.INFERENCE_LOGS_STREAM, seq)
            logged += expand_runs(pa.ipc.open_stream(pa.py_buffer(stored.data)).read_all()).num_rows
        assert logged == 4
        await client.close()

    asyncio.run(main())
