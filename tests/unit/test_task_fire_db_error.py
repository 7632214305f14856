"""A database error for one due task's point undoes that task's writes alone (scheduler.fire_due: a savepoint per
task), the pass's other tasks fire, and the task is left out of the process's passes for a while, then tried again
(HELD_FIRST, doubling to HELD_MAX). Before, it failed the whole pass at every pass: no run of any workspace was queued,
started or beaten while the point met it. The database failing to answer (shared/data_errors.py
is_database_unavailable: the connection lost, the server shutting down or starting up, ...) stays the pass's; a
statement of one task's point over a role's statement_timeout (57014) is that task's since session 40: it failed every
pass before, as a server error."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import asyncpg
import pytest

from services.task_scheduler import store
from services.task_scheduler.scheduler import HELD_FIRST, HELD_MAX, PASS_ERROR_KEY_CHARS, PASS_ERRORS_KEPT, Scheduler

BAD, GOOD = uuid.uuid4(), uuid.uuid4()
POINT = datetime(2026, 12, 5, 14, 0, 2, tzinfo=UTC)
# 57014, PostgreSQL's words for a statement over the role's or the database's statement_timeout
STATEMENT_TIMEOUT = asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")


class Conn:
    """The pass's transaction and the tasks' savepoints: which savepoints were rolled back (an exception left them)."""

    def __init__(self) -> None:
        self.depth, self.rolled_back, self.committed = 0, 0, 0

    @contextlib.asynccontextmanager
    async def transaction(self):
        self.depth += 1
        try:
            yield
        except BaseException:
            self.rolled_back += 1
            raise
        finally:
            self.depth -= 1
        if self.depth == 0:
            self.committed += 1


def pass_with(monkeypatch, error: Exception) -> tuple[dict, Scheduler]:
    seen: dict = {"fired": [], "next": [], "held": []}

    async def due_tasks(conn, limit, held=None):
        seen["held"].append(sorted(held or []))
        return [{"id": t, "workspace_id": 3, "schedule": "* * * * * */2", "missed_run_policy": None,
                 "next_fire": POINT, "now": POINT + timedelta(milliseconds=20)} for t in (BAD, GOOD)
                if t not in (held or [])]

    async def queued_of_task(conn, task_id, workspace_id, at_most):
        return 0

    async def fire(conn, task_id, workspace_id, point):
        if task_id == BAD:
            raise error
        seen["fired"].append(task_id)
        return True

    async def set_next_fire(conn, task_id, next_fire):
        seen["next"].append(task_id)

    for name, fn in (("due_tasks", due_tasks), ("queued_of_task", queued_of_task), ("fire", fire),
                     ("set_next_fire", set_next_fire)):
        monkeypatch.setattr(store, name, fn)
    settings = SimpleNamespace(missed_run_grace=30.0, max_concurrent_runs_per_workspace=2)
    return seen, Scheduler(deps=SimpleNamespace(settings=settings), mint=None, gateway_url="")


@pytest.mark.parametrize("error", [asyncpg.exceptions.DataError("value out of range"),
                                   asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
                                   asyncpg.exceptions.UniqueViolationError("duplicate key"),
                                   # a role's statement_timeout: the same statement meets it again, the other tasks'
                                   # do not (before session 40 it failed every pass: no task fired anywhere)
                                   STATEMENT_TIMEOUT,
                                   asyncpg.exceptions.InternalServerError("could not open file"),
                                   asyncpg.exceptions.ConfigurationLimitExceededError("too many range table entries")])
async def test_a_database_error_for_one_task_leaves_the_others_firing(monkeypatch, caplog, error):
    seen, sched = pass_with(monkeypatch, error)
    conn = Conn()
    await sched.fire_due(conn)
    assert (conn.committed, conn.rolled_back) == (1, 1)  # its savepoint undone, the pass's transaction committed
    assert seen["fired"] == [GOOD] and seen["next"] == [GOOD]  # BAD's point not handled: its next_fire unchanged
    assert f"task {BAD}: its point {POINT.isoformat()} could not be handled ({type(error).__name__}" in caplog.text
    assert list(sched.held) == [BAD] and sched.held[BAD][0] == HELD_FIRST
    assert 0 < sched.held_for() <= HELD_FIRST

    # held: the next passes leave it out (and their sleep does not count its past point)
    await sched.fire_due(conn)
    assert seen["held"][-1] == [BAD] and seen["fired"] == [GOOD, GOOD]

    # its wait over, it is tried again; the same error doubles the wait, up to HELD_MAX
    waits = []
    for _ in range(8):
        sched.held[BAD] = (sched.held[BAD][0], 0.0)
        await sched.fire_due(conn)
        assert seen["held"][-1] == []  # asked for again
        waits.append(sched.held[BAD][0])
    assert waits == [min(HELD_FIRST * 2 ** n, HELD_MAX) for n in range(1, 9)]


async def test_once_it_fires_again_it_is_forgotten(monkeypatch):
    seen, sched = pass_with(monkeypatch, asyncpg.exceptions.DataError("value out of range"))
    await sched.fire_due(Conn())
    monkeypatch.setattr(store, "fire", lambda conn, task_id, workspace_id, point: _true(seen, task_id))
    sched.held[BAD] = (sched.held[BAD][0], 0.0)
    await sched.fire_due(Conn())
    assert BAD in seen["fired"] and sched.held == {} and sched.retrying == {} and sched.held_for() is None


async def test_a_task_let_go_and_not_seen_again_is_forgotten(monkeypatch):
    """A task tried again after an error that this process does not handle again (killed meanwhile, or fired by
    another process) is dropped from `retrying` HELD_MAX after it was let go: before, it stayed for the process's life,
    one entry for every such task."""
    seen, sched = pass_with(monkeypatch, asyncpg.exceptions.DataError("value out of range"))
    await sched.fire_due(Conn())
    killed = store.due_tasks

    async def due_tasks(conn, limit, held=None):  # BAD killed: no longer due
        return [t for t in await killed(conn, limit, held) if t["id"] != BAD]

    monkeypatch.setattr(store, "due_tasks", due_tasks)
    sched.held[BAD] = (sched.held[BAD][0], 0.0)
    await sched.fire_due(Conn())
    assert sched.held == {} and list(sched.retrying) == [BAD]  # let go, its wait kept for an error soon after
    loop = asyncio.get_running_loop()
    later = loop.time() + HELD_MAX + 1
    with monkeypatch.context() as m:  # HELD_MAX later on the loop's clock, BAD not handled meanwhile
        m.setattr(loop, "time", lambda: later)
        await sched.fire_due(Conn())
    assert sched.retrying == {} and sched.held_for() is None


async def _true(seen: dict, task_id: uuid.UUID) -> bool:
    seen["fired"].append(task_id)
    return True


@pytest.mark.parametrize("error", [asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
                                   asyncpg.exceptions.AdminShutdownError("terminating connection"),
                                   asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
                                   asyncpg.exceptions.TooManyConnectionsError("too many clients already"),
                                   # a standby after a failover, a statement prepared before another process's migration
                                   # (before session 40 both were held per task, every task of the pass in turn)
                                   asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
                                   asyncpg.exceptions.InvalidCachedStatementError("cached statement plan is invalid"),
                                   asyncpg.InterfaceError("cannot perform operation")])
async def test_the_database_failing_to_answer_stays_the_passs(monkeypatch, error):
    seen, sched = pass_with(monkeypatch, error)
    conn = Conn()
    with pytest.raises(type(error)):
        await sched.fire_due(conn)
    assert conn.committed == 0 and sched.held == {}  # the pass failed: tried again on a new connection, as before


@pytest.mark.parametrize(("error", "traceback"), [
    (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), False),
    (asyncpg.exceptions.AdminShutdownError("terminating connection"), False),
    # not an outage (shared/data_errors.py): a retry meets it again, for the operator to see where it came from
    (STATEMENT_TIMEOUT, True),
    (asyncpg.exceptions.UndefinedColumnError('column "x" does not exist'), True),
    (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), True),
    (PermissionError(13, "Permission denied"), True),  # not raised by asyncpg: not the database's
])
async def test_a_failed_pass_is_logged_with_its_traceback_unless_the_database_did_not_answer(caplog, error, traceback):
    """Scheduler._forever: a pass's database failure was a WARNING line for any PostgresError, InterfaceError or
    OSError; an error a retry meets again (a role's statement_timeout on a pass's query, our SQL, asyncpg misused, an
    OSError of a file) is logged with its traceback now, an outage still as a line."""
    sched = Scheduler(deps=SimpleNamespace(settings=SimpleNamespace(tick=5.0)), mint=None, gateway_url="")
    dropped = []

    async def nothing() -> None:
        return None

    async def connection():
        sched._stop.set()  # one pass
        sched._wake.set()  # no sleep after it
        raise error

    async def drop() -> None:
        dropped.append(1)

    sched.remove_stale_workdirs = nothing
    sched._connection = connection
    sched._drop_connection = drop
    with caplog.at_level("WARNING", logger="railyard.task_scheduler.scheduler"):
        await asyncio.wait_for(sched._forever(), 5)
    [record] = [r for r in caplog.records if r.getMessage().startswith("scheduler pass failed")]
    assert (record.levelname, bool(record.exc_info)) == (("ERROR", True) if traceback else ("WARNING", False))
    if not traceback:
        assert type(error).__name__ in record.getMessage()
    assert dropped == [1]  # either way the connection is dropped and the pass tried again on a new one


def looping_scheduler(tick: float, heartbeat_interval: float = 1.0) -> Scheduler:
    return Scheduler(deps=SimpleNamespace(settings=SimpleNamespace(tick=tick, heartbeat_interval=heartbeat_interval,
                                                                   supervisor_lost_after=10.0)),
                     mint=None, gateway_url="")


async def sleeps_after(monkeypatch, sched: Scheduler, passes: list[Exception | None],
                       woken: list[bool] | None = None) -> list[float]:
    """Runs the scheduler's loop (Scheduler._forever) over passes that raise these errors at their start (None: a pass
    that succeeds, its steps doing nothing), the last stopping it; the sleep after each pass (recorded, not slept).
    With `woken`: each pass hears a notification (Scheduler.wake), and whether the wake was still set as each sleep
    began (it would have ended at once) is appended to it."""
    passes = list(passes)
    delays: list[float] = []

    async def nothing(*_args) -> None:
        return None

    async def connection():
        error = passes.pop(0)
        if woken is not None:
            sched.wake()
        if not passes:
            sched._stop.set()
        if error is not None:
            raise error
        return SimpleNamespace()

    async def wait_for(awaitable, timeout):
        delays.append(timeout)
        if woken is not None:
            woken.append(sched._wake.is_set())
        awaitable.close()
        raise TimeoutError

    async def start_queued(conn) -> bool:
        return False

    async def to_next_due(*_args):
        return None

    sched.remove_stale_workdirs = nothing
    sched._connection = connection
    sched._drop_connection = nothing
    sched.fail_lost = sched.fire_due = sched.install_next = sched.heartbeat = nothing
    sched.start_queued = start_queued
    monkeypatch.setattr(store, "seconds_to_next_due", to_next_due)
    forever = sched._forever()
    monkeypatch.setattr(asyncio, "wait_for", wait_for)
    await forever
    return delays


async def test_a_pass_failing_again_and_again_backs_off_and_logs_its_traceback_once(monkeypatch, caplog):
    """A pass whose own query meets a role's statement_timeout every time (not an outage) was tried again within a
    second and logged its traceback each time: a traceback a second for as long as it lasted. Now the next pass
    waits PASS_RETRY, doubling to the tick while the passes fail, an outage meanwhile is still tried again within
    PASS_RETRY, the traceback is logged once per distinct error then a line with its count, and a pass that
    succeeds starts over (session 41)."""
    tick = 5.0
    sched = looping_scheduler(tick)
    outage = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    undefined = asyncpg.exceptions.UndefinedColumnError('column "x" does not exist')
    passes = [STATEMENT_TIMEOUT] * 4 + [outage, undefined, STATEMENT_TIMEOUT, STATEMENT_TIMEOUT, None,
                                        STATEMENT_TIMEOUT, None]
    with caplog.at_level("INFO", logger="railyard.task_scheduler.scheduler"):
        delays = await sleeps_after(monkeypatch, sched, passes)
    assert delays == [1.0, 2.0, 4.0, 5.0,  # the statement_timeout, four times: doubling to the tick
                      1.0,  # the outage: soon, as before
                      5.0, 5.0, 5.0,  # still failing: the tick
                      tick,  # a pass that succeeded: its own sleep
                      1.0,  # the next failure starts over
                      tick]
    said = [(r.levelname, bool(r.exc_info), r.getMessage()) for r in caplog.records
            if r.getMessage().startswith("scheduler pass")]
    assert [(level, traceback) for level, traceback, _ in said] == [
        ("ERROR", True), ("ERROR", False), ("ERROR", False), ("ERROR", False),  # QueryCanceledError
        ("WARNING", False),  # the outage's line
        ("ERROR", True),  # another error: its own traceback
        ("ERROR", False), ("ERROR", False),  # QueryCanceledError again
        ("INFO", False),  # the pass that succeeded
        ("ERROR", True), ("INFO", False)]  # a new row of failures: its traceback again
    assert said[7][2].startswith("scheduler pass failed again: QueryCanceledError: canceling statement due to"
                                 " statement timeout (6 times since its traceback above; next pass in 5.0 s)")
    assert said[8][2] == "scheduler pass succeeded again, after 7 failed on errors other than an outage"
    assert sched.failed_passes == {}


async def test_an_error_naming_another_row_each_time_is_one_error(monkeypatch, caplog):
    """An error whose words name what it met (a row's id, a file's OID, a uuid) is the same error at every pass: its
    traceback once, then a line with its count. Keyed on its words as they were, each pass logged a new traceback
    (review of b2803373)."""
    sched = looping_scheduler(5.0)
    passes = [asyncpg.exceptions.InternalServerError(f'could not open file "base/16384/{oid}": No such file')
              for oid in (24576, 24581, 24590)]
    passes += [asyncpg.exceptions.DataError(f"invalid input for query argument $1: {uuid.uuid4()!r} (no row)")
               for _ in range(2)]
    with caplog.at_level("ERROR", logger="railyard.task_scheduler.scheduler"):
        await sleeps_after(monkeypatch, sched, passes)
    said = [(bool(r.exc_info), r.getMessage()) for r in caplog.records if r.getMessage().startswith("scheduler pass")]
    assert [traceback for traceback, _ in said] == [True, False, False, True, False]
    assert said[2][1].startswith('scheduler pass failed again: InternalServerError: could not open file'
                                 ' "base/16384/24590": No such file (3 times since its traceback above;')
    assert said[4][1].startswith("scheduler pass failed again: DataError: invalid input for query argument $1: UUID(")
    assert sorted(sched.failed_passes.values()) == [2, 3]


async def test_a_pass_failing_while_runs_are_supervised_is_tried_again_by_their_beat(monkeypatch):
    """Only a pass beats the runs a process supervises: backing off to a `tick` at or past supervisor_lost_after
    (a step after the beat failing every time) left them unbeaten long enough for another process to fail them as
    lost. While it has runs, a failing pass is tried again within their beat's wait (heartbeat_interval / 2, as
    sleep_for's own_beat_in), as before the back-off (review of b2803373)."""
    sched = looping_scheduler(30.0, heartbeat_interval=2.0)
    sched.runs[uuid.uuid4()] = SimpleNamespace()
    assert await sleeps_after(monkeypatch, sched, [STATEMENT_TIMEOUT] * 5) == [1.0] * 5
    sched = looping_scheduler(30.0, heartbeat_interval=2.0)  # without runs: backs off to the tick
    assert await sleeps_after(monkeypatch, sched, [STATEMENT_TIMEOUT] * 6) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]


