"""Integers for a float64 model input, through the real gateway, engine and log store: JSON records of integers,
an Arrow int64 tensor and an OIP INT64 tensor are logged as float64, as a float request is, so the pipeline's log
reads back (get_logs and the SDK) as one page of one schema; the answers still echo the request as sent. Before
session 26 only float32/float16 inputs were cast: such a log held int64 pages among float64 ones (an integer
narrower than float64, an int32, stays as sent: tests/unit/test_engine_narrowing.py)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from tests.integration.conftest import post, sdk_client
from tests.integration.test_logs import ARROW as ARROW_FILE
from tests.integration.test_logs import get_logs, wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes

pytestmark = pytest.mark.integration

NAME = "doubleinputs"
ARROW = "application/vnd.apache.arrow.stream"
WEIGHTS = np.array([[0.5], [-1.25], [2.0], [0.125]])


def weighted_sum_onnx() -> bytes:
    """ONNX: input `tensor` double[N,4] -> `y` double[N,1] = tensor @ WEIGHTS (a real model run by onnxruntime)."""
    weights = helper.make_tensor("w", TensorProto.DOUBLE, list(WEIGHTS.shape), WEIGHTS.ravel().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["tensor", "w"], ["y"])], "weighted_sum",
                              [helper.make_tensor_value_info("tensor", TensorProto.DOUBLE, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 1])], [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.fixture
def doubles(stack, alice):
    _upload_bytes(stack, alice, "weightedsum", weighted_sum_onnx())
    definition = {"steps": [{"ModelInference": {"models": [{"name": "weightedsum"}]}}]}
    deployment, url, pipeline = _deploy_definition(stack, alice, NAME, definition)
    yield {"deployment": deployment, "url": url}
    post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


def test_integer_requests_for_a_float64_input_are_logged_as_float64_in_one_schema(stack, alice, doubles):
    url, oip_url = doubles["url"], f"{stack.base_url}/v2/models/{doubles['deployment']}/infer"
    auth = {"Authorization": f"Bearer {alice.token}"}
    as_json, as_arrow = {**auth, "Content-Type": "application/json"}, {**auth, "Content-Type": ARROW}
    ints = np.array([[1, -2, 3, 2**53 + 1], [7, 0, -5, 9]], dtype=np.int64)  # 2**53 + 1: float64's rounding
    floats = np.array([[0.1, 2.5, -3.0, 4.25]])
    records = json.dumps([{"tensor": row} for row in ints.tolist()])
    oip = json.dumps({"inputs": [{"name": "tensor", "shape": [2, 4], "datatype": "INT64",
                                  "data": ints.ravel().tolist()}]})
    with httpx.Client(timeout=60) as client:
        answers = [
            client.post(url, content=records, headers=as_json),
            client.post(url, content=records, headers=as_json),
            client.post(url, content=to_ipc_stream(pa.table({"tensor": tensor_array(ints)})), headers=as_arrow),
            client.post(oip_url, content=oip, headers=as_json),
            client.post(url, content=json.dumps([{"tensor": row} for row in floats.tolist()]), headers=as_json),
        ]
    for response in answers:
        assert response.status_code == 200, response.text
    expected = ints.astype(np.float64) @ WEIGHTS
    for response in answers[:3]:
        rows = response.json()
        echoed = [row["in"]["tensor"] for row in rows]
        assert echoed == ints.tolist() and all(type(v) is int for row in echoed for v in row)  # as sent
        assert [row["out"]["y"] for row in rows] == expected.tolist()
    assert answers[3].json()["outputs"][0]["data"] == expected.ravel().tolist()

    sent = [ints, ints, ints, ints, floats]
    logged = sum(len(values) for values in sent)
    wait_rows(stack, alice, NAME, logged)
    page = get_logs(stack, alice, {"pipeline_id": NAME, "workspace_id": alice.workspace_id, "order": "Asc",
                                   "page_size": 10_000}, accept=ARROW_FILE)
    assert page.status_code == 200, page.text
    # one schema for every request: no SchemaChange page between the integer requests and the float one
    assert page.headers["x-iteration-status"] == "All", page.headers
    table = from_ipc(page.content)
    assert table.num_rows == logged
    assert table.schema.field("in.tensor").type.value_type == pa.float64()
    tensors = np.array(table.column("in.tensor").to_pylist(), dtype=np.float64)
    assert np.array_equal(tensors, np.concatenate(sent).astype(np.float64))  # what the model was given, in order

    read = sdk_client(stack, alice).pipeline(NAME).logs(limit=None, arrow=True)  # the SDK's read of the same log
    assert read.num_rows == logged and read.schema.field("in.tensor").type.value_type == pa.float64()
    assert np.array_equal(np.array(read.column("in.tensor").to_pylist()), tensors)

