"""Orchestrations from the SDK (`railyard_client.Orchestrations`) and the `railyard orchestrations|tasks`
commands, through the real gateway and task scheduler: upload, run once with arguments, wait, read the logs,
schedule and kill; failures give typed errors and one clear line."""

from __future__ import annotations

import json
import time

import pytest
from railyard_client import Client, NotFound, OrchestrationFailed, Orchestrations

from tests.integration.conftest import PASSWORD
from tests.integration.test_cli import Cli
from tests.integration.test_orchestrations import LOG_LINE, make_zip, text_of

pytestmark = pytest.mark.integration

MAIN = "from railyard_client import in_task, task_args\nprint('in task', in_task(), task_args()['greeting'])\n"


def sdk(stack, account) -> Orchestrations:
    client = Client(stack.base_url, username=account.email, password=PASSWORD,
                    client_id=stack.secrets()["client_id"], client_secret=stack.secrets()["client_secret"])
    return Orchestrations(client, account.workspace_id)


def test_sdk_uploads_runs_waits_and_reads_logs(stack, alice, bob, tmp_path):
    orchestrations = sdk(stack, alice)
    path = tmp_path / "hello.zip"
    path.write_bytes(make_zip({"main.py": MAIN}))
    orch = orchestrations.upload(path, name="hello", progress=False)
    assert orch["status"] == "ready" and orch["name"] == "hello"
    assert [o["id"] for o in orchestrations.list()] == [orch["id"]]

    task = orchestrations.run_once(orch["id"], {"greeting": "hi there"}, timeout=60)
    run = orchestrations.wait_for_run(task["id"], timeout=120)
    assert run["status"] == "success", run
    lines = orchestrations.logs(run["run_id"])
    assert all(LOG_LINE.match(line) for line in lines)
    assert "in task True hi there" in text_of(lines)
    assert orchestrations.logs(run["run_id"], lines=1) == lines[-1:]
    answer = orchestrations.run_logs(run["run_id"])  # the run's task and status come with its lines
    assert (answer["logs"], answer["task"], answer["status"]) == (lines, str(task["id"]), "success")
    assert str(task["id"]) in [str(t) for t in orchestrations.tasks_by_sha(orch["sha"])]
    assert orchestrations.task(task["id"])["last_runs"][0]["status"] == "success"

    scheduled = orchestrations.run_scheduled(orch["id"], "0 0 1 1 *", {"greeting": "yearly"})
    killed = orchestrations.kill(scheduled["id"])
    assert killed["killed"] is True

    # a requirement nothing can install: packaging fails, and the SDK says why
    broken = make_zip({"main.py": MAIN, "requirements.txt": "railyard-no-such-package-xyz==0.0.1\n"})
    with pytest.raises(OrchestrationFailed, match="railyard-no-such-package-xyz"):
        orchestrations.upload(broken, progress=False, timeout=300)
    # another workspace's task is not there for bob
    with pytest.raises(NotFound):
        sdk(stack, bob).task(task["id"])


def test_cli_uploads_runs_and_prints_logs(stack, alice, tmp_path):
    cli = Cli(tmp_path)
    cli.json("login", "--url", stack.base_url, "--username", alice.email, "--password", PASSWORD,
             "--client-secret", stack.secrets()["client_secret"])
    cli.json("workspaces", "use", str(alice.workspace_id))
    (tmp_path / "hello.zip").write_bytes(make_zip({"main.py": MAIN}))
    orch = cli.json("orchestrations", "upload", "hello.zip", "--name", "hello-cli")
    assert orch["status"] == "ready"
    assert orch["id"] in [o["id"] for o in cli.json("orchestrations", "list")]

    waited = cli.run("tasks", "run", orch["id"], "--args", json.dumps({"greeting": "from the cli"}), "--wait")
    assert waited.returncode == 0, waited.stderr.decode()
    assert "in task True from the cli" in waited.stdout.decode()
    assert ": success" in waited.stderr.decode()
    task_id = cli.json("tasks", "list")[0]["id"]
    run = cli.json("tasks", "runs", task_id)[0]
    assert run["status"] == "success"
    printed = cli.run("tasks", "logs", run["run_id"], "-n", "1").stdout.decode().splitlines()
    assert len(printed) == 1 and LOG_LINE.match(printed[0])
    followed = cli.run("tasks", "logs", run["run_id"], "--follow")  # no --task: the run's logs name it
    assert followed.returncode == 0 and "in task True from the cli" in followed.stdout.decode(), followed.stderr
    assert "not of" in cli.fails(2, "tasks", "logs", run["run_id"], "--follow", "--task",
                                 "00000000-0000-0000-0000-000000000000")

    failing = make_zip({"main.py": "raise SystemExit(3)\n"})
    (tmp_path / "fails.zip").write_bytes(failing)
    bad = cli.json("orchestrations", "upload", "fails.zip")
    started = time.monotonic()
    result = cli.run("tasks", "run", bad["id"], "--wait")
    assert result.returncode == 1 and ": failure" in result.stderr.decode(), result.stderr.decode()
    assert time.monotonic() - started < 120
    assert "--args must be a JSON object" in cli.fails(2, "tasks", "run", orch["id"], "--args", "[1]")
    assert cli.fails(2, "orchestrations", "upload", "missing.zip")
    assert cli.fails(4, "tasks", "runs", "00000000-0000-0000-0000-000000000000")
