"""Arrow columns of kinds no model takes (a struct, a map, a list view, a string view, a decimal, a timestamp, a
fixed_shape_tensor extension) sent for ccfraud's float[N,29] input, through the real gateway and engine: a typed 400
naming the column's type. Before session 26 most were answered "the model expects tensors of shape 29, got a
scalar" (the shape was checked before the kind), which sent the client looking at the wrong thing."""

from __future__ import annotations

import httpx
import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import to_ipc_stream
from tests.integration.test_pipelines import deployed  # noqa: F401 - the fixture is reused

pytestmark = pytest.mark.integration

ARROW = "application/vnd.apache.arrow.stream"
ROW = [0.5] * 29
COLUMNS = {
    "struct": (lambda: pa.array([{"a": 1.0}]), "struct<a: double>"),
    "map": (lambda: pa.array([[("a", 1.0)]], pa.map_(pa.string(), pa.float64())), "map<string, double>"),
    "list view": (lambda: pa.array([ROW], pa.list_view(pa.float32())), "list_view<item: float>"),
    "string view": (lambda: pa.array(["a"], pa.string_view()), "string_view"),
    "decimal tensor": (lambda: pa.array([[1] * 29], pa.list_(pa.decimal128(5, 2), 29)), "decimal128(5, 2)"),
    "timestamp": (lambda: pa.array([1], pa.timestamp("s")), "timestamp[s]"),
    "tensor extension": (lambda: pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((1, 29), np.float32)),
                         "extension<arrow.fixed_shape_tensor"),
}


@pytest.mark.parametrize("column", COLUMNS.values(), ids=COLUMNS.keys())
def test_a_column_of_a_kind_no_model_takes_is_a_400_naming_its_type(stack, alice, deployed, column):  # noqa: F811
    make, kind = column
    response = httpx.post(deployed["url"], content=to_ipc_stream(pa.table({"tensor": make()})), timeout=60,
                          headers={"Authorization": f"Bearer {alice.token}", "Content-Type": ARROW, "Accept": ARROW})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["code"] == "invalid_request"
    assert answer["msg"].startswith(f"column 'tensor': {kind}"), answer
    assert "values are not a tensor a model takes" in answer["msg"], answer
