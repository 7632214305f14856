"""Log pages and assay runs over segments written the engine's way, for arms of `logs.engine_segment_bytes` side by
side in one stack, the reads alternated arm by arm (docs/performance.md item 100).

    python -m bench.engine_segment_reads [--arm 4m:4194304 --arm 16m:16777216] [--history 2000000] [--rounds 4]
                                         [--pages 60] [--out build/engine_segment_reads.jsonl]

bench/logs.py and bench/assays.py publish their rows through the stream, so the log store writes those segments (up to
`segment_max_bytes`, then compaction): docs/benchmarks.md's page and assay figures are of that layout. A busy
replica's rows reach the log store as its own segments instead (services/engine/logbatcher.py: records gathered to
`engine_segment_bytes`, one Parquet segment PUT a flush, its description indexed without reading the rows), which
compaction leaves alone above `compact_below_bytes`. Here each arm's pipeline is deployed (ccfraud: its deployment is
announced, so the log store takes its batches) and this process logs for it with a `LogBatcher` of its own, the
engine's code, with the arm's `engine_segment_bytes`, flushing as soon as that much is gathered (a replica at batch
1000 and more than ~200 requests a second): bench/assays.py's rows (1,000-row records, a 100,000-row baseline an
hour ago, a 1,000,000-row window ten minutes ago), then `--history` rows now. The maintenance pass (compaction) runs
once, then `--rounds` rounds, the arms in alternated order: `--pages` 1,000-row JSON pages at random depths of the
history (bench/logs.py's) and bench/assays.py's 7 assay runs. An arm of 0 bytes logs with `engine_segments` off: the
rows go through the stream and the log store writes (and compaction merges) the segments, bench/assays.py's layout.
Printed and written to `--out` a round and arm: page p50/p90/p99 ms, assay p50/best ms; before that each arm's live
segments (count, sizes) before and after compaction."""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import asyncpg
import httpx
import nats
import numpy as np

from bench.assays import BASELINE_ROWS, WINDOW_ROWS, assay_body, assay_runs, record
from bench.logs import _page_latencies, _stored
from bench.peers.harness import ccfraud_stack, uptime
from services.engine.logbatcher import LogBatcher
from services.log_store.pages import encode_cursor
from shared import subjects
from shared.logrecords import InferenceRecord
from shared.objectstore import MinioObjectStore
from shared.settings import LogSettings

SEEDS = 8  # distinct 1,000-row requests, cycled (each segment holds several: no repetition a codec could use)


async def log_rows(batcher: LogBatcher, at_ms: int, rows: int, shift: float, seeds: range) -> None:
    """`rows` rows in 1,000-row records at `at_ms`, flushed as a busy replica flushes: at the segment bytes."""
    made = [record(at_ms, seed, shift) for seed in seeds]
    for index in range(-(-rows // 1000)):
        one = made[index % len(made)]
        batcher.add(InferenceRecord(one.at_ms, one.inputs, one.outputs, one.last_model, one.elapsed))
        if batcher.pending_bytes >= batcher.flush_bytes:
            await batcher.flush()
    if batcher.pending:
        await batcher.flush()


async def segments(pg: asyncpg.Connection, workspace: int, name: str) -> dict[str, float]:
    row = await pg.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(s.bytes), 0)::bigint AS total, min(s.bytes) AS least, max(s.bytes) AS most "
        "FROM log_store.segments s JOIN log_store.pipelines p ON p.id = s.pipeline_id "
        "WHERE p.workspace_id = $1 AND p.name = $2 AND s.superseded_at IS NULL", workspace, name)
    return {"segments": row["n"], "mib": row["total"] / 2**20, "least_mib": (row["least"] or 0) / 2**20,
            "most_mib": (row["most"] or 0) / 2**20}


async def write_arm(stack, js, pg, workspace: int, pipeline: str, deployment: str, segment_bytes: int,
                    history: int, now: int) -> dict[str, int]:
    """Log the arm's rows; the history's first position (its pages' depths start there) and its end."""
    if segment_bytes:
        settings = LogSettings(engine_segment_bytes=segment_bytes, engine_segment_ms=3_600_000)
    else:  # the rows through the stream, the log store writing the segments (as bench/assays.py's)
        settings = LogSettings(engine_segments=False, engine_flush_ms=3_600_000)
    batcher = LogBatcher(js, {"name": deployment, "pipeline": pipeline, "pipeline_version": "bench",
                              "workspace_id": workspace}, settings, 8 * 1024 * 1024,
                         objects=MinioObjectStore(stack.settings().s3))
    t0, t1 = now - 3_600_000, now - 600_000
    await log_rows(batcher, t0, BASELINE_ROWS, 0.0, range(4))
    await log_rows(batcher, t1, WINDOW_ROWS, 0.3, range(4, 4 + SEEDS))
    expected = BASELINE_ROWS + WINDOW_ROWS
    while await _stored(pg, workspace, pipeline) < expected:  # noqa: ASYNC110 - polling another process
        await asyncio.sleep(0.05)
    await log_rows(batcher, now, history, 0.0, range(100, 100 + SEEDS))
    while await _stored(pg, workspace, pipeline) < expected + history:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if batcher.thread is not None:
        batcher.thread.shutdown()
    return {"first": expected, "end": expected + history}


