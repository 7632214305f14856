"""Values an integer model input cannot hold exactly are a typed 400 naming the column, in every format, through the
real gateway and engine (a model taking int64 token ids `ids` [N,2] and answering them doubled): a number with a
fraction, NaN, a float beyond int64, an integer beyond it (an Arrow uint64). Before session 26 numpy's cast fed the
model 1 for 1.5 and -2**63 for NaN or 1e300, and wrapped 2**64 - 1 to -1: values the client never sent. Whole
numbers written as floats (3.0) are still taken, exactly."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from shared.arrow_codec import tensor_array, to_ipc_stream
from tests.integration.conftest import post
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes

pytestmark = pytest.mark.integration

NAME = "tokenids"
ARROW = "application/vnd.apache.arrow.stream"


def _doubled_ids_onnx() -> bytes:
    """ONNX: `ids` int64[N,2] -> `y` int64[N,2] = ids + ids."""
    graph = helper.make_graph([helper.make_node("Add", ["ids", "ids"], ["y"])], "doubled_ids",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.fixture
def tokenids(stack, alice):
    _upload_bytes(stack, alice, "doubledids", _doubled_ids_onnx())
    deployment, url, pipeline = _deploy_definition(stack, alice, NAME, {"steps": [{"ModelInference": {"models": [
        {"name": "doubledids"}]}}]})
    yield {"url": url, "oip": f"{stack.base_url}/v2/models/{deployment}/infer"}
    post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


def _records(rows: list) -> tuple[str, bytes]:
    return "application/json", json.dumps([{"ids": row} for row in rows]).encode()


def _arrow(values: np.ndarray) -> tuple[str, bytes]:
    return ARROW, to_ipc_stream(pa.table({"ids": tensor_array(values)}))


REFUSED = {
    "a fraction in JSON": (lambda: _records([[1, 2], [1.5, 2]]), "column 'ids': a number with a fraction (1.5)"),
    "NaN in JSON": (lambda: _records([[1, 2], [float("nan"), 2]]),
                    "column 'ids': NaN or infinite values in row 1 (counted from 0) where the model expects int64"),
    "1e300 in JSON": (lambda: _records([[1e300, 2]]), "column 'ids': a value (1e+300) outside the range of int64"),
    "2**63 as a float in Arrow": (lambda: _arrow(np.array([[2.0**63, 1.0]])), "column 'ids': a value "
                                  "(9.223372036854776e+18) outside the range of int64"),
    "uint64 past int64 in Arrow": (lambda: _arrow(np.array([[2**64 - 1, 1]], np.uint64)),
                                   "column 'ids': a value (18446744073709551615) outside the range of int64"),
}


def test_values_an_integer_input_cannot_hold_are_a_typed_400_and_whole_numbers_are_taken(stack, alice, tokenids):
    wrong = []
    for what, (make, wanted) in REFUSED.items():
        content_type, body = make()
        response = httpx.post(tokenids["url"], content=body, timeout=60, headers={
            "Authorization": f"Bearer {alice.token}", "Content-Type": content_type, "Accept": ARROW})
        if response.status_code != 400 or response.json().get("code") != "invalid_request" \
                or not response.json()["msg"].startswith(wanted):
            wrong.append(f"{what}: {response.status_code} {response.text[:300]!r}")
    assert not wrong, "\n".join(wrong)

    auth = {"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"}
    body = {"inputs": [{"name": "ids", "shape": [1, 2], "datatype": "FP64", "data": [2.5, 1.0]}]}
    response = httpx.post(tokenids["oip"], json=body, headers=auth, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("input 'ids': a number with a fraction (2.5)"), response.text
    body["inputs"][0]["data"] = [3.0, 2.0**40]
    taken = httpx.post(tokenids["oip"], json=body, headers=auth, timeout=60)
    assert taken.status_code == 200 and taken.json()["outputs"][0]["data"] == [6, 2**41], taken.text
    whole = httpx.post(tokenids["url"], content=json.dumps([{"ids": [3.0, 4.0]}, {"ids": [1, 2]}]), timeout=60,
                       headers=auth)
    assert whole.status_code == 200 and [r["out"]["y"] for r in whole.json()] == [[6, 8], [2, 4]], whole.text
