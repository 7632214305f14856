"""The log store's consumer loop (`Ingestor.run`) indexes an engine's segment description as soon as it fetches it,
not after `flush_interval`: the engine gathered its rows for `engine_segment_ms` already and the log store writes
nothing for it, so that wait only made the rows readable later (docs/performance.md item 85). Descriptions that come
less than `flush_interval` after others were indexed gather until it is up and go in one flush (one transaction),
so a busy stack's many segments a second cost no more flushes than before; rows that come through the stream still
gather for `flush_interval`, and a fetch that mixes both leaves the rows gathering."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import nats.errors

from services.log_store.handlers import Ingestor, is_description
from shared.log_segments import SEGMENT_HEADER
from shared.settings import LogSettings


def description(name: str) -> SimpleNamespace:
    return SimpleNamespace(data=b"{}", headers={SEGMENT_HEADER: "1"}, name=name)


def rows(name: str) -> SimpleNamespace:
    return SimpleNamespace(data=b"x" * 100, headers={}, name=name)


class FakeSubscription:
    """The given fetches' messages, one fetch each, then fetches that time out as nats-py's do when nothing came."""

    def __init__(self, fetches: list[list[SimpleNamespace]]) -> None:
        self.fetches = list(fetches)

    async def fetch(self, batch: int, timeout: float) -> list:
        if self.fetches:
            return self.fetches.pop(0)
        await asyncio.sleep(min(timeout, 0.01))
        raise nats.errors.TimeoutError()


def run(fetches: list[list[SimpleNamespace]], flush_interval: float, flushes: int) -> list[list[str]]:
    """The loop until it made `flushes` flushes; the names of each flush's messages."""
    ingestor = Ingestor(SimpleNamespace(settings=LogSettings(flush_interval=flush_interval)), js=None)
    ingestor.sub = FakeSubscription(fetches)
    flushed: list[list[str]] = []

    async def flush_with_retry(msgs, probe=False):
        flushed.append([msg.name for msg in msgs])
        if len(flushed) == flushes:
            ingestor.running = False

    ingestor.flush_with_retry = flush_with_retry
    asyncio.run(asyncio.wait_for(ingestor.run(), 30))
    return flushed


def test_a_description_is_indexed_without_waiting_for_flush_interval():
    # an hour's flush_interval: before, the loop gathered the description that long (the wait_for's 30 s ran out)
    assert run([[description("d1")]], flush_interval=3600, flushes=1) == [["d1"]]


def test_descriptions_soon_after_an_indexing_gather_until_flush_interval_is_up():
    # d1 and d2 fetched together: one flush at once; d3 and d4 come right after it: one flush, flush_interval later
    assert run([[description("d1"), description("d2")], [description("d3")], [description("d4")]],
               flush_interval=1.0, flushes=2) == [["d1", "d2"], ["d3", "d4"]]


def test_rows_fetched_with_descriptions_still_gather_for_flush_interval():
    fetches = [[rows("r1"), description("d1"), rows("r2")], [rows("r3")]]
    assert run(fetches, flush_interval=1.0, flushes=2) == [["d1"], ["r1", "r2", "r3"]]


def test_what_is_a_description():
    assert is_description(description("d"))
    assert not is_description(rows("r"))
    assert not is_description(SimpleNamespace(data=b"x"))  # no headers at all
    assert not is_description(SimpleNamespace(data=b"x", headers=None))
