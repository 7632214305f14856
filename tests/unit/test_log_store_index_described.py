"""A flush of engine segment descriptions only (the consumer loop flushes descriptions apart from rows) records and
indexes them with store.index_described, one statement, and looks nothing up first: a description recorded before is
skipped by that statement (tests/integration/test_log_index_described.py). A flush with rows takes the look-up and
the transaction as before. Every message is acknowledged after the indexing, none before."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pyarrow as pa

from services.log_store import handlers
from services.log_store.handlers import Batch, Ingestor
from shared.log_segments import SegmentRef


def _ref(n: int) -> SegmentRef:
    return SegmentRef(key=f"ws-7/p/2026/12/05/k{n}", bytes=10 + n, rows=1 + n, min_time=n, max_time=n + 1,
                      schema_fp="fp", versions=["v"], dropped=[])


class Msg(SimpleNamespace):
    pass


def _ingestor(monkeypatch, batches: dict[str, Batch]) -> tuple[Ingestor, list]:
    calls: list = []

    async def ack(msg) -> None:
        calls.append(("ack", msg.name))

    async def index_described(pool, described) -> None:
        calls.append(("index_described", [(b, s.object_key, s.row_count) for b, s in described]))

    async def committed_batches(pool, ids) -> set[str]:
        calls.append(("committed_batches", sorted(ids)))
        return set()

    async def commit_segments(pool, batch_ids, segments, request_ids=None) -> None:
        calls.append(("commit_segments", sorted(batch_ids)))

    async def owners(self, found):
        return found, set()

    monkeypatch.setattr(handlers, "_ack", ack)
    monkeypatch.setattr(handlers, "parse_batch", lambda msg, probe=False: batches[msg.name])
    monkeypatch.setattr(handlers.store, "index_described", index_described)
    monkeypatch.setattr(handlers.store, "committed_batches", committed_batches)
    monkeypatch.setattr(handlers.store, "commit_segments", commit_segments)
    monkeypatch.setattr(Ingestor, "check_owners", owners)
    ingestor = Ingestor(SimpleNamespace(), js=None)
    ingestor.deps = SimpleNamespace(pool=None, orphan_sweep=handlers.OrphanSweep(), settings=None)
    return ingestor, calls


def _description(name: str, batch_id: str, n: int) -> tuple[Msg, Batch]:
    msg = Msg(name=name, headers={})
    return msg, Batch(msg, batch_id, 7, "p", None, ref=_ref(n), deployment="d-1")


def test_descriptions_alone_are_indexed_in_one_call_without_a_look_up_and_acknowledged_after(monkeypatch):
    (m1, b1), (m2, b2), (m3, b3) = _description("m1", "b1", 1), _description("m2", "b2", 2), \
        _description("m3", "b1", 3)  # m3: b1 again in the same fetch (a redelivery): once
    ingestor, calls = _ingestor(monkeypatch, {"m1": b1, "m2": b2, "m3": b3})
    asyncio.run(ingestor.flush([m1, m2, m3]))
    assert calls == [("index_described", [("b1", "ws-7/p/2026/12/05/k1", 2), ("b2", "ws-7/p/2026/12/05/k2", 3)]),
                     ("ack", "m1"), ("ack", "m2"), ("ack", "m3")]


def test_a_flush_with_rows_looks_up_and_commits_as_before(monkeypatch):
    (m1, b1) = _description("m1", "b1", 1)
    m2 = Msg(name="m2", headers={})
    rows = Batch(m2, "b2", 7, "p", pa.table({"time": pa.array([], pa.int64())}), deployment="d-1")
    ingestor, calls = _ingestor(monkeypatch, {"m1": b1, "m2": rows})
    asyncio.run(ingestor.flush([m1, m2]))
    assert calls == [("committed_batches", ["b1", "b2"]), ("commit_segments", ["b1", "b2"]),
                     ("ack", "m1"), ("ack", "m2")]
