"""A start whose answer was lost (store.start_queued's transaction committed, then the connection dropped before its
rows came back: the pass failed, no supervisor made) is supervised by its process at the next pass
(Scheduler.adopt_unanswered). Before, the run stayed `running` under a live process that did not know it, unbeaten,
and was failed SUPERVISOR_LOST_AFTER later as "the task scheduler process supervising the run died", its main.py
never run. A run whose end the process could not record ran already: it is not run again. The SQL
(store.own_unsupervised) runs on PostgreSQL in tests/integration/test_task_scheduler_wakeups.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

from services.task_scheduler import runner, store
from services.task_scheduler.scheduler import Scheduler

STARTED = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)


class Ran(Scheduler):
    ran: list

    async def _run(self, row):
        self.ran.append(row["id"])
        return runner.RunOutcome("success", 0, None)


def scheduler(monkeypatch, running: list[uuid.UUID], finish_fails: bool = False,
              at_most: int = 8) -> tuple[Ran, dict]:
    """A scheduler whose identity has `running` runs in the database (store.own_unsupervised reads them, less those
    it is told it knows)."""
    seen: dict = {"asked": [], "ended": []}

    async def own_unsupervised(conn, supervisor, known):
        seen["asked"].append((supervisor, sorted(known)))
        return [{"id": r, "started_at": STARTED, "task_id": None} for r in running if r not in known]

    async def finish_run(pool, run_id, supervisor, status, exit_code, reason):
        if finish_fails:
            raise ValueError("refused")  # not transient: given up at once
        seen["ended"].append((run_id, status))
        running.remove(run_id)
        return True

    async def beat_runs(conn, run_ids, supervisor):  # those still running under it; a kill asked, its reason
        seen.setdefault("beaten", []).append(sorted(run_ids))
        gone = seen.get("failed", set())
        return {r: seen.get("kill", {}).get(r, False) for r in run_ids if r in running and r not in gone}

    async def requeue_unstarted(conn, run_id, supervisor):  # back in the queue: no longer running under it
        seen.setdefault("requeued", []).append(run_id)
        running.remove(run_id)
        return False

    monkeypatch.setattr(store, "requeue_unstarted", requeue_unstarted, raising=False)
    monkeypatch.setattr(store, "own_unsupervised", own_unsupervised, raising=False)
    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(store, "finish_run", finish_run)
    sched = Ran(deps=SimpleNamespace(settings=SimpleNamespace(supervisor_lost_after=10.0, max_runs_per_process=at_most),
                                     pool=None), mint=None, gateway_url="", identity="me")
    sched.ran = []
    return sched, seen


async def settle(sched: Scheduler) -> None:
    async with asyncio.timeout(10):
        while sched.runs:
            await asyncio.gather(*sched.runs.values(), return_exceptions=True)


async def test_a_start_whose_answer_was_lost_is_run_at_the_next_pass(monkeypatch):
    lost, mine = uuid.uuid4(), uuid.uuid4()
    sched, seen = scheduler(monkeypatch, [lost, mine])
    sched.runs[mine] = asyncio.get_running_loop().create_future()  # supervised already: not adopted twice
    await sched.adopt_unanswered(None)
    assert seen["asked"] == [("me", [mine])]
    assert set(sched.runs) == {lost, mine} and lost in sched.kills  # beaten and killable from this pass on
    sched.runs.pop(mine).cancel()
    await settle(sched)
    assert sched.ran == [lost]  # its main.py ran once
    assert seen["ended"] == [(lost, "success")]
    await sched.adopt_unanswered(None)  # ended: nothing more to adopt
    assert sched.ran == [lost]


async def test_a_run_whose_end_could_not_be_recorded_is_not_run_again(monkeypatch):
    ran_once = uuid.uuid4()
    sched, seen = scheduler(monkeypatch, [ran_once], finish_fails=True)
    await sched.adopt_unanswered(None)
    await settle(sched)
    assert sched.ran == [ran_once] and sched.unrecorded == {ran_once}  # still `running` in the database
    for _ in range(2):  # the next passes find it theirs and unsupervised: not run again
        await sched.adopt_unanswered(None)
        assert sched.runs == {} and sched.ran == [ran_once]
    seen_running = []  # the lost-run step failed it meanwhile: forgotten
    monkeypatch.setattr(store, "own_unsupervised", lambda *a: asyncio.sleep(0, seen_running))
    await sched.adopt_unanswered(None)
    assert sched.unrecorded == set()


async def test_a_run_another_process_failed_meanwhile_is_not_run(monkeypatch):
    """Read as this process's, then failed as lost by another process (this one was cut off past
    supervisor_lost_after) before it was beaten: the adoption's beat does not find it, and it is not run. Before, it
    was supervised from the read, its main.py started before the pass's heartbeat found it gone."""
    failed, kept, killed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    sched, seen = scheduler(monkeypatch, [failed, kept, killed])
    seen["failed"] = {failed}
    seen["kill"] = {killed: "replaced by the task's run for 2026-12-05T14:00:01+00:00 (concurrency_policy replace)"}
    await sched.adopt_unanswered(None)
    assert seen["beaten"] == [sorted([failed, kept, killed])]
    assert set(sched.runs) == {kept, killed} and failed not in sched.kills
    # a kill asked before the beat (here a replace's): stopped before its main.py starts, with that reason
    assert sched.kills[killed].is_set() and not sched.kills[kept].is_set()
    assert sched.kill_reasons[killed] == seen["kill"][killed]
    await settle(sched)


async def test_a_full_process_puts_back_what_it_cannot_adopt(monkeypatch):
    """A start whose commit landed after the next pass's look (that pass started another run in the room it took):
    the process is full when it finds it. Adopted, it made the process one past max_runs_per_process; now it goes
    back to the queue (its main.py never started), oldest first there. A run whose kill was asked starts no process:
    adopted all the same, to record its end."""
    supervised, late, second, killed = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    sched, seen = scheduler(monkeypatch, [supervised, late, second, killed], at_most=2)
    seen["kill"] = {killed: True}
    held = asyncio.Event()

    async def held_run(row):
        if sched.kills[row["id"]].is_set():  # as Scheduler._run: killed before it starts, nothing set up
            return runner.RunOutcome("failure", None, runner.KILLED, ran=False)
        sched.ran.append(row["id"])
        await held.wait()
        return runner.RunOutcome("success", 0, None)

    sched._run = held_run
    sched._supervised({"id": supervised, "task_id": None, "started_at": STARTED})  # one place of 2 taken
    await sched.adopt_unanswered(None)
    assert seen["requeued"] == [second]  # the second found: no room left
    assert set(sched.runs) == {supervised, late, killed}
    assert sum(1 for r in sched.runs if not sched.kills[r].is_set()) == 2  # at most max_runs_per_process run
    held.set()
    await settle(sched)
    assert sorted(sched.ran) == sorted([supervised, late])  # the killed one's main.py never ran
