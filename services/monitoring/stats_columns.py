"""get_stats from the columns each ServiceMetrics value needs, instead of every column of every matching prediction.

stats.compute is the definition: it takes whole rows (newest first, each with its review) and was the only path. Most
of its time went to reading and decoding those rows: four jsonb columns each, the reviews joined to all of them, and
Python loops over 100,000 dicts, for values that use a few numbers per prediction. Here each value asks PostgreSQL
for exactly its inputs, in stats.compute's order (predicted_at newest first, then id), and does stats.compute's
arithmetic on them, so every answer is the recomputed one to the last bit (tested on the real database against
stats.compute over the rows, tests/integration/test_monitoring_stats_aggregates.py):

- REVIEWS_LABEL_DISTRIBUTION_STATS and REVIEWS_CLASSIFICATION_STATS count the labels and (true, predicted) top-class
  pairs of the reviewed predictions in SQL, from labels stored with each prediction and review when it is written
  (migrations/011_prediction_labels.sql: prediction_labels, stats.classes_of in SQL from migration 008), and
  REVIEWS_OBJECT_DETECTION_STATS reads only the reviewed detections and segmentations (an inner join) for
  stats.compute itself, and counts the other reviews;
- AGGREGATED_OBJECT_DETECTION_STATS reads only the detection and segmentation predictions' boxes, and hands them to
  stats.compute itself;
- AGGREGATED_PREDICTIONS_DATA reads each number as one array per column (array_agg over one sort: PostgreSQL 16 sorts
  once for aggregates sharing an ORDER BY), the origins and kinds likewise, and counts the hours in SQL; stats._numbers
  gets the same values in the same order (a mean is a sum, whose bits depend on the order); the image features come
  from `feature_values`, floats stored with each prediction (migrations/009_prediction_feature_values.sql), not from
  parsing its JSON at each call (that parse alone took ~0.4 s at 100,000);
- PREDICTIONS_OUTLYING_SCORE and AGGREGATED_DRIFTING_PREDICTIONS read each reference feature as one array and compute
  every prediction's outlying score with numpy, operation for operation as stats.outlying_score does: the same IEEE
  subtractions, divisions, left-to-right additions and square root, and the square through Python's own `** 2`
  (libm's pow, which differs from x * x in about one value in a thousand, so numpy's square would not be exact).

The matching predictions are counted first, in the same snapshot: `predictions` in the answer, and the same
MAX_STATS_ROWS refusal as before."""

from __future__ import annotations

import asyncio
import json
import operator
from collections import Counter
from datetime import datetime
from itertools import repeat
from typing import TYPE_CHECKING, Any

import asyncpg

from services.monitoring import stats
from services.monitoring.feedback_store import STATS_FILTERS, loads
from shared.errors import InvalidRequest
from shared.evaluation import classification_metrics

if TYPE_CHECKING:
    import numpy as np
else:
    from shared.lean_imports import lazy_module

    np = lazy_module("numpy")

COLUMNAR = {"PREDICTIONS_OUTLYING_SCORE", "REVIEWS_CLASSIFICATION_STATS", "REVIEWS_OBJECT_DETECTION_STATS",
            "REVIEWS_LABEL_DISTRIBUTION_STATS", "AGGREGATED_OBJECT_DETECTION_STATS", "AGGREGATED_PREDICTIONS_DATA",
            "AGGREGATED_DRIFTING_PREDICTIONS"}
"""The ServiceMetrics values computed here."""

_ORDER = "p.predicted_at DESC, p.id"
"""stats.compute's row order (feedback_store.stats_rows')."""

STORED_FEATURES = ("height", "width", "brightness_mean", "brightness_std", "red_mean", "red_std", "green_mean",
                   "green_std", "blue_mean", "blue_std")
"""The features `predictions.feature_values` holds, in its order (migrations/009_prediction_feature_values.sql:
shared/images.FEATURE_NAMES when it was written). Any other feature is read from the JSON."""

_SORTED_SCAN = "SET LOCAL enable_indexscan = off; SET LOCAL work_mem = '64MB'"
"""For the queries that read every matching prediction in stats.compute's order: the heap in its physical order and
one sort in memory. The planner otherwise walks predictions_deployment_time backwards, one random heap page per row
when predictions were not written in time order (monitor's timestamps, the bench's rows): 3x slower at 100,000."""


