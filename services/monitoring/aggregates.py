"""get_stats' pre-aggregation: the predicted labels of a deployment counted per UTC hour, champion model version and tag
set, kept by triggers in the same transaction as each prediction row (migrations/008_prediction_hours.sql,
010_prediction_hour_deltas.sql), so it never lags: each statement writing or deleting predictions adds its counts to
`prediction_hour_deltas` (insert-only: concurrent writers never wait for each other), HourFold moves them into
`prediction_hours` every minute, and a read sums both in one snapshot. AGGREGATED_LABEL_DISTRIBUTION reads them
instead of every prediction: the hours entirely inside the asked window come from the tables, the partial hours at its
two ends from the predictions themselves (a few rows), so the answer is exactly the recomputed one, for any `since` /
`from_timestamp` / `to_timestamp`, `model_version` and `tags`. `includes` / `excludes` (prediction ids) cannot use
it: get_stats computes from the rows then (docs/monitoring.md, "Pre-aggregation", says why the other values are read
from their columns, stats_columns.py, rather than aggregated)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.monitoring import stats
from services.monitoring.feedback_store import loads
from shared.background import Sweeper

log = logging.getLogger("railyard.monitoring.aggregates")

FOLD_EVERY_SECONDS = 60.0
"""How often HourFold moves the deltas into prediction_hours (a read sums what is not folded yet: slower, as exact)."""

AGGREGATED = {"AGGREGATED_LABEL_DISTRIBUTION"}
"""The ServiceMetrics values answered from prediction_hours."""

_FILTERS = (" AND ($2::text IS NULL OR {t}model_version->>'name' = $2)"
            " AND ($3::text IS NULL OR {t}model_version->>'version' = $3 OR {t}model_version->>'sha' = $3)"
            " AND ($4::text[] IS NULL OR {t}tags @> $4)")


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment else floor + timedelta(hours=1)


def hour_plan(start: datetime | None, end: datetime | None
              ) -> tuple[tuple[datetime | None, datetime | None] | None, list[tuple[datetime | None, datetime, bool]]]:
    """How a window [start, end] (either end open) splits: the whole hours [lo, hi) read from the table (None: none),
    and the raw ranges (from, to, to included?) read from the predictions."""
    lo = _ceil_hour(start) if start is not None else None
    hi = _floor_hour(end) if end is not None else None
    if lo is not None and hi is not None and lo >= hi:
        return None, [(start, end, True)]  # inside one or two partial hours: all raw
    raw: list[tuple[datetime | None, datetime, bool]] = []
    if start is not None and start < lo:  # type: ignore[operator]
        raw.append((start, lo, False))  # type: ignore[arg-type]
    if end is not None:
        raw.append((hi, end, True))
    return (lo, hi), raw


async def label_counts(pool: asyncpg.Pool, deployment_id: int, *, model_name: str | None, model_version: str | None,
                       start: datetime | None, end: datetime | None, tags: list[str] | None) -> tuple[int, Counter]:
    """The number of predictions the filters keep and the labels they predicted (stats.classes_of), as get_stats'
    filters select them (predicted_at within [start, end])."""
    hours, raw = hour_plan(start, end)
    total, counts = 0, Counter()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # one snapshot: a prediction committed meanwhile is in both the table and its hour, or in neither
        if hours is not None:
            # summed in the database: one row per label comes back, not one per hour
            row = await conn.fetchrow(
                "WITH hours AS (SELECT predictions, labels FROM (SELECT deployment_id, hour, model_version, tags,"
                " predictions, labels FROM prediction_hours UNION ALL SELECT deployment_id, hour, model_version, tags,"
                " predictions, labels FROM prediction_hour_deltas) kept WHERE deployment_id = $1"
                + _FILTERS.format(t="") + " AND ($5::timestamptz IS NULL OR hour >= $5) AND ($6::timestamptz IS NULL"
                " OR hour < $6)) SELECT (SELECT coalesce(sum(predictions), 0) FROM hours) AS predictions,"
                " (SELECT coalesce(jsonb_object_agg(key, n), '{}') FROM (SELECT key, sum(value::bigint) AS n FROM"
                " hours, jsonb_each_text(labels) GROUP BY key) summed) AS labels",
                deployment_id, model_name, model_version, tags, hours[0], hours[1])
            total += int(row["predictions"])
            labels = row["labels"]
            counts.update(json.loads(labels) if isinstance(labels, str) else labels)
        for first, last, last_included in raw:
            rows = await conn.fetch(
                "SELECT p.kind, p.prediction FROM predictions p WHERE p.deployment_id = $1" + _FILTERS.format(t="p.")
                + " AND ($5::timestamptz IS NULL OR p.predicted_at >= $5) AND (p.predicted_at < $6 OR"
                " ($7 AND p.predicted_at = $6))", deployment_id, model_name, model_version, tags, first, last,
                last_included)
            for row in rows:
                total += 1
                counts.update(stats.classes_of(row["kind"], loads(row)["prediction"]))
    return total, +counts  # labels counted down to nothing (deleted predictions) are not labels


def compute(service: str, total: int, counts: Counter, reference: dict[str, Any] | None) -> dict[str, Any]:
    """The ServiceMetrics value from the counts (the same arithmetic stats.compute applies to rows)."""
    assert service == "AGGREGATED_LABEL_DISTRIBUTION"
    return stats.label_distribution(total, counts, reference)


async def fold(pool: asyncpg.Pool) -> int:
    """Move every delta into prediction_hours (fold_prediction_hours: one fold at a time); the hour rows written."""
    return int(await pool.fetchval("SELECT fold_prediction_hours()"))


class HourFold(Sweeper):
    """Runs `fold` every FOLD_EVERY_SECONDS when this process wrote predictions since its last fold (`note_written`;
    at start too, for what an earlier run left), so an idle service opens no connection to fold nothing. A failed
    fold leaves the deltas, which reads still count, and is tried again."""

    task_name = "prediction-hour-fold"
    every, log, failure = FOLD_EVERY_SECONDS, log, "folding the prediction hour deltas failed"
    pending = True

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    def quiet_pool(self) -> asyncpg.Pool:
        # its folds come 30-60 s apart and nobody wakes them: each closes the connection it opened (the start's fold,
        # 30-60 s after the start, held one for 30 s more)
        return self.pool

    async def sweep(self) -> int:
        if not HourFold.pending:
            return 0
        HourFold.pending = False
        try:
            return await fold(self.pool)
        except BaseException:
            HourFold.pending = True
            raise


def note_written() -> None:
    """Predictions were written: the next HourFold pass folds their deltas."""
    HourFold.pending = True
