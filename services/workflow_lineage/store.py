"""SQL of the workflow_lineage service (asyncpg, `$n` parameters only), in schema `workflow_lineage`."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

from shared import subjects
from shared.messages.base import Event
from shared.messages.lineage import BenchmarkCompleted, ProjectChanged, ProjectVersionCreated, WorkflowLinkAdded
from shared.outbox import add_event, event_failed, event_sent, unsent_events  # noqa: F401 - the outbox table's

# --- the outbox (shared/outbox.py; migration 008) --------------------------------------------------------
# the events lineage's commits write to the outbox, each in its change's transaction, sent from there in order per
# project (its rows are written under the project row's lock: commit order), per report, or per workspace (a link's,
# written under the workspace's graph lock): ORDER_FIELDS, the first its payload names
EVENT_TYPES: dict[str, type[Event]] = {subjects.EVENT_PROJECT_CHANGED: ProjectChanged,
                                       subjects.EVENT_PROJECT_VERSION_CREATED: ProjectVersionCreated,
                                       subjects.EVENT_WORKFLOW_LINK_ADDED: WorkflowLinkAdded,
                                       subjects.EVENT_BENCHMARK_COMPLETED: BenchmarkCompleted}
ORDER_FIELDS = ("project_id", "report_id", "workspace_id")


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


# --- projects and datasets -------------------------------------------------------------------------------

PROJECT_COLUMNS = "id, workspace_id, name, description, restored_from_version, created_at, updated_at"
DATASET_COLUMNS = ("d.id, d.project_id, p.workspace_id, d.name, d.kind, d.rows_sha256, d.row_count, d.created_at,"
                   " d.updated_at, (SELECT count(*) FROM dataset_files f WHERE f.dataset_id = d.id) AS file_count")


async def insert_project(conn: Any, workspace_id: int, name: str, description: str, created_by: uuid.UUID,
                         restored_from_version: int | None = None) -> asyncpg.Record | None:
    """The new project, or None when the workspace already has a project of that name."""
    return await conn.fetchrow(
        "INSERT INTO projects (workspace_id, name, description, created_by, restored_from_version)"
        f" VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id, name) DO NOTHING RETURNING {PROJECT_COLUMNS}",
        workspace_id, name, description, created_by, restored_from_version)


async def project(conn: Any, project_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1", project_id)


async def projects_of(conn: Any, workspace_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {PROJECT_COLUMNS} FROM projects WHERE workspace_id = $1 ORDER BY id",
                            workspace_id)


async def delete_project(conn: Any, project_id: int) -> int:
    status = await conn.execute("DELETE FROM projects WHERE id = $1", project_id)
    return int(status.split()[-1])


async def touch_project(conn: Any, project_id: int) -> None:
    await conn.execute("UPDATE projects SET updated_at = now() WHERE id = $1", project_id)


async def insert_dataset(conn: Any, project_id: int, name: str, kind: str) -> int | None:
    return await conn.fetchval(
        "INSERT INTO datasets (project_id, name, kind) VALUES ($1, $2, $3)"
        " ON CONFLICT (project_id, name) DO NOTHING RETURNING id", project_id, name, kind)


async def dataset(conn: Any, dataset_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {DATASET_COLUMNS} FROM datasets d JOIN projects p ON p.id = d.project_id WHERE d.id = $1",
        dataset_id)


async def datasets_of(conn: Any, project_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {DATASET_COLUMNS} FROM datasets d JOIN projects p ON p.id = d.project_id WHERE d.project_id = $1"
        " ORDER BY d.name", project_id)


async def delete_dataset(conn: Any, dataset_id: int) -> int:
    status = await conn.execute("DELETE FROM datasets WHERE id = $1", dataset_id)
    return int(status.split()[-1])


async def set_rows(conn: Any, dataset_id: int, rows_sha256: str | None, row_count: int) -> None:
    await conn.execute("UPDATE datasets SET rows_sha256 = $2, row_count = $3, updated_at = now() WHERE id = $1",
                       dataset_id, rows_sha256, row_count)


async def put_dataset_file(conn: Any, dataset_id: int, name: str, sha256: str, size: int, content_type: str,
                           labels: Any) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO dataset_files (dataset_id, name, sha256, size, content_type, labels)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
        " ON CONFLICT (dataset_id, name) DO UPDATE SET sha256 = EXCLUDED.sha256, size = EXCLUDED.size,"
        " content_type = EXCLUDED.content_type, labels = EXCLUDED.labels, created_at = now()"
        " RETURNING name, sha256, size, content_type, labels, created_at",
        dataset_id, name, sha256, size, content_type, json.dumps(labels) if labels is not None else None)


async def put_dataset_files(conn: Any, dataset_id: int, files: list[dict[str, Any]]) -> None:
    """Many files of a new dataset at once (a restore)."""
    await conn.executemany(
        "INSERT INTO dataset_files (dataset_id, name, sha256, size, content_type, labels)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        [(dataset_id, f["name"], f["sha256"], f["size"], f["content_type"],
          json.dumps(f["labels"]) if f.get("labels") is not None else None) for f in files])


async def dataset_files(conn: Any, dataset_id: int) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT name, sha256, size, content_type, labels, created_at FROM dataset_files"
                            " WHERE dataset_id = $1 ORDER BY name", dataset_id)


async def dataset_files_page(conn: Any, dataset_id: int, after: str | None, limit: int | None) -> list[asyncpg.Record]:
    """A dataset's files in name order after the name `after` (None: from the first), at most `limit` (None: all)."""
    columns = "SELECT name, sha256, size, content_type, labels, created_at FROM dataset_files"
    if after is None:
        return await conn.fetch(f"{columns} WHERE dataset_id = $1 ORDER BY name LIMIT $2", dataset_id, limit)
    return await conn.fetch(f"{columns} WHERE dataset_id = $1 AND name > $2 ORDER BY name LIMIT $3", dataset_id,
                            after, limit)


