"""The Open Inference Protocol v2 with the real `tritonclient[http]`, JSON tensors and binary tensors."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from shared.arrow_codec import from_ipc
from tests.integration.conftest import post, query
from tests.integration.test_logs import ARROW, get_logs, wait_rows
from tests.integration.test_pipelines import (  # noqa: F401 - the fixture is reused
    _deploy_definition,
    _upload_bytes,
    deployed,
    onnx_outputs,
)
from tests.models import sample_rows, zero_size_onnx

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


def test_a_zero_size_output_through_the_stack_is_answered_and_logged_as_empty_lists(stack, alice):
    """A model with an output of shape [N, 0] (tests/models.zero_size_onnx) uploaded, deployed and asked through the
    real processes: tritonclient reads the empty tensor in both encodings (JSON, binary of 0 bytes), the replica
    stores the rows as its own segment (a `.e.parquet` key: the write succeeded, nothing went through the stream),
    and the log store's get_logs reads the column back as empty lists (JSON and Arrow pages). The formats and each
    hop's code are tests/unit/test_infer_zero_size_paths.py's; this is the one pass through the registry, the
    replica, NATS, SeaweedFS and the log store's own reading (its index and pages) that they cannot make."""
    name = "oipzerosize"
    _upload_bytes(stack, alice, "oipzerosize", zero_size_onnx())
    deployment, _, pipeline = _deploy_definition(
        stack, alice, name, {"steps": [{"ModelInference": {"models": [{"name": "oipzerosize"}]}}]})
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{stack.env['RAILYARD_GATEWAY__PORT']}")
    try:
        headers = {"Authorization": f"Bearer {alice.token}"}
        rows = np.arange(6, dtype=np.float32).reshape(2, 3)
        tensor = httpclient.InferInput("x", [2, 3], "FP32")
        tensor.set_data_from_numpy(rows, binary_data=False)
        for binary in (False, True):
            result = client.infer(deployment, [tensor], headers=headers, outputs=[
                httpclient.InferRequestedOutput("none", binary_data=binary),
                httpclient.InferRequestedOutput("total", binary_data=False)])
            assert result.as_numpy("none").shape == (2, 0), result.get_response()
            assert result.as_numpy("total").tolist() == [[3.0], [12.0]]
        logged = wait_rows(stack, alice, name, 4, timeout=30)
        assert [row["out"]["none"] for row in logged] == [[]] * 4
        assert sorted(row["out"]["total"][0] for row in logged) == [3.0, 3.0, 12.0, 12.0]
        assert all(row["metadata"]["dropped"] == [] for row in logged)  # the column was stored, not set aside
        page = get_logs(stack, alice, {"pipeline_id": name, "workspace_id": alice.workspace_id, "page_size": 100},
                        accept=ARROW)
        assert page.status_code == 200, page.text
        assert from_ipc(page.content).column("out.none").to_pylist() == [[]] * 4
        keys = [r["object_key"] for r in query(
            stack, "SELECT s.object_key FROM log_store.segments s JOIN log_store.pipelines p ON p.id = s.pipeline_id "
            "WHERE p.workspace_id = $1 AND p.name = $2", alice.workspace_id, name)]
        assert keys and all(key.endswith(".e.parquet") for key in keys), keys  # the replica's own writes
    finally:
        client.close()
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})
