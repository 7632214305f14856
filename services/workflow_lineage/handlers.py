"""Business logic of the workflow_lineage service, as plain async functions."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from pydantic import ValidationError

from services.workflow_lineage import store
from shared.messages import Event, EventCount

log = logging.getLogger("railyard.workflow_lineage")


async def record_event(pool: asyncpg.Pool, subject: str, payload: dict[str, Any]) -> None:
    """Keep a domain event once; events without an id or time are logged and skipped."""
    try:
        meta = Event.model_validate({k: payload[k] for k in ("event_id", "occurred_at") if k in payload})
    except ValidationError:
        log.warning("skipping malformed event on %s", subject)
        return
    if "event_id" not in payload:
        log.warning("skipping event without event_id on %s", subject)
        return
    await store.record_event(pool, meta.event_id, subject, meta.occurred_at, payload)


async def count_events(pool: asyncpg.Pool, subject: str | None) -> EventCount:
    return EventCount(count=await store.count_events(pool, subject))
