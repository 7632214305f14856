"""The places of a full task-scheduler process go round the workspaces waiting (services/task_scheduler/store.py,
workspaces_waiting; scheduler.py, Scheduler.start_queued): a newer workspace's queued run starts before an older
workspace's second, though the older one's backlog is older and its id lower. Before, the workspaces were offered in
ascending id (`SELECT DISTINCT`'s sort) and each given all the room it could take: the lowest-id workspace with a
backlog took every place freed, and a newer workspace's run waited until that backlog was gone (audit, session 28).

The service's own Scheduler, its runs held until the test lets each end (its `_run` stood in for), on the task
scheduler's migrations in a schema of this test's on the stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest

from services.task_scheduler import runner
from services.task_scheduler.scheduler import Scheduler
from shared.settings import TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.task_scheduler_setup import MIGRATIONS, scheduler_on, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

OLD, NEW = 7, 8  # the old workspace has the lower id, as an older one does


class Held(Scheduler):
    """The service's Scheduler whose runs go on until the test ends them."""

    release: dict[uuid.UUID, asyncio.Event]

    async def _run(self, row) -> runner.RunOutcome:
        await self.release.setdefault(row["id"], asyncio.Event()).wait()
        return runner.RunOutcome("success", 0, None)


@pytest.fixture
async def pool(stack):
    async with service_schema(stack, "task_fair_start", MIGRATIONS) as pool:
        yield pool


async def queue(pool, workspace_id: int, runs: int, queued_seconds_ago: float) -> list[uuid.UUID]:
    """`runs` queued runs of a task of `workspace_id`, queued that long ago (a second apart, in order)."""
    orch_id, task_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO orchestrations (id, workspace_id, sha, file_name, entrypoint, packaging_id,"
                       " owner_id, status) VALUES ($1, $2, 'sha', 'o.zip', 'main.py', $3, 'owner', 'ready')", orch_id,
                       workspace_id, uuid.uuid4())
    await pool.execute("INSERT INTO tasks (id, workspace_id, orch_id, orch_sha, owner_id, args, timeout_seconds) VALUES"
                       " ($1, $2, $3, 'sha', 'owner', $4, 60)", task_id, workspace_id, orch_id, json.dumps({}))
    ids = [uuid.uuid4() for _ in range(runs)]
    for n, run_id in enumerate(ids):
        await pool.execute("INSERT INTO runs (id, task_id, workspace_id, status, created_at) VALUES ($1, $2, $3,"
                           " 'queued', now() - make_interval(secs => $4))", run_id, task_id, workspace_id,
                           queued_seconds_ago - n)
    return ids


async def test_a_full_process_gives_a_freed_place_to_the_workspace_with_fewer_running(pool, tmp_path):
    settings = TaskSettings(tick=60, max_runs_per_process=4, max_concurrent_runs_per_workspace=10)
    process = scheduler_on(Held, pool, tmp_path, "fair", settings, start=False)
    process.release = {}
    started: list[uuid.UUID] = []

    async def start() -> None:
        async with pool.acquire() as conn:
            await process.start_queued(conn)
        started.extend(run_id for run_id in process.runs if run_id not in started)

    async def end(run_id: uuid.UUID) -> None:
        process.release.setdefault(run_id, asyncio.Event()).set()

        async def ended() -> bool:
            return run_id not in process.runs and await pool.fetchval(
                "SELECT status = 'success' FROM runs WHERE id = $1", run_id)

        await until(f"run {run_id} recorded as ended", ended, within=30)

    try:
        old = await queue(pool, OLD, 6, queued_seconds_ago=600)  # a long backlog, queued long ago
        await start()
        assert started == old[:4], started  # the process is full of the old workspace's runs
        new = await queue(pool, NEW, 2, queued_seconds_ago=1)  # then a newer workspace queues two
        for ending in old[:3]:  # places are freed one at a time
            await end(ending)
            await start()
            assert len(process.runs) == 4
        # each went to the workspace with fewer running: the new one's two (the old had 3, then 2 running), then the
        # old one's fifth (1 running against 2); was: old[4], old[5], then nothing left of the old's backlog to start
        assert started[4:] == [new[0], new[1], old[4]], started[4:]
        counts = dict(await pool.fetch("SELECT workspace_id, count(*) FROM runs WHERE status = 'running'"
                                       " GROUP BY workspace_id"))
        assert counts == {OLD: 2, NEW: 2}, counts
    finally:
        for run_id in list(process.runs):
            process.release.setdefault(run_id, asyncio.Event()).set()
        if process.runs:
            await asyncio.wait(list(process.runs.values()), timeout=30)


