"""A boolean tensor for a numeric model input is refused, on every path a request takes in the engine (the runtime,
the batcher's shared call, the fast lane), from every format the gateway reads (JSON records, Arrow, OIP); integers
for a float input are still cast; a bool model input still takes booleans."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pyarrow as pa
import pytest

from services.engine import handlers
from services.engine.fast_lane import FastLane
from services.engine.runtimes import OnnxRuntime, narrowing
from services.gateway.oip import parse_request
from shared.arrow_codec import records_json_to_table, tensor_array, to_ipc_stream
from shared.bus import ERROR_HEADER
from shared.errors import InvalidRequest
from tests.models import ccfraud_onnx, sample_rows
from tests.unit.test_engine_batching import Pipeline, _request, _run

BOOLS = np.arange(2 * 29).reshape(2, 29) % 3 == 0  # two rows of 29 booleans


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    path = tmp_path_factory.mktemp("bools") / "model.onnx"
    path.write_bytes(ccfraud_onnx())
    return Pipeline(path)


def _runtime(pipeline) -> OnnxRuntime:
    return pipeline.steps[0].runtimes[0]


def _oip_table(datatype: str, data: list) -> pa.Table:
    body = json.dumps({"inputs": [{"name": "tensor", "shape": [2, 29], "datatype": datatype, "data": data}]})
    return parse_request(body.encode(), None)[1]


def _records(rows: list) -> pa.Table:
    return records_json_to_table(json.dumps([{"tensor": row} for row in rows]).encode())


BOOL_TABLES = {
    "records JSON true/false": lambda: _records(BOOLS.tolist()),
    "Arrow bool tensor": lambda: pa.table({"tensor": tensor_array(BOOLS)}),
    "Arrow bool list (not fixed-size)": lambda: pa.table({"tensor": pa.array(BOOLS.tolist())}),
    "OIP datatype BOOL": lambda: _oip_table("BOOL", BOOLS.tolist()),
}


@pytest.mark.parametrize("make", BOOL_TABLES.values(), ids=BOOL_TABLES.keys())
def test_a_bool_tensor_for_a_float_input_is_refused_naming_the_types(pipeline, make):
    table = make()
    assert pa.types.is_boolean(table.schema.field("tensor").type.value_type)
    with pytest.raises(InvalidRequest, match=r"column 'tensor': booleans \(true/false\) where the model expects "
                                             r"float32 numbers; send numbers") as raised:
        _runtime(pipeline).predict(table)
    assert raised.value.status == 400 and raised.value.code == "invalid_request"


INT_TABLES = {
    "records JSON integers": lambda: _records(BOOLS.astype(int).tolist()),
    "Arrow int64 tensor": lambda: pa.table({"tensor": tensor_array(BOOLS.astype(np.int64))}),
    "OIP datatype INT64": lambda: _oip_table("INT64", BOOLS.astype(int).tolist()),
}


@pytest.mark.parametrize("make", INT_TABLES.values(), ids=INT_TABLES.keys())
def test_integers_for_a_float_input_are_still_cast(pipeline, make):
    answer = _runtime(pipeline).predict(make())
    expected = _runtime(pipeline).predict(pa.table({"tensor": tensor_array(BOOLS.astype(np.float32))}))
    assert answer.equals(expected)


def _bool_input_onnx() -> bytes:
    """flag bool[N,3] -> y = float(flag)."""
    from onnx import TensorProto, helper

    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Cast", ["flag"], ["y"], to=TensorProto.FLOAT)], "g", [flag], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_bool_input_still_takes_booleans_and_only_them(tmp_path):
    path = tmp_path / "flag.onnx"
    path.write_bytes(_bool_input_onnx())
    runtime = OnnxRuntime(path)
    runtime.load()
    flags = [[True, False, True], [False, False, True]]
    answer = runtime.predict(pa.table({"flag": pa.array(flags)}))
    assert answer.column("y").to_pylist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    with pytest.raises(InvalidRequest, match="the model expects booleans"):
        runtime.predict(pa.table({"flag": pa.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])}))


def test_a_bool_request_queued_with_good_ones_fails_alone_and_has_nothing_to_log(pipeline):
    """The batcher groups requests by schema: the bool request runs in a call of its own (or alone) and gets its
    error; the float requests' answers are untouched. An answer without `output` is not logged (replica.deliver)."""
    rows = sample_rows(3, seed=4)
    bad = _request(BOOLS, "bad")
    answers, _ = _run(pipeline, [_request(rows[:2], "a"), bad, _request(rows[2:], "b")])
    assert answers["bad"].output is None and answers["bad"].body == b""
    assert "booleans" in answers["bad"].headers[ERROR_HEADER]
    for reply in ("a", "b"):
        assert answers[reply].output is not None and ERROR_HEADER not in answers[reply].headers


def test_the_fast_lane_leaves_a_bool_request_to_the_general_path_which_refuses_it(pipeline):
    lane = FastLane(_runtime(pipeline), narrowing(pipeline.steps[0].runtimes), {"name": "m", "sha": "abc"}, "v1",
                    1 << 20)
    data = to_ipc_stream(pa.table({"tensor": tensor_array(BOOLS)}))
    assert lane.answer(data, 0) is None
    answer = asyncio.run(handlers.infer(pipeline, data, {}, 0, 1 << 20))  # what run_alone runs
    assert answer.output is None and "booleans" in answer.headers[ERROR_HEADER]
