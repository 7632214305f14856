"""The log store's orphan sweep over many pipelines against the test stack's real S3 server (in a bucket of its
own): a pass lists only the pipelines the log store heard of a write to (its own segments, engines'
descriptions), at most ORPHAN_LISTINGS_AT_ONCE listings in flight; the others wait until their unlisted span
reaches ORPHAN_UNHEARD_LIST and are then listed over that whole span, so an orphan nobody announced is deleted
late, not never. Every pass used to make two listings per pipeline the log store ever had, one after another.
The index (pipelines, the keys its rows name) is a stand-in, so the stack's own log store is not involved."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from services.log_store import handlers
from services.log_store.handlers import ORPHAN_AGE, Deps, _sweep_orphan_segments
from shared.log_segments import ENGINE_SUFFIX, SEGMENT_HEADER, segment_key
from shared.logrecords import LOG_HEADER
from shared.messages.logs import LogMaintenanceReport
from shared.objectstore import BUCKET_LOGS, MinioObjectStore
from shared.settings import LogSettings

pytestmark = pytest.mark.timeout(300)

PIPELINES = 1000
STREAM_MAX_AGE = 60.0  # an engine's segment is judged a minute after the log store's own (real mtimes: no waiting)


class CountedListings:
    """The real object store, counting the ranged listings and how many were in flight at once."""

    def __init__(self, objects: MinioObjectStore) -> None:
        self.objects = objects
        self.ranged = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def list_keys_between(self, *args: str) -> list[tuple[str, float]]:
        self.ranged += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.objects.list_keys_between(*args)
        finally:
            self.in_flight -= 1

    def __getattr__(self, name: str):  # noqa: ANN204 - everything else goes to the real store
        return getattr(self.objects, name)


class Description:
    def __init__(self, key: str, workspace_id: int, pipeline: str) -> None:
        self.headers = {SEGMENT_HEADER: "1", LOG_HEADER: json.dumps({"workspace_id": workspace_id,
                                                                     "pipeline": pipeline})}
        self.data = json.dumps({"key": key, "rows": 1}).encode()


async def test_a_sweep_lists_the_pipelines_written_to_and_the_others_once_their_span_is_due(stack, monkeypatch):
    settings = stack.settings().s3.model_copy(update={"bucket_prefix": f"orphans{uuid.uuid4().hex[:8]}"})
    real = MinioObjectStore(settings)
    await real.ensure_buckets([BUCKET_LOGS])
    objects = CountedListings(real)
    workspace = 5
    rows = [{"id": n, "workspace_id": workspace, "name": f"p{n}"} for n in range(PIPELINES)]
    known: set[str] = set()

    async def pipelines(pool) -> list[dict]:  # noqa: ANN001
        return rows

    async def known_keys(pool, keys: list[str]) -> set[str]:  # noqa: ANN001
        return known & set(keys)

    monkeypatch.setattr(handlers.store, "pipelines", pipelines)
    monkeypatch.setattr(handlers.store, "known_keys", known_keys)
    deps = Deps(pool=None, objects=objects, settings=LogSettings(stream_max_age=STREAM_MAX_AGE), reader=None,
                membership=None, pipeline_exists=None)

    async def sweep(at: float) -> int:
        report = LogMaintenanceReport()
        await _sweep_orphan_segments(deps, report, now=at)
        return report.orphans_deleted

    try:
        start = time.time()
        first = start + ORPHAN_AGE + 60  # the sweep's clock: the first cutoff is a minute from now
        assert await sweep(first) == 0  # the whole (empty) bucket
        named = start + 90  # within the next pass's windows; written now, so old enough for its cutoff
        own = segment_key(workspace, "p10", now=named)
        engine = segment_key(workspace, "p20", ENGINE_SUFFIX, now=named - STREAM_MAX_AGE)
        indexed = segment_key(workspace, "p30", now=named)
        unheard = segment_key(workspace, "p999", now=named)  # an engine that died before describing it
        for key in (own, engine, indexed, unheard):
            await real.put_bytes(BUCKET_LOGS, key, b"x")
        known.add(indexed)
        for key in (own, indexed):  # the log store's own writes
            deps.orphan_sweep.hear(handlers.key_pipeline_prefix(key), False, time.time())
        handlers.hear_description(deps.orphan_sweep, Description(engine, workspace, "p20"))

        objects.ranged = 0
        assert await sweep(first + 60) == 2
        kept = {key for key, _ in await real.list_keys(BUCKET_LOGS)}
        assert kept == {indexed, unheard}, kept
        assert objects.ranged <= 3 * 2 * 2, objects.ranged  # 3 pipelines heard of, 2 kinds, a day folder or two

        objects.ranged = 0
        began = time.monotonic()
        assert await sweep(first + handlers.ORPHAN_UNHEARD_LIST + 60) == 1
        took = time.monotonic() - began
        assert {key for key, _ in await real.list_keys(BUCKET_LOGS)} == {indexed}
        assert objects.ranged >= 2 * PIPELINES, objects.ranged
        assert 1 < objects.most_in_flight <= handlers.ORPHAN_LISTINGS_AT_ONCE, objects.most_in_flight
        print(f"{objects.ranged} ranged listings of {PIPELINES} pipelines in {took:.1f} s")

        objects.ranged = 0
        assert await sweep(first + handlers.ORPHAN_UNHEARD_LIST + 120) == 0 and objects.ranged == 0
    finally:
        for key, _ in await real.list_keys(BUCKET_LOGS):
            await real.delete(BUCKET_LOGS, key)
        await asyncio.to_thread(real._client.remove_bucket, real.bucket(BUCKET_LOGS))