async def test_an_empty_process_fills_round_the_workspaces(pool, tmp_path):
    """Places free at once (an empty process) are dealt one per workspace in turn, not all to the first workspace."""
    settings = TaskSettings(tick=60, max_runs_per_process=4, max_concurrent_runs_per_workspace=10)
    process = scheduler_on(Held, pool, tmp_path, "fill", settings, start=False)
    process.release = {}
    old = await queue(pool, OLD, 6, queued_seconds_ago=600)
    new = await queue(pool, NEW, 2, queued_seconds_ago=10)
    try:
        async with pool.acquire() as conn:
            await process.start_queued(conn)
        assert list(process.runs) == [old[0], new[0], old[1], new[1]], list(process.runs)  # was: old[:4]
    finally:
        for run_id in list(process.runs):
            process.release.setdefault(run_id, asyncio.Event()).set()
        if process.runs:
            await asyncio.wait(list(process.runs.values()), timeout=30)


async def test_a_workspace_at_its_limit_is_not_offered_a_place(pool, tmp_path):
    """A workspace running its limit already is left out of the round (store.workspaces_waiting's `limit`): its
    start_queued would start nothing, and every round of every pass opened a transaction for it. Seen here: with that
    workspace's advisory lock held elsewhere, the start step does not find it busy (it did, having tried it)."""
    from services.task_scheduler import store

    settings = TaskSettings(tick=60, max_runs_per_process=4, max_concurrent_runs_per_workspace=2)
    process = scheduler_on(Held, pool, tmp_path, "limit", settings, start=False)
    process.release = {}
    old = await queue(pool, OLD, 4, queued_seconds_ago=600)
    try:
        async with pool.acquire() as conn:
            await process.start_queued(conn)
        assert list(process.runs) == old[:2]  # the limit: 2 of OLD's, 2 places of the process left
        new = await queue(pool, NEW, 1, queued_seconds_ago=1)
        async with pool.acquire() as conn:
            assert await store.workspaces_waiting(conn, 2) == [NEW]
            assert await store.workspaces_waiting(conn) == [NEW, OLD]
        async with pool.acquire() as holder, holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1, $2::int)", store.WORKSPACE_LOCK, OLD)
            async with pool.acquire() as conn:
                busy = await process.start_queued(conn)
        assert list(process.runs) == [*old[:2], new[0]]
        assert busy is False, "the workspace at its limit was tried (and found locked)"
    finally:
        for run_id in list(process.runs):
            process.release.setdefault(run_id, asyncio.Event()).set()
        if process.runs:
            await asyncio.wait(list(process.runs.values()), timeout=30)


async def test_a_scheduled_task_whose_last_runs_all_wait_reads_started_after_an_older_run(pool):
    """A task reads `pending` until a run of it leaves the queue (64fd7ec8): a scheduled task whose last LAST_RUNS runs
    all wait for room (its max_queued above that) is asked of the database for an older run that left the queue
    (store.with_runs_out_of_queue), whose SQL tests/unit/test_task_status_queued.py stands in for. Here on PostgreSQL,
    through handlers._records as task/list asks it: the task whose oldest run started reads started, the one whose runs
    all wait pending (review of 64fd7ec8; 0.1 s on this file's schema)."""
    from types import SimpleNamespace

    from services.task_scheduler import handlers, store

    ran, waiting = [await queue(pool, workspace, handlers.LAST_RUNS + 2, 100.0) for workspace in (OLD, NEW)]
    await pool.execute("UPDATE runs SET status = 'success', started_at = now(), finished_at = now() WHERE id = $1",
                       ran[0])  # the oldest: behind LAST_RUNS + 1 queued ones
    await pool.execute("UPDATE tasks SET schedule = '* * * * *', next_fire = now()")
    rows = await pool.fetch("SELECT * FROM tasks WHERE id IN (SELECT task_id FROM runs WHERE id = ANY($1::uuid[]))"
                            " ORDER BY workspace_id", [ran[0], waiting[0]])
    records = await handlers._records(SimpleNamespace(pool=pool, settings=TaskSettings()), rows)
    assert [(r.status, [x.status for x in r.last_runs]) for r in records] == [
        ("started", ["queued"] * handlers.LAST_RUNS), ("pending", ["queued"] * handlers.LAST_RUNS)]
    assert await store.with_runs_out_of_queue(pool, [rows[1]["id"], uuid.uuid4()]) == set()


