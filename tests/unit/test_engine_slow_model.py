"""A model of a second a call must not hold an engine replica's event loop, which also answers the deployer's status
and liveness probes (docs/deployment.md, "Liveness: a hung replica is replaced"): a real replica served in this
process (tests/unit/replica_world.py: its event loop is this test's) on a real nats-server, a real slow ONNX model
(tests/models.py slow_onnx: a Loop of matrix products, ~0.4 s a call on one idle core of the test VM), lone one-row
requests one after another as steady traffic sends them, and the replica's status asked while each runs.

Before 2026-12-06 (docs/performance.md item 103) the fast lane (services/engine/fast_lane.py) ran every lone request
of up to 256 rows of a one-ONNX-model deployment on the loop whatever the model cost, and the general path's
handlers.runs_inline learnt a pipeline's cost only from runs of 64 rows or more, which one-row traffic never sends:
each call held the loop, the probe waited for it, and a model of 2 s a call was killed as hung. Until the next day
(item 106) a replica learnt one time per call for all its runs: an A/B split's slow arm ran on the loop the first time
it was chosen, and again each time 8 runs of the quick arm had pushed it out of the window."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pytest
from nats.js.api import StreamConfig

from services.engine import handlers
from services.engine.fast_lane import FastLane
from services.engine.replica import LEARN_RUNS, Replica, Step, first_step_narrowing
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


async def probed_during(client, infer: str, status: str, request: bytes, arm: str, call: str) -> None:
    """Ask `request` and the replica's status 0.05 s into its call: the probe must be answered before the call."""
    started = time.monotonic()

    async def ask() -> float:
        answer = await client.request(infer, request, timeout=60, headers={REQUEST_ID: uuid.uuid4().hex})
        answered = from_ipc(answer.data)
        assert answered.num_rows == 1, answer.headers
        assert arm in answered.column("_model_split")[0].as_py()[0], answered.column("_model_split")
        return time.monotonic()

    asking = asyncio.create_task(ask())
    await asyncio.sleep(0.05)  # the call is under way (~0.4 s)
    await client.request(status, b"{}", timeout=60)
    probed = time.monotonic()
    answered = await asking
    took, stood = answered - started, probed - started - 0.05
    assert took > 0.15, f"{call}: the slow arm took {took:.2f} s: too quick for this test to mean much"
    assert probed < answered, (
        f"{call}: the status probe was answered after the slow arm's call ({took:.2f} s; the loop the replica shares "
        f"with this test stood {stood:.2f} s): the call ran on the replica's event loop")


def test_an_ab_splits_slow_arm_leaves_the_replica_answering_its_status_probe(nats_url, tmp_path):
    # a split of 95 % to a quick model and 5 % to a slow one (chosen by the request's `user`, so this test knows which
    # arm each request takes): the quick arm's calls must not make the slow one's run on the loop, neither its first
    # (not measured yet) nor one after many quick ones
    quick_model, slow_model = tmp_path / "quick.onnx", tmp_path / "slow.onnx"
    quick_model.write_bytes(slow_onnx(size=8, iterations=1))  # microseconds a call
    slow_model.write_bytes(slow_onnx(iterations=ITERATIONS))
    runtimes = [OnnxRuntime(quick_model), OnnxRuntime(slow_model)]
    for runtime in runtimes:
        runtime.load()
    models = [{"name": name, "model_version": "1", "sha": name, "runtime": "onnx"} for name in ("quick", "slow")]
    spec = {"deployment": {"name": "ab", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "RandomSplit", "models": models, "weights": [95, 5], "hash_key": "user"}]}
    replica = Replica(spec, "r1", Settings(nats={"url": nats_url}, stack={"data_dir": tmp_path / "data"}))
    replica.steps = [Step(spec["steps"][0], runtimes)]
    replica.narrowing = first_step_narrowing(replica.steps)
    users: dict[int, str] = {}
    for number in range(1000):  # a user of each arm (the split's own choice)
        users.setdefault(replica.steps[0]._choose(pa.table({"user": [f"user-{number}"]})), f"user-{number}")
    quick, slow = (to_ipc_stream(pa.table({"tensor": tensor_array(np.ones((1, 4), np.float32)),
                                           "user": [users[arm]]})) for arm in (0, 1))
    infer, status = subjects.engine_infer("ab"), subjects.engine_replica_status("ab", "r1")

    async def main():
        client = await nats.connect(nats_url)
        await client.jetstream().add_stream(StreamConfig(name=subjects.INFERENCE_LOGS_STREAM,
                                                         subjects=list(subjects.INFERENCE_LOGS_SUBJECTS)))
        serving = asyncio.create_task(replica.serve())
        try:
            await until_status_answers(client, status, serving)
            for _ in range(3):  # the quick arm's calls
                await client.request(infer, quick, timeout=60, headers={REQUEST_ID: uuid.uuid4().hex})
            await probed_during(client, infer, status, slow, "slow", "the slow arm's first call")
            for _ in range(2 * LEARN_RUNS):  # as many of the quick arm's as pushed the slow one out of the window
                await client.request(infer, quick, timeout=60, headers={REQUEST_ID: uuid.uuid4().hex})
            await probed_during(client, infer, status, slow, "slow", "the slow arm's call after 16 quick ones")
            assert replica.ns_per_call >= handlers.INLINE_NS  # the slow arm's, as long as it is not quick
        finally:
            replica.stop.set()
            await asyncio.wait_for(serving, 30)
        await client.close()

    asyncio.run(main())


