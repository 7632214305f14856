"""A batch held for its deployment's announcement (services/log_store/handlers.py, `Ingestor.check_owners`) is asked
back as soon as this process records the announcement (`Ingestor.announced`, then `wake_held` at the loop's next
turn: a plain NAK to its last delivery's reply subject, which makes the server deliver it again now). Before, it came
back when its nak's delay ran out, up to a minute later. The real server's side is
tests/integration/test_log_owners.py::test_batches_held_for_a_late_announcement_are_stored_as_soon_as_it_lands."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

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
        self.delays: list[float] = []

    async def nak(self, delay: float) -> None:
        self.delays.append(delay)


class Deployments:
    """Nothing announced; the announcement of `late` is recorded while the flush looks it up (the announcements'
    task runs between the lookup's query and its answer)."""

    caught_up = 0.0

    def __init__(self, late: str) -> None:
        self.late = late
        self.on_recorded = lambda name: None

    async def lookup(self, names: list[str]) -> dict:
        if self.late in names:
            self.on_recorded(self.late)
        return {}


def _batch(msg: Msg, deployment: str) -> Batch:
    return Batch(msg, f"batch-{msg.metadata.sequence.stream}", 1, "p", None, deployment=deployment)


def test_a_batch_held_by_a_flush_that_looked_it_up_before_its_announcement_was_recorded_is_asked_back():
    async def scenario() -> None:
        nc, deployments = Nc(), Deployments("dep-late")
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=None, deployments=deployments, nc=nc)
        late, other = Msg("dep-late", 7), Msg("dep-other", 8)
        kept, held = await ingestor.check_owners([_batch(late, "dep-late"), _batch(other, "dep-other")])
        assert kept == [] and held == {id(late), id(other)}
        assert late.delays and other.delays  # held with a delay, as before
        assert await ingestor.wake_held([]) == 1
        assert nc.published == [(late.reply, b"-NAK")]  # the announced deployment's batch only
        assert await ingestor.wake_held([]) == 0  # once per announcement

    asyncio.run(scenario())


def test_a_held_batch_fetched_again_before_the_wake_up_is_left_to_its_flush():
    async def scenario() -> None:
        nc, deployments = Nc(), Deployments("none")
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=None, deployments=deployments, nc=nc)
        first, second = Msg("dep-a", 3), Msg("dep-a", 4)
        await ingestor.check_owners([_batch(first, "dep-a"), _batch(second, "dep-a")])
        deployments.on_recorded("dep-a")
        again = Msg("dep-a", 3)  # its delay ran out: fetched, its flush will find the announcement
        assert await ingestor.wake_held([again]) == 1
        assert nc.published == [(second.reply, b"-NAK")]

    asyncio.run(scenario())


class Table:
    """The deployments table: what any log-store process recorded (`known`), asked by lookup; on_recorded is never
    called here (another process read the announcement)."""

    caught_up = 0.0

    def __init__(self) -> None:
        self.known: dict[str, object] = {}
        self.asked: list[list[str]] = []
        self.on_recorded = lambda name: None

    async def lookup(self, names: list[str]) -> dict:
        self.asked.append(list(names))
        return {name: self.known[name] for name in names if name in self.known}


def test_a_held_batch_is_asked_back_once_another_process_recorded_its_announcement(monkeypatch):
    """Another log-store process read the announcement (on_recorded is not called here); the next look in
    PostgreSQL (`look_up_held`, at most every HELD_LOOKUP_EVERY while batches are held) finds it, and the batch is
    asked back once. On the old code nothing looked: it came back at its nak's delay."""
    from services.log_store import handlers

    clock = [100.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])

    async def scenario() -> None:
        nc, table = Nc(), Table()
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=None, deployments=table, nc=nc)
        late, other = Msg("dep-late", 7), Msg("dep-other", 8)
        await ingestor.check_owners([_batch(late, "dep-late"), _batch(other, "dep-other")])
        table.asked.clear()
        await ingestor.look_up_held()
        assert table.asked == [["dep-late", "dep-other"]] and await ingestor.wake_held([]) == 0
        table.known["dep-late"] = object()  # recorded by the other process
        await ingestor.look_up_held()  # within HELD_LOOKUP_EVERY of the last look: not asked
        assert len(table.asked) == 1
        clock[0] += handlers.HELD_LOOKUP_EVERY
        await ingestor.look_up_held()
        assert await ingestor.wake_held([]) == 1 and nc.published == [(late.reply, b"-NAK")]
        clock[0] += handlers.HELD_LOOKUP_EVERY
        await ingestor.look_up_held()  # the other, not found twice, is due 2 s after the last look
        assert len(table.asked) == 2
        clock[0] += handlers.HELD_LOOKUP_EVERY
        await ingestor.look_up_held()  # asked back already: only the other deployment is looked up
        assert table.asked[-1] == ["dep-other"] and await ingestor.wake_held([]) == 0
        clock[0] += handlers.HELD_LOOKUP_EVERY
        table.known["dep-other"] = object()
        late_again = Msg("dep-late", 7)  # came back to another process, or here at its delay: held anew here
        del table.known["dep-late"]
        await ingestor.check_owners([_batch(late_again, "dep-late")])
        table.known["dep-late"] = object()
        await ingestor.look_up_held()  # held anew: looked up at once; the other waits for its turn (4 s)
        assert table.asked[-1] == ["dep-late"] and await ingestor.wake_held([]) == 1
        clock[0] += 3 * handlers.HELD_LOOKUP_EVERY
        await ingestor.look_up_held()
        assert table.asked[-1] == ["dep-other"] and await ingestor.wake_held([]) == 1

    asyncio.run(scenario())


def test_a_held_batch_not_seen_again_here_is_not_looked_up_every_second_for_ever(monkeypatch):
    """A held batch that never comes back to this process (stored or quarantined by another log-store process, gone
    from the stream at its caps) keeps its entry until the hold is full (`may_hold` prunes only then). Its deployment
    was asked of PostgreSQL at every look (every HELD_LOOKUP_EVERY) for as long as the process ran when it is never
    announced; now only batches seen within HELD_FRESH are looked up (one held here comes back at least every
    UNKNOWN_RETRY_MAX), so the looks stop. A batch seen again is looked up again."""
    from services.log_store import handlers

    clock = [100.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: clock[0])

    async def scenario() -> None:
        nc, table = Nc(), Table()
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=None, deployments=table, nc=nc)
        gone = Msg("dep-never", 5)
        await ingestor.check_owners([_batch(gone, "dep-never")])
        table.asked.clear()
        clock[0] += handlers.HELD_FRESH - 1
        await ingestor.look_up_held()
        assert table.asked == [["dep-never"]]  # still expected back here
        clock[0] += 1
        await ingestor.look_up_held()
        clock[0] += 3600
        await ingestor.look_up_held()
        assert table.asked == [["dep-never"]]  # not seen for HELD_FRESH: not asked again
        await ingestor.check_owners([_batch(Msg("dep-never", 5), "dep-never")])  # back here: held anew
        table.asked.clear()
        clock[0] += handlers.HELD_LOOKUP_EVERY
        await ingestor.look_up_held()
        assert table.asked == [["dep-never"]]

    asyncio.run(scenario())