async def compute(pool: asyncpg.Pool, service: str, deployment_id: int, reference: dict[str, Any] | None, *,
                  max_rows: int, **filters: Any) -> tuple[int, dict[str, Any]]:
    """The number of predictions the filters keep and the value of `service` (one of COLUMNAR) over them, equal to
    stats.compute over their rows; InvalidRequest above `max_rows` predictions, Conflict without a needed
    reference."""
    assert service in COLUMNAR
    if service in stats.NEEDS_REFERENCE and reference is None:
        stats.compute(service, [], None)  # raises its Conflict
    args = (deployment_id, filters["model_name"], filters["model_version"], filters["start"], filters["end"],
            filters["includes"], filters["excludes"], filters["tags"])
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total = int(await conn.fetchval(f"SELECT count(*) FROM predictions p WHERE {STATS_FILTERS}", *args))
        if total > max_rows:
            raise InvalidRequest(f"more than {max_rows} predictions match: narrow them with from_timestamp / "
                                 "to_timestamp, since, tags or model_version")
        if service == "REVIEWS_LABEL_DISTRIBUTION_STATS":
            return total, await _review_labels(conn, args)
        if service == "REVIEWS_CLASSIFICATION_STATS":
            return total, await _review_classes(conn, args)
        if service == "REVIEWS_OBJECT_DETECTION_STATS":
            # the reviewed detections and segmentations only: of the others, the answer needs only their number
            rows = await _reviewed_rows(conn, args)
            reviews = await conn.fetchval(f"SELECT count(*) FROM predictions p JOIN reviews r ON r.prediction_id = p.id"
                                          f" WHERE {STATS_FILTERS}", *args)
            result = await asyncio.to_thread(stats.compute, service, rows, None)
            return total, result | {"reviews": reviews}
        if service == "AGGREGATED_OBJECT_DETECTION_STATS":
            rows = await conn.fetch(
                f"SELECT p.kind, p.prediction, p.height, p.width FROM predictions p WHERE {STATS_FILTERS}"
                f" AND p.kind IN ('detection', 'segmentation') ORDER BY {_ORDER}", *args)
            return total, await asyncio.to_thread(stats.compute, service, [loads(r) for r in rows], None)
        if service == "AGGREGATED_PREDICTIONS_DATA":
            return total, await _predictions_data(conn, args, total)
        assert reference is not None
        names = list(reference["features"])
        if service == "AGGREGATED_DRIFTING_PREDICTIONS":
            columns = await _feature_columns(conn, args, names)
            return total, await asyncio.to_thread(_drifting, columns, reference, total)
        # the newest first, before _feature_columns turns the index scan off for the rest of the transaction
        listed = await conn.fetch(f"SELECT p.id, p.predicted_at FROM predictions p WHERE {STATS_FILTERS}"
                                  f" ORDER BY {_ORDER} LIMIT {int(stats.MAX_LISTED)}", *args)
        columns = await _feature_columns(conn, args, names)
        return total, await asyncio.to_thread(_outlying, columns, reference, listed, total)


# --- the reviewed predictions ----------------------------------------------------------------------------


async def _reviewed_rows(conn: asyncpg.Connection, args: tuple) -> list[dict[str, Any]]:
    """The reviewed detections and segmentations the filters keep, as stats.compute takes them."""
    rows = await conn.fetch(
        "SELECT p.kind, p.prediction, p.shadow_prediction, p.height, p.width, r.decision, r.ground_truth"
        f" FROM predictions p JOIN reviews r ON r.prediction_id = p.id WHERE {STATS_FILTERS}"
        f" AND p.kind IN ('detection', 'segmentation') ORDER BY {_ORDER}", *args)
    out = []
    for row in rows:
        item = loads(row)
        assert item is not None
        item["review"] = {"decision": item.pop("decision"), "ground_truth": item.pop("ground_truth")}
        out.append(item)
    return out


_REVIEWED = ("WITH reviewed AS MATERIALIZED (SELECT p.kind, p.labels, p.shadow_labels, r.decision, r.truth_labels"
             f" FROM predictions p JOIN reviews r ON r.prediction_id = p.id WHERE {STATS_FILTERS})")
"""The reviewed predictions the filters keep with their stored labels (migration 011), for the values counted in
SQL."""


def _counts(value: Any) -> dict[str, int]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


async def _review_labels(conn: asyncpg.Connection, args: tuple) -> dict[str, Any]:
    """REVIEWS_LABEL_DISTRIBUTION_STATS from the stored labels (stats.classes_of of the ground truth and of the
    prediction) counted in SQL."""
    row = await conn.fetchrow(
        f"{_REVIEWED} SELECT (SELECT count(*) FROM reviewed) AS reviews,"
        " (SELECT coalesce(jsonb_object_agg(label, n), '{}') FROM (SELECT label, count(*) AS n FROM reviewed,"
        " unnest(truth_labels) AS label GROUP BY label) t) AS truth,"
        " (SELECT coalesce(jsonb_object_agg(label, n), '{}') FROM (SELECT label, count(*) AS n FROM reviewed,"
        " unnest(labels) AS label GROUP BY label) t) AS predicted", *args)
    truth, predicted = Counter(_counts(row["truth"])), Counter(_counts(row["predicted"]))
    return {"reviews": row["reviews"], "ground_truth": stats._distribution(truth),
            "predicted": stats._distribution(predicted),
            "difference": {k: predicted.get(k, 0) - truth.get(k, 0) for k in sorted({*truth, *predicted})}}


