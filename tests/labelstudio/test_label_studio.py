"""A real Label Studio 1.23.2 (its own venv, .venv-labelstudio, made by `make test-labelstudio`) uses a backend
that `railyard-ml init` made from the seed's text classifier and `railyard-ml start` serves, with basic auth.

Label Studio asks for predictions through its data manager's "Retrieve Predictions" action, sends each new
annotation to the backend's /webhook (fit runs, the version moves on), sends START_TRAINING for "Start training",
and lists the backend's versions. The driver (driver.py) runs in Label Studio's venv with label-studio-sdk and
reports what Label Studio stored; this side checks it against the backend's own view.

Runs only when RAILYARD_TEST_LABELSTUDIO names Label Studio's python (the make target sets it): installing and
first starting Label Studio takes minutes, so `make test` leaves it to `make test-labelstudio`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.ml_backend.conftest import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
LS_PYTHON = os.environ.get("RAILYARD_TEST_LABELSTUDIO")
pytestmark = pytest.mark.skipif(not LS_PYTHON, reason="needs a Label Studio venv: run `make test-labelstudio`")


def start(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def healthy(url: str, **kwargs) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    if not Path(LS_PYTHON).exists():
        pytest.fail(f"no Label Studio python at {LS_PYTHON}: `make test-labelstudio` prepares .venv-labelstudio")
    folder = tmp_path_factory.mktemp("label-studio")
    port, token = free_port(), secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    process = start(
        [str(Path(LS_PYTHON).parent / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
         "--port", str(port), "--host", url, "--data-dir", str(folder / "data"),
         "--username", "admin@example.com", "--password", secrets.token_hex(12), "--user-token", token,
         "--enable-legacy-api-token"],
        folder / "label-studio.log",
        # a backend on loopback is refused unless these are off (Label Studio's SSRF guards)
        env={"ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false", "LATEST_VERSION_CHECK": "false",
             "LABEL_STUDIO_BASE_DATA_DIR": str(folder / "data"), "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""},
    )
    started = time.monotonic()
    try:
        wait_until(lambda: healthy(url) or process.poll() is not None, timeout=900, every=1)
        if process.poll() is not None:
            pytest.fail("Label Studio exited:\n" + (folder / "label-studio.log").read_text()[-3000:])
        print(f"Label Studio up in {time.monotonic() - started:.0f} s")
        yield url, token
    finally:
        stop(process)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The seed's text classifier made into a backend by the real CLI, served with basic auth."""
    folder = tmp_path_factory.mktemp("backend") / "text_backend"
    cli = str(Path(sys.executable).parent / "railyard-ml")
    script = REPO / "examples" / "ml_backend" / "text_classifier" / "text_classifier.py"
    subprocess.run([cli, "init", str(folder), "--script", str(script)], check=True, timeout=120)
    port, user, password = free_port(), "label-studio", secrets.token_hex(12)  # hex: no leading "-" (an option)
    url = f"http://127.0.0.1:{port}"
    process = start([cli, "start", str(folder), "--port", str(port), "--basic-auth-user", user,
                     "--basic-auth-pass", password], folder.parent / "backend.log")
    try:
        wait_until(lambda: healthy(url, auth=(user, password)) or process.poll() is not None, timeout=120, every=0.5)
        assert process.poll() is None, (folder.parent / "backend.log").read_text()
        yield url, user, password
    finally:
        stop(process)


@pytest.mark.timeout(1800)
def test_label_studio_predicts_trains_and_lists_versions(label_studio, backend):
    ls_url, token = label_studio
    url, user, password = backend
    run = subprocess.run([LS_PYTHON, str(Path(__file__).parent / "driver.py"), ls_url, token, url, user, password],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    tasks = [str(task_id) for task_id in seen["task_ids"]]
    assert len(tasks) == 6 and seen["backend_state"] == "CO" and seen["webhooks"] == 1

    # "Retrieve Predictions": every task got the backend's (cold) prediction, with its version and score
    assert seen["backend_model_version"] == "0.0.1"
    for task in tasks:
        [prediction] = seen["predictions_before"][task]
        assert prediction["model_version"] == "0.0.1" and prediction["score"] == pytest.approx(0.5)
        assert prediction["result"][0]["from_name"] == "sentiment"
        assert prediction["result"][0]["value"]["choices"][0] in ("Positive", "Negative")

    # annotations reached /webhook and fit ran: the version moved on; START_TRAINING moved it once more
    after_annotations, after_training = seen["versions_after_annotations"], seen["versions_after_training"]
    assert after_annotations[0] == "0.0.1" and len(after_annotations) >= 2
    assert after_training[: len(after_annotations)] == after_annotations
    assert len(after_training) > len(after_annotations)
    current = after_training[-1]
    assert seen["backend_model_version_after"] == current

    # retrieving again adds the trained version's prediction, and it learned the annotations
    for task in tasks:
        trained = [p for p in seen["predictions_after"][task] if p["model_version"] == current]
        assert len(trained) == 1, seen["predictions_after"][task]
        assert trained[0]["result"][0]["value"]["choices"] == [seen["labels"][task]]

    # the backend's own record agrees: runs from annotation webhooks and from START_TRAINING, all fine
    mine = httpx.get(f"{url}/versions", params={"project": seen["project_id"]}, auth=(user, password)).json()
    assert mine["current_version"] == current and mine["versions"] == after_training
    events = {run["event"] for run in mine["runs"] if run["status"] == "ok"}
    assert events == {"ANNOTATION_CREATED", "START_TRAINING"}


def test_parse_config_agrees_with_label_studio_sdk():
    """Our stdlib parser gives what label-studio-sdk's (lxml) parse_config gives, on the same configs."""
    from railyard_ml import parse_config

    from tests.ml_backend.test_label_config import CONFIGS

    script = ("import json, sys\n"
              "from label_studio_sdk._extensions.label_studio_tools.core.label_config import parse_config\n"
              "print(json.dumps({k: parse_config(v) for k, v in json.load(sys.stdin).items()}))\n")
    run = subprocess.run([LS_PYTHON, "-c", script], input=json.dumps(CONFIGS), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = json.loads(run.stdout)
    for name, config in CONFIGS.items():
        assert json.loads(json.dumps(parse_config(config))) == theirs[name], name
