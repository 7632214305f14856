"""float32 inside struct and map columns, and dictionary-encoded float32 columns, print in their shortest float32 form
on a JSON log page and in an inference's records answer (shared/logrecords.py page_values; the gateway's
seed_records), as plain and list columns have since session 35: they printed as exact doubles
(`0.10000000149011612`), which docs/inference.md and docs/logs.md named as the exception. A float64 beside them (a
struct's other field) keeps its exact double; read back as float32 every value is the one logged, bit for bit."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa

from shared.logrecords import page_values

LONG = float(np.float32(0.1))  # 0.10000000149011612: float32 0.1 widened


def page(column) -> bytes:
    return orjson.dumps(page_values(column), option=orjson.OPT_SERIALIZE_NUMPY)


def test_a_struct_columns_float32_fields_print_shortest_and_its_float64_fields_as_they_are():
    kind = pa.struct([("p", pa.float32()), ("q", pa.float64()), ("n", pa.string())])
    column = pa.array([{"p": 0.1, "q": LONG, "n": "a"}, None, {"p": None, "q": 0.5, "n": None}], kind)
    assert page(column) == (b'[{"p":0.1,"q":0.10000000149011612,"n":"a"},null,{"p":null,"q":0.5,"n":null}]')
    assert page(pa.chunked_array([column.slice(2), column.slice(0, 1)])) == (
        b'[{"p":null,"q":0.5,"n":null},{"p":0.1,"q":0.10000000149011612,"n":"a"}]')


def test_a_map_columns_float32_keys_and_items_print_shortest():
    items = pa.array([[("k", 0.1), ("j", None)], None, []], pa.map_(pa.string(), pa.float32()))
    assert page(items) == b'[[["k",0.1],["j",null]],null,[]]'
    keys = pa.array([[(0.1, 1)]], pa.map_(pa.float32(), pa.int64()))
    assert page(keys) == b"[[[0.1,1]]]"


def test_a_dictionary_encoded_float32_column_prints_shortest():
    column = pa.array([0.1, None, 0.1, 1 / 3], pa.float32()).dictionary_encode()
    assert page(column) == b"[0.1,null,0.1,0.33333334]"
    assert page(pa.chunked_array([column])) == b"[0.1,null,0.1,0.33333334]"
    half = pa.array([0.1], pa.float16()).dictionary_encode()
    assert page(half) == b"[0.099975586]"  # as a plain float16 column prints (docs/logs.md)


def test_float32_at_any_depth_prints_shortest():
    inner = pa.struct([("a", pa.float32())])
    assert page(pa.array([[{"a": 0.1}], [None], None], pa.list_(inner))) == b'[[{"a":0.1}],[null],null]'
    assert page(pa.array([[{"a": 0.1}], None], pa.list_(inner, 1))) == b'[[{"a":0.1}],null]'
    assert page(pa.array([{"a": [0.1, None]}], pa.struct([("a", pa.list_(pa.float16()))]))) == (
        b'[{"a":[0.099975586,null]}]')
    assert page(pa.array([{"m": [("k", 0.1)]}], pa.struct([("m", pa.map_(pa.string(), pa.float32()))]))) == (
        b'[{"m":[["k",0.1]]}]')
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 0]), pa.array([[0.1]], pa.list_(pa.float32())))
    assert page(dictionary) == b"[[0.1],[0.1]]"


def test_columns_without_float32_print_as_before():
    for column in (pa.array([{"q": LONG, "i": 2**62}], pa.struct([("q", pa.float64()), ("i", pa.int64())])),
                   pa.array([[("k", LONG)]], pa.map_(pa.string(), pa.float64())),
                   pa.array([LONG, None]).dictionary_encode(), pa.array(["x", "y", "x"]).dictionary_encode()):
        assert page(column) == orjson.dumps(column.to_pylist()), column.type


def test_every_value_reads_back_as_the_float32_logged():
    values = np.random.default_rng(5).standard_normal(500).astype(np.float32)
    struct = pa.StructArray.from_arrays([pa.array(values)], ["a"])
    assert np.array_equal(np.array([row["a"] for row in orjson.loads(page(struct))], np.float32), values)
    dictionary = pa.array(values).dictionary_encode()
    assert np.array_equal(np.array(orjson.loads(page(dictionary)), np.float32), values)


def test_a_records_answer_and_a_log_page_print_such_columns_alike():
    from services.gateway.inference import seed_records
    from shared.logrecords import InferenceRecord, build_batch, seed_rows

    inputs = pa.table({"x": pa.array([1.0], pa.float64())})
    outputs = pa.table({"s": pa.array([{"p": 0.1}], pa.struct([("p", pa.float32())])),
                        "d": pa.array([0.1], pa.float32()).dictionary_encode()})
    answer = orjson.dumps(seed_records(inputs, outputs, {}, 1), option=orjson.OPT_SERIALIZE_NUMPY)
    assert b'"out":{"s":{"p":0.1},"d":0.1}' in answer and b"0.1000000014" not in answer
    table = build_batch([InferenceRecord(1, inputs, outputs, "m", (1, 2))], "v")
    logged = orjson.dumps(seed_rows(table), option=orjson.OPT_SERIALIZE_NUMPY)
    assert b'"out":{"s":{"p":0.1},"d":0.1}' in logged and b"0.1000000014" not in logged
