"""What the log store's ingestion keeps about batches held for their deployment's announcement
(services/log_store/handlers.py, `Ingestor.holding`, `look_up_held`): entries go once their batches are released (asked
back, quarantined) or not seen for HOLD_STALE, and a deployment never announced is looked up less and less often.
Before, an entry stayed until the hold was full, and such a deployment was asked of PostgreSQL every second for the
hour its batches waited. The NOTIFY that brings an announcement at once is
tests/integration/test_log_held_lookups.py; two log-store processes, tests/integration/test_log_held_two_stores.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

from services.log_store import handlers
from services.log_store.handlers import Batch, Ingestor
from shared.settings import LogSettings


class Nc:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))


class Msg:
    def __init__(self, deployment: str, seq: int) -> None:
        self.subject = f"logs.inference.{deployment}"
        self.reply = f"$JS.ACK.INFERENCE_LOGS.log-store.1.{seq}.{seq}.0.0"
        self.data = b"x" * 10
        self.headers: dict[str, str] = {}
        self.metadata = SimpleNamespace(sequence=SimpleNamespace(stream=seq), num_delivered=1,
                                        timestamp=datetime.now(UTC))
        self.acked = False

    async def nak(self, delay: float) -> None:
        pass

    async def ack(self) -> None:
        self.acked = True


class Table:
    """The deployments table as lookups read it (`known`); `listen` answers as Deployments.listen does: True when
    listening began now."""

    caught_up = 0.0  # nothing read: no batch is quarantined as never announced

    def __init__(self) -> None:
        self.known: dict[str, object] = {}
        self.asked: list[list[str]] = []
        self.on_recorded = lambda name: None
        self.began = False
        self.wanted: list[bool] = []

    async def lookup(self, names: list[str]) -> dict:
        self.asked.append(list(names))
        return {name: self.known[name] for name in names if name in self.known}

    async def listen(self, wanted: bool) -> bool:
        self.wanted.append(wanted)
        began, self.began = self.began, False
        return began


def _batch(msg: Msg) -> Batch:
    return Batch(msg, f"batch-{msg.metadata.sequence.stream}", 1, "p", None, deployment=msg.subject.rsplit(".")[-1])


def _ingestor(table: Table, nc: Nc | None = None) -> Ingestor:
    return Ingestor(SimpleNamespace(settings=LogSettings()), js=None, deployments=table, nc=nc or Nc())


def test_a_deployment_never_announced_is_looked_up_less_and_less_often(monkeypatch):
    """An hour of a batch whose deployment is never announced, back here every minute (its nak's delay at most),
    the loop looking every second: the looks in PostgreSQL back off (1, 2, 4 ... HELD_LOOKUP_MAX s apart) instead of
    3,600 (one a second, the old code). The batch is never acknowledged meanwhile."""
    clock = [100.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])

    async def scenario() -> None:
        table = Table()
        ingestor = _ingestor(table)
        msg = Msg("dep-never", 5)
        await ingestor.check_owners([_batch(msg)])
        looks: list[float] = []
        for second in range(3600):
            clock[0] = 100.0 + second
            if second % 60 == 59:  # back here: held anew (check_owners' own lookup is not a look)
                msg = Msg("dep-never", 5)
                await ingestor.check_owners([_batch(msg)])
            before = len(table.asked)
            await ingestor.look_up_held()
            if len(table.asked) > before:
                looks.append(second)
        gaps = [b - a for a, b in zip(looks, looks[1:], strict=False)]
        assert gaps[:5] == [1, 2, 4, 8, 16], gaps[:8]
        assert max(gaps) <= handlers.HELD_LOOKUP_MAX
        assert len(looks) <= 3600 / handlers.HELD_LOOKUP_MAX + 10, len(looks)
        assert 5 in ingestor.holding and not msg.acked

    asyncio.run(scenario())


def test_looks_start_over_when_listening_for_announcements_begins_again(monkeypatch):
    """The NOTIFY of an announcement recorded while this process was not listening (the connection dropped, before
    the first LISTEN) is never heard: when listening (re)starts, every held deployment is looked up at the next look,
    not at its backed-off turn (up to HELD_LOOKUP_MAX later)."""
    clock = [100.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])

    async def scenario() -> None:
        table, nc = Table(), Nc()
        ingestor = _ingestor(table, nc)
        msg = Msg("dep-late", 7)
        await ingestor.check_owners([_batch(msg)])
        for _ in range(8):  # backed off: the next turn is HELD_LOOKUP_MAX away
            clock[0] += handlers.HELD_LOOKUP_MAX
            await ingestor.look_up_held()
            ingestor.holding[7] = ingestor.holding[7]._replace(at=clock[0])  # seen again
        table.known["dep-late"] = object()  # recorded meanwhile, its NOTIFY not heard
        table.began = True
        await ingestor.listen()
        clock[0] += handlers.HELD_LOOKUP_EVERY
        await ingestor.look_up_held()
        assert await ingestor.wake_held([]) == 1 and nc.published == [(msg.reply, b"-NAK")]

    asyncio.run(scenario())


def test_listening_is_wanted_only_while_batches_are_held():
    async def scenario() -> None:
        table = Table()
        ingestor = _ingestor(table)
        await ingestor.check_owners([_batch(Msg("dep-a", 3))])
        await ingestor.listen()
        table.known["dep-a"] = object()
        await ingestor.look_up_held()
        await ingestor.wake_held([])
        await ingestor.listen()
        assert table.wanted == [True, False] and not ingestor.listening

    asyncio.run(scenario())


def test_a_batch_asked_back_is_held_here_no_more():
    """Asked back (its deployment announced), the batch may go to another process: its entry and bytes go at once.
    Before, the entry stayed (reply None) until the hold was full."""
    async def scenario() -> None:
        table = Table()
        ingestor = _ingestor(table)
        await ingestor.check_owners([_batch(Msg("dep-a", 3)), _batch(Msg("dep-b", 4))])
        assert set(ingestor.holding) == {3, 4} and ingestor.holding_bytes == 20
        table.on_recorded("dep-a")  # recorded (or its NOTIFY heard): Ingestor.announced
        assert await ingestor.wake_held([]) == 1
        assert set(ingestor.holding) == {4} and ingestor.holding_bytes == 10

    asyncio.run(scenario())


def test_a_held_batch_quarantined_is_held_here_no_more(monkeypatch):
    """A held batch quarantined (here: found stored or quarantined before, the quarantine's first step) leaves the
    hold. Before, its entry stayed until the hold was full."""
    async def committed(pool, ids):
        return set(ids)

    monkeypatch.setattr(handlers.store, "committed_batches", committed)

    async def scenario() -> None:
        ingestor = _ingestor(Table())
        msg = Msg("dep-a", 3)
        await ingestor.check_owners([_batch(msg)])
        assert 3 in ingestor.holding
        ingestor.deps = SimpleNamespace(pool=None, settings=LogSettings())
        await ingestor.quarantine(msg, "a reason")
        assert msg.acked and ingestor.holding == {} and ingestor.holding_bytes == 0

    asyncio.run(scenario())


def test_entries_not_seen_for_hold_stale_go_without_the_hold_being_full(monkeypatch):
    """A held batch taken by another process or gone from the stream never comes back here: its entry goes once not
    seen for HOLD_STALE (at most every HOLD_PRUNE_EVERY), not only when the hold is full (`may_hold`). One seen
    again stays."""
    clock = [100.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])

    async def scenario() -> None:
        ingestor = _ingestor(Table())
        await ingestor.check_owners([_batch(Msg("dep-a", 3)), _batch(Msg("dep-b", 4))])
        clock[0] += handlers.HOLD_STALE - 1
        await ingestor.check_owners([_batch(Msg("dep-b", 4))])  # back here
        ingestor.prune_held()
        assert set(ingestor.holding) == {3, 4}
        clock[0] += 1
        ingestor.prune_held()  # within HOLD_PRUNE_EVERY of the last sweep
        assert set(ingestor.holding) == {3, 4}
        clock[0] += handlers.HOLD_PRUNE_EVERY
        ingestor.prune_held()
        assert set(ingestor.holding) == {4} and ingestor.holding_bytes == 10

    asyncio.run(scenario())


class Conn:
    def __init__(self) -> None:
        self.listeners: list[tuple[str, object]] = []
        self.closed = False

    async def add_listener(self, channel: str, callback) -> None:
        self.listeners.append((channel, callback))

    def is_closed(self) -> bool:
        return self.closed

    async def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True


class Opener:
    """Opens Conn (Deployments' `connect`); the first `failures` fail (PostgreSQL away)."""

    def __init__(self, failures: int) -> None:
        self.failures, self.opened = failures, []

    async def __call__(self) -> Conn:
        if self.failures:
            self.failures -= 1
            raise OSError("the database is away")
        self.opened.append(Conn())
        return self.opened[-1]


class NoPool:
    """The LISTEN takes none of the pool's connections."""

    async def acquire(self):
        raise AssertionError("the LISTEN took a connection of the pool")


def test_a_listen_that_cannot_start_is_tried_again_later_and_a_closed_one_replaced(caplog):
    """Deployments.listen: a failed start is logged once and tried again LISTEN_RETRY later (not at every turn of the
    loop); a connection found closed is replaced, which says listening began again (the caller looks its held
    deployments up: what was recorded meanwhile was not heard); not wanted, it is closed. Never a pool connection."""
    from services.log_store import deployments

    async def scenario() -> None:
        opener = Opener(failures=2)
        known = deployments.Deployments(NoPool(), connect=opener)  # type: ignore[arg-type]
        heard: list[str] = []
        known.on_recorded = heard.append
        assert not await known.listen(True) and opener.failures == 1
        assert not await known.listen(True) and opener.failures == 1  # within LISTEN_RETRY: not tried
        known.listen_failed_at -= deployments.LISTEN_RETRY
        assert not await known.listen(True) and opener.failures == 0
        known.listen_failed_at -= deployments.LISTEN_RETRY
        assert await known.listen(True)
        first = opener.opened[-1]
        channel, callback = first.listeners[0]
        assert channel == deployments.CHANNEL
        callback(first, 1, channel, "dep-a")
        assert heard == ["dep-a"]
        assert not await known.listen(True)  # listening already
        first.closed = True
        assert await known.listen(True) and known.listener is opener.opened[-1] is not first
        assert not await known.listen(False) and known.listener is None and opener.opened[-1].closed
        assert len(opener.opened) == 2

    asyncio.run(scenario())
    assert sum("listening for recorded deployments failed" in r.getMessage() for r in caplog.records) == 1
