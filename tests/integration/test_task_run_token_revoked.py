"""A task run's token stops working when the run ends (services/auth/task_tokens.py; docs/auth.md, "Task-run tokens"):
the run's end (events.task_run.succeeded / failed, from the task scheduler's outbox) is read by auth, which revokes the
run's session (its id, the token's session_state) with events.auth.tokens_revoked; the gateway refuses the token (401)
from then on. Before, the token stayed valid until it expired, the run's timeout + 60 s after its start (the audit of
session 28 still listed workspaces with it 16 minutes after the run ended).

On the real stack: a run prints its own token (RAILYARD_CLIENT_TOKEN) and what the gateway answered it; the test reads
the token from the run's log once the run has ended, succeeded or failed, and asks the gateway with it."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.integration.conftest import post
from tests.integration.test_orchestrations import logs, ready_orchestration, run_once, text_of, wait_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REVOKED_WITHIN = 15.0  # seconds: the end's event through two outboxes and the stream take well under one normally

TELLS_ITS_TOKEN = '''
import json, os, sys, urllib.request
token = os.environ["RAILYARD_CLIENT_TOKEN"]
request = urllib.request.Request(os.environ["RAILYARD_CLIENT_URL"] + "/v1/api/workspaces/list", data=b"{}",
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=10) as response:
    status = response.status
print(json.dumps({"token": token, "status": status}))
sys.exit(int(json.loads(os.environ["TASK_ARGS"]).get("exit", 0)))
'''


def token_of(stack, account, run: dict) -> str:
    told = json.loads(text_of(logs(stack, account, run["run_id"]))[-1])
    assert told["status"] == 200, told  # the token worked while the run ran
    return told["token"]


def refused_within(stack, token: str, within: float) -> dict:
    """The gateway's 401 to `token` (workspaces/list), asked every 0.2 s; fails after `within` s of 200s."""
    deadline = time.monotonic() + within
    while True:
        response = post(stack, "workspaces/list", token, {})
        if response.status_code == 401:
            return response.json()
        assert response.status_code == 200, response.text
        assert time.monotonic() < deadline, f"the ended run's token still answered 200 after {within} s"
        time.sleep(0.2)


@pytest.mark.parametrize("exit_code", [0, 3], ids=["succeeded", "failed"])
def test_an_ended_runs_token_is_refused(stack, alice, exit_code):
    orch = ready_orchestration(stack, alice, {"main.py": TELLS_ITS_TOKEN})
    run = wait_run(stack, alice, run_once(stack, alice, orch, {"exit": exit_code}), {"success", "failure"})
    assert run["status"] == ("success" if exit_code == 0 else "failure"), run
    token = token_of(stack, alice, run)
    refused = refused_within(stack, token, REVOKED_WITHIN)  # was: 200 until the token expired (timeout + 60 s)
    assert "revoked" in json.dumps(refused), refused
    # the owner's own token is untouched: only the run's session is revoked
    assert post(stack, "workspaces/list", alice.token, {}).status_code == 200


def test_a_token_for_a_run_that_ended_is_not_issued(stack, alice):
    """A run's end read by auth before its token was asked for (a supervisor paused while its run was failed as
    lost): auth.token.issue_task refuses it, and a run that has a token keeps it refused after another is asked for."""
    import asyncio

    from faststream.nats import NatsBroker

    from shared import subjects
    from shared.bus import request
    from shared.errors import Unauthorized
    from shared.messages.tasks import IssueTaskToken, TaskTokenIssued

    orch = ready_orchestration(stack, alice, {"main.py": TELLS_ITS_TOKEN})
    run = wait_run(stack, alice, run_once(stack, alice, orch), {"success", "failure"})
    token = token_of(stack, alice, run)
    refused_within(stack, token, REVOKED_WITHIN)

    async def mint(run_id: str) -> str:
        broker = NatsBroker(stack.settings().nats.url)
        await broker.connect()
        try:
            issued = await request(broker, subjects.AUTH_TOKEN_ISSUE_TASK, IssueTaskToken(
                user_id=alice.user_id, workspace_id=alice.workspace_id, ttl=300, task_id=str(uuid.uuid4()),
                run_id=run_id), timeout=10, reply_model=TaskTokenIssued)
        finally:
            await broker.stop()
        return issued.access_token

    with pytest.raises(Unauthorized, match="has ended"):
        asyncio.run(mint(run["run_id"]))
    fresh = asyncio.run(mint(str(uuid.uuid4())))  # another run's: works
    assert post(stack, "workspaces/list", fresh, {}).status_code == 200
