"""What the task scheduler's integration tests set up alike, on the service's migrations in a schema of the test's own
(tests.integration.conftest.service_schema): a `Scheduler` (or a stand-in subclass) started on that schema's pool, a
run row supervised by a named process, and the sandbox's settings for real runs. Before, each test file had its own
copy (duplicates D5, D11)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from services.task_scheduler.handlers import Deps
from services.task_scheduler.scheduler import Scheduler
from shared import sandbox
from shared.settings import Settings, TaskSettings

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "task_scheduler" / "migrations"

S = TypeVar("S", bound=Scheduler)


def scheduler_on(kind: type[S], pool: asyncpg.Pool, work_root: Path, name: str, settings: TaskSettings, *,
                 start: bool = True) -> S:
    """A `kind` of Scheduler named `name` (its identity, its runs' `supervisor`) on `pool`, its runs' directories under
    `work_root`, publishing nothing, minting a token no gateway checks; its loop started unless `start` is False."""

    async def publish(subject: str, event: object) -> None:
        pass

    async def mint(*_: object) -> str:
        return "unused"

    deps = Deps(pool=pool, objects=None, settings=settings, work_root=work_root, membership=lambda token: None,
                publish=publish)
    made = kind(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1", identity=name)
    if start:
        made.start()
    return made


async def a_supervised_run(pool: asyncpg.Pool, status: str = "running", *, supervisor: str = "supervisor-a",
                           beat_seconds_ago: float = 0.0, started_seconds_ago: float = 0.0) -> uuid.UUID:
    """A run of a run-once task and orchestration of its own (workspace 1), in `status`, supervised by `supervisor`,
    its heartbeat `beat_seconds_ago` and its start `started_seconds_ago`."""
    orch_id, task_id, run_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO orchestrations (id, workspace_id, sha, file_name, entrypoint, packaging_id,"
                       " owner_id, status) VALUES ($1, 1, 'sha', 'o.zip', 'main.py', $2, 'owner', 'ready')", orch_id,
                       uuid.uuid4())
    await pool.execute("INSERT INTO tasks (id, workspace_id, orch_id, orch_sha, owner_id, args, timeout_seconds) VALUES"
                       " ($1, 1, $2, 'sha', 'owner', $3, 60)", task_id, orch_id, json.dumps({}))
    await pool.execute("INSERT INTO runs (id, task_id, workspace_id, status, supervisor, heartbeat_at, started_at)"
                       " VALUES ($1, $2, 1, $3, $4, now() - make_interval(secs => $5),"
                       " now() - make_interval(secs => $6))", run_id, task_id, status, supervisor, beat_seconds_ago,
                       started_seconds_ago)
    return run_id


def sandbox_settings_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose stack data directory is a fresh folder under `tmp_path`, made the sandbox's (shared/sandbox.py
    reads them for the launcher and the gateway relay): real sandboxed runs in a test's own process."""
    data = tmp_path / "data"
    data.mkdir()
    settings = Settings(stack={"data_dir": data})
    monkeypatch.setattr(sandbox, "_settings", lambda: settings)
    return settings


async def until(what: str, check, within: float = 60.0):
    """What `check()` answers once it is true, asked every 50 ms; an AssertionError naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while not (found := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.05)
    return found