async def dataset_file(conn: Any, dataset_id: int, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT name, sha256, size, content_type, labels, created_at FROM dataset_files"
                               " WHERE dataset_id = $1 AND name = $2", dataset_id, name)


async def delete_dataset_file(conn: Any, dataset_id: int, name: str) -> int:
    status = await conn.execute("DELETE FROM dataset_files WHERE dataset_id = $1 AND name = $2", dataset_id, name)
    return int(status.split()[-1])


async def touch_dataset(conn: Any, dataset_id: int) -> None:
    await conn.execute("UPDATE datasets SET updated_at = now() WHERE id = $1", dataset_id)


# --- the workspace file space ----------------------------------------------------------------------------


async def put_workspace_file(conn: Any, workspace_id: int, path: str, sha256: str, size: int) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO workspace_files (workspace_id, path, sha256, size) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (workspace_id, path) DO UPDATE SET sha256 = EXCLUDED.sha256, size = EXCLUDED.size,"
        " created_at = now() RETURNING path, sha256, size, created_at", workspace_id, path, sha256, size)


async def workspace_file(conn: Any, workspace_id: int, path: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT path, sha256, size, created_at FROM workspace_files"
                               " WHERE workspace_id = $1 AND path = $2", workspace_id, path)


async def workspace_files_under(conn: Any, workspace_id: int, folder: str) -> list[asyncpg.Record]:
    """Every file whose path starts with `folder` (which ends with '/')."""
    return await conn.fetch("SELECT path, sha256, size, created_at FROM workspace_files"
                            " WHERE workspace_id = $1 AND starts_with(path, $2) ORDER BY path", workspace_id, folder)


async def workspace_files_with_sha(conn: Any, workspace_id: int, sha256: str) -> list[asyncpg.Record]:
    """The workspace's files holding these bytes."""
    return await conn.fetch("SELECT path FROM workspace_files WHERE workspace_id = $1 AND sha256 = $2",
                            workspace_id, sha256)


