"""An install's beats (services/task_scheduler/scheduler.py, Scheduler._install_one's beat): a beat is waited for up
to its bound, and only one that was not answered within it is said so (an INFO, the next sent beside it). Before
(review of c75568b), the wait ended at the first answer of any beat under way: an older slow beat answering just
after the next was sent ended the new one's wait at once, it was said not answered within the bound, and from then on
every beat's answer was read only at the next beat (a done beat ends the wait at once), each beat said not answered
within its bound, at every heartbeat for the rest of the install, though the database answered each in milliseconds.
The database stands in: store's functions patched."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services.task_scheduler import packaging, store
from services.task_scheduler.handlers import Deps
from services.task_scheduler.scheduler import Scheduler
from shared.settings import TaskSettings

SHA = "5" * 64
INTERVAL = 0.05
LOST_AFTER = 1.2  # the first beat's bound: (LOST_AFTER - INTERVAL) / 2 = 0.575 s, past a loaded machine's stalls
BEATS = 16


def a_scheduler(tmp_path: Path) -> Scheduler:
    async def publish(*_: object) -> None:
        pass

    async def mint(*_: object) -> str:
        return "unused"

    settings = TaskSettings(heartbeat_interval=INTERVAL, supervisor_lost_after=LOST_AFTER)
    deps = Deps(pool=None, objects=None, settings=settings, work_root=tmp_path, membership=lambda token: None,
                publish=publish)
    return Scheduler(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1", identity="installer")


async def test_only_a_beat_not_answered_within_its_bound_is_said_so(tmp_path, monkeypatch, caplog):
    sent: list[int] = []
    first_may_answer = asyncio.Event()
    beaten = asyncio.Event()

    async def beat_env(pool, sha, worker):
        sent.append(len(sent) + 1)
        number = sent[-1]
        if number == 1:  # slow: answered past its bound, as the third is sent
            await first_may_answer.wait()
            return True
        if number == 3:
            first_may_answer.set()
        if number >= BEATS:
            beaten.set()
        await asyncio.sleep(0.02)  # the others answered at once
        return True

    async def install_env(*_: object) -> tuple[bool, str | None]:
        await asyncio.wait({asyncio.ensure_future(beaten.wait())}, timeout=20)
        return beaten.is_set(), None

    async def finish_env(pool, sha, worker, ok, reason):
        return store.EnvEnd(True, "ready" if ok else "failed", worker)

    monkeypatch.setattr(store, "beat_env", beat_env)
    monkeypatch.setattr(store, "finish_env", finish_env)
    monkeypatch.setattr(packaging, "install_env", install_env)
    caplog.set_level(logging.INFO, logger="railyard.task_scheduler.scheduler")
    async with asyncio.timeout(30):
        await a_scheduler(tmp_path)._install_one({"requirements_sha": SHA, "requirements": "x==1"})
    assert beaten.is_set(), f"{len(sent)} beats"
    said = [r.getMessage() for r in caplog.records if "was not answered within" in r.getMessage()]
    # the first beat only (was: also every beat from the third on, ~14 of them)
    assert len(said) == 1, said


async def test_two_beats_under_way_send_no_third_until_one_is_given_up(tmp_path, monkeypatch, caplog):
    sent: list[int] = []
    hung: list[asyncio.Task] = []
    beaten = asyncio.Event()

    async def beat_env(pool, sha, worker):
        sent.append(len(sent) + 1)
        if len(sent) <= 2:  # on connections that stopped answering: given up once LOST_AFTER old
            hung.append(asyncio.current_task())
            await asyncio.Event().wait()
        if len(sent) >= 6:
            beaten.set()
        return True

    async def install_env(*_: object) -> tuple[bool, str | None]:
        await asyncio.wait({asyncio.ensure_future(beaten.wait())}, timeout=20)
        return beaten.is_set(), None

    async def finish_env(pool, sha, worker, ok, reason):
        return store.EnvEnd(True, "ready" if ok else "failed", worker)

    monkeypatch.setattr(store, "beat_env", beat_env)
    monkeypatch.setattr(store, "finish_env", finish_env)
    monkeypatch.setattr(packaging, "install_env", install_env)
    caplog.set_level(logging.INFO, logger="railyard.task_scheduler.scheduler")
    async with asyncio.timeout(30):
        await a_scheduler(tmp_path)._install_one({"requirements_sha": SHA, "requirements": "x==1"})
    assert beaten.is_set() and len(hung) == 2
    await asyncio.wait(hung, timeout=5)
    assert all(task.cancelled() for task in hung)  # given up (db.leave), not left hanging
    said = [r.getMessage().split(" s: ", 1)[1] for r in caplog.records if "was not answered within" in r.getMessage()]
    # was: the second said the next is sent beside it too, though no third was sent until the first was given up
    assert said == ["the next is sent beside it",
                    "2 under way, the next is sent once either is answered or given up"], said
