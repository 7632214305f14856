"""The last steps before a run's main.py starts (services/task_scheduler/scheduler.py Scheduler._run).

Its claim is checked right before runner.execute (Scheduler._still_claimed, a beat of the run alone): a process paused
past supervisor_lost_after around the token's mint (or a setup that long) finds its run failed by another process's
lost-run step, or its kill asked, and does not start it. Before, main.py started for a run already failed, its
heartbeat a pass away.

Its token's mint is asked again while auth cannot answer (a 503, a 504: auth restarting, the bus reconnecting) with
backoff for MINT_RETRY_SECONDS, cut short by the run's kill; a refusal (a 4xx) fails the run at once. Before, one
passing failure failed the run for good ("the run could not be started")."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import uuid
from unittest.mock import ANY

import asyncpg
import pytest

from services.task_scheduler import runner, store
from services.task_scheduler import scheduler as scheduler_module
from shared.errors import Unauthorized, Unavailable, UpstreamTimeout
from tests.unit.test_bus_database_unavailable import asyncpg_outage
from tests.unit.test_task_scheduler_stop_starts import a_row, a_scheduler, settle


def started_at_once(seen: dict, monkeypatch) -> None:
    """main.py ends as soon as it starts, a success: what ran is in seen["executed"]."""
    async def execute(plan, writer, kill):
        seen["executed"].append(uuid.UUID(plan.run_id))
        return runner.RunOutcome("success", 0, None)

    monkeypatch.setattr(runner, "execute", execute)


def beaten_as(monkeypatch, answer) -> list[list[uuid.UUID]]:
    """store.beat_runs answering `answer(run_ids)`; the ids of each beat."""
    beats: list[list[uuid.UUID]] = []

    async def beat_runs(pool, run_ids, supervisor):
        beats.append(list(run_ids))
        return answer(run_ids)

    monkeypatch.setattr(store, "beat_runs", beat_runs)
    return beats


async def test_a_run_failed_elsewhere_while_its_token_was_minted_never_starts(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    seen["mint_gate"] = asyncio.Event()  # this process paused in the mint's round trip
    beats = beaten_as(monkeypatch, lambda run_ids: {})  # not beaten: another process failed it meanwhile
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    async with asyncio.timeout(10):
        await seen["minting"].wait()
        seen["mint_gate"].set()
        await settle(sched)
    assert seen["executed"] == []  # before: [run_id], main.py run for a run already failed
    assert beats == [[run_id]]
    assert seen["ended"] == []  # the lost-run step's failure stands: nothing recorded over it


async def test_a_kill_asked_while_its_token_was_minted_is_recorded_and_nothing_starts(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    replaced = "replaced by the task's run for 2026-12-06T10:00:00+00:00 (concurrency_policy replace)"
    beaten_as(monkeypatch, lambda run_ids: {r: replaced for r in run_ids})
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    await settle(sched)
    assert seen["executed"] == [] and seen["ended"] == [(run_id, "failure", replaced)]


async def test_a_run_still_claimed_starts(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    beats = beaten_as(monkeypatch, lambda run_ids: {r: False for r in run_ids})
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    await settle(sched)
    assert seen["executed"] == [run_id] and seen["ended"] == [(run_id, "success", None)] and beats == [[run_id]]


def failing_mints(sched, failures: list[Exception]) -> list[float]:
    """sched.mint raising `failures` in turn, then answering; the loop time of each ask."""
    asked: list[float] = []

    async def mint(owner_id, workspace_id, ttl, task_id, run_id) -> str:
        asked.append(asyncio.get_running_loop().time())
        if failures:
            raise failures.pop(0)
        return "token"

    sched.mint = mint
    return asked


def quick_backoff(monkeypatch) -> None:
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.01)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF_MAX", 0.05)


async def test_a_mint_auth_could_not_answer_is_asked_again(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    asked = failing_mints(sched, [Unavailable("auth is not running"), UpstreamTimeout("auth did not answer within 5s"),
                                  ConnectionResetError("reset")])
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    await settle(sched)
    # before: failed at the first, 'the run could not be started: auth is not running'
    assert seen["ended"] == [(run_id, "success", None)] and seen["executed"] == [run_id]
    assert len(asked) == 4


async def test_a_mint_auth_refuses_fails_the_run_at_once(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    asked = failing_mints(sched, [Unauthorized("task run x has ended: no token is issued for it")] * 3)
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    await settle(sched)
    assert len(asked) == 1 and seen["executed"] == []
    assert seen["ended"] == [(run_id, "failure", "the run could not be started: task run x has ended: no token is "
                                                 "issued for it")]


async def test_a_mint_that_keeps_failing_fails_the_run_after_its_time_and_a_kill_cuts_it_short(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    monkeypatch.setattr(scheduler_module, "MINT_RETRY_SECONDS", 0.3)
    asked = failing_mints(sched, [Unavailable("auth is not running")] * 1000)
    given_up = uuid.uuid4()
    sched._supervised(a_row(given_up))
    await settle(sched)
    assert seen["ended"] == [(given_up, "failure", "the run could not be started: auth is not running")]
    # asked again for its time, then given up: tenacity checks the time after a failed ask, so the last ask can start
    # just before 0.3 s and still be the last (the bound measures from the first ask, not tenacity's start)
    assert 0.2 <= asked[-1] - asked[0] < 5 and len(asked) > 2

    # task/kill while auth cannot answer: the backoff's wait ends at the kill, recorded as the kill (not as the mint)
    monkeypatch.setattr(scheduler_module, "MINT_RETRY_SECONDS", 60.0)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 30.0)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF_MAX", 30.0)
    asked.clear()
    first_asked = asyncio.Event()
    failing = sched.mint

    async def mint(*args) -> str:
        first_asked.set()
        return await failing(*args)

    sched.mint = mint
    killed = uuid.uuid4()
    sched._supervised(a_row(killed))
    async with asyncio.timeout(10):
        await first_asked.wait()
        sched._kill(killed, runner.KILLED)  # the backoff's wait is 30 s: settled within 10 only if the kill ends it
        await settle(sched)
    assert seen["ended"][-1] == (killed, "failure", runner.KILLED) and len(asked) == 1
    assert seen["executed"] == []


async def test_a_stop_while_the_claim_could_not_be_checked_puts_the_run_back(tmp_path, monkeypatch):
    """The stop came while the check's beat failed (PostgreSQL restarting, here for all of the check's retries): the
    run never started, so it goes back to the queue as one the stop finds in its mint's retries does. Before, the
    check's error failed it for good ('the run could not be started: ConnectionRefusedError')."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    monkeypatch.setattr(scheduler_module, "END_RECORD_SECONDS", 0.5)  # the check's retries (30 s): cut to the test
    checking, stopped = asyncio.Event(), asyncio.Event()

    async def beat_runs(pool, run_ids, supervisor):
        checking.set()
        await stopped.wait()  # the stop's kill is set while the check is under way
        raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)

    async def own_unsupervised(pool, supervisor, known):  # the stop's look for starts whose answer was lost: none
        return []

    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(store, "own_unsupervised", own_unsupervised)
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    async with asyncio.timeout(10):
        await checking.wait()
        stopping = asyncio.ensure_future(sched.stop())
        await sched.kills[run_id].wait()
        stopped.set()
        await settle(sched)
        await stopping
    assert seen["executed"] == []
    assert seen["requeued"] == [run_id] and seen["ended"] == []  # before: ended [(run_id, 'failure', 'the run could
    # not be started: ConnectionRefusedError')], never put back


