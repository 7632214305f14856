"""SQL of the assay_runner service (asyncpg, `$n` parameters only), in schema `assay_runner`."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg


async def create(pool: asyncpg.Pool, workspace_id: int, pipeline_id: int, pipeline_name: str, name: str,
                 active: bool, status: str, config: dict[str, Any], warning: float | None, alert: float,
                 width: float, interval: float, run_until: datetime | None, next_run: datetime,
                 baseline_summary: dict[str, Any], created_by: uuid.UUID | None) -> int:
    return await pool.fetchval(
        "INSERT INTO assays (workspace_id, pipeline_id, pipeline_name, name, active, status, config, "
        "warning_threshold, alert_threshold, width_seconds, interval_seconds, run_until, next_run, baseline_summary, "
        "created_by) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14::jsonb, $15) "
        "RETURNING id", workspace_id, pipeline_id, pipeline_name, name, active, status, json.dumps(config), warning,
        alert, width, interval, run_until, next_run, json.dumps(baseline_summary), created_by)


async def get(pool: asyncpg.Pool, assay_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM assays WHERE id = $1", assay_id)


async def by_pipeline(pool: asyncpg.Pool, pipeline_id: int) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM assays WHERE pipeline_id = $1 ORDER BY id DESC", pipeline_id)


async def set_active(pool: asyncpg.Pool, assay_id: int, active: bool) -> None:
    await pool.execute("UPDATE assays SET active = $2, updated_at = now() WHERE id = $1", assay_id, active)


async def due(pool: asyncpg.Pool, now: datetime) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM assays WHERE active AND next_run <= $1 ORDER BY next_run", now)


async def record_results(pool: asyncpg.Pool, assay_id: int, results: list[dict[str, Any]], last_run: datetime,
                         next_run: datetime, still_active: bool, status: str) -> None:
    """Store a pass's results and move the schedule on, in one transaction (a result is never stored twice:
    a window is unique per assay)."""
    async with pool.acquire() as conn, conn.transaction():
        for result in results:
            await conn.execute(
                "INSERT INTO results (assay_id, window_start, window_end, score, status, result) "
                "VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (assay_id, window_start) DO NOTHING",
                assay_id, result["_start"], result["_end"], result["score"], result["status"],
                json.dumps({k: v for k, v in result.items() if not k.startswith("_")}))
        await conn.execute(
            "UPDATE assays SET last_run = $2, next_run = $3, active = $4, status = $5, updated_at = now() "
            "WHERE id = $1", assay_id, last_run, next_run, still_active, status)


async def results(pool: asyncpg.Pool, assay_id: int, start: datetime | None, end: datetime | None,
                  limit: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT id, result, analyzed_at FROM results WHERE assay_id = $1 "
        "AND ($2::timestamptz IS NULL OR window_start >= $2) AND ($3::timestamptz IS NULL OR window_start < $3) "
        "ORDER BY window_start DESC LIMIT $4", assay_id, start, end, limit)
