"""The OIP v2 answer (services/gateway/oip.py: encode_response): numeric outputs are written by orjson from numpy,
and the bytes must be those the Python-list path wrote (`tolist()` then orjson), float32's float64 spelling
included."""

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
    """What the answer's `data` was before: a Python value per tensor value, then orjson."""
    values = array
    while pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    return orjson.dumps(values.to_numpy(zero_copy_only=False).tolist())


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
    assert body.endswith(b',"data":' + orjson.dumps(F32[:20].tolist()) + b"}]}")
    body, headers = oip.encode_response({"parameters": {"binary_data_output": True}}, "m", "1", chunked)
    split = int(headers[oip.HEADER_LENGTH])
    assert body[split:] == F32[:20].astype("<f4").tobytes()