async def test_a_stop_while_auth_cannot_answer_puts_the_run_back(tmp_path, monkeypatch):
    """The stop's kill ends the mint's backoff as task/kill's does, and the run, never started, goes back to the queue
    (Scheduler._requeued) instead of waiting out MINT_RETRY_SECONDS and failing. Before the retries, the mint's first
    503 failed it for good ('the run could not be started: auth is not running')."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 30.0)  # the backoff's wait: ended by the stop only
    monkeypatch.setattr(runner, "FLUSH_BACKOFF_MAX", 30.0)
    asked = failing_mints(sched, [Unavailable("auth is not running")] * 1000)
    first_asked = asyncio.Event()
    failing = sched.mint

    async def mint(*args) -> str:
        first_asked.set()
        return await failing(*args)

    async def own_unsupervised(pool, supervisor, known):  # the stop's look for starts whose answer was lost: none
        return []

    sched.mint = mint
    monkeypatch.setattr(store, "own_unsupervised", own_unsupervised)
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    async with asyncio.timeout(10):
        await first_asked.wait()
        await sched.stop()
        await settle(sched)
    assert len(asked) == 1 and seen["executed"] == []
    assert seen["requeued"] == [run_id] and seen["ended"] == []


async def test_a_mint_auth_fails_on_a_fault_of_its_own_fails_the_run_at_once_saying_so(tmp_path, monkeypatch):
    """A 500 from auth (an unhandled error in it: asked again, it answers the same) fails the run at the first
    answer, its reason naming the mint and that it was not asked again. Before, every 5xx was asked again for
    MINT_RETRY_SECONDS (30 s) and the run then failed 'the run could not be started: internal error'. A 502 is still
    asked again, as 503, 504, 408 and 429 are (the first test)."""
    from shared.errors import RailyardError

    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    monkeypatch.setattr(scheduler_module, "MINT_RETRY_SECONDS", 2.0)
    asked = failing_mints(sched, [RailyardError("internal error")] * 1000)
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    await settle(sched)
    assert len(asked) == 1 and seen["executed"] == []  # before: asked for 2 s here, 30 s at the default
    assert seen["ended"] == [(run_id, "failure", "the run could not be started: auth failed to mint the run's token "
                                                 "(500 internal: internal error); not asked again, as only a 408, 429,"
                                                 " 502, 503, 504 or a lost connection is")]

    bad_gateway = RailyardError("bad gateway", code="bad_gateway")
    bad_gateway.status = 502
    asked = failing_mints(sched, [bad_gateway, RailyardError("internal error")])
    asked_again = uuid.uuid4()
    sched._supervised(a_row(asked_again))
    await settle(sched)
    assert len(asked) == 2 and seen["ended"][-1][:2] == (asked_again, "failure")


def unreachable_claim_checks(monkeypatch, answers: list) -> list[tuple[uuid.UUID, int | None]]:
    """store.beat_runs refused for every attempt of the claim check (PostgreSQL away; its retries cut to 0.3 s), and
    store.requeue_unstarted answering `answers` in turn (an exception raised); each put-back asked, with its cap."""
    asked: list[tuple[uuid.UUID, int | None]] = []

    async def beat_runs(pool, run_ids, supervisor):
        raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)

    async def requeue_unstarted(pool, run_id, supervisor, *, unchecked_cap=None):
        asked.append((run_id, unchecked_cap))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(store, "requeue_unstarted", requeue_unstarted)
    monkeypatch.setattr(scheduler_module, "END_RECORD_SECONDS", 0.3)
    return asked


async def test_a_run_whose_claim_could_not_be_checked_goes_back_to_the_queue(tmp_path, monkeypatch):
    """The claim check right before main.py (5954aa2e) met PostgreSQL away for all of its retries: main.py never
    started, so the run goes back to the queue (counted: at most UNCHECKED_REQUEUES times), as a stop's does.
    Before, it failed for good: 'the run could not be started: ConnectionRefusedError' (TimeoutError when each
    attempt went unanswered)."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    put_back = unreachable_claim_checks(monkeypatch, [False])
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    await settle(sched)
    assert seen["executed"] == [] and seen["ended"] == []  # before: ended, 'the run could not be started: ...'
    assert put_back == [(run_id, scheduler_module.UNCHECKED_REQUEUES)]


