"""SQL of the monitoring service's feedback slice (reviews, feedback loop, training reference, stats queries), asyncpg
with `$n` parameters only; jsonb travels as JSON text."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

PREDICTION_COLUMNS = ("p.id, p.deployment_id, p.workspace_id, p.origin, p.source, p.tags, p.model_version, p.kind,"
                      " p.prediction, p.shadow_prediction, p.latency, p.shadow_latency, p.height, p.width,"
                      " p.content_type, p.image_sha256, p.features, p.predicted_at")
JSON_COLUMNS = ("model_version", "prediction", "shadow_prediction", "features", "ground_truth", "shadow_model_version")


def loads(row: asyncpg.Record | None) -> dict[str, Any] | None:
    """A row as a dict with its jsonb columns decoded."""
    if row is None:
        return None
    out = dict(row)
    for key in JSON_COLUMNS:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


# --- reviews ---------------------------------------------------------------------------------------------


async def prediction(pool: asyncpg.Pool, prediction_id: uuid.UUID) -> dict[str, Any] | None:
    return loads(await pool.fetchrow(f"SELECT {PREDICTION_COLUMNS} FROM predictions p WHERE p.id = $1",
                                     prediction_id))


async def save_review(conn: Any, prediction_row: dict[str, Any], decision: str, ground_truth: dict[str, Any],
                      reviewer: str | None) -> dict[str, Any]:
    """Insert the prediction's review, or replace the one it has (new id, revision + 1)."""
    row = await conn.fetchrow(
        "INSERT INTO reviews (id, prediction_id, deployment_id, workspace_id, decision, ground_truth, reviewer)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) ON CONFLICT (prediction_id) DO UPDATE SET id = EXCLUDED.id,"
        " decision = EXCLUDED.decision, ground_truth = EXCLUDED.ground_truth, reviewer = EXCLUDED.reviewer,"
        " revision = reviews.revision + 1, created_at = now() RETURNING *",
        uuid.uuid4(), prediction_row["id"], prediction_row["deployment_id"], prediction_row["workspace_id"], decision,
        json.dumps(ground_truth), reviewer)
    return loads(row)  # type: ignore[return-value]


