"""SQL of the deployer service (asyncpg, `$n` parameters only), in schema `deployer`."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import asyncpg

from shared import subjects
from shared.db import xact_lock
from shared.messages.base import Event
from shared.messages.deployer import PipelineDeployed, PipelineServing, PipelineUndeployed, PipelineVersionCreated
from shared.outbox import add_event, event_failed, event_sent, unsent_events  # noqa: F401 - the outbox table's

# the events the deployer's commits write to the outbox (shared/outbox.py, migration 003), sent from there in order
# per pipeline
EVENT_TYPES: dict[str, type[Event]] = {subjects.EVENT_PIPELINE_VERSION_CREATED: PipelineVersionCreated,
                                       subjects.EVENT_PIPELINE_DEPLOYED: PipelineDeployed,
                                       subjects.EVENT_PIPELINE_UNDEPLOYED: PipelineUndeployed,
                                       subjects.EVENT_PIPELINE_SERVING: PipelineServing}

# a pipeline's advisory lock, in a key space of its own: every service shares the database, and auth locks its
# workspaces by id too (a bare pg_advisory_xact_lock(id) made pipeline 7 and workspace 7 wait on each other)
PIPELINE_LOCK = "deployer.pipeline"  # xact_lock(conn, PIPELINE_LOCK, pipeline id)
# a pipeline name of a workspace, before the pipeline exists: a copy's "name is free" check and its create are one
# step under it, and pipelines/create takes it too (its upsert would otherwise slip between them)
PIPELINE_NAME_LOCK = "deployer.pipeline_name"  # xact_lock(conn, PIPELINE_NAME_LOCK, workspace id, name)


async def lock_pipeline_name(conn: asyncpg.Connection, workspace_id: int, name: str) -> None:
    """Hold the workspace's pipeline name until the transaction ends."""
    await xact_lock(conn, PIPELINE_NAME_LOCK, int(workspace_id), name)