async def test_a_run_put_back_for_its_claim_check_too_often_fails_saying_why(tmp_path, monkeypatch):
    """Past UNCHECKED_REQUEUES put-backs (store.requeue_unstarted raises RequeueCapped) the run fails, its reason
    naming the check, the database's error and the put-backs; a kill asked meanwhile (a replace) ends it with the
    kill's reason instead, as a stop's put-back does."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    replaced = "replaced by the task's run for 2026-12-06T10:00:00+00:00 (concurrency_policy replace)"
    unreachable_claim_checks(monkeypatch, [store.RequeueCapped(3), replaced])
    capped, killed = uuid.uuid4(), uuid.uuid4()
    for run_id in (capped, killed):
        sched._supervised(a_row(run_id))
        await settle(sched)
    assert seen["executed"] == []
    assert seen["ended"] == [
        (capped, "failure", ANY),
        (killed, "failure", replaced)]
    said = seen["ended"][0][2]
    assert re.fullmatch(rf"the run could not be started: {re.escape(scheduler_module.UNCHECKED)}: "
                        rf"ConnectionRefusedError: \[Errno {errno.ECONNREFUSED}\] Connect call failed "  # 111 on Linux
                        r"\('127\.0\.0\.1', \d+\); "
                        r"put back in the queue 3 times already for its claim check, so not again", said), said


async def test_a_put_back_whose_answer_was_lost_is_not_claimed_again_by_its_process_while_it_retries(tmp_path,
                                                                                                     monkeypatch):
    """A put-back for the claim check (_put_back_unchecked) whose commit landed and whose answer was lost (its attempt
    timed out) left the run queued while its task retried it. Before (review of 82fa1e41), this process's next pass
    claimed it again: the old task's retry put the new claim back (counted a second time) and its end removed the new
    claim's task from `runs` and `kills` (unbeaten, unstopped). Now a process claims no run it still has a task for
    (store.start_queued's `supervised`): the retry finds the run queued (no longer this process's), and the run is
    started by the pass after that task ended, once."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    monkeypatch.setattr(scheduler_module, "END_RECORD_SECONDS", 0.3)
    run_id = uuid.uuid4()
    row = {"status": "running", "supervisor": "me", "unchecked_requeues": 0}  # the run's row, as the SQL reads it
    away = [True]  # PostgreSQL not answering the claim check
    landed, retried = asyncio.Event(), asyncio.Event()
    caps: list[int | None] = []
    claims: list[uuid.UUID] = []

    def mine(supervisor: str) -> bool:
        return row["status"] == "running" and row["supervisor"] == supervisor

    async def beat_runs(pool, run_ids, supervisor):
        if away[0]:
            raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)
        return {r: False for r in run_ids if mine(supervisor)}

    async def requeue_unstarted(pool, rid, supervisor, *, unchecked_cap=None):
        caps.append(unchecked_cap)
        if len(caps) == 2:
            await retried.wait()  # the retry after the pass below
        if not mine(supervisor):
            return None
        row.update(status="queued", supervisor=None,
                   unchecked_requeues=row["unchecked_requeues"] + (unchecked_cap is not None))
        if len(caps) == 1:  # committed; its answer lost
            landed.set()
            raise TimeoutError("putting a run back in the queue: no answer within 5 s")
        return False

    async def workspaces_waiting(conn, limit=None):
        return [1] if row["status"] == "queued" else []

    async def start_queued(conn, workspace_id, limit, room, supervisor, *, supervised=None):  # as its SQL
        if row["status"] != "queued" or run_id in (supervised or []):
            return []
        row.update(status="running", supervisor=supervisor)
        claims.append(run_id)
        return [a_row(run_id)]

    async def finish_run(pool, rid, supervisor, status, exit_code, reason):
        if not mine(supervisor):
            return False
        row["status"] = status
        seen["ended"].append((rid, status, reason))
        return True

    for name, fake in (("beat_runs", beat_runs), ("requeue_unstarted", requeue_unstarted),
                       ("workspaces_waiting", workspaces_waiting), ("start_queued", start_queued),
                       ("finish_run", finish_run)):
        monkeypatch.setattr(store, name, fake)
    sched._supervised(a_row(run_id))
    putting_back = sched.runs[run_id]
    async with asyncio.timeout(10):
        await landed.wait()
        away[0] = False
        seen["mint_gate"] = asyncio.Event()  # a run claimed from now on is held in its setup (its token's mint)
        await sched.start_queued(None)  # this process's next pass, while the put-back is retried
        tasks = {putting_back, *sched.runs.values()}
        retried.set()
        await putting_back  # its retry, then its end
        # a run's task still going that the process no longer knows (not beaten, not stopped by a stop)
        unknown = [t for t in tasks if not t.done() and t not in sched.runs.values()]
        seen["mint_gate"].set()
        await asyncio.gather(*tasks)
        await settle(sched)
    # before: the pass claimed it again (claims [run_id]), the old task's retry put that claim back (counted twice:
    # unchecked_requeues 2) and its end removed the new claim's task from runs and kills while it was still being set
    # up (unknown: [that task])
    assert claims == [] and caps == [scheduler_module.UNCHECKED_REQUEUES] * 2
    assert row == {"status": "queued", "supervisor": None, "unchecked_requeues": 1}
    assert unknown == [] and len(tasks) == 1
    assert seen["executed"] == [] and seen["ended"] == []

    await sched.start_queued(None)  # the pass after: its task ended, the run is claimed and runs once
    await settle(sched)
    assert claims == [run_id] and seen["executed"] == [run_id] and seen["ended"] == [(run_id, "success", None)]
    assert row["unchecked_requeues"] == 1


