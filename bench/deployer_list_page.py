"""A pipelines/list page of many pipelines in the deployer's handlers: the page's records read three queries per
pipeline (A: _pipeline_record for each, the code before docs/performance.md item 53) against two for the page (B:
list_pipelines' store.active_deployments_of + store.listed_versions). Alternates A B A B ..., prints each round's
median per page with the load average.

    .venv/bin/python -m bench.deployer_list_page --dsn postgresql://... [--pipelines 100] [--rounds 8]

On a scratch schema of the given PostgreSQL (the deployer's migrations), dropped afterwards; membership not asked."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

import asyncpg

from services.deployer import handlers, store
from shared import paging
from shared.authz import Principal
from shared.db import _server_settings, apply_migrations, load_migrations

WORKSPACE = 1
PRINCIPAL = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="sdk", username="bench",
                      issued_at=0.0)


async def old_page(deps, limit: int):
    rows = await store.pipelines_in(deps.pool, WORKSPACE, None, limit + 1)
    return await paging.page(rows, limit, lambda row: handlers._pipeline_record(deps, row))


async def new_page(deps, limit: int):
    page = await handlers.list_pipelines(deps, PRINCIPAL, "t", WORKSPACE, limit, None)
    return page.pipelines, page.next_cursor


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    schema = f"bench_deployer_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        conn = await asyncpg.connect(args.dsn, server_settings=_server_settings(schema))
        await apply_migrations(conn, schema, load_migrations(Path("services/deployer/migrations")))
        await conn.close()
        pool = await asyncpg.create_pool(args.dsn, server_settings=_server_settings(schema), min_size=4, max_size=4)
        async with pool.acquire() as conn, conn.transaction():
            for index in range(args.pipelines):
                for version in range(args.versions):
                    pipeline_id, version_id, _, _ = await store.create_pipeline_version(
                        conn, WORKSPACE, f"p{index}", uuid.uuid4(),
                        {"steps": [{"ModelInference": {"models": [{"name": f"m{index}-{version}"}]}}]})
                if index % 2:  # half of them deployed, at their newest version
                    await store.activate_deployment(conn, None, pipeline_id, version_id, f"p{index}",
                                                    {"replica_count": 1}, {"steps": []})

        async def member(*_):
            return "owner"

        handlers.require_member = lambda lookup, principal, workspace_id: member()
        deps = handlers.DeployerDeps(pool=pool, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        a, b = await old_page(deps, args.pipelines), await new_page(deps, args.pipelines)
        assert [r.model_dump() for r in a[0]] == [r.model_dump() for r in b[0]] and len(a[0]) == args.pipelines
        for _ in range(2):  # warm both
            await old_page(deps, args.pipelines), await new_page(deps, args.pipelines)
        for round_ in range(args.rounds):
            for name, page in (("A", old_page), ("B", new_page)) if round_ % 2 == 0 else (("B", new_page),
                                                                                         ("A", old_page)):
                times = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    await page(deps, args.pipelines)
                    times.append(time.perf_counter() - start)
                load = f"{os.getloadavg()[0]:.2f}"
                print(f"round {round_} {name}: median {statistics.median(times) * 1000:.1f} ms"
                      f" (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}) load {load}", flush=True)
        await pool.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
