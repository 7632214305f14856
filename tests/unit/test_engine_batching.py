"""Adaptive batching in the engine (services/engine/batching.py) with a real onnxruntime model, and the log policy
(services/engine/logpolicy.py): requests queued together run as one model call, each gets its own rows back and
its own record; a bad request fails alone; policies keep what they say."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pytest

from services.engine import handlers
from services.engine.batching import RequestBatcher, batching_config, can_batch
from services.engine.logpolicy import LogPolicy, check_log_policy
from services.engine.replica import Step
from services.engine.runtimes import OnnxRuntime, narrowing
from shared.arrow_codec import from_ipc, narrow, tensor_array, to_ipc_stream
from shared.bus import ERROR_HEADER
from shared.errors import InvalidRequest
from shared.logrecords import InferenceRecord
from shared.table_transport import META_HEADER
from tests.models import ccfraud_onnx, sample_rows


@dataclass
class Msg:
    data: bytes
    reply: str
    headers: dict = field(default_factory=dict)


class Pipeline:
    """What RequestBatcher needs of a replica, with the real Step and OnnxRuntime, counting model calls."""

    workers: list = []
    store = None
    spec = {"deployment": {"pipeline_version": "v1"}}

    def __init__(self, path) -> None:
        runtime = OnnxRuntime(path)
        runtime.load()
        self.steps = [Step({"kind": "ModelInference", "models": [{"name": "m", "sha": "abc"}]}, [runtime])]
        self.calls: list[int] = []

    def narrow(self, table: pa.Table) -> pa.Table:
        return narrow(table, narrowing(self.steps[0].runtimes))

    def run(self, table: pa.Table):
        self.calls.append(table.num_rows)
        output, model, _ = self.steps[0].run(table)
        return output, [1], model, []


@pytest.fixture
def pipeline(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(ccfraud_onnx())
    return Pipeline(path)


def _request(rows: np.ndarray, reply: str) -> Msg:
    return Msg(to_ipc_stream(pa.table({"tensor": tensor_array(rows)})), reply)


def _run(pipeline: Pipeline, messages: list[Msg]) -> tuple[dict[str, handlers.Answer], list[str]]:
    answers: dict[str, handlers.Answer] = {}
    alone: list[str] = []

    async def run_alone(msg, received, at_ms):
        alone.append(msg.reply)
        answers[msg.reply] = await handlers.infer(pipeline, msg.data, msg.headers, received, 1 << 20)

    async def deliver(msg, answer, received, at_ms):
        answers[msg.reply] = answer

    async def main():
        batcher = RequestBatcher(pipeline, 0.0, 4096, 1 << 20, run_alone, deliver, lambda msg: False)
        task = asyncio.create_task(batcher.run())
        for msg in messages:  # as the bus client does: every queued message handed over before the batch runs
            await batcher.submit(msg)
        await asyncio.sleep(0)
        await batcher.idle()
        task.cancel()

    asyncio.run(main())
    return answers, alone


def test_queued_requests_run_as_one_call_and_get_their_own_rows(pipeline):
    rows = [sample_rows(n, seed=i) for i, n in enumerate((1, 3, 1, 5))]
    answers, alone = _run(pipeline, [_request(r, f"r{i}") for i, r in enumerate(rows)])
    assert pipeline.calls == [10] and alone == []  # one model call for the four requests
    session_out = [pipeline.steps[0].runtimes[0].session.run(None, {"tensor": r})[0] for r in rows]
    for i, expected in enumerate(session_out):
        answer = answers[f"r{i}"]
        got = from_ipc(answer.body)
        assert got.num_rows == len(rows[i]) and answer.output.num_rows == len(rows[i])
        assert np.allclose(np.array(got.column("dense_1").to_pylist()), expected, atol=1e-6)
        assert answer.table.num_rows == len(rows[i])  # the record logs this request's rows, not the batch's
        assert json.loads(answer.headers[META_HEADER])["pipeline_version"] == "v1"


def test_a_bad_request_fails_alone(pipeline):
    bad = sample_rows(1, seed=9)
    bad[0, 0] = np.nan
    answers, alone = _run(pipeline, [_request(sample_rows(2), "good"), _request(bad, "bad"),
                                     _request(sample_rows(1, seed=5), "good2")])
    assert pipeline.calls[0] == 4 and sorted(alone) == ["bad", "good", "good2"]  # the shared call failed: alone
    assert answers["bad"].output is None and "NaN" in json.loads(answers["bad"].headers[ERROR_HEADER])["msg"]
    assert from_ipc(answers["good"].body).num_rows == 2 and from_ipc(answers["good2"].body).num_rows == 1


def test_a_lone_request_without_a_fast_lane_is_queued_not_run_in_the_subscriptions_callback(pipeline):
    """Only the fast lane's answer (which awaits nothing) runs inside `submit`: a request run there would hold the
    subscription, and those behind it would be stamped `received` late, hiding their wait from the SLOW clock."""

    @dataclass
    class Subscription:
        pending_msgs: int = 0

    async def main():
        ran: list[str] = []

        async def deliver(msg, answer, received, at_ms):
            ran.append(msg.reply)

        async def run_alone(msg, received, at_ms):
            ran.append(msg.reply)

        batcher = RequestBatcher(pipeline, 0.0, 4096, 1 << 20, run_alone, deliver, lambda msg: False)
        batcher.subscription = Subscription()
        await batcher.submit(_request(sample_rows(1), "lone"))
        assert ran == [] and len(batcher.pending) == 1  # no lane: queued for the batch task, nothing ran yet
        task = asyncio.create_task(batcher.run())
        await batcher.idle(5)
        task.cancel()
        assert ran == ["lone"] and pipeline.calls == [1]

    asyncio.run(main())


def test_batching_configuration(pipeline):
    assert batching_config({}) == (0.0, 4096)
    assert batching_config({"batch_max_delay_ms": 2, "batch_max_rows": 64}) == (0.002, 64)
    assert batching_config({"batch_max_delay_ms": -1}) is None
    assert can_batch(pipeline)
    pipeline.steps[0].kind = "RandomSplit"  # chooses a model per request: never shared
    assert not can_batch(pipeline)


def _record(rows: int) -> InferenceRecord:
    values = np.arange(rows, dtype=np.float32)
    return InferenceRecord(0, pa.table({"x": values}), pa.table({"y": values * 2}), "m", (1, 2),
                           shadows={"c": pa.table({"y": values * 3})})


def test_log_policies_keep_what_they_say():
    assert LogPolicy().apply(_record(5)).inputs.num_rows == 5
    assert LogPolicy("off").apply(_record(5)) is None
    outputs = LogPolicy("outputs").apply(_record(5))
    assert outputs.inputs.num_columns == 0 and outputs.inputs.num_rows == 5 and outputs.outputs.num_rows == 5
    sampled = LogPolicy("sampled", 0.3, seed=1).apply(_record(10_000))
    kept = sampled.inputs.num_rows
    assert 2_700 < kept < 3_300 and sampled.outputs.num_rows == kept and sampled.shadows["c"].num_rows == kept
    x = np.array(sampled.inputs.column("x").to_pylist())  # rows stay whole: in, out and challenger alike
    assert np.array_equal(np.array(sampled.outputs.column("y").to_pylist()), x * 2)
    assert np.array_equal(np.array(sampled.shadows["c"].column("y").to_pylist()), x * 3)


@pytest.mark.parametrize("policy", ["bogus", {"mode": "sampled"}, {"mode": "sampled", "fraction": 0},
                                    {"mode": "all", "fraction": 0.5}, {"mode": "off", "extra": 1}])
def test_bad_log_policies_are_refused(policy):
    with pytest.raises(InvalidRequest):
        check_log_policy(policy)


def test_log_policy_forms():
    assert check_log_policy(None) == {"mode": "all"}
    assert check_log_policy("outputs") == {"mode": "outputs"}
    assert check_log_policy({"mode": "sampled", "fraction": 1}) == {"mode": "sampled", "fraction": 1.0}
