"""The inference log store: sustained ingestion from the INFERENCE_LOGS stream, freshness, and get_logs page
latency over a 10,000,000-row history. Starts its own embedded stack on free ports and publishes batches the
way the engine does (one Arrow message holding the rows of many requests, a batch id per message), for a deployment
announced first as the deployer announces one (`announce`: the log store holds the batches of any other).

Baselines measured in the same run: JetStream publish-with-ack of the same messages to a scratch stream with
no consumer (the bus alone), and pyarrow reading a 1,000-row slice from a local Parquet file of the same
layout (the page read with no network, index or encoding)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import nats
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import stack_with_pipeline
from services.log_store.pages import encode_cursor
from shared import subjects
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, InferenceRecord, build_batch, log_header
from shared.messages.deployer import PipelineDeployed
from tests.models import sample_rows

BATCH_ROWS = 1000
INGEST_ROWS = 2_000_000
HISTORY_ROWS = 10_000_000
WINDOW = 64  # publishes in flight
ANNOUNCE_WAIT = 60.0  # seconds the log store may take to record the announcement
STALL = 120.0  # seconds without a row stored that end an ingestion (a bench that never finishes says nothing)


def deployment_of(name: str) -> str:
    """The deployment the bench logs for, of its pipeline `name`."""
    return f"{name}-1"


async def announce(nc, pg: asyncpg.Connection, workspace: int, pipeline_id: int, name: str) -> None:
    """Announce the pipeline's deployment as the deployer does once one serves (events.pipeline.deployed, as
    tests/integration/log_owners.py does for tests), then wait until the log store has recorded it. The log store
    takes a batch only of a deployment the deployer announced in the workspace and of the pipeline its header names
    (docs/logs.md); before, it holds the batches unacknowledged, and ingestion never finished (since 2026-12-04)."""
    deployment = deployment_of(name)
    event = PipelineDeployed(deployment_id=1, name=deployment, pipeline_id=pipeline_id, workspace_id=workspace,
                             pipeline_version=str(uuid.uuid4()), pipeline_name=name)
    await nc.jetstream().publish(subjects.EVENT_PIPELINE_DEPLOYED, event.model_dump_json().encode(),
                                 headers={"Nats-Msg-Id": str(event.event_id)})
    deadline = time.monotonic() + ANNOUNCE_WAIT
    while not await pg.fetchval("SELECT 1 FROM log_store.deployments WHERE name = $1", deployment):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the log store did not record deployment {deployment} in {ANNOUNCE_WAIT:.0f} s")
        await asyncio.sleep(0.05)


def seed_like_batch(rows: int, at_ms: int, seed: int) -> bytes:
    """Rows like the seed's ccfraud logs (a 29-float tensor in, one float out, metadata), laid out by the
    engine's own batch builder from one-row requests."""
    features = sample_rows(rows, seed=seed)
    model = json.dumps({"model_name": "ccfraud", "model_sha": "e22a0831aafd9917f3cc87a15ed267797f80e2afa12ad7d8810"
                        "ca58f173b8cc6"})
    inputs = pa.table({"tensor": tensor_array(features)})
    outputs = pa.table({"dense_1": tensor_array(features[:, :1] * 0.5)})
    records = [InferenceRecord(at_ms, inputs.slice(i, 1), outputs.slice(i, 1), model, (112967, 267146))
               for i in range(rows)]
    return to_ipc_stream(build_batch(records, "6d1a7f2c-6a4e-4bd0-9f84-0d6f2b0c9a11"))


async def _publish_all(js, subject_of, payloads: list[bytes], count: int, header: str | None) -> float:
    """Publish `count` messages (cycling through payloads) with at most WINDOW acks outstanding; seconds."""
    sem = asyncio.Semaphore(WINDOW)
    started = time.perf_counter()

    async def one(index: int) -> None:
        batch = str(uuid.uuid4())
        headers = {MSG_ID: batch, BATCH_ID: batch}
        if header:
            headers[LOG_HEADER] = header
        try:
            await js.publish(subject_of(index), payloads[index % len(payloads)], headers=headers)
        finally:
            sem.release()

    tasks = []
    for index in range(count):
        await sem.acquire()
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def _stored(pg: asyncpg.Connection, workspace: int, name: str) -> int:
    value = await pg.fetchval("SELECT next_pos FROM log_store.pipelines WHERE workspace_id = $1 AND name = $2",
                              workspace, name)
    return int(value or 0)