def _lane(tmp_path: Path, runtime: OnnxRuntime, name: str) -> tuple[Replica, FastLane, bytes]:
    """A replica of one ModelInference step, model `name` run by `runtime`, its fast lane, and a 1-row request."""
    spec = {"deployment": {"name": "d", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "ModelInference", "models": [{"name": name, "model_version": "1", "sha": "abc",
                                                            "runtime": "onnx"}]}]}
    replica = Replica(spec, "r1", Settings(stack={"data_dir": tmp_path}))
    replica.steps = [Step(spec["steps"][0], [runtime])]
    replica.narrowing = first_step_narrowing(replica.steps)
    lane = FastLane(runtime, replica.narrowing, {"name": name, "sha": "abc"}, "v1", 1 << 20, replica)
    return replica, lane, to_ipc_stream(pa.table({"tensor": tensor_array(np.ones((1, 4), np.float32))}))


def test_the_fast_lane_runs_only_what_the_replica_runs_on_its_loop_and_teaches_it_a_slow_call(tmp_path):
    model = tmp_path / "slow.onnx"
    model.write_bytes(slow_onnx(iterations=16))  # ~50 ms a call: 1 ms (INLINE_NS) is all it must pass
    runtime = OnnxRuntime(model)
    runtime.load()
    replica, lane, request = _lane(tmp_path, runtime, "slow")
    assert lane.answer(request, time.perf_counter_ns()) is None  # nothing measured: the general path's thread
    replica.learn(1, 10_000)  # say a quick call was measured (a model can be quick for some inputs, slow for others)
    answer = lane.answer(request, time.perf_counter_ns())  # so the lane runs it, and holds the loop ~50 ms once
    assert answer is not None and answer.elapsed[0] >= handlers.INLINE_NS
    assert replica.ns_per_call >= handlers.INLINE_NS  # ... which it told the replica
    assert lane.answer(request, time.perf_counter_ns()) is None and lane.answered == 1  # the next: the thread
    # a call of HELD_NS or more is the model's time, not a preemption: a quick call measured after it does not send
    # the next to the loop (before 2026-12-06 it did, and a model slow for some inputs held the loop at each)
    assert answer.elapsed[0] >= handlers.HELD_NS
    replica.measurement.result(60)  # measured again by its CPU, in a thread of its own (Replica.held_loop)
    replica.learn(1, 10_000)
    assert lane.answer(request, time.perf_counter_ns()) is None and lane.answered == 1


class Preempting:
    """A session whose next call the host preempts `ns` by the lane's wall clock (`clock`): the model's time is
    its own, microseconds. Says which thread made each call."""

    def __init__(self, session, clock: dict[str, int], ns: int) -> None:
        self.session = session
        self.clock = clock
        self.ns = ns
        self.preempt = False
        self.threads: list[int] = []

    def run(self, names, feeds):
        self.threads.append(threading.get_ident())
        if self.preempt:
            self.preempt = False
            self.clock["offset"] += self.ns
        return self.session.run(names, feeds)


def test_a_quick_lane_call_preempted_past_held_ns_is_measured_again_not_kept_as_slow(tmp_path, monkeypatch):
    # from item 106 a lane call of HELD_NS (10 ms) or more by the wall clock entered its model's window as measured:
    # a quick call the host preempted that long (at load ~10) kept the model's next 52-105 runs in the thread. Now
    # the same call is measured again by its CPU, in a thread, and only that enters the window (item 108)
    from services.engine import fast_lane

    clock = {"offset": 0}

    class Clock:  # the lane's wall clock, which the preemption moves on
        @staticmethod
        def perf_counter_ns() -> int:
            return time.perf_counter_ns() + clock["offset"]

    monkeypatch.setattr(fast_lane, "time", Clock)
    model = tmp_path / "quick.onnx"
    model.write_bytes(slow_onnx(size=8, iterations=1))  # microseconds a call
    runtime = OnnxRuntime(model)
    runtime.load()
    session = runtime.session = Preempting(runtime.session, clock, 2 * handlers.HELD_NS)
    replica, lane, request = _lane(tmp_path, runtime, "quick")
    replica.learn(1, 10_000)  # measured quick
    assert lane.answer(request, Clock.perf_counter_ns()) is not None
    session.preempt = True
    answer = lane.answer(request, Clock.perf_counter_ns())
    assert answer is not None and answer.elapsed[0] >= 2 * handlers.HELD_NS  # 20 ms by its wall clock
    measuring = getattr(replica, "measuring", lambda: False)
    deadline = time.monotonic() + 30
    while measuring() and time.monotonic() < deadline:
        time.sleep(0.005)
    replica.learn(1, 10_000)  # ... quick, as the call measured again was
    assert handlers.runs_inline(replica, 1), f"a preempted quick call was kept as slow: {replica.ns_per_call}"
    assert lane.answer(request, Clock.perf_counter_ns()) is not None
    assert len(session.threads) == 4 and session.threads[2] != threading.get_ident()  # the call again, apart
    calls = replica.costs[id(replica.steps[0].model)].calls  # the window: the call measured again between the two
    assert calls[0] == calls[2] == 10_000 and 0 < calls[1] < handlers.INLINE_NS, calls
