"""A stopping task scheduler starts and adopts nothing: a run its last pass starts or adopts once the stop has begun is
killed as it is supervised (Scheduler._supervised), its main.py never run, and put back in the queue
(store.requeue_unstarted: another scheduler runs it; before, it was recorded failed 'stopped: ...' without running);
the pass claims nothing more; nor does it start an environment's install (Scheduler.install_next).

Before, Scheduler._stop_once set every run's kill once it had waited STOP_STEP for the loop's last pass; a pass it gave
up on (left to end in the background: a statement whose answer came as it was cancelled) could still start or adopt a
run after that, with a kill event nobody would set: its main.py ran while the process shut down. And a run the pass
started while the stop waited for it ran until the kills came. An install such a pass claimed after the stop's cancel of
`installing` ran pip on, cancelled by nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.task_scheduler import packaging, runner, store
from services.task_scheduler import scheduler as scheduler_module
from services.task_scheduler.handlers import Deps
from services.task_scheduler.scheduler import Scheduler
from shared import db
from shared.settings import TaskSettings

STARTED = datetime(2026, 12, 5, 17, 0, tzinfo=UTC)


def a_scheduler(tmp_path: Path, monkeypatch) -> tuple[Scheduler, dict]:
    """A scheduler whose runs reach runner.execute (main.py) with everything before it faked; `seen` records what
    ran and what was recorded."""
    seen: dict = {"executed": [], "ended": [], "claims": [], "set_up": [], "requeued": [], "minted": [],
                  "setting_up": asyncio.Event(), "running": asyncio.Event(), "minting": asyncio.Event()}

    async def publish(*_: object) -> None:
        pass

    async def mint(owner_id, workspace_id, ttl, task_id, run_id) -> str:
        seen["minted"].append(uuid.UUID(run_id))
        seen["minting"].set()
        if "mint_gate" in seen:  # the round trip to auth, held
            await seen["mint_gate"].wait()
        return "token"

    async def task(pool, task_id):  # the first step of a run's setup (then its zip, environment, number, token)
        seen["set_up"].append(task_id)
        seen["setting_up"].set()
        return {"id": task_id, "orch_id": 1, "owner_id": "o", "workspace_id": 1, "timeout_seconds": 20, "args": {}}

    async def orchestration(pool, orch_id):
        return {"sha": "s", "requirements_sha": None, "entrypoint": "main.py"}

    async def relay_number(pool, owner_id):
        return 0

    async def execute(plan, writer, kill):
        seen["executed"].append(plan.run_id)
        seen["running"].set()
        await kill.wait()  # main.py runs until its kill
        return runner.RunOutcome("failure", None, runner.KILLED)

    async def finish_run(pool, run_id, supervisor, status, exit_code, reason):
        seen["ended"].append((run_id, status, reason))
        return True

    async def requeue_unstarted(pool, run_id, supervisor):  # False: back in the queue (a kill asked: its reason)
        if run_id in seen["requeued"]:
            return None  # queued already: no longer this process's
        seen["requeued"].append(run_id)
        return seen.get("kill_asked", False)

    async def local_zip(self, sha):
        return tmp_path / "o.zip"

    async def beat_runs(pool, run_ids, supervisor):  # each still this process's, no kill asked
        return {r: False for r in run_ids}

    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(store, "task", task)
    monkeypatch.setattr(store, "orchestration", orchestration)
    monkeypatch.setattr(store, "relay_number", relay_number)
    monkeypatch.setattr(store, "finish_run", finish_run)
    monkeypatch.setattr(store, "requeue_unstarted", requeue_unstarted, raising=False)
    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(runner, "cleanup", lambda workdir: None)
    monkeypatch.setattr(Scheduler, "_local_zip", local_zip)
    monkeypatch.setattr(scheduler_module, "STOP_STEP", 0.2)
    deps = Deps(pool=None, objects=None, settings=TaskSettings(), work_root=tmp_path, membership=lambda token: None,
                publish=publish)
    return Scheduler(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1", identity="me"), seen


def a_row(run_id: uuid.UUID) -> dict:
    return {"id": run_id, "task_id": uuid.uuid4(), "started_at": STARTED}


async def settle(sched: Scheduler) -> None:
    async with asyncio.timeout(10):
        while sched.runs:
            await asyncio.gather(*sched.runs.values(), return_exceptions=True)


def fake_claims(seen: dict, answer: asyncio.Event, monkeypatch) -> asyncio.Event:
    """store.start_queued and store.own_unsupervised answer one run, the first time, once `answer` is set (then
    none); a cancel that comes meanwhile is lost, as one that meets a statement's answer is: the pass goes on with
    what the claim committed. The event returned is set when a claim is under way."""
    run_id = uuid.uuid4()
    under_way = asyncio.Event()

    async def answered(claim: str) -> list:
        seen["claims"].append(claim)
        under_way.set()
        try:
            await answer.wait()
        except asyncio.CancelledError:
            await answer.wait()  # the cancel lost: the claim's answer comes all the same
        if claim == "adopt":  # running under this process, unsupervised, until put back (the stop does too)
            return [] if run_id in seen["requeued"] else [a_row(run_id)]
        first = seen["claims"].count(claim) == 1
        return [a_row(run_id)] if first else []

    async def workspaces_waiting(conn, limit=None):
        return [1]

    async def start_queued(conn, workspace_id, limit, room, supervisor, *, supervised=None):
        return await answered("start")

    async def own_unsupervised(conn, supervisor, known):
        return await answered("adopt")

    async def beat_runs(conn, run_ids, supervisor):
        return {r: False for r in run_ids}

    monkeypatch.setattr(store, "workspaces_waiting", workspaces_waiting)
    monkeypatch.setattr(store, "start_queued", start_queued)
    monkeypatch.setattr(store, "own_unsupervised", own_unsupervised)
    monkeypatch.setattr(store, "beat_runs", beat_runs)
    return under_way


async def a_last_pass(sched: Scheduler, seen: dict, claim: str, answer: asyncio.Event, monkeypatch) -> asyncio.Future:
    """The loop's last pass (`claim`: its start of queued runs or its adoption of unanswered starts), under way: its
    claim is answered only when `answer` is set."""
    under_way = fake_claims(seen, answer, monkeypatch)
    sched._loop = db.begin(sched.start_queued(None) if claim == "start" else sched.adopt_unanswered(None))
    await under_way.wait()
    return sched._loop


@pytest.mark.parametrize("claim", ["start", "adopt"])
async def test_a_run_a_left_pass_starts_after_the_stop_never_runs(tmp_path, monkeypatch, claim):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    answer = asyncio.Event()
    last_pass = await a_last_pass(sched, seen, claim, answer, monkeypatch)
    async with asyncio.timeout(10):
        await sched.stop()  # gives up on the pass after STOP_STEP, sets every kill (none yet), returns
        assert not last_pass.done()
        answer.set()  # the claim's answer: a run, started (or found) under this process
        await asyncio.wait({last_pass})  # the left pass ends: it started (or adopted) the run
        assert len(sched.runs) == 1 and all(kill.is_set() for kill in sched.kills.values())
        await settle(sched)
    assert seen["executed"] == []  # its main.py never ran; before, it ran with nothing to kill it
    assert seen["set_up"] == []  # nor was it set up (its task read, zip, environment, relay number, token)
    # a start is put back in the queue, not recorded failed (before: 'stopped: ...' though it never ran); an adoption
    # likewise (the run was started under this process, its answer lost)
    assert len(seen["requeued"]) == 1 and seen["ended"] == []


async def test_a_run_started_while_the_stop_waits_for_the_pass_never_runs(tmp_path, monkeypatch):
    """The pass's start answered within STOP_STEP, after the stop began: killed as it is supervised. Before, its
    main.py ran until the stop's kills came, once the pass had ended."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    answer = asyncio.Event()
    await a_last_pass(sched, seen, "start", answer, monkeypatch)
    async with asyncio.timeout(10):
        stopping = asyncio.ensure_future(sched.stop())
        await sched._stop.wait()  # the stop has begun, and waits for the pass (not a sleep: a loaded host)
        answer.set()
        await stopping
        await settle(sched)
    assert seen["executed"] == [] and seen["set_up"] == []
    assert len(seen["requeued"]) == 1 and seen["ended"] == []  # back in the queue: another scheduler runs it