async def delete_workspace_file(conn: Any, workspace_id: int, path: str) -> int:
    status = await conn.execute("DELETE FROM workspace_files WHERE workspace_id = $1 AND path = $2",
                                workspace_id, path)
    return int(status.split()[-1])


# --- project versions ------------------------------------------------------------------------------------

VERSION_COLUMNS = ("id, project_id, workspace_id, number, title, description, manifest_sha256, created_by,"
                   " created_at")


async def lock_project(conn: Any, project_id: int) -> bool:
    """Serialize version creation per project (number and dedupe are read-then-write). Also taken first by each change
    of a project's datasets (handlers: create_dataset, delete_dataset, put_rows, add_file, delete_file), in the order
    projects/delete takes its locks (the project's row, then its datasets' and files' by the cascade): taking the
    project's row after the dataset's or file's (touch_project in _content_changed) deadlocked with an overlapping
    projects/delete, and PostgreSQL aborted one of them (a 500). Whether the project is there (deleted meanwhile:
    not)."""
    return bool(await conn.fetchval("SELECT true FROM projects WHERE id = $1 FOR UPDATE", project_id))


async def latest_version(conn: Any, project_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {VERSION_COLUMNS} FROM project_versions WHERE project_id = $1"
                               " ORDER BY number DESC LIMIT 1", project_id)


