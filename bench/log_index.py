"""What indexing an engine's segment descriptions costs the log store and PostgreSQL, HEAD's way against one statement
(docs/performance.md item 88).

A (`before`): what `Ingestor.flush` did for descriptions until item 88: `store.committed_batches` (a SELECT), then
`store.commit_segments` of those not recorded (BEGIN, the batches' insert, per segment the pipeline's position and the
segment's insert, COMMIT), each pool call's release resetting the connection as asyncpg's pool does. B (`one`):
`store.index_described`, one statement. C (`bare`, with --bare): B on a pool whose release skips asyncpg's reset
query (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`, a round trip after every pool call of
every service; shared/db.create_pool keeps it): what that round trip costs, diagnostics only. Rounds of `--calls`
calls of `--per-call` descriptions each (a batch-1 stream flushes one at a time; a busy stack's flush gathers
several) alternate the arms (the order reversed every other round) on schemas made by the log store's migrations;
per call: wall (median, p90), this process's CPU and the PostgreSQL backend's (its /proc stat; the pool holds one
connection, as a log store's sequential flushes use one).

    .venv/bin/python -m bench.log_index [--dsn postgresql://...] [--rounds 10] [--calls 300] [--per-call 1] [--bare]

Without --dsn, a scratch pgserver PostgreSQL in a temporary directory (default settings: each commit fsynced, as the
embedded stack's), removed afterwards."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path

import asyncpg

from bench.timing import load, postgres
from services.log_store import store
from shared.db import _server_settings, apply_migrations, load_migrations

MIGRATIONS = Path(__file__).resolve().parent.parent / "services" / "log_store" / "migrations"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process on this machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _segment(n: int, workspace_id: int) -> store.NewSegment:
    now = int(time.time() * 1000)
    return store.NewSegment(workspace_id=workspace_id, pipeline="ccfraud", row_count=1, min_time=now, max_time=now,
                            schema_fp="fp", versions=[str(uuid.uuid4())], dropped=[],
                            object_key=f"ws-{workspace_id}/ccfraud/2026/12/05/{uuid.uuid4().hex}-{n}.e.parquet",
                            bytes=94_000)


async def before(pool: asyncpg.Pool, described: list[tuple[str, store.NewSegment]]) -> None:
    recorded = await store.committed_batches(pool, [b for b, _ in described])
    fresh = [(b, s) for b, s in described if b not in recorded]
    if fresh:
        await store.commit_segments(pool, [b for b, _ in fresh], [s for _, s in fresh], [])


async def one(pool: asyncpg.Pool, described: list[tuple[str, store.NewSegment]]) -> None:
    await store.index_described(pool, described)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """A pool `reset` that sends nothing (asyncpg still clears the connection's own state)."""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--per-call", type=int, default=1)
    parser.add_argument("--bare", action="store_true", help="also B on a pool without the reset query")
    args = parser.parse_args()
    with postgres(args.dsn, "railyard-bench-logindex-") as dsn:
        admin = await asyncpg.connect(dsn)
        arms = {"before": before, "one": one} | ({"bare": one} if args.bare else {})
        pools: dict[str, asyncpg.Pool] = {}
        backends: dict[str, int] = {}
        schemas = {name: f"bench_logindex_{name}_{uuid.uuid4().hex[:6]}" for name in arms}
        try:
            for name, schema in schemas.items():
                await apply_migrations(admin, schema, load_migrations(MIGRATIONS))
                pools[name] = await asyncpg.create_pool(dsn, min_size=1, max_size=1,
                                                        server_settings=_server_settings(schema),
                                                        reset=_no_reset if name == "bare" else None)
                backends[name] = await pools[name].fetchval("SELECT pg_backend_pid()")
            results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in arms}
            n = 0
            for round_ in range(args.rounds):
                order = list(arms) if round_ % 2 == 0 else list(arms)[::-1]
                for name in order:
                    calls = []
                    for _ in range(args.calls):
                        calls.append([(str(uuid.uuid4()), _segment(n + i, 7)) for i in range(args.per_call)])
                        n += args.per_call
                    walls = []
                    cpu0, backend0 = time.process_time(), _cpu_of(backends[name])
                    for described in calls:
                        t0 = time.perf_counter()
                        await arms[name](pools[name], described)
                        walls.append((time.perf_counter() - t0) * 1000)
                    cpu = (time.process_time() - cpu0) / args.calls * 1e6
                    backend = (_cpu_of(backends[name]) - backend0) / args.calls * 1e6
                    walls.sort()
                    results[name].append((statistics.median(walls), walls[int(len(walls) * 0.9)], cpu, backend))
                    print(f"round {round_} {name:6s}: {statistics.median(walls):.3f} ms median, p90 "
                          f"{walls[int(len(walls) * 0.9)]:.3f}; log store {cpu:.0f} us, PostgreSQL {backend:.0f} us"
                          f" a call (load {load()})", flush=True)
            print(f"\n{args.per_call} description(s) a call, medians of {args.rounds} rounds x {args.calls} calls:")
            for name, rows in results.items():
                wall, p90, cpu, backend = (statistics.median(r[i] for r in rows) for i in range(4))
                print(f"  {name:6s}: wall {wall:.3f} ms (p90 {p90:.3f}), log store {cpu:.0f} us, PostgreSQL"
                      f" {backend:.0f} us a call")
            lower = sum(b[2] + b[3] < a[2] + a[3] for a, b in zip(results["before"], results["one"], strict=True))
            print(f"  one statement's CPU (both processes) lower in {lower} of {args.rounds} rounds; load {load()}")
            for name in arms:
                indexed = await pools[name].fetchval("SELECT count(*) FROM segments")
                assert indexed == args.rounds * args.calls * args.per_call, (name, indexed)  # each arm indexed all
        finally:
            for pool in pools.values():
                await pool.close()
            for schema in schemas.values():
                await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
