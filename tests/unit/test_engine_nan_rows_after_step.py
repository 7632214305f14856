"""A NaN refusal names rows of the table the model was given (runtimes.NonFiniteValues). When a step before the
model (a Python step's filter or expansion) returned another number of rows than the request's, those are not the
request's rows: the refusal says whose they are, "in rows 0 and 2 of the 4 rows step 'prep' returned (counted from 0;
the request had 3)". Before, it said "in rows 0 and 2 (counted from 0)", which a caller reads as its own rows. A step
that keeps the number of rows keeps the request's row numbers. Both ways a pipeline runs say it: Replica.run, and
handlers.run_awaiting_workers (a pipeline with a sandboxed worker, one model a step: a Python step then a model).
The replica is loaded as the deployer starts one (Replica.load builds its steps from the spec), the first step's
model then stood in by a runtime that answers as a Python step would (any rows it likes)."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from services.engine import replica as replica_module
from services.engine.handlers import run_awaiting_workers
from services.engine.replica import Replica
from services.engine.runtimes import NonFiniteValues
from shared.arrow_codec import tensor_array
from shared.errors import InvalidRequest
from shared.settings import Settings


def _identity_onnx(name_in: str, name_out: str) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", [name_in], [name_out])], "g",
                              [helper.make_tensor_value_info(name_in, TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info(name_out, TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


class StepStandIn:
    """A users'-code step: answers `x` as the rows `choose` picks of the request's (a filter, a repetition)."""

    ready = True

    def __init__(self, choose) -> None:
        self.choose = choose

    def predict(self, batch: pa.Table) -> pa.Table:
        rows = np.array(batch.column("x").to_pylist(), np.float32)
        return pa.table({"x": tensor_array(rows[self.choose(len(rows))])})


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """A replica of two steps: 'prep' (stood in by a StepStandIn answering x) then 'model' (x float[N,2] -> y)."""
    artifacts = {"prep": _identity_onnx("x", "z"), "model": _identity_onnx("x", "y")}  # prep: stood in (below)
    for sha, data in artifacts.items():
        (tmp_path / sha).write_bytes(data)

    async def fetch_artifact(store, sha, cache):
        return tmp_path / sha

    monkeypatch.setattr(replica_module, "fetch_artifact", fetch_artifact)
    monkeypatch.setattr(replica_module, "MinioObjectStore", lambda settings: None)
    spec = {"deployment": {"name": "d-1", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "ModelInference", "models": [{"name": name, "sha": name, "runtime": "onnx"}]}
                      for name in ("prep", "model")]}
    replica = Replica(spec, "r1", Settings(stack={"data_dir": tmp_path / "data"}))
    asyncio.run(replica.load())
    return replica


def _request() -> pa.Table:
    x = np.ones((3, 2), np.float32)
    x[1, 0] = np.nan
    return pa.table({"x": tensor_array(x)})


def _refusal(replica: Replica, choose) -> str:
    """The refusal's words, the same from both runners."""
    replica.steps[0].runtimes[0] = StepStandIn(choose)
    said = []
    for run in (replica.run, lambda table: asyncio.run(run_awaiting_workers(replica.steps, table))):
        with pytest.raises(InvalidRequest) as refused:
            run(_request())
        assert isinstance(refused.value, NonFiniteValues) and refused.value.code == "invalid_request"
        said.append(refused.value.msg)
    assert said[0] == said[1], said
    return said[0]


def test_rows_of_a_step_that_changed_their_number_are_said_to_be_the_steps(pipeline):
    # the request's rows 1, 1, 0 and 2: its NaN (row 1) at rows 0 and 1 of the 4 the step returned
    msg = _refusal(pipeline, lambda n: [1, 1, 0, 2])
    assert msg == ("column 'x': NaN or infinite values in rows 0 and 1 of the 4 rows step 'prep' returned "
                   "(counted from 0; the request had 3)")
    msg = _refusal(pipeline, lambda n: [1])  # a filter: the request's row 1 is the step's row 0
    assert msg == ("column 'x': NaN or infinite values in row 0 of the 1 row step 'prep' returned "
                   "(counted from 0; the request had 3)")


def test_a_step_that_keeps_the_rows_keeps_the_requests_row_numbers(pipeline):
    kept = _refusal(pipeline, lambda n: list(range(n)))
    assert kept == "column 'x': NaN or infinite values in row 1 (counted from 0)"


def test_the_first_steps_refusal_names_the_requests_rows(pipeline):
    with pytest.raises(NonFiniteValues, match=r"^column 'x': NaN or infinite values in row 1 \(counted from 0\)$"):
        pipeline.run(_request())
    with pytest.raises(NonFiniteValues, match=r"^column 'x': NaN or infinite values in row 1 \(counted from 0\)$"):
        asyncio.run(run_awaiting_workers(pipeline.steps[1:], _request()))