async def test_a_notification_during_a_pass_failed_on_a_database_error_does_not_end_its_back_off(monkeypatch):
    """A pass failed on a database error drops its connection, so no notification ends the back-off after it
    (decided in session 42, 8d80d3e9), but one heard during the failed pass (PostgreSQL hands those of a transaction's
    time over at its end, the failed pass's rollback) had set the wake already and the wait ended at once: on a busy
    stack the back-off was not waited at all, each retry costing the database the failing statement again (a 57014's
    whole statement_timeout). Now that wake is let go; a bug's wait is still ended by it (its LISTEN kept), and a stop
    during a failed pass still ends the wait (review of 8d80d3e9)."""
    sched = looping_scheduler(5.0)
    woken: list[bool] = []
    passes = [STATEMENT_TIMEOUT, STATEMENT_TIMEOUT, RuntimeError("a bug"), STATEMENT_TIMEOUT]
    assert await sleeps_after(monkeypatch, sched, passes, woken) == [1.0, 2.0, 4.0, 5.0]
    assert woken == [False, False, True, True]  # the bug's wait ends at once, as the stopping pass's


async def test_a_held_tasks_error_is_logged_with_its_traceback_once(monkeypatch, caplog):
    """fire_due: a task's point over a statement_timeout (57014) or meeting the server's own error (XX000) was a
    WARNING line with no traceback, every time it was tried again: where the statement came from was never logged.
    Now its first error in a row has the traceback, the next ones (tried again after their wait) a line."""
    for error in (STATEMENT_TIMEOUT, asyncpg.exceptions.InternalServerError("could not open file")):
        seen, sched = pass_with(monkeypatch, error)
        caplog.clear()
        with caplog.at_level("WARNING", logger="railyard.task_scheduler.scheduler"):
            await sched.fire_due(Conn())
            for _ in range(3):
                sched.held[BAD] = (sched.held[BAD][0], 0.0)
                await sched.fire_due(Conn())
        said = [r for r in caplog.records if r.getMessage().startswith(f"task {BAD}: its point")]
        assert [(r.levelname, bool(r.exc_info)) for r in said] == [("WARNING", True)] + [("WARNING", False)] * 3
        assert said[0].exc_info[1] is error


