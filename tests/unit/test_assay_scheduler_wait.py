"""The assay scheduler's wait (services/assay_runner/handlers.py `scheduler_wait`, app.py `scheduler`): a pass every
`tick` while a window is due, else at the earliest active window's due time, at most SCHEDULER_IDLE (60 s), and at
once when this process created or activated an assay (`Deps.scheduled`). Before, it asked PostgreSQL every tick (1 s)
whether anything was due, with no assay active too: an idle stack's assay runner held a backend for good
(docs/performance.md, item 61)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from services.assay_runner import handlers
from shared.authz import Principal
from shared.settings import AssaySettings

T0 = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
SETTINGS = AssaySettings(tick=1.0, close_delay=1.0)


def test_nothing_active_waits_the_idle_wait():
    assert handlers.scheduler_wait(None, T0, SETTINGS) == handlers.SCHEDULER_IDLE == 60.0


def test_a_due_window_is_looked_at_every_tick():
    assert handlers.scheduler_wait(T0 - timedelta(seconds=30), T0, SETTINGS) == 1.0  # due (or waiting for logs)
    assert handlers.scheduler_wait(T0, T0, SETTINGS) == 1.0  # closed now, due after close_delay


def test_a_later_window_is_waited_for_until_due_at_most_the_idle_wait():
    assert handlers.scheduler_wait(T0 + timedelta(seconds=9), T0, SETTINGS) == 10.0  # window end + close_delay
    assert handlers.scheduler_wait(T0 + timedelta(hours=1), T0, SETTINGS) == 60.0  # another runner's new assay: seen
    slow = AssaySettings(tick=90.0, close_delay=1.0)
    assert handlers.scheduler_wait(None, T0, slow) == 90.0  # a tick longer than the idle wait is kept


def test_activating_an_assay_wakes_the_scheduler(monkeypatch):
    async def found(deps, principal, token, assay_id) -> dict[str, Any]:
        return {"id": assay_id}

    async def set_active(pool, assay_id, active, resume=None) -> None:
        return None

    monkeypatch.setattr(handlers, "_assay", found)
    monkeypatch.setattr(handlers.store, "set_active", set_active)
    deps = handlers.Deps(pool=None, settings=SETTINGS, membership=None, read_field=None,  # type: ignore[arg-type]
                         pipeline_of=None, log_page=None)  # type: ignore[arg-type]
    principal = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="t", username="a",
                          issued_at=0.0)
    assert not deps.scheduled.is_set()
    asyncio.run(handlers.set_active(deps, principal, "token", handlers.SetAssayActive(id=7, active=True)))
    assert deps.scheduled.is_set()