async def test_a_stopping_scheduler_claims_nothing(tmp_path, monkeypatch):
    """Once the stop has begun, a pass asks the database for no start and no adoption."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    answer = asyncio.Event()
    answer.set()
    fake_claims(seen, answer, monkeypatch)

    async def claim_env(conn, worker, lost_after):
        seen["claims"].append("install")

    monkeypatch.setattr(store, "claim_env", claim_env)
    sched._stop.set()
    assert await sched.start_queued(None) is False
    await sched.adopt_unanswered(None)
    await sched.install_next(None)
    assert seen["claims"] == [] and sched.runs == {} and sched.installing is None


async def test_an_install_a_left_pass_claims_after_the_stop_is_not_started(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    answer, under_way = asyncio.Event(), asyncio.Event()
    installs = []

    async def claim_env(conn, worker, lost_after):
        under_way.set()
        try:
            await answer.wait()
        except asyncio.CancelledError:
            await answer.wait()  # the cancel lost: the claim's answer comes all the same
        return {"requirements_sha": "ab" * 32, "requirements": "numpy\n"}

    async def install_env(work_root, sha, requirements, settings):
        installs.append(sha)
        await asyncio.sleep(3600)  # pip, in the sandbox
        return True, None

    monkeypatch.setattr(store, "claim_env", claim_env)
    monkeypatch.setattr(packaging, "install_env", install_env)
    sched._loop = db.begin(sched.install_next(None))
    await under_way.wait()
    async with asyncio.timeout(10):
        await sched.stop()  # gives up on the pass, cancels `installing` (none yet)
        answer.set()
        await asyncio.wait({sched._loop})
        for _ in range(5):  # an install started would have called install_env by now
            await asyncio.sleep(0)
    installing, sched.installing = sched.installing, None
    if installing is not None:  # before: started, and cancelled by nothing; cancelled here, the test over
        installing.cancel()
        await asyncio.wait({installing})
    assert installing is None and installs == []


async def a_run_under_way(sched: Scheduler, gate: asyncio.Event | None = None) -> uuid.UUID:
    """A run started and supervised (before any stop); with `gate`, its setup waits for it (its environment being
    installed, say), main.py not started yet."""
    run_id = uuid.uuid4()
    if gate is not None:
        async def held_zip(sha):
            await gate.wait()
            return sched.deps.work_root / "o.zip"
        sched._local_zip = held_zip
    sched._supervised(a_row(run_id))
    return run_id


async def test_a_run_the_stop_ends_while_it_is_set_up_goes_back_to_the_queue(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    gate = asyncio.Event()
    run_id = await a_run_under_way(sched, gate)
    async with asyncio.timeout(10):
        await seen["setting_up"].wait()
        stopping = asyncio.ensure_future(sched.stop())
        await sched.kills[run_id].wait()  # the stop's kill (not a sleep: a loaded host may take longer)
        gate.set()  # its setup ends after the stop's kill: main.py is not started
        await stopping
        await settle(sched)
    assert seen["executed"] == [] and seen["requeued"] == [run_id] and seen["ended"] == []
    # nor is its token minted: before, it was minted after the setup and before the kill was looked at, a token nobody
    # received, valid until the run (put back, started again) ended or it expired
    assert seen["minted"] == []


async def test_a_run_the_stop_ends_while_its_token_is_minted_goes_back_to_the_queue(tmp_path, monkeypatch):
    """The stop's kill comes during the mint's round trip (the last step of the setup): main.py is not started, the
    token given to no process."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    seen["mint_gate"] = asyncio.Event()
    run_id = await a_run_under_way(sched)
    async with asyncio.timeout(10):
        await seen["minting"].wait()
        stopping = asyncio.ensure_future(sched.stop())
        await sched.kills[run_id].wait()  # the stop's kill, during the mint
        seen["mint_gate"].set()
        await stopping
        await settle(sched)
    assert seen["minted"] == [run_id]
    assert seen["executed"] == [] and seen["requeued"] == [run_id] and seen["ended"] == []


