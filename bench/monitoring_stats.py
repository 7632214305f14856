"""get_stats on a deployment holding many predictions: each ServiceMetrics value through the gateway (HTTP ->
monitoring service -> PostgreSQL), timed. Starts its own embedded stack, deploys the small digits classifier (get_stats
needs a deployed pipeline), then writes PREDICTIONS predictions (a quarter detections, REVIEWED of them reviewed)
straight into `monitoring.predictions` / `monitoring.reviews` with COPY, and a ready training-data reference, so the
figures are those of the real route on real rows.
`python -m bench.monitoring_stats [predictions [SERVICE,SERVICE...]]`."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from shared.images import FEATURE_NAMES
from shared.messages.monitoring_feedback import SERVICE_METRICS

PREDICTIONS = 100_000
REVIEWED = 0.2
RUNS = 3


def _feature_row(rng: random.Random) -> dict[str, float]:
    return {name: (rng.choice((8.0, 16.0, 32.0)) if name in ("height", "width") else rng.gauss(120.0, 30.0))
            for name in FEATURE_NAMES}


def _prediction(rng: random.Random, kind: str) -> dict:
    if kind == "classification":
        classes = [rng.randrange(10)]
        return {"detection_classes": classes, "detection_scores": [rng.random()]}
    boxes = []
    for _ in range(3):
        top, left = rng.randrange(20), rng.randrange(20)
        boxes.append([top, left, top + 4 + rng.randrange(8), left + 4 + rng.randrange(8)])
    return {"detection_classes": [rng.randrange(3) for _ in boxes],
            "detection_scores": [rng.random() for _ in boxes], "detection_boxes": boxes}


async def fill(dsn: str, deployment_id: int, workspace_id: int, count: int, model: dict) -> None:
    """COPY `count` predictions (and REVIEWED of them reviewed) spread over the last 30 days, and a ready
    reference."""
    from services.monitoring import stats

    rng = random.Random(7)
    now = datetime.now(UTC)
    predictions, reviews = [], []
    for index in range(count):
        kind = "detection" if index % 4 == 3 else "classification"
        prediction = _prediction(rng, kind)
        pid = uuid.uuid4()
        predictions.append((pid, deployment_id, workspace_id, rng.choice(("predict", "monitor")), None,
                            [f"cam-{index % 5}"] + (["night"] if index % 3 == 0 else []), json.dumps(model), None,
                            kind, json.dumps(prediction), None, rng.random() / 50, None, 32, 32, "image/png",
                            "0" * 64, json.dumps(_feature_row(rng)),
                            now - timedelta(seconds=rng.uniform(0, 30 * 86400))))
        if rng.random() < REVIEWED:
            truth = prediction if rng.random() < 0.7 else _prediction(rng, kind)
            reviews.append((uuid.uuid4(), pid, deployment_id, workspace_id,
                            "accepted" if truth is prediction else "corrected", json.dumps(truth)))
    features = [_feature_row(rng) for _ in range(500)]
    reference = stats.build_reference(features, [[str(rng.randrange(10))] for _ in features])
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "predictions", schema_name="monitoring", records=predictions,
            columns=["id", "deployment_id", "workspace_id", "origin", "source", "tags", "model_version",
                     "shadow_model_version", "kind", "prediction", "shadow_prediction", "latency", "shadow_latency",
                     "height", "width", "content_type", "image_sha256", "features", "predicted_at"])
        await conn.copy_records_to_table(
            "reviews", schema_name="monitoring", records=reviews,
            columns=["id", "prediction_id", "deployment_id", "workspace_id", "decision", "ground_truth"])
        await conn.execute(
            "INSERT INTO monitoring.training_references (deployment_id, workspace_id, dataset_id, status, files,"
            " images_total, images_done, reference, computed_at) VALUES ($1, $2, 0, 'ready', '[]', 500, 500, $3,"
            " now()) ON CONFLICT (deployment_id) DO UPDATE SET status = 'ready', reference = $3",
            deployment_id, workspace_id, json.dumps(reference))
        await conn.execute("ANALYZE monitoring.predictions; ANALYZE monitoring.reviews")
        print(f"wrote {len(predictions):,} predictions and {len(reviews):,} reviews in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        await conn.close()


async def recompute(dsn: str, deployment_id: int, service: str, filters: dict) -> tuple[float, dict]:
    """The seconds and answer of the path every value took before stats_columns.py: every matching row read
    (feedback_store.stats_rows) and stats.compute over them, in this process."""
    from services.monitoring import feedback_store as fs
    from services.monitoring import stats

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, server_settings={"search_path": "monitoring"})
    try:
        started = time.perf_counter()
        start = datetime.fromtimestamp(filters["from_timestamp"], UTC) if "from_timestamp" in filters else None
        rows = await fs.stats_rows(pool, deployment_id, model_name=None, model_version=None, start=start, end=None,
                                   includes=None, excludes=None, tags=filters.get("tags"), limit=1_000_000)
        kept = await fs.reference_row(pool, deployment_id)
        answer = stats.compute(service, rows, kept["reference"] if kept and kept["status"] == "ready" else None)
        return time.perf_counter() - started, {"predictions": len(rows), "stats": answer}
    finally:
        await pool.close()


async def measure(base_url: str, token: str, deployment: str, filters: dict | None = None,
                  services: tuple[str, ...] = SERVICE_METRICS, old_path: tuple[str, int] | None = None
                  ) -> dict[str, dict]:
    """Median and best seconds of each ServiceMetrics value (RUNS calls each), with the prediction count. A value
    get_stats pre-aggregates is also asked with `excludes` (which makes get_stats compute from the rows): the two
    answers must be equal, and the recomputation's time is reported as `<service> recomputed`. With `old_path`
    (dsn, deployment id) every value computed from its columns (stats_columns.py) is also computed the old way
    (recompute), timed as `<service> recomputed`; the route's answer must equal it."""
    from services.monitoring.aggregates import AGGREGATED
    from services.monitoring.stats_columns import COLUMNAR

    out = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=300,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        for service in services:
            if service in AGGREGATED:
                answers = []
                for extra in ({}, {"excludes": [str(uuid.uuid4())]}):
                    started = time.perf_counter()
                    response = await http.post("/v1/api/deployments/get_stats", json={
                        "deployment": deployment, "service": service, **(filters or {}), **extra})
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text
                    answers.append(response.json())
                assert answers[0] == answers[1], "the pre-aggregated answer differs from the recomputed one"
                out[f"{service} recomputed"] = {"p50": elapsed, "best": elapsed,
                                                "predictions": answers[1]["predictions"]}
            times = []
            for _ in range(RUNS):
                started = time.perf_counter()
                response = await http.post("/v1/api/deployments/get_stats",
                                           json={"deployment": deployment, "service": service, **(filters or {})})
                times.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
            out[service] = {"p50": statistics.median(times), "best": min(times),
                            "predictions": response.json()["predictions"]}
            if old_path is not None and service in COLUMNAR:
                elapsed, answer = await recompute(*old_path, service, filters or {})
                got = response.json()
                assert {"predictions": got["predictions"], "stats": got["stats"]} == json.loads(json.dumps(answer)), \
                    f"{service}: the answer from the columns differs from the recomputed one"
                out[f"{service} recomputed"] = {"p50": elapsed, "best": elapsed, "predictions": answer["predictions"]}
    return out


