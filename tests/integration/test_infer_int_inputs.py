"""Integers for ccfraud's float32 input, through the real gateway, engine and log store: JSON records of integers
(small, which the replica narrows, and from NARROW_MIN_ROWS rows, which the gateway narrows), an Arrow int64 tensor
(twice: the fast lane answers the second) and an OIP INT64 tensor are logged as float32, as a float request is, so
the pipeline's log reads back as one page of one schema; the answers still echo the request as sent."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from tests.integration.conftest import post
from tests.integration.test_logs import ARROW as ARROW_FILE
from tests.integration.test_logs import get_logs, wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes, onnx_outputs
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

NAME = "intinputs"
ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture
def intinputs(stack, alice):
    _upload_bytes(stack, alice, "ccfraud", ccfraud_onnx())
    definition = {"steps": [{"ModelInference": {"models": [{"name": "ccfraud"}]}}]}
    deployment, url, pipeline = _deploy_definition(stack, alice, NAME, definition)
    yield {"deployment": deployment, "url": url}
    post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


def _oip(values: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "tensor", "shape": list(values.shape), "datatype": "INT64",
                                   "data": values.reshape(-1).tolist()}]}).encode()


def test_integer_requests_are_logged_as_the_models_float32_in_one_schema(stack, alice, intinputs):
    from services.gateway.inference import NARROW_MIN_ROWS

    url, oip_url = intinputs["url"], f"{stack.base_url}/v2/models/{intinputs['deployment']}/infer"
    auth = {"Authorization": f"Bearer {alice.token}"}
    as_json, as_arrow = {**auth, "Content-Type": "application/json"}, {**auth, "Content-Type": ARROW}
    small = np.rint(sample_rows(2, seed=11) * 10).astype(np.int64)
    large = np.rint(sample_rows(NARROW_MIN_ROWS + 2, seed=12) * 10).astype(np.int64)  # the gateway narrows it
    floats = sample_rows(3, seed=13).astype(np.float64)
    sent = [small, large, small, small, small, floats]
    with httpx.Client(timeout=60) as client:
        answers = [
            client.post(url, content=json.dumps([{"tensor": row} for row in small.tolist()]), headers=as_json),
            client.post(url, content=json.dumps([{"tensor": row} for row in large.tolist()]), headers=as_json),
            client.post(url, content=to_ipc_stream(pa.table({"tensor": tensor_array(small)})), headers=as_arrow),
            client.post(url, content=to_ipc_stream(pa.table({"tensor": tensor_array(small)})), headers=as_arrow),
            client.post(oip_url, content=_oip(small), headers=as_json),
            client.post(url, content=json.dumps([{"tensor": row} for row in floats.tolist()]), headers=as_json),
        ]
    for response in answers:
        assert response.status_code == 200, response.text
    for response, values in [(answers[0], small), (answers[1], large), (answers[2], small)]:
        rows = response.json()
        echoed = [row["in"]["tensor"] for row in rows]
        assert echoed == values.tolist() and all(type(v) is int for row in echoed for v in row)  # as sent
        expected = onnx_outputs(values.astype(np.float32))
        assert np.allclose([row["out"]["dense_1"] for row in rows], expected, atol=1e-6)
    assert np.allclose(answers[4].json()["outputs"][0]["data"], onnx_outputs(small.astype(np.float32)).reshape(-1),
                       atol=1e-6)

    logged = sum(len(values) for values in sent)
    wait_rows(stack, alice, NAME, logged)
    page = get_logs(stack, alice, {"pipeline_id": NAME, "workspace_id": alice.workspace_id, "order": "Asc",
                                   "page_size": 10_000}, accept=ARROW_FILE)
    assert page.status_code == 200, page.text
    # one schema for every request: no SchemaChange page between the integer requests and the float one
    assert page.headers["x-iteration-status"] == "All", page.headers
    table = from_ipc(page.content)
    assert table.num_rows == logged
    assert table.schema.field("in.tensor").type.value_type == pa.float32()
    tensors = np.array(table.column("in.tensor").to_pylist(), dtype=np.float32)
    assert np.array_equal(tensors, np.concatenate(sent).astype(np.float32))  # what the model was given, in order