async def insert_version(conn: Any, project_id: int, workspace_id: int, title: str | None, description: str | None,
                         manifest: str, manifest_sha256: str, created_by: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO project_versions (project_id, workspace_id, number, title, description, manifest,"
        " manifest_sha256, created_by) VALUES ($1, $2, (SELECT coalesce(max(number), 0) + 1 FROM project_versions"
        " WHERE project_id = $1), $3, $4, $5, $6, $7)"
        f" RETURNING {VERSION_COLUMNS}", project_id, workspace_id, title, description, manifest, manifest_sha256,
        created_by)


async def versions_of(conn: Any, project_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {VERSION_COLUMNS} FROM project_versions WHERE project_id = $1"
                            " ORDER BY number", project_id)


async def version(conn: Any, version_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {VERSION_COLUMNS}, manifest FROM project_versions WHERE id = $1",
                               version_id)


async def version_head(conn: Any, version_id: int) -> asyncpg.Record | None:
    """A version without its manifest (which may be megabytes)."""
    return await conn.fetchrow(f"SELECT {VERSION_COLUMNS} FROM project_versions WHERE id = $1", version_id)


async def version_manifest(conn: Any, version_id: int) -> str | None:
    return await conn.fetchval("SELECT manifest FROM project_versions WHERE id = $1", version_id)


async def version_head_by_number(conn: Any, project_id: int, number: int) -> asyncpg.Record | None:
    """A version by its number, without its manifest."""
    return await conn.fetchrow(f"SELECT {VERSION_COLUMNS} FROM project_versions WHERE project_id = $1 AND number = $2",
                               project_id, number)


async def version_by_number(conn: Any, project_id: int, number: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {VERSION_COLUMNS}, manifest FROM project_versions"
                               " WHERE project_id = $1 AND number = $2", project_id, number)


# --- the graph -------------------------------------------------------------------------------------------

NODE_COLUMNS = "id, workspace_id, kind, ref, title, settings, data, created_at, updated_at"
EDGE_COLUMNS = "id, source, target, relation, origin, settings"


async def upsert_node(conn: Any, workspace_id: int, kind: str, ref: str, title: str | None = None,
                      settings: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> asyncpg.Record:
    """A card, created when new; a given title replaces the old one, given settings and data merge into
    the old ones (the last write wins, field by field)."""
    return await conn.fetchrow(
        "INSERT INTO nodes (workspace_id, kind, ref, title, settings, data)"
        " VALUES ($1, $2, $3, coalesce($4, $2 || ' ' || $3), coalesce($5::jsonb, '{}'), coalesce($6::jsonb, '{}'))"
        " ON CONFLICT (workspace_id, kind, ref) DO UPDATE SET title = coalesce($4, nodes.title),"
        " settings = nodes.settings || coalesce($5::jsonb, '{}'), data = nodes.data || coalesce($6::jsonb, '{}'),"
        f" updated_at = now() RETURNING {NODE_COLUMNS}",
        workspace_id, kind, ref, title, json.dumps(settings) if settings else None,
        json.dumps(data) if data else None)


async def node(conn: Any, workspace_id: int, kind: str, ref: str) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {NODE_COLUMNS} FROM nodes WHERE workspace_id = $1 AND kind = $2"
                               " AND ref = $3", workspace_id, kind, ref)


async def lock_graph(conn: Any, workspace_id: int) -> None:
    """Serialize drawing on a workspace's graph until the caller's transaction ends (every writer takes it before
    it reads or writes a card: the events drawn concurrently see each other's cards, and no two drawings lock cards
    in opposite orders)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('workflow_lineage.graph:' || $1::bigint, 0))",
                       workspace_id)


async def set_occurred_at(conn: Any, node_id: int, at: datetime) -> None:
    """A card's `data.occurred_at`: the earliest time an event that defines it happened (what a name resolves by)."""
    await conn.execute(
        "UPDATE nodes SET data = jsonb_set(data, '{occurred_at}', to_jsonb($2::timestamptz)) WHERE id = $1"
        " AND (NOT data ? 'occurred_at' OR (data ->> 'occurred_at')::timestamptz > $2)", node_id, at)


async def set_if_newer(conn: Any, node_id: int, stamp: str, at: datetime, data: dict[str, Any]) -> None:
    """Merge `data` into a card's unless an event that happened later already set it (`data[stamp]`, its time):
    a status or an active flag is the latest event's, whatever order the events are drawn in."""
    await conn.execute(
        "UPDATE nodes SET data = data || $4::jsonb || jsonb_build_object($2::text, to_jsonb($3::timestamptz)),"
        " updated_at = now() WHERE id = $1 AND (NOT data ? $2 OR (data ->> $2)::timestamptz <= $3)",
        node_id, stamp, at, json.dumps(data))


async def nodes_with(conn: Any, workspace_id: int, kind: str, key: str, value: str) -> list[asyncpg.Record]:
    """The cards of a kind whose data[key] is value."""
    return await conn.fetch(f"SELECT {NODE_COLUMNS} FROM nodes WHERE workspace_id = $1 AND kind = $2"
                            " AND data ->> $3 = $4 ORDER BY id", workspace_id, kind, key, value)


LINK_REF_COLUMNS = "id, workspace_id, target, relation, kinds, match_key, match_value, as_of, source"


async def add_link_ref(conn: Any, workspace_id: int, target: int, relation: str, kinds: list[str], key: str,
                       value: str, as_of: datetime) -> asyncpg.Record:
    """Remember that `target` gets a `relation` arrow from the card of `kinds` whose data[key] is value (graph.py
    _resolve chooses which); the existing row when the same name was already named for the target."""
    return await conn.fetchrow(
        "INSERT INTO link_refs (workspace_id, target, relation, kinds, match_key, match_value, as_of)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (target, relation, match_key, match_value)"
        f" DO UPDATE SET as_of = least(link_refs.as_of, EXCLUDED.as_of) RETURNING {LINK_REF_COLUMNS}",
        workspace_id, target, relation, kinds, key, value, as_of)


async def link_refs_naming(conn: Any, workspace_id: int, kind: str, key: str, value: str) -> list[asyncpg.Record]:
    """The remembered name references a newly drawn card of `kind` with data[key] = value may resolve."""
    return await conn.fetch(f"SELECT {LINK_REF_COLUMNS} FROM link_refs WHERE workspace_id = $1 AND match_key = $2"
                            " AND match_value = $3 AND $4 = ANY(kinds) ORDER BY id", workspace_id, key, value, kind)


async def best_candidate(conn: Any, ref: Any) -> int | None:
    """The card a name reference resolves to now: among the cards of its kinds with data[key] = value and a time
    (data.occurred_at), those whose event happened no later than the naming event first, then by the kinds' order,
    then the newest of them (or, when none happened before, the earliest after); None when there is none."""
    return await conn.fetchval(
        "SELECT id FROM (SELECT id, kind, ref, (data ->> 'occurred_at')::timestamptz AS at FROM nodes"
        "  WHERE workspace_id = $1 AND kind = ANY($2::text[]) AND data ->> $3 = $4 AND data ? 'occurred_at') c"
        " ORDER BY (at <= $5) DESC, array_position($2::text[], kind), CASE WHEN at <= $5 THEN at END DESC NULLS LAST,"
        " at, ref DESC LIMIT 1",
        ref["workspace_id"], ref["kinds"], ref["match_key"], ref["match_value"], ref["as_of"])


async def set_link_ref_source(conn: Any, ref_id: int, source: int | None) -> None:
    await conn.execute("UPDATE link_refs SET source = $2 WHERE id = $1", ref_id, source)


async def add_pinned_ref(conn: Any, workspace_id: int, target: int, relation: str, source: int, key: str,
                         as_of: datetime) -> None:
    """Remember an arrow an event drew from a card it named exactly (a pinned model version): a `pinned` row is
    never resolved again, it only keeps a name reference's move from deleting the same arrow (`delete_moved_edge`)."""
    await conn.execute(
        "INSERT INTO link_refs (workspace_id, target, relation, kinds, match_key, match_value, as_of, source)"
        " VALUES ($1, $2, $3, '{}', 'pinned', $4, $5, $6) ON CONFLICT (target, relation, match_key, match_value)"
        " DO NOTHING", workspace_id, target, relation, key, as_of, source)


async def delete_moved_edge(conn: Any, ref: Any) -> None:
    """Delete the event arrow a name reference moves away from, unless another reference (a pinned one, or
    another name) still draws the same arrow: edges are one per (source, target, relation)."""
    await conn.execute(
        "DELETE FROM edges WHERE source = $1 AND target = $2 AND relation = $3 AND origin = 'event' AND NOT EXISTS"
        " (SELECT 1 FROM link_refs WHERE source = $1 AND target = $2 AND relation = $3 AND id <> $4)",
        ref["source"], ref["target"], ref["relation"], ref["id"])


async def add_edge(conn: Any, workspace_id: int, source: int, target: int, relation: str, origin: str,
                   settings: dict[str, Any] | None = None) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO edges (workspace_id, source, target, relation, origin, settings)"
        " VALUES ($1, $2, $3, $4, $5, coalesce($6::jsonb, '{}'))"
        " ON CONFLICT (source, target, relation) DO UPDATE SET settings = edges.settings || coalesce($6::jsonb, '{}')"
        f" RETURNING {EDGE_COLUMNS}", workspace_id, source, target, relation, origin,
        json.dumps(settings) if settings else None)


