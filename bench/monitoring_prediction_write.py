"""What session 19 added to monitoring's per-prediction path, timed (docs/performance.md item 54).

1. **The outbox write.** Since 930f63e a stored prediction's `events.monitoring.prediction_created` is written to
   monitoring's outbox in the prediction's transaction (`predictions_store.insert_prediction`) and sent from there by
   shared/outbox.py's Outbox (read in batches, each sent row deleted). Rounds of `--predictions` rows alternate
   A (the prediction's row alone in its transaction: the write before 930f63e, without its publish after the commit)
   and B (`insert_prediction`: the row and its outbox row); after each B round, the outbox's own database work for
   those events (`unsent_events` batches of 100 + `event_sent` per row, as Outbox.send_pending does, the publish
   itself left out) is timed per event.
2. **The one-pipeline look-up** (d73df30): during a swap (the replica served another pipeline version than the
   deployment's) each prediction reads that version's definition with pipelines/get of its one pipeline, where
   before it read the workspace's pipelines/list; outside a swap there is no look-up (`predictions._served`
   compares the version strings). The deployer's handlers timed in process: A `list_pipelines` of the whole
   workspace (`--pipelines` pipelines, limit 1000), B `get_pipeline` of one, alternated. The bus hop each adds is
   not in these figures (item 50: a NATS request/reply on this VM).

    .venv/bin/python -m bench.monitoring_prediction_write [--dsn postgresql://...] [--predictions 400] [--rounds 12]
        [--pipelines 100] [--calls 30]

The defaults are item 54's run (about 30 s idle). On scratch schemas of the given PostgreSQL (the services'
migrations), dropped afterwards; without --dsn, of a scratch pgserver PostgreSQL in a temporary directory (its Unix
socket, default settings: each commit fsynced), removed afterwards. Membership not asked."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.timing import load, per_call_ms, postgres
from shared.db import _server_settings, apply_migrations, load_migrations
from shared.images import FEATURE_NAMES

WORKSPACE = 1


def _row(rng: random.Random):
    from services.monitoring.predictions_store import PredictionRow

    return PredictionRow(
        id=uuid.uuid4(), deployment_id=7, workspace_id=WORKSPACE, origin="predict", source=None, tags=["cam-1"],
        model_version={"name": "digits", "version": str(uuid.uuid4()), "sha": "ab" * 32}, shadow_model_version=None,
        kind="classification", prediction={"detection_classes": [rng.randrange(10)], "detection_scores": [0.9]},
        shadow_prediction=None, latency=0.002, shadow_latency=None, height=8, width=8, content_type="image/png",
        image_sha256="cd" * 32, features={name: rng.gauss(120.0, 30.0) for name in FEATURE_NAMES},
        predicted_at=datetime.now(UTC), filename=None, pipeline_version="3")


async def _scratch(dsn: str, prefix: str, migrations: str) -> tuple[str, asyncpg.Pool]:
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.close()
    conn = await asyncpg.connect(dsn, server_settings=_server_settings(schema))
    await apply_migrations(conn, schema, load_migrations(Path(migrations)))
    await conn.close()
    return schema, await asyncpg.create_pool(dsn, server_settings=_server_settings(schema), min_size=2, max_size=2)


async def writes(dsn: str, count: int, rounds: int) -> None:
    from services.monitoring import aggregates, predictions_store
    from shared import outbox

    aggregates.note_written = lambda: None  # the fold's wake-up, not a write
    schema, pool = await _scratch(dsn, "bench_monitoring", "services/monitoring/migrations")
    rng = random.Random(5)

    async def row_alone() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await predictions_store._insert(conn, _row(rng))

    async def with_outbox() -> None:
        await predictions_store.insert_prediction(pool, _row(rng))

    async def relay() -> int:  # Outbox.send_pending's database work, the publish left out
        sent = 0
        async with pool.acquire() as conn:
            while True:
                async with conn.transaction():
                    rows = await outbox.unsent_events(conn, 100)
                    for row in rows:
                        await outbox.event_sent(conn, row["id"])
                if not rows:
                    return sent
                sent += len(rows)

    try:
        for _ in range(50):  # warm both
            await row_alone()
            await with_outbox()
        await relay()
        figures: dict[str, list[float]] = {"A": [], "B": [], "relay": []}
        for round_ in range(rounds):
            for name, write in (("A", row_alone), ("B", with_outbox)) if round_ % 2 == 0 else (
                    ("B", with_outbox), ("A", row_alone)):
                figures[name].append(await per_call_ms(write, count))
                if name == "B":
                    started = time.perf_counter()
                    sent = await relay()
                    figures["relay"].append((time.perf_counter() - started) / sent * 1000)
            print(f"write round {round_}: A {figures['A'][-1]:.3f} ms  B {figures['B'][-1]:.3f} ms  relay"
                  f" {figures['relay'][-1]:.3f} ms/event  load {load()}", flush=True)
        for name, values in figures.items():
            print(f"write {name}: median {statistics.median(values):.3f} ms, range {min(values):.3f}-"
                  f"{max(values):.3f}")
        print("B - A per round (ms):", ", ".join(f"{b - a:.3f}" for a, b in zip(figures["A"], figures["B"],
                                                                                strict=True)))
    finally:
        await pool.close()
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def lookups(dsn: str, pipelines: int, calls: int, rounds: int) -> None:
    from services.deployer import handlers, store
    from shared.authz import Principal

    schema, pool = await _scratch(dsn, "bench_deployer", "services/deployer/migrations")
    principal = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="sdk", username="bench",
                          issued_at=0.0)
    try:
        async with pool.acquire() as conn, conn.transaction():
            for index in range(pipelines):
                for version in range(3):
                    pipeline_id, version_id, _, _ = await store.create_pipeline_version(
                        conn, WORKSPACE, f"p{index}", uuid.uuid4(), {"steps": [{"ModelInference": {"models": [
                            {"name": f"m{index}", "version": str(version), "sha": "ab" * 32}]}}]})
                if index % 2:
                    await store.activate_deployment(conn, None, pipeline_id, version_id, f"p{index}",
                                                    {"replica_count": 1}, {"steps": []})

        async def member(*_):
            return "owner"

        handlers.require_member = lambda lookup, principal, workspace_id: member()
        deps = handlers.DeployerDeps(pool=pool, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)

        async def whole_list() -> None:  # before d73df30: the workspace's list (one page of limit 1000 here)
            await handlers.list_pipelines(deps, principal, "t", WORKSPACE, 1000, None)

        async def one_pipeline() -> None:
            await handlers.get_pipeline(deps, principal, "t", pipeline_id)

        for _ in range(3):
            await whole_list()
            await one_pipeline()
        figures: dict[str, list[float]] = {"A": [], "B": []}
        for round_ in range(rounds):
            for name, read in (("A", whole_list), ("B", one_pipeline)) if round_ % 2 == 0 else (
                    ("B", one_pipeline), ("A", whole_list)):
                figures[name].append(await per_call_ms(read, calls))
            print(f"look-up round {round_}: A {figures['A'][-1]:.3f} ms  B {figures['B'][-1]:.3f} ms  load"
                  f" {load()}", flush=True)
        for name, values in figures.items():
            print(f"look-up {name}: median {statistics.median(values):.3f} ms, range {min(values):.3f}-"
                  f"{max(values):.3f}")
    finally:
        await pool.close()
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", help="a PostgreSQL to use (default: a scratch pgserver, removed afterwards)")
    parser.add_argument("--predictions", type=int, default=400)
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    with postgres(args.dsn, "bench_monitoring_pg_") as dsn:
        print(f"start {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, load {load()}, {args.predictions} predictions x"
              f" {args.rounds} rounds, {args.pipelines} pipelines, {args.calls} calls a round", flush=True)
        await writes(dsn, args.predictions, args.rounds)
        await lookups(dsn, args.pipelines, args.calls, args.rounds)
        print(f"end {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, load {load()}", flush=True)

if __name__ == "__main__":
    asyncio.run(main())