@pytest.mark.parametrize("under_way", ["unanswered", "answered"])
async def test_a_stop_during_a_put_back_for_the_claim_check_puts_it_back_uncounted(tmp_path, monkeypatch, under_way):
    """The stop's kill came while the put-back for the claim check was being retried (PostgreSQL away): the attempts
    from then on are the stop's put-back, not counted (no cap), as a stop's put-back is elsewhere (_requeued). Before,
    they were counted: a run put back UNCHECKED_REQUEUES times already failed 'the run could not be started: ...; put
    back in the queue 3 times already for its claim check, so not again', though the stop puts back a run whose main.py
    never started. `answered`: the attempt under way when the stop came (counted) answers, the run at the cap
    (RequeueCapped), and the stop's put-back follows; before (e67dc93e), that run failed at the cap, so whether the stop
    put it back or it failed depended on whether the stop met an attempt under way or the wait between two."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    started_at_once(seen, monkeypatch)
    quick_backoff(monkeypatch)
    monkeypatch.setattr(scheduler_module, "END_RECORD_SECONDS", 0.3)
    asked, stopped = asyncio.Event(), asyncio.Event()
    caps: list[int | None] = []
    counted = [scheduler_module.UNCHECKED_REQUEUES]  # the run's unchecked_requeues: at the cap

    async def beat_runs(pool, run_ids, supervisor):
        raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)

    async def requeue_unstarted(pool, run_id, supervisor, *, unchecked_cap=None):  # as its SQL
        caps.append(unchecked_cap)
        if len(caps) == 1:
            asked.set()
            await stopped.wait()
            if under_way == "unanswered":
                raise TimeoutError("putting a run back in the queue: no answer within 5 s")  # not committed
        if unchecked_cap is not None and counted[0] >= unchecked_cap:
            raise store.RequeueCapped(counted[0])
        counted[0] += unchecked_cap is not None
        seen["requeued"].append(run_id)
        return False

    async def own_unsupervised(pool, supervisor, known):  # the stop's look for starts whose answer was lost: none
        return []

    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(store, "requeue_unstarted", requeue_unstarted)
    monkeypatch.setattr(store, "own_unsupervised", own_unsupervised)
    run_id = uuid.uuid4()
    sched._supervised(a_row(run_id))
    async with asyncio.timeout(10):
        await asked.wait()
        stopping = asyncio.ensure_future(sched.stop())
        await sched.kills[run_id].wait()
        stopped.set()
        await settle(sched)
        await stopping
    # before: caps [3, 3] (answered: [3]), and the run ended '...; put back in the queue 3 times already for its claim
    # check, so not again'
    assert caps == [scheduler_module.UNCHECKED_REQUEUES, None]
    assert seen["requeued"] == [run_id] and seen["ended"] == [] and seen["executed"] == []
    assert counted == [scheduler_module.UNCHECKED_REQUEUES]


class CappedConnection:
    """A connection answering requeue_unstarted's statements: the run found running under `me`, not put back (its
    UPDATE's conditions not met), put back `unchecked_requeues` times already; each statement's args kept."""

    def __init__(self, unchecked_requeues: int) -> None:
        self.unchecked_requeues = unchecked_requeues
        self.statements: list[tuple[str, tuple]] = []

    @contextlib.asynccontextmanager
    async def transaction(self):
        yield

    async def execute(self, query: str, *args: object) -> None:
        self.statements.append((query, args))

    async def fetchrow(self, query: str, *args: object) -> dict | None:
        self.statements.append((query, args))
        if query.startswith("UPDATE"):
            return None
        return {"kill_requested": False, "kill_reason": None, "unchecked_requeues": self.unchecked_requeues,
                "task_killed": False}


class OneConnectionPool(asyncpg.Pool):
    """An asyncpg pool (what the scheduler's deps.pool is) lending `conn`; nothing else set up."""

    def __init__(self, conn: CappedConnection) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout=None):
        yield self.conn


async def test_a_put_back_through_the_pool_is_counted_and_capped():
    """The scheduler puts a run back through its pool (Scheduler._put_back_unchecked: self.deps.pool, an asyncpg.Pool),
    and requeue_unstarted takes a connection from it and calls itself again with it. Before, that call dropped
    `unchecked_cap`: in a running service a put-back for the claim check was counted never (unchecked_requeues stayed
    0) nor capped, so such a run went back to the queue without end; test_task_scheduler_wakeups.py checks the SQL
    with a connection, which took the other branch."""
    conn = CappedConnection(unchecked_requeues=3)
    with pytest.raises(store.RequeueCapped):  # before: None, as a stop's put-back of a run no longer this process's
        await store.requeue_unstarted(OneConnectionPool(conn), uuid.uuid4(), "me", unchecked_cap=3)
    [(_, update_args)] = [(q, a) for q, a in conn.statements if q.startswith("UPDATE")]
    assert update_args[2:] == (1, 3)  # counted, under the cap; before: (0, 2**31 - 1)