async def _review_classes(conn: asyncpg.Connection, args: tuple) -> dict[str, Any]:
    """REVIEWS_CLASSIFICATION_STATS from (true, predicted, shadow) top-class pair counts made in SQL: scikit-learn's
    metrics depend on the pairs, not on their order, so the pairs expanded from the counts give the same numbers."""
    decisions = await conn.fetchrow(
        f"{_REVIEWED} SELECT count(*) AS reviews, count(*) FILTER (WHERE decision = 'accepted') AS accepted,"
        " count(*) FILTER (WHERE decision = 'corrected') AS corrected FROM reviewed", *args)
    pairs = await conn.fetch(
        f"{_REVIEWED}, classes AS (SELECT truth_labels[1] AS truth, labels[1] AS champion, shadow_labels[1] AS shadow"
        " FROM reviewed WHERE kind = 'classification')"
        " SELECT truth, champion, shadow, count(*) AS n FROM classes WHERE truth IS NOT NULL AND champion IS NOT NULL"
        " GROUP BY 1, 2, 3", *args)
    return await asyncio.to_thread(_classification, decisions, pairs)


def _classification(decisions: asyncpg.Record, pairs: list[asyncpg.Record]) -> dict[str, Any]:
    truth, champion, shadow_truth, shadow = [], [], [], []
    for pair in sorted(pairs, key=lambda p: (p["truth"], p["champion"], p["shadow"] or "")):
        truth += [pair["truth"]] * pair["n"]
        champion += [pair["champion"]] * pair["n"]
        if pair["shadow"] is not None:
            shadow_truth += [pair["truth"]] * pair["n"]
            shadow += [pair["shadow"]] * pair["n"]
    return {"reviews": decisions["reviews"], "accepted": decisions["accepted"], "corrected": decisions["corrected"],
            "champion": classification_metrics(truth, champion),
            "shadow": classification_metrics(shadow_truth, shadow)}


# --- AGGREGATED_PREDICTIONS_DATA -------------------------------------------------------------------------


async def _predictions_data(conn: asyncpg.Connection, args: tuple, total: int) -> dict[str, Any]:
    where = f"FROM predictions p WHERE {STATS_FILTERS}"
    # the union of the predictions' feature names: the stored ones when a prediction has exactly those, and the
    # names of any prediction that has others (none that image_features wrote)
    standard = await conn.fetchval(f"SELECT EXISTS (SELECT 1 {where} AND p.standard_features)", *args)
    keys = await conn.fetch(f"SELECT DISTINCT jsonb_object_keys(p.features) AS name {where}"
                            " AND NOT p.standard_features", *args)
    names = sorted({*(STORED_FEATURES if standard else ()), *(k["name"] for k in keys)})  # Python's order
    values, params = _feature_values(names, first_param=9)
    features = "".join(f", array_agg({value} ORDER BY {_ORDER}) AS f{i}" for i, value in enumerate(values))
    hours = await conn.fetch(f"SELECT date_trunc('hour', p.predicted_at, 'UTC') AS hour, count(*) AS n {where}"
                             " GROUP BY 1", *args)
    await conn.execute(_SORTED_SCAN)
    row = await conn.fetchrow(
        f"SELECT array_agg(p.origin ORDER BY {_ORDER}) AS origin, array_agg(p.kind ORDER BY {_ORDER}) AS kind,"
        f" array_agg(p.latency ORDER BY {_ORDER}) AS latency,"
        f" array_agg(p.shadow_latency ORDER BY {_ORDER}) AS shadow_latency,"
        f" array_agg(p.height ORDER BY {_ORDER}) AS height, array_agg(p.width ORDER BY {_ORDER}) AS width,"
        " min(p.predicted_at) AS first, max(p.predicted_at) AS last, count(r.prediction_id) AS reviewed"
        f"{features} FROM predictions p LEFT JOIN reviews r ON r.prediction_id = p.id WHERE {STATS_FILTERS}",
        *args, *params)
    return await asyncio.to_thread(_predictions_data_values, row, names, hours, total)


