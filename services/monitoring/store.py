"""SQL of the monitoring service (asyncpg, `$n` parameters only), in schema `monitoring`."""

from __future__ import annotations

import asyncpg


async def add_tags(pool: asyncpg.Pool, deployment_id: int, tags: list[str]) -> None:
    """Add tags; one already there keeps its place."""
    await pool.executemany(
        "INSERT INTO deployment_tags (deployment_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(deployment_id, tag) for tag in tags])


async def tags(pool: asyncpg.Pool, deployment_id: int) -> list[str]:
    rows = await pool.fetch("SELECT tag FROM deployment_tags WHERE deployment_id = $1 ORDER BY position",
                            deployment_id)
    return [row["tag"] for row in rows]


async def forget(pool: asyncpg.Pool, deployment_id: int) -> None:
    """Drop the deployment's tags and settings."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM deployment_tags WHERE deployment_id = $1", deployment_id)
        await conn.execute("DELETE FROM deployment_settings WHERE deployment_id = $1", deployment_id)


async def settings(pool: asyncpg.Pool, deployment_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM deployment_settings WHERE deployment_id = $1", deployment_id)


async def update_settings(pool: asyncpg.Pool, deployment_id: int, workspace_id: int, name: str | None,
                          target_datalake: str | None, min_threshold: float | None) -> None:
    """Set the given fields (None: keep; target_datalake "": clear)."""
    await pool.execute(
        "INSERT INTO deployment_settings (deployment_id, workspace_id, display_name, target_datalake, min_threshold)"
        " VALUES ($1, $2, $3, NULLIF($4, ''), $5) ON CONFLICT (deployment_id) DO UPDATE SET"
        " display_name = COALESCE($3, deployment_settings.display_name),"
        " target_datalake = NULLIF(COALESCE($4, deployment_settings.target_datalake), ''),"
        " min_threshold = COALESCE($5, deployment_settings.min_threshold), updated_at = now()",
        deployment_id, workspace_id, name, target_datalake, min_threshold)
