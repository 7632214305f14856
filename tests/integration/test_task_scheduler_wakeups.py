"""The task scheduler sleeps until something can be due and is woken by PostgreSQL notifications (scheduler.py).

Two `Scheduler`s run in this process against the test stack's real PostgreSQL, in a schema of their own (so the
stack's own scheduler never sees these rows), with the fallback poll (`tick`) at a minute: whatever they do within
seconds, a notification or a due point woke them for. Only the run itself is a stand-in (`_run` waits for its kill
or its length, instead of a sandbox): the loop, its SQL and its notifications are the service's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from services.task_scheduler import runner, store
from services.task_scheduler.scheduler import Scheduler
from shared import subjects
from shared.settings import TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.task_scheduler_setup import MIGRATIONS, scheduler_on

pytestmark = pytest.mark.timeout(120)

WORKSPACE = 7

# How soon a notification must have woken a scheduler. The fallback poll is a minute away, so anything well under it
# can only be the notification; the bound is loose because a loaded 2-core machine delays every pass (this is not a
# speed claim).
WAKE = 10


class StandInRuns(Scheduler):
    """A scheduler whose runs take `seconds` from the task's args (or until killed), recording when they ran, and
    whose environment installs end when `install_gate` is set."""

    spans: list[tuple[uuid.UUID, float, float]]
    installed: list[str]
    install_gate: asyncio.Event

    async def _install_one(self, env: asyncpg.Record) -> None:
        self.installed.append(env["requirements_sha"])
        await self.install_gate.wait()
        try:
            await store.finish_env(self.deps.pool, env["requirements_sha"], self.identity, True, None)
        finally:
            self.wake()

    async def _run(self, row: asyncpg.Record) -> runner.RunOutcome:
        task = await store.task(self.deps.pool, row["task_id"])
        seconds = float(__import__("json").loads(task["args"])["seconds"])
        begun = time.monotonic()
        try:
            await asyncio.wait_for(self.kills[row["id"]].wait(), seconds)
            return runner.RunOutcome("failure", None, runner.KILLED)
        except TimeoutError:
            return runner.RunOutcome("success", 0, None)
        finally:
            self.spans.append((row["task_id"], begun, time.monotonic()))


@pytest.fixture
async def database(stack):
    async with service_schema(stack, "task_scheduler_wake", MIGRATIONS) as pool:
        orch_id = uuid.uuid4()
        await store.insert_orchestration(pool, id=orch_id, workspace_id=WORKSPACE, sha="0" * 64, name=None,
                                         file_name="o.zip", entrypoint="main.py", requirements_sha=None,
                                         owner_id="u", status="ready", reason=None)
        yield pool, orch_id


def scheduler(pool: asyncpg.Pool, tmp_path: Path, spans: list, name: str) -> StandInRuns:
    settings = TaskSettings(tick=60, heartbeat_interval=0.5, supervisor_lost_after=2,
                            max_concurrent_runs_per_workspace=2, max_runs_per_process=4)
    made = scheduler_on(StandInRuns, pool, tmp_path / name, name, settings, start=False)
    made.spans, made.installed, made.install_gate = spans, [], asyncio.Event()
    made.install_gate.set()
    made.start()
    return made


async def new_task(pool: asyncpg.Pool, orch_id: uuid.UUID, seconds: float, schedule: str | None = None) -> uuid.UUID:
    task_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        next_fire = None
        if schedule is not None:
            now = await conn.fetchval("SELECT now()")
            next_fire = now.replace(microsecond=0) + timedelta(seconds=1)
        await store.insert_task(conn, id=task_id, workspace_id=WORKSPACE, orch_id=orch_id, orch_sha="0" * 64,
                                name=None, owner_id="u", args={"seconds": seconds}, timeout_seconds=60,
                                schedule=schedule, missed_run_policy=None, next_fire=next_fire)
        if schedule is None:
            await store.queue_once(conn, task_id, WORKSPACE)
    return task_id


async def stale_env(pool: asyncpg.Pool, sha: str, beat_ago: float) -> None:
    """An environment being installed by a process that stopped beating `beat_ago` seconds ago."""
    await pool.execute(
        "INSERT INTO envs (requirements_sha, requirements, status, worker, heartbeat_at) "
        "VALUES ($1, '', 'installing', 'gone', now() - make_interval(secs => $2))", sha, beat_ago)


async def settled(pool: asyncpg.Pool, task_id: uuid.UUID, status: set[str], within: float) -> asyncpg.Record:
    deadline = time.monotonic() + within
    while True:
        rows = await store.runs_of(pool, task_id, None, 1)
        if rows and rows[0]["status"] in status:
            return rows[0]
        assert time.monotonic() < deadline, (status, rows)
        await asyncio.sleep(0.05)


async def test_sleeping_schedulers_are_woken_for_each_kind_of_work(database, tmp_path):
    pool, orch = database
    spans: list = []
    first, second = scheduler(pool, tmp_path, spans, "first"), scheduler(pool, tmp_path, spans, "second")
    try:
        await asyncio.sleep(1)  # both past their first pass
        # idle: no pass at all (the old loop made one every tick)
        passes = first.passes + second.passes
        await asyncio.sleep(2)
        assert first.passes + second.passes == passes
        # a queued run: started and finished at once, though the poll is a minute away
        task = await new_task(pool, orch, 0.1)
        assert (await settled(pool, task, {"success"}, WAKE))["status"] == "success"
        # four runs in one workspace: two at a time, oldest first, each started when a place frees up
        spans.clear()
        queued = [await new_task(pool, orch, 0.5) for _ in range(4)]
        for task in queued:
            await settled(pool, task, {"success"}, 2 + WAKE)
        spans.sort(key=lambda s: s[1])
        assert [s[0] for s in spans[:2]] == queued[:2] or set(s[0] for s in spans[:2]) == set(queued[:2]), spans
        assert set(s[0] for s in spans[2:]) == set(queued[2:]), spans
        assert max(sum(b <= moment < e for _, b, e in spans) for _, moment, _ in spans) == 2, spans
        # schedule points: each fired once, on time, by whichever scheduler took it
        every = await new_task(pool, orch, 0.05, schedule="* * * * * */1")
        # until three points have fired (it was a 6-s sleep); within seconds, the fallback poll a minute away
        fired_by = time.monotonic() + 2 + WAKE
        while len({r["scheduled_for"] for r in await store.runs_of(pool, every, None, None)}) < 3:
            assert time.monotonic() < fired_by, await store.runs_of(pool, every, None, None)
            await asyncio.sleep(0.05)
        await store.kill_task(pool, every)
        points = Counter(r["scheduled_for"] for r in await store.runs_of(pool, every, None, None))
        assert all(n == 1 for n in points.values()) and len(points) >= 3, points
        # points of the schedule, each once; a pass delayed past the next point (a loaded machine) fires only the
        # latest one, so a gap may be two seconds or more, never a fraction
        moments = sorted(points)
        assert all((b - a).total_seconds() >= 1 and (b - a).total_seconds() % 1 == 0
                   for a, b in zip(moments, moments[1:], strict=False)), moments
        # a kill of a running run: its supervisor hears it at the kill's commit
        task = await new_task(pool, orch, 60)
        await settled(pool, task, {"running"}, WAKE)
        killed_at = time.monotonic()
        await store.kill_task(pool, task)
        run = await settled(pool, task, {"failure"}, WAKE)
        assert run["reason"] == runner.KILLED and time.monotonic() - killed_at < WAKE, run
        # a supervisor that stops beating (its loop and run are gone, as in a kill -9): the other one wakes at the
        # heartbeat's deadline and fails the run
        task = await new_task(pool, orch, 60)
        run = await settled(pool, task, {"running"}, WAKE)
        by = time.monotonic() + WAKE
        while run["id"] not in first.runs and run["id"] not in second.runs:  # its start's answer on its way
            assert time.monotonic() < by, dict(run)
            await asyncio.sleep(0.01)
        dead = first if run["id"] in first.runs else second
        # its loop ended before its run's task is cancelled and its connection closed. Before, all three at once: a
        # cancel the loop lost (its pass's transaction rolling back on the connection closed here raised that error
        # in the cancel's place; or wait_for's, bpo-42130) left it making passes, and the next one adopted the run
        # whose task was cancelled as a start whose answer was lost (adopt_unanswered): run again, never failed
        # (seen once in session 33's review)
        while not dead._loop.done():
            dead._loop.cancel()
            await asyncio.wait({dead._loop}, timeout=0.1)
        dead.runs[run["id"]].cancel()
        await dead._drop_connection()
        gone_at = time.monotonic()
        run = await settled(pool, task, {"failure"}, 2 + WAKE)
        assert "supervising the run died" in run["reason"], run
        assert time.monotonic() - gone_at < 2 + WAKE, run  # supervisor_lost_after 2 s
        # an environment whose installer stopped beating: claimed at its deadline
        alive = second if dead is first else first
        alive.install_gate.clear()
        await stale_env(pool, "a", 2 - 1)
        alive.wake()  # a pass sees its heartbeat (a claim sends no notification: the tick would, within 5 s)
        claimed_by = time.monotonic() + 1 + WAKE
        while alive.installed != ["a"]:
            assert time.monotonic() < claimed_by, alive.installed
            await asyncio.sleep(0.05)
        # another one past its deadline while this process's installer is busy: no spin, and it is taken the
        # moment the installer is free
        await stale_env(pool, "b", 10)
        passes = alive.passes
        alive.wake()  # as any notification would
        await asyncio.sleep(1)
        assert alive.passes - passes <= 3, alive.passes - passes
        alive.install_gate.set()
        freed_at = time.monotonic()
        while alive.installed != ["a", "b"]:
            assert time.monotonic() - freed_at < WAKE, alive.installed
            await asyncio.sleep(0.05)
    finally:
        for made in (first, second):
            if not made._loop.done():
                await made.stop()
            else:
                await made._drop_connection()


async def policy_task(pool: asyncpg.Pool, orch_id: uuid.UUID, workspace: int, policy: str | None,
                      max_queued: int | None = None, seconds: float = 60) -> uuid.UUID:
    """A per-second task of its own workspace with `policy` and `max_queued`, its runs taking `seconds`."""
    task_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        now = await conn.fetchval("SELECT now()")
        await store.insert_task(conn, id=task_id, workspace_id=workspace, orch_id=orch_id, orch_sha="0" * 64,
                                name=None, owner_id="u", args={"seconds": seconds}, timeout_seconds=60,
                                schedule="* * * * * */1", missed_run_policy=None,
                                next_fire=now.replace(microsecond=0) + timedelta(seconds=1),
                                concurrency_policy=policy, max_queued=max_queued)
    return task_id


async def test_concurrency_policies_and_a_start_whose_answer_was_lost(database, tmp_path):
    """Each concurrency policy's SQL on PostgreSQL (scheduler.fire_due's branches are unit-tested in
    test_task_concurrency_policy.py), a killed task's pending_kill read over all its runs (store.with_active_runs),
    and a run started under a live scheduler's identity that it never heard of (a start whose answer was lost): the
    scheduler runs it. Per-second points, 60-s stand-in runs, each task in a workspace of its own (limit 2)."""
    from services.task_scheduler.scheduler import REPLACED

    pool, orch = database
    # room for every run at once (each policy's workspace at its limit, a replaced run still stopping): a run waiting
    # for the process's room would read as its policy's doing
    settings = TaskSettings(tick=60, heartbeat_interval=0.5, supervisor_lost_after=2,
                            max_concurrent_runs_per_workspace=2, max_runs_per_process=8)
    sched = scheduler_on(StandInRuns, pool, tmp_path / "policies", "policies", settings, start=False)
    sched.spans, sched.installed, sched.install_gate = [], [], asyncio.Event()
    sched.install_gate.set()
    sched.start()
    try:
        forbid = await policy_task(pool, orch, 11, "forbid")
        replace = await policy_task(pool, orch, 12, "replace")
        allow = await policy_task(pool, orch, 13, "allow", max_queued=1)
        # four points of each have passed (next_fire 4 s past the first run's point)
        by = time.monotonic() + 4 + WAKE
        while True:
            rows = await pool.fetch("SELECT t.id, t.next_fire - min(r.scheduled_for) AS past FROM tasks t JOIN runs r"
                                    " ON r.task_id = t.id WHERE t.id = ANY($1::uuid[]) GROUP BY t.id",
                                    [forbid, replace, allow])
            if len(rows) == 3 and all(r["past"] >= timedelta(seconds=4) for r in rows):
                break
            assert time.monotonic() < by, rows
            await asyncio.sleep(0.1)
        # forbid: one run, the others skipped while it runs
        runs = await store.runs_of(pool, forbid, None, None)
        assert [r["status"] for r in runs] == ["running"], [dict(r) for r in runs]
        # allow with max_queued 1: the workspace's 2 running and 1 waiting, no more
        runs = await store.runs_of(pool, allow, None, None)
        assert sorted(r["status"] for r in runs) == ["queued", "running", "running"], [dict(r) for r in runs]
        # replace: each point's run replaced the one before; all but the newest ended with the reason
        by = time.monotonic() + WAKE
        while True:
            runs = await store.runs_of(pool, replace, None, None, paged=True)  # newest first
            older = runs[1:]
            if len(runs) >= 3 and all(r["status"] == "failure" for r in older):
                break
            assert time.monotonic() < by, [dict(r) for r in runs]
            await asyncio.sleep(0.1)
        assert runs[0]["status"] in ("queued", "running") and runs[0]["reason"] is None, dict(runs[0])
        assert all(r["reason"] == f"{REPLACED} {n['scheduled_for'].isoformat()} (concurrency_policy replace)"
                   for r, n in zip(older, runs, strict=False)), [(dict(r), n["scheduled_for"]) for r, n in
                                                                  zip(older, runs, strict=False)]
        assert any(r["started_at"] is not None for r in older), [dict(r) for r in older]  # a running one stopped
        # the tasks with a run queued or running, over all their runs (what pending_kill is read from), and a
        # killed one's once its runs have stopped
        tasks = [{"id": forbid, "workspace_id": 11}, {"id": replace, "workspace_id": 12},
                 {"id": allow, "workspace_id": 13}, {"id": uuid.uuid4(), "workspace_id": 13}]
        assert await store.with_active_runs(pool, tasks) == {forbid, replace, allow}
        await store.kill_task(pool, allow)
        by = time.monotonic() + WAKE
        while (active := await store.with_active_runs(pool, tasks)) != {forbid, replace}:
            assert time.monotonic() < by, active
            await asyncio.sleep(0.1)
        for task in (forbid, replace):
            await store.kill_task(pool, task)
        # a start whose answer was lost: the run is `running` under the scheduler's identity, which never had it
        task = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            await store.insert_task(conn, id=task, workspace_id=14, orch_id=orch, orch_sha="0" * 64, name=None,
                                    owner_id="u", args={"seconds": 0.1}, timeout_seconds=60, schedule=None,
                                    missed_run_policy=None, next_fire=None)
            await conn.execute("INSERT INTO runs (id, task_id, workspace_id, status, supervisor, heartbeat_at,"
                               " started_at) VALUES ($1, $2, 14, 'running', $3, now(), now())", uuid.uuid4(), task,
                               sched.identity)  # as store.start_queued's committed UPDATE, no notification
        sched.wake()  # its next pass
        run = await settled(pool, task, {"success", "failure"}, WAKE)
        assert (run["status"], run["reason"]) == ("success", None), dict(run)  # was: failed, "supervising ... died"
        # store.requeue_unstarted's SQL: runs started under another process (beaten an hour ahead: never lost here)
        # that it never ran. One asked nothing goes back to the queue, and this scheduler runs it; one a replace
        # flagged answers the replace's reason, and after task/kill (which clears that reason) True, both left running
        flagged = [uuid.uuid4(), uuid.uuid4()]
        async with pool.acquire() as conn, conn.transaction():
            for workspace in (15, 16):
                await store.insert_task(conn, id=flagged[workspace - 15], workspace_id=workspace, orch_id=orch,
                                        orch_sha="0" * 64, name=None, owner_id="u", args={"seconds": 0.1},
                                        timeout_seconds=60, schedule=None, missed_run_policy=None, next_fire=None)
            back, kept = uuid.uuid4(), uuid.uuid4()
            for run_id, task_id, workspace, kill in ((back, flagged[0], 15, False), (kept, flagged[1], 16, True)):
                await conn.execute("INSERT INTO runs (id, task_id, workspace_id, status, supervisor, heartbeat_at,"
                                   " started_at, kill_requested, kill_reason) VALUES ($1, $2, $3, 'running', 'other',"
                                   " now() + interval '1 hour', now(), $4, $5)", run_id, task_id, workspace, kill,
                                   "replaced by X" if kill else None)
        assert await store.requeue_unstarted(pool, back, sched.identity) is None  # not its supervisor's
        assert await store.requeue_unstarted(pool, kept, "other") == "replaced by X"
        await store.kill_task(pool, flagged[1])
        assert await store.requeue_unstarted(pool, kept, "other") is True
        row = await pool.fetchrow("SELECT status, kill_reason FROM runs WHERE id = $1", kept)
        assert (row["status"], row["kill_reason"]) == ("running", None), dict(row)
        assert await store.requeue_unstarted(pool, back, "other") is False
        assert await store.requeue_unstarted(pool, back, "other") is None  # again (an answer lost): nothing
        run = await settled(pool, flagged[0], {"success", "failure"}, WAKE)  # started again, by this scheduler
        assert (run["status"], run["reason"], run["supervisor"]) == ("success", None, sched.identity), dict(run)
        await pool.execute("UPDATE runs SET status = 'failure', finished_at = now() WHERE id = $1", kept)
        # a put-back racing task/kill: store.kill_task's statements (the task killed, its queued runs failed, then its
        # running ones flagged) in an open transaction, the put-back asked between the last two. It waits for the
        # task's row lock and then finds the run flagged; before, it committed at once, the flag found no running run
        # and the killed task's run was queued again (started, its main.py run, after task/kill answered)
        raced, racing = uuid.uuid4(), uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            await store.insert_task(conn, id=raced, workspace_id=17, orch_id=orch, orch_sha="0" * 64, name=None,
                                    owner_id="u", args={"seconds": 0.1}, timeout_seconds=60, schedule=None,
                                    missed_run_policy=None, next_fire=None)
            await conn.execute("INSERT INTO runs (id, task_id, workspace_id, status, supervisor, heartbeat_at,"
                               " started_at) VALUES ($1, $2, 17, 'running', 'other', now() + interval '1 hour',"
                               " now())", racing, raced)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE tasks SET killed = true, next_fire = NULL, updated_at = now() WHERE id = $1",
                               raced)
            await conn.execute("UPDATE runs SET status = 'failure', reason = 'killed before it started', finished_at ="
                               " now(), updated_at = now() WHERE task_id = $1 AND status = 'queued'", raced)
            putting_back = asyncio.ensure_future(store.requeue_unstarted(pool, racing, "other"))
            by = time.monotonic() + WAKE
            while not putting_back.done() and not await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type ="
                    " 'Lock' AND query LIKE '%FOR SHARE%'"):  # it committed, or it waits for the task's lock
                assert time.monotonic() < by
                await asyncio.sleep(0.02)
            await conn.execute("UPDATE runs SET kill_requested = true, kill_reason = NULL, updated_at = now()"
                               " WHERE task_id = $1 AND status = 'running'", raced)
        assert await asyncio.wait_for(putting_back, WAKE) is True  # task/kill asked: not put back
        row = await pool.fetchrow("SELECT status, kill_requested FROM runs WHERE id = $1", racing)
        assert (row["status"], row["kill_requested"]) == ("running", True), dict(row)  # was: queued, False
        await pool.execute("UPDATE runs SET status = 'failure', finished_at = now() WHERE id = $1", racing)
        await put_back_over_max_queued(pool, orch, sched)
        await a_statement_timeout_holds_its_task_alone(pool, orch, sched)
    finally:
        await sched.stop()


async def put_back_over_max_queued(pool: asyncpg.Pool, orch_id: uuid.UUID, sched: Scheduler) -> None:
    """A run put back in the queue of a task that has max_queued runs waiting already (allow, max_queued 1): put back
    all the same (it was queued within the bound, not a new run), with its events.task_run.queued in the outbox (the
    lineage card's status: it read `running` until the run started again); the task's next point then makes no run
    (its queue read full), and one that comes once the queue is empty does. Then the same run put back for its claim
    check (counted, up to a cap: store.RequeueCapped). In one transaction rolled back at the end
    (now() is its start: the points are relative to it), so the running scheduler never sees these rows."""
    task, waiting, put_back = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await store.insert_task(conn, id=task, workspace_id=18, orch_id=orch_id, orch_sha="0" * 64, name=None,
                                    owner_id="u", args={"seconds": 0.1}, timeout_seconds=60,
                                    schedule="* * * * * */1", missed_run_policy=None,
                                    next_fire=await conn.fetchval("SELECT now() - interval '2 s'"),
                                    concurrency_policy="allow", max_queued=1)
            await conn.execute("INSERT INTO runs (id, task_id, workspace_id, status) VALUES ($1, $2, 18, 'queued')",
                               waiting, task)
            await conn.execute("INSERT INTO runs (id, task_id, workspace_id, status, supervisor, heartbeat_at,"
                               " started_at) VALUES ($1, $2, 18, 'running', 'other', now(), now())", put_back, task)
            assert await store.requeue_unstarted(conn, put_back, "other") is False  # not refused for the bound
            assert await store.queued_of_task(conn, task, 18, 1) == 1  # two waiting: counted up to the bound
            [event] = await conn.fetch("SELECT subject, payload FROM outbox WHERE payload->>'run_id' = $1",
                                       str(put_back))
            payload = json.loads(event["payload"])
            assert (event["subject"], payload["status"], payload["reason"], payload["task_id"]) == (
                subjects.EVENT_TASK_RUN_QUEUED, "queued", store.PUT_BACK, str(task)), dict(event)
            before = await conn.fetchval("SELECT next_fire FROM tasks WHERE id = $1", task)
            await sched.fire_due(conn)  # over the bound: the point makes no run, the schedule goes on
            runs = await store.runs_of(conn, task, None, None)
            assert sorted(r["id"] for r in runs) == sorted([waiting, put_back]), [dict(r) for r in runs]
            assert await conn.fetchval("SELECT next_fire FROM tasks WHERE id = $1", task) > before
            # the queue emptied (both started): the next point is queued again
            await conn.execute("UPDATE runs SET status = 'running', supervisor = 'other', started_at = now()"
                               " WHERE task_id = $1", task)
            await conn.execute("UPDATE tasks SET next_fire = now() - interval '1 s' WHERE id = $1", task)
            await sched.fire_due(conn)
            assert [r["status"] for r in await store.runs_of(conn, task, "queued", None)] == ["queued"]
            # put back for its claim check (unchecked_cap; Scheduler._put_back_unchecked): counted, the stop's put-back
            # above not, its event saying why; at the cap RequeueCapped, the run left running for its end's record
            assert await store.requeue_unstarted(conn, put_back, "other", unchecked_cap=1) is False
            await conn.execute("UPDATE runs SET status = 'running', supervisor = 'other' WHERE id = $1", put_back)
            with pytest.raises(store.RequeueCapped):
                await store.requeue_unstarted(conn, put_back, "other", unchecked_cap=1)
            row = await conn.fetchrow("SELECT status, unchecked_requeues FROM runs WHERE id = $1", put_back)
            assert (row["status"], row["unchecked_requeues"]) == ("running", 1), dict(row)
            reasons = Counter(json.loads(e["payload"])["reason"] for e in await conn.fetch(
                "SELECT payload FROM outbox WHERE payload->>'run_id' = $1", str(put_back)))
            assert reasons == {store.PUT_BACK: 1, store.UNCHECKED_PUT_BACK: 1}, reasons
            # a run the claimer still has a task for (`supervised`: that task's put-back, its answer lost, is retried)
            # is not claimed again by it (Scheduler.start_queued); the others are
            [queued] = [r["id"] for r in await store.runs_of(conn, task, "queued", None)]
            assert await store.start_queued(conn, 18, 100, 100, "other", supervised=[queued]) == []
            assert [r["id"] for r in await store.start_queued(conn, 18, 100, 100, "other")] == [queued]
            # with another run queued beside it (put_back, by a stop's put-back: not counted, so not held by its cap),
            # the supervised one alone is left out: the other is claimed
            assert await store.requeue_unstarted(conn, put_back, "other") is False
            await conn.execute("UPDATE runs SET status = 'queued', supervisor = NULL WHERE id = $1", queued)
            assert [r["id"] for r in await store.start_queued(conn, 18, 100, 100, "other", supervised=[queued])] == [
                put_back]
            # a kill asked answers before the cap: the kill's reason, nothing written, no RequeueCapped
            await conn.execute("UPDATE runs SET kill_requested = true, kill_reason = 'replaced' WHERE id = $1",
                               put_back)
            assert await store.requeue_unstarted(conn, put_back, "other", unchecked_cap=1) == "replaced"
            # not this supervisor's claim: nothing written, not counted, no RequeueCapped
            await conn.execute("UPDATE runs SET kill_requested = false, kill_reason = NULL WHERE id = $1", put_back)
            assert await store.requeue_unstarted(conn, put_back, "another", unchecked_cap=5) is None
            row = await conn.fetchrow("SELECT status, supervisor, unchecked_requeues FROM runs WHERE id = $1",
                                      put_back)
            assert tuple(row) == ("running", "other", 1), dict(row)
        finally:
            await transaction.rollback()


async def a_statement_timeout_holds_its_task_alone(pool: asyncpg.Pool, orch_id: uuid.UUID, sched: Scheduler) -> None:
    """A statement of one task's point cancelled by PostgreSQL for its statement_timeout (57014, as a role's setting
    does; the savepoint rolls the setting back with it): that task is held (Scheduler.held) and the pass's other task
    fires, in the same transaction, which PostgreSQL lets go on. Before session 40 the 57014 failed the pass
    (scheduler.PASS_ERRORS) and no task fired. In one transaction rolled back at the end, as put_back_over_max_queued's
    rows."""
    slow, other = uuid.uuid4(), uuid.uuid4()
    fire = store.fire

    async def fire_slowly(conn: asyncpg.Connection, task_id: uuid.UUID, workspace_id: int, point) -> bool:
        if task_id == slow:
            await conn.execute("SET LOCAL statement_timeout = '50ms'")
            await conn.execute("SELECT pg_sleep(2)")
        return await fire(conn, task_id, workspace_id, point)

    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        store.fire = fire_slowly  # the running scheduler's passes see neither task (not committed): fire as before
        try:
            past = await conn.fetchval("SELECT now() - interval '2 s'")
            timeout = await conn.fetchval("SHOW statement_timeout")
            for task_id, workspace in ((slow, 19), (other, 20)):
                await store.insert_task(conn, id=task_id, workspace_id=workspace, orch_id=orch_id, orch_sha="0" * 64,
                                        name=None, owner_id="u", args={"seconds": 0.1}, timeout_seconds=60,
                                        schedule="* * * * * */1", missed_run_policy=None, next_fire=past)
            await sched.fire_due(conn)  # before: QueryCanceledError
            assert slow in sched.held
            assert await store.runs_of(conn, slow, None, None) == []
            assert await conn.fetchval("SELECT next_fire FROM tasks WHERE id = $1", slow) == past  # not handled
            assert [r["status"] for r in await store.runs_of(conn, other, None, None)] == ["queued"]
            assert await conn.fetchval("SHOW statement_timeout") == timeout  # the savepoint took the setting back
        finally:
            store.fire = fire
            sched.held.pop(slow, None)
            await transaction.rollback()
