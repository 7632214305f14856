"""A model of a second a call must not hold an engine replica's event loop, which also answers the deployer's status
and liveness probes (docs/deployment.md, "Liveness: a hung replica is replaced"): a real replica served in this
process (tests/unit/replica_world.py: its event loop is this test's) on a real nats-server, a real slow ONNX model
(tests/models.py slow_onnx: a Loop of matrix products, ~0.4 s a call on one idle core of the test VM), lone one-row
requests one after another as steady traffic sends them, and the replica's status asked while each runs.

Before 2026-12-06 (docs/performance.md item 103) the fast lane (services/engine/fast_lane.py) ran every lone request
of up to 256 rows of a one-ONNX-model deployment on the loop whatever the model cost, and the general path's
handlers.runs_inline learnt a pipeline's cost only from runs of 64 rows or more, which one-row traffic never sends:
each call held the loop, the probe waited for it, and a model of 2 s a call was killed as hung."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pytest

from services.engine import handlers
from services.engine.fast_lane import FastLane
from services.engine.replica import Replica, Step, first_step_narrowing
from services.engine.runtimes import OnnxRuntime
from shared import subjects
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from shared.logrecords import REQUEST_ID
from shared.settings import Settings
from tests.local_nats import local_nats_server
from tests.models import slow_onnx
from tests.unit.replica_world import ccfraud_replica, until_batcher_subscribed, until_status_answers

CALLS = 2
ITERATIONS = 128  # the probe's model: ~0.4 s a call on one idle core of the test VM (more under load: it is CPU)


@pytest.fixture
def nats_url(tmp_path: Path):
    """A nats-server with JetStream (tests/local_nats.py)."""
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


def test_a_slow_models_calls_leave_the_replica_answering_its_status_probe(nats_url, tmp_path):
    request = to_ipc_stream(pa.table({"tensor": tensor_array(np.ones((1, 4), np.float32))}))
    infer, status = subjects.engine_infer("slow"), subjects.engine_replica_status("slow", "r1")

    async def main():
        client = await nats.connect(nats_url)
        async with ccfraud_replica(client, nats_url, tmp_path, "slow",
                                         onnx=slow_onnx(iterations=ITERATIONS)) as (replica, serving):
            await until_batcher_subscribed(replica, serving)
            await until_status_answers(client, status, serving)
            assert replica.request_batcher.lane is not None  # the lane would take these requests

            async def ask() -> float:
                answer = await client.request(infer, request, timeout=60, headers={REQUEST_ID: uuid.uuid4().hex})
                assert from_ipc(answer.data).num_rows == 1, answer.headers
                return time.monotonic()

            # one at a time, each a lone request: the first of a replica that has measured nothing, then one of a
            # model it has measured
            for call in range(CALLS):
                started = time.monotonic()
                asking = asyncio.create_task(ask())
                await asyncio.sleep(0.05)  # the call is under way (~0.4 s)
                await client.request(status, b"{}", timeout=60)
                probed = time.monotonic()
                answered = await asking
                took, stood = answered - started, probed - started - 0.05
                assert took > 0.15, f"call {call}: the model took {took:.2f} s: too quick for this test to mean much"
                # the replica shares this test's loop: held by the call, the loop did not even send the probe
                assert probed < answered, (
                    f"call {call}: the status probe was answered after the model's call ({took:.2f} s; the loop the "
                    f"replica shares with this test stood {stood:.2f} s): the call ran on the replica's event loop")
            assert replica.ns_per_call >= handlers.INLINE_NS  # learnt from one-row calls
        await client.close()

    asyncio.run(main())


def test_the_fast_lane_runs_only_what_the_replica_runs_on_its_loop_and_teaches_it_a_slow_call(tmp_path):
    model = tmp_path / "slow.onnx"
    model.write_bytes(slow_onnx(iterations=16))  # ~50 ms a call: 1 ms (INLINE_NS) is all it must pass
    runtime = OnnxRuntime(model)
    runtime.load()
    spec = {"deployment": {"name": "d", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "ModelInference", "models": [{"name": "slow", "model_version": "1", "sha": "abc",
                                                            "runtime": "onnx"}]}]}
    replica = Replica(spec, "r1", Settings(stack={"data_dir": tmp_path}))
    replica.steps = [Step(spec["steps"][0], [runtime])]
    replica.narrowing = first_step_narrowing(replica.steps)
    lane = FastLane(runtime, replica.narrowing, {"name": "slow", "sha": "abc"}, "v1", 1 << 20, replica)
    request = to_ipc_stream(pa.table({"tensor": tensor_array(np.ones((1, 4), np.float32))}))
    assert lane.answer(request, time.perf_counter_ns()) is None  # nothing measured: the general path's thread
    replica.learn(1, 10_000)  # say a quick call was measured (a model can be quick for some inputs, slow for others)
    answer = lane.answer(request, time.perf_counter_ns())  # so the lane runs it, and holds the loop ~50 ms once
    assert answer is not None and answer.elapsed[0] >= handlers.INLINE_NS
    assert replica.ns_per_call >= handlers.INLINE_NS  # ... which it told the replica
    assert lane.answer(request, time.perf_counter_ns()) is None and lane.answered == 1  # the next: the thread
