"""SQL of the workflow_lineage service (asyncpg, `$n` parameters only), in schema `workflow_lineage`."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg


async def record_event(
    pool: asyncpg.Pool, event_id: uuid.UUID, subject: str, occurred_at: datetime, payload: dict[str, Any]
) -> bool:
    """Insert an event once; False when it was already recorded."""
    status = await pool.execute(
        "INSERT INTO event_log (event_id, subject, occurred_at, payload) VALUES ($1, $2, $3, $4::jsonb)"
        " ON CONFLICT (event_id) DO NOTHING",
        event_id,
        subject,
        occurred_at,
        json.dumps(payload),
    )
    return status.endswith(" 1")


async def count_events(pool: asyncpg.Pool, subject: str | None) -> int:
    if subject is None:
        return await pool.fetchval("SELECT count(*) FROM event_log")
    return await pool.fetchval("SELECT count(*) FROM event_log WHERE subject = $1", subject)
