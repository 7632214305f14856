"""The OIP v2 answer (services/gateway/oip.py: encode_response): numeric outputs are written by orjson from numpy,
and the bytes must be those a value-by-value path writes: integers, booleans and float64 as Python values (`tolist()`
then orjson), FP32 and FP16 in their shortest float32 form (each value a numpy scalar, as a JSON log page prints them:
0.1f as `0.1`; before session 35 the answer widened them to float64 first, `0.10000000149011612`)."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from services.gateway import oip

RNG = np.random.default_rng(3)
F32 = np.concatenate([RNG.standard_normal(2000).astype(np.float32),
                      np.float32([0, -0.0, 1e-45, 3.4e38, -3.4e38, np.nan, np.inf, -np.inf, 1, 1e16, 123456789])])
COLUMNS = {
    "fp32 (n, 1)": pa.FixedSizeListArray.from_arrays(pa.array(F32), 1),
    "fp32 (n, 2, 3)": pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(F32[:1998]), 3),
                                                        2),
    "fp64": pa.array(np.concatenate([RNG.standard_normal(500) * 10.0 ** RNG.integers(-300, 300, 500),
                                     [5e-324, 1.7976931348623157e308, 0.1, 1e22, 1e-7]])),
    "fp16": pa.array(np.float16([1.1, 0.1, 65504, 6e-8, -0.0])),
    "int64": pa.array(RNG.integers(-2**63, 2**63 - 1, 200, dtype=np.int64)),
    "uint64": pa.array(RNG.integers(0, 2**64 - 1, 200, dtype=np.uint64)),
    "int8": pa.array(RNG.integers(-128, 127, 200, dtype=np.int8)),
    "bool": pa.array(RNG.random(200) > 0.5),
    "empty fp32": pa.array([], pa.float32()),
}


def _by_lists(array: pa.Array) -> bytes:
    """What the answer's `data` is, value by value: a Python value per tensor value, or a numpy float32 / float16
    scalar per FP32 / FP16 value, then orjson."""
    values = array
    while pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    numbers = values.to_numpy(zero_copy_only=False)
    if numbers.dtype.kind == "f" and numbers.dtype.itemsize < 8:
        return orjson.dumps(list(numbers), option=orjson.OPT_SERIALIZE_NUMPY)
    return orjson.dumps(numbers.tolist())


@pytest.mark.parametrize("name", list(COLUMNS))
def test_numeric_outputs_are_the_bytes_the_list_path_wrote(name):
    column = COLUMNS[name]
    body, headers = oip.encode_response({"id": "r"}, "m", "1", pa.table({"y": column}))
    assert headers == {"Content-Type": "application/json"}
    prefix = b'{"model_name":"m","model_version":"1","id":"r","outputs":[{"name":"y","datatype":"'
    assert body.startswith(prefix)
    assert body.endswith(b',"data":' + _by_lists(column) + b"}]}")
    assert orjson.loads(body)["outputs"][0]["shape"][0] == len(column)


def test_an_answer_in_chunks_and_a_binary_one_are_unchanged():
    chunked = pa.Table.from_batches([pa.record_batch({"y": pa.array(F32[:10])}),
                                     pa.record_batch({"y": pa.array(F32[10:20])})])
    body, _ = oip.encode_response({}, "m", "1", chunked)
    assert body.endswith(b',"data":' + orjson.dumps(list(F32[:20]), option=orjson.OPT_SERIALIZE_NUMPY) + b"}]}")
    body, headers = oip.encode_response({"parameters": {"binary_data_output": True}}, "m", "1", chunked)
    split = int(headers[oip.HEADER_LENGTH])
    assert body[split:] == F32[:20].astype("<f4").tobytes()


def test_fp32_values_print_shortest_and_read_back_as_the_same_float32():
    """0.1f is `0.1`, not float64's exact `0.10000000149011612`; every finite FP32 value read back as float32 is
    the value answered, bit for bit (NaN and the infinities are JSON's null, as they were)."""
    body, _ = oip.encode_response({}, "m", "1", pa.table({"y": pa.array(np.float32([0.1, 1 / 3, 16777217]))}))
    assert body.endswith(b',"data":[0.1,0.33333334,16777216.0]}]}')
    body, _ = oip.encode_response({}, "m", "1", pa.table({"y": COLUMNS["fp32 (n, 1)"]}))
    data = orjson.loads(body)["outputs"][0]["data"]
    finite = np.isfinite(F32)
    assert all(value is None for value, ok in zip(data, finite, strict=True) if not ok)
    read = np.array([value for value, ok in zip(data, finite, strict=True) if ok], np.float64).astype(np.float32)
    assert read.view(np.uint32).tolist() == F32[finite].view(np.uint32).tolist()
