"""The Open Inference Protocol route's errors name a request's tensors as OIP does, inputs, where the engine (which
serves every route alike) says columns, as the records and Arrow routes keep saying; the typed code stays
`invalid_request`. A requested output the model lacks is a 400 naming it, before the model runs (it was left out of
the answer). Through the real gateway and an engine replica serving ccfraud (input `tensor` float[N,29])."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from services.gateway.oip import HEADER_LENGTH
from tests.integration.test_pipelines import deployed  # noqa: F401 - the fixture is reused

pytestmark = pytest.mark.integration


def _oip(stack, alice, model: str, body: bytes, extra: dict | None = None) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v2/models/{model}/infer", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json",
                               **(extra or {})})


def _tensor(name: str, shape: list[int], datatype: str, data: list) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}).encode()


def _binary(bad: float) -> tuple[bytes, dict]:
    values = np.zeros((1, 29), np.float32)
    values[0, 4] = bad
    header = json.dumps({"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32",
                                     "parameters": {"binary_data_size": values.nbytes}}]}).encode()
    return header + values.tobytes(), {HEADER_LENGTH: str(len(header))}


CASES = {
    "wrong shape": (lambda: (_tensor("tensor", [2, 3], "FP32", [0.0] * 6), {}),
                    "input 'tensor': the model expects tensors of shape 29, got 3"),
    "unknown input": (lambda: (_tensor("features", [1, 29], "FP32", [0.0] * 29), {}),
                      "the model takes inputs ['tensor']: missing inputs ['tensor']; unexpected inputs ['features']"),
    "booleans": (lambda: (_tensor("tensor", [1, 29], "BOOL", [True] * 29), {}),
                 "input 'tensor': booleans (true/false) where the model expects float32 numbers"),
    "NaN in binary data": (lambda: _binary(np.nan), "input 'tensor': NaN or infinite values"),
    "infinity in binary data": (lambda: _binary(np.inf), "input 'tensor': NaN or infinite values"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_oip_errors_name_inputs_with_the_typed_code(stack, alice, deployed, case):  # noqa: F811
    make, wanted = case
    body, extra = make()
    response = _oip(stack, alice, deployed["name"], body, extra)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["code"] == "invalid_request"
    assert answer["error"].startswith(wanted) and answer["msg"] == answer["error"], answer
    assert "column" not in answer["error"]


def test_the_records_route_keeps_naming_columns(stack, alice, deployed):  # noqa: F811
    response = httpx.post(deployed["url"], content=json.dumps([{"tensor": [0.0, 1.0, 2.0]}]), timeout=60,
                          headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json() == {"code": "invalid_request",
                               "msg": "column 'tensor': the model expects tensors of shape 29, got 3"}



def _with_outputs(outputs) -> bytes:
    return json.dumps({"inputs": [{"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": [0.5] * 29}],
                       "outputs": outputs}).encode()


OUTPUTS = {
    "an output the model lacks": ([{"name": "dense_2"}],
                                  "output 'dense_2' is not an output of the model; its outputs are ['dense_1']"),
    "outputs not a list": ({"name": "dense_1"}, "`outputs` must be a list of the outputs to answer"),
    "an output without a name": ([{"name": "dense_1"}, {"binary_data": True}],
                                 "`outputs` must be a list of the outputs to answer"),
}


@pytest.mark.parametrize("case", OUTPUTS.values(), ids=OUTPUTS.keys())
def test_requested_outputs_the_model_lacks_are_a_typed_400(stack, alice, deployed, case):  # noqa: F811
    outputs, wanted = case
    response = _oip(stack, alice, deployed["name"], _with_outputs(outputs))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request" and response.json()["error"].startswith(wanted), response.text
    asked = _oip(stack, alice, deployed["name"], _with_outputs([{"name": "dense_1"}]))  # the model's own: answered
    assert asked.status_code == 200 and [o["name"] for o in asked.json()["outputs"]] == ["dense_1"], asked.text


def test_an_id_must_be_a_string_and_names_like_the_engines_words_stay_as_sent(stack, alice, deployed):  # noqa: F811
    """OIP's `id` is a string (MLServer and KServe refuse any other type): a number is a typed 400, a string is
    echoed. A request's input named like the engine's phrase ("missing columns [") was answered renamed ("missing
    inputs [") by in_oip_words; the name stays as sent (tests/unit/test_oip_words.py tries more names)."""
    row = {"name": "tensor", "shape": [1, 29], "datatype": "FP32", "data": [0.5] * 29}
    refused = _oip(stack, alice, deployed["name"], json.dumps({"id": 7, "inputs": [row]}).encode())
    assert refused.status_code == 400, refused.text
    assert refused.json() == {"error": "`id` must be a string (it is echoed in the answer); got a number",
                              "code": "invalid_request",
                              "msg": "`id` must be a string (it is echoed in the answer); got a number"}
    echoed = _oip(stack, alice, deployed["name"], json.dumps({"id": "r-7", "inputs": [row]}).encode())
    assert echoed.status_code == 200 and echoed.json()["id"] == "r-7", echoed.text
    odd = {**row, "name": "missing columns [", "shape": [1, 1], "data": [0.5]}
    response = _oip(stack, alice, deployed["name"], json.dumps({"inputs": [row, odd]}).encode())
    assert response.status_code == 400, response.text
    assert response.json()["msg"] == "the model takes inputs ['tensor']: unexpected inputs ['missing columns [']"
