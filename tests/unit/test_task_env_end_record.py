"""An environment's install records its end (store.finish_env) through a database that refuses for a while, and
beats the install through refused beats (services/task_scheduler/scheduler.py, Scheduler._install_one). Before, a
refused finish_env raised out of the installing task, an exception nobody retrieved ("Task exception was never
retrieved"), the environment left 'installing'; and the first refused beat ended the beating the same way, so another
process could claim the install while it ran. The database stands in: store's functions patched."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from services.task_scheduler import packaging, runner, scheduler, store
from services.task_scheduler.handlers import Deps
from services.task_scheduler.scheduler import Scheduler
from shared.settings import TaskSettings
from tests.unit.test_bus_database_unavailable import asyncpg_outage

SHA = "3" * 64


def a_scheduler(tmp_path: Path, heartbeat: float = 60.0) -> Scheduler:
    async def publish(*_: object) -> None:
        pass

    async def mint(*_: object) -> str:
        return "unused"

    deps = Deps(pool=None, objects=None, settings=TaskSettings(heartbeat_interval=heartbeat), work_root=tmp_path,
                membership=lambda token: None, publish=publish)
    return Scheduler(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1", identity="installer")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.01)


@pytest.fixture
def installed(monkeypatch):
    async def install_env(*_: object) -> tuple[bool, str | None]:
        return True, None

    monkeypatch.setattr(packaging, "install_env", install_env)


async def test_an_install_end_refused_at_first_is_recorded_by_a_retry(tmp_path, monkeypatch, installed):
    refused = await asyncpg_outage("refused")  # asyncpg's own, as shared.data_errors asks
    refusals, recorded = [refused, refused], []

    async def finish_env(pool, sha, worker, ok, reason):
        if refusals:
            raise refusals.pop(0)
        recorded.append((sha, ok, reason))
        return True

    monkeypatch.setattr(store, "finish_env", finish_env)
    installer = a_scheduler(tmp_path)
    task = asyncio.create_task(installer._install_one({"requirements_sha": SHA, "requirements": "x==1"}))
    await asyncio.wait({task}, timeout=20)
    assert task.done() and task.exception() is None, task  # was: the ConnectionRefusedError, never retrieved
    assert recorded == [(SHA, True, None)]
    assert installer._wake.is_set()  # the installer is free


async def test_an_install_end_never_recorded_is_one_warning_and_no_exception(tmp_path, monkeypatch, installed,
                                                                              caplog):
    monkeypatch.setattr(scheduler, "END_RECORD_SECONDS", 0.3)

    refused = await asyncpg_outage("refused")

    async def finish_env(*_: object) -> None:
        raise refused

    monkeypatch.setattr(store, "finish_env", finish_env)
    caplog.set_level(logging.WARNING, logger="railyard.task_scheduler.scheduler")
    task = asyncio.create_task(a_scheduler(tmp_path)._install_one({"requirements_sha": SHA, "requirements": "x==1"}))
    await asyncio.wait({task}, timeout=20)
    assert task.done() and task.exception() is None, task
    said = [r.getMessage() for r in caplog.records if "could not be recorded" in r.getMessage()]
    assert len(said) == 1 and SHA[:12] in said[0] and "ConnectionRefusedError" in said[0], said


async def test_a_refused_beat_does_not_end_the_install_beating(tmp_path, monkeypatch):
    beats: list[str] = []
    beaten_twice = asyncio.Event()
    refused = await asyncpg_outage("refused")

    async def beat_env(pool, sha, worker):
        beats.append(sha)
        if len(beats) == 1:
            raise refused
        beaten_twice.set()
        return True

    async def install_env(*_: object) -> tuple[bool, str | None]:  # a long install, beaten while it runs
        await asyncio.wait({asyncio.ensure_future(beaten_twice.wait())}, timeout=10)
        return beaten_twice.is_set(), None

    async def finish_env(pool, sha, worker, ok, reason):
        ended.append(ok)
        return True

    ended: list[bool] = []
    monkeypatch.setattr(store, "beat_env", beat_env)
    monkeypatch.setattr(store, "finish_env", finish_env)
    monkeypatch.setattr(packaging, "install_env", install_env)
    await a_scheduler(tmp_path, heartbeat=0.05)._install_one({"requirements_sha": SHA, "requirements": "x==1"})
    assert ended == [True], f"beaten {len(beats)} time(s): the first refusal ended the beating"