def _predictions_data_values(row: asyncpg.Record, names: list[str], hours: list[asyncpg.Record],
                             total: int) -> dict[str, Any]:
    """stats.compute's AGGREGATED_PREDICTIONS_DATA from the columns."""
    if not total:
        return stats.compute("AGGREGATED_PREDICTIONS_DATA", [], None)
    per_hour = Counter({h["hour"].isoformat(): h["n"] for h in hours if isinstance(h["hour"], datetime)})
    return {"count": total, "reviewed": row["reviewed"], "origin": dict(Counter(row["origin"])),
            "kind": dict(Counter(row["kind"])), "latency": stats._numbers(row["latency"]),
            "shadow_latency": stats._numbers(row["shadow_latency"]), "height": stats._numbers(row["height"]),
            "width": stats._numbers(row["width"]),
            "features": {name: stats._numbers(row[f"f{i}"]) for i, name in enumerate(names)},
            "first": stats._stamp(row["first"]), "last": stats._stamp(row["last"]),
            "per_hour": dict(sorted(per_hour.items()))}


# --- the outlying score and drift ------------------------------------------------------------------------


async def _feature_columns(conn: asyncpg.Connection, args: tuple, names: list[str]) -> list[list[float | None]]:
    """Each named feature's value in every matching prediction (None where it has none), in stats.compute's order."""
    if not names:
        return []
    values, params = _feature_values(names, first_param=9)
    await conn.execute(_SORTED_SCAN)
    row = await conn.fetchrow(
        "SELECT " + ", ".join(f"array_agg({value} ORDER BY {_ORDER}) AS f{i}" for i, value in enumerate(values))
        + f" FROM predictions p WHERE {STATS_FILTERS}", *args, *params)
    return [row[f"f{i}"] or [] for i in range(len(names))]


def _feature_values(names: list[str], first_param: int) -> tuple[list[str], list[str]]:
    """The SQL of each named feature's float in a prediction (None where it has none), and the query parameters
    they use from $first_param on: the stored column for STORED_FEATURES, the JSON for any other name."""
    values, params = [], []
    for name in names:
        if name in STORED_FEATURES:
            values.append(f"p.feature_values[{STORED_FEATURES.index(name) + 1}]")
        else:
            params.append(name)
            values.append(f"(p.features ->> ${first_param + len(params) - 1})::float8")
    return values, params


def outlying_scores(columns: list[list[float | None]], reference: dict[str, Any], count: int) -> Any:
    """stats.outlying_score of every prediction at once (columns: the reference's features in its order), with the
    same floating-point operations in the same order (module docstring)."""
    summed = np.zeros(count, dtype=np.float64)
    terms = np.zeros(count, dtype=np.int64)
    for values, summary in zip(columns, reference["features"].values(), strict=True):
        column = np.array(values, dtype=np.float64) if values else np.full(count, np.nan)
        present = ~np.isnan(column)
        scale = summary["std"] if summary["std"] > 1e-9 else 1.0
        standardized = (column[present] - summary["mean"]) / scale
        squared = np.fromiter(map(operator.pow, standardized.tolist(), repeat(2)), dtype=np.float64,
                              count=standardized.size)
        summed[present] = summed[present] + squared
        terms[present] += 1
    scores = np.zeros(count, dtype=np.float64)
    some = terms > 0
    scores[some] = np.sqrt(summed[some] / terms[some])
    return scores


def _outlying(columns: list[list[float | None]], reference: dict[str, Any], listed: list[asyncpg.Record],
              count: int) -> dict[str, Any]:
    scores = outlying_scores(columns, reference, count)
    listed_scores = scores[:len(listed)].tolist()
    return {"threshold": stats.OUTLIER_THRESHOLD, "count": count,
            "mean": float(np.mean(scores)) if count else None, "max": float(np.max(scores)) if count else None,
            "outlying": int((scores > stats.OUTLIER_THRESHOLD).sum()),
            "scores": [{"prediction_id": str(r["id"]), "predicted_at": stats._stamp(r["predicted_at"]), "score": s,
                        "outlying": s > stats.OUTLIER_THRESHOLD} for r, s in zip(listed, listed_scores, strict=True)]}


def _drifting(columns: list[list[float | None]], reference: dict[str, Any], total: int) -> dict[str, Any]:
    scores = outlying_scores(columns, reference, total)
    drifting = int((scores > stats.OUTLIER_THRESHOLD).sum())
    features = {}
    for values, (name, summary) in zip(columns, reference["features"].items(), strict=True):
        present = [v for v in values if v is not None]
        if not present:
            continue
        scale = summary["std"] if summary["std"] > 1e-9 else 1.0
        mean = float(np.mean(present))
        features[name] = {"psi": stats.psi(summary["proportions"], stats.bin_proportions(summary["edges"], present)),
                          "mean": mean, "reference_mean": summary["mean"],
                          "mean_shift": (mean - summary["mean"]) / scale}
    worst = max((f["psi"] for f in features.values()), default=0.0)
    return {"predictions": total, "threshold": stats.OUTLIER_THRESHOLD, "drifting": drifting,
            "drifting_ratio": drifting / total if total else 0.0, "features": features, "max_psi": worst,
            "drift": "significant" if worst > 0.25 else "moderate" if worst > 0.1 else "none"}
