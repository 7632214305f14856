"""Inference through the whole stack (gateway -> NATS -> engine replica -> back) against raw onnxruntime on
the same model in the same run. Starts its own embedded stack on free ports, deploys the seed-like 29-feature
model with one replica, then drives it from this process on loopback with bounded loops."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import pyarrow as pa
import uvloop

from bench import loadgen
from bench.loadgen import build_request
from shared.arrow_codec import tensor_array, to_ipc_file
from tests.models import ccfraud_onnx, sample_rows
from tests.stack import start_stack

RECORDS = "application/json; format=pandas-records"
ARROW = "application/vnd.apache.arrow.file"


def _deploy(stack) -> tuple[str, str]:
    from shared.client import RailyardClient

    secrets = stack.secrets()
    client = RailyardClient(stack.base_url, secrets["client_id"], secrets["client_secret"])
    client.login(secrets["admin_username"], secrets["admin_password"])
    workspace = client.post("workspaces/create", {"workspace_name": "bench"})["workspace_id"]
    upload = client.http.post("/v1/api/models/upload_stream", files={"file": ("m", ccfraud_onnx())},
                              data={"name": "ccfraud", "workspace_id": workspace}, headers=client.auth_header())
    model_id = upload.json()["insert_models"]["returning"][0]["models"][0]["id"]
    version = client.post("models/list_versions", {"models_pk_id": model_id})[0]
    pipeline = client.post("pipelines/create", {"pipeline_id": "bench", "workspace_id": workspace, "definition": {
        "steps": [{"ModelInference": {"models": [{"name": "ccfraud", "version": version["model_version"]}]}}]}})
    client.post("pipelines/deploy", {"deploy_id": "bench", "pipeline_id": pipeline["pipeline_pk_id"],
                                     "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"]})
    url = client.post("admin/get_pipeline_external_url", {"workspace_id": workspace, "pipeline_name": "bench"})["url"]
    return url, client.token


def _baseline() -> dict[str, float]:
    session = ort.InferenceSession(ccfraud_onnx())
    one, thousand = sample_rows(1), sample_rows(1000)
    for _ in range(200):
        session.run(None, {"tensor": one})
    singles = []
    for _ in range(2000):
        started = time.perf_counter()
        session.run(None, {"tensor": one})
        singles.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(50):
        session.run(None, {"tensor": thousand})
    return {"p50_ms": statistics.median(singles) * 1e3, "rows_per_s": 50_000 / (time.perf_counter() - started)}


async def _measure(url: str, token: str) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {token}"}
    one_json = json.dumps([{"tensor": sample_rows(1)[0].tolist()}]).encode()
    rows = sample_rows(1000)
    thousand_json = json.dumps([{"tensor": r} for r in rows.tolist()]).encode()
    thousand_arrow = to_ipc_file(pa.table({"tensor": tensor_array(rows)}))
    model = url.split("/infer/")[1].split("/")[0]
    oip_url = url.split("/v1/api/")[0] + f"/v2/models/{model}/infer"
    oip_body = json.dumps({"inputs": [{"name": "tensor", "shape": [1000, 29], "datatype": "FP32",
                                       "data": rows.reshape(-1).tolist()}]}).encode()
    one = build_request(url, one_json, auth | {"Content-Type": RECORDS})
    results: dict[str, float] = {}
    await loadgen.sequential(url, one, 200)  # warm-up
    singles = await loadgen.sequential(url, one, 2000)
    results["json1_p50_ms"] = statistics.median(singles) * 1e3
    results["json1_p99_ms"] = statistics.quantiles(singles, n=100)[98] * 1e3
    results["json1_rps_8conn"] = await loadgen.concurrent(url, one, 8, 10.0)
    results["json1_rps_32conn"] = await loadgen.concurrent(url, one, 32, 10.0)
    # batches: throughput with 4 connections in flight (one alone measures latency, not what the stack moves)
    for key, target, body, headers in (
        ("arrow1000_rows_per_s", url, thousand_arrow, {"Content-Type": ARROW, "Accept": ARROW}),
        ("json1000_rows_per_s", url, thousand_json, {"Content-Type": RECORDS}),
        ("oip1000_rows_per_s", oip_url, oip_body, {"Content-Type": "application/json"}),
    ):
        request = build_request(target, body, auth | headers)
        await loadgen.sequential(target, request, 5)
        results[key] = 1000 * await loadgen.concurrent(target, request, 4, 8.0)
    return results


def run() -> str:
    baseline = _baseline()
    with tempfile.TemporaryDirectory(prefix="railyard-bench-") as folder:
        stack = start_stack(Path(folder) / "data")
        try:
            stack.wait_healthy()
            url, token = _deploy(stack)
            measured = uvloop.run(_measure(url, token))
        finally:
            stack.stop()
    rows = [
        ("batch-1 JSON, p50 latency, 1 connection", f"{measured['json1_p50_ms']:.2f} ms (p99 "
         f"{measured['json1_p99_ms']:.2f})", "<= 0.5 ms", f"{measured['json1_p50_ms'] / baseline['p50_ms']:.0f}x raw"),
        ("batch-1 JSON, 8 connections", f"{measured['json1_rps_8conn']:,.0f} req/s", ">= 3,000 req/s", ""),
        ("batch-1 JSON, 32 connections (the stack's ceiling)", f"{measured['json1_rps_32conn']:,.0f} req/s", "", ""),
        ("batch-1000 Arrow", f"{measured['arrow1000_rows_per_s']:,.0f} rows/s", ">= 2,000,000 rows/s",
         f"{measured['arrow1000_rows_per_s'] / baseline['rows_per_s']:.3f} of raw"),
        ("batch-1000 pandas-records JSON", f"{measured['json1000_rows_per_s']:,.0f} rows/s", ">= 150,000 rows/s",
         f"{measured['json1000_rows_per_s'] / baseline['rows_per_s']:.3f} of raw"),
        ("batch-1000 OIP v2 JSON", f"{measured['oip1000_rows_per_s']:,.0f} rows/s", ">= 350,000 rows/s",
         f"{measured['oip1000_rows_per_s'] / baseline['rows_per_s']:.3f} of raw"),
    ]
    lines = [
        "## Inference through the stack (gateway -> NATS -> one engine replica)",
        "",
        f"Baseline measured in the same run: raw onnxruntime in-process, batch-1 p50 {baseline['p50_ms']:.3f} ms,"
        f" batch-1000 {baseline['rows_per_s']:,.0f} rows/s. The load generator (bench/loadgen.py: raw HTTP/1.1 on"
        " asyncio streams with uvloop, keep-alive connections) runs on the same 2 cores as the stack; batch-1000"
        " figures are throughput with 4 connections in flight.",
        "",
        "| measure | Railyard | target | vs raw onnxruntime |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    return "\n".join(lines)
