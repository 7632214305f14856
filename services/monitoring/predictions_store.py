"""SQL of seed 003's predictions (table `predictions`, schema `monitoring`; asyncpg, `$n` parameters only)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.monitoring import aggregates
from shared import outbox, subjects
from shared.messages.monitoring_predictions import PredictionCreated


@dataclass
class PredictionRow:
    """One prediction as stored (the contract's columns, see migrations/003_predictions.sql)."""

    id: uuid.UUID
    deployment_id: int
    workspace_id: int
    origin: str
    source: str | None
    tags: list[str]
    model_version: dict[str, Any] | None
    shadow_model_version: dict[str, Any] | None
    kind: str
    prediction: dict[str, Any]
    shadow_prediction: dict[str, Any] | None
    latency: float | None
    shadow_latency: float | None
    height: int
    width: int
    content_type: str
    image_sha256: str
    features: dict[str, float]
    predicted_at: datetime
    filename: str | None
    pipeline_version: str | None


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


async def insert_prediction(pool: asyncpg.Pool, row: PredictionRow) -> None:
    """Store the prediction and, in the same transaction, its `events.monitoring.prediction_created` in monitoring's
    outbox (sent from there once committed: the caller wakes the outbox)."""
    async with pool.acquire() as conn, conn.transaction():
        await _insert(conn, row)
        await outbox.add_event(conn, subjects.EVENT_MONITORING_PREDICTION_CREATED, PredictionCreated(
            prediction_id=row.id, deployment_id=row.deployment_id, workspace_id=row.workspace_id, origin=row.origin))
    aggregates.note_written()  # its hour's count waits in prediction_hour_deltas for the next fold


async def _insert(conn: asyncpg.Connection, row: PredictionRow) -> None:
    await conn.execute(
        "INSERT INTO predictions (id, deployment_id, workspace_id, origin, source, tags, model_version,"
        " shadow_model_version, kind, prediction, shadow_prediction, latency, shadow_latency, height, width,"
        " content_type, image_sha256, features, predicted_at, filename, pipeline_version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10::jsonb, $11::jsonb, $12, $13, $14, $15, $16,"
        " $17, $18::jsonb, $19, $20, $21)",
        row.id, row.deployment_id, row.workspace_id, row.origin, row.source, row.tags, _json(row.model_version),
        _json(row.shadow_model_version), row.kind, _json(row.prediction), _json(row.shadow_prediction), row.latency,
        row.shadow_latency, row.height, row.width, row.content_type, row.image_sha256, _json(row.features),
        row.predicted_at, row.filename, row.pipeline_version)


async def count_for(pool: asyncpg.Pool, deployment_id: int) -> int:
    """How many predictions a deployment has."""
    return await pool.fetchval("SELECT count(*) FROM predictions WHERE deployment_id = $1", deployment_id)
