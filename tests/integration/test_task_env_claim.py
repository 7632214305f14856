"""An installer whose environment another scheduler claimed (its beats came later than supervisor_lost_after: paused,
cut off from PostgreSQL) stops its install and records nothing (services/task_scheduler/scheduler.py,
Scheduler._install_one; store.beat_env, store.finish_env). Before, beat_env's UPDATE just matched no row: the first
installer went on installing (users' requirements, in the sandbox) beside the new claimant, and finish_env wrote any
installer's end: the first one's could be recorded over the claimant's (`ready` while it was still installing,
`failed` over its `ready`), the orchestrations waiting on the environment given the wrong outcome.

Real Schedulers on a schema of the test's own on the stack's PostgreSQL, each with a machine (work_root) of its own;
the other scheduler's install step (Scheduler.install_next) claims the environment in the transaction that makes the
first one's beat old (so no beat of the first comes in between)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import asyncpg
import psutil
import pytest

from services.task_scheduler import packaging, runner, store
from services.task_scheduler.scheduler import Scheduler
from shared.settings import TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.task_scheduler_setup import MIGRATIONS, sandbox_settings_in, scheduler_on, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SHA = "5" * 64
SETTINGS = TaskSettings(tick=60, heartbeat_interval=0.5, supervisor_lost_after=5.0)
# the sandboxed installer (packaging._pip's script, argv: base site-packages, requirements file, wheelhouse): the
# first machine's hangs (its requirements' file is under its work_root), the other's installs nothing and succeeds
HANGS_ON_FIRST = "import sys, time\nprint('installing', flush=True)\nif '/first/' in sys.argv[2]:\n" \
                 "    time.sleep(600)\n"


@pytest.fixture
async def database(stack):
    """The pool, and an orchestration waiting on environment SHA (`packaging`), which is to be installed."""
    async with service_schema(stack, "task_env_claim", MIGRATIONS) as pool:
        async with pool.acquire() as conn, conn.transaction():
            assert await store.ensure_env(conn, SHA, "x==1\n") == "installing"
            orch_id = uuid.uuid4()
            await store.insert_orchestration(conn, id=orch_id, workspace_id=3, sha="0" * 64, name=None,
                                             file_name="o.zip", entrypoint="main.py", requirements_sha=SHA,
                                             owner_id="u", status="packaging", reason=None)
        yield pool, orch_id


async def claimed_by(pool, other: Scheduler) -> None:
    """`other`'s install step claims the environment, in the transaction that makes its beat a minute old (its
    installer's beats did not land for supervisor_lost_after)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE envs SET heartbeat_at = now() - make_interval(secs => 60) "
                           "WHERE requirements_sha = $1", SHA)
        await other.install_next(conn)
    assert other.installing is not None, "the other scheduler did not claim the environment"


async def states(pool, orch_id: uuid.UUID) -> tuple:
    env = await pool.fetchrow("SELECT status, worker FROM envs WHERE requirements_sha = $1", SHA)
    return env["status"], env["worker"], await pool.fetchval("SELECT status FROM orchestrations WHERE id = $1",
                                                             orch_id)


