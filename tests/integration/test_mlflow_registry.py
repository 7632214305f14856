"""External model registries against a real `mlflow server` on 127.0.0.1 (MLflow 3, from .venv-mlflow
which `make test` prepares): connect, attach, browse with paging, list artifacts, upload a version."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import post, sdk_client
from tests.models import ccfraud_onnx

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# Started beside the server, not after it: its imports (~5 s, ~45 s with a cold disk cache) overlap the server's
# start (~30 s on a slow machine), and it waits for the server itself. The sklearn flavour's default requirements
# are named, so log_model writes requirements.txt without inferring it: inferring loads each model in a subprocess
# to see what it imports (7-13 s a model on 2026-12-02's slow VM, 0.7-1.9 s when named). One model is logged and
# registered under the three names (the tests page through the names and read wine-quality's artifacts only): a
# log_model (a run, the model saved, five artifacts uploaded) cost 4-7 s at load 12-25, a registration ~1 s.
REGISTER = textwrap.dedent("""
    import mlflow, mlflow.sklearn, numpy as np, sys, time, urllib.request
    from sklearn.linear_model import LogisticRegression
    # what needs no server, while it starts: the flavour's imports, the model, its requirements
    x = np.random.default_rng(0).normal(size=(200, 4)); y = (x[:, 0] > 0).astype(int)
    model, requirements = LogisticRegression().fit(x, y), mlflow.sklearn.get_default_pip_requirements()
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("the MLflow server did not answer /health in 240 s")
        time.sleep(0.3)
    mlflow.set_tracking_uri(sys.argv[1])
    with mlflow.start_run():
        logged = mlflow.sklearn.log_model(model, name="model", registered_model_name="wine-quality",
                                          serialization_format="pickle", pip_requirements=requirements)
    for name in ("housing", "churn"):
        mlflow.register_model(logged.model_uri, name)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    binary = os.environ.get("RAILYARD_TEST_MLFLOW") or str(REPO / ".venv-mlflow" / "bin" / "mlflow")
    if not Path(binary).exists():
        pytest.fail(f"no MLflow at {binary}: run the suite with `make test`, which prepares .venv-mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - the server writes to it while it runs
    # without MLflow's job execution (GenAI scorers and trace roll-ups, which nothing here asks for): on by default,
    # it started a job runner and seven huey consumers beside the server, each importing mlflow: 18-27 s of CPU by
    # 5-10 s after the server answered, against 9.6-10.6 s for the server alone (two pairs at load 20-40)
    server = subprocess.Popen([binary, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{folder}/db.sqlite",
                               "--artifacts-destination", str(folder / "artifacts")],
                              cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        python = str(Path(binary).parent / "python")
        with open(folder / "register.log", "wb") as register_log:
            register = subprocess.Popen([python, "-c", REGISTER, url], cwd=folder, stdout=register_log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while register.poll() is None:
            if server.poll() is not None or time.monotonic() > deadline:  # a dead server: no waiting it out
                register.kill()
                register.wait()
            time.sleep(0.3)
        assert register.returncode == 0 and server.poll() is None, (
            (folder / "register.log").read_text()[-2000:], (folder / "server.log").read_text()[-2000:])
        yield url
    finally:
        # killed, its uvicorn child with it (its process group): a SIGTERM's graceful stop took 3.65 s at load 8, on
        # the worker's path, for a server whose database and artifacts are thrown away with the folder
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        log.close()


@pytest.fixture
def registry(stack, alice, mlflow_url) -> str:
    response = post(stack, "models/create_registry", alice.token,
                    {"workspace_id": alice.workspace_id, "name": "sample registry", "url": mlflow_url,
                     "token": "abcdefg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "workspace_id"} and body["workspace_id"] == alice.workspace_id  # seed 001 l. 2001
    return body["id"]


def test_registry_details_and_workspaces(stack, alice, bob, registry, mlflow_url):
    details = post(stack, "models/get_registry", alice.token, {"registry_id": registry}).json()
    assert details["id"] == registry and details["url"] == mlflow_url and details["token"] == "abcdefg"
    assert details["created_at"] and details["updated_at"]
    listed = post(stack, "models/list_registries", alice.token, {"workspace_id": alice.workspace_id}).json()
    assert isinstance(listed, list) and listed[0]["id"] == registry and listed[0]["token"] != "abcdefg"
    assert post(stack, "models/get_registry", bob.token, {"registry_id": registry}).status_code == 404
    other = alice.client.post("workspaces/create", {"workspace_name": f"second-{uuid.uuid4().hex[:8]}"})
    attached = post(stack, "models/attach_registry_to_workspace", alice.token,
                    {"id": registry, "workspace_id": other["workspace_id"]}).json()
    # seed 001 l. 2029-2032 (example: registry_id) and its RETURNS (id): both name the registry
    assert attached == {"registry_id": registry, "workspace_id": other["workspace_id"], "id": registry}
    assert [r["id"] for r in post(stack, "models/list_registries", alice.token,
                                  {"workspace_id": other["workspace_id"]}).json()] == [registry]
    removed = post(stack, "models/remove_registry_from_workspace", alice.token,
                   {"registry_id": registry, "workspace_id": other["workspace_id"]}).json()
    assert removed == {"registry_id": registry, "workspace_id": other["workspace_id"], "id": registry}
    assert post(stack, "models/list_registries", alice.token, {"workspace_id": other["workspace_id"]}).json() == []


def test_list_registry_models_pages(stack, alice, registry):
    first = post(stack, "models/list_registry_models", alice.token,
                 {"registry_id": registry, "max_results": 2}).json()
    assert len(first["registered_models"]) == 2 and first["next_page_token"]
    second = post(stack, "models/list_registry_models", alice.token,
                  {"registry_id": registry, "max_results": 2, "page_token": first["next_page_token"]}).json()
    names = {m["name"] for m in first["registered_models"] + second["registered_models"]}
    assert names == {"wine-quality", "housing", "churn"} and second["next_page_token"] is None
    wine = next(m for m in first["registered_models"] + second["registered_models"] if m["name"] == "wine-quality")
    version = wine["latest_versions"][0]
    assert version["version"] == "1" and version["status"] == "READY"
    assert version["source"].startswith("models:/m-")  # MLflow 3's logged-model source


def test_artifacts_and_upload_from_registry(stack, alice, registry, mlflow_url):
    artifacts = post(stack, "models/list_registry_model_version_artifacts", alice.token,
                     {"registry_id": registry, "name": "wine-quality", "version": "1"}).json()
    by_name = {a["path"].split("/")[-1]: a for a in artifacts}
    assert {"MLmodel", "model.pkl", "requirements.txt"} <= set(by_name)
    pickle_artifact = by_name["model.pkl"]
    assert pickle_artifact["full_path"].startswith(mlflow_url) and pickle_artifact["file_size"] > 0
    assert pickle_artifact["is_dir"] is False
    response = post(stack, "models/upload_from_registry", alice.token, {
        "registry_id": registry, "name": "uploaded-model-name", "path": pickle_artifact["full_path"],
        "visibility": "public", "workspace_id": alice.workspace_id,
        "conversion": {"framework": "sklearn", "requirements": []}})
    assert response.status_code == 200, response.text
    model_id = response.json()["model_id"]
    deadline = time.monotonic() + 60
    while (version := post(stack, "models/list_versions", alice.token, {"models_pk_id": model_id}).json()[0]
           )["status"] == "converting":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert version["status"] == "ready" and version["runtime"] == "onnx", version
    assert version["file_name"] == "model.pkl"


@pytest.mark.parametrize("path", ["http://127.0.0.1:1/elsewhere/model.pkl", "file:///etc/passwd"])
def test_upload_from_a_path_outside_the_registry_is_refused(stack, alice, registry, path):
    response = post(stack, "models/upload_from_registry", alice.token, {
        "registry_id": registry, "name": "nope", "path": path, "workspace_id": alice.workspace_id,
        "conversion": {"framework": "sklearn"}})
    assert response.status_code == 400 and "full_path" in response.json()["msg"]


@pytest.mark.parametrize("url, message", [
    ("ftp://registry.example.com", "http or https"),
    ("http://169.254.169.254/", "link-local"),
    ("http://metadata.google.internal/", "metadata"),
])
def test_unsafe_registry_urls_are_refused(stack, alice, url, message):
    response = post(stack, "models/create_registry", alice.token,
                    {"workspace_id": alice.workspace_id, "name": "bad", "url": url, "token": "x"})
    assert response.status_code == 400 and message in response.json()["msg"]


@pytest.mark.parametrize("server", ["NATS_PORT", "POSTGRES_PORT", "S3_PORT", "WEED_FILER_PORT"])
def test_a_registry_at_the_platforms_own_servers_is_refused(stack, alice, server):
    """The stack runs in development mode, where loopback URLs are allowed (the MLflow server above is on
    127.0.0.1): its own NATS, PostgreSQL and S3/filer ports are refused all the same, and nothing is stored."""
    before = post(stack, "models/list_registries", alice.token, {"workspace_id": alice.workspace_id}).json()
    response = post(stack, "models/create_registry", alice.token, {
        "workspace_id": alice.workspace_id, "name": "inside", "token": "x",
        "url": f"http://localhost:{stack.env[f'RAILYARD_STACK__{server}']}/"})
    assert response.status_code == 400 and response.json()["code"] == "url_not_allowed", response.text
    assert "own servers" in response.json()["msg"]
    assert post(stack, "models/list_registries", alice.token, {"workspace_id": alice.workspace_id}).json() == before


def test_outsiders_cannot_use_a_registry(stack, bob, registry):
    for path, body in (("models/list_registry_models", {"registry_id": registry}),
                       ("models/list_registry_model_version_artifacts",
                        {"registry_id": registry, "name": "wine-quality", "version": "1"}),
                       ("models/upload_from_registry", {"registry_id": registry, "name": "x", "path": "x",
                                                        "workspace_id": bob.workspace_id,
                                                        "conversion": {"framework": "sklearn"}})):
        assert post(stack, path, bob.token, body).status_code == 404, path


def test_registry_token_is_encrypted_at_rest(stack, registry):
    import asyncio

    import asyncpg

    async def stored() -> bytes:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            return bytes(await conn.fetchval("SELECT token_encrypted FROM registry.registries WHERE id = $1",
                                             uuid.UUID(registry)))
        finally:
            await conn.close()

    assert b"abcdefg" not in asyncio.run(stored())


# The SDK's Registry.upload_model (models/upload_from_registry) answers the version its copy made, as
# Workspace.upload_model does: the registry's answer names it (`model_version` beside the seed's `model_id`). Before,
# the SDK answered the model id (an int) alone, and the HTTP answer named no version, so a script had to guess which
# version of the name was the copy (the newest may be another upload's). Against a real `mlflow server`
# (this module's fixtures: one server for the module).
def test_a_registry_copy_answers_its_own_version_when_another_upload_of_the_name_lands_meanwhile(
        stack, alice, registry):
    client, other = sdk_client(stack, alice), sdk_client(stack, alice)
    raced: list = []
    answers: list[dict] = []

    def another_upload_first(request) -> None:
        # between the copy's answer and the SDK's read of the versions: a concurrent upload of the name
        if request.url.path.endswith("/models/list_versions") and not raced:
            raced.append(other.current_workspace().upload_model("copied", ccfraud_onnx(), wait=False))

    def keep_answer(response) -> None:
        if response.request.url.path.endswith("/models/upload_from_registry"):
            response.read()
            answers.append(response.json())

    client._session.http.event_hooks["request"].append(another_upload_first)
    client._session.http.event_hooks["response"].append(keep_answer)
    try:
        (mlflow,) = [r for r in client.current_workspace().registries() if r.id == registry]
        pickle = next(a for a in mlflow.artifacts("wine-quality", "1") if a["path"].endswith("model.pkl"))
        mine = mlflow.upload_model(alice.workspace_id, "copied", pickle["full_path"], framework="sklearn")
        listed = client.get_model("copied").versions()
    finally:
        client.close()
        other.close()
    assert len(raced) == 1 and [v.framework for v in listed] == ["sklearn", "onnx"]  # the concurrent one is newest
    assert answers == [{"model_id": listed[0].model_pk, "model_version": listed[0].version}]
    # the old SDK answered the model id (an int): no version, and the newest was another upload's
    assert (mine.version, mine.framework, mine.status, mine.model_pk) == (listed[0].version, "sklearn", "ready",
                                                                         listed[0].model_pk)