async def measure(stack, deployer, arms: list[tuple[str, int]], args: argparse.Namespace, out) -> None:
    settings = stack.settings()
    nc = await nats.connect(settings.nats.url, max_reconnect_attempts=-1)
    js = nc.jetstream()
    pg = await asyncpg.connect(settings.postgres.dsn)
    workspace = deployer.workspace
    now = int(time.time() * 1000)
    placed: dict[str, dict] = {}
    listed = deployer.client.post("pipelines/list", {"workspace_id": workspace})["pipelines"]
    try:
        for name, size in arms:
            pipeline = f"seg{name}"
            deployment = next(p["deployment"]["name"] for p in listed if p["name"] == pipeline)
            started = time.perf_counter()
            placed[name] = await write_arm(stack, js, pg, workspace, pipeline, deployment, size, args.history, now)
            placed[name] |= {"pipeline": pipeline, "written_s": time.perf_counter() - started,
                             "pipeline_id": next(p["id"] for p in listed if p["name"] == pipeline)}
        await asyncio.sleep(6)  # compact_min_age: every segment may be compacted
        before = {name: await segments(pg, workspace, p["pipeline"]) for name, p in placed.items()}
        started = time.perf_counter()
        report = json.loads((await nc.request(subjects.LOG_STORE_MAINTENANCE, b'{"retention": false}',
                                              timeout=600)).data)["data"]
        compact_s = time.perf_counter() - started
        after = {name: await segments(pg, workspace, p["pipeline"]) for name, p in placed.items()}
        for name, p in placed.items():
            row = {"arm": name, "written_s": p["written_s"], "before": before[name], "after": after[name],
                   "compaction": {"seconds": compact_s, "report": report}}
            out.write(json.dumps(row) + "\n")
            print(f"{name:5s} written in {p['written_s']:.1f} s; live segments {before[name]} -> {after[name]} "
                  f"(one maintenance pass for all arms: {compact_s:.2f} s, {report})", flush=True)
    finally:
        await pg.close()
        await nc.close()
    rng = np.random.default_rng(7)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {deployer.client.token}"}) as http:
        for number in range(args.rounds):
            for name, _ in (arms if number % 2 == 0 else arms[::-1]):
                p = placed[name]
                body = {"pipeline_id": p["pipeline"], "workspace_id": workspace, "page_size": 1000}
                cursors = [encode_cursor(now, int(d), "Desc")
                           for d in rng.integers(p["first"] + 1000, p["end"], args.pages)]  # history rows: `now`
                load = uptime()
                pages = await _page_latencies(http, body, cursors, None)
                assay, result = await assay_runs(http, assay_body(workspace, p["pipeline_id"], p["pipeline"],
                                                                  now - 3_600_000, now - 600_000))
                row = {"arm": name, "round": number, "load": load, "page_p50_ms": statistics.median(pages),
                       "page_p90_ms": float(np.percentile(pages, 90)), "page_p99_ms": float(np.percentile(pages, 99)),
                       "assay_p50_ms": statistics.median(assay) * 1e3, "assay_best_ms": min(assay) * 1e3,
                       "score": result["score"]}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"{name:5s} round {number} load {load}: page p50 {row['page_p50_ms']:.1f} ms (p90 "
                      f"{row['page_p90_ms']:.1f}, p99 {row['page_p99_ms']:.1f}), assay p50 {row['assay_p50_ms']:.0f} "
                      f"ms (best {row['assay_best_ms']:.0f}), score {row['score']:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", action="append", help="name:engine_segment_bytes (0: no engine segments, the rows "
                        "through the stream and the log store's segments, compacted)")
    parser.add_argument("--history", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--out", default="build/engine_segment_reads.jsonl")
    args = parser.parse_args()
    arms = [(name, int(size)) for name, _, size in (a.partition(":") for a in args.arm or
                                                    ["4m:4194304", "16m:16777216"])]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ccfraud_stack("railyard-segreads-", []) as (stack, deployer), path.open("a") as out:
        for name, _ in arms:
            deployer.deploy(f"seg{name}", ["ccfraud"])
        asyncio.run(measure(stack, deployer, arms, args, out))


if __name__ == "__main__":
    main()
