"""A pipelines/list page reads its pipelines' deployments and versions in a fixed number of queries (the page's
rows, then its active deployments and its versions in one snapshot: services/deployer/store.py
active_deployments_of, listed_versions) instead of three per pipeline (_pipeline_record's active deployment, newest
versions and deployed version), with the same records: each page's records are compared with _pipeline_record's
answer for each pipeline, on a workspace holding pipelines never deployed, deployed at their newest or an old
version, undeployed, one whose only version is deployed, and one whose versions pass the record's 4 MiB (omitted
versions, a cursor), at several page sizes (docs/performance.md item 53).

Runs the deployer's handlers in the test's process on a schema of the test's own (conftest.service_schema)."""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.deployer import handlers, store
from tests.integration.conftest import service_schema
from tests.unit.test_deployer_locks import ALICE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORKSPACE = 7


class Counting:
    """The pool, counting the queries made through it and the connections it hands out."""

    def __init__(self, pool) -> None:
        self.pool, self.queries = pool, 0

    async def fetch(self, *args, **kwargs):
        self.queries += 1
        return await self.pool.fetch(*args, **kwargs)

    async def fetchrow(self, *args, **kwargs):
        self.queries += 1
        return await self.pool.fetchrow(*args, **kwargs)

    async def fetchval(self, *args, **kwargs):
        self.queries += 1
        return await self.pool.fetchval(*args, **kwargs)

    @contextlib.asynccontextmanager
    async def acquire(self):
        async with self.pool.acquire() as conn:
            yield CountingConnection(self, conn)


class CountingConnection:
    def __init__(self, counting: Counting, conn) -> None:
        self.counting, self.conn = counting, conn

    def transaction(self, **kwargs):
        return self.conn.transaction(**kwargs)

    async def fetch(self, *args, **kwargs):
        self.counting.queries += 1
        return await self.conn.fetch(*args, **kwargs)

    async def fetchrow(self, *args, **kwargs):
        self.counting.queries += 1
        return await self.conn.fetchrow(*args, **kwargs)

    async def fetchval(self, *args, **kwargs):
        self.counting.queries += 1
        return await self.conn.fetchval(*args, **kwargs)


def definition(index: int, size: int = 0) -> dict[str, Any]:
    return {"steps": [{"ModelInference": {"models": [{"name": f"m{index}"}]}}], "pad": "x" * size}


async def make_pipeline(pool, name: str, versions: int, deployed: int | None = None, active: bool = True,
                        size: int = 0) -> None:
    """A pipeline of `versions` versions; deployed at its version number `deployed` (1 the oldest), when given."""
    ids = []
    async with pool.acquire() as conn, conn.transaction():
        for index in range(versions):
            pipeline_id, version_id, _, _ = await store.create_pipeline_version(
                conn, WORKSPACE, name, uuid.uuid4(), definition(index, size))
            ids.append(version_id)
        if deployed is not None:
            # the row a first deploy's activation writes (store.activate_deployment), in the columns every schema
            # since 004 has: test_deployer_announced_migration makes rows on a schema migrated to 005, before the
            # activation's own columns (009's `activation`)
            deployment_id = await conn.fetchval(
                "INSERT INTO deployments (pipeline_id, pipeline_version_id, deploy_id, engine_config, spec,"
                " deployed_pending) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, true) RETURNING id",
                pipeline_id, ids[deployed - 1], name, json.dumps({"replica_count": 1}), json.dumps({"steps": []}))
            if not active:
                await conn.execute("UPDATE deployments SET active = false WHERE id = $1", deployment_id)