async def _ingest(js, pg, workspace: int, name: str, rows: int, payloads: list[bytes]) -> dict[str, float]:
    before = await _stored(pg, workspace, name)
    header = log_header(workspace, name, deployment_of(name), "v")
    messages = -(-rows // BATCH_ROWS)
    rows = messages * BATCH_ROWS
    started = time.perf_counter()
    published = await _publish_all(js, lambda i: f"logs.inference.{deployment_of(name)}", payloads, messages,
                                   header)
    progress, moved = before, time.monotonic()
    while (now := await _stored(pg, workspace, name)) < before + rows:  # polling another process
        if now != progress:
            progress, moved = now, time.monotonic()
        elif time.monotonic() - moved > STALL:
            raise RuntimeError(f"the log store stored no row of {name} in {STALL:.0f} s ({now - before:,} of {rows:,}):"
                               " batches held or quarantined (its log says why)")
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(1.0)
    stored = await _stored(pg, workspace, name) - before
    return {"rows_per_s": rows / elapsed, "publish_rows_per_s": rows / published, "stored": stored,
            "expected": rows}


async def _page_latencies(http: httpx.AsyncClient, body: dict, cursors: list[str | None], accept: str | None
                          ) -> list[float]:
    headers = {"Accept": accept} if accept else {}
    times = []
    for cursor in cursors:
        started = time.perf_counter()
        response = await http.post("/v1/api/pipelines/get_logs", json={**body, **({"cursor": cursor} if cursor
                                                                                   else {})}, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return times


def _parquet_baseline(payload: bytes, folder: Path) -> float:
    """p50 ms of pyarrow reading 1,000 rows at random places of a local 500,000-row file of the same layout."""
    batch = pa.ipc.open_stream(payload).read_all()
    table = pa.concat_tables([batch] * 500).combine_chunks()
    path = folder / "baseline.parquet"
    pq.write_table(table, path, row_group_size=8192, compression="snappy")
    parquet = pq.ParquetFile(path)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(100):
        group = int(rng.integers(0, parquet.num_row_groups - 1))
        started = time.perf_counter()
        parquet.read_row_group(group).slice(0, 1000).to_pylist()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def _measure(stack, token: str, workspace: int, pipeline_id: int) -> dict[str, float]:
    settings = stack.settings()
    nc = await nats.connect(settings.nats.url)
    js = nc.jetstream()
    pg = await asyncpg.connect(settings.postgres.dsn)
    results: dict[str, float] = {}
    try:
        now = int(time.time() * 1000)
        payloads = [seed_like_batch(BATCH_ROWS, now, seed) for seed in range(8)]
        results["batch_bytes"] = len(payloads[0])
        # the bus alone: the same messages to a scratch stream nobody consumes
        await js.add_stream(name="BENCH_SCRATCH", subjects=["benchscratch.>"])
        seconds = await _publish_all(js, lambda i: "benchscratch.x", payloads, 500, None)
        results["bus_rows_per_s"] = 500 * BATCH_ROWS / seconds
        await js.delete_stream("BENCH_SCRATCH")

        await announce(nc, pg, workspace, pipeline_id, "logbench")
        ingest = await _ingest(js, pg, workspace, "logbench", INGEST_ROWS, payloads)
        results |= {f"ingest_{k}": v for k, v in ingest.items()}

        http = httpx.AsyncClient(base_url=stack.base_url, timeout=60, headers={"Authorization": f"Bearer {token}"})
        body = {"pipeline_id": "logbench", "workspace_id": workspace, "page_size": 1000}
        fresh = []
        for attempt in range(5):  # freshness: a new batch until get_logs shows it
            marker = int(time.time() * 1000) + attempt
            batch = seed_like_batch(1, marker, 100 + attempt)
            started = time.perf_counter()
            await _publish_all(js, lambda i: f"logs.inference.{deployment_of('logbench')}", [batch], 1,
                               log_header(workspace, "logbench", deployment_of("logbench"), "v"))
            while True:
                response = await http.post("/v1/api/pipelines/get_logs", json={**body, "page_size": 1,
                                                                               "dataset": ["time"]})
                if response.json() and response.json()[0]["time"] == marker:
                    break
                await asyncio.sleep(0.01)
            fresh.append(time.perf_counter() - started)
        results["fresh_p50_s"] = statistics.median(fresh)

        # grow the history to HISTORY_ROWS, then compact it as the maintenance timer would
        await _ingest(js, pg, workspace, "logbench", HISTORY_ROWS - await _stored(pg, workspace, "logbench"),
                      payloads)
        started = time.perf_counter()
        report = json.loads((await nc.request(subjects.LOG_STORE_MAINTENANCE, b'{"retention": false}',
                                              timeout=600)).data)["data"]
        results["compact_s"] = time.perf_counter() - started
        results["compacted_segments"] = report["compacted_segments"]
        live = await pg.fetch("SELECT row_count, bytes FROM log_store.segments WHERE superseded_at IS NULL")
        results["segments_after"] = len(live)
        # what the live segments are: the ingestion's own (the log store cuts one a flush, flush_interval or
        # segment_max_bytes, and compaction leaves those of compact_below_bytes and more as they are) and the few
        # small ones compaction merged
        counts, sizes = [r["row_count"] for r in live], [r["bytes"] / 1024**2 for r in live]
        results["live_rows_p50"], results["live_mib_p50"] = statistics.median(counts), statistics.median(sizes)
        results["live_rows_min"], results["live_rows_max"] = min(counts), max(counts)
        results["live_mib_min"], results["live_mib_max"] = min(sizes), max(sizes)
        total = await _stored(pg, workspace, "logbench")
        results["history_rows"] = total

        rng = np.random.default_rng(7)
        newest = await _page_latencies(http, body, [None] * 30, None)
        deep = [encode_cursor(now, int(p), "Desc") for p in rng.integers(1000, total, 60)]  # all rows at `now`
        deep_json = await _page_latencies(http, body, deep, None)
        deep_arrow = await _page_latencies(http, body, deep, "application/vnd.apache.arrow.file")
        results["newest_p50_ms"] = statistics.median(newest[5:])
        results["deep_json_p50_ms"] = statistics.median(deep_json)
        results["deep_json_p99_ms"] = float(np.percentile(deep_json, 99))
        results["deep_arrow_p50_ms"] = statistics.median(deep_arrow)
        await http.aclose()
    finally:
        await pg.close()
        await nc.close()
    return results


def run() -> str:
    with stack_with_pipeline("logbench") as bench:
        measured = asyncio.run(_measure(bench.stack, bench.token, bench.workspace, bench.pipeline_id))
        baseline_ms = _parquet_baseline(seed_like_batch(BATCH_ROWS, 0, 0), Path(bench.folder))
    m = measured
    lost = m["ingest_expected"] - m["ingest_stored"]
    rows = [
        ("sustained ingestion, stream -> Parquet segment + index, acked",
         f"{m['ingest_rows_per_s']:,.0f} rows/s ({lost:+.0f} rows lost/duplicated)", ">= 100,000 rows/s",
         f"{m['ingest_rows_per_s'] / m['bus_rows_per_s']:.2f} of the bus alone ({m['bus_rows_per_s']:,.0f} rows/s)"),
        ("new rows readable through get_logs", f"{m['fresh_p50_s'] * 1000:.0f} ms p50", "<= 1 s", ""),
        ("1,000-row page, newest (JSON)", f"{m['newest_p50_ms']:.1f} ms p50", "<= 50 ms",
         f"{m['newest_p50_ms'] / baseline_ms:.0f}x local Parquet read"),
        ("1,000-row page at a random depth (JSON)", f"{m['deep_json_p50_ms']:.1f} ms p50 "
         f"(p99 {m['deep_json_p99_ms']:.1f})", "<= 50 ms", f"{m['deep_json_p50_ms'] / baseline_ms:.0f}x local "
         "Parquet read"),
        ("1,000-row page at a random depth (Arrow)", f"{m['deep_arrow_p50_ms']:.1f} ms p50", "",
         f"{m['deep_arrow_p50_ms'] / baseline_ms:.0f}x local Parquet read"),
        ("compaction of the history", f"{m['compact_s']:.1f} s for {m['compacted_segments']:.0f} segments",
         "", f"{m['segments_after']:.0f} live segments after (rows {m['live_rows_min']:,.0f}-"
         f"{m['live_rows_max']:,.0f}, median {m['live_rows_p50']:,.0f}; {m['live_mib_min']:.1f}-"
         f"{m['live_mib_max']:.1f} MiB, median {m['live_mib_p50']:.1f})"),
    ]
    lines = [
        "## Inference log store",
        "",
        f"{m['ingest_expected']:,.0f} seed-like rows (29-float tensor in, one float out, metadata) published as "
        f"{BATCH_ROWS}-row Arrow messages ({m['batch_bytes'] / 1024:.0f} KiB), {WINDOW} acks in flight, the way the "
        "engine batches requests; ingestion is timed from the first publish until the index counts every row. "
        f"Pages are read from a {m['history_rows']:,.0f}-row history through the gateway (HTTP -> NATS -> log store "
        f"-> S3 ranged reads). Baselines in the same run: JetStream publish with ack of the same messages to a "
        f"stream nobody consumes, and pyarrow reading 1,000 rows from a local Parquet file ({baseline_ms:.2f} ms "
        "p50). Compaction merges only segments below `compact_below_bytes` (2 MiB) and half of "
        "`compact_target_rows`: here the freshness check's one-row segments. The ingestion's own stay as the log "
        "store wrote them, one a flush (`flush_interval` or `segment_max_bytes` of rows, whichever first), so the "
        "live segments after it say how fast the ingestion ran, not what compaction did.",
        "",
        "| measure | Railyard | target | vs baseline |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
