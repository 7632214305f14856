"""A task run's token mint (auth.token.issue_task, services/auth/app.py `task_token`) with auth's database down. It
was a 500 'internal error' (bus.run_command's answer to an unhandled error), and since bb143eb3 the task scheduler
fails a run at once on a 500 (a fault in auth: scheduler.passing), so a PostgreSQL restart or failover under auth
failed every run being started then. Now it is Unavailable (503), which the scheduler asks again for
MINT_RETRY_SECONDS."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import asyncpg
import pytest

from services.auth import app as auth_app
from services.task_scheduler import scheduler
from shared.errors import Unavailable
from shared.messages.tasks import IssueTaskToken

MINT = IssueTaskToken(user_id=str(uuid.uuid4()), workspace_id=3, ttl=120, task_id=str(uuid.uuid4()),
                      run_id=str(uuid.uuid4()))


class Pool:
    """auth's pool, every query failing with `fails`."""

    def __init__(self, fails: BaseException) -> None:
        self.fails = fails

    async def fetchrow(self, *_: object) -> None:
        raise self.fails

    fetchval = fetch = execute = fetchrow


@pytest.mark.parametrize("fails", [ConnectionRefusedError(111, "Connect call failed"), TimeoutError(),
                                   asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
                                   asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")])
async def test_a_mint_with_auths_database_down_is_a_503_the_task_scheduler_asks_again(fails):
    with pytest.raises(Unavailable, match="auth's database did not answer") as raised:
        await auth_app.task_token(SimpleNamespace(pool=Pool(fails)), MINT)  # before: the error itself, a 500
    assert raised.value.status == 503 and scheduler.passing(raised.value)


async def test_a_fault_of_auths_own_is_not_taken_for_its_database_down():
    """A bug stays a 500, which the scheduler does not ask again (bb143eb3)."""
    with pytest.raises(KeyError):
        await auth_app.task_token(SimpleNamespace(pool=Pool(KeyError("enabled"))), MINT)
