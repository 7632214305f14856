"""The `railyard` command through its real entry point against the real stack: sign in, upload, create,
deploy, status, infer (JSON, Parquet, Arrow files and stdin), logs, undeploy, with `--json` parsed; bad input
gives one clear line on stderr and a meaningful exit code, never a traceback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import PASSWORD
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

RAILYARD = str(Path(sys.executable).parent / "railyard")


class Cli:
    """`railyard` as a user in a shell: a private config directory, no server settings in the environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAILYARD_", "TASK_", "ORCH_"))}
        self.env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
        self.cwd = tmp_path

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([RAILYARD, *args], env=self.env, cwd=self.cwd, input=stdin, capture_output=True,
                              timeout=300)

    def json(self, *args: str, stdin: bytes | None = None):
        result = self.run(*args, "--json", stdin=stdin)
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    def json_without_pandas(self, *args: str, stdin: bytes | None = None):
        """`json()` of a command that prints JSON from JSON or Arrow, asserting from its `-X importtime` report
        that it did not import pandas (0.3-1 s of the command; tests/unit/test_cli_without_pandas.py)."""
        result = subprocess.run([RAILYARD, *args, "--json"], env=self.env | {"PYTHONPROFILEIMPORTTIME": "1"},
                                cwd=self.cwd, input=stdin, capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr.decode()
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.decode().splitlines()
                    if line.startswith("import time:")}
        assert "railyard_client.cli" in imported  # the report is there
        assert "pandas" not in imported, args
        return json.loads(result.stdout)

    def fails(self, code: int, *args: str, stdin: bytes | None = None) -> str:
        """The one line a failing command prints (asserting the exit code and that there is no traceback)."""
        result = self.run(*args, stdin=stdin)
        err = result.stderr.decode()
        assert result.returncode == code, (result.returncode, err, result.stdout.decode())
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith("railyard: error: "), err
        return err.strip()


