"""A task run's token mint (auth.token.issue_task) with auth's database down. It was a 500 'internal error'
(bus.run_command's answer to an unhandled error), and since bb143eb3 the task scheduler fails a run at once on a 500 (a
fault in auth: scheduler.passing), so a PostgreSQL restart or failover under auth failed every run being started then.
Now it is Unavailable (503), which the scheduler asks again for MINT_RETRY_SECONDS: 5d40c851 mapped it in auth's
mint alone; every command's database errors are now mapped by run_command (tests/unit/test_bus_database_unavailable.py
has the rule), which this checks on the mint's own handler."""

from __future__ import annotations

import socket
import uuid
from types import SimpleNamespace

import asyncpg
import pytest

from services.auth import handlers
from services.task_scheduler import scheduler
from shared import subjects
from shared.bus import CallContext, run_command
from shared.errors import error_from_body
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


async def mint(pool: object):
    """The mint's reply, as auth's command wrapper answers it (services/auth/app.py issue_task_token)."""

    async def issue_task_token(cmd: IssueTaskToken, ctx: CallContext):
        return await handlers.issue_task_token(SimpleNamespace(pool=pool), cmd)

    reply = await run_command(issue_task_token, IssueTaskToken, MINT.model_dump(mode="json"),
                              CallContext(subject=subjects.AUTH_TOKEN_ISSUE_TASK))
    assert not reply.ok
    return error_from_body(reply.error, reply.status)


async def test_a_mint_whose_database_refuses_the_connection_is_a_503_the_task_scheduler_asks_again():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    pool = await asyncpg.create_pool(host="127.0.0.1", port=port, user="auth", password="p", database="railyard",
                                     ssl=False, min_size=0)
    try:
        error = await mint(pool)  # asyncpg's ConnectionRefusedError
    finally:
        await pool.close()
    assert (error.status, error.code) == (503, "unavailable") and scheduler.passing(error)  # before: 500, failed
    assert error.msg.startswith("auth's database did not answer (ConnectionRefusedError)"), error.msg


@pytest.mark.parametrize("fails", [asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
                                   asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
                                   asyncpg.exceptions.AdminShutdownError("terminating connection")])
async def test_a_mint_with_auths_database_going_away_is_a_503_the_task_scheduler_asks_again(fails):
    error = await mint(Pool(fails))
    assert (error.status, error.code) == (503, "unavailable") and scheduler.passing(error)
    assert error.msg.startswith("auth's database did not answer"), error.msg


async def test_a_fault_of_auths_own_is_not_taken_for_its_database_down():
    """A bug stays a 500, which the scheduler does not ask again (bb143eb3)."""
    error = await mint(Pool(KeyError("enabled")))
    assert (error.status, error.code) == (500, "internal") and not scheduler.passing(error)
