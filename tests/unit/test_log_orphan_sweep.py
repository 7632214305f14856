"""Maintenance's sweep of orphaned log segments (services/log_store/handlers.py `_sweep_orphan_segments`): objects
no index row names are deleted once old enough, the first sweep of a process lists the whole logs bucket and the
later ones only the keys named since the previous sweep's cutoffs (segment keys sort by time in their day folder,
shared/log_segments.py `segment_key`). An in-memory object store that honours the ranged listing as S3's
`start-after` does; tests/integration/test_storage.py checks the ranged listing against the real S3 server."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from services.log_store import handlers
from services.log_store.handlers import ORPHAN_AGE, Deps, _sweep_orphan_segments
from shared.log_segments import (
    ENGINE_SUFFIX,
    SEGMENT_HEADER,
    SegmentRef,
    day_folders,
    key_moment,
    key_time,
    segment_key,
)
from shared.logrecords import LOG_HEADER
from shared.messages.logs import LogMaintenanceReport
from shared.objectstore import BUCKET_LOGS
from shared.settings import LogSettings

DAY = 86400.0
START = 1_790_000_000.0  # 2026-09-21: any moment does


class Objects:
    """key -> last modified, in the logs bucket; counts the listings asked for."""

    def __init__(self) -> None:
        self.kept: dict[str, float] = {}
        self.full_listings = 0
        self.ranged: list[tuple[str, str, str]] = []

    def put(self, key: str, at: float) -> str:
        self.kept[key] = at
        return key

    async def delete(self, bucket: str, key: str) -> None:
        assert bucket == BUCKET_LOGS
        self.kept.pop(key, None)

    async def list_keys(self, bucket: str, prefix: str = "") -> list[tuple[str, float]]:
        self.full_listings += 1
        return sorted((k, at) for k, at in self.kept.items() if k.startswith(prefix))

    async def list_keys_between(self, bucket: str, prefix: str, first: str, last: str) -> list[tuple[str, float]]:
        self.ranged.append((prefix, first, last))
        return sorted((k, at) for k, at in self.kept.items()
                      if k.startswith(prefix) and k > prefix + first and k[:len(prefix + last)] <= prefix + last)


class Index:
    """The log store's tables as the sweep reads them: its pipelines and the keys its rows name."""

    def __init__(self) -> None:
        self.known: set[str] = set()
        self.rows = [{"id": 1, "workspace_id": 3, "name": "fraud"}, {"id": 2, "workspace_id": 4, "name": "a/b"}]

    async def pipelines(self, pool) -> list[dict]:
        return self.rows

    async def known_keys(self, pool, keys: list[str]) -> set[str]:
        return self.known & set(keys)


@pytest.fixture
def world(monkeypatch):
    index = Index()
    monkeypatch.setattr(handlers.store, "pipelines", index.pipelines)
    monkeypatch.setattr(handlers.store, "known_keys", index.known_keys)
    objects = Objects()
    deps = Deps(pool=None, objects=objects, settings=LogSettings(), reader=None, membership=None,
                pipeline_exists=None)
    return deps, objects, index


def heard(deps: Deps, *keys: str) -> None:
    """The log store heard of these keys being named, as it does of its own writes and engines' descriptions."""
    for key in keys:
        deps.orphan_sweep.hear(handlers.key_pipeline_prefix(key), key.endswith(ENGINE_SUFFIX), key_moment(key))


def sweep(deps: Deps, now: float) -> int:
    report = LogMaintenanceReport()
    asyncio.run(_sweep_orphan_segments(deps, report, now=now))
    return report.orphans_deleted


