"""An OIP request naming an output of the model a pipeline was just redeployed with is answered, though the
gateway's cached route (used up to ROUTE_MAX_AGE, 20 s, while it is refreshed) still names the old model's outputs:
the check that refuses an unknown output before the model runs (oip.check_outputs) asks the deployer for the route
again before refusing. Before, the first requests after the swap were a 400 "output 'y' is not an output of the
model; its outputs are ['dense_1']". Through the real gateway, deployer and engine replicas."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.integration.conftest import post
from tests.integration.test_infer_coalesced_versions import WEIGHTS, _weighted_sum_float64
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes
from tests.models import FEATURES, ccfraud_onnx

pytestmark = pytest.mark.integration

NAME = "oipoutswap"


def test_an_output_of_the_new_model_is_answered_right_after_a_swap(stack, alice):
    _upload_bytes(stack, alice, "outfrom", ccfraud_onnx())  # output dense_1
    _upload_bytes(stack, alice, "outto", _weighted_sum_float64())  # output y
    values = np.linspace(-0.5, 0.5, FEATURES)

    def ask(deployment: str, output: str) -> httpx.Response:
        body = {"inputs": [{"name": "tensor", "shape": [1, FEATURES], "datatype": "FP64", "data": values.tolist()}],
                "outputs": [{"name": output}]}
        return httpx.post(f"{stack.base_url}/v2/models/{deployment}/infer", content=json.dumps(body), timeout=60,
                          headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"})

    deployment, _, pipeline = _deploy_definition(stack, alice, NAME, {"steps": [{"ModelInference": {"models": [
        {"name": "outfrom"}]}}]})
    try:
        first = ask(deployment, "dense_1")  # the gateway caches the route: outputs ['dense_1']
        assert first.status_code == 200, first.text
        assert ask(deployment, "y").json()["error"].startswith("output 'y' is not an output of the model")

        swapped, _, _ = _deploy_definition(stack, alice, NAME, {"steps": [{"ModelInference": {"models": [
            {"name": "outto"}]}}]})
        assert swapped == deployment
        answer = ask(deployment, "y")  # within the cached route's 20 s
        assert answer.status_code == 200, answer.text
        assert [o["name"] for o in answer.json()["outputs"]] == ["y"]
        assert np.allclose(answer.json()["outputs"][0]["data"], values @ WEIGHTS, rtol=1e-12)
        gone = ask(deployment, "dense_1")  # the old model's output: refused, naming the new model's
        assert gone.status_code == 400 and gone.json()["error"] == (
            "output 'dense_1' is not an output of the model; its outputs are ['y']"), gone.text
    finally:
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})
