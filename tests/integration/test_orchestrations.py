"""Orchestrations, tasks and task runs over HTTP against the real stack (the seed's section 11): upload checks,
the seed's flow (a task that deploys a pipeline with the SDK, infers, undeploys), kill, timeout, what a run can
and cannot reach, workspace isolation on all ten routes, and exactly-once scheduling with two scheduler
processes and a kill -9."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import requests

from shared.objectstore import BUCKET_ORCHESTRATIONS, MinioObjectStore
from shared.sealed import sealed_request
from tests.integration.conftest import Account, make_account, post, query
from tests.integration.test_pipelines import create_pipeline, upload_model
from tests.stack import wait_serving

pytestmark = pytest.mark.timeout(300)

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (stdout|stderr) [FP] ")
REPO = Path(__file__).resolve().parents[2]


def make_zip(members: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(stack, account: Account, content: bytes, workspace_id: int | None = None,
           name: str = "orch") -> requests.Response:
    metadata = json.dumps({"workspace_id": workspace_id or account.workspace_id, "name": name})
    return requests.post(f"{stack.api}/orchestration/upload", headers={"Authorization": f"Bearer {account.token}"},
                         files=[("file", ("orch.zip", content, "application/octet-stream")),
                                ("metadata", ("metadata", metadata, "application/json"))], timeout=60)


def orchestrations(stack, account: Account) -> list[dict]:
    response = post(stack, "orchestration/list", account.token, {"workspace_id": account.workspace_id})
    assert response.status_code == 200, response.text
    return response.json()


def _polled(response: httpx.Response):
    """A read's answer for a loop waiting for a state, None for a read the task scheduler did not answer in time
    (the gateway's 504 upstream_timeout, seen in these loops at load 15-57 on a scheduler busy supervising runs):
    one more look, not the test's failure. Anything else but a 200 still is; every loop keeps its own bound."""
    if response.status_code == 504 and response.json().get("code") == "upstream_timeout":
        return None
    assert response.status_code == 200, response.text
    return response.json()


def polled_orchestration(stack, account: Account, orch_id: str) -> dict | None:
    listed = _polled(post(stack, "orchestration/list", account.token, {"workspace_id": account.workspace_id}))
    return None if listed is None else next(o for o in listed if o["id"] == orch_id)


def ready_orchestration(stack, account: Account, members: dict[str, str | bytes], timeout: float = 120) -> dict:
    response = upload(stack, account, make_zip(members))
    assert response.status_code == 200, response.text
    orch_id = response.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = polled_orchestration(stack, account, orch_id)
        if found is not None and found["status"] != "packaging":
            assert found["status"] == "ready", found
            return found
        time.sleep(0.5)
    raise AssertionError(f"orchestration {orch_id} still packaging after {timeout} s")


def run_once(stack, account: Account, orch: dict, args: dict | None = None, **extra) -> str:
    response = post(stack, "task/run_once", account.token, {"workspace_id": account.workspace_id,
                                                             "orch_id": orch["id"], "json": args or {}, **extra})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def runs(stack, account: Account, task_id: str) -> list[dict]:
    response = post(stack, "task/list_task_runs", account.token, {"task_id": task_id})
    assert response.status_code == 200, response.text
    return response.json()


def polled_runs(stack, account: Account, task_id: str) -> list[dict] | None:
    return _polled(post(stack, "task/list_task_runs", account.token, {"task_id": task_id}))


def unsettled(stack, account: Account, task_id: str) -> bool:
    """Whether a run of the task is queued or running (a read not answered in time: not known yet, so True)."""
    found = polled_runs(stack, account, task_id)
    return found is None or any(r["status"] in ("queued", "running") for r in found)


def wait_run(stack, account: Account, task_id: str, status: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = polled_runs(stack, account, task_id)
        if found and found[0]["status"] in status:
            return found[0]
        time.sleep(0.3)
    raise AssertionError(f"task {task_id}: no run in {status} after {timeout} s: {runs(stack, account, task_id)}")


def logs(stack, account: Account, run_id: str, lines: int | None = None) -> list[str]:
    body = {"id": run_id} | ({"lines": lines} if lines else {})
    response = post(stack, "task/get_logs_for_run", account.token, body)
    assert response.status_code == 200, response.text
    return response.json()["logs"]


def text_of(lines: list[str]) -> list[str]:
    for line in lines:
        assert LOG_LINE.match(line), line
    return [line.split(" ", 3)[3] if line.count(" ") >= 3 else "" for line in lines]


# --- the seed's flow -------------------------------------------------------------------------------------------

FLOW_MAIN = '''
import pandas as pd
import railyard_client as railyard

client = railyard.Client()
if client.in_task():
    arguments = client.task_args()
    workspace_name = arguments["workspace_name"]
    pipeline_name = arguments["pipeline_name"]
else:
    workspace_name, pipeline_name = "bigqueryworkspace", "bigquerypipeline"
print(arguments)
print(f"Getting the workspace {workspace_name}")
workspace = client.workspace(workspace_name)
print(f"Getting the pipeline {pipeline_name}")
pipeline = workspace.pipeline(pipeline_name)
print("Deploying the pipeline.")
pipeline.deploy()
print("Performing sample inference.")
result = pipeline.infer(pd.DataFrame({"tensor": [[0.1] * 29]}))
print(result)
print(f"rows: {len(result)}")
print("Undeploying the pipeline")
pipeline.undeploy()
'''


def test_seed_flow_a_task_deploys_infers_and_undeploys(stack, alice):
    version = upload_model(stack, alice)
    create_pipeline(stack, alice, "orchpipeline", version)
    workspace_name = post(stack, "workspaces/list", alice.token, {}).json()["workspaces"]
    workspace_name = next(w["name"] for w in workspace_name if w["id"] == alice.workspace_id)
    orch = ready_orchestration(stack, alice, {"main.py": FLOW_MAIN})
    assert len(orch["sha"]) == 64 and orch["owner_id"] == alice.user_id and orch["name"] == "orch"
    task_id = run_once(stack, alice, orch, {"workspace_name": workspace_name, "pipeline_name": "orchpipeline"},
                       timeout=240)
    task = post(stack, "task/get_by_id", alice.token, {"id": task_id}).json()
    assert task["extra_env_vars"] == {"ORCH_OWNER_ID": alice.user_id, "ORCH_SHA": orch["sha"], "TASK_ID": task_id}
    assert task["auth_init"] is True and task["workspace_id"] == alice.workspace_id
    run = wait_run(stack, alice, task_id, {"success", "failure"}, timeout=240)
    lines = logs(stack, alice, run["run_id"])
    texts = text_of(lines)
    assert run["status"] == "success", (run, texts[-30:])
    assert texts[0] == str({"workspace_name": workspace_name, "pipeline_name": "orchpipeline"})  # in json's order
    for expected in ("Getting the workspace", "Deploying the pipeline.", "Performing sample inference.",
                     "rows: 1", "Undeploying the pipeline"):
        assert any(t.startswith(expected) for t in texts), (expected, texts)
    assert all(" stdout F " in line for line in lines[:3])
    assert text_of(logs(stack, alice, run["run_id"], lines=2)) == texts[-2:]
    listed = post(stack, "task/list", alice.token, {"workspace_id": alice.workspace_id}).json()
    mine = next(t for t in listed if t["id"] == task_id)
    assert mine["last_runs"][0]["run_id"] == run["run_id"] and mine["last_runs"][0]["status"] == "success"
    assert post(stack, "task/get_tasks_by_orch_sha", alice.token, {"sha": orch["sha"]}).json()["ids"] == [task_id]
    # a one-shot task whose run ended: seed 001 says it "does not need to be killed", not that it cannot be; its kill
    # answers the record, killed, its run as it was (decided in session 41, docs/orchestrations.md "Kill")
    killed = post(stack, "task/kill", alice.token, {"id": task_id})
    assert killed.status_code == 200, killed.text
    assert (killed.json()["status"], killed.json()["killed"]) == ("killed", True)
    assert [(r["run_id"], r["status"]) for r in killed.json()["last_runs"]] == [(run["run_id"], "success")]
    pipelines = post(stack, "pipelines/list", alice.token, {"workspace_id": alice.workspace_id}).json()["pipelines"]
    assert not next(p for p in pipelines if p["name"] == "orchpipeline").get("deployment")
    # the run's events (events.task_run.started/succeeded) reached the lineage service: a card from the orchestration
    deadline = time.monotonic() + 20
    while True:
        graph = post(stack, "workflow/graph", alice.token, {"workspace_id": alice.workspace_id}).json()
        cards = {(n["kind"], n["ref"]): n for n in graph["nodes"]}
        card = cards.get(("task_run", run["run_id"]))
        if card and card["data"].get("status") == "success" and ("orchestration", orch["id"]) in cards:
            break
        assert time.monotonic() < deadline, graph
        time.sleep(0.5)


# --- upload checks ---------------------------------------------------------------------------------------------

def staged_keys(stack) -> list[str]:
    async def listing() -> list[str]:
        store = MinioObjectStore(stack.settings().s3)
        return [key for key, _ in await store.list_keys(BUCKET_ORCHESTRATIONS, "")]
    return asyncio.run(listing())


BAD_ZIPS = {
    "no main.py": {"run.py": "print(1)"},
    "more than one requirements.txt": {"main.py": "", "requirements.txt": "", "sub/requirements.txt": ""},
    "escapes the archive": {"main.py": "", "../../etc/evil.py": "x"},
    "absolute path": {"main.py": "", "/etc/evil.py": "x"},
    "compressed more than": {"main.py": "", "bomb.bin": b"\0" * (30 * 1024 * 1024)},
}
BAD_REQUIREMENTS = ["--index-url https://evil.example/simple", "--extra-index-url https://evil.example/simple",
                    "-e git+https://github.com/x/y.git#egg=y", "git+https://github.com/x/y.git",
                    "https://evil.example/pkg-1.0-py3-none-any.whl", "./vendored/pkg", "/opt/pkg"]


def test_bad_zips_and_requirements_are_refused_and_nothing_is_stored(stack, alice):
    before = set(staged_keys(stack))
    for rule, members in BAD_ZIPS.items():
        response = upload(stack, alice, make_zip(members))
        assert response.status_code == 400, (rule, response.text)
        assert response.json()["code"] == "invalid_orchestration" and rule in response.json()["msg"], response.text
    symlinked = io.BytesIO()
    with zipfile.ZipFile(symlinked, "w") as archive:
        archive.writestr("main.py", "")
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777) << 16
        archive.writestr(info, "/etc/passwd")
    response = upload(stack, alice, symlinked.getvalue())
    assert response.status_code == 400 and "symbolic link" in response.json()["msg"]
    for line in BAD_REQUIREMENTS:
        response = upload(stack, alice, make_zip({"main.py": "", "requirements.txt": f"httpx\n{line}\n"}))
        assert response.status_code == 400, (line, response.text)
        assert response.json()["code"] == "invalid_requirements" and "line 2" in response.json()["msg"]
    response = upload(stack, alice, b"not a zip at all")
    assert response.status_code == 400 and "not a zip" in response.json()["msg"]
    response = requests.post(f"{stack.api}/orchestration/upload", headers={"Authorization": f"Bearer {alice.token}"},
                             files=[("file", ("orch.zip", make_zip({"main.py": ""})))], timeout=30)
    assert response.status_code == 400 and "metadata" in response.json()["msg"]
    assert orchestrations(stack, alice) == []
    assert set(staged_keys(stack)) == before


def test_task_requests_are_checked(stack, alice):
    orch = ready_orchestration(stack, alice, {"main.py": "print('hi')"})
    base = {"workspace_id": alice.workspace_id, "orch_id": orch["id"], "json": {}}
    for schedule in ("* * * *", "61 * * * *", "every minute", "* * 32 * *", "0 0 31 2 *"):  # 31 Feb: was a 500
        response = post(stack, "task/run_scheduled", alice.token, base | {"schedule": schedule})
        assert response.status_code == 400 and response.json()["code"] == "invalid_schedule", response.text
    response = post(stack, "task/run_once", alice.token, base | {"timeout": 10**9})
    assert response.status_code == 400
    response = post(stack, "task/run_once", alice.token, base | {"orch_id": "00000000-0000-0000-0000-000000000000"})
    assert response.status_code == 404
    every = base | {"schedule": "*/5 * * * *"}
    for bad, field in (({"concurrency_policy": "sometimes"}, "concurrency_policy"), ({"max_queued": 0}, "max_queued"),
                       ({"concurrency_policy": "forbid", "max_queued": 2}, "max_queued"),
                       ({"max_queued": True}, "max_queued"), ({"max_queued": "5"}, "max_queued"),
                       ({"concurrency_policy": "allow"}, "concurrency_policy")):
        if bad == {"concurrency_policy": "allow"}:  # run_once takes no policy
            response = post(stack, "task/run_once", alice.token, base | bad)
        else:
            response = post(stack, "task/run_scheduled", alice.token, every | bad)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", response.text
        assert field in response.json()["msg"], response.text
    assert post(stack, "task/list", alice.token, {"workspace_id": alice.workspace_id}).json() == []
    # given, a policy is answered in the task record (in the CronJob's spelling too); left out, neither field is
    forbid = post(stack, "task/run_scheduled", alice.token, every | {"concurrency_policy": "Forbid"}).json()["id"]
    plain = post(stack, "task/run_scheduled", alice.token, every).json()["id"]
    try:
        record = post(stack, "task/get_by_id", alice.token, {"id": forbid}).json()
        assert record["concurrency_policy"] == "forbid" and "max_queued" not in record, record
        record = post(stack, "task/get_by_id", alice.token, {"id": plain}).json()
        assert "concurrency_policy" not in record and "max_queued" not in record, record
    finally:
        for task in (forbid, plain):
            post(stack, "task/kill", alice.token, {"id": task})


def test_requirements_are_installed_once_into_an_environment_on_the_base(stack, alice):
    members = {"job/main.py": "import sys, httpx, railyard_client\nprint(sys.prefix)\nprint(httpx.__name__)\n",
               "job/helper.txt": "x", "requirements.txt": "httpx\n# already in the base environment\n"}
    first = ready_orchestration(stack, alice, members)
    second = ready_orchestration(stack, alice, members | {"job/other.txt": "y"})
    assert first["sha"] != second["sha"]
    prefixes = []
    for orch in (first, second):
        run = wait_run(stack, alice, run_once(stack, alice, orch), {"success", "failure"})
        texts = text_of(logs(stack, alice, run["run_id"]))
        assert run["status"] == "success", texts
        assert "/envs/" in texts[0] and texts[1] == "httpx"
        prefixes.append(texts[0])
    assert prefixes[0] == prefixes[1]  # one environment for one requirements file
    # a requirement nobody can install: packaging fails with the installer's reason, and tasks are refused
    response = upload(stack, alice, make_zip({"main.py": "", "requirements.txt": "railyard-no-such-package==0.0.1\n"}))
    orch_id = response.json()["id"]
    deadline = time.monotonic() + 120
    while (found := polled_orchestration(stack, alice, orch_id)) is None or found["status"] == "packaging":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert found["status"] == "failed" and "railyard-no-such-package" in found["reason"], found
    response = post(stack, "task/run_once", alice.token, {"workspace_id": alice.workspace_id, "orch_id": orch_id})
    assert response.status_code == 409 and response.json()["code"] == "orchestration_not_ready", response.text


# --- kill, timeout, exit codes ---------------------------------------------------------------------------------

SLEEPER = "import time\nprint('started', flush=True)\nfor i in range(600):\n    time.sleep(0.1)\n"


def test_kill_stops_a_running_run_and_a_schedule(stack, alice):
    orch = ready_orchestration(stack, alice, {"main.py": SLEEPER})
    task_id = run_once(stack, alice, orch)
    run = wait_run(stack, alice, task_id, {"running"})
    deadline = time.monotonic() + 30
    while "started" not in text_of(logs(stack, alice, run["run_id"])):  # logs are readable while it runs
        assert time.monotonic() < deadline
        time.sleep(0.3)
    killed = post(stack, "task/kill", alice.token, {"id": task_id})
    assert killed.status_code == 200 and killed.json()["killed"] is True
    run = wait_run(stack, alice, task_id, {"failure"}, timeout=20)
    assert "killed" in run["reason"]
    assert post(stack, "task/get_by_id", alice.token, {"id": task_id}).json()["status"] == "killed"
    scheduled = post(stack, "task/run_scheduled", alice.token, {
        "workspace_id": alice.workspace_id, "orch_id": orch["id"], "json": {}, "schedule": "* * * * * */1"})
    assert scheduled.status_code == 200, scheduled.text
    wait_run(stack, alice, scheduled.json()["id"], {"running", "success", "failure"})
    assert post(stack, "task/kill", alice.token, {"id": scheduled.json()["id"]}).status_code == 200
    # the kill's transaction fails the queued runs and flags the running ones, locking the task against a pass that
    # fires a point (store.kill_task, due_tasks): once it answered no run can be made, so the runs are looked at as
    # soon as every one has ended (it was a 3-s sleep), then again 3 s (three points of the schedule) later
    deadline = time.monotonic() + 30
    while unsettled(stack, alice, scheduled.json()["id"]):
        assert time.monotonic() < deadline, runs(stack, alice, scheduled.json()["id"])
        time.sleep(0.2)
    settled = runs(stack, alice, scheduled.json()["id"])
    time.sleep(3)
    assert runs(stack, alice, scheduled.json()["id"]) == settled  # nothing fires after the kill
    assert all(r["status"] == "failure" for r in settled)


def test_timeout_and_exit_status_fail_the_run(stack, alice):
    orch = ready_orchestration(stack, alice, {"main.py": SLEEPER})
    run = wait_run(stack, alice, run_once(stack, alice, orch, timeout=2), {"success", "failure"}, timeout=60)
    assert run["status"] == "failure" and "timed out after 2 s" in run["reason"], run
    failing = ready_orchestration(stack, alice, {"main.py": "import sys\nprint('bad', file=sys.stderr)\nsys.exit(3)"})
    run = wait_run(stack, alice, run_once(stack, alice, failing), {"success", "failure"})
    assert run["status"] == "failure" and run["exit_code"] == 3, run
    assert text_of(logs(stack, alice, run["run_id"])) == ["bad"]
    assert " stderr F bad" in logs(stack, alice, run["run_id"])[0]


def test_a_run_writing_past_its_disk_quota_fails_with_that_reason_and_the_next_run_works(stack, alice):
    """Files of 32 MiB (each far under a run's 1 GiB file size limit) until 2 GB: the sandbox's disk quota
    (128 MiB in the test stack) stops the run, and its reason says which quota and how large."""
    filler = ("import os\nblock = b'x' * (1 << 20)\nfor n in range(64):\n    with open(f'filler-{n}', 'wb') as f:\n"
              "        for _ in range(32):\n            f.write(block)\n    print('wrote', n, flush=True)\n"
              "print('all written')\n")
    orch = ready_orchestration(stack, alice, {"main.py": filler})
    run = wait_run(stack, alice, run_once(stack, alice, orch), {"success", "failure"}, timeout=60)
    assert run["status"] == "failure", run
    assert run["reason"].startswith("the sandbox's disk quota of 128 MiB was exceeded"), run
    lines = text_of(logs(stack, alice, run["run_id"]))
    assert "all written" not in lines and any("disk quota exceeded" in line for line in lines), lines
    fine = ready_orchestration(stack, alice, {"main.py": "print('fine')"})
    run = wait_run(stack, alice, run_once(stack, alice, fine), {"success", "failure"}, timeout=60)
    assert run["status"] == "success", run


# --- what a run reaches ----------------------------------------------------------------------------------------

PROBE = '''
import json, os, socket, sys, urllib.request
import railyard_client as railyard
args = railyard.task_args()
def tcp(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return "reached"
    except OSError:
        return "blocked"
def readable(path):
    try:
        open(path, "rb").read(10)
        return "read"
    except OSError:
        return "unreadable"
result = {name: tcp(port) for name, port in args["ports"].items()}
result["secrets"] = readable(args["secrets"])
def environ_of(pid):
    try:
        return "DSN" if b"POSTGRES" in open(f"/proc/{pid}/environ", "rb").read() else "clean"
    except OSError:
        return "unreadable"
result["environ"] = sorted({environ_of(p) for p in os.listdir("/proc") if p.isdigit()})
result["env_keys"] = sorted(k for k in os.environ if k.startswith(("RAILYARD", "TASK", "ORCH")))
url = os.environ["RAILYARD_CLIENT_URL"]
token = os.environ["RAILYARD_CLIENT_TOKEN"]
def call(route, body, answer=False):
    request = urllib.request.Request(f"{url}/v1/api/{route}", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read()) if answer else response.status
    except urllib.error.HTTPError as exc:
        return exc.code
result["own_workspace"] = call("pipelines/list", {"workspace_id": args["own"]})
result["other_workspace"] = call("pipelines/list", {"workspace_id": args["other"]})
result["admin_route"] = call("users/invite", {"email": "x@example.com", "password": "Snugglebunnies-1"})
result["workspaces"] = [w["id"] for w in call("workspaces/list", {}, answer=True)["workspaces"]]
result["create_workspace"] = call("workspaces/create", {"workspace_name": "escaped-" + os.environ["TASK_RUN_ID"]})
print(json.dumps(result))
'''


def test_a_run_reaches_the_gateway_only_with_a_token_for_its_workspace(stack, alice):
    env = stack.env
    other = post(stack, "workspaces/create", alice.token, {"workspace_name": f"other-{alice.workspace_id}"})
    assert other.status_code == 200
    orch = ready_orchestration(stack, alice, {"main.py": PROBE})
    ports = {"nats": int(env["RAILYARD_STACK__NATS_PORT"]), "postgres": int(env["RAILYARD_STACK__POSTGRES_PORT"]),
             "s3": int(env["RAILYARD_STACK__S3_PORT"]), "gateway": int(env["RAILYARD_GATEWAY__PORT"])}
    args = {"ports": ports, "secrets": str(stack.data_dir / "secrets.json"), "own": alice.workspace_id,
            "other": other.json()["workspace_id"]}
    run = wait_run(stack, alice, run_once(stack, alice, orch, args), {"success", "failure"})
    texts = text_of(logs(stack, alice, run["run_id"]))
    assert run["status"] == "success", texts
    result = json.loads(texts[-1])
    assert result["gateway"] == "reached"
    assert result["nats"] == result["postgres"] == result["s3"] == "blocked", result
    assert result["secrets"] == "unreadable" and "DSN" not in result["environ"], result
    assert result["env_keys"] == ["ORCH_OWNER_ID", "ORCH_SHA", "RAILYARD_CLIENT_TOKEN", "RAILYARD_CLIENT_URL",
                                  "RAILYARD_CLIENT_WORKSPACE", "TASK_ARGS", "TASK_ID", "TASK_RUN_ID"]
    assert result["own_workspace"] == 200 and result["other_workspace"] == 404, result
    assert result["admin_route"] == 403
    # the token lists its own workspace only and cannot make another (docs/security.md, "Task-run tokens")
    assert result["workspaces"] == [alice.workspace_id] and result["create_workspace"] == 403, result


# --- isolation -------------------------------------------------------------------------------------------------

async def test_a_staged_zip_is_consumed_by_its_uploader_only(stack, alice, bob):
    """A staged zip's key holds its uploader's id (shared/staging.py): bob, naming alice's key on the bus, gets 403
    whichever workspace he names (his own, or alice's, which he is no member of: that failed check used to delete
    her upload) and the object stays; alice's own command then consumes it."""
    import nats

    store = MinioObjectStore(stack.settings().s3)
    key = f"staging/{alice.user_id}/{uuid.uuid4()}"
    await store.put_bytes(BUCKET_ORCHESTRATIONS, key, make_zip({"main.py": "print('staged')"}))
    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")

    async def upload_staged(account: Account, workspace_id: int) -> dict:
        command = {"workspace_id": workspace_id, "name": "staged", "file_name": "o.zip", "staged_key": key}
        reply = await sealed_request(nc, "task_scheduler.orchestrations.upload", json.dumps(command).encode(),
                                     headers={"authorization": f"Bearer {account.token}"}, timeout=60)
        return json.loads(reply.data)

    try:
        for workspace_id in (alice.workspace_id, bob.workspace_id):
            refused = await upload_staged(bob, workspace_id)
            assert not refused["ok"] and refused["status"] == 403, refused
            assert await store.exists(BUCKET_ORCHESTRATIONS, key)  # neither consumed nor deleted
        created = await upload_staged(alice, alice.workspace_id)
        assert created["ok"], created
        assert not await store.exists(BUCKET_ORCHESTRATIONS, key)
    finally:
        await nc.close()


def test_isolation_on_all_ten_routes(stack, alice, bob):
    orch = ready_orchestration(stack, alice, {"main.py": "print('alice only')"})
    task_id = run_once(stack, alice, orch)
    run = wait_run(stack, alice, task_id, {"success", "failure"})
    # bob, a member of his own workspace only, sees none of it and can do nothing with it
    response = upload(stack, bob, make_zip({"main.py": ""}), workspace_id=alice.workspace_id)
    assert response.status_code == 404
    assert post(stack, "orchestration/list", bob.token, {"workspace_id": alice.workspace_id}).status_code == 404
    for route, body in [
        ("task/run_once", {"workspace_id": alice.workspace_id, "orch_id": orch["id"]}),
        ("task/run_once", {"workspace_id": bob.workspace_id, "orch_id": orch["id"]}),
        ("task/run_scheduled", {"workspace_id": bob.workspace_id, "orch_id": orch["id"], "schedule": "* * * * *"}),
        ("task/get_by_id", {"id": task_id}),
        ("task/list", {"workspace_id": alice.workspace_id}),
        ("task/kill", {"id": task_id}),
        ("task/list_task_runs", {"task_id": task_id}),
        ("task/get_logs_for_run", {"id": run["run_id"]}),
    ]:
        response = post(stack, route, bob.token, body)
        assert response.status_code == 404, (route, body, response.text)
    assert post(stack, "task/get_tasks_by_orch_sha", bob.token, {"sha": orch["sha"]}).json() == {"ids": []}
    assert post(stack, "task/list", bob.token, {"workspace_id": bob.workspace_id}).json() == []
    assert post(stack, "orchestration/list", bob.token, {"workspace_id": bob.workspace_id}).json() == []
    # no token: 401 on every route
    for route in ("orchestration/upload", "orchestration/list", "task/run_once", "task/run_scheduled",
                  "task/get_by_id", "task/get_tasks_by_orch_sha", "task/list", "task/kill", "task/list_task_runs",
                  "task/get_logs_for_run"):
        assert post(stack, route, None, {}).status_code == 401, route
    # alice's task is untouched
    assert post(stack, "task/get_by_id", alice.token, {"id": task_id}).json()["killed"] is False


# --- exactly once ----------------------------------------------------------------------------------------------

def scheduler_environment(stack) -> dict[str, str]:
    """The environment the stack gave its task scheduler (its database role, S3 keys, ports)."""
    pid = stack.state()["components"]["task_scheduler"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def points_after(stack, task_id: str, moment: float, count: int, within: float = 60) -> None:
    """Until `count` schedule points of the task later than `moment` (a time.time()) have their runs: read in the
    scheduler's table, whichever scheduler answers the API meanwhile (one may be restarting)."""
    deadline = time.monotonic() + within
    while True:
        found = query(stack, "SELECT scheduled_for, status FROM task_scheduler.runs WHERE task_id = $1",
                      uuid.UUID(task_id))
        if sum(r["scheduled_for"].timestamp() > moment for r in found) >= count:
            return
        assert time.monotonic() < deadline, (count, moment, found)
        time.sleep(0.3)


def took_over(stack, task_id: str, killed: float, dead: int, alive: int, within: float = 60) -> None:
    """The scheduler process `alive` took over from `dead` (pids; a supervisor's identity is host:pid:random): the
    runs of points after `killed` were started by it, and the runs `dead` supervised are no longer running (failed as
    lost once their heartbeat was `alive`'s supervisor_lost_after old: SECOND_LOST_AFTER)."""
    deadline = time.monotonic() + within
    while True:
        found = query(stack, "SELECT scheduled_for, status, supervisor, reason, created_at, started_at, finished_at"
                             " FROM task_scheduler.runs WHERE task_id = $1 ORDER BY scheduled_for", uuid.UUID(task_id))
        orphans = [r for r in found if r["status"] == "running" and f":{dead}:" in r["supervisor"]]
        # started (a place in the workspace may wait for an orphan's loss)
        later = [r for r in found if r["scheduled_for"].timestamp() > killed and r["status"] != "queued"]
        if not orphans and later:
            break
        assert time.monotonic() < deadline, ("not failed as lost", orphans, "started after the kill", later)
        time.sleep(0.3)
    # what a failure shows: the kill's time and both pids beside every run's times (a run of a point after the kill
    # supervised by the killed process, seen once in session 30, could not be explained afterwards without them)
    seen = (f"killed at {datetime.fromtimestamp(killed, UTC).isoformat()}, dead {dead}, alive {alive}",
            [dict(r) for r in found])
    # the killed process started nothing once killed, and every run of a point after the kill is the other's
    assert all(r["started_at"].timestamp() < killed for r in found if f":{dead}:" in (r["supervisor"] or "")), seen
    assert all(f":{alive}:" in r["supervisor"] for r in later), seen
    lost = [r for r in found if f":{dead}:" in (r["supervisor"] or "") and r["status"] == "failure"]
    assert all("scheduler process supervising the run died" in r["reason"] for r in lost), seen


def missed_points(task_id: str, logs: list[Path]) -> dict[datetime, int]:
    """The points of the task a scheduler ran late, each with how many points before it it logged as missed."""
    said = re.compile(rf"task {task_id}: run queued for (\S+) \((\d+) earlier points were missed\)")
    return {datetime.fromisoformat(m.group(1)): int(m.group(2))
            for path in logs for m in said.finditer(path.read_text(errors="replace"))}


def succeeded_after(stack, task_id: str, moment: float, alive: int, within: float = 60) -> None:
    """Until a run of a point after `moment`, supervised by the scheduler process `alive`, ended in success."""
    deadline = time.monotonic() + within
    while True:
        found = query(stack, "SELECT scheduled_for, status, supervisor FROM task_scheduler.runs WHERE task_id = $1",
                      uuid.UUID(task_id))
        if any(r["scheduled_for"].timestamp() > moment and r["status"] == "success"
               and f":{alive}:" in r["supervisor"] for r in found):
            return
        assert time.monotonic() < deadline, ("no run after the kill succeeded", moment, found)
        time.sleep(0.3)


# The second scheduler takes a run as lost 6 s after its last heartbeat, not the stack's 10 s: its takeover then comes
# within the three points after the kill (6 s) instead of ~4.4 s after them (measured at load 10). Its own beats every
# 1 s, so its own claim keeps the default's slack to the bound (5 s); the killed scheduler's beat every 2 s.
SECOND_LOST_AFTER, SECOND_HEARTBEAT = "6", "1"


def test_a_schedule_fires_once_per_point_with_two_schedulers_and_a_kill(stack, admin, tmp_path):
    account = make_account(stack, admin, "sched")
    orch = ready_orchestration(stack, account, {"main.py": "print('tick')"})
    log = tmp_path / "second_scheduler.log"
    with open(log, "wb") as handle:
        second = subprocess.Popen([sys.executable, "-m", "services.task_scheduler"], cwd=REPO,
                                  env=scheduler_environment(stack) | {
                                      "RAILYARD_TASKS__SUPERVISOR_LOST_AFTER": SECOND_LOST_AFTER,
                                      "RAILYARD_TASKS__HEARTBEAT_INTERVAL": SECOND_HEARTBEAT},
                                  stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_serving(second, log, "the second task scheduler")  # both schedulers serving
        response = post(stack, "task/run_scheduled", account.token, {
            "workspace_id": account.workspace_id, "orch_id": orch["id"], "json": {}, "schedule": "* * * * * */2"})
        assert response.status_code == 200, response.text
        task_id = response.json()["id"]
        created = time.time()
        points_after(stack, task_id, created, 3)  # three points with both schedulers (was 7 s)
        first = stack.state()["components"]["task_scheduler"]["pid"]
        # the stack's supervisor would restart the killed scheduler within a second, and that one would take over
        # (fire the points, fail the lost runs) as well: held meanwhile, so what follows is the second one's alone.
        # Before, the test passed with both schedulers killed.
        os.kill(stack.process.pid, signal.SIGSTOP)
        try:
            os.kill(first, signal.SIGKILL)
            killed = time.time()
            points_after(stack, task_id, killed, 3)  # three more from the kill on (was 9 s)
            took_over(stack, task_id, killed, dead=first, alive=second.pid)
            succeeded_after(stack, task_id, killed, alive=second.pid)  # and its runs still run to their end
        finally:
            os.kill(stack.process.pid, signal.SIGCONT)  # it restarts the killed scheduler
        # the runs ended before the task's kill (the kill fails what is queued or running at that moment: how many
        # that is depends on how long runs take on the machine, 7 of 9 at load 15-20)
        ended = {r["scheduled_for"] for r in query(
            stack, "SELECT scheduled_for FROM task_scheduler.runs WHERE task_id = $1 AND status IN ('success', "
                   "'failure')", uuid.UUID(task_id))}
        killed_at = time.time()
        assert post(stack, "task/kill", account.token, {"id": task_id}).status_code == 200
        deadline = time.monotonic() + 30
        while unsettled(stack, account, task_id):
            assert time.monotonic() < deadline, runs(stack, account, task_id)
            time.sleep(0.5)
    finally:
        second.kill()
        second.wait()
    # the stack's own scheduler, restarted after its kill -9, answers the reads once it serves again: on a loaded
    # machine its start can outlast the wait above (a 503 "task_scheduler is not running" seen at load 13, or a 504
    # while it starts). Waited for here, not read from the second scheduler before its kill: the next tests need the
    # stack's own one (they failed on its 503 when this test ended first, 6020483a)
    deadline = time.monotonic() + 60
    while (response := post(stack, "task/list_task_runs", account.token,
                            {"task_id": task_id})).status_code in (503, 504):
        assert time.monotonic() < deadline, response.text
        time.sleep(0.5)
    found = runs(stack, account, task_id)
    points = Counter(r["scheduled_for"] for r in found)
    assert all(n == 1 for n in points.values()), points
    moments = sorted(datetime.fromisoformat(p) for p in points)
    # every 2-second point from the first to the last has its run (the other scheduler covered the kill), but for
    # points a scheduler's pass came too late for, which it says: fire_once runs the latest of the points passed and
    # logs how many before it it missed (a pass over 2 s late at load 57). Never across the kill: there a gap is the
    # takeover coming late, whatever was logged
    said = missed_points(task_id, [log, Path(stack.state()["components"]["task_scheduler"]["log"])])
    missed = 0
    for before, point in zip(moments, moments[1:], strict=False):
        gap = round((point - before) / timedelta(seconds=2)) - 1
        if gap:
            assert said.get(point) == gap and not before.timestamp() < killed < point.timestamp(), \
                (before, point, said, killed)
            missed += gap
    assert len(moments) + missed == (moments[-1] - moments[0]) / timedelta(seconds=2) + 1, moments
    assert len(moments) + missed >= (killed_at - created) / 2 - 3
    lost = [r for r in found if r["status"] == "failure"]
    assert all("scheduler process supervising the run died" in r["reason"] or "killed" in r["reason"]
               for r in lost), [(r, logs(stack, account, r["run_id"])[-5:]) for r in lost]
    # each run's end accounted for: lost only if the killed scheduler supervised it, killed only if it had not
    # ended before the task's kill; every other run succeeded (was: at least all but 3, whatever the machine's load)
    for row in query(stack, "SELECT scheduled_for, status, supervisor, reason FROM task_scheduler.runs"
                            " WHERE task_id = $1", uuid.UUID(task_id)):
        if row["status"] == "failure" and "supervising the run died" in (row["reason"] or ""):
            assert f":{first}:" in row["supervisor"], row
        elif row["scheduled_for"] in ended:
            assert row["status"] == "success", row
        else:
            assert row["status"] == "success" or "killed" in (row["reason"] or ""), row


def test_a_workspace_runs_two_at_a_time_and_the_rest_wait_in_order(stack, admin):
    account = make_account(stack, admin, "queue")
    # each run 2 s long (3 s until session 41): two wait behind two running for that long, and the first two's claims
    # (each as its run_once is answered) fall well inside each other's span, so they overlap and keep their order
    orch = ready_orchestration(stack, account, {"main.py": "import time\nprint('begin')\ntime.sleep(2)\n"})
    tasks = [run_once(stack, account, orch) for _ in range(4)]
    seen_queued = False
    deadline = time.monotonic() + 120
    while True:
        read = [polled_runs(stack, account, t) for t in tasks]
        if None in read:  # a read not answered in time: look again
            assert time.monotonic() < deadline, read
            continue
        states = [(found or [{"status": "queued"}])[0]["status"] for found in read]
        seen_queued |= "queued" in states and "running" in states
        if all(s in ("success", "failure") for s in states):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    assert seen_queued, states
    finished = [runs(stack, account, t)[0] for t in tasks]
    assert all(r["status"] == "success" for r in finished), finished
    # How many ran at once is counted from the platform's own records, each run's claim (started_at: the claim's
    # statement, after its count of the workspace's running runs) to its end (finished_at: its end's transaction,
    # which commits after it), not from each run's first line: a run's sandbox starts in 0.25-0.30 s quiet, more at
    # load, so a missing limit was caught only while the third run's first line came before the first two's ends
    # (within their 2 s). Without the limit each run is claimed as its run_once is answered, 2 s before either of the
    # first two ends, however long the sandboxes take to start
    recorded = {r["task_id"]: (r["started_at"], r["finished_at"]) for r in query(
        stack, "SELECT task_id, started_at, finished_at FROM task_scheduler.runs WHERE task_id = ANY($1::uuid[])",
        [uuid.UUID(t) for t in tasks])}
    spans = [recorded[uuid.UUID(t)] for t in tasks]
    # at each run's claim, the runs claimed and not ended (itself included)
    at_once = [sum(b <= claimed < e for b, e in spans) for claimed, _ in spans]
    assert max(at_once) == 2, (at_once, spans)
    assert spans[2][0] > min(spans[0][1], spans[1][1]), spans  # the third claimed once one of the first two ended
    assert max(b for b, _ in spans[:2]) < min(b for b, _ in spans[2:]), spans  # FIFO


def test_points_missed_while_no_scheduler_ran_fire_once_late(stack, admin):
    account = make_account(stack, admin, "missed")
    orch = ready_orchestration(stack, account, {"main.py": "print('tick')"})
    response = post(stack, "task/run_scheduled", account.token, {
        "workspace_id": account.workspace_id, "orch_id": orch["id"], "schedule": "* * * * * */2"})
    task_id = response.json()["id"]
    wait_run(stack, account, task_id, {"running", "success"})
    pid = stack.state()["components"]["task_scheduler"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # the only scheduler stops: points pass with nobody to fire them
    try:
        time.sleep(5)  # two or three points of the schedule pass (every 2 s)
    finally:
        os.kill(pid, signal.SIGCONT)
    points_after(stack, task_id, time.time(), 1)  # the late one has fired, and a point after it
    post(stack, "task/kill", account.token, {"id": task_id})
    deadline = time.monotonic() + 30
    while unsettled(stack, account, task_id):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    moments = sorted(datetime.fromisoformat(r["scheduled_for"]) for r in runs(stack, account, task_id))
    gaps = [(b - a).total_seconds() for a, b in zip(moments, moments[1:], strict=False)]
    # the 5-second stop left one gap: the points inside it are missed, the latest of them fired once, late (at
    # least two points fell inside it: the gap is 4 s or more, the point before the latest one never fired)
    assert len([g for g in gaps if g > 2]) == 1 and max(gaps) >= 4, gaps
    assert all(g % 2 == 0 for g in gaps), gaps
