"""A request of no rows is one rule in every format: records `[]`, an Arrow table (file or stream) of 0 rows and an
OIP batch of 0 (JSON or binary tensors) are each a 400 `invalid_request` saying so (shared.arrow_codec.NO_ROWS),
read before the bus: nothing is run or logged. Before, `[]` was a 400 while the other two were sent to the engine and
answered empty (200) (tests/integration/test_infer_no_rows.py runs them through the real gateway)."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from services.gateway import oip
from services.gateway.inference import ARROW_FILE, ARROW_STREAM, _read_body
from services.gateway.records_parse import FAST_BODY
from shared.arrow_codec import NO_ROWS, records_json_to_table, tensor_array, to_ipc_file, to_ipc_stream
from shared.errors import InvalidRequest

EMPTY = pa.table({"tensor": tensor_array(np.zeros((0, 29), np.float32))})
BINARY_HEADER = orjson.dumps({"inputs": [{"name": "tensor", "shape": [0, 29], "datatype": "FP32",
                                          "parameters": {"binary_data_size": 0}}]})
BODIES = {
    "records []": (lambda: _read_body("application/json", b"[]", 1 << 20), "an empty list of records"),
    "records [] with spaces": (lambda: _read_body("application/json", b" [ ]\n", 1 << 20), "an empty list of records"),
    "Arrow stream of 0 rows": (lambda: _read_body(ARROW_STREAM, to_ipc_stream(EMPTY), 1 << 20), "0 rows"),
    "Arrow file of 0 rows": (lambda: _read_body(ARROW_FILE, to_ipc_file(EMPTY), 1 << 20), "0 rows"),
    "OIP JSON batch of 0": (lambda: oip.parse_request(orjson.dumps({"inputs": [
        {"name": "tensor", "shape": [0, 29], "datatype": "FP32", "data": []}]}), None), "batch dimension is 0"),
    "OIP batch of 0, two inputs": (lambda: oip.parse_request(orjson.dumps({"inputs": [
        {"name": "a", "shape": [0], "datatype": "INT64", "data": []},
        {"name": "b", "shape": [0, 2, 2], "datatype": "FP64", "data": [[], []]}]}), None), "batch dimension is 0"),
    "OIP binary batch of 0": (lambda: oip.parse_request(BINARY_HEADER, str(len(BINARY_HEADER))),
                              "batch dimension is 0"),
    # records of no keys name no columns, so they make no rows (a table of 0 rows and 0 columns was sent on)
    "records {}": (lambda: _read_body("application/json", b"{}", 1 << 20), "records of no columns"),
    "records [{}]": (lambda: _read_body("application/json", b"[{}]", 1 << 20), "records of no columns"),
    "records [{}, {}]": (lambda: _read_body("application/json", b"[{}, {}]", 1 << 20), "records of no columns"),
    "records of no columns, read by the fast reader": (
        lambda: _read_body("application/json", b"[" + b",".join([b"{}"] * (FAST_BODY // 2)) + b"]", 1 << 20),
        "records of no columns"),
}


@pytest.mark.parametrize("read", BODIES.values(), ids=BODIES.keys())
def test_no_rows_is_a_400_in_every_format(read):
    make, detail = read
    with pytest.raises(InvalidRequest) as refused:
        make()
    assert refused.value.status == 400 and refused.value.code == "invalid_request"
    assert refused.value.msg.startswith(NO_ROWS) and detail in refused.value.msg, refused.value.msg


def test_one_row_in_each_format_is_read():
    one = pa.table({"tensor": tensor_array(np.zeros((1, 29), np.float32))})
    assert _read_body("application/json", orjson.dumps([{"tensor": [0.0] * 29}]), 1 << 20).num_rows == 1
    assert _read_body(ARROW_STREAM, to_ipc_stream(one), 1 << 20).num_rows == 1
    assert _read_body(ARROW_FILE, to_ipc_file(one), 1 << 20).num_rows == 1
    body = orjson.dumps({"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": [0.0] * 29}]})
    assert oip.parse_request(body, None)[1].num_rows == 1


def test_records_of_no_columns_are_refused_in_a_dataset_body_too():
    """records_json_to_table also reads the lineage put_rows body: `{}` staged a table of no rows and no columns."""
    with pytest.raises(InvalidRequest, match=f"^{NO_ROWS} \\(records of no columns\\)$"):
        records_json_to_table(b"{}")


def test_a_records_body_that_is_not_a_list_keeps_its_own_message():
    with pytest.raises(InvalidRequest, match="expected a non-empty list of records"):
        _read_body("application/json", b'"rows"', 1 << 20)