async def nodes_by_id(conn: Any, ids: list[int]) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = ANY($1::bigint[]) ORDER BY id", ids)


async def edges_touching(conn: Any, ids: list[int], direction: str) -> list[asyncpg.Record]:
    """Edges into (`ancestors`) or out of (`descendants`) the given cards."""
    column = "target" if direction == "ancestors" else "source"
    return await conn.fetch(f"SELECT {EDGE_COLUMNS} FROM edges WHERE {column} = ANY($1::bigint[])", ids)


async def workspace_graph(conn: Any, workspace_id: int,
                          limit: int) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    nodes = await conn.fetch(f"SELECT {NODE_COLUMNS} FROM nodes WHERE workspace_id = $1 ORDER BY id LIMIT $2",
                             workspace_id, limit)
    edges = await conn.fetch(f"SELECT {EDGE_COLUMNS} FROM edges WHERE workspace_id = $1 ORDER BY id", workspace_id)
    return nodes, edges


async def replace_settings(conn: Any, node_id: int, settings: dict[str, Any]) -> asyncpg.Record:
    """A main node's settings, overwritten whole (the seed: the last write to a main node wins)."""
    return await conn.fetchrow(f"UPDATE nodes SET settings = $2::jsonb, updated_at = now() WHERE id = $1"
                               f" RETURNING {NODE_COLUMNS}", node_id, json.dumps(settings))