async def test_a_run_whose_main_py_ran_is_recorded_stopped(tmp_path, monkeypatch):
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    run_id = await a_run_under_way(sched)
    async with asyncio.timeout(10):
        await seen["running"].wait()
        await sched.stop()
        await settle(sched)
    assert seen["requeued"] == []  # it ran: not run again
    assert seen["ended"] == [(run_id, "failure", scheduler_module.STOPPED)]


@pytest.mark.parametrize("asked, recorded", [(True, runner.KILLED), ("replaced by the task's run for X",
                                                                     "replaced by the task's run for X")])
async def test_a_run_whose_kill_was_asked_is_not_put_back(tmp_path, monkeypatch, asked, recorded):
    """Killed by the stop before it started, but task/kill (or a replace) was asked meanwhile: not put back in the
    queue (it would run for a killed task, or beside its replacement); its end says what was asked."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    seen["kill_asked"] = asked
    sched._stop.set()
    run_id = await a_run_under_way(sched)
    await settle(sched)
    assert seen["requeued"] == [run_id] and seen["ended"] == [(run_id, "failure", recorded)]


async def test_a_run_a_replace_killed_keeps_its_reason_when_the_stop_comes(tmp_path, monkeypatch):
    """The replace's kill came first (a heartbeat read it), the stop during the run's SIGTERM grace: the run was
    ended by the replace. Before, the stop's reason was read at the run's end: 'stopped: ...'."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    ending = asyncio.Event()

    async def execute(plan, writer, kill):
        seen["executed"].append(plan.run_id)
        seen["running"].set()
        await kill.wait()
        await ending.wait()  # its process takes its SIGTERM's grace
        return runner.RunOutcome("failure", None, runner.KILLED)

    monkeypatch.setattr(runner, "execute", execute)
    replaced = "replaced by the task's run for 2026-12-05T17:01:00+00:00 (concurrency_policy replace)"

    async def beat_runs(conn, run_ids, supervisor):  # the replace asked once main.py runs (its start's beat: none)
        return {r: replaced if seen["running"].is_set() else False for r in run_ids}

    monkeypatch.setattr(store, "beat_runs", beat_runs)
    run_id = await a_run_under_way(sched)
    async with asyncio.timeout(10):
        await seen["running"].wait()
        await sched.heartbeat(None)  # the replace's kill
        stopping = asyncio.ensure_future(sched.stop())
        await asyncio.sleep(0.05)
        ending.set()
        await stopping
        await settle(sched)
    assert seen["ended"] == [(run_id, "failure", replaced)] and seen["requeued"] == []


