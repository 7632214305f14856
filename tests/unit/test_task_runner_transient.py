"""What the task scheduler asks the database again for (services/task_scheduler/runner.py `transient`, used by a
run's log flush and by Scheduler._retried: a run's end, its claim check, an install's end): what every command's 503
rule says may answer if asked again (shared/data_errors.py database_retryable), and its own bounds' TimeoutError.
Before session 40 it was a tuple (TRANSIENT) of its own that took any OSError (one asyncpg did not raise: a file's)
and asyncpg's protocol violation or a role's statement_timeout for the database failing: each retried in vain (a
flush's lines held and rewritten at every flush, a run's end for END_RECORD_SECONDS) before the run went on."""

from __future__ import annotations

import asyncpg
import pytest

from services.task_scheduler import runner, scheduler
from tests.unit.test_bus_database_unavailable import asyncpg_outage


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(runner, "FLUSH_TRIES", 3)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.001)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF_MAX", 0.002)
    monkeypatch.setattr(scheduler, "END_RECORD_SECONDS", 0.2)


def failing(errors: list[BaseException]):
    """A sink (or a store step) raising `errors` in turn, then writing; the attempts it saw."""
    attempts: list[int] = []

    async def step(*_: object) -> str:
        attempts.append(1)
        if errors:
            raise errors.pop(0)
        return "written"

    return step, attempts


@pytest.mark.parametrize("kind", ["refused", "deadlock", "starting"])
async def test_what_the_database_may_answer_if_asked_again_is_retried(kind):
    error = {"refused": None, "deadlock": asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
             "starting": asyncpg.exceptions.CannotConnectNowError("the database system is starting up")}[kind] \
        or await asyncpg_outage("refused")
    sink, attempts = failing([error, error])
    writer = runner.LogWriter(sink=sink, max_bytes=1000)
    writer.add("stdout", False, "one")
    await writer.flush()
    assert len(attempts) == 3 and writer.pending == []
    step, attempts = failing([error])
    assert await scheduler.Scheduler._retried(step, "recording a run's end") == "written" and len(attempts) == 2


@pytest.mark.parametrize("error", [
    FileNotFoundError(2, "No such file or directory"),  # an OSError asyncpg did not raise: not the database's
    asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),  # a misuse
    asyncpg.exceptions.ProtocolViolationError("invalid message format"),  # asked again, the same
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),  # the role's setting
], ids=lambda exc: type(exc).__name__)
async def test_what_a_retry_meets_again_is_not_retried(error):
    sink, attempts = failing([error] * 5)
    writer = runner.LogWriter(sink=sink, max_bytes=1000)
    writer.add("stdout", False, "one")
    with pytest.raises(runner.LinesDropped, match=type(error).__name__):
        await writer.flush()
    assert len(attempts) == 1 and writer.pending == []  # before: FLUSH_TRIES attempts, the lines kept pending
    step, attempts = failing([error] * 50)
    with pytest.raises(type(error)):
        await scheduler.Scheduler._retried(step, "recording a run's end")
    assert len(attempts) == 1  # before: asked again for END_RECORD_SECONDS


async def test_a_token_mints_connection_error_is_still_asked_again():
    """The mint is a request over the bus (no file, no object storage): an OSError there is its connection's."""
    assert scheduler.passing(ConnectionResetError("reset")) and scheduler.passing(TimeoutError())
    assert not scheduler.passing(KeyError("token"))
