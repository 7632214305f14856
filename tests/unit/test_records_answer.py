"""The records answer written from numpy (services/gateway/records_answer.py) is byte for byte what the general
path (seed_records + orjson with OPT_SERIALIZE_NUMPY) writes, for the column kinds it takes, and it hands the others
to that path. float32 and float16 values print in their shortest float32 form on both paths, as a JSON log page
prints them (before session 35 the answer printed them as exact doubles)."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from services.gateway.inference import seed_records
from services.gateway.records_answer import seed_records_json
from shared.arrow_codec import tensor_array

META = {"last_model": '{"model_name": "m", "model_sha": "abc"}', "pipeline_version": "v-1", "elapsed": [12, 345]}
RNG = np.random.default_rng(7)


def _same(inputs: pa.Table, outputs: pa.Table) -> bytes:
    fast = seed_records_json(inputs, outputs, META, 1_700_000_000_123, seed_records)
    assert fast == orjson.dumps(seed_records(inputs, outputs, META, 1_700_000_000_123),
                                option=orjson.OPT_SERIALIZE_NUMPY)
    return fast


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_tensors_are_the_same_bytes_on_both_paths(dtype):
    rows = RNG.normal(size=(50, 29)).astype(dtype)
    rows[0, :3] = [0.1, 1e-30 if dtype != np.float16 else 0.5, 3.0]
    _same(pa.table({"tensor": tensor_array(rows)}), pa.table({"dense_1": tensor_array(rows[:, :1] * 2)}))


def test_scalars_ints_nested_tensors_and_several_columns():
    inputs = pa.table({"a": pa.array(RNG.integers(-5, 5, 20)), "b": pa.array(RNG.normal(size=20)),
                       "img": tensor_array(RNG.normal(size=(20, 2, 3)).astype(np.float32)),
                       "we\"ird": pa.array(np.arange(20, dtype=np.int32))})
    outputs = pa.table({"y": pa.array(RNG.normal(size=20).astype(np.float32)), "z": pa.array(np.arange(20))})
    records = orjson.loads(_same(inputs, outputs))
    assert len(records) == 20 and len(records[0]["in"]["img"]) == 2


def test_other_columns_take_the_general_path():
    inputs = pa.table({"s": pa.array(["a", "b"] * 10), "x": pa.array([1.0, None] * 10)})
    outputs = pa.table({"flag": pa.array([True, False] * 10), "split": pa.array([["x"], ["y"]] * 10)})
    _same(inputs, outputs)
    _same(pa.table({"x": pa.array(np.arange(20) + 0.5)}), outputs)
    sliced = pa.table({"tensor": tensor_array(RNG.normal(size=(60, 3)))}).slice(4, 30)
    _same(sliced, pa.table({"y": pa.array(np.arange(30))}))
    _same(pa.table({"x": pa.array([1.5, 2.5])}), pa.table({"y": pa.array([1, 2])}))  # a few rows


def test_nan_and_infinity_as_before():
    values = np.array([[np.nan, np.inf, -np.inf, 1.0]] * 20)
    _same(pa.table({"t": tensor_array(values)}), pa.table({"y": pa.array([np.nan] * 20)}))


@pytest.mark.parametrize("rows", [16, 17, 300])
def test_several_tensor_columns_each_row_in_its_place(rows):
    # the answer is one join of constants and every column's pieces: a piece in the wrong row or slot shows here
    wide = pa.chunked_array([tensor_array(RNG.normal(size=(rows // 2, 7))),
                             tensor_array(RNG.normal(size=(rows - rows // 2, 7)))])
    inputs = pa.table({"w": wide, "n": tensor_array(RNG.integers(-9, 9, (rows, 1))), "s": pa.array(np.arange(rows))})
    outputs = pa.table({"p": tensor_array(RNG.normal(size=(rows, 2)).astype(np.float32)),
                        "q": pa.array(RNG.normal(size=rows))})
    records = orjson.loads(_same(inputs, outputs))
    assert [r["in"]["s"] for r in records] == list(range(rows))
    assert records[-1]["in"]["w"] == inputs.column("w").to_pylist()[-1]
    # float32 `p` prints shortest: read back as float32, it is the value answered
    assert np.array(records[-1]["out"]["p"], np.float32).tolist() == outputs.column("p").to_pylist()[-1]


def test_tables_without_columns_still_answer_every_row():
    inputs, empty = pa.table({"x": pa.array(np.arange(20) + 0.5)}), pa.table({"y": np.arange(20)}).drop_columns(["y"])
    for ins, outs in ((inputs, empty), (empty, empty)):
        records = orjson.loads(seed_records_json(ins, outs, META, 1, seed_records))
        assert len(records) == 20 and records[0]["out"] == {} and records[-1]["time"] == 1
        assert records[-1]["in"] == ({"x": 19.5} if ins.num_columns else {})


def test_one_value_tensors_cut_at_their_commas_as_before():
    # a model's score per row ([[0.1],[0.2],...]) is written as a flat list cut at its commas (records_answer: one
    # value a row): NaN and infinity (null), integers, float16/32/64, a sliced and a chunked column
    scores = RNG.normal(size=(40, 1))
    scores[[0, 5, 9]] = [[np.nan], [np.inf], [-np.inf]]
    inputs = pa.table({"x": tensor_array(RNG.normal(size=(40, 3)))})
    for column in (tensor_array(scores), tensor_array(scores.astype(np.float32)),
                   tensor_array(scores.astype(np.float16)), tensor_array(RNG.integers(-9, 9, (40, 1))),
                   pa.chunked_array([tensor_array(scores[:15]), tensor_array(scores[15:])])):
        records = orjson.loads(_same(inputs, pa.table({"score": column})))
        assert len(records) == 40 and all(len(r["out"]["score"]) == 1 for r in records)
    sliced = pa.table({"score": tensor_array(RNG.normal(size=(60, 1)))}).slice(7, 40)
    _same(inputs, sliced)