def installers_under(root: Path) -> list[psutil.Process]:
    """The live processes of sandboxed installs from `root` (their argv names its requirements' file)."""
    found = []
    for process in psutil.process_iter():
        try:
            if any(str(root) in part for part in process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


async def test_an_installer_whose_claim_was_taken_over_stops_its_sandboxed_install(
        database, tmp_path, monkeypatch, caplog):
    pool, orch_id = database
    sandbox_settings_in(tmp_path, monkeypatch)
    monkeypatch.setattr(packaging, "_BOOTSTRAP", HANGS_ON_FIRST)
    first = scheduler_on(Scheduler, pool, tmp_path / "first", "first", SETTINGS)
    other = scheduler_on(Scheduler, pool, tmp_path / "other", "other", SETTINGS, start=False)  # its steps only
    caplog.set_level(logging.WARNING, logger="railyard.task_scheduler.scheduler")
    try:
        async def installing() -> list:
            return installers_under(tmp_path / "first")

        await until("the first scheduler's sandboxed install runs", installing, 60)
        await claimed_by(pool, other)

        async def stopped() -> bool:
            return first.installing is not None and first.installing.done() and not installers_under(
                tmp_path / "first")

        # was: the first install went on (its sandbox for 600 s, install_timeout), beside the other's
        await until("the first scheduler stops its install", stopped, 30)
        await asyncio.wait({other.installing}, timeout=60)
        assert other.installing.done() and other.installing.exception() is None
        assert await states(pool, orch_id) == ("ready", "other", "ready")  # the claimant's outcome
        said = [r.getMessage() for r in caplog.records if "another scheduler claimed the install" in r.getMessage()]
        assert len(said) == 1 and SHA[:12] in said[0], said
    finally:
        await first.stop()
        if other.installing is not None:
            other.installing.cancel()
            await asyncio.wait({other.installing})


async def test_an_install_ended_after_its_claim_was_taken_over_is_not_recorded(
        database, tmp_path, monkeypatch, caplog):
    """The first install ends (`failed`) before a beat of its installer tells it the claim is gone (its beats hang
    from the takeover on): its end is dropped, the environment stays the other's to record, and the orchestration
    waiting on it gets the other's outcome (`ready`). Before, the first's `failed` was written while the other
    still installed, the orchestration failed with it, and the other's `ready` later left it failed."""
    pool, orch_id = database
    may_end = {"first": asyncio.Event(), "other": asyncio.Event()}
    started = {"first": asyncio.Event(), "other": asyncio.Event()}
    taken = asyncio.Event()

    async def install_env(root: Path, *_: object) -> tuple[bool, str | None]:
        machine = root.name
        started[machine].set()
        await may_end[machine].wait()
        return (True, None) if machine == "other" else (False, "installing the requirements failed:\nfirst's")

    beat_env = store.beat_env

    async def beats(pool, sha, worker):
        if worker == "first" and taken.is_set():
            await asyncio.Event().wait()  # not answered (given up at its bound): this installer is cut off
        return await beat_env(pool, sha, worker)

    monkeypatch.setattr(packaging, "install_env", install_env)
    monkeypatch.setattr(store, "beat_env", beats)
    caplog.set_level(logging.WARNING, logger="railyard.task_scheduler.scheduler")
    first = scheduler_on(Scheduler, pool, tmp_path / "first", "first", SETTINGS)
    other = scheduler_on(Scheduler, pool, tmp_path / "other", "other", SETTINGS, start=False)
    try:
        async with asyncio.timeout(30):
            await started["first"].wait()
        taken.set()
        await claimed_by(pool, other)
        async with asyncio.timeout(30):
            await started["other"].wait()
        may_end["first"].set()
        await asyncio.wait({first.installing}, timeout=30)
        assert first.installing.done() and first.installing.exception() is None
        # was: ('failed', 'other', 'failed'): the first's end over the other's claim
        assert await states(pool, orch_id) == ("installing", "other", "packaging")
        said = [r.getMessage() for r in caplog.records if "its end was dropped" in r.getMessage()]
        assert len(said) == 1 and SHA[:12] in said[0], said

        may_end["other"].set()
        await asyncio.wait({other.installing}, timeout=30)
        assert other.installing.done() and other.installing.exception() is None
        assert await states(pool, orch_id) == ("ready", "other", "ready")
    finally:
        for event in may_end.values():
            event.set()
        await first.stop()
        if other.installing is not None:
            other.installing.cancel()
            await asyncio.wait({other.installing})


async def test_an_install_end_is_recorded_once_and_by_its_claimant_only(database):
    """store.finish_env: a worker without the claim writes nothing (False); the claimant's end again (an attempt whose
    answer was lost, retried) finds it there (True) and writes nothing twice."""
    pool, orch_id = database
    assert (await store.claim_env(pool, "other", 60))["requirements_sha"] == SHA
    assert not await store.finish_env(pool, SHA, "first", False, "first's")
    assert await states(pool, orch_id) == ("installing", "other", "packaging")
    assert await store.finish_env(pool, SHA, "other", True, None)
    recorded = await pool.fetchval("SELECT updated_at FROM envs WHERE requirements_sha = $1", SHA)
    assert await store.finish_env(pool, SHA, "other", True, None)  # found there: nothing written again
    assert await pool.fetchval("SELECT updated_at FROM envs WHERE requirements_sha = $1", SHA) == recorded
    assert not await store.finish_env(pool, SHA, "other", False, "not this one")  # another end: not written over
    assert not await store.finish_env(pool, SHA, "first", True, None)
    assert await states(pool, orch_id) == ("ready", "other", "ready")
    assert not await store.beat_env(pool, SHA, "other")  # ended: no longer an install to beat


@pytest.mark.parametrize("then_claimed", [False, True], ids=["set-to-install-again", "and-claimed-by-another"])
async def test_a_retried_end_an_earlier_attempt_recorded_is_not_said_dropped(
        database, tmp_path, monkeypatch, caplog, then_claimed):
    """An install's end recorded by an attempt whose answer was lost (the connection lost after its commit), the
    failed environment then set to be installed again by an upload (handlers.upload_orchestration: installing,
    nobody's heartbeat, its worker kept) and maybe claimed by another scheduler before the retry: the retry writes
    nothing, and its WARNING says what happened. Before, it said the end was dropped after another scheduler claimed
    the install, though the end had been recorded (and, not claimed, no other scheduler was involved)."""
    pool, orch_id = database
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.01)  # the retry at once
    finish_env = store.finish_env
    attempts: list[store.EnvEnd] = []

    async def install_env(*_: object) -> tuple[bool, str | None]:
        return False, "installing the requirements failed:\nfirst's"

    async def answer_lost_once(pool, sha, worker, ok, reason):
        attempts.append(await finish_env(pool, sha, worker, ok, reason))
        if len(attempts) == 1:
            await pool.execute("UPDATE envs SET status = 'installing', heartbeat_at = NULL, reason = NULL "
                               "WHERE requirements_sha = $1 AND status = 'failed'", sha)
            if then_claimed:
                assert (await store.claim_env(pool, "other", 60))["requirements_sha"] == SHA
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")  # lost
        return attempts[-1]

    monkeypatch.setattr(packaging, "install_env", install_env)
    monkeypatch.setattr(store, "finish_env", answer_lost_once)
    caplog.set_level(logging.WARNING, logger="railyard.task_scheduler.scheduler")
    first = scheduler_on(Scheduler, pool, tmp_path / "first", "first", SETTINGS)
    try:
        def warned() -> list[str]:
            return [r.getMessage() for r in caplog.records if SHA[:12] in r.getMessage() and "ended" in r.getMessage()]

        async def retried() -> list[str]:
            return warned()

        said = await until("the retry's WARNING", retried, 30)
        assert len(said) == 1, said
        # the first attempt recorded the end, the retry found it set to be installed again (the first scheduler's
        # loop may claim it then, not claimed by the other, and install it again: a third, recorded)
        assert [bool(a) for a in attempts[:2]] == [True, False], attempts
        if then_claimed:
            assert await states(pool, orch_id) == ("installing", "other", "failed")
        assert "dropped" not in said[0] or "either" in said[0], said  # was: 'its end was dropped' and nothing else
        if then_claimed:  # the retry cannot tell whether the other's claim came before or after the record
            assert "not written by this attempt" in said[0] and "installing, claimed by other" in said[0], said
        else:
            assert "recorded by an earlier attempt" in said[0] and "set to be installed again" in said[0], said
            # nobody's claim until a scheduler claims it (was: 'installing, claimed by first', this very one)
            assert "installing, claimed by nobody (last by first)" in said[0], said
    finally:
        await first.stop()