def run(count: int = PREDICTIONS, services: tuple[str, ...] = SERVICE_METRICS) -> str:
    import tempfile
    from pathlib import Path

    from railyard_client import Client

    from tests.image_models import digits_classifier_onnx, digits_image_config
    from tests.stack import start_stack

    with tempfile.TemporaryDirectory(prefix="railyard-bench-stats-") as folder:
        stack = start_stack(Path(folder) / "data")
        try:
            stack.wait_healthy()
            secrets = stack.secrets()
            client = Client(stack.base_url, username=secrets["admin_username"], password=secrets["admin_password"],
                            client_id=secrets["client_id"], client_secret=secrets["client_secret"])
            workspace_id = client.create_workspace("statsbench").id
            client.set_current_workspace(workspace_id)
            model = client.upload_model("digits", digits_classifier_onnx(train_size=200), progress=False)
            pipeline = client.build_pipeline("statsbench").add_model_step(model, image=digits_image_config())
            pipeline.deploy(replicas=1, cpus=0.5, wait=True)
            name = client.get_deployment("statsbench").name
            route = asyncio.run(_route(stack.settings().postgres.dsn))
            asyncio.run(fill(stack.settings().postgres.dsn, route, workspace_id, count,
                             {"name": "digits", "version": str(uuid.uuid4()), "sha": "0" * 64}))
            from services.monitoring.aggregates import AGGREGATED

            fresh = asyncio.run(measure(stack.base_url, client.token, name,
                                        services=tuple(v for v in services if v in AGGREGATED)))
            asyncio.run(_vacuum(stack.settings().postgres.dsn))
            old_path = (stack.settings().postgres.dsn, route)
            results = asyncio.run(measure(stack.base_url, client.token, name, services=services, old_path=old_path))
            results |= {f"{k}, before VACUUM": v for k, v in fresh.items() if "recomputed" not in k}
            week_start = time.time() - 7 * 86400  # a fixed start (not `since`): the recomputation reads the same rows
            week = asyncio.run(measure(stack.base_url, client.token, name,
                                       {"from_timestamp": week_start, "tags": ["night"]}, services=services,
                                       old_path=old_path))
        finally:
            stack.stop()
    lines = [f"| ServiceMetrics | all {count:,} predictions: p50 (best) | last 7 days, tag `night`: p50 (best) |",
             "|---|---|---|"]
    for service in results:
        a, w = results[service], week.get(service)
        lines.append(f"| {service} | {a['p50'] * 1000:,.0f} ms ({a['best'] * 1000:,.0f}) | " + (
            f"{w['p50'] * 1000:,.0f} ms ({w['best'] * 1000:,.0f}), {w['predictions']:,} predictions |" if w else "- |"))
    return "\n".join(lines)


async def _vacuum(dsn: str) -> None:
    """What the service's fold (every minute) and autovacuum do after the bulk write."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT monitoring.fold_prediction_hours()")
        await conn.execute("VACUUM ANALYZE monitoring.prediction_hours, monitoring.prediction_hour_deltas")
    finally:
        await conn.close()


async def _route(dsn: str) -> int:
    """The one deployment's id (the bench deploys exactly one)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT id FROM deployer.deployments ORDER BY id DESC LIMIT 1"))
    finally:
        await conn.close()


if __name__ == "__main__":
    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else PREDICTIONS,
              tuple(sys.argv[2].split(",")) if len(sys.argv) > 2 else SERVICE_METRICS))