async def pipeline_by_name(pool: asyncpg.Pool | asyncpg.Connection, workspace_id: int,
                           name: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM pipelines WHERE workspace_id = $1 AND name = $2", workspace_id, name)


async def pipeline(pool: asyncpg.Pool, pipeline_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM pipelines WHERE id = $1", pipeline_id)


async def latest_version(conn: asyncpg.Pool | asyncpg.Connection, pipeline_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM pipeline_versions WHERE pipeline_id = $1 ORDER BY id DESC LIMIT 1", pipeline_id)


async def version(pool: asyncpg.Pool, version_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM pipeline_versions WHERE id = $1", version_id)


async def version_by_uuid(pool: asyncpg.Pool, pipeline_id: int, version: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM pipeline_versions WHERE pipeline_id = $1 AND version = $2",
                               pipeline_id, version)


async def create_pipeline_version(conn: asyncpg.Connection, workspace_id: int, name: str, owner: uuid.UUID,
                                  definition: dict[str, Any]) -> tuple[int, int, uuid.UUID, bool]:
    """Create the pipeline if needed and a version if the definition differs from the latest;
    (pipeline id, version id, version uuid, whether a version was created)."""
    pipeline_id = await conn.fetchval(
        "INSERT INTO pipelines (workspace_id, name, owner_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (workspace_id, name) DO UPDATE SET updated_at = now() RETURNING id",
        workspace_id, name, owner)
    await xact_lock(conn, PIPELINE_LOCK, int(pipeline_id))
    latest = await latest_version(conn, pipeline_id)
    if latest is not None and json.loads(latest["definition"]) == definition:
        return pipeline_id, latest["id"], latest["version"], False
    version_uuid = uuid.uuid4()
    version_id = await conn.fetchval(
        "INSERT INTO pipeline_versions (pipeline_id, version, definition) VALUES ($1, $2, $3::jsonb) RETURNING id",
        pipeline_id, version_uuid, json.dumps(definition))
    return pipeline_id, version_id, version_uuid, True


async def pipelines_in(pool: asyncpg.Pool, workspace_id: int, after: int | None = None,
                       limit: int | None = None) -> list[asyncpg.Record]:
    """A workspace's pipelines, oldest first: those with an id above `after` (a page's cursor), `limit` at most
    (None: all). A cursor past the largest bigint reads as that (no id is above it)."""
    return await pool.fetch("SELECT * FROM pipelines WHERE workspace_id = $1 AND ($2::bigint IS NULL OR id > $2)"
                            " ORDER BY id LIMIT $3", workspace_id, None if after is None else min(after, 2**63 - 1),
                            limit)


async def newest_versions(pool: asyncpg.Pool, pipeline_id: int, before: int | None, without: int | None,
                          budget: int) -> tuple[list[asyncpg.Record], int]:
    """A pipeline's newest versions (those with an id below `before`, when given; never the version `without`) whose
    definitions' JSON, with `VERSION_OVERHEAD` bytes each, stays within `budget` bytes (at least one), oldest first;
    and how many such versions there are in all. Sized in SQL: definitions left out are not read."""
    rows = await pool.fetch(
        "SELECT id, version, definition, created_at, total FROM ("
        " SELECT id, version, created_at, count(*) OVER () AS total, row_number() OVER (ORDER BY id DESC) AS n,"
        "  sum(octet_length(definition::text) + $4) OVER (ORDER BY id DESC) AS upto, definition"
        " FROM pipeline_versions WHERE pipeline_id = $1 AND ($2::bigint IS NULL OR id < $2)"
        " AND ($3::bigint IS NULL OR id <> $3)) sized WHERE n = 1 OR upto <= $5 ORDER BY id",
        pipeline_id, None if before is None else min(before, 2**63 - 1), without, VERSION_OVERHEAD, budget)
    return list(rows), rows[0]["total"] if rows else 0


async def active_deployments_of(pool: asyncpg.Pool | asyncpg.Connection,
                                pipeline_ids: list[int]) -> dict[int, asyncpg.Record]:
    """The active deployment of each of these pipelines that has one, by pipeline id (active_deployment, for a
    pipelines/list page in one query)."""
    rows = await pool.fetch("SELECT * FROM deployments WHERE pipeline_id = ANY($1::bigint[]) AND active",
                            pipeline_ids)
    return {row["pipeline_id"]: row for row in rows}


async def listed_versions(pool: asyncpg.Pool | asyncpg.Connection, pipeline_ids: list[int], budget: int,
                          page_bytes: int | None) -> dict[int, tuple[list[asyncpg.Record], int, asyncpg.Record | None]]:
    """What newest_versions(pipeline, None, its deployed version, budget) and version_row(its deployed version) answer,
    for the pipelines of a pipelines/list page in one query: by pipeline id, (its newest versions but the deployed
    one, how many such versions in all, its deployed version or None). Only for the pipelines, in the given order,
    whose predecessors' versions so chosen (the deployed ones included) add up to at most `page_bytes` (None: all):
    a page stops at about that many bytes (paging.page), and its pipelines could hold up to `budget` each; those
    left out the caller reads one by one if the page reaches them."""
    rows = await pool.fetch(
        "WITH page AS ("
        " SELECT p.id AS pipeline_id, p.ord, d.pipeline_version_id AS deployed,"
        "  coalesce(octet_length(dv.definition::text) + $2, 0) AS deployed_bytes"
        " FROM unnest($1::bigint[]) WITH ORDINALITY AS p(id, ord)"
        " LEFT JOIN deployments d ON d.pipeline_id = p.id AND d.active"
        " LEFT JOIN pipeline_versions dv ON dv.id = d.pipeline_version_id),"
        " sized AS ("
        " SELECT v.pipeline_id, v.id, count(*) OVER (PARTITION BY v.pipeline_id) AS total,"
        "  row_number() OVER (PARTITION BY v.pipeline_id ORDER BY v.id DESC) AS n,"
        "  sum(octet_length(v.definition::text) + $2) OVER (PARTITION BY v.pipeline_id ORDER BY v.id DESC) AS upto,"
        "  octet_length(v.definition::text) + $2 AS bytes"
        " FROM page JOIN pipeline_versions v ON v.pipeline_id = page.pipeline_id"
        " AND v.id IS DISTINCT FROM page.deployed),"
        " chosen AS (SELECT * FROM sized WHERE n = 1 OR upto <= $3),"
        " reached AS (SELECT pipeline_id, deployed FROM ("
        "  SELECT page.pipeline_id, page.deployed, sum(page.deployed_bytes + coalesce(c.bytes, 0))"
        "   OVER (ORDER BY page.ord) - page.deployed_bytes - coalesce(c.bytes, 0) AS before"
        "  FROM page LEFT JOIN (SELECT pipeline_id, sum(bytes) AS bytes FROM chosen GROUP BY pipeline_id) c"
        "  USING (pipeline_id)) r WHERE $4::bigint IS NULL OR before <= $4)"
        " SELECT r.pipeline_id, v.id, v.version, v.definition, v.created_at, c.total, false AS deployed"
        " FROM reached r JOIN chosen c ON c.pipeline_id = r.pipeline_id JOIN pipeline_versions v ON v.id = c.id"
        " UNION ALL"  # one row of each pipeline reached: its deployed version, or none (id NULL)
        " SELECT r.pipeline_id, v.id, v.version, v.definition, v.created_at, NULL, true"
        " FROM reached r LEFT JOIN pipeline_versions v ON v.id = r.deployed"
        " ORDER BY 1, 2", pipeline_ids, VERSION_OVERHEAD, budget, page_bytes)
    found: dict[int, tuple[list[asyncpg.Record], int, asyncpg.Record | None]] = {}
    for row in rows:
        listed, total, deployed = found.get(row["pipeline_id"], ([], 0, None))
        if row["deployed"]:
            deployed = row if row["id"] is not None else None
        else:
            listed.append(row)
            total = row["total"]
        found[row["pipeline_id"]] = (listed, total, deployed)
    return found


async def version_row(pool: asyncpg.Pool, version_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM pipeline_versions WHERE id = $1", version_id)


VERSION_OVERHEAD = 128
"""JSON bytes of a listed version besides its definition (id, version UUID, created_at, keys), at most."""


async def active_deployment(pool: asyncpg.Pool | asyncpg.Connection, pipeline_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM deployments WHERE pipeline_id = $1 AND active", pipeline_id)


async def deployment(pool: asyncpg.Pool, deployment_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT d.*, p.name AS pipeline_name, p.workspace_id, v.version AS pipeline_version"
        " FROM deployments d JOIN pipelines p ON p.id = d.pipeline_id"
        " JOIN pipeline_versions v ON v.id = d.pipeline_version_id WHERE d.id = $1", deployment_id)


async def deployment_names(pool: asyncpg.Pool, ids: list[int]) -> dict[int, tuple[str, bool]]:
    """(deploy_id, active) of each of these deployments that has a row, by id."""
    rows = await pool.fetch("SELECT id, deploy_id, active FROM deployments WHERE id = ANY($1::bigint[])", ids)
    return {row["id"]: (row["deploy_id"], row["active"]) for row in rows}


async def deployment_active(conn: asyncpg.Connection, deployment_id: int) -> bool | None:
    """Whether the deployment is active (None: no such row), read once no transaction that changes the row runs (FOR
    SHARE waits for one: a deactivation whose client is gone may still be committing), in the caller's transaction."""
    return await conn.fetchval("SELECT active FROM deployments WHERE id = $1 FOR SHARE", deployment_id)


async def active_deployments(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT d.*, p.name AS pipeline_name, p.workspace_id, v.version AS pipeline_version"
        " FROM deployments d JOIN pipelines p ON p.id = d.pipeline_id"
        " JOIN pipeline_versions v ON v.id = d.pipeline_version_id WHERE d.active ORDER BY d.id")


async def pipeline_deployment(conn: asyncpg.Connection, pipeline_id: int) -> dict[str, Any] | None:
    """The pipeline's deployment (the active one, else its newest; None before its first deploy), the pipeline's
    advisory lock held until the transaction ends."""
    await xact_lock(conn, PIPELINE_LOCK, int(pipeline_id))
    row = await conn.fetchrow(
        "SELECT id, pipeline_version_id, deploy_id, engine_config, spec, active, deployed_pending, served, activation"
        " FROM deployments"
        " WHERE pipeline_id = $1 ORDER BY active DESC, id DESC LIMIT 1", pipeline_id)
    return None if row is None else dict(row)


async def activate_deployment(conn: asyncpg.Connection, existing: dict[str, Any] | None, pipeline_id: int,
                              version_id: int, deploy_id: str, engine_config: dict[str, Any],
                              spec: dict[str, Any], *, activation: uuid.UUID | None = None) -> int:
    """Deploy (or redeploy) the pipeline; its deployment id. `existing` is the pipeline's deployment as
    pipeline_deployment read it in this transaction (its lock held), None before the first deploy: a redeploy
    keeps that row's id, so its inference URL stays the same. Its events.pipeline.deployed is owed from here
    (`deployed_pending`) until `record_deployed` writes it, and nothing of it served yet (`served`). A deployed event
    the row still owed for its previous activation is the caller's to write first (handlers.owed_before).
    `activation` (a new UUID when not given) names this activation in the row (migration 009): what a commit that
    raised did is read from it (handlers._recorded)."""
    activation = activation or uuid.uuid4()
    if existing is not None:
        await conn.execute(
            "UPDATE deployments SET pipeline_version_id = $2, deploy_id = $3, engine_config = $4::jsonb,"
            " spec = $5::jsonb, active = true, deployed_pending = true, served = false, activation = $6,"
            " updated_at = now() WHERE id = $1",
            existing["id"], version_id, deploy_id, json.dumps(engine_config), json.dumps(spec), activation)
        await conn.execute("UPDATE deployments SET active = false WHERE pipeline_id = $1 AND id <> $2",
                           pipeline_id, existing["id"])
        return existing["id"]
    return await conn.fetchval(
        "INSERT INTO deployments (pipeline_id, pipeline_version_id, deploy_id, engine_config, spec, deployed_pending,"
        " activation) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, true, $6) RETURNING id",
        pipeline_id, version_id, deploy_id, json.dumps(engine_config), json.dumps(spec), activation)


async def record_deployed(conn: asyncpg.Connection, event: PipelineDeployed, *, if_pending: bool = False) -> bool:
    """The deployment's replicas serve: its events.pipeline.deployed to the outbox and the row no longer owing it
    (`deployed_pending`, migration 004), in the caller's transaction; whether the event was written. `if_pending`
    (the restore after a restart): only when the row is active and still owes it, i.e. the deployer that started it
    died before this commit."""
    status = await conn.execute(
        "UPDATE deployments SET deployed_pending = false, announced = true, served = true WHERE id = $1"
        + (" AND deployed_pending AND active" if if_pending else ""), event.deployment_id)
    if if_pending and not status.endswith(" 1"):
        return False
    await add_event(conn, subjects.EVENT_PIPELINE_DEPLOYED, event)
    return True


async def record_serving(conn: asyncpg.Connection, events: list[PipelineServing],
                         again_after: float) -> list[PipelineServing]:
    """The deployments this deployer serves, named at its start (events.pipeline.serving), to the outbox in the
    caller's transaction: those not named in the last `again_after` seconds (`named_at`, migration 008, set here; two
    deployers starting at once name each once). The events written."""
    due = {row["id"] for row in await conn.fetch(
        "UPDATE deployments SET named_at = now() WHERE id = ANY($1::bigint[])"
        " AND (named_at IS NULL OR named_at <= now() - make_interval(secs => $2)) RETURNING id",
        [event.deployment_id for event in events], float(again_after))}
    written = [event for event in events if event.deployment_id in due]
    for event in written:
        await add_event(conn, subjects.EVENT_PIPELINE_SERVING, event)
    return written


async def mark_served(conn: asyncpg.Connection, deployment_id: int) -> None:
    """The deployment's replicas serve but its events.pipeline.deployed could not be written (the write failed): the
    row, still owing the event, says they served (`served`, migration 007), in a commit of its own, so the event is
    still written should the deployer restart and the restore fail before it is (store.deactivate, handlers
    owed_before). Without it, nothing told that the deployment ever served, and no deployed event was written."""
    await conn.execute("UPDATE deployments SET served = true WHERE id = $1 AND active AND deployed_pending",
                       deployment_id)


async def deactivate(pool: asyncpg.Pool, deployment_id: int | None, event: PipelineUndeployed | None = None,
                     owed: PipelineDeployed | None = None, *, serving: bool = False,
                     activation: uuid.UUID | None = None, pipeline_id: int | None = None) -> bool:
    """Make the deployment inactive; whether it was active. With `event`, its events.pipeline.undeployed goes to the
    outbox in the same transaction, when it was active and its readers were told it was deployed (`announced`,
    migration 006): an undeploy of an inactive one changes nothing, and one never told of (its deployer died while a
    first deploy's replicas loaded, and their restore failed) is not drawn as a bare card undeployed. `owed`: the
    deployment's events.pipeline.deployed; a row still owing it (`deployed_pending`) whose replicas served gets it
    written first, in that transaction, then the undeployed: `serving` (the caller sees them serve now:
    handlers.undeploy) or the row says they did (`served`, migration 007: the event's write failed, and the deployer
    restarted since, its restore failing). Otherwise nothing tells that it ever served (the deployer that started it
    died while its replicas loaded, or before the event's commit, and the restore after it failed), so no deployed
    event: before 334ec66 the owed one was written whenever the row owed it, for a deployment that never served. The
    row owes nothing afterwards either way. With `activation`, only while the row still holds that activation
    (migration 009: a failed first deploy's late clean-up leaves a later deploy of the row as it is); the deployment
    may then be None (the row that holds it: a first deploy whose insert's answer was lost, its id unknown). With
    `pipeline_id`, under the pipeline's advisory lock: a deploy's transaction the server still runs (its client gone)
    ends first, so its outcome is what is read (handlers.Deactivations)."""
    if deployment_id is None and activation is None:
        raise ValueError("deactivate: a deployment id or an activation")
    async with pool.acquire() as conn, conn.transaction():
        if pipeline_id is not None:
            await xact_lock(conn, PIPELINE_LOCK, int(pipeline_id))
        was = await conn.fetchrow(
            "UPDATE deployments d SET active = false, deployed_pending = false, announced = false, served = false,"
            " updated_at = now() FROM (SELECT id, deployed_pending, announced, served FROM deployments"
            " WHERE ($1::bigint IS NULL OR id = $1) AND active AND ($2::uuid IS NULL OR activation = $2) FOR UPDATE)"
            " was WHERE d.id = was.id RETURNING was.deployed_pending, was.announced, was.served", deployment_id,
            activation)
        changed = was is not None
        if changed and event is not None:
            told = was["announced"]
            if was["deployed_pending"] and owed is not None and (serving or was["served"]):
                await add_event(conn, subjects.EVENT_PIPELINE_DEPLOYED, told_before(owed, event))
                told = True
            if told:
                await add_event(conn, subjects.EVENT_PIPELINE_UNDEPLOYED, event)
    return changed


async def activation_of(pool: asyncpg.Pool, activation: uuid.UUID) -> asyncpg.Record | None:
    """The deployment row holding `activation` (migration 009): its id and whether it is active; None when none does
    (a deploy's activation never committed, or replaced by a later deploy's)."""
    return await pool.fetchrow("SELECT id, active FROM deployments WHERE activation = $1", activation)


def told_before(owed: PipelineDeployed, event: Event) -> PipelineDeployed:
    """The owed deployed event dated before `event` (lineage keeps the active flag of the later of the two)."""
    if owed.occurred_at < event.occurred_at:
        return owed
    return owed.model_copy(update={"occurred_at": event.occurred_at - timedelta(microseconds=1)})
