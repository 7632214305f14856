"""SQL of the registry service (asyncpg, `$n` parameters only), in schema `registry`."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from shared import subjects
from shared.messages.base import Event
from shared.messages.registry import ConnectionChanged, ModelUploaded, ModelVersionFinished, RegistryChanged
from shared.outbox import add_event, event_failed, event_sent, unsent_events  # noqa: F401 - the outbox table's

# the events the registry's commits write to the outbox (shared/outbox.py), sent from there in order per model
# version, connection or registry (ORDER_FIELDS)
EVENT_TYPES: dict[str, type[Event]] = {subjects.EVENT_MODEL_UPLOADED: ModelUploaded,
                                       subjects.EVENT_MODEL_VERSION_FINISHED: ModelVersionFinished,
                                       subjects.EVENT_CONNECTION_CHANGED: ConnectionChanged,
                                       subjects.EVENT_REGISTRY_CHANGED: RegistryChanged}
ORDER_FIELDS = ("model_version", "connection_id", "registry_id")

VERSION_COLUMNS = ("v.id AS version_pk, v.model_id, v.model_version, v.owner_id, v.file_name, v.framework, v.runtime,"
                   " v.status, v.error, v.sha, v.source_sha, v.size, v.input_schema, v.output_schema, v.conversion,"
                   " v.model_config, v.created_at, m.name, m.workspace_id")


async def insert_version(
    conn: asyncpg.Connection, *, workspace_id: int, name: str, owner: uuid.UUID, visibility: str,
    model_version: uuid.UUID, file_name: str, framework: str, runtime: str | None, status: str, sha: str | None,
    source_sha: str, size: int, input_schema: bytes | None, output_schema: bytes | None,
    conversion: dict[str, Any],
) -> int:
    """Create the model (or touch the existing one of that name) and add a version; returns the model id."""
    model_id = await conn.fetchval(
        "INSERT INTO models (workspace_id, name, owner_id, visibility) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (workspace_id, name) DO UPDATE SET updated_at = now() RETURNING id",
        workspace_id, name, owner, visibility,
    )
    await conn.execute(
        "INSERT INTO model_versions (model_id, model_version, owner_id, file_name, framework, runtime, status, sha,"
        " source_sha, size, input_schema, output_schema, conversion)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb)",
        model_id, model_version, owner, file_name, framework, runtime, status, sha, source_sha, size,
        input_schema, output_schema, json.dumps(conversion),
    )
    return model_id


async def finish_version(pool: asyncpg.Pool, model_version: uuid.UUID, *, status: str, error: str | None,
                         sha: str | None, runtime: str | None, input_schema: bytes | None,
                         output_schema: bytes | None, event: ModelVersionFinished) -> bool:
    """The version's final status and, in the same transaction, its events.model.version_finished (the outbox), if it
    is still converting; whether it was. A registry started while another still runs (a rolling update) resumes the
    versions the other is converting too: the first conversion to finish decides, the other changes nothing and
    tells nothing (before, both wrote their result and sent an event, each with its own event_id, so monitoring and
    lineage saw the version finish twice)."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(
            "UPDATE model_versions SET status = $2, error = $3, sha = $4, runtime = $5, input_schema = $6,"
            " output_schema = $7 WHERE model_version = $1 AND status = 'converting'",
            model_version, status, error, sha, runtime, input_schema, output_schema,
        )
        if status.endswith(" 0"):
            return False
        await add_event(conn, subjects.EVENT_MODEL_VERSION_FINISHED, event)
    return True


async def converting_versions(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {VERSION_COLUMNS} FROM model_versions v JOIN models m ON m.id = v.model_id"
        " WHERE v.status = 'converting' ORDER BY v.id")


async def models_in(pool: asyncpg.Pool, workspace_id: int, before: int | None = None,
                    limit: int | None = None) -> list[asyncpg.Record]:
    """A workspace's models, newest first: those with an id below `before` (a page's cursor), `limit` at most
    (None: all)."""
    return await pool.fetch(
        "SELECT id, name, owner_id, workspace_id, created_at, updated_at FROM models WHERE workspace_id = $1"
        " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3", workspace_id,
        None if before is None else min(before, 2**63 - 1), limit)


async def model(pool: asyncpg.Pool, model_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT m.id, m.name, m.owner_id, m.workspace_id, m.created_at, m.updated_at,"
        " (SELECT v.model_config FROM model_versions v WHERE v.model_id = m.id ORDER BY v.id DESC LIMIT 1)"
        "   AS model_config"
        " FROM models m WHERE m.id = $1", model_id)


async def versions(pool: asyncpg.Pool, model_id: int, after: int | None = None,
                   limit: int | None = None, *, newest_first: bool = False) -> list[asyncpg.Record]:
    """A model's versions in upload order (the row id: oldest first, or newest first with `newest_first`): those past
    `after` in that order (a page's cursor), `limit` at most (None: all). Either order is a range of
    model_versions_model (model_id, id)."""
    if newest_first:
        return await pool.fetch(
            f"SELECT {VERSION_COLUMNS} FROM model_versions v JOIN models m ON m.id = v.model_id"
            " WHERE v.model_id = $1 AND ($2::bigint IS NULL OR v.id < $2) ORDER BY v.id DESC LIMIT $3", model_id,
            None if after is None else min(after, 2**63 - 1), limit)
    return await pool.fetch(
        f"SELECT {VERSION_COLUMNS} FROM model_versions v JOIN models m ON m.id = v.model_id"
        " WHERE v.model_id = $1 AND ($2::bigint IS NULL OR v.id > $2) ORDER BY v.id LIMIT $3", model_id,
        None if after is None else min(after, 2**63 - 1), limit)


async def versions_exist(pool: asyncpg.Pool, workspace_id: int,
                         refs: list[tuple[str, uuid.UUID | None, str | None]]) -> set[int]:
    """The places in `refs` (name, version, sha) of those the workspace has a version of, in any status: what
    find_version finds for each, in one query (registry.models.exist)."""
    rows = await pool.fetch(
        "SELECT r.i - 1 AS i FROM unnest($2::text[], $3::uuid[], $4::text[]) WITH ORDINALITY AS r(name, version, sha,"
        " i) WHERE EXISTS (SELECT 1 FROM model_versions v JOIN models m ON m.id = v.model_id WHERE m.workspace_id = $1"
        " AND m.name = r.name AND (r.version IS NULL OR v.model_version = r.version) AND (r.sha IS NULL OR"
        " v.sha = r.sha))",
        workspace_id, [r[0] for r in refs], [r[1] for r in refs], [r[2] for r in refs])
    return {row["i"] for row in rows}


async def find_version(pool: asyncpg.Pool, workspace_id: int, name: str | None, version: uuid.UUID | None,
                       sha: str | None, model_id: int | None = None) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {VERSION_COLUMNS} FROM model_versions v JOIN models m ON m.id = v.model_id"
        " WHERE m.workspace_id = $1 AND ($2::text IS NULL OR m.name = $2) AND ($5::bigint IS NULL OR m.id = $5)"
        " AND ($3::uuid IS NULL OR v.model_version = $3) AND ($4::text IS NULL OR v.sha = $4)"
        " ORDER BY v.id DESC LIMIT 1",
        workspace_id, name, version, sha, model_id)