async def test_last_runs_are_each_tasks_newest_runs_ties_in_id_order(pool):
    """store.last_runs (task/list's and task/get's `last_runs`): each task's LAST_RUNS newest runs, whatever their
    status, newest first (created_at DESC, then id), a task's own only; a task without runs absent, an id given twice
    answered once. Since session 42 a LATERAL ORDER BY ... LIMIT per task on index runs_task, a window function over
    every run of the tasks before (docs/performance.md, item 109): the answer is the same. Pinned on PostgreSQL (the
    order of uuids and of equal timestamps is its own): a task with more runs than the limit and 6 runs created at one
    moment across the limit's edge, written in descending id order (the index's order of equal keys is the rows'), and
    another task whose 3 runs are newer than all of them (a limit over all tasks would answer those first). `started`
    (cfe08b33: started_at set, what a scheduled task's status reads) is pinned too: a run that ended after its start
    was started, a run replaced while it waited (`failure`, run 4) was not (review of cfe08b33: only fake runs said
    so: a `started` true for running runs only would make a scheduled task of a few runs, the last one ended, read
    `pending`)."""
    from services.task_scheduler import handlers, store

    await queue(pool, OLD, 0, 0)  # an orchestration and a task (`many`), and two more tasks of it
    many, newer, none = await pool.fetchval("SELECT id FROM tasks"), uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO tasks (id, workspace_id, orch_id, orch_sha, owner_id, args, timeout_seconds)"
                       " SELECT unnest($1::uuid[]), workspace_id, orch_id, orch_sha, owner_id, args, 60 FROM tasks"
                       " WHERE id = $2", [newer, none], many)
    now = await pool.fetchval("SELECT date_trunc('second', now())")
    tie = now - timedelta(minutes=1)
    statuses = ["queued", "running", "success", "failure"]
    made: dict = {many: [], newer: []}
    # 7 distinct moments, then 6 runs at `tie` (runs 8-13: the limit of 10 takes 3 of them), then 2 older ones
    moments = [now - timedelta(seconds=n) for n in range(7)] + [tie] * 6 + [tie - timedelta(seconds=n) for n in (1, 2)]
    ids = [uuid.uuid4() for _ in moments]
    ids[7:13] = sorted(ids[7:13], reverse=True)
    for n, (run_id, at) in enumerate(zip(ids, moments, strict=True)):  # each started but the queued ones and run 4
        made[many].append((run_id, statuses[n % 4], at, n % 4 != 0 and n != 3))
    made[newer] = [(uuid.uuid4(), statuses[n + 1], now + timedelta(seconds=n + 1), True) for n in range(3)]
    for task_id, rows in made.items():
        for run_id, status, at, started in rows:
            await pool.execute("INSERT INTO runs (id, task_id, workspace_id, status, created_at, started_at) VALUES"
                               " ($1, $2, $3, $4, $5, $6)", run_id, task_id, OLD, status, at, at if started else None)
    answer = await store.last_runs(pool, [many, newer, none, many], handlers.LAST_RUNS)
    assert set(answer) == {many, newer}
    for task_id, rows in made.items():
        expected = sorted(rows, key=lambda r: (-r[2].timestamp(), r[0]))[:handlers.LAST_RUNS]
        assert [(r["id"], r["status"], r["created_at"], r["running"], r["started"]) for r in answer[task_id]] == [
            (run_id, status, at, status in ("queued", "running"), started) for run_id, status, at, started in expected]
        assert {r["task_id"] for r in answer[task_id]} == {task_id}
    assert [r["id"] for r in answer[many]][7:] == sorted(ids[7:13])[:3]  # the ties' first three by id
    assert len(answer[many]) == handlers.LAST_RUNS and len(made[many]) > handlers.LAST_RUNS


async def test_a_scheduled_task_whose_runs_were_replaced_while_queued_reads_pending(pool):
    """A run replaced by the next point while it waited for room (a replace policy: store.replace_active, `failure`,
    never started) has not left the queue: its task reads `pending` while nothing of it has started, through its last
    runs and, none of its last LAST_RUNS started, through store.with_runs_out_of_queue. Before (64fd7ec8) any run not
    `queued` counted: a task whose only run was replaced read `started`, nothing run, its next run queued."""
    from types import SimpleNamespace

    from services.task_scheduler import handlers, store
    from services.task_scheduler.scheduler import REPLACED

    once, crowded = [await queue(pool, workspace, runs, 100.0) for workspace, runs in ((OLD, 1), (NEW, 30))]
    await pool.execute("UPDATE tasks SET schedule = '* * * * *', next_fire = now(), concurrency_policy = 'replace'")
    rows = await pool.fetch("SELECT * FROM tasks ORDER BY workspace_id")
    point = await pool.fetchval("SELECT date_trunc('minute', now())")
    async with pool.acquire() as conn, conn.transaction():  # the next point of the first task, as fire_due makes it
        assert await store.fire(conn, rows[0]["id"], OLD, point)
        assert await store.replace_active(conn, rows[0]["id"], OLD, point, f"{REPLACED} {point.isoformat()}") == (1, 0)
    # the second: each of its runs replaced while it waited by the next, as replace_active leaves them
    await pool.execute("UPDATE runs SET status = 'failure', reason = 'replaced', finished_at = now() WHERE id ="
                       " ANY($1::uuid[])", crowded[:-1])
    records = await handlers._records(SimpleNamespace(pool=pool, settings=TaskSettings()), rows)
    assert [(r.status, [x.status for x in r.last_runs]) for r in records] == [
        ("pending", ["queued", "failure"]), ("pending", ["queued"] + ["failure"] * (handlers.LAST_RUNS - 1))]
    assert await store.with_runs_out_of_queue(pool, [rows[1]["id"]]) == set()
    assert once[0] in {r.run_id for r in records[0].last_runs}
