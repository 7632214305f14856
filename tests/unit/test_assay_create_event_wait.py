"""assays/create answers once the assay is stored, waiting a moment at most for its events.assay.created to be
sent (services/assay_runner/handlers.py create, CREATED_EVENT_WAIT). It awaited the outbox's whole send: a round
under way (after a bus outage, the backlog of every assay's alerts) and JetStream's ack (5 s each when JetStream
does not answer), so the answer came after the gateway's 5-s request timeout: a 504 for a stored assay, which a
client's retry created twice. The send goes on after the answer; a prompt one is still done before it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np

from services.assay_runner import handlers
from shared.authz import Principal
from shared.settings import AssaySettings

PRINCIPAL = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="test", username="alice",
                      issued_at=0.0)
CONFIG = {"name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output dense_1 0",
          "baseline": {"Static": {"values": [0.0, 1.0, 2.0, 3.0]}}, "window": {"pipeline": "p", "width": "1 seconds"},
          "summarizer": {"num_bins": 2, "bin_mode": "Equal"}, "alert_threshold": 100.0, "workspace_id": 1}


class Pool:
    def acquire(self):
        return self

    def transaction(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        return None


class Outbox:
    """A send that waits until `release` is set (JetStream not answering, a backlog being sent)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent = 0

    async def send(self) -> int:
        await self.release.wait()
        self.sent += 1
        return 1


async def test_create_answers_while_the_outbox_is_slow_and_the_event_still_goes(monkeypatch):
    stored: list[Any] = []

    async def nothing(*args: Any) -> None:
        return None

    async def baseline(deps, token, p):
        return {"counts": [1, 1]}, np.asarray([0.0, 1.5, 3.0]), None

    async def create(conn, *args: Any) -> int:
        stored.append(args)
        return 42

    monkeypatch.setattr(handlers, "_check_pipeline", nothing)
    monkeypatch.setattr(handlers, "_baseline", baseline)
    monkeypatch.setattr(handlers.store, "create", create)
    monkeypatch.setattr(handlers.store, "add_event", nothing)
    monkeypatch.setattr(handlers.store, "named", nothing)  # no assay of that name yet (both creates)
    monkeypatch.setattr(handlers.store, "lock_name", nothing)
    monkeypatch.setattr(handlers, "CREATED_EVENT_WAIT", 0.2, raising=False)
    outbox = Outbox()
    deps = handlers.Deps(pool=Pool(), settings=AssaySettings(), membership=None, read_field=None,  # type: ignore[arg-type]
                         pipeline_of=None, log_page=None, outbox=outbox)  # type: ignore[arg-type]
    cfg = handlers.AssayConfig.model_validate(CONFIG)
    created = await asyncio.wait_for(handlers.create(deps, PRINCIPAL, "token", cfg), 5)
    assert created.assay_id == 42 and len(stored) == 1 and outbox.sent == 0  # answered, the send still waiting
    assert deps.scheduled.is_set()  # the scheduler looks at the new assay at once, not at its idle wait
    outbox.release.set()
    await asyncio.wait_for(asyncio.gather(*handlers._SENDING), 5)  # and it goes on after the answer
    assert outbox.sent == 1 and not handlers._SENDING
    created = await asyncio.wait_for(handlers.create(deps, PRINCIPAL, "token", cfg), 5)
    assert outbox.sent == 2  # a prompt send is done before the answer, as before
