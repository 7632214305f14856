"""A task run's log lines survive transient database errors (services/task_scheduler/runner.py LogWriter.flush and
execute; store.append_logs). A failed write is retried with backoff under the same sequence numbers, a batch whose
INSERT committed but whose answer was lost is not stored twice, the periodic flusher goes on after a failure, and the
final flush runs (retried, bounded) whatever happened before it; a run that ran is recorded as it ended, never as
"could not be started" because its lines could not be written. Before, a failed periodic flush lost its batch and
ended the flusher, a failed final flush lost the last lines (a failed run's traceback) and the run was recorded as
"the run could not be started: <error>", and so did a run whose output readers outlasted their 10 s.

The sink is the scheduler's (services/task_scheduler/scheduler.py Scheduler._run: it numbers a batch's lines once
they are written) with faults put in front of or after its store.append_logs, on the task scheduler's migrations in
a schema of this test's on the stack's PostgreSQL; the runs are real sandboxed processes (as in test_sandbox.py)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
import zipfile
from datetime import UTC, datetime

import asyncpg
import pytest

from services.task_scheduler import runner, store
from shared.settings import Settings
from tests.integration.conftest import service_schema
from tests.integration.pg_proxy import through_a_proxy
from tests.integration.task_scheduler_setup import MIGRATIONS, sandbox_settings_in
from tests.integration.task_scheduler_setup import a_supervised_run as a_run
from tests.unit.test_bus_database_unavailable import asyncpg_outage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
async def pool(stack, monkeypatch):
    # short backoff: the retries' waits are not what these tests look at (raising=False: the old runner has none)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.01, raising=False)
    async with service_schema(stack, "task_run_log_retries", MIGRATIONS) as pool:
        yield pool


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    return sandbox_settings_in(tmp_path, monkeypatch)


class Sink:
    """The scheduler's sink for one run; `before` faults fail a call before its INSERT (nothing stored), `after`
    faults after it committed (the answer lost): each a list of exceptions (or None: no fault), taken one a call."""

    def __init__(self, pool, run_id: uuid.UUID, *, before=(), after=()):
        self.pool, self.run_id = pool, run_id
        self.before, self.after = list(before), list(after)
        self.seq, self.refused, self.calls = 0, False, 0
        self.wrote = asyncio.Event()  # a call stored lines

    async def __call__(self, lines) -> None:
        self.calls += 1
        if self.before and (fault := self.before.pop(0)) is not None:
            raise fault
        stored = await store.append_logs(self.pool, self.run_id, self.seq, lines)
        if self.after and (fault := self.after.pop(0)) is not None:
            raise fault
        self.seq += len(lines)
        self.wrote.set()
        if stored < len(lines):
            self.refused = True


async def stored(pool, run_id: uuid.UUID) -> list[str]:
    return [row["line"] for row in await store.logs(pool, run_id, None)]


def lost() -> Exception:
    return asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")


async def test_a_flush_failing_twice_then_succeeding_stores_every_line_once_in_order(pool):
    run_id = await a_run(pool)
    # an OSError counts when asyncpg raised it (shared/data_errors.py; runner.transient): a refused connection's
    sink = Sink(pool, run_id, before=[lost(), await asyncpg_outage("refused")])
    writer = runner.LogWriter(sink=sink, max_bytes=100_000)
    for text in ("one", "two", "three"):
        writer.add("stdout", False, text)
    await writer.flush()  # was: ConnectionDoesNotExistError raised, the three lines lost
    assert sink.calls == 3 and writer.pending == []
    writer.add("stderr", False, "four")
    await writer.flush()
    assert await stored(pool, run_id) == ["one", "two", "three", "four"]
    assert not sink.refused


async def test_a_retry_of_a_batch_committed_but_unanswered_stores_no_line_twice(pool):
    run_id = await a_run(pool)
    sink = Sink(pool, run_id, after=[lost()])  # the answer lost with the connection
    writer = runner.LogWriter(sink=sink, max_bytes=100_000)
    writer.add("stdout", False, "one")
    writer.add("stdout", False, "two")
    await writer.flush()  # with the old append_logs the retry met the primary key, the numbering stuck at 0 ...
    writer.add("stdout", False, "three")
    await writer.flush()  # ... so every later batch failed too
    assert await stored(pool, run_id) == ["one", "two", "three"]
    assert not sink.refused  # the lines already stored count as stored: no "refused" message in the log
    assert await store.append_logs(pool, run_id, 0, [(datetime.now(UTC), "stdout", False, "one")]) == 1


async def test_a_data_error_drops_its_batch_at_once_and_the_next_lines_are_written(pool):
    """A retry cannot fix a line PostgreSQL refuses: tried once, dropped (LinesDropped, logged by execute)."""
    run_id = await a_run(pool)
    sink = Sink(pool, run_id, before=[asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence")])
    writer = runner.LogWriter(sink=sink, max_bytes=100_000)
    writer.add("stdout", False, "bad")
    with pytest.raises(runner.LinesDropped, match="^1 log lines dropped: CharacterNotInRepertoireError"):
        await writer.flush()
    assert sink.calls == 1 and writer.pending == []
    writer.add("stdout", False, "good")
    await writer.flush()
    assert await stored(pool, run_id) == ["good"]


async def test_lines_refused_as_late_are_not_retried(pool):
    """A run ended longer than LATE_LINES ago takes no line (store.append_logs): an answer, not an error: no retry."""
    run_id = await a_run(pool)
    await pool.execute("UPDATE runs SET status = 'failure', finished_at = now() - make_interval(secs => $2)"
                       " WHERE id = $1", run_id, store.LATE_LINES + 1)
    sink = Sink(pool, run_id)
    writer = runner.LogWriter(sink=sink, max_bytes=100_000)
    writer.add("stdout", False, "late")
    await writer.flush(final=True)
    assert (sink.calls, sink.refused, writer.pending) == (1, True, [])
    assert await stored(pool, run_id) == []


async def test_a_periodic_flush_that_gave_up_keeps_its_lines_and_the_flusher_goes_on(pool, settings, monkeypatch):
    """The first periodic flush fails past its tries: its line is written by a later one while the run goes on (was:
    the batch lost and the flusher ended, later lines waiting for the run's end)."""
    monkeypatch.setattr(runner, "FLUSH_TRIES", 1, raising=False)
    run_id = await a_run(pool)
    sink = Sink(pool, run_id, before=[lost()])
    kill = asyncio.Event()
    run = asyncio.create_task(runner.execute(plan_of(settings, "import time\nprint('one')\ntime.sleep(60)\n"),
                                             runner.LogWriter(sink=sink, max_bytes=100_000), kill))
    wrote = asyncio.create_task(sink.wrote.wait())
    await asyncio.wait({wrote, run}, timeout=30, return_when=asyncio.FIRST_COMPLETED)  # main.py sleeps 60 s
    written = await stored(pool, run_id)
    kill.set()
    wrote.cancel()
    outcome = await run
    assert written == ["one"], (written, sink.calls)
    assert outcome.reason == runner.KILLED, outcome
    assert await stored(pool, run_id) == ["one"]


async def test_a_failed_run_s_traceback_is_stored_though_writing_it_failed_at_first(pool, settings):
    run_id = await a_run(pool)
    sink = Sink(pool, run_id, before=[lost(), lost()])
    main = "print('start')\nraise RuntimeError('boom')\n"
    outcome = await runner.execute(plan_of(settings, main), runner.LogWriter(sink=sink, max_bytes=100_000),
                                   asyncio.Event())
    assert (outcome.status, outcome.exit_code) == ("failure", 1), outcome
    assert outcome.reason.startswith("main.py exited with status 1"), outcome
    lines = await stored(pool, run_id)
    assert lines[0] == "start" and lines[-1] == "RuntimeError: boom", lines
    assert "Traceback (most recent call last):" in lines and len(set(lines)) == len(lines), lines


async def test_a_run_whose_lines_cannot_be_written_ends_as_it_ran(pool, settings, monkeypatch):
    """The database away for the whole run: its lines are lost (after FINAL_FLUSH_SECONDS of tries) but the run is
    recorded as main.py ended, not as "the run could not be started: ConnectionDoesNotExistError"."""
    monkeypatch.setattr(runner, "FINAL_FLUSH_SECONDS", 0.5, raising=False)
    sink = Sink(pool, await a_run(pool), before=[lost() for _ in range(1000)])
    outcome = await runner.execute(plan_of(settings, "import sys\nprint('x')\nsys.exit(3)\n"),
                                   runner.LogWriter(sink=sink, max_bytes=100_000), asyncio.Event())
    assert (outcome.status, outcome.exit_code) == ("failure", 3), outcome
    assert outcome.reason.startswith("main.py exited with status 3"), outcome


async def test_output_readers_outlasting_their_wait_still_get_the_final_flush(pool, settings, monkeypatch):
    """A reader still going PUMP_WAIT after the process ended (a child holding the pipe) is given up; the lines read
    are written and the run ends as it did (was: TimeoutError out of execute, no final flush, "could not be
    started")."""
    monkeypatch.setattr(runner, "PUMP_WAIT", 0.5, raising=False)
    pump = runner._pump

    async def held_open(reader, stream, writer):
        await pump(reader, stream, writer)
        await asyncio.sleep(3600)

    monkeypatch.setattr(runner, "_pump", held_open)
    run_id = await a_run(pool)
    outcome = await runner.execute(plan_of(settings, "print('only')\n"),
                                   runner.LogWriter(sink=Sink(pool, run_id), max_bytes=100_000), asyncio.Event())
    assert (outcome.status, outcome.exit_code) == ("success", 0), outcome
    assert await stored(pool, run_id) == ["only"]


def plan_of(settings: Settings, main: str) -> runner.RunPlan:
    archive = settings.stack.data_dir.parent / "orchestration.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("main.py", main)
    return runner.RunPlan(run_id="r", workdir=settings.stack.data_dir / "run", zip_path=archive,
                          entrypoint="main.py", python=sys.executable, env_dir=None, env={}, timeout=90,
                          memory_bytes=1 << 30, cpu_seconds=60, disk_bytes=64 << 20)


async def test_a_flush_attempt_the_database_does_not_answer_is_given_up_at_its_bound(stack, pool, monkeypatch):
    """The database took the connection and stopped answering (a TCP proxy passing nothing either way, asyncpg's cancel
    request included): each attempt is given up after FLUSH_ATTEMPT_SECONDS and the periodic flush ends after its tries
    with its lines kept for the next one, which writes them once the database answers again. Before, an attempt had no
    bound of its own: the flush waited as long as the server was away (here: past the pool's 30-s command timeout,
    whose own cancellation waits for the server too)."""
    monkeypatch.setattr(runner, "FLUSH_ATTEMPT_SECONDS", 0.5, raising=False)
    monkeypatch.setattr(runner, "FLUSH_TRIES", 2)
    run_id = await a_run(pool)
    async with through_a_proxy(stack, pool) as (proxy, proxied):
        sink = Sink(proxied, run_id)
        writer = runner.LogWriter(sink=sink, max_bytes=100_000)
        writer.add("stdout", False, "one")
        await writer.flush()  # the connection taken and answered
        proxy.freeze()
        writer.add("stdout", False, "two")
        began = time.monotonic()
        flushing = asyncio.create_task(writer.flush())
        await asyncio.wait({flushing}, timeout=15)  # not asyncio.timeout: that would wait for the hung flush
        took = time.monotonic() - began
        if not flushing.done():  # was: still waiting for the server
            proxy.thaw()
            flushing.cancel()
            await asyncio.wait({flushing}, timeout=60)
            pytest.fail(f"the flush still waited for the database after {took:.1f} s")
        assert isinstance(flushing.exception(), TimeoutError), flushing.exception()
        assert sink.calls == 1 + 2 and [line for *_, line in writer.pending] == ["two"], (sink.calls, writer.pending)
        proxy.thaw()
        writer.add("stdout", False, "three")
        await writer.flush()
        assert await stored(pool, run_id) == ["one", "two", "three"]
        assert sink.seq == 3
