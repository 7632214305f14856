"""A request of no rows, one rule in every format, through the real gateway and an engine replica serving ccfraud
(input `tensor` float[N,29]): records `[]`, an Arrow table (stream or file) of 0 rows and an OIP batch of 0 (JSON
or binary tensors) are each a 400 `invalid_request` saying "the request holds no rows; send at least one" and
which form it took. Before, `[]` was a 400 while the other two were run and answered 200 with nothing in them; a
row in each format is answered (tests/unit/test_inference_no_rows.py reads the same bodies in memory)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest

from services.gateway.oip import HEADER_LENGTH
from shared.arrow_codec import NO_ROWS, tensor_array, to_ipc_file, to_ipc_stream
from tests.integration.test_pipelines import deployed  # noqa: F401 - the fixture is reused

pytestmark = pytest.mark.integration

ARROW_STREAM, ARROW_FILE = "application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file"


def _tables(rows: int) -> pa.Table:
    return pa.table({"tensor": tensor_array(np.full((rows, 29), 0.5, np.float32))})


def _oip_json(rows: int) -> bytes:
    return json.dumps({"inputs": [{"name": "tensor", "shape": [rows, 29], "datatype": "FP32",
                                   "data": [0.5] * (29 * rows)}]}).encode()


def _oip_binary(rows: int) -> tuple[bytes, str]:
    values = np.full((rows, 29), 0.5, np.float32)
    header = json.dumps({"inputs": [{"name": "tensor", "shape": [rows, 29], "datatype": "FP32",
                                     "parameters": {"binary_data_size": values.nbytes}}]}).encode()
    return header + values.tobytes(), str(len(header))


def test_no_rows_is_the_same_400_in_every_format_and_a_row_is_answered(stack, alice, deployed):  # noqa: F811
    auth = {"Authorization": f"Bearer {alice.token}"}
    oip_url = f"{stack.base_url}/v2/models/{deployed['name']}/infer"

    def send(rows: int) -> dict[str, httpx.Response]:
        binary, length = _oip_binary(rows)
        records = json.dumps([{"tensor": [0.5] * 29}] * rows)
        with httpx.Client(timeout=60, headers=auth) as client:
            return {
                "records": client.post(deployed["url"], content=records,
                                       headers={"Content-Type": "application/json"}),
                "Arrow stream": client.post(deployed["url"], content=to_ipc_stream(_tables(rows)),
                                            headers={"Content-Type": ARROW_STREAM}),
                "Arrow file": client.post(deployed["url"], content=to_ipc_file(_tables(rows)),
                                          headers={"Content-Type": ARROW_FILE}),
                "OIP JSON": client.post(oip_url, content=_oip_json(rows),
                                        headers={"Content-Type": "application/json"}),
                "OIP binary": client.post(oip_url, content=binary,
                                          headers={"Content-Type": "application/octet-stream", HEADER_LENGTH: length}),
            }

    forms = {"records": "(an empty list of records)", "Arrow stream": "(an Arrow table of 0 rows)",
             "Arrow file": "(an Arrow table of 0 rows)", "OIP JSON": "(the inputs' batch dimension is 0)",
             "OIP binary": "(the inputs' batch dimension is 0)"}
    for kind, response in send(0).items():
        assert response.status_code == 400, (kind, response.text)
        answer = response.json()
        assert answer["code"] == "invalid_request" and answer["msg"] == f"{NO_ROWS} {forms[kind]}", (kind, answer)
    for kind, response in send(1).items():
        assert response.status_code == 200, (kind, response.text)
        answer = response.json()  # the /v1 routes answer JSON records (no Accept asked for Arrow)
        answered = answer["outputs"][0]["shape"][0] if kind.startswith("OIP") else len(answer)
        assert answered == 1, (kind, answer)
    # records of no keys name no columns, so they make no rows (they were sent on: the model said 'missing columns')
    for keyless in (b"{}", b"[{}]", b"[{}, {}]"):
        response = httpx.post(deployed["url"], content=keyless, timeout=60,
                              headers={**auth, "Content-Type": "application/json"})
        assert response.status_code == 400, (keyless, response.text)
        assert response.json()["msg"] == f"{NO_ROWS} (records of no columns)", (keyless, response.text)
