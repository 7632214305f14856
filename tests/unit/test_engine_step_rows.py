"""A pipeline whose answer has another number of rows than the request (a Python step's filter or expansion that
no later step undid) is refused with a 400 naming the step and both counts, every format alike: the records and
Arrow answers pair each output row with its input row, and so does the inference log. Before, the engine answered
the rows; the gateway's records and Arrow answers then failed on the pairing (500 "internal error"), OIP answered
200, and in every format the record's log batch failed to build, which ended the replica's log batcher (no record
of the replica logged after it). A step in between may change the number of rows (a filter feeding a model): only
the pipeline's answer is held to it. A shadow challenger answering another number of rows is left out of the record,
as a failing one is.

The replica is loaded as the deployer starts one (tests/unit/test_engine_nan_rows_after_step.py's fixture), its
steps then stood in by runtimes that answer as a Python step would (any rows they like)."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import orjson
import pyarrow as pa
import pytest

from services.engine import handlers
from services.engine.handlers import run_awaiting_workers
from services.engine.replica import Replica
from services.gateway.inference import EngineReply, Inference
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.errors import InvalidRequest
from shared.logrecords import InferenceRecord, build_batch
from shared.raw_bus import ERROR_HEADER
from shared.table_transport import META_HEADER, SHADOWS_HEADER, SHADOWS_INLINE
from tests.unit.test_engine_nan_rows_after_step import StepStandIn, pipeline  # noqa: F401 - the fixture
from tests.unit.test_engine_shadows_inline import _infer
from tests.unit.test_gateway_route_starting import ALICE, RUNNING, RUNTIME, _engine, deployer_says

REFUSAL = ("step 'prep' returned {n} rows for a request of 3: a pipeline answers one row for each row of the request "
           "(the answer and the inference log pair them); a step may drop or add rows for the steps after it, but "
           "the last must give back 3 (to filter, mark rows instead of dropping them)")


def _request() -> pa.Table:
    return pa.table({"x": tensor_array(np.arange(6, dtype=np.float32).reshape(3, 2))})


def _runners(replica: Replica):
    return (replica.run, lambda table: asyncio.run(run_awaiting_workers(replica.steps, table)))


@pytest.mark.parametrize("choose", [lambda n: [1, 2], lambda n: [1, 1, 0, 2]], ids=["filter", "expansion"])
def test_an_answer_of_other_rows_than_the_request_is_refused_naming_the_step(pipeline, choose):  # noqa: F811
    pipeline.steps[0].runtimes[0] = StepStandIn(choose)
    count = len(choose(3))
    for run in _runners(pipeline):
        with pytest.raises(InvalidRequest) as refused:
            run(_request())
        assert refused.value.code == "invalid_request" and refused.value.status == 400
        assert refused.value.msg == REFUSAL.format(n=count)


def test_a_step_may_change_the_rows_when_a_later_one_gives_them_back(pipeline):  # noqa: F811
    pipeline.steps[0].runtimes[0] = StepStandIn(lambda n: [0, 0, 1, 1, 2, 2])  # 6 rows for the next step
    pipeline.steps[1].runtimes[0] = StepStandIn(lambda n: list(range(0, n, 2)))  # one of each pair: 3
    for run in _runners(pipeline):
        output = run(_request())[0]
        assert output.num_rows == 3
        assert output.column("x").to_pylist() == _request().column("x").to_pylist()


def test_the_last_step_that_changed_the_rows_is_named(pipeline):  # noqa: F811
    pipeline.steps[0].runtimes[0] = StepStandIn(lambda n: [0, 0, 1, 1, 2, 2])
    pipeline.steps[1].runtimes[0] = StepStandIn(lambda n: [0])
    for run in _runners(pipeline):
        with pytest.raises(InvalidRequest, match=r"^step 'model' returned 1 row for a request of 3: "):
            run(_request())


def test_the_engines_answer_is_the_typed_refusal_and_nothing_is_logged(pipeline):  # noqa: F811
    """handlers.infer, as a request reaches it from the bus: a 400 in the error header and no output (a failed
    answer leaves no record: replica.deliver). Before, it answered the 2 rows and left a record of 3 rows in and 2
    out, on which build_batch raised for its whole batch."""
    pipeline.steps[0].runtimes[0] = StepStandIn(lambda n: [1, 2])
    pipeline.store = None
    answer = asyncio.run(handlers.infer(pipeline, to_ipc_stream(_request()), {}, time.perf_counter_ns(), 1 << 20))
    assert answer.body == b"" and answer.output is None
    error = json.loads(answer.headers[ERROR_HEADER])
    assert error == {"code": "invalid_request", "status": 400, "msg": REFUSAL.format(n=2)}


def test_the_log_batch_cannot_pair_other_rows():
    """Why the engine refuses rather than answers: a record of 3 rows in and 2 out fails its whole log batch (and
    the batcher's task with it: services/engine/logbatcher.py, flush)."""
    good = InferenceRecord(1, pa.table({"x": [1.0]}), pa.table({"y": [2.0]}), "m", (1, 2))
    other = InferenceRecord(1, pa.table({"x": [1.0, 2.0, 3.0]}), pa.table({"y": [2.0, 3.0]}), "m", (1, 2))
    assert build_batch([good, good], "v").num_rows == 2
    with pytest.raises(pa.ArrowInvalid):
        build_batch([good, other], "v")


class Answers:
    """A challenger answering the rows `choose` picks."""

    def __init__(self, choose) -> None:
        self.choose = choose

    def predict(self, table: pa.Table) -> pa.Table:
        return table.take(self.choose(table.num_rows))


def test_a_challenger_answering_other_rows_is_left_out_of_the_record():
    table = pa.table({"x": [1.0, 2.0, 3.0]})
    outputs: dict[str, pa.Table] = {}
    shadows = [("filters", Answers(lambda n: [0]), table), ("keeps", Answers(lambda n: list(range(n))), table)]
    elapsed = asyncio.run(handlers.run_challengers(shadows, outputs, "d", 3))
    assert list(outputs) == ["keeps"] and list(elapsed) == ["keeps"]
    record = InferenceRecord(1, table, table, "m", (1, 2), shadows=outputs)
    assert build_batch([record], "v").column("out_keeps.x").to_pylist() == [1.0, 2.0, 3.0]


# the gateway: an engine answer of other rows than the request (an engine of an earlier build) is the same 400 in
# the engine's words (the step not known: "the pipeline"), not the records' zip or Arrow's from_arrays failing (500
# "internal error"), nor OIP's 200 with outputs of 2 rows for a batch of 3

PIPELINE_REFUSAL = ("the pipeline returned 2 rows for a request of 3: a pipeline answers one row for each row of the "
                    "request (the answer and the inference log pair them); a step may drop or add rows for the steps "
                    "after it, but the last must give back 3 (to filter, mark rows instead of dropping them)")


def test_the_engine_s_words_without_a_step_are_the_gateway_s():
    assert handlers.rows_changed(None, 2, 3).msg == PIPELINE_REFUSAL
    assert handlers.rows_changed({"name": "prep"}, 2, 3).msg == REFUSAL.format(n=2)


async def test_the_gateway_refuses_an_answer_of_other_rows_in_every_format(monkeypatch):
    deployer_says(monkeypatch, RUNNING)

    async def two_rows(payload: bytes) -> EngineReply:
        return EngineReply({META_HEADER: "{}"}, to_ipc_stream(pa.table({"y": pa.array([2.0, 3.0])})))

    _engine(monkeypatch, two_rows)
    body = orjson.dumps([{"x": 1.0}, {"x": 2.0}, {"x": 3.0}])
    for accept in ("", "application/vnd.apache.arrow.file"):
        with pytest.raises(InvalidRequest) as refused:
            await Inference(RUNTIME).run(ALICE, "t", "d", "p", "application/json", accept, body)
        assert refused.value.msg == PIPELINE_REFUSAL
    oip = orjson.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]})
    with pytest.raises(InvalidRequest) as refused:
        await Inference(RUNTIME).run_oip(ALICE, "t", "d", None, oip)
    assert refused.value.msg == PIPELINE_REFUSAL


def test_the_record_of_an_answer_with_inline_challengers_holds_the_requests_inputs():
    """With `Railyard-Shadows: inline` (monitoring's predict) the loop adding the challengers' columns to the answer
    rebound `table`, so the record's inputs were the last challenger's output (`in.y` logged for the request's `x`)."""
    answer = _infer({SHADOWS_HEADER: SHADOWS_INLINE})
    assert answer.table.column_names == ["x"] and answer.table.column("x").to_pylist() == [1, 2]
    assert set(answer.shadow_outputs) == {"twice"}
