"""Integers for a float32 model input (JSON integers, an Arrow integer column, an OIP INT64 tensor) are cast to
float32 where float64 columns are narrowed (shared/arrow_codec.narrow, runtimes.narrowing), on every path a request
takes in the engine: the general path, the batcher's shared call, the fast lane. The model got float32 before too;
now the request's table, which the inference log records, is float32 as well, so one pipeline's log holds one
tensor type whether a client wrote 1 or 1.0 (before, int64 pages among float32 ones)."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pyarrow as pa
import pytest

from services.engine import handlers
from services.engine.fast_lane import FastLane
from services.engine.runtimes import narrowing
from services.gateway.oip import parse_request
from shared.arrow_codec import narrow, records_json_to_table, tensor_array, to_ipc_stream
from shared.logrecords import InferenceRecord
from tests.models import ccfraud_onnx, sample_rows
from tests.unit.test_engine_batching import Msg, Pipeline, _run

# two rows of 29 integers, with some a float32 cannot hold exactly (past 2**24): the model gets numpy's rounding.
# 2**60 + 2**36 + 1 is rounded up (2**60 + 2**37) by a direct cast, down (2**60) by one through float64 (its +1 is
# lost there, leaving a tie to even): so a cast of the lane or of Arrow that went through float64 would differ
INTS = np.arange(2 * 29, dtype=np.int64).reshape(2, 29) - 20
INTS[0, 3], INTS[1, 5], INTS[1, 6], INTS[0, 7] = 2**24 + 1, 2**53 + 3, -(2**40) - 7, 2**60 + 2**36 + 1
FLOAT32_TENSOR = pa.list_(pa.field("item", pa.float32()), 29)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    path = tmp_path_factory.mktemp("ints") / "model.onnx"
    path.write_bytes(ccfraud_onnx())
    return Pipeline(path)


def _oip_table(rows: np.ndarray) -> pa.Table:
    body = json.dumps({"inputs": [{"name": "tensor", "shape": list(rows.shape), "datatype": "INT64",
                                   "data": rows.ravel().tolist()}]})
    return parse_request(body.encode(), None)[1]


INT_TABLES = {
    "records JSON integers": lambda: records_json_to_table(json.dumps([{"tensor": r} for r in INTS.tolist()]).encode()),
    "Arrow int64 tensor": lambda: pa.table({"tensor": tensor_array(INTS)}),
    "Arrow int32 tensor": lambda: pa.table({"tensor": tensor_array((INTS % 1000).astype(np.int32))}),
    "Arrow uint32 list": lambda: pa.table({"tensor": pa.array((INTS % 2**32).astype(np.uint32).tolist(),
                                                              pa.list_(pa.uint32()))}),
    "OIP datatype INT64": lambda: _oip_table(INTS),
}


def _flat(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("tensor").combine_chunks().flatten())


@pytest.mark.parametrize("make", INT_TABLES.values(), ids=INT_TABLES.keys())
def test_integer_columns_are_narrowed_to_the_models_float32_with_numpys_rounding(pipeline, make):
    table = make()
    values = _flat(table)
    assert values.dtype.kind in "iu"  # what the gateway's readers give
    narrowed = pipeline.narrow(table)
    assert pa.types.is_float32(narrowed.schema.field("tensor").type.value_type)
    assert np.array_equal(_flat(narrowed), values.astype(np.float32))  # column_to_tensor's cast, the model's input
    # what the model answers is what it answered for the integers before (it cast them itself)
    runtime = pipeline.steps[0].runtimes[0]
    assert runtime.predict(narrowed).equals(runtime.predict(table))


def test_booleans_and_strings_are_left_to_the_models_check():
    table = pa.table({"b": pa.array([True, False]), "s": pa.array(["1", "2"]), "i": pa.array([1, 2])})
    out = narrow(table, {"b": pa.float32(), "s": pa.float32(), "i": pa.float16()})
    assert out.schema.field("b").type == pa.bool_() and out.schema.field("s").type == pa.string()
    assert out.schema.field("i").type == pa.float16() and out.column("i").to_pylist() == [1.0, 2.0]


def test_the_general_path_logs_an_integer_request_as_the_float_one(pipeline):
    ints = asyncio.run(handlers.infer(pipeline, to_ipc_stream(pa.table({"tensor": tensor_array(INTS)})), {}, 0,
                                      1 << 20))
    # the float client's numbers: the float32 values (a float64 of 2**60 + 2**36 + 1 is already another number)
    floats = asyncio.run(handlers.infer(pipeline, to_ipc_stream(pa.table({"tensor": tensor_array(
        INTS.astype(np.float32).astype(np.float64))})), {}, 0, 1 << 20))
    assert ints.output is not None and ints.body == floats.body
    assert ints.table.schema.field("tensor").type == FLOAT32_TENSOR  # the log record's `in.tensor`
    assert ints.table.equals(floats.table)
    assert InferenceRecord(0, ints.table, ints.output, "", (0, 0)).key() == \
        InferenceRecord(0, floats.table, floats.output, "", (0, 0)).key()  # one log schema: one group, one page


def test_the_batcher_runs_integer_and_float_requests_in_one_call_and_logs_one_type(pipeline):
    rows = sample_rows(3, seed=5).astype(np.float64)
    requests = [Msg(to_ipc_stream(pa.table({"tensor": tensor_array(INTS)})), "ints"),
                Msg(to_ipc_stream(pa.table({"tensor": tensor_array(rows)})), "floats")]
    pipeline.calls.clear()
    answers, alone = _run(pipeline, requests)
    assert alone == [] and pipeline.calls == [5]  # one schema once narrowed: one model call
    for reply in ("ints", "floats"):
        assert answers[reply].output is not None
        assert answers[reply].table.schema.field("tensor").type == FLOAT32_TENSOR
    assert np.array_equal(_flat(answers["ints"].table), INTS.astype(np.float32).ravel())
    # each request's answer is what it gets alone
    single = asyncio.run(handlers.infer(pipeline, requests[0].data, {}, 0, 1 << 20))
    assert answers["ints"].output.equals(single.output)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_the_fast_lane_answers_an_integer_request_and_records_float32(pipeline, dtype):
    lane = FastLane(pipeline.steps[0].runtimes[0], narrowing(pipeline.steps[0].runtimes), {"name": "m", "sha": "abc"},
                    "v1", 1 << 20)
    rows = INTS.astype(dtype) if dtype is np.int64 else (INTS % 1000).astype(dtype)
    data = to_ipc_stream(pa.table({"tensor": tensor_array(rows)}))
    fast = lane.answer(data, time.perf_counter_ns())
    assert fast is not None  # taken by the lane, no longer left to the general path
    general = asyncio.run(handlers.infer(pipeline, data, {}, 0, 1 << 20))
    assert fast.body == general.body
    record = fast.record(0, None)
    assert record.inputs.schema.field("tensor").type == FLOAT32_TENSOR
    assert record.inputs.equals(general.table) and record.outputs.equals(general.output)
    again = lane.answer(data, time.perf_counter_ns())  # its known head: read at the offsets
    assert again.body == fast.body and again.record(0, None).inputs.equals(general.table)


NARROWER = {  # integers narrower than the model's float type: the cast would widen them
    "uint8 pixels for float32": (np.uint8, pa.float32()),
    "int16 for float32": (np.int16, pa.float32()),
    "int8 for float16": (np.int8, pa.float16()),
}


@pytest.mark.parametrize(("dtype", "to"), NARROWER.values(), ids=NARROWER.keys())
def test_an_integer_column_narrower_than_the_models_float_stays_as_sent(dtype, to):
    """A uint8 image for a float32 input is not cast on arrival nor by the gateway: 4x its bytes on the bus (a
    request that fitted the bus went through object storage) and in the log, for values the model's own cast takes
    exactly. Integers as wide as the float type still are (the test above)."""
    from services.gateway.inference import NARROW_MIN_ROWS, RouteCache
    from tests.unit.test_engine_narrowing import _route

    values = (np.arange(NARROW_MIN_ROWS * 3) % 100).astype(dtype).reshape(NARROW_MIN_ROWS, 3)
    table = pa.table({"tensor": tensor_array(values), "scalar": pa.array(values[:, 0])})
    assert narrow(table, {"tensor": to, "scalar": to}) is table
    model = pa.schema([pa.field("tensor", pa.list_(to, 3)), pa.field("scalar", to)])
    assert RouteCache().narrowed(_route(model), table) is table  # sent on the bus as it came, unmarked
    wide = pa.table({"tensor": tensor_array(values.astype(np.int32 if to == pa.float32() else np.int16))})
    assert narrow(wide, {"tensor": to}).schema.field("tensor").type.value_type == to  # as wide: cast


def test_the_engine_leaves_a_uint8_request_as_sent_and_answers_it_as_the_float_one(pipeline):
    pixels = (np.arange(2 * 29) % 256).astype(np.uint8).reshape(2, 29)
    data = to_ipc_stream(pa.table({"tensor": tensor_array(pixels)}))
    lane = FastLane(pipeline.steps[0].runtimes[0], narrowing(pipeline.steps[0].runtimes), {"name": "m", "sha": "abc"},
                    "v1", 1 << 20)
    assert lane.answer(data, time.perf_counter_ns()) is None  # not the model's type: the general path casts it
    general = asyncio.run(handlers.infer(pipeline, data, {}, 0, 1 << 20))
    floats = asyncio.run(handlers.infer(pipeline, to_ipc_stream(pa.table({"tensor": tensor_array(
        pixels.astype(np.float32))})), {}, 0, 1 << 20))
    assert general.output is not None and general.body == floats.body
    assert general.table.schema.field("tensor").type.value_type == pa.uint8()  # the log: a byte a value, exact
