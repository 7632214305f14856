"""tasks/run_once with a task id the caller chose (`id`, docs/orchestrations.md): asked again with that id (a caller
whose first answer was lost, as monitoring's continuous training after a timeout) it answers the task the first call
made and queues no second run; an id taken by another task (another kind, orchestration or workspace) is refused
with 409 task_id_taken. Through the HTTP API, on the real stack."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import post
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