class Wordless(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no words")


async def test_a_pass_failing_on_an_error_whose_words_fail_goes_on(monkeypatch, caplog):
    """_pass_failed reads the error's words in the loop's except clause: an error whose __str__ raises ended the
    loop there, and the process made no more passes (review of b2803373). It is logged with its traceback and the
    passes go on, backing off as a database error's (b2803373 logged "next pass in 1 s" and waited the tick)."""
    sched = looping_scheduler(5.0)
    with caplog.at_level("ERROR", logger="railyard.task_scheduler.scheduler"):
        # a bug, not a database error: the same back-off (it waited the tick while its line said 1, 2, 4 s)
        assert await sleeps_after(monkeypatch, sched, [Wordless(), Wordless(), None]) == [1.0, 2.0, 5.0]
    said = [(bool(r.exc_info), r.getMessage()) for r in caplog.records if r.getMessage().startswith("scheduler pass")]
    assert said[0][0] and said[1] == (False, "scheduler pass failed again: Wordless: (its str() failed) (2 times since"
                                             " its traceback above; next pass in 2.0 s)")


async def test_an_errors_key_is_its_words_first_characters_however_long_its_words(monkeypatch, caplog):
    """The failed passes' errors are remembered by key (PASS_ERRORS_KEPT of them) while the passes fail: a key was the
    error's words whole, so errors quoting megabytes (a DataError quoting a value, an OSError naming a long path)
    held as many megabytes for as long as the passes failed. A key is now their first PASS_ERROR_KEY_CHARS (numbers
    aside first) and a hash of the whole: each error quoting 256 KiB of its own is kept in a few hundred characters
    (session 42), and two errors alike that far and different after are still two, each its traceback once: 1070e608
    cut the words alone, and the second one's traceback was never logged, its lines counted as the first's (review of
    1070e608). A number past the cut is still aside: one error."""
    sched = looping_scheduler(5.0)
    huge = [asyncpg.exceptions.DataError(f"invalid input value {letter}: " + letter * 2**18) for letter in "abc"]
    alike = [asyncpg.exceptions.DataError("y" * PASS_ERROR_KEY_CHARS + tail)
             for tail in ("in row 1", "and another error", "in row 2")]
    with caplog.at_level("ERROR", logger="railyard.task_scheduler.scheduler"):
        await sleeps_after(monkeypatch, sched, [*huge, *alike])
    assert max(len(key) for key in sched.failed_passes) < PASS_ERROR_KEY_CHARS + 30
    assert len(sched.failed_passes) == len(huge) + 2 <= PASS_ERRORS_KEPT
    said = [(bool(r.exc_info), r.getMessage()) for r in caplog.records if r.getMessage().startswith("scheduler pass")]
    # alike for 200 characters, different after: two errors; the same but for a number: one
    assert [traceback for traceback, _ in said] == [True] * len(huge) + [True, True, False]
    assert said[-1][1].startswith("scheduler pass failed again: DataError: yyy") and "(2 times since" in said[-1][1]
    assert len(said[-1][1]) < 700  # the line quotes the error's first 500 characters, as before
