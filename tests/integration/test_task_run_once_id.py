"""tasks/run_once with a task id the caller chose (`id`, docs/orchestrations.md): asked again with that id (a caller
whose first answer was lost, as monitoring's continuous training after a timeout) it answers the task the first call
made and queues no second run; an id taken by another task (another kind, orchestration or workspace) is refused
with 409 task_id_taken. Through the HTTP API, on the real stack."""

from __future__ import annotations

import json
import uuid

import pytest
from railyard_client import cli
from railyard_client.errors import Conflict
from railyard_client.orchestrations import Orchestrations

from tests.integration.conftest import cli_env, post, sdk_client
from tests.integration.test_orchestrations import ready_orchestration, run_once, runs, wait_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_run_once_again_with_its_id_answers_that_task_and_queues_no_second_run(stack, alice, bob):
    orch = ready_orchestration(stack, alice, {"main.py": "print('once')"})
    chosen = str(uuid.uuid4())
    assert run_once(stack, alice, orch, {"n": 1}, id=chosen, name="chosen") == chosen
    assert run_once(stack, alice, orch, {"n": 2}, id=chosen, name="chosen") == chosen  # a retry: the same task
    wait_run(stack, alice, chosen, {"success"})
    assert run_once(stack, alice, orch, {"n": 3}, id=chosen, name="chosen") == chosen  # also once it has run
    assert len(runs(stack, alice, chosen)) == 1
    listed = post(stack, "task/list", alice.token, {"workspace_id": alice.workspace_id}).json()
    assert [(t["id"], t["input_data"]) for t in listed if t["id"] == chosen] == [(chosen, {"n": 1})]

    # the id taken otherwise: refused, nothing made
    scheduled = post(stack, "task/run_scheduled", alice.token, {
        "workspace_id": alice.workspace_id, "orch_id": orch["id"], "json": {}, "schedule": "0 0 * * *",
        "id": chosen})
    assert scheduled.status_code == 409 and scheduled.json()["code"] == "task_id_taken", scheduled.text
    other = ready_orchestration(stack, bob, {"main.py": "print('other')"})
    theirs = post(stack, "task/run_once", bob.token, {"workspace_id": bob.workspace_id, "orch_id": other["id"],
                                                      "json": {}, "id": chosen})
    assert theirs.status_code == 409 and theirs.json()["code"] == "task_id_taken", theirs.text
    assert post(stack, "task/list", bob.token, {"workspace_id": bob.workspace_id}).json() == []
    assert len(runs(stack, alice, chosen)) == 1


def test_the_sdk_and_the_cli_pass_the_chosen_task_id(stack, alice, tmp_path, monkeypatch, capsys):
    """The SDK (run_once / run_scheduled `task_id`) and the CLI (`railyard tasks run|schedule --id`) send the id: the
    same again answers the first task (one run); taken by the other kind: Conflict task_id_taken."""
    orch = ready_orchestration(stack, alice, {"main.py": "print('sdk')"})
    client = sdk_client(stack, alice)
    try:
        orchestrations = Orchestrations(client, alice.workspace_id)
        chosen = str(uuid.uuid4())
        assert str(orchestrations.run_once(orch["id"], {"n": 1}, task_id=chosen)["id"]) == chosen
        assert str(orchestrations.run_once(orch["id"], {"n": 2}, task_id=chosen)["id"]) == chosen
        with pytest.raises(Conflict) as taken:
            orchestrations.run_scheduled(orch["id"], "0 0 1 1 *", task_id=chosen)
        assert taken.value.code == "task_id_taken"
        yearly = str(uuid.uuid4())
        for _ in range(2):
            assert str(orchestrations.run_scheduled(orch["id"], "0 0 1 1 *", task_id=yearly)["id"]) == yearly
        orchestrations.kill(yearly)
    finally:
        client.close()
    wait_run(stack, alice, chosen, {"success"})
    assert len(runs(stack, alice, chosen)) == 1

    cli_env(stack, alice, monkeypatch, tmp_path / "config")
    by_cli = str(uuid.uuid4())
    for _ in range(2):
        capsys.readouterr()
        assert cli.main(["tasks", "run", orch["id"], "--id", by_cli, "--json"]) == 0
        assert str(json.loads(capsys.readouterr().out)["id"]) == by_cli
    wait_run(stack, alice, by_cli, {"success"})
    assert len(runs(stack, alice, by_cli)) == 1
    scheduled = str(uuid.uuid4())
    for _ in range(2):
        capsys.readouterr()
        assert cli.main(["tasks", "schedule", orch["id"], "0 0 1 1 *", "--id", scheduled, "--json"]) == 0
        assert str(json.loads(capsys.readouterr().out)["id"]) == scheduled
    post(stack, "task/kill", alice.token, {"id": scheduled})