async def test_a_pipelines_list_page_reads_its_records_in_a_fixed_number_of_queries(stack, monkeypatch):
    async def member(*args):
        return "owner"

    monkeypatch.setattr(handlers, "require_member", lambda lookup, principal, workspace_id: member())
    async with service_schema(stack, "deployerlist", Path("services/deployer/migrations")) as pool:
        await make_pipeline(pool, "never", 3)
        await make_pipeline(pool, "newest", 4, deployed=4)
        await make_pipeline(pool, "oldest", 5, deployed=1)
        await make_pipeline(pool, "undeployed", 2, deployed=2, active=False)
        await make_pipeline(pool, "only", 1, deployed=1)
        await make_pipeline(pool, "large", 80, deployed=3, size=60_000)  # 80 x 60 KB: past the record's 4 MiB
        for index in range(12):
            await make_pipeline(pool, f"small{index}", 1 + index % 3, deployed=(1 if index % 2 else None))
        counting = Counting(pool)
        deps = handlers.DeployerDeps(pool=counting, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        rows = await store.pipelines_in(pool, WORKSPACE)
        assert len(rows) == 18
        expected = {row["id"]: (await handlers._pipeline_record(deps, row)).model_dump(mode="json") for row in rows}
        large = expected[rows[5]["id"]]
        assert large["versions_omitted"] and large["versions_cursor"]  # the case of a cut record is there
        assert any(v["id"] == large["deployment"]["pipeline_version_pk_id"] for v in large["versions"])

        for limit in (None, 1000, 7, 2, 1):
            cursor, seen, pages = None, [], 0
            while True:
                counting.queries = 0
                page = await handlers.list_pipelines(deps, ALICE, "t", WORKSPACE, limit, cursor)
                pages += 1
                # the page's rows, then its deployments and versions: once for the whole list, at most twice for
                # a page (again from a pipeline past the ~4 MiB its first read foresaw: the large record's page)
                assert counting.queries == 3 if limit is None else counting.queries in (3, 5), (
                    limit, pages, counting.queries)
                seen += [record.model_dump(mode="json") for record in page.pipelines]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert [record["id"] for record in seen] == [row["id"] for row in rows], limit
            for record in seen:
                assert record == expected[record["id"]], (limit, record["name"])
            assert pages > 1 or limit is None, limit  # the large record fills a page of 1000 too


async def test_a_page_past_what_its_versions_query_foresaw_reads_the_rest_one_by_one(stack, monkeypatch):
    """listed_versions stops at the pipelines whose predecessors' versions pass `page_bytes`; a page that gets
    further (its records smaller than the SQL's estimate) reads again from there, with the same answers."""
    async def member(*args):
        return "owner"

    monkeypatch.setattr(handlers, "require_member", lambda lookup, principal, workspace_id: member())
    monkeypatch.setattr(handlers.paging, "PAGE_BYTES", 10**9)  # paging.page takes every row
    async with service_schema(stack, "deployerlist", Path("services/deployer/migrations")) as pool:
        for index in range(4):
            await make_pipeline(pool, f"p{index}", 2, deployed=1, size=1000)
        counting = Counting(pool)
        deps = handlers.DeployerDeps(pool=counting, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        rows = await store.pipelines_in(pool, WORKSPACE)
        listed = await store.listed_versions(pool, [row["id"] for row in rows], handlers.VERSIONS_BYTES, 3000)
        assert list(listed) == [row["id"] for row in rows[:2]]  # the third starts past 3000 bytes
        original = store.listed_versions

        async def foreseeing_less(conn, ids, budget, page_bytes):
            return await original(conn, ids, budget, 3000)

        monkeypatch.setattr(store, "listed_versions", foreseeing_less)
        page = await handlers.list_pipelines(deps, ALICE, "t", WORKSPACE, 10, None)
        assert counting.queries == 1 + 2 * 2  # the rows, then two reads of deployments and versions
        assert [r.model_dump(mode="json") for r in page.pipelines] == [
            (await handlers._pipeline_record(deps, row)).model_dump(mode="json") for row in rows]


async def test_a_page_filled_by_a_few_records_sizes_the_versions_of_a_bounded_number_of_pipelines(stack, monkeypatch):
    """listed_versions sizes every version of each pipeline it is given (its SQL reads each definition): a page of
    `limit` 1000 (what the monitoring service and the log store ask, shared/pipeline_pages.py) whose records fill
    PAGE_BYTES after a few pipelines gave it every pipeline of the page, and the next page every one but those few
    again: reading a workspace of many-version pipelines sized their versions about once a page. Now a read is
    given LIST_READ_AHEAD pipelines, or as many as the page holds by then; the same records."""
    async def member(*args):
        return "owner"

    monkeypatch.setattr(handlers, "require_member", lambda lookup, principal, workspace_id: member())
    monkeypatch.setattr(handlers.paging, "PAGE_BYTES", 20_000)  # 3 records of 5 KB a page
    async with service_schema(stack, "deployerlist", Path("services/deployer/migrations")) as pool:
        for index in range(handlers.LIST_READ_AHEAD + 60):
            await make_pipeline(pool, f"p{index}", 1, deployed=1 if index % 2 else None, size=5000)
        deps = handlers.DeployerDeps(pool=pool, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        rows = await store.pipelines_in(pool, WORKSPACE)
        original, asked = store.listed_versions, []

        async def counted(conn, ids, budget, page_bytes):
            asked.append(len(ids))
            return await original(conn, ids, budget, page_bytes)

        monkeypatch.setattr(store, "listed_versions", counted)
        cursor, seen = None, []
        for _ in range(3):  # the first pages: each held a few records and sized every pipeline after the cursor
            asked.clear()
            page = await handlers.list_pipelines(deps, ALICE, "t", WORKSPACE, 1000, cursor)
            assert 1 <= len(page.pipelines) <= 4 and page.next_cursor is not None, len(page.pipelines)
            assert sum(asked) <= handlers.LIST_READ_AHEAD, asked
            seen += page.pipelines
            cursor = page.next_cursor
        monkeypatch.setattr(handlers.paging, "PAGE_BYTES", 10**9)  # a page holding them all: read past the first
        asked.clear()
        page = await handlers.list_pipelines(deps, ALICE, "t", WORKSPACE, 1000, cursor)
        assert page.next_cursor is None and asked[0] == handlers.LIST_READ_AHEAD and sum(asked) == len(page.pipelines)
        seen += page.pipelines
        assert [record.id for record in seen] == [row["id"] for row in rows]
        for record, row in zip(seen, rows, strict=True):
            assert record == await handlers._pipeline_record(deps, row), row["name"]


async def test_a_record_read_again_takes_its_deployment_from_the_same_snapshot_as_its_versions(stack, monkeypatch):
    """A pipeline the page's first read did not reach (listed_versions stopped before it) is read again, in a new
    snapshot: its deployment must come from that one too, as its versions do. The first read's active deployments
    were kept for pipelines the second read found none for, so a pipeline undeployed in between was listed with the
    old deployment and its versions as undeployed (the deployed version not set apart)."""
    async def member(*args):
        return "owner"

    monkeypatch.setattr(handlers, "require_member", lambda lookup, principal, workspace_id: member())
    monkeypatch.setattr(handlers.paging, "PAGE_BYTES", 10**9)  # paging.page takes every row
    async with service_schema(stack, "deployerlist", Path("services/deployer/migrations")) as pool:
        for index in range(2):
            await make_pipeline(pool, f"p{index}", 2, deployed=1, size=1000)
        deps = handlers.DeployerDeps(pool=pool, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        rows = await store.pipelines_in(pool, WORKSPACE)
        original, reads = store.listed_versions, []

        async def first_reaching_one(conn, ids, budget, page_bytes):
            reads.append(list(ids))
            if len(reads) == 1:  # the first read reaches the first pipeline only; the second is undeployed then
                found = await original(conn, ids, budget, 0)
                await pool.execute("UPDATE deployments SET active = false WHERE pipeline_id = $1", rows[1]["id"])
                return found
            return await original(conn, ids, budget, page_bytes)

        monkeypatch.setattr(store, "listed_versions", first_reaching_one)
        page = await handlers.list_pipelines(deps, ALICE, "t", WORKSPACE, 10, None)
        assert reads == [[rows[0]["id"], rows[1]["id"]], [rows[1]["id"]]]
        second = page.pipelines[1]
        assert second.deployment is None, second.deployment
        assert second == await handlers._pipeline_record(deps, rows[1])


class Recorder:
    """A pool that records the query a store function sends (and answers no rows)."""

    async def fetch(self, sql: str, *args):
        self.sql, self.args = sql, args
        return []


def _index_scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's Index Scan nodes, depth first."""
    found = [node] if node["Node Type"] == "Index Scan" else []
    return found + [scan for child in node.get("Plans", []) for scan in _index_scans(child)]


@pytest.mark.parametrize("after", [None, "p2"], ids=["first page", "a later page"])
async def test_a_pipelines_list_page_reads_its_rows_from_an_index_in_id_order(stack, after):
    """store.pipelines_in, EXPLAINed with sequential scans, bitmap scans and sorts priced out (as a large table would
    be): a page reads the workspace's pipelines from pipelines_workspace_id (migration 005) in id order, from the
    cursor on, with no Sort. Before, the only index starting with workspace_id was (workspace_id, name): each page
    read the workspace's every pipeline and sorted them by id. The table holds another workspace's pipelines too and
    is analyzed: with the workspace's alone, analyzed, a scan of the primary key filtered by workspace costs the same
    as the new index's (the plan a tie), and unanalyzed the plan rests on the planner's default guesses."""
    async with service_schema(stack, "deployerlist", Path("services/deployer/migrations")) as pool:
        await pool.execute("INSERT INTO pipelines (workspace_id, name, owner_id)"
                           " SELECT $1, 'other' || g, gen_random_uuid() FROM generate_series(1, 45) g", WORKSPACE + 1)
        for index in range(5):
            await make_pipeline(pool, f"p{index}", 1)
        await pool.execute("ANALYZE pipelines")
        cursor = None if after is None else await pool.fetchval(
            "SELECT id FROM pipelines WHERE workspace_id = $1 AND name = $2", WORKSPACE, after)
        recorder = Recorder()
        await store.pipelines_in(recorder, WORKSPACE, cursor, 3)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off;"
                               " SET LOCAL enable_bitmapscan = off")
            plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + recorder.sql, *recorder.args))
            assert [row["name"] for row in await conn.fetch(recorder.sql, *recorder.args)] == (
                ["p0", "p1", "p2"] if after is None else ["p3", "p4"])
    scans = _index_scans(plan[0]["Plan"])
    assert [scan["Index Name"] for scan in scans] == ["pipelines_workspace_id"] and '"Sort"' not in json.dumps(
        plan), plan
    if cursor is not None:  # the cursor bounds the index scan, not a filter of its rows
        assert f"(id > '{cursor}'::bigint)" in scans[0]["Index Cond"], scans[0]