def expected_outputs(rows: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(ccfraud_onnx()).run(None, {"tensor": rows.astype(np.float32)})[0]


def test_cli_flow_from_login_to_undeploy(stack, alice, tmp_path):
    cli = Cli(tmp_path)
    secret = stack.secrets()["client_secret"]
    signed = cli.json("login", "--url", stack.base_url, "--username", alice.email, "--password", PASSWORD,
                      "--client-secret", secret)
    assert signed["url"] == stack.base_url and signed["username"] == alice.email
    assert stat.S_IMODE(Path(signed["credentials"]).stat().st_mode) == 0o600
    assert cli.run("token").stdout.decode().count(".") == 2  # a JWT
    # an expired access token is refreshed, and the single-use refresh token written back
    saved = json.loads(Path(signed["credentials"]).read_text())
    Path(signed["credentials"]).write_text(json.dumps(saved | {"expires_at": 0}))
    refreshed = cli.run("token")
    assert refreshed.returncode == 0, refreshed.stderr.decode()
    again = json.loads(Path(signed["credentials"]).read_text())
    assert again["refresh_token"] != saved["refresh_token"] and again["expires_at"] > time.time()
    assert refreshed.stdout.decode().strip() == again["access_token"] != saved["access_token"]
    assert cli.json("workspaces", "use", str(alice.workspace_id))["id"] == alice.workspace_id

    (tmp_path / "ccfraud.onnx").write_bytes(ccfraud_onnx())
    shown = cli.run("models", "upload", "ccfraud", "ccfraud.onnx", "--progress", "--json")
    assert shown.returncode == 0 and "uploading ccfraud.onnx" in shown.stderr.decode()  # the progress bar
    uploaded = json.loads(shown.stdout)
    assert uploaded["status"] == "ready" and uploaded["model_id"] == "ccfraud"
    assert [m["name"] for m in cli.json("models", "list")] == ["ccfraud"]
    assert [v["model_version"] for v in cli.json("models", "versions", "ccfraud")] == [uploaded["model_version"]]

    created = cli.json("pipelines", "create", "clipipeline", "--model", "ccfraud")
    assert created["name"] == "clipipeline" and len(created["versions"]) == 1
    deploying = cli.run("pipelines", "deploy", "clipipeline", "--progress", "--json")
    assert deploying.returncode == 0 and "deployment clipipeline-" in deploying.stderr.decode()  # the spinner
    deployed = json.loads(deploying.stdout)
    assert deployed["status"] == "Running" and deployed["deployment"].startswith("clipipeline-")
    assert cli.json("pipelines", "status", "clipipeline")["status"] == "Running"
    table = cli.run("pipelines", "list")
    assert table.returncode == 0 and "clipipeline" in table.stdout.decode()  # the human table

    rows = sample_rows(3, seed=9).astype(np.float64)
    expected = expected_outputs(rows)
    records = [{"tensor": row.tolist()} for row in rows]
    (tmp_path / "rows.json").write_text(json.dumps(records))
    answer = cli.json_without_pandas("infer", "clipipeline", "rows.json")
    assert np.allclose([r["out"]["dense_1"] for r in answer], expected, atol=1e-6)  # the API's own records
    pq.write_table(pa.table({"tensor": pa.array(rows.tolist(), pa.list_(pa.float64()))}), tmp_path / "rows.parquet")
    flat = cli.json_without_pandas("infer", "clipipeline", "rows.parquet")
    assert np.allclose([r["out.dense_1"] for r in flat], expected, atol=1e-6)
    piped = cli.json_without_pandas("infer", "clipipeline", stdin=json.dumps(records).encode())
    assert np.allclose([r["out"]["dense_1"] for r in piped], expected, atol=1e-6)
    written = cli.run("infer", "clipipeline", "rows.parquet", "--output", "answer.arrow")
    assert written.returncode == 0, written.stderr.decode()
    arrow = pa.ipc.open_file(pa.memory_map(str(tmp_path / "answer.arrow"))).read_all()
    assert np.allclose(arrow.column("out.dense_1").to_pylist(), expected, atol=1e-6)

    deadline = time.monotonic() + 30
    logs = cli.json("pipelines", "logs", "clipipeline", "--limit", "0")
    while len(logs) < 4 * len(rows) and time.monotonic() < deadline:
        time.sleep(0.2)
        logs = cli.json("pipelines", "logs", "clipipeline", "--limit", "0")
    assert len(logs) == 4 * len(rows)
    assert cli.json_without_pandas("pipelines", "logs", "clipipeline", "--limit", "0") == logs
    assert np.allclose(logs[0]["in.tensor"], rows[0]) and "out.dense_1" in logs[0]
    assert len(cli.json("pipelines", "logs", "clipipeline", "--limit", "2")) == 2

    assert cli.json("pipelines", "undeploy", "clipipeline")["status"] == "NotDeployed"
    assert cli.json("pipelines", "status", "clipipeline")["status"] == "NotDeployed"
    assert cli.json("assays", "list", "clipipeline") == []

    # bad input: one line, a meaningful exit code
    assert "'missing.json' does not exist" in cli.fails(2, "infer", "clipipeline", "missing.json")
    (tmp_path / "ragged.json").write_text(json.dumps([{"tensor": [0.5] * 29}, {"tensor": [0.5] * 28}]))
    assert "record 1's tensor has shape [28], record 0's [29]" in cli.fails(2, "infer", "clipipeline", "ragged.json")
    assert "no such file" in cli.fails(2, "models", "upload", "ccfraud", "missing.onnx")
    assert "pipeline 'no-such-pipeline' not found" in cli.fails(4, "pipelines", "status", "no-such-pipeline")
    assert "not deployed" in cli.fails(4, "infer", "clipipeline", "rows.json")
    assert "Missing argument" in cli.fails(2, "pipelines", "deploy")
    assert "No such command" in cli.fails(2, "pipelinez")
    assert "expected pandas-records JSON" in cli.fails(2, "infer", "clipipeline", stdin=b"[1, 2]")
    wrong = cli.fails(3, "login", "--url", stack.base_url, "--username", alice.email, "--password", "not-it",
                      "--client-secret", secret)
    assert "401" in wrong
    unreachable = cli.fails(5, "login", "--url", "http://127.0.0.1:9", "--username", alice.email, "--password",
                            PASSWORD, "--client-secret", secret)
    assert "cannot reach" in unreachable


def test_not_logged_in_and_the_server_commands(tmp_path):
    cli = Cli(tmp_path)
    assert "not logged in" in cli.fails(3, "models", "list")
    helped = cli.run("status", "--help")  # the server's command, through the same `railyard`
    assert helped.returncode == 0 and "--data-dir" in helped.stdout.decode()
    for group in ("workspaces", "models", "pipelines", "assays"):
        shown = cli.run(group, "--help")
        assert shown.returncode == 0 and "Usage: railyard" in shown.stdout.decode()
    from shared import __version__
    assert cli.run("--version").stdout.decode().strip() == f"railyard {__version__}"
