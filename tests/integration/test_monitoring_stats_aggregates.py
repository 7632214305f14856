"""get_stats' pre-aggregation (services/monitoring/aggregates.py, migrations/008_prediction_hours.sql) on the real
PostgreSQL of the test stack: predictions written (and some deleted) straight into `monitoring.predictions` for
deployments no test uses, then AGGREGATED_LABEL_DISTRIBUTION from the hourly aggregate is compared with the same
statistic recomputed from every row (the path get_stats takes for the other metrics) under time windows that cut hours
or fall inside one, open at either end, on hour boundaries and on a prediction's own timestamp, model versions by name,
version and sha, and tag sets; and PREDICTIONS_DATA from a count and the newest rows against the same from every
row. The route's answer is compared the same way in test_monitoring_loop_detection.py."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.monitoring import aggregates, reference, stats
from services.monitoring import feedback_store as fs
from shared.db import create_pool
from shared.images import FEATURE_NAMES

pytestmark = pytest.mark.integration

FORMATS = [
    ("classification", {"detection_classes": [3], "detection_scores": [0.4]}),
    ("classification", {"detection_classes": [3, 5], "detection_scores": [0.4, 0.9]}),
    ("classification", {"detection_classes": [2, 5], "detection_scores": [0.9, 0.9]}),  # a tie: the first
    ("classification", {"detection_classes": [7]}),  # no scores: the first class
    ("classification", {"detection_classes": [], "detection_scores": []}),  # below min_threshold: no label
    ("detection", {"detection_classes": [1, 1, 0], "detection_scores": [0.1, 0.2, 0.3],
                   "detection_boxes": [[0, 0, 4, 4]] * 3}),
    ("segmentation", {"detection_classes": [0], "detection_scores": [0.8], "detection_boxes": [[0, 0, 4, 4]],
                      "detection_masks": [[0, 0, 4, 0, 4, 4]]}),
]
MODELS = [None, {"name": "squares", "version": "v1", "sha": "a" * 64}, {"name": "squares", "version": "v2",
                                                                        "sha": "b" * 64}]
TAGS = [[], ["cam-1"], ["cam-1", "night"], ["night"]]


def test_the_hourly_aggregate_answers_exactly_what_the_rows_give(stack, monkeypatch):
    monkeypatch.setattr(stats, "MAX_LISTED", 40)  # PREDICTIONS_DATA's list cut short of the rows kept
    asyncio.run(_compare(stack))


async def _compare(stack) -> None:
    deployment = 1_000_000 + random.randrange(1_000_000)  # no deployer id comes near
    pool = await create_pool(stack.settings().postgres, "monitoring")
    rng = random.Random(5)
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=6)
    moments = [base + timedelta(seconds=rng.uniform(0, 6 * 3600)) for _ in range(400)]
    moments += [base + timedelta(hours=h) for h in range(7)]  # on the hour boundaries themselves
    rows = []
    for moment in moments:
        kind, prediction = rng.choice(FORMATS)
        model = rng.choice(MODELS)
        rows.append((uuid.uuid4(), deployment, 1, "monitor", kind, json.dumps(prediction),
                     json.dumps(model) if model else None, rng.choice(TAGS), moment))
    other = [(uuid.uuid4(), deployment + 1, 1, "monitor", *FORMATS[0][:1], json.dumps(FORMATS[0][1]), None, [],
              base + timedelta(hours=1))]  # another deployment's prediction counts for nothing here
    try:
        async with pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO predictions (id, deployment_id, workspace_id, origin, kind, prediction, model_version,"
                " tags, predicted_at, height, width, content_type, image_sha256, features) VALUES ($1, $2, $3, $4,"
                " $5, $6, $7, $8, $9, 32, 32, 'image/png', '0', '{}')", rows[:300] + other)
            # many rows in one statement: one delta per key for all of them (migration 010)
            await conn.copy_records_to_table(
                "predictions", schema_name="monitoring",
                records=[(*r, 32, 32, "image/png", "0", "{}") for r in rows[300:]],
                columns=["id", "deployment_id", "workspace_id", "origin", "kind", "prediction", "model_version", "tags",
                         "predicted_at", "height", "width", "content_type", "image_sha256", "features"])
            assert await aggregates.fold(pool) > 0  # what is counted so far moves into prediction_hours
            deleted = [r[0] for r in rows[::9]]  # a deleted prediction leaves the hours too (a delta not yet folded)
            await conn.execute("DELETE FROM predictions WHERE id = ANY($1::uuid[])", deleted)
        training = {"labels": {"counts": {"1": 3, "3": 1}, "proportions": {"1": 0.75, "3": 0.25}}}
        some = moments[17]
        windows = [(None, None), (base + timedelta(minutes=30), None), (None, base + timedelta(hours=4, minutes=5)),
                   (base + timedelta(minutes=90), base + timedelta(hours=4, minutes=20)),
                   (base + timedelta(hours=1), base + timedelta(hours=3)),  # on the hours
                   (base + timedelta(hours=2, minutes=10), base + timedelta(hours=2, minutes=50)),  # inside one
                   (base + timedelta(hours=2, minutes=10), base + timedelta(hours=3, minutes=50)),  # two partial
                   (some, some), (some, None), (None, some), (base + timedelta(hours=9), None)]
        models = [(None, None), ("squares", None), ("squares", "v1"), (None, "b" * 64), ("other", None)]
        checked = 0
        for start, end in windows:
            for name, version in models:
                for tags in (None, ["cam-1"], ["cam-1", "night"], ["nobody"]):
                    filters = {"model_name": name, "model_version": version, "start": start, "end": end,
                               "tags": tags}
                    recomputed = await fs.stats_rows(pool, deployment, includes=None, excludes=None, limit=10_000,
                                                     **filters)
                    total, counts = await aggregates.label_counts(pool, deployment, **filters)
                    for ref in (None, training):
                        expected = stats.compute("AGGREGATED_LABEL_DISTRIBUTION", recomputed, ref)
                        assert aggregates.compute("AGGREGATED_LABEL_DISTRIBUTION", total, counts, ref) == expected, \
                            filters
                    checked += bool(recomputed)
                    if tags != ["cam-1", "night"]:
                        continue
                    # PREDICTIONS_DATA from a count and the newest rows, also with prediction ids
                    for ids in ({}, {"excludes": [rows[1][0], rows[2][0]]},
                                {"includes": [r[0] for r in rows[::3]], "excludes": [rows[3][0]]}):
                        every = await fs.stats_rows(pool, deployment, limit=10_000, **({"includes": None,
                                                                                         "excludes": None} | ids),
                                                    **filters)
                        assert await reference.predictions_data(pool, deployment, **({"includes": None,
                                                                                      "excludes": None} | ids),
                                                                **filters) == \
                            (len(every), stats.compute("PREDICTIONS_DATA", every, None)), (filters, ids)
        assert checked > 100  # most combinations keep predictions: the comparison is not of empty answers
        full = await fs.stats_rows(pool, deployment, model_name=None, model_version=None, start=None, end=None,
                                   includes=None, excludes=None, tags=None, limit=10_000)
        assert len(full) == len(rows) - len(deleted)
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM predictions WHERE deployment_id = ANY($1::int[])",
                               [deployment, deployment + 1])
            await aggregates.fold(pool)
            leftover = await conn.fetch("SELECT labels FROM prediction_hours WHERE deployment_id = $1 AND"
                                        " predictions <> 0 UNION ALL SELECT labels FROM prediction_hour_deltas"
                                        " WHERE deployment_id = $1", deployment)
        await pool.close()
    assert leftover == []  # every prediction deleted and folded: nothing counted, no delta left


def test_the_hour_plan_splits_a_window_into_whole_and_partial_hours():
    at = datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert aggregates.hour_plan(None, None) == ((None, None), [])
    assert aggregates.hour_plan(at + timedelta(minutes=5), at + timedelta(hours=3, minutes=1)) == (
        (at + timedelta(hours=1), at + timedelta(hours=3)),
        [(at + timedelta(minutes=5), at + timedelta(hours=1), False),
         (at + timedelta(hours=3), at + timedelta(hours=3, minutes=1), True)])
    assert aggregates.hour_plan(at, at + timedelta(hours=2)) == ((at, at + timedelta(hours=2)),
                                                                 [(at + timedelta(hours=2), at + timedelta(hours=2),
                                                                   True)])
    inside = (at + timedelta(minutes=5), at + timedelta(minutes=55))
    assert aggregates.hour_plan(*inside) == (None, [(*inside, True)])


def _features(rng: random.Random) -> dict[str, float]:
    if rng.random() < 0.5:  # what image_features writes: every stored feature (feature_values, migration 009)
        return {name: rng.gauss(120, 30) if name != "red_mean" else rng.gauss(100, 40) for name in FEATURE_NAMES}
    features = {"brightness_mean": rng.gauss(120, 30), "red_mean": rng.gauss(100, 40), "flat": 7.0,
                "height": float(rng.choice((8, 16, 32)))}
    if rng.random() < 0.2:
        del features["red_mean"]  # a feature a prediction lacks: not in its score, not in that feature's drift
    if rng.random() < 0.1:
        features["extra"] = rng.random()  # one the reference lacks
    return features


def _detection(rng: random.Random, kind: str) -> dict:
    boxes = []
    for _ in range(rng.randrange(4)):
        top, left = rng.uniform(0, 20), rng.randrange(20)
        boxes.append([top, left, top + 1 + rng.randrange(8), left + 1.5 + rng.randrange(8)])
    fmt = {"detection_classes": [rng.randrange(3) for _ in boxes],
           "detection_scores": [round(rng.random(), 2) for _ in boxes], "detection_boxes": boxes}
    if kind == "segmentation":
        fmt["detection_masks"] = [[b[1], b[0], b[3], b[0], b[3], b[2]] for b in boxes]
    return fmt


def test_each_metric_from_its_columns_is_the_recomputation_from_every_row(stack):
    asyncio.run(_compare_columns(stack))


async def _compare_columns(stack) -> None:
    """stats_columns against stats.compute over fs.stats_rows (the path every value took before), byte for byte."""
    from services.monitoring import stats_columns
    from shared.errors import Conflict, InvalidRequest

    deployment = 3_000_000 + random.randrange(1_000_000)
    pool = await create_pool(stack.settings().postgres, "monitoring")
    rng = random.Random(11)
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    rows, reviews = [], []
    for index in range(300):
        kind = rng.choice(("classification", "classification", "detection", "segmentation"))
        prediction = (rng.choice(FORMATS[:5])[1] if kind == "classification" else _detection(rng, kind))
        shadow = (rng.choice(FORMATS[:5])[1] if kind == "classification" else _detection(rng, kind)) \
            if rng.random() < 0.4 else None
        model = rng.choice(MODELS)
        moment = base + timedelta(seconds=rng.uniform(0, 5 * 3600)) if index % 50 else base  # some at one moment
        rows.append((uuid.uuid4(), deployment, 1, rng.choice(("predict", "monitor")), kind, json.dumps(prediction),
                     json.dumps(shadow) if shadow else None, json.dumps(model) if model else None, rng.choice(TAGS),
                     moment, rng.random() / 30 if rng.random() < 0.9 else None,
                     rng.random() / 10 if shadow else None, rng.choice((16, 32)), 32, json.dumps(_features(rng))))
        if rng.random() < 0.5:
            truth = prediction if rng.random() < 0.6 else (
                rng.choice(FORMATS[:4])[1] if kind == "classification" else _detection(rng, kind))
            reviews.append((uuid.uuid4(), rows[-1][0], deployment, 1, "accepted" if truth is prediction
                            else "corrected", json.dumps(truth)))
    try:
        async with pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO predictions (id, deployment_id, workspace_id, origin, kind, prediction, shadow_prediction,"
                " model_version, tags, predicted_at, latency, shadow_latency, height, width, features, content_type,"
                " image_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
                " 'image/png', '0')", rows)
            await conn.executemany(
                "INSERT INTO reviews (id, prediction_id, deployment_id, workspace_id, decision, ground_truth) VALUES"
                " ($1, $2, $3, $4, $5, $6)", reviews)
            # a replaced review counts as its replacement; a deleted prediction takes its review along
            await conn.execute("UPDATE reviews SET decision = 'corrected', ground_truth = $2, revision = 2"
                               " WHERE prediction_id = $1", reviews[0][1], json.dumps(FORMATS[3][1]))
            await conn.execute("DELETE FROM predictions WHERE id = ANY($1::uuid[])", [r[0] for r in rows[::13]])
        reference_features = [_features(rng) for _ in range(60)]
        ready = stats.build_reference(reference_features, [[str(rng.randrange(3))] for _ in reference_features])
        ready["features"]["red_mean"]["mean"] = 400.0  # the predictions drift from it: some score above 3
        ids = [r[0] for r in rows]
        window = (base + timedelta(minutes=40), base + timedelta(hours=3, minutes=10))
        filter_sets = [{}, {"start": window[0], "end": window[1]}, {"model_name": "squares"},
                       {"model_version": "b" * 64, "tags": ["cam-1"]}, {"tags": ["night"], "excludes": ids[1:30]},
                       {"includes": ids[::3], "start": window[0]}, {"tags": ["nobody"]}]
        none = {"model_name": None, "model_version": None, "start": None, "end": None, "includes": None,
                "excludes": None, "tags": None}
        for extra in filter_sets:
            filters = none | extra
            every = await fs.stats_rows(pool, deployment, limit=10_000, **filters)
            for service in sorted(stats_columns.COLUMNAR):
                ref = ready if service in stats.NEEDS_REFERENCE else None  # the others do not read it
                expected = stats.compute(service, every, ref)
                total, result = await stats_columns.compute(pool, service, deployment, ref, max_rows=10_000,
                                                            **filters)
                assert total == len(every), (service, extra)
                assert json.dumps(result) == json.dumps(expected), (service, extra)  # key order and bits too
        for service in stats.NEEDS_REFERENCE:
            with pytest.raises(Conflict):
                await stats_columns.compute(pool, service, deployment, None, max_rows=10_000, **none)
        every = await fs.stats_rows(pool, deployment, limit=10_000, **none)
        drift = stats.compute("AGGREGATED_DRIFTING_PREDICTIONS", every, ready)
        assert 0 < drift["drifting"] < len(every)  # the scores compared are not all on one side of the threshold
        assert stats.compute("REVIEWS_OBJECT_DETECTION_STATS", every, None)["champion_masks"]["images"] > 10
        with pytest.raises(InvalidRequest, match="more than 100 predictions match"):
            await stats_columns.compute(pool, "REVIEWS_LABEL_DISTRIBUTION_STATS", deployment, None, max_rows=100,
                                        **none)
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM predictions WHERE deployment_id = $1", deployment)
        await pool.close()