async def predictions_to_review(pool: asyncpg.Pool, deployment_id: int, limit: int, offset: int,
                                after: tuple[datetime, uuid.UUID] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` predictions without a review, oldest first (predicted_at, then id): those after `after` (keyset:
    a review made between two pages moves no other prediction), else past the first `offset` (the seed's)."""
    rows = await pool.fetch(
        f"SELECT {PREDICTION_COLUMNS} FROM predictions p WHERE p.deployment_id = $1 AND NOT EXISTS"
        " (SELECT 1 FROM reviews r WHERE r.prediction_id = p.id) AND ($4::timestamptz IS NULL OR"
        " (p.predicted_at >= $4 AND (p.predicted_at, p.id) > ($4, $5::uuid)))"
        " ORDER BY p.predicted_at, p.id LIMIT $2 OFFSET $3",
        deployment_id, limit, offset, *(after or (None, None)))
    pending = await pool.fetchval(
        "SELECT count(*) FROM predictions p WHERE p.deployment_id = $1 AND NOT EXISTS"
        " (SELECT 1 FROM reviews r WHERE r.prediction_id = p.id)", deployment_id)
    return [loads(r) for r in rows], int(pending)  # type: ignore[misc]


async def review_count(pool: asyncpg.Pool, deployment_id: int) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM reviews WHERE deployment_id = $1", deployment_id))


# --- the feedback loop -----------------------------------------------------------------------------------


REVIEWS_NOT_IN_A_VERSION = (
    "reviews r LEFT JOIN feedback_exports e ON e.deployment_id = d.deployment_id AND e.dataset_id = d.dataset_id"
    " AND e.prediction_id = r.prediction_id WHERE r.deployment_id = d.deployment_id"
    " AND (e.prediction_id IS NULL OR e.revision < r.revision OR e.version_id IS NULL)")
"""FROM/WHERE of the reviews of `d`'s deployment (`d`: a feedback_loop_datasets row) that no project version holds
yet in `d`'s dataset in their current revision: not written, written in an older revision, or written with the
version still to make. One definition, so the exporter's work list, the pending count and a training's wait for the
loop (continuous._feedback_pending) agree: a training that waited for "written" only read the version before."""


async def feedback_loop(conn: Any, deployment_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM feedback_loops WHERE deployment_id = $1", deployment_id)


async def setup_feedback_loop(conn: Any, deployment_id: int, workspace_id: int, owner_id: uuid.UUID) -> None:
    """Create the loop, or re-activate it (its owner becomes the caller)."""
    await conn.execute(
        "INSERT INTO feedback_loops (deployment_id, workspace_id, owner_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (deployment_id) DO UPDATE SET active = true, owner_id = $3, updated_at = now(),"
        " suspended_reason = NULL", deployment_id, workspace_id, owner_id)


async def toggle_feedback_loop(conn: Any, deployment_id: int, active: bool) -> None:
    """(De)activate the loop; turned on, a suspension (suspended_reason) is lifted."""
    await conn.execute("UPDATE feedback_loops SET active = $2, updated_at = now(), suspended_reason = CASE WHEN $2"
                       " THEN NULL ELSE suspended_reason END WHERE deployment_id = $1", deployment_id, active)


async def suspend_feedback_loop(pool: asyncpg.Pool, deployment_id: int, owner_id: Any, reason: str) -> bool:
    """The loop's owner's token was refused: the loop is turned off with the reason (only while that user still owns
    it and it is on: set up again by someone else meanwhile, it is theirs); whether this call did it."""
    return bool(await pool.fetchval(
        "UPDATE feedback_loops SET active = false, suspended_reason = $3 WHERE deployment_id = $1 AND owner_id = $2"
        " AND active RETURNING true", deployment_id, owner_id, reason))


async def delete_feedback_loop(conn: Any, deployment_id: int) -> None:
    await conn.execute("DELETE FROM feedback_loops WHERE deployment_id = $1", deployment_id)


async def attach_dataset(conn: Any, deployment_id: int, dataset: dict[str, Any], version_id: int | None) -> bool:
    """Attach a dataset (False when it already was)."""
    status = await conn.execute(
        "INSERT INTO feedback_loop_datasets (deployment_id, dataset_id, project_id, dataset_name,"
        " attached_version_id) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        deployment_id, dataset["id"], dataset["project_id"], dataset["name"], version_id)
    return status.endswith(" 1")


async def detach_dataset(conn: Any, deployment_id: int, dataset_id: int) -> bool:
    status = await conn.execute("DELETE FROM feedback_loop_datasets WHERE deployment_id = $1 AND dataset_id = $2",
                                deployment_id, dataset_id)
    return status.endswith(" 1")


async def loop_datasets(conn: Any, deployment_id: int) -> list[dict[str, Any]]:
    """The attached datasets with how many reviews each has received and how many wait."""
    rows = await conn.fetch(
        "SELECT d.*, (SELECT count(*) FROM feedback_exports e WHERE e.deployment_id = d.deployment_id"
        "   AND e.dataset_id = d.dataset_id AND e.version_id IS NOT NULL) AS exported_reviews,"
        f" (SELECT count(*) FROM {REVIEWS_NOT_IN_A_VERSION}) AS pending_reviews"
        " FROM feedback_loop_datasets d WHERE d.deployment_id = $1 ORDER BY d.attached_at, d.dataset_id",
        deployment_id)
    return [dict(r) for r in rows]


async def active_loop_datasets(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """(loop, dataset) pairs of active loops that have reviews to write or a version to make."""
    rows = await pool.fetch(
        "SELECT d.deployment_id, d.dataset_id, d.project_id, l.workspace_id, l.owner_id"
        " FROM feedback_loop_datasets d JOIN feedback_loops l USING (deployment_id) WHERE l.active AND EXISTS"
        f" (SELECT 1 FROM {REVIEWS_NOT_IN_A_VERSION})")
    return [dict(r) for r in rows]


async def pending_reviews(conn: Any, deployment_id: int, dataset_id: int, limit: int) -> list[dict[str, Any]]:
    """Reviews not yet written to the dataset in their current revision, oldest first, with their predictions."""
    rows = await conn.fetch(
        "SELECT r.prediction_id, r.revision, r.decision, r.ground_truth, p.kind, p.image_sha256, p.content_type,"
        " p.height, p.width, p.prediction FROM reviews r JOIN predictions p ON p.id = r.prediction_id"
        " LEFT JOIN feedback_exports e ON e.deployment_id = $1 AND e.dataset_id = $2"
        "   AND e.prediction_id = r.prediction_id"
        " WHERE r.deployment_id = $1 AND (e.prediction_id IS NULL OR e.revision < r.revision)"
        " ORDER BY r.created_at, r.prediction_id LIMIT $3", deployment_id, dataset_id, limit)
    return [loads(r) for r in rows]  # type: ignore[misc]


async def mark_written(conn: Any, deployment_id: int, dataset_id: int, prediction_id: uuid.UUID,
                       revision: int) -> None:
    """The review's file is in the dataset; its version is still to make."""
    await conn.execute(
        "INSERT INTO feedback_exports (deployment_id, dataset_id, prediction_id, revision) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (deployment_id, dataset_id, prediction_id) DO UPDATE SET revision = $4, version_id = NULL,"
        " exported_at = now()", deployment_id, dataset_id, prediction_id, revision)


async def unversioned(conn: Any, deployment_id: int, dataset_id: int) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM feedback_exports WHERE deployment_id = $1 AND dataset_id = $2 AND version_id IS NULL",
        deployment_id, dataset_id))


async def mark_versioned(conn: Any, deployment_id: int, dataset_id: int, version_id: int, number: int) -> None:
    await conn.execute(
        "UPDATE feedback_exports SET version_id = $3 WHERE deployment_id = $1 AND dataset_id = $2"
        " AND version_id IS NULL", deployment_id, dataset_id, version_id)
    await conn.execute(
        "UPDATE feedback_loop_datasets SET last_version_id = $3, last_version_number = $4, last_error = NULL"
        " WHERE deployment_id = $1 AND dataset_id = $2", deployment_id, dataset_id, version_id, number)


async def record_error(pool: asyncpg.Pool, deployment_id: int, dataset_id: int, error: str | None) -> None:
    await pool.execute("UPDATE feedback_loop_datasets SET last_error = $3 WHERE deployment_id = $1 AND"
                       " dataset_id = $2", deployment_id, dataset_id, error)


# --- the training reference ------------------------------------------------------------------------------


async def set_reference(pool: asyncpg.Pool, deployment_id: int, workspace_id: int, dataset_id: int,
                        version_id: int | None, files: list[dict[str, Any]]) -> int:
    """Start (or restart) a reference computation; answers its attempt number."""
    return int(await pool.fetchval(
        "INSERT INTO training_references (deployment_id, workspace_id, dataset_id, version_id, status, files,"
        " images_total) VALUES ($1, $2, $3, $4, 'computing', $5::jsonb, $6) ON CONFLICT (deployment_id) DO UPDATE"
        " SET dataset_id = $3, version_id = $4, status = 'computing', files = $5::jsonb, images_total = $6,"
        " images_done = 0, error = NULL, reference = NULL, attempt = training_references.attempt + 1,"
        " requested_at = now(), computed_at = NULL RETURNING attempt",
        deployment_id, workspace_id, dataset_id, version_id, json.dumps(files), len(files)))


REFERENCE_STATUS_COLUMNS = ("deployment_id, workspace_id, dataset_id, version_id, status, images_done, images_total,"
                            " error, attempt, requested_at, computed_at")
"""training_references' small columns: everything but the file list and the computed reference."""


async def reference_row(pool: asyncpg.Pool, deployment_id: int, *, reference: bool = True,
                        files: bool = False) -> dict[str, Any] | None:
    """The deployment's training reference (None without one): its status columns, the computed `reference` unless
    reference=False, and the dataset's `files` only with files=True (the background computation's: up to
    MAX_REFERENCE_IMAGES names with their labels, megabytes with large labels, which a status call does not read)."""
    columns = REFERENCE_STATUS_COLUMNS + (", reference" if reference else "") + (", files" if files else "")
    row = await pool.fetchrow(f"SELECT {columns} FROM training_references WHERE deployment_id = $1", deployment_id)
    if row is None:
        return None
    out = dict(row)
    for key in ("files", "reference"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


async def computing_references(pool: asyncpg.Pool) -> list[tuple[int, int]]:
    rows = await pool.fetch("SELECT deployment_id, attempt FROM training_references WHERE status = 'computing'")
    return [(r["deployment_id"], r["attempt"]) for r in rows]


async def reference_progress(pool: asyncpg.Pool, deployment_id: int, attempt: int, done: int) -> None:
    await pool.execute("UPDATE training_references SET images_done = $3 WHERE deployment_id = $1 AND attempt = $2"
                       " AND status = 'computing'", deployment_id, attempt, done)


async def reference_finished(pool: asyncpg.Pool, deployment_id: int, attempt: int, reference: dict[str, Any] | None,
                             error: str | None) -> None:
    """Keep the result of this attempt (a newer set_training_data or a disable wins: its attempt differs)."""
    await pool.execute(
        "UPDATE training_references SET status = $3, reference = $4::jsonb, error = $5, computed_at = now()"
        " WHERE deployment_id = $1 AND attempt = $2 AND status = 'computing'", deployment_id, attempt,
        "failed" if error else "ready", json.dumps(reference) if reference is not None else None, error)


async def disable_reference(pool: asyncpg.Pool, deployment_id: int) -> bool:
    status = await pool.execute(
        "UPDATE training_references SET status = 'disabled', reference = NULL, attempt = attempt + 1"
        " WHERE deployment_id = $1 AND status <> 'disabled'", deployment_id)
    return status.endswith(" 1")


# --- stats -----------------------------------------------------------------------------------------------


STATS_FILTERS = (
    "p.deployment_id = $1 AND ($2::text IS NULL OR p.model_version->>'name' = $2)"
    " AND ($3::text IS NULL OR p.model_version->>'version' = $3 OR p.model_version->>'sha' = $3)"
    " AND ($4::timestamptz IS NULL OR p.predicted_at >= $4) AND ($5::timestamptz IS NULL OR p.predicted_at <= $5)"
    " AND ($6::uuid[] IS NULL OR p.id = ANY($6)) AND ($7::uuid[] IS NULL OR NOT (p.id = ANY($7)))"
    " AND ($8::text[] IS NULL OR p.tags @> $8)")
"""get_stats' filters on `predictions p` ($1 deployment, $2 model name, $3 version or sha, $4/$5 the time window,
$6 includes, $7 excludes, $8 tags)."""


async def stats_count(pool: asyncpg.Pool, deployment_id: int, *, model_name: str | None, model_version: str | None,
                      start: datetime | None, end: datetime | None, includes: list[uuid.UUID] | None,
                      excludes: list[uuid.UUID] | None, tags: list[str] | None) -> int:
    """How many predictions the filters keep (what stats_rows would return without a limit)."""
    return int(await pool.fetchval(f"SELECT count(*) FROM predictions p WHERE {STATS_FILTERS}", deployment_id,
                                   model_name, model_version, start, end, includes, excludes, tags))


async def stats_rows(pool: asyncpg.Pool, deployment_id: int, *, model_name: str | None, model_version: str | None,
                     start: datetime | None, end: datetime | None, includes: list[uuid.UUID] | None,
                     excludes: list[uuid.UUID] | None, tags: list[str] | None,
                     limit: int) -> list[dict[str, Any]]:
    """The deployment's predictions the filters keep (at most `limit`), newest first, each with its review (or
    None)."""
    rows = await pool.fetch(
        f"SELECT {PREDICTION_COLUMNS}, r.decision, r.ground_truth FROM predictions p"
        f" LEFT JOIN reviews r ON r.prediction_id = p.id WHERE {STATS_FILTERS} ORDER BY p.predicted_at DESC, p.id"
        " LIMIT $9", deployment_id, model_name, model_version, start, end, includes, excludes, tags, limit)
    out = []
    for row in rows:
        item = loads(row)
        assert item is not None
        decision, truth = item.pop("decision"), item.pop("ground_truth")
        item["review"] = {"decision": decision, "ground_truth": truth} if decision else None
        out.append(item)
    return out


# --- delete(force_delete) --------------------------------------------------------------------------------


async def feedback_state(pool: asyncpg.Pool, deployment_id: int) -> list[str]:
    """What the feedback slice keeps for a deployment that delete would lose (empty: nothing)."""
    row = await pool.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM reviews WHERE deployment_id = $1) AS reviews,"
        " EXISTS (SELECT 1 FROM feedback_loops WHERE deployment_id = $1) AS loop,"
        " EXISTS (SELECT 1 FROM training_references WHERE deployment_id = $1 AND status <> 'disabled') AS reference",
        deployment_id)
    return [what for what, key in (("reviews", "reviews"), ("a feedback loop", "loop"),
                                   ("a training-data reference", "reference")) if row[key]]


async def forget_feedback(pool: asyncpg.Pool, deployment_id: int) -> None:
    """Drop the deployment's feedback loop (with its attachments and export records) and training reference;
    reviews go with their predictions."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM feedback_loops WHERE deployment_id = $1", deployment_id)
        await conn.execute("DELETE FROM training_references WHERE deployment_id = $1", deployment_id)


async def information(pool: asyncpg.Pool, deployment_id: int) -> dict[str, Any]:
    """retrieve_information's `feedback`: the review count, the feedback loop and the training-data reference."""
    loop = await pool.fetchrow("SELECT active FROM feedback_loops WHERE deployment_id = $1", deployment_id)
    datasets = await pool.fetch(
        "SELECT dataset_id, last_version_id, last_error FROM feedback_loop_datasets WHERE deployment_id = $1"
        " ORDER BY attached_at, dataset_id", deployment_id)
    reference = await pool.fetchrow(
        "SELECT status, dataset_id, version_id, images_done, images_total, computed_at FROM training_references"
        " WHERE deployment_id = $1", deployment_id)
    return {"reviews": await review_count(pool, deployment_id),
            "feedback_loop": {"active": loop["active"], "datasets": [dict(d) for d in datasets]} if loop else None,
            "training_data": {**dict(reference), "computed_at": reference["computed_at"].isoformat()
                              if reference["computed_at"] else None} if reference else None}