def test_keys_sort_by_time_in_their_day_folder_and_keep_the_shape_descriptions_are_checked_by():
    keys = [segment_key(3, "fraud", ENGINE_SUFFIX, now=START + n * 0.001) for n in range(50)]
    assert keys == sorted(keys) and len(set(keys)) == 50
    name = keys[0].rsplit("/", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{32}" + re.escape(ENGINE_SUFFIX), name) and name.startswith(key_time(START))
    body = SegmentRef(key=keys[0], bytes=10, rows=2, min_time=1, max_time=2, schema_fp="f", versions=[],
                      dropped=[]).to_json()
    assert SegmentRef.from_json(body, 3, "fraud").key == keys[0]
    assert day_folders(START, START + 2 * DAY) == [day_folders(START + n * DAY, START + n * DAY)[0] for n in range(3)]
    assert segment_key(3, "fraud", now=START).startswith(f"ws-3/fraud/{day_folders(START, START)[0]}/")


def test_the_first_sweep_lists_everything_and_deletes_only_old_keys_no_row_names(world):
    deps, objects, index = world
    now = START + 10 * DAY
    orphan = objects.put(segment_key(3, "fraud", now=now - ORPHAN_AGE - 60), now - ORPHAN_AGE - 59)
    indexed = objects.put(segment_key(3, "fraud", now=now - ORPHAN_AGE - 60), now - ORPHAN_AGE - 59)
    young = objects.put(segment_key(3, "fraud", now=now - 60), now - 59)
    engine = objects.put(segment_key(3, "fraud", ENGINE_SUFFIX, now=now - 2 * ORPHAN_AGE), now - 2 * ORPHAN_AGE)
    old_shape = objects.put("ws-9/gone/2026/01/01/" + "f" * 32 + ".parquet", 0.0)  # a uuid4 name, any pipeline
    quarantined = objects.put("quarantine/probe", 0.0)
    index.known.add(indexed)
    assert sweep(deps, now) == 2
    assert set(objects.kept) == {indexed, young, engine, quarantined}  # the engine's may still be in the stream
    assert objects.full_listings == 1 and orphan not in objects.kept and old_shape not in objects.kept


def test_later_sweeps_list_only_what_passed_a_cutoff_since_and_catch_late_writes(world):
    deps, objects, index = world
    now = START + 10 * DAY
    assert sweep(deps, now) == 0 and objects.full_listings == 1
    # written over the next minutes, in both pipelines
    later = now + 60
    orphan = objects.put(segment_key(4, "a/b", now=now - ORPHAN_AGE + 10), now - ORPHAN_AGE + 11)
    indexed = objects.put(segment_key(3, "fraud", now=now - ORPHAN_AGE + 20), now - ORPHAN_AGE + 21)
    late = objects.put(segment_key(3, "fraud", now=now - ORPHAN_AGE + 30), later - ORPHAN_AGE + 5)  # PUT ended late
    fresh = objects.put(segment_key(3, "fraud", now=later - 10), later - 9)
    engine_old = later - ORPHAN_AGE - deps.settings.stream_max_age - 5
    engine = objects.put(segment_key(3, "fraud", ENGINE_SUFFIX, now=engine_old), engine_old)
    index.known.add(indexed)
    heard(deps, orphan, indexed, late, fresh, engine)
    assert sweep(deps, later) == 2  # the orphan and the engine's, now past its stream's age
    assert objects.full_listings == 1, "a later sweep listed the whole bucket"
    assert {orphan, engine}.isdisjoint(objects.kept) and {indexed, late, fresh} <= set(objects.kept)
    # each listing is one day folder of one pipeline, from the previous cutoff (less the slack) to this one
    firsts = {first for _, first, _ in objects.ranged}
    assert key_time(now - ORPHAN_AGE - handlers.ORPHAN_SLACK) in firsts
    assert {prefix.split("/")[0] for prefix, _, _ in objects.ranged} == {"ws-3", "ws-4"}
    assert all(last in (key_time(later - ORPHAN_AGE), key_time(later - ORPHAN_AGE - deps.settings.stream_max_age))
               for _, _, last in objects.ranged)
    # the late one was named within the window but written after its cutoff: judged at the next sweep
    assert late in deps.orphan_sweep.pending
    assert sweep(deps, later + 60) == 1 and late not in objects.kept and fresh in objects.kept
    assert objects.full_listings == 1


def test_a_window_across_midnight_lists_both_day_folders(world):
    deps, objects, _ = world
    midnight = (START // DAY + 20) * DAY
    now = midnight + ORPHAN_AGE + 30  # the cutoff is 30 s past midnight
    deps.orphan_sweep.last = (midnight - 30, midnight - 30 - deps.settings.stream_max_age)
    before = objects.put(segment_key(3, "fraud", now=midnight - 10), midnight - 9)
    after = objects.put(segment_key(3, "fraud", now=midnight + 10), midnight + 11)
    heard(deps, before, after)
    assert sweep(deps, now) == 2 and not {before, after} & set(objects.kept)
    folders = {prefix for prefix, _, _ in objects.ranged if prefix.startswith("ws-3/")}
    assert {f"ws-3/fraud/{day}/" for day in day_folders(midnight - 10, midnight + 10)} <= folders


def test_young_keys_no_window_lists_are_judged_by_one_more_listing_of_the_bucket(world):
    """A key too young at a whole-bucket listing whose name is no time of the windows to come (a uuid4 name of
    before the upgrade; a writer's clock over an hour behind) was never listed again by that process: an engine's
    orphan from the week before an upgrade stayed until the log store restarted after it was old enough. The
    bucket is listed once more when every such key can be judged, and not before."""
    deps, objects, index = world
    now = START + 10 * DAY
    engine_age = ORPHAN_AGE + deps.settings.stream_max_age
    day = day_folders(now, now)[0]
    uuid_orphan = objects.put(f"ws-3/fraud/{day}/{'f' * 32}.parquet", now - 60)
    uuid_engine_orphan = objects.put(f"ws-3/fraud/{day}/{'e' * 32}{ENGINE_SUFFIX}", now - 120)
    uuid_indexed = objects.put(f"ws-3/fraud/{day}/{'d' * 32}{ENGINE_SUFFIX}", now - 60)
    behind = objects.put(segment_key(3, "fraud", now=now - 2 * ORPHAN_AGE), now - 30)  # the writer 1 h behind
    fresh = objects.put(segment_key(3, "fraud", now=now - 60), now - 59)  # listed by a later window
    index.known.add(uuid_indexed)
    assert sweep(deps, now) == 0 and objects.full_listings == 1
    assert deps.orphan_sweep.relist_at == pytest.approx(now - 60 + engine_age + 1)
    for later in (now + 60, now + ORPHAN_AGE + 60, now + engine_age - 60):
        sweep(deps, later)
    assert objects.full_listings == 1, "listed the whole bucket before the young keys could be judged"
    assert fresh not in objects.kept  # judged by its window meanwhile
    assert {uuid_orphan, uuid_engine_orphan, behind} <= set(objects.kept)
    assert sweep(deps, now + engine_age + 60) == 3 and objects.full_listings == 2
    assert set(objects.kept) == {uuid_indexed} and deps.orphan_sweep.relist_at is None
    sweep(deps, now + engine_age + 120)
    assert objects.full_listings == 2


def test_a_keys_time_is_read_from_its_name_only_in_its_own_day_folder():
    key = segment_key(3, "a/b", ENGINE_SUFFIX, now=START + 0.25)
    assert key_moment(key) == pytest.approx(START + 0.25, abs=0.001)
    day = day_folders(START, START)[0]
    assert key_moment(f"ws-3/fraud/{day}/{'f' * 32}.parquet") is None  # a uuid4 name, a time centuries away
    assert key_moment(f"ws-3/fraud/2001/01/01/{key.rsplit('/', 1)[1]}") is None
    assert key_moment("quarantine/probe") is None and key_moment(f"ws-3/fraud/{day}/zz.parquet") is None


def test_pipelines_nothing_was_heard_of_are_listed_only_once_their_span_reaches_the_bound(world):
    """Every pass made two listings per pipeline the log store ever had, one after another. A pipeline this process
    heard of no write for is now skipped until its unlisted span reaches ORPHAN_UNHEARD_LIST; its window did not
    move meanwhile, so the listing then covers the whole span and the orphan (an engine that died before
    describing its segment) is deleted, late but not lost."""
    deps, objects, index = world
    index.rows = [{"id": n, "workspace_id": 3, "name": f"p{n}"} for n in range(200)]
    now = START + 10 * DAY
    assert sweep(deps, now) == 0 and objects.full_listings == 1
    engine_age = ORPHAN_AGE + deps.settings.stream_max_age
    orphan = objects.put(segment_key(3, "p150", now=now - ORPHAN_AGE + 30), now - ORPHAN_AGE + 31)
    engine_orphan = objects.put(segment_key(3, "p151", ENGINE_SUFFIX, now=now - engine_age + 30),
                                now - engine_age + 31)
    later = now
    while later < now + handlers.ORPHAN_UNHEARD_LIST - 60:
        later += 60
        assert sweep(deps, later) == 0
    assert objects.ranged == [], "pipelines nobody wrote to were listed"
    assert sweep(deps, now + handlers.ORPHAN_UNHEARD_LIST + 60) == 2
    assert not {orphan, engine_orphan} & set(objects.kept) and objects.full_listings == 1
    prefixes = {prefix.rsplit("/", 4)[0] for prefix, _, _ in objects.ranged}
    assert len(prefixes) == 200  # each once, its own and its engines' window each a day folder or two
    assert {first for _, first, _ in objects.ranged} == {key_time(now - ORPHAN_AGE - handlers.ORPHAN_SLACK),
                                                          key_time(now - engine_age - handlers.ORPHAN_SLACK)}
    objects.ranged.clear()
    assert sweep(deps, now + handlers.ORPHAN_UNHEARD_LIST + 120) == 0 and objects.ranged == []


class Description:
    """An engine's segment description as the stream delivers it (headers and body)."""

    def __init__(self, key: str, workspace_id: object = 3, pipeline: object = "p1", body: bytes | None = None):
        self.headers = {SEGMENT_HEADER: "1", LOG_HEADER: json.dumps({"workspace_id": workspace_id,
                                                                     "pipeline": pipeline})}
        self.data = body if body is not None else json.dumps({"key": key, "rows": 1}).encode()


@pytest.mark.parametrize("description", ["stored", "refused, naming another pipeline's key", "unreadable body"])
def test_a_pipeline_an_engine_described_a_segment_of_is_listed_at_the_next_sweep(world, description):
    """What tells the sweep a pipeline may have a new engine segment is the description the log store received,
    whatever became of it: a refused one is exactly the case that leaves an orphan."""
    deps, objects, index = world
    index.rows = [{"id": n, "workspace_id": 3, "name": f"p{n}"} for n in range(20)]
    now = START + 10 * DAY
    sweep(deps, now)
    engine_age = ORPHAN_AGE + deps.settings.stream_max_age
    target = "p7" if description != "refused, naming another pipeline's key" else "p8"
    orphan = objects.put(segment_key(3, target, ENGINE_SUFFIX, now=now - engine_age + 20), now - engine_age + 21)
    message = {"stored": Description(orphan, pipeline="p7"),
               "refused, naming another pipeline's key": Description(orphan, pipeline="p7"),
               "unreadable body": Description(orphan, pipeline="p7", body=b"not json")}[description]
    handlers.hear_description(deps.orphan_sweep, message)
    assert sweep(deps, now + 60) == 1 and orphan not in objects.kept
    listed = {prefix.rsplit("/", 4)[0] for prefix, _, _ in objects.ranged}
    assert f"ws-3/{target}" in listed and len(listed) <= 2, listed


def test_what_the_sweep_heard_is_kept_only_while_a_window_can_be_due_for_it(world):
    """Descriptions can name any key (an engine shares its bus identity): prefixes of no pipeline, and moments
    a pipeline's windows have passed, are dropped at each sweep, so the table stays as small as the pipelines."""
    deps, objects, index = world
    now = START + 10 * DAY
    sweep(deps, now)
    for n in range(1000):
        handlers.hear_description(deps.orphan_sweep, Description(f"ws-9/made-up-{n}/2026/01/01/{'a' * 32}.e.parquet",
                                                                 workspace_id=9, pipeline=f"made-up-{n}"))
    heard(deps, segment_key(3, "fraud", now=now - ORPHAN_AGE + 10))
    assert len(deps.orphan_sweep.heard) == 1001
    sweep(deps, now + 60)
    assert set(deps.orphan_sweep.heard) == {"ws-3/fraud/"}  # its window did not pass its moment yet (slack)
    sweep(deps, now + 60 + handlers.ORPHAN_SLACK + 60)
    assert deps.orphan_sweep.heard == {}
