"""The SDK as a user gets it: railyard-client installed ALONE into a fresh virtual environment (no server
code, no onnxruntime), driving the real stack: upload a model, build and deploy a pipeline, infer from a
DataFrame, an Arrow table and a Parquet file, read the logs back as a DataFrame, undeploy; typed errors.

The environment is cached under build/ keyed by the client's pyproject.toml (its dependencies), so only the
first run downloads anything; the client itself is reinstalled from the working tree whenever its files differ from
those it was installed from (tests/client_venv.py; `make test` builds it in the background from the session's
start)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.client_venv import client_venv
from tests.integration.conftest import PASSWORD
from tests.models import ccfraud_onnx, ccfraud_pickle, sample_rows

pytestmark = pytest.mark.integration


def user_env(stack, email: str, tmp_path: Path) -> dict[str, str]:
    """A user's environment: RAILYARD_CLIENT_* only (no server settings), a private config directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAILYARD_", "TASK_", "ORCH_"))}
    env |= {"RAILYARD_CLIENT_URL": stack.base_url, "RAILYARD_CLIENT_USERNAME": email,
            "RAILYARD_CLIENT_PASSWORD": PASSWORD, "RAILYARD_CLIENT_SECRET": stack.secrets()["client_secret"],
            "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return env


def test_the_sdk_alone_uploads_deploys_infers_reads_logs_and_undeploys(stack, alice, tmp_path):
    python = client_venv()
    model = tmp_path / "ccfraud.onnx"
    model.write_bytes(ccfraud_onnx())
    rows = sample_rows(4, seed=5).astype(np.float64)
    (tmp_path / "ccfraud.pkl").write_bytes(ccfraud_pickle())
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"tensor": pa.array(rows.tolist(), pa.list_(pa.float64()))}), parquet)
    args = {"workspace_id": alice.workspace_id, "model_path": str(model), "rows": rows.tolist(),
            "parquet_path": str(parquet), "pickle_path": str(tmp_path / "ccfraud.pkl"), "url": stack.base_url,
            "client_secret": stack.secrets()["client_secret"], "username": alice.email}
    result = subprocess.run([str(python), str(Path(__file__).with_name("sdk_flow.py")), json.dumps(args)],
                            env=user_env(stack, alice.email, tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    from shared import __version__
    assert seen["version"] == __version__
    assert seen["importable"] == [], "the client environment must not hold server code or the model runtime"
    assert seen["model"] == {"name": "ccfraud", "status": "ready", "framework": "onnx", "versions": 1}
    assert seen["converted"] == ["ready", "onnx"]
    assert seen["status"] == "Running" and seen["pipeline_versions"] == 1
    expected = ort.InferenceSession(ccfraud_onnx()).run(None, {"tensor": rows.astype(np.float32)})[0]
    assert seen["frame_type"] == "DataFrame"
    assert {"time", "in.tensor", "out.dense_1", "check_failures"} <= set(seen["frame_columns"])
    assert np.allclose(seen["frame_out"], expected, atol=1e-6)
    assert seen["arrow_type"] == "Table" and np.allclose(seen["arrow_out"], expected, atol=1e-6)
    assert seen["parquet_type"] == "Table"
    assert np.allclose(seen["records"]["dense_1"], expected[0], atol=1e-6)
    assert np.allclose(seen["oip_out"], expected, atol=1e-6) and seen["predict_type"] == "DataFrame"
    assert seen["logs_type"] == "DataFrame" and seen["logs_rows"] == 5 * len(rows) + 1
    assert {"time", "in.tensor", "out.dense_1"} <= set(seen["logs_columns"])
    assert np.allclose(seen["logs_first_in"], rows[0]), "oldest first: the DataFrame inference's first row"
    assert seen["logs_ordered"] and seen["logs_limited"] == ["Table", 2]
    assert seen["logs_before"] == [0, 0] and seen["logs_time"] == "datetime64[ms, UTC]"
    assert seen["scorer"][0] == "DataFrame" and np.allclose(seen["scorer"][1], expected, atol=1e-6)
    assert seen["scorer_refused"] in (401, 403), "an inference token runs inferences only"
    assert seen["assays"] and seen["assay_results"] == []
    assert seen["copy"] == ["sdkcopy", 1, True]
    assert seen["connection"] == ["s3cret", True]
    assert seen["status_after"] == "NotDeployed"
    assert seen["not_found"] == [404, "not_found"]
    assert seen["wrong_password"][0] == 401
    assert seen["in_task"] == [False, {}]

