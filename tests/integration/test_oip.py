"""The Open Inference Protocol v2 with the real `tritonclient[http]`, JSON tensors and binary tensors."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.test_pipelines import deployed, onnx_outputs  # noqa: F401 - the fixture is reused
from tests.models import sample_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def triton(stack, alice, deployed):  # noqa: F811
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{stack.env['RAILYARD_GATEWAY__PORT']}")
    yield client, {"Authorization": f"Bearer {alice.token}"}, deployed["name"]
    client.close()


def test_health_and_metadata(triton):
    client, headers, model = triton
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    assert client.is_model_ready(model, headers=headers)
    metadata = client.get_model_metadata(model, headers=headers)
    assert metadata["inputs"] == [{"name": "tensor", "datatype": "FP32", "shape": [-1, 29]}]
    assert metadata["outputs"] == [{"name": "dense_1", "datatype": "FP32", "shape": [-1, 1]}]


@pytest.mark.parametrize("binary", [False, True])
def test_infer_matches_onnxruntime(triton, binary):
    client, headers, model = triton
    rows = sample_rows(16, seed=21)
    tensor = httpclient.InferInput("tensor", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("dense_1", binary_data=binary)],
                          headers=headers)
    assert np.allclose(result.as_numpy("dense_1"), onnx_outputs(rows), atol=1e-6)


def test_bad_requests_are_errors_with_the_reason(triton):
    client, headers, model = triton
    wrong = httpclient.InferInput("tensor", [2, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 3), np.float32))
    with pytest.raises(InferenceServerException, match="shape 29"):
        client.infer(model, [wrong], headers=headers)
    with pytest.raises(InferenceServerException):
        client.infer("nothing-424242", [wrong], headers=headers)
    with pytest.raises(InferenceServerException):
        client.get_model_metadata(model)  # no token