# --- benchmark reports -----------------------------------------------------------------------------------

REPORT_COLUMNS = "id, workspace_id, name, task, dataset, candidates, created_by, created_at"


async def insert_report(conn: Any, workspace_id: int, name: str, task: str, dataset: dict[str, Any],
                        candidates: list[dict[str, Any]], created_by: uuid.UUID) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO benchmark_reports (workspace_id, name, task, dataset, candidates, created_by)"
        f" VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6) RETURNING {REPORT_COLUMNS}",
        workspace_id, name, task, json.dumps(dataset), json.dumps(candidates), created_by)


async def report(conn: Any, report_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {REPORT_COLUMNS} FROM benchmark_reports WHERE id = $1", report_id)


async def reports_of(conn: Any, workspace_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {REPORT_COLUMNS} FROM benchmark_reports WHERE workspace_id = $1"
                            " ORDER BY id", workspace_id)


# --- automatic benchmarks ----------------------------------------------------------------------------------

# A task run with an evaluation set -> its output (a model version, or a model-weight file uploaded as one) ->
# a pipeline version using that model version -> an active deployment of it: newest deployment first.
_READY_EVALUATIONS = """
SELECT r.ref AS task_run, r.data -> 'evaluation' AS evaluation, mv.ref AS model_version,
       d.data ->> 'name' AS deployment, pv.ref AS pipeline_version
FROM nodes r
JOIN edges e1 ON e1.source = r.id AND e1.relation = 'output'
JOIN nodes o ON o.id = e1.target
LEFT JOIN edges e2 ON e2.source = o.id AND e2.relation = 'uploaded_as'
JOIN nodes mv ON mv.kind = 'model_version'
     AND mv.id = CASE WHEN o.kind = 'model_version' THEN o.id ELSE e2.target END
JOIN edges e3 ON e3.source = mv.id AND e3.relation = 'used_by'
JOIN nodes pv ON pv.id = e3.target
JOIN edges e4 ON e4.source = pv.id AND e4.relation = 'deployed_as'
JOIN nodes d ON d.id = e4.target AND d.kind = 'deployment'
WHERE r.workspace_id = $1 AND r.kind = 'task_run' AND r.data ? 'evaluation'
  AND (o.kind = 'model_version' OR (o.kind = 'file' AND coalesce((o.data ->> 'model_weight')::boolean, false)))
  AND coalesce((d.data ->> 'active')::boolean, true) AND d.data ? 'name'
ORDER BY d.id DESC
"""


async def claim_ready_evaluations(conn: Any, workspace_id: int) -> int:
    """A claim for every (task run, model version) that is now ready to benchmark and has none yet; how many."""
    claimed = 0
    seen: set[tuple[str, str]] = set()
    for row in await conn.fetch(_READY_EVALUATIONS, workspace_id):
        key = (row["task_run"], row["model_version"])
        if key in seen:
            continue
        seen.add(key)
        status = await conn.execute(
            "INSERT INTO auto_benchmarks (workspace_id, task_run, model_version, deployment, pipeline_version,"
            " evaluation) VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
            " ON CONFLICT (workspace_id, task_run, model_version) DO NOTHING",
            workspace_id, row["task_run"], row["model_version"], row["deployment"], row["pipeline_version"],
            row["evaluation"] if isinstance(row["evaluation"], str) else json.dumps(row["evaluation"]))
        claimed += status.endswith(" 1")
    return claimed


async def take_auto_benchmark(pool: asyncpg.Pool, stale_seconds: float) -> asyncpg.Record | None:
    """The next due claim, marked running (a running claim older than `stale_seconds` is taken again: its worker
    died)."""
    return await pool.fetchrow(
        "UPDATE auto_benchmarks SET status = 'running', attempts = attempts + 1, updated_at = now()"
        " WHERE id = (SELECT id FROM auto_benchmarks WHERE (status = 'pending' AND next_try <= now())"
        "   OR (status = 'running' AND updated_at < now() - make_interval(secs => $1))"
        "   ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING *", stale_seconds)


async def next_auto_benchmark(pool: asyncpg.Pool, stale_seconds: float) -> float | None:
    """Seconds until a claim is due (`take_auto_benchmark`): a pending one's next try, a running one's stale time
    (0 or less: one is due now); None when there is none."""
    return await pool.fetchval(
        "SELECT extract(epoch FROM min(CASE WHEN status = 'pending' THEN next_try"
        " ELSE updated_at + make_interval(secs => $1) END) - now())::float8 FROM auto_benchmarks"
        " WHERE status IN ('pending', 'running')", stale_seconds)


async def finish_auto_benchmark(conn: Any, claim_id: int, attempts: int, report_id: int) -> bool:
    """Mark a claim done with its report; False when another worker took it meanwhile (then roll back)."""
    status = await conn.execute(
        "UPDATE auto_benchmarks SET status = 'done', report_id = $3, error = NULL, updated_at = now()"
        " WHERE id = $1 AND status = 'running' AND attempts = $2", claim_id, attempts, report_id)
    return status.endswith(" 1")


async def fail_auto_benchmark(pool: asyncpg.Pool, claim_id: int, attempts: int, error: str,
                              retry_in: float | None) -> None:
    """Back to pending after `retry_in` seconds, or failed for good (retry_in None)."""
    await pool.execute(
        "UPDATE auto_benchmarks SET status = CASE WHEN $4::float8 IS NULL THEN 'failed' ELSE 'pending' END,"
        " error = $3, next_try = now() + make_interval(secs => coalesce($4::float8, 0)), updated_at = now()"
        " WHERE id = $1 AND attempts = $2", claim_id, attempts, error[:2000], retry_in)


# --- garbage collection of content-addressed objects ---------------------------------------------------------


async def lock_object(conn: Any, sha256: str) -> None:
    """The per-hash lock uploads and the garbage collector share (for the caller's transaction)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('workflow_lineage.object:' || $1, 0))", sha256)


async def hold_object(pool: asyncpg.Pool, sha256: str) -> uuid.UUID:
    """Keep an object from the garbage collector while an upload comes to refer to it; the hold's id."""
    hold = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await lock_object(conn, sha256)
        await conn.execute("INSERT INTO object_holds (id, sha256) VALUES ($1, $2)", hold, sha256)
    return hold


async def release_object(conn: Any, hold: uuid.UUID) -> None:
    """The upload's reference is in (this transaction): its hold is no longer needed."""
    await conn.execute("DELETE FROM object_holds WHERE id = $1", hold)


_REFERENCES = ("SELECT rows_sha256 AS sha256 FROM datasets WHERE rows_sha256 IS NOT NULL"
               " UNION SELECT sha256 FROM dataset_files UNION SELECT sha256 FROM workspace_files"
               " UNION SELECT sha256 FROM object_holds WHERE held_at > now() - make_interval(secs => $1)")


async def referenced_objects(conn: Any, hold_seconds: float) -> tuple[set[str], list[str]]:
    """The hashes datasets, dataset files, workspace files and recent holds refer to; and every version's
    manifest text (the caller reads their objects)."""
    found = {r["sha256"] for r in await conn.fetch(_REFERENCES, hold_seconds)}
    return found, [r["manifest"] for r in await conn.fetch("SELECT manifest FROM project_versions")]


async def object_referenced(conn: Any, sha256: str, hold_seconds: float) -> bool:
    """Whether anything refers to the object now (a version's manifest names hashes as JSON strings)."""
    return bool(await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM ({_REFERENCES}) r WHERE r.sha256 = $2)"
        " OR EXISTS (SELECT 1 FROM project_versions WHERE strpos(manifest, $3) > 0)",
        hold_seconds, sha256, f'"{sha256}"'))


async def drop_old_holds(conn: Any, hold_seconds: float) -> None:
    await conn.execute("DELETE FROM object_holds WHERE held_at <= now() - make_interval(secs => $1)", hold_seconds)
