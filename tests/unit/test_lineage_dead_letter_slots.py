"""Lineage writes its dead letters in the same RECORDING_SLOTS (2) as its recordings of events.>: a pulled batch is
handled concurrently, and the dead letters (shared/consumers.py writes them outside the handler, through the pool the
service gives it) took a PostgreSQL backend each on top of the two recordings, so a burst of messages that do not
decode (each a dead letter at its first delivery) held up to pool_max backends, ~15-20 MiB of RSS each.

The real build_router with its events.> subscriber taken from a stand-in router; the recording is a stand-in that
holds its slot until released."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

from services.workflow_lineage import app, handlers


class Router:
    """Keeps each subscriber by its subject (the events.> one: durable_subscriber's wrapped handler)."""

    def __init__(self) -> None:
        self.subscribers: dict[str, object] = {}

    def subscriber(self, subject, *args, **kwargs):
        def keep(function):
            self.subscribers[subject] = function
            return function
        return keep


class Message:
    def __init__(self, data: bytes, seq: int) -> None:
        self.raw_message = SimpleNamespace(
            subject="events.model.uploaded", data=data, headers={},
            metadata=SimpleNamespace(num_delivered=1, stream="EVENTS", sequence=SimpleNamespace(stream=seq),
                                     timestamp=datetime.now(UTC)))
        self.outcome: tuple | None = None

    async def ack(self) -> None:
        self.outcome = ("ack",)

    async def nack(self, delay=None) -> None:
        self.outcome = ("nak", delay)

    async def reject(self) -> None:
        self.outcome = ("term",)


class Pool:
    """The dead-letter inserts (record_dead_letter: fetchval) as they reach PostgreSQL."""

    def __init__(self) -> None:
        self.dead_letters: list[int] = []

    async def fetchval(self, sql: str, *args):
        assert sql.startswith("INSERT INTO dead_letters")
        self.dead_letters.append(args[1])
        return True


async def test_dead_letters_wait_for_a_recording_slot(monkeypatch):
    router = Router()
    monkeypatch.setattr(app, "NatsRouter", lambda: router)
    pool = Pool()
    nats = SimpleNamespace(consumer_max_deliver=10, consumer_backoff=2.0, consumer_backoff_max=300.0)
    runtime = SimpleNamespace(db=pool, settings=SimpleNamespace(nats=nats), extras={})
    app.build_router(runtime)
    on_event = router.subscribers["events.>"]

    recording, held, release = [], asyncio.Event(), asyncio.Event()

    async def record_event(db, subject, body) -> bool:  # holds its slot until released
        recording.append(body["event_id"])
        if len(recording) == app.RECORDING_SLOTS:
            held.set()
        await release.wait()
        return False

    monkeypatch.setattr(handlers, "record_event", record_event)
    events = [json.dumps({"event_id": str(uuid.uuid4())}).encode() for _ in range(app.RECORDING_SLOTS)]
    recordings = [asyncio.create_task(on_event(body, Message(body, seq))) for seq, body in enumerate(events, 1)]
    await asyncio.wait_for(held.wait(), 5)  # both slots held
    dead = Message(b"not JSON", 99)
    written = asyncio.create_task(on_event(b"not JSON", dead))  # a dead letter at its first delivery
    done, _ = await asyncio.wait([written], timeout=0.2)
    assert not done and pool.dead_letters == []  # waits for a slot: it took a third backend before
    release.set()
    await asyncio.gather(written, *recordings)
    assert pool.dead_letters == [99] and dead.outcome == ("term",)


async def test_a_dead_letter_is_written_at_once_while_a_slot_is_free(monkeypatch):
    router = Router()
    monkeypatch.setattr(app, "NatsRouter", lambda: router)
    pool = Pool()
    nats = SimpleNamespace(consumer_max_deliver=10, consumer_backoff=2.0, consumer_backoff_max=300.0)
    app.build_router(SimpleNamespace(db=pool, settings=SimpleNamespace(nats=nats), extras={}))
    dead = Message(b"[]", 5)
    await asyncio.wait_for(router.subscribers["events.>"](b"[]", dead), 5)
    assert pool.dead_letters == [5] and dead.outcome == ("term",)
