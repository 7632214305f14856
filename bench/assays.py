"""One assay run over a 1,000,000-row window, through the gateway (HTTP -> assay runner -> log store field read
from Parquet segments in S3 -> binning and scoring), against numpy computing the same histogram on the same
values in memory in the same run. Starts its own embedded stack; rows are published to the log stream the way
the engine publishes them, for a deployment announced as the deployer announces one (bench.logs.announce), then
compacted as the maintenance timer would."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from datetime import UTC, datetime

import asyncpg
import httpx
import nats
import numpy as np
import pyarrow as pa

from bench import stack_with_pipeline
from bench.logs import BATCH_ROWS, _ingest, announce
from shared import subjects
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import InferenceRecord, build_batch
from tests.models import sample_rows

WINDOW_ROWS = 1_000_000
BASELINE_ROWS = 100_000
RUNS = 7


def record(at_ms: int, seed: int, shift: float) -> InferenceRecord:
    """One 1,000-row request's log record (a 29-float tensor in, `out.dense_1` shifted by `shift`)."""
    features = sample_rows(BATCH_ROWS, seed=seed)
    inputs = pa.table({"tensor": tensor_array(features)})
    outputs = pa.table({"dense_1": tensor_array((features[:, :1] + shift).astype(np.float32))})
    model = json.dumps({"model_name": "ccfraud", "model_sha": "0" * 64})
    return InferenceRecord(at_ms, inputs, outputs, model, (1000, 2000))


def _batch(at_ms: int, seed: int, shift: float) -> bytes:
    return to_ipc_stream(build_batch([record(at_ms, seed, shift)], "v1"))


def assay_body(workspace: int, pipeline_id: int, pipeline_name: str, t0: int, t1: int) -> dict:
    """run_interactive's body: the window of rows logged at `t1`, against the Fixed baseline of those at `t0`."""
    return {"name": "bench", "pipeline_id": pipeline_id, "pipeline_name": pipeline_name,
            "iopath": "output dense_1 0",
            "baseline": {"Fixed": {"pipeline": pipeline_name, "model": "ccfraud", "start_at": _iso(t0 - 1000),
                                   "end_at": _iso(t0 + 1000)}},
            "window": {"pipeline": pipeline_name, "model": "ccfraud", "width": "10 minutes",
                       "start": _iso(t1 - 300_000)},
            "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                           "metric": "PSI", "num_bins": 10, "add_outlier_edges": True},
            "warning_threshold": 0.01, "alert_threshold": 0.1, "workspace_id": workspace}


async def assay_runs(http: httpx.AsyncClient, body: dict, runs: int = RUNS) -> tuple[list[float], dict]:
    """Seconds of each of `runs` assay runs (each checked to count the whole window), and the last result."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = await http.post("/v1/api/assays/run_interactive", json=body)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        [result] = response.json()
        assert result["window_summary"]["count"] == WINDOW_ROWS, result["window_summary"]["count"]
    return times, result


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def _measure(stack, token: str, workspace: int, pipeline_id: int) -> dict[str, float]:
    settings = stack.settings()
    nc = await nats.connect(settings.nats.url)
    pg = await asyncpg.connect(settings.postgres.dsn)
    now = int(time.time() * 1000)
    t0, t1 = now - 3_600_000, now - 600_000
    try:
        js = nc.jetstream()
        await announce(nc, pg, workspace, pipeline_id, "assaybench")
        await _ingest(js, pg, workspace, "assaybench", BASELINE_ROWS, [_batch(t0, s, 0.0) for s in range(4)])
        await _ingest(js, pg, workspace, "assaybench", WINDOW_ROWS, [_batch(t1, s, 0.3) for s in range(4, 12)])
        await nc.request(subjects.LOG_STORE_MAINTENANCE, b'{"retention": false}', timeout=600)
    finally:
        await pg.close()
        await nc.close()
    body = assay_body(workspace, pipeline_id, "assaybench", t0, t1)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        times, result = await assay_runs(http, body)
    # numpy alone on the same values: the histogram of the window against the baseline's quantile edges
    rng_values = np.concatenate([pa.ipc.open_stream(_batch(t1, s, 0.3)).read_all().column("out.dense_1")
                                 .combine_chunks().flatten().to_numpy() for s in range(4, 12)])
    window = np.resize(rng_values, WINDOW_ROWS).astype(np.float64)
    edges = np.quantile(window[:BASELINE_ROWS] - 0.3, np.linspace(0, 1, 11))
    numpy_times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        np.histogram(window, bins=edges)
        numpy_times.append(time.perf_counter() - started)
    return {"run_p50_ms": statistics.median(times) * 1000, "run_min_ms": min(times) * 1000,
            "numpy_p50_ms": statistics.median(numpy_times) * 1000, "score": result["score"],
            "status": result["status"]}


def run() -> str:
    with stack_with_pipeline("assaybench") as bench:
        m = asyncio.run(_measure(bench.stack, bench.token, bench.workspace, bench.pipeline_id))
    lines = [
        "## Assays",
        "",
        f"`assays/run_interactive` over one window of {WINDOW_ROWS:,} logged rows (the seed-like model's "
        f"`out.dense_1`), PSI against a {BASELINE_ROWS:,}-row Fixed baseline with 10 quantile bins, through the "
        "gateway: the assay runner asks the log store for the field (ranged, parallel reads of two columns of the "
        "Parquet segments), bins and scores it. Baseline in the same run: numpy's `histogram` of the same number of "
        f"values already in memory. Median of {RUNS} runs.",
        "",
        "| measure | Railyard | target | vs numpy alone |",
        "|---|---|---|---|",
        f"| one assay run, 1,000,000-row window | {m['run_p50_ms']:.0f} ms p50 (best {m['run_min_ms']:.0f}) | "
        f"<= 300 ms | {m['run_p50_ms'] / m['numpy_p50_ms']:.1f}x numpy's {m['numpy_p50_ms']:.1f} ms |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
