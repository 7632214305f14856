"""Booleans for ccfraud's float input, through the real gateway and engine: JSON records of true/false, an Arrow bool
column and an OIP BOOL tensor are each a 400 invalid_request naming the column and what to send, and nothing of
them is logged; integers for the float input are still taken (records, Arrow, OIP INT64) and logged."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import tensor_array, to_ipc_stream
from tests.integration.conftest import post
from tests.integration.test_logs import all_rows, wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes, onnx_outputs
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

NAME = "boolinputs"
ARROW = "application/vnd.apache.arrow.stream"
FLAGS = (np.arange(2 * 29).reshape(2, 29) % 3 == 0)  # two rows of 29 booleans
REFUSAL = "column 'tensor': booleans (true/false) where the model expects float32 numbers; send numbers"


@pytest.fixture
def boolinputs(stack, alice):
    _upload_bytes(stack, alice, "ccfraud", ccfraud_onnx())
    definition = {"steps": [{"ModelInference": {"models": [{"name": "ccfraud"}]}}]}
    deployment, url, pipeline = _deploy_definition(stack, alice, NAME, definition)
    yield {"deployment": deployment, "url": url}
    post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


def _oip(datatype: str, values: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "tensor", "shape": list(values.shape), "datatype": datatype,
                                   "data": values.reshape(-1).tolist()}]}).encode()


def test_booleans_for_a_float_input_are_a_typed_400_and_not_logged(stack, alice, boolinputs):
    url, oip_url = boolinputs["url"], f"{stack.base_url}/v2/models/{boolinputs['deployment']}/infer"
    auth = {"Authorization": f"Bearer {alice.token}"}
    as_json, as_arrow = {**auth, "Content-Type": "application/json"}, {**auth, "Content-Type": ARROW}
    with httpx.Client(timeout=60) as client:
        refused = {
            "records": client.post(url, content=json.dumps([{"tensor": row} for row in FLAGS.tolist()]),
                                   headers=as_json),
            "arrow": client.post(url, content=to_ipc_stream(pa.table({"tensor": tensor_array(FLAGS)})),
                                 headers=as_arrow),
            "arrow, twice (a fast lane that learnt the head)": client.post(
                url, content=to_ipc_stream(pa.table({"tensor": tensor_array(FLAGS)})), headers=as_arrow),
            "oip": client.post(oip_url, content=_oip("BOOL", FLAGS), headers=as_json),
        }
        for what, response in refused.items():
            assert response.status_code == 400, (what, response.text)
            assert response.json()["code"] == "invalid_request", (what, response.text)
            # the OIP route names the tensor as OIP does, an input (services/gateway/oip.py: in_oip_words)
            wanted = REFUSAL.replace("column ", "input ", 1) if what == "oip" else REFUSAL
            assert response.json()["msg"].startswith(wanted), (what, response.text)

        integers = FLAGS.astype(np.int64)
        taken = [
            client.post(url, content=json.dumps([{"tensor": row} for row in integers.tolist()]), headers=as_json),
            client.post(url, content=to_ipc_stream(pa.table({"tensor": tensor_array(integers)})), headers=as_arrow),
            client.post(oip_url, content=_oip("INT64", integers), headers=as_json),
        ]
        for response in taken:
            assert response.status_code == 200, response.text
        expected = onnx_outputs(integers.astype(np.float32))
        assert np.allclose([r["out"]["dense_1"] for r in taken[0].json()], expected, atol=1e-6)
        assert np.allclose(taken[2].json()["outputs"][0]["data"], expected.reshape(-1), atol=1e-6)
        floats = sample_rows(3, seed=8).astype(np.float64)  # the last request: the log holds it once it is stored
        last = client.post(url, content=json.dumps([{"tensor": row} for row in floats.tolist()]), headers=as_json)
        assert last.status_code == 200, last.text

    logged = 3 * len(integers) + len(floats)
    wait_rows(stack, alice, NAME, logged, order="Asc")
    rows = all_rows(stack, alice, NAME, order="Asc")
    assert len(rows) == logged  # the refused requests left nothing
    tensors = [row["in"]["tensor"] for row in rows]
    assert not any(type(value) is bool for tensor in tensors for value in tensor)  # no bool tensor
    assert np.array_equal(tensors[:3 * len(integers)], np.tile(integers, (3, 1)))
    assert np.allclose(tensors[3 * len(integers):], floats.astype(np.float32))