async def test_a_start_whose_answer_was_lost_goes_back_to_the_queue_at_the_stop(tmp_path, monkeypatch):
    """A start committed under this process whose answer never came (adopt_unanswered's, which a stopping process
    does not adopt): put back in the queue by the stop. Before, it stayed `running` until the lost-run step failed it
    ('the task scheduler process supervising the run died'), never run. A run whose end could not be recorded ran: not
    put back."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    lost_answer, ran_once = uuid.uuid4(), uuid.uuid4()
    asked = []
    gate = asyncio.Event()
    supervised = await a_run_under_way(sched, gate)  # its setup held: in self.runs while the stop looks

    async def own_unsupervised(conn, supervisor, known):
        asked.append(sorted(known))
        gate.set()
        return [a_row(r) for r in (lost_answer, ran_once, supervised) if r not in known]

    monkeypatch.setattr(store, "own_unsupervised", own_unsupervised)
    sched.unrecorded.add(ran_once)
    woken = []
    sched.events_committed = lambda: woken.append(True)
    async with asyncio.timeout(10):
        await sched.stop()
        await settle(sched)
    assert asked == [[supervised]]
    # the one whose answer was lost; the supervised one too, killed by the stop in its setup (its main.py not run)
    assert sorted(seen["requeued"]) == sorted([lost_answer, supervised])
    assert seen["executed"] == [] and seen["ended"] == []
    # the outbox woken for each put-back's events.task_run.queued (before: for the supervised one's alone)
    assert len(woken) == 2


@pytest.mark.parametrize("asked, recorded", [(True, runner.KILLED), ("replaced by the task's run for X",
                                                                     "replaced by the task's run for X")])
async def test_a_start_whose_answer_was_lost_and_whose_kill_was_asked_is_recorded_at_the_stop(
        tmp_path, monkeypatch, asked, recorded):
    """The stop finds a start whose answer was lost, and task/kill (or a replace) was asked for it: not put back, and
    its end recorded with what was asked, its main.py never run. Before (b0f9f92b), it was left 'running' to the
    lost-run step, which failed it 'the task scheduler process supervising the run died' supervisor_lost_after
    later."""
    sched, seen = a_scheduler(tmp_path, monkeypatch)
    seen["kill_asked"] = asked
    lost_answer = uuid.uuid4()

    async def own_unsupervised(conn, supervisor, known):
        return [a_row(lost_answer)]

    monkeypatch.setattr(store, "own_unsupervised", own_unsupervised)
    async with asyncio.timeout(10):
        await sched.stop()
    assert seen["requeued"] == [lost_answer] and seen["executed"] == []
    assert seen["ended"] == [(lost_answer, "failure", recorded)]
