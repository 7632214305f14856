"""Business logic of the workflow_lineage service: projects, datasets, the workspace file space and project
versions, as plain async functions (graph.py draws the graph, manifest.py defines what a version records).

Uploads arrive staged in object storage (`staging/<user id>/<uuid>`, put there by the gateway or the monitoring
service for that user, shared/staging.py); a handler takes one only from its uploader (anyone else: 403, the object
untouched), reads it, checks it, stores it under its sha256 (once) and deletes the staged copy whatever happens, so
bad input leaves nothing behind."""

from __future__ import annotations

import asyncio
import bisect
import collections
import hashlib
import io
import json
import logging
import mimetypes
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import asyncpg
from pydantic import ValidationError

from services.workflow_lineage import file_pages, graph, manifest, store
from services.workflow_lineage.saved_files import SavedDataset, SavedFilesCache
from shared import subjects
from shared.authz import MembershipLookup, Principal, require_member, require_user
from shared.consumers import Undecodable, describe, json_model
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.messages import Event, EventCount
from shared.messages.lineage import (
    AddDatasetFile,
    CreateDataset,
    CreateProject,
    CreateProjectVersion,
    DatasetFile,
    DatasetFiles,
    DatasetInfo,
    DatasetRows,
    Datasets,
    Deleted,
    ListProjectVersions,
    ProjectChanged,
    ProjectInfo,
    ProjectRestored,
    Projects,
    ProjectVersionCreated,
    ProjectVersionInfo,
    ProjectVersionRecord,
    ProjectVersions,
    PutDatasetRows,
    PutWorkspaceFile,
    RestoreProjectVersion,
    SavedDatasetInfo,
    VersionFilter,
    VersionVerification,
    WorkspaceFile,
    WorkspaceFolder,
    a_dataset_of_kind,
)
from shared.objectstore import BUCKET_DATASETS, ObjectStore, content_key
from shared.staging import check_staged

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("railyard.workflow_lineage")

MAX_PATH = 1024
EXISTS_AT_ONCE = 16


@dataclass
class Deps:
    """What the handlers need: the pool, object storage, membership checks, and the outbox's wake-up."""

    pool: asyncpg.Pool
    objects: ObjectStore
    membership: Callable[[str | None], MembershipLookup]
    # lineage's events are written to the outbox in the change's transaction (store.EVENT_TYPES; shared/outbox.py),
    # not published after the commit: a publish failing there made a committed change an error (the retry then
    # conflicted) and lost the event. Called after such a commit: the outbox (app.py) sends them now
    events_committed: Callable[[], None] = lambda: None
    wake_benchmarks: Callable[[], None] = lambda: None  # a claim for an automatic benchmark was made
    saved_files: SavedFilesCache = field(default_factory=SavedFilesCache)  # datasets as versions saved them
    page_bytes: int = 4 * 1024 * 1024  # a list_files page's most bytes of files: half the bus payload limit (app.py)
    reply_bytes: int = 8 * 1024 * 1024 - 4 * 1024  # the most a reply carries: the bus limit less headers (app.py)


# --- the event log ---------------------------------------------------------------------------------------


def decode_event(data: bytes) -> dict[str, Any]:
    """A message of `events.>` as the event lineage records: a JSON object with a valid `event_id` (and
    `occurred_at`, when it has one); Undecodable otherwise (a dead letter: shared/consumers.py)."""
    payload = json_model(None)(data)
    if "event_id" not in payload:
        raise Undecodable("not an event: no event_id")
    try:
        Event.model_validate({k: payload[k] for k in ("event_id", "occurred_at") if k in payload})
    except ValidationError as exc:
        raise Undecodable(describe(exc)) from None
    return payload


async def record_event(pool: asyncpg.Pool, subject: str, payload: dict[str, Any]) -> bool:
    """Keep a domain event once and draw what it tells on the graph: `payload` is one decode_event accepted (an
    object with a valid event_id; anything else is a dead letter before it gets here). True when the drawing made a
    task run's model version ready for an automatic benchmark."""
    meta = Event.model_validate({k: payload[k] for k in ("event_id", "occurred_at") if k in payload})
    claimed = 0
    async with pool.acquire() as conn, conn.transaction():
        if await store.record_event(conn, meta.event_id, subject, meta.occurred_at, payload):
            try:
                async with conn.transaction():  # a savepoint: a drawing that fails never blocks the event log
                    await graph.apply_event(conn, subject, payload, meta.occurred_at)
            except Exception:
                log.exception("could not draw the event on %s (recorded, not drawn)", subject)
            if subject in graph.COMPLETES_EVALUATIONS or subject.startswith(subjects.EVENT_TASK_RUN_PREFIX):
                try:
                    async with conn.transaction():  # its own savepoint: the drawing stands whatever happens here
                        claimed = await store.claim_ready_evaluations(conn, int(payload["workspace_id"]))
                except Exception:
                    log.exception("could not look for automatic benchmarks after %s", subject)
    return claimed > 0


async def count_events(pool: asyncpg.Pool, subject: str | None) -> EventCount:
    return EventCount(count=await store.count_events(pool, subject))


# --- access ----------------------------------------------------------------------------------------------


async def _member(deps: Deps, principal: Principal, token: str | None, workspace_id: int) -> None:
    await require_member(deps.membership(token), principal, workspace_id)


async def _project(deps: Deps, principal: Principal, token: str | None, project_id: int) -> asyncpg.Record:
    """The project, when the caller is a member of its workspace; otherwise it does not exist."""
    require_user(principal)
    row = await store.project(deps.pool, project_id)
    if row is None:
        raise NotFound(f"project {project_id} not found")
    try:
        await _member(deps, principal, token, row["workspace_id"])
    except NotFound:
        raise NotFound(f"project {project_id} not found") from None
    return row


async def _dataset(deps: Deps, principal: Principal, token: str | None, dataset_id: int) -> asyncpg.Record:
    require_user(principal)
    row = await store.dataset(deps.pool, dataset_id)
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    try:
        await _member(deps, principal, token, row["workspace_id"])
    except NotFound:
        raise NotFound(f"dataset {dataset_id} not found") from None
    return row


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _dataset_info(row: Any) -> DatasetInfo:
    return DatasetInfo(id=row["id"], project_id=row["project_id"], workspace_id=row["workspace_id"],
                       name=row["name"], kind=row["kind"], row_count=row["row_count"], file_count=row["file_count"],
                       rows_sha256=row["rows_sha256"], created_at=row["created_at"], updated_at=row["updated_at"])


def _file_info(row: Any) -> DatasetFile:
    return DatasetFile(name=row["name"], sha256=row["sha256"], size=row["size"], content_type=row["content_type"],
                       labels=_jsonb(row["labels"]), created_at=row["created_at"])


async def current_manifest(conn: Any, project_id: int) -> dict[str, Any]:
    """The manifest of a project as it is now."""
    datasets = []
    for row in await store.datasets_of(conn, project_id):
        files = [dict(f) | {"labels": _jsonb(f["labels"])} for f in await store.dataset_files(conn, row["id"])]
        datasets.append({**dict(row), "files": files})
    return manifest.build(datasets)


async def _project_info(conn: Any, row: Any) -> ProjectInfo:
    datasets = await store.datasets_of(conn, row["id"])
    return ProjectInfo(id=row["id"], workspace_id=row["workspace_id"], name=row["name"],
                       description=row["description"], created_at=row["created_at"], updated_at=row["updated_at"],
                       restored_from_version=row["restored_from_version"],
                       content_sha256=manifest.digest(await current_manifest(conn, row["id"])),
                       datasets=[_dataset_info(d) for d in datasets])


# --- staged uploads --------------------------------------------------------------------------------------


async def _with_staged(deps: Deps, principal: Principal, staged_key: str,
                       use: Callable[[Path, str, int], Awaitable[Any]]) -> Any:
    """Download the caller's staged upload, hash it, hand it to `use(path, sha256, size)`; the staged object is
    deleted whatever happens then. Another user's upload is refused (403) and left untouched (shared/staging.py)."""
    check_staged(staged_key, principal)
    try:
        with tempfile.TemporaryDirectory(prefix="railyard-lineage-") as folder:
            local = Path(folder) / "upload"
            try:
                sha, size = await deps.objects.download_to(BUCKET_DATASETS, staged_key, local)
            except NotFound:
                raise InvalidRequest("the uploaded file was not found (upload it through the HTTP API)") from None
            return await use(local, sha, size)
    finally:
        try:
            await deps.objects.delete(BUCKET_DATASETS, staged_key)
        except Exception:  # the outcome stands; a leftover staged object is only garbage
            log.warning("could not delete staged upload %s", staged_key)


async def _keep(deps: Deps, local: Path, sha: str) -> uuid.UUID:
    """Store bytes under their hash unless they are there already (the same bytes are stored once). The hash is
    held first, so the garbage collector cannot delete an object this upload found present; the hold's id, to
    release in the transaction that stores the reference."""
    key = content_key(sha)
    hold = await store.hold_object(deps.pool, sha)
    if not await deps.objects.exists(BUCKET_DATASETS, key):
        size = (await asyncio.to_thread(local.stat)).st_size
        source = await asyncio.to_thread(local.open, "rb")
        try:
            await deps.objects.put_stream(BUCKET_DATASETS, key, source, length=size)
        finally:
            source.close()
    return hold


def _image_type(local: Path) -> str:
    """The image's media type, or InvalidRequest when the bytes are not an image Pillow can read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(local) as image:
            image.verify()
            kind = image.format or ""
    except Image.DecompressionBombError:
        raise InvalidRequest(f"the image has more than {2 * Image.MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidRequest("the file is not an image (images datasets take PNG, JPEG, BMP, GIF, TIFF, WebP, ...)"
                             ) from None
    return Image.MIME.get(kind, f"image/{kind.lower()}")


# --- projects --------------------------------------------------------------------------------------------


async def create_project(deps: Deps, principal: Principal, token: str | None, cmd: CreateProject) -> ProjectInfo:
    require_user(principal)
    await _member(deps, principal, token, cmd.workspace_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await store.insert_project(conn, cmd.workspace_id, cmd.name, cmd.description,
                                         uuid.UUID(principal.user_id))
        if row is None:
            raise Conflict(f"workspace {cmd.workspace_id} already has a project named {cmd.name!r}")
        await graph.project_node(conn, row)
        info = await _project_info(conn, row)
        await store.add_event(conn, subjects.EVENT_PROJECT_CHANGED, ProjectChanged(
            workspace_id=info.workspace_id, project_id=info.id, action="created", content_sha256=info.content_sha256))
    deps.events_committed()
    return info


async def list_projects(deps: Deps, principal: Principal, token: str | None, workspace_id: int) -> Projects:
    require_user(principal)
    await _member(deps, principal, token, workspace_id)
    async with deps.pool.acquire() as conn:
        return Projects(projects=[await _project_info(conn, r) for r in await store.projects_of(conn, workspace_id)])


async def get_project(deps: Deps, principal: Principal, token: str | None, project_id: int) -> ProjectInfo:
    row = await _project(deps, principal, token, project_id)
    async with deps.pool.acquire() as conn:
        return await _project_info(conn, row)


async def delete_project(deps: Deps, principal: Principal, token: str | None, project_id: int) -> Deleted:
    """Delete a project with its datasets and versions (objects stay: other projects and versions share them;
    the graph keeps its card, since what happened to it is history)."""
    row = await _project(deps, principal, token, project_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        deleted = await store.delete_project(conn, project_id)  # the row's lock: after the changes that hold it
        if deleted:  # deleted meanwhile by another call, which told of it
            await store.add_event(conn, subjects.EVENT_PROJECT_CHANGED, ProjectChanged(
                workspace_id=row["workspace_id"], project_id=project_id, action="deleted"))
    deps.events_committed()
    return Deleted(deleted=deleted)


async def _content_changed(conn: Any, project_id: int, workspace_id: int) -> None:
    """Put the project's new content hash in the outbox, in the transaction that changed it (the caller wakes the
    outbox, `Deps.events_committed`, after the commit). The project row's lock (touch_project) comes first: a
    concurrent change of the same project waits for it until this one commits and then reads a manifest with both
    changes (read committed: each statement sees what was committed before it), and its outbox row comes after this
    one's, which the outbox sends first (one project's events in order, store.ORDER_FIELDS), so the last hash
    published is the final state's (tests/integration/test_lineage_events.py). Reading the manifest before the lock,
    two overlapping adds each published a hash without the other's file."""
    await store.touch_project(conn, project_id)
    sha = manifest.digest(await current_manifest(conn, project_id))
    await store.add_event(conn, subjects.EVENT_PROJECT_CHANGED, ProjectChanged(
        workspace_id=workspace_id, project_id=project_id, action="content_changed", content_sha256=sha))


# --- datasets --------------------------------------------------------------------------------------------


async def create_dataset(deps: Deps, principal: Principal, token: str | None, cmd: CreateDataset) -> DatasetInfo:
    project = await _project(deps, principal, token, cmd.project_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        if not await store.lock_project(conn, cmd.project_id):  # first, as projects/delete: no deadlock with it
            raise NotFound(f"project {cmd.project_id} not found")  # deleted meanwhile
        dataset_id = await store.insert_dataset(conn, cmd.project_id, cmd.name, cmd.kind)
        if dataset_id is None:
            raise Conflict(f"project {cmd.project_id} already has a dataset named {cmd.name!r}")
        row = await store.dataset(conn, dataset_id)
        await _content_changed(conn, cmd.project_id, project["workspace_id"])
    deps.events_committed()
    return _dataset_info(row)


async def list_datasets(deps: Deps, principal: Principal, token: str | None, project_id: int) -> Datasets:
    await _project(deps, principal, token, project_id)
    return Datasets(datasets=[_dataset_info(r) for r in await store.datasets_of(deps.pool, project_id)])


async def get_dataset(deps: Deps, principal: Principal, token: str | None, dataset_id: int) -> DatasetInfo:
    return _dataset_info(await _dataset(deps, principal, token, dataset_id))


async def delete_dataset(deps: Deps, principal: Principal, token: str | None, dataset_id: int) -> Deleted:
    row = await _dataset(deps, principal, token, dataset_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        await store.lock_project(conn, row["project_id"])  # first, as projects/delete: no deadlock with it
        deleted = await store.delete_dataset(conn, dataset_id)
        if deleted:  # gone meanwhile (another delete, or with its project): nothing changed here, no event
            await _content_changed(conn, row["project_id"], row["workspace_id"])
    deps.events_committed()
    return Deleted(deleted=deleted)


def _parquet(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _type_text(t: Any) -> str:
    """A column type as a user reads it: list<double>, fixed_size_list<double>[29] (no child field names)."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_type_text(t.value_type)}>[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{'large_' if pa.types.is_large_list(t) else ''}list<{_type_text(t.value_type)}>"
    return str(t)


def _list_like(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _castable(have: Any, want: Any) -> bool:
    """Whether a column of type `have` holds values the dataset's `want` holds too, so Arrow's safe cast (which
    refuses to lose a value: an integer past 2**53 to double, a timestamp's finer digits, a 129th category of an
    int8 dictionary) may put it in the dataset's layout: another list layout of such values, string and large_string
    and a dictionary of either (pandas 3 sends str columns as large_string, JSON records as string; a category as a
    dictionary), binary alike, an integer as another integer or floating type (JSON's 1 for 1.0), a float as a
    wider float, a timestamp in another unit of the same zone, a column of nulls only (all missing in this batch)."""
    import pyarrow as pa

    t = pa.types
    if have.equals(want) or t.is_null(have):
        return True
    if _list_like(have) and _list_like(want):
        return _castable(have.value_type, want.value_type)
    have_v = have.value_type if t.is_dictionary(have) else have
    want_v = want.value_type if t.is_dictionary(want) else want
    for family in (lambda x: t.is_string(x) or t.is_large_string(x) or t.is_string_view(x),
                   lambda x: t.is_binary(x) or t.is_large_binary(x) or t.is_binary_view(x)):
        if family(have_v) and family(want_v):
            return True
    if t.is_dictionary(have) or t.is_dictionary(want):
        return False
    if t.is_integer(have):
        return t.is_integer(want) or t.is_floating(want)
    if t.is_floating(have) and t.is_floating(want):
        return have.bit_width <= want.bit_width
    return t.is_timestamp(have) and t.is_timestamp(want) and have.tz == want.tz


def _listed(items: list[str], most: int = 20) -> str:
    """Names for a message, the first `most` of them (a dataset of thousands of columns is not a message)."""
    return ", ".join(items[:most]) + (f", ... ({len(items) - most} more)" if len(items) > most else "")


def _other_lengths(column: Any, want: Any) -> bool:
    """Whether a list column holds a (non-null) list whose length is not the dataset's fixed size."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_fixed_size_list(want) or not _list_like(column.type):
        return False
    if pa.types.is_fixed_size_list(column.type):
        return column.type.list_size != want.list_size and len(column) > column.null_count
    return bool(pc.any(pc.not_equal(pc.list_value_length(column), want.list_size)).as_py())


def conform_appended(schema: Any, table: Any) -> Any:
    """The appended rows as the dataset's schema holds them, or a 400 naming each difference.

    The same columns in another order are put in the dataset's order, and a column of another layout of the same
    values (_castable: pandas-records JSON makes `fixed_size_list<double>[29]` and `string` of the rows a DataFrame
    sends as `list<double>` and, with pandas 3, `large_string`, the SDK's and CLI's form) is cast to the dataset's
    with Arrow's safe cast; a fixed-size list takes only lists of its size. Anything else (a missing or extra column,
    another value type, a value the dataset's type cannot hold, a null in a column that holds none) is refused,
    naming the columns and both types, not the schemas' metadata."""
    import pyarrow as pa

    names, sent = list(schema.names), list(table.schema.names)
    if sent != names:
        missing = [n for n in names if n not in sent]
        extra = [n for n in sent if n not in names]
        if missing or extra or len(set(sent)) != len(sent) or len(sent) != len(names):
            parts = ([f"missing {_listed(list(map(repr, missing)))}"] if missing else []) + \
                    ([f"unexpected {_listed(list(map(repr, extra)))}"] if extra else [])
            raise InvalidRequest("appended rows must have the dataset's schema "
                                 f"({_listed([f'{f.name}: {_type_text(f.type)}' for f in schema])}): "
                                 + ("; ".join(parts) or "a column is named twice"))
        table = table.select(names)
    columns, wrong = [], []
    for i, want in enumerate(schema):
        column = table.column(i)  # by place: the names are the dataset's now (and a name may be there twice)
        if not column.type.equals(want.type):
            if not _castable(column.type, want.type):
                wrong.append(f"{want.name!r} is {_type_text(column.type)}, the dataset's is "
                             f"{_type_text(want.type)}")
                continue
            if _other_lengths(column, want.type):
                wrong.append(f"{want.name!r} holds lists of other lengths than the dataset's "
                             f"{_type_text(want.type)}")
                continue
            try:
                column = column.cast(want.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                reason = str(exc).split("\n")[0][:200]
                if pa.types.is_dictionary(want.type):
                    reason = f"more distinct values than its {want.type.index_type} index numbers ({reason})"
                wrong.append(f"{want.name!r} ({_type_text(column.type)}) holds values the dataset's "
                             f"{_type_text(want.type)} cannot hold: {reason}")
                continue
        if not want.nullable and column.null_count:  # Parquet refuses the table then: a 500 after the checks
            wrong.append(f"{want.name!r} holds {column.null_count} null(s); the dataset's column holds none")
            continue
        columns.append(column)
    if wrong:
        raise InvalidRequest("appended rows must have the dataset's schema: " + "; ".join(wrong[:20])
                             + (f"; ... ({len(wrong) - 20} more columns)" if len(wrong) > 20 else "")
                             + " (send the values as the dataset holds them, or replace the rows: mode=replace)")
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata()) if columns else table


async def put_rows(deps: Deps, principal: Principal, token: str | None, cmd: PutDatasetRows) -> DatasetInfo:
    """Append to or replace a tabular dataset's rows; the result is stored as Parquet under its hash."""
    row = await _dataset(deps, principal, token, cmd.dataset_id)

    async def use(local: Path, _sha: str, _size: int) -> DatasetInfo:
        if row["kind"] != "tabular":
            raise InvalidRequest(f"dataset {cmd.dataset_id} is {a_dataset_of_kind(row['kind'])}: rows go to tabular"
                                 " datasets, files to images/files datasets (datasets/upload_file)")
        import pyarrow as pa  # here, not at the top: the idle service does without pyarrow (~30 MiB)
        import pyarrow.parquet as pq

        from shared.arrow_codec import from_ipc

        try:
            table = from_ipc(await asyncio.to_thread(local.read_bytes))
        except Exception:
            raise InvalidRequest("rows must be an Arrow IPC table (file or stream)") from None
        twice = sorted(n for n, times in collections.Counter(table.column_names).items() if times > 1)
        if twice:  # Parquet stores them, but no read can pick the column by name then ("Multiple matches")
            raise InvalidRequest(f"rows name a column more than once ({_listed(list(map(repr, twice)))}): a dataset's"
                                 " columns need names of their own; rename or drop the repeated ones")
        if cmd.mode == "append" and row["rows_sha256"]:
            stored_rows = await deps.objects.get_bytes(BUCKET_DATASETS, content_key(row["rows_sha256"]))

            def appended(sent: pa.Table) -> pa.Table:  # in a thread: a large dataset's read and casts take seconds
                existing = pq.read_table(io.BytesIO(stored_rows))
                return pa.concat_tables([existing, conform_appended(existing.schema, sent)])

            table = await asyncio.to_thread(appended, table)
        data = await asyncio.to_thread(_parquet, table)
        hold = await store.hold_object(deps.pool, hashlib.sha256(data).hexdigest())  # before it may find the object
        stored = await deps.objects.put_content_addressed(BUCKET_DATASETS, io.BytesIO(data))
        async with deps.pool.acquire() as conn, conn.transaction():
            await store.lock_project(conn, row["project_id"])  # first, as projects/delete: no deadlock with it
            if await store.dataset(conn, cmd.dataset_id) is None:  # deleted meanwhile: no change, no event
                raise NotFound(f"dataset {cmd.dataset_id} not found")
            await store.set_rows(conn, cmd.dataset_id, stored.sha256 if table.num_rows or table.num_columns else None,
                                 table.num_rows)
            await store.release_object(conn, hold)  # referred to now
            await _content_changed(conn, row["project_id"], row["workspace_id"])
            info = _dataset_info(await store.dataset(conn, cmd.dataset_id))
        deps.events_committed()
        return info

    return await _with_staged(deps, principal, cmd.staged_key, use)


async def rows(deps: Deps, principal: Principal, token: str | None, dataset_id: int) -> DatasetRows:
    row = await _dataset(deps, principal, token, dataset_id)
    if row["kind"] != "tabular":
        raise InvalidRequest(f"dataset {dataset_id} is {a_dataset_of_kind(row['kind'])}: it has files, not rows")
    return DatasetRows(dataset_id=dataset_id, row_count=row["row_count"], rows_sha256=row["rows_sha256"])


async def add_file(deps: Deps, principal: Principal, token: str | None, cmd: AddDatasetFile) -> DatasetFile:
    """Add (or replace by name) a file of an images/files dataset; images must be images."""
    row = await _dataset(deps, principal, token, cmd.dataset_id)

    async def use(local: Path, sha: str, size: int) -> DatasetFile:
        if row["kind"] == "tabular":
            raise InvalidRequest(f"dataset {cmd.dataset_id} is tabular: it takes rows (datasets/upload_rows), "
                                 "not files")
        if cmd.name in (".", ".."):  # a folder's name wherever the file is written out (the CLI's --download)
            raise InvalidRequest(f"a dataset file cannot be named {cmd.name!r}: give the file a name (name=...)")
        # an empty file is a file (a YOLO label file of an image without objects, a marker): refused only where an
        # image is wanted, as before for all kinds (workspace files took empty files already)
        if size == 0 and row["kind"] == "images":
            raise InvalidRequest("the uploaded file is empty: an images dataset takes images")
        if row["kind"] == "images":
            content_type = await asyncio.to_thread(_image_type, local)
        else:
            content_type = mimetypes.guess_type(cmd.name)[0] or "application/octet-stream"
        hold = await _keep(deps, local, sha)
        async with deps.pool.acquire() as conn, conn.transaction():
            await store.lock_project(conn, row["project_id"])  # first, as projects/delete: no deadlock with it
            if await store.dataset(conn, cmd.dataset_id) is None:  # deleted meanwhile (its insert: a foreign key error)
                raise NotFound(f"dataset {cmd.dataset_id} not found")
            stored = await store.put_dataset_file(conn, cmd.dataset_id, cmd.name, sha, size, content_type, cmd.labels)
            await store.release_object(conn, hold)  # referred to now
            await store.touch_dataset(conn, cmd.dataset_id)
            await _content_changed(conn, row["project_id"], row["workspace_id"])
        deps.events_committed()
        return _file_info(stored)

    return await _with_staged(deps, principal, cmd.staged_key, use)


async def _saved(deps: Deps, dataset: Any, version_id: int) -> tuple[Any, SavedDataset]:
    """(the version, the dataset as that version of its project saved it). The manifest names datasets, not ids: a
    version saved before this dataset was created is refused even when it holds an older dataset of the same name
    (deleted since), whose files are not this one's. Parsed once per version and dataset (deps.saved_files)."""
    version = await store.version_head(deps.pool, version_id)
    if version is None or version["project_id"] != dataset["project_id"]:  # another project's is not found either
        raise NotFound(f"version {version_id} is not a version of project {dataset['project_id']} (dataset "
                       f"{dataset['id']}'s): list its versions with projects/list_versions")
    early = NotFound(f"version {version_id} (number {version['number']}) of project {dataset['project_id']} has no "
                     f"dataset {dataset['name']!r}: it was saved before the dataset had been created")
    if version["created_at"] < dataset["created_at"]:
        raise early

    async def manifest_text() -> str:
        return await store.version_manifest(deps.pool, version_id) or '{"datasets": []}'

    found = await deps.saved_files.get(version_id, dataset["name"], version["created_at"], manifest_text)
    if found is None:
        raise early
    return version, found


async def saved_dataset(deps: Deps, principal: Principal, token: str | None, dataset_id: int,
                        version_id: int) -> SavedDatasetInfo:
    """That a version of the dataset's project holds the dataset, and how many files and rows it saved (a small
    answer whatever the dataset's size, for checking a dataset version someone names)."""
    row = await _dataset(deps, principal, token, dataset_id)
    version, found = await _saved(deps, row, version_id)
    return SavedDatasetInfo(dataset_id=dataset_id, version_id=version_id, number=version["number"],
                            file_count=len(found.files), row_count=found.row_count, saved_at=version["created_at"])


async def list_files(deps: Deps, principal: Principal, token: str | None, dataset_id: int,
                     version_id: int | None = None, *, limit: int | None = None,
                     cursor: str | None = None) -> DatasetFiles:
    """A dataset's files in name order: now, or as the project version `version_id` saved them; all of them, or
    the page of at most `limit` after `cursor` (file_pages.py)."""
    row = await _dataset(deps, principal, token, dataset_id)
    after = file_pages.name_of(cursor)
    wanted = limit + 1 if limit is not None else None  # one more than the page: whether another follows
    if version_id is not None:
        found = (await _saved(deps, row, version_id))[1]
        saved, names = found.files, found.names  # names: sorted once when the version was parsed (cached)
        if after is None and limit is None:
            return DatasetFiles(files=list(saved.values()))
        start = bisect.bisect_right(names, after) if after is not None else 0
        candidates = [saved[n] for n in names[start:start + wanted if wanted else None]]
    else:
        candidates = [_file_info(r) for r in await store.dataset_files_page(deps.pool, dataset_id, after, wanted)]
    return file_pages.page(candidates, limit, deps.page_bytes, deps.reply_bytes)


async def get_file(deps: Deps, principal: Principal, token: str | None, dataset_id: int, name: str,
                   version_id: int | None = None, *, labels: bool = True) -> DatasetFile:
    """One file of a dataset: now, or as the project version `version_id` saved it; without its labels when
    `labels` is false (download_file: a file whose labels pass the bus limit still downloads)."""
    row = await _dataset(deps, principal, token, dataset_id)
    if version_id is not None:
        found = (await _saved(deps, row, version_id))[1].files.get(name)
        if found is None:
            raise NotFound(f"dataset {dataset_id} had no file {name!r} in version {version_id}")
    else:
        stored = await store.dataset_file(deps.pool, dataset_id, name)
        if stored is None:
            raise NotFound(f"dataset {dataset_id} has no file {name!r}")
        found = _file_info(stored)
    return found if labels else found.model_copy(update={"labels": None})


async def delete_file(deps: Deps, principal: Principal, token: str | None, dataset_id: int, name: str) -> Deleted:
    row = await _dataset(deps, principal, token, dataset_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        await store.lock_project(conn, row["project_id"])  # first, as projects/delete: no deadlock with it
        deleted = await store.delete_dataset_file(conn, dataset_id, name)
        if not deleted:
            raise NotFound(f"dataset {dataset_id} has no file {name!r}")
        await _content_changed(conn, row["project_id"], row["workspace_id"])
    deps.events_committed()
    return Deleted(deleted=deleted)


# --- the workspace file space ----------------------------------------------------------------------------


def file_path(path: str) -> str:
    """A normalized file path: absolute, no '.', '..' or empty segments, no trailing slash."""
    if not path.startswith("/") or path.endswith("/") or len(path) > MAX_PATH or "\x00" in path:
        raise InvalidRequest(f"path {path!r} must start with '/', name a file (no trailing '/') and be at most"
                             f" {MAX_PATH} characters")
    parts = path.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidRequest(f"path {path!r} has an empty, '.' or '..' segment")
    return str(PurePosixPath(path))


def folder_path(folder: str) -> str:
    """A normalized folder: absolute and ending with '/' (given with or without it). Refused in a folder's words:
    file_path's "name a file (no trailing '/')" told a user listing folder 'models' to drop a slash they had
    not written."""
    if folder in ("", "/"):
        return "/"
    if not folder.startswith("/") or len(folder) > MAX_PATH or "\x00" in folder:
        raise InvalidRequest(f"folder {folder!r} must start with '/' (e.g. '/models/run1', '/' for the top), hold no"
                             f" NUL character and be at most {MAX_PATH} characters")
    inner = folder.rstrip("/")
    if not inner or any(p in ("", ".", "..") for p in inner.split("/")[1:]):
        raise InvalidRequest(f"folder {folder!r} has an empty, '.' or '..' segment")
    return inner + "/"


async def put_workspace_file(deps: Deps, principal: Principal, token: str | None,
                             cmd: PutWorkspaceFile) -> WorkspaceFile:
    require_user(principal)
    path = file_path(cmd.path)
    await _member(deps, principal, token, cmd.workspace_id)

    async def use(local: Path, sha: str, size: int) -> WorkspaceFile:
        hold = await _keep(deps, local, sha)
        claimed = 0
        async with deps.pool.acquire() as conn, conn.transaction():
            stored = await store.put_workspace_file(conn, cmd.workspace_id, path, sha, size)
            await store.release_object(conn, hold)  # referred to now
            # a model version uploaded with these bytes before the file was saved (its event drawn already)
            if await graph.file_saved(conn, cmd.workspace_id, path, sha):
                claimed = await store.claim_ready_evaluations(conn, cmd.workspace_id)
        if claimed:
            deps.wake_benchmarks()
        return WorkspaceFile(**dict(stored))

    return await _with_staged(deps, principal, cmd.staged_key, use)


async def workspace_file(deps: Deps, principal: Principal, token: str | None, workspace_id: int,
                         path: str) -> WorkspaceFile:
    require_user(principal)
    path = file_path(path)
    await _member(deps, principal, token, workspace_id)
    found = await store.workspace_file(deps.pool, workspace_id, path)
    if found is None:
        raise NotFound(f"no file {path!r} in workspace {workspace_id}")
    return WorkspaceFile(**dict(found))


async def list_workspace_files(deps: Deps, principal: Principal, token: str | None, workspace_id: int,
                               folder: str) -> WorkspaceFolder:
    require_user(principal)
    folder = folder_path(folder)
    await _member(deps, principal, token, workspace_id)
    files, folders = [], set()
    for row in await store.workspace_files_under(deps.pool, workspace_id, folder):
        rest = row["path"][len(folder):]
        if "/" in rest:
            folders.add(folder + rest.split("/")[0] + "/")
        else:
            files.append(WorkspaceFile(**dict(row)))
    return WorkspaceFolder(folder=folder, files=files, folders=sorted(folders))


async def delete_workspace_file(deps: Deps, principal: Principal, token: str | None, workspace_id: int,
                                path: str) -> Deleted:
    require_user(principal)
    path = file_path(path)
    await _member(deps, principal, token, workspace_id)
    deleted = await store.delete_workspace_file(deps.pool, workspace_id, path)
    if not deleted:
        raise NotFound(f"no file {path!r} in workspace {workspace_id}")
    return Deleted(deleted=deleted)


# --- project versions ------------------------------------------------------------------------------------


def _version_record(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "project_id": row["project_id"], "workspace_id": row["workspace_id"],
            "number": row["number"], "title": row["title"], "description": row["description"],
            "manifest_sha256": row["manifest_sha256"], "created_by": str(row["created_by"]),
            "created_at": row["created_at"]}


def _version_info(row: Any, created: bool = True) -> ProjectVersionInfo:
    return ProjectVersionInfo(**_version_record(row), created=created)


async def create_version(deps: Deps, principal: Principal, token: str | None,
                         cmd: CreateProjectVersion) -> ProjectVersionInfo:
    """Save the project's manifest as the next version, unless it equals the last version's (then that one)."""
    project = await _project(deps, principal, token, cmd.project_id)
    async with deps.pool.acquire() as conn, conn.transaction():
        await store.lock_project(conn, cmd.project_id)
        current = await current_manifest(conn, cmd.project_id)
        sha = manifest.digest(current)
        latest = await store.latest_version(conn, cmd.project_id)
        if latest is not None and latest["manifest_sha256"] == sha:
            return _version_info(latest, created=False)
        row = await store.insert_version(conn, cmd.project_id, project["workspace_id"], cmd.version_title,
                                         cmd.version_description, manifest.canonical(current), sha,
                                         uuid.UUID(principal.user_id))
        await graph.version_node(conn, project, row)
        await store.add_event(conn, subjects.EVENT_PROJECT_VERSION_CREATED, ProjectVersionCreated(
            workspace_id=project["workspace_id"], project_id=cmd.project_id, version_id=row["id"],
            number=row["number"], manifest_sha256=sha))
    deps.events_committed()
    return _version_info(row)


def _matches(row: Any, flt: VersionFilter) -> bool:
    value = row[flt.field]
    target = flt.value
    if flt.field == "created_by":
        value = str(value)
    if flt.field == "created_at" and flt.operator != "contains":
        target = [_filter_time(t) for t in target] if isinstance(target, list) else _filter_time(target)
    try:
        match flt.operator:
            case "=":
                return value == target
            case "!=":
                return value != target
            case "<":
                return value is not None and value < target
            case "<=":
                return value is not None and value <= target
            case ">":
                return value is not None and value > target
            case ">=":
                return value is not None and value >= target
            case "in":
                if not isinstance(target, list):
                    raise InvalidRequest("the 'in' operator needs a list value")
                return value in target
            case "contains":
                return value is not None and str(target).lower() in str(value).lower()
    except TypeError:
        raise InvalidRequest(f"filter value {target!r} cannot be compared with {flt.field}") from None
    return False


def _check_filter(flt: VersionFilter) -> None:
    """A filter whose value can never be the field's (number = "abc", title = 5) matched nothing and answered an
    empty list, as if the project had no such version; checked before any row (a project without versions too)."""
    values = flt.value if flt.operator == "in" and isinstance(flt.value, list) else [flt.value]
    if flt.operator == "in" and not isinstance(flt.value, list):
        raise InvalidRequest("the 'in' operator needs a list value")
    if flt.operator == "contains":
        return
    for value in values:
        if flt.field in ("id", "number") and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidRequest(f"filter on {flt.field} needs an integer, got {value!r}")
        if flt.field in ("title", "description", "created_by") and not isinstance(value, str) and \
                not (value is None and flt.operator in ("=", "!=", "in")):
            raise InvalidRequest(f"filter on {flt.field} needs a string, got {value!r}")
        if flt.field == "created_at":
            _filter_time(value)


def _filter_time(value: Any) -> Any:
    """A created_at filter's value as a UTC-aware time (the column's timestamptz): ISO 8601, a time without an offset
    ('2026-01-03', '2026-01-03T12:00') read as UTC, as the log routes read one. Compared as they were written, an
    `in` list's strings never equalled a time and a naive time matched nothing or could not be compared."""
    from datetime import UTC, datetime
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise InvalidRequest(f"filter on created_at needs an ISO 8601 time (e.g. '2026-01-03T12:00:00Z'), got "
                             f"{value!r}")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def list_versions(deps: Deps, principal: Principal, token: str | None,
                        cmd: ListProjectVersions) -> ProjectVersions:
    for flt in cmd.filters:
        _check_filter(flt)
    await _project(deps, principal, token, cmd.project_id)
    rows = await store.versions_of(deps.pool, cmd.project_id)
    # rows without create_version's `created`: a listed version was created by no call of the lister's
    return ProjectVersions(versions=[ProjectVersionRecord(**_version_record(r)) for r in rows
                                     if all(_matches(r, f) for f in cmd.filters)])


async def _version_of(deps: Deps, project_id: int, version_id: int | None, number: int | None) -> asyncpg.Record:
    if version_id is not None:
        row = await store.version(deps.pool, version_id)
        if row is None or row["project_id"] != project_id:
            raise NotFound(f"project {project_id} has no version {version_id}")
        return row
    row = await store.version_by_number(deps.pool, project_id, number)
    if row is None:
        raise NotFound(f"project {project_id} has no version number {number}")
    return row


async def _missing(deps: Deps, saved: dict[str, Any]) -> list[str]:
    """The manifest's entities whose objects are gone from storage (existence checks, EXISTS_AT_ONCE at a time)."""
    gate = asyncio.Semaphore(EXISTS_AT_ONCE)

    async def gone(sha: str) -> bool:
        async with gate:
            return not await deps.objects.exists(BUCKET_DATASETS, content_key(sha))

    entries = manifest.objects(saved)
    found = await asyncio.gather(*(gone(sha) for _, sha in entries))
    return [entity for (entity, _), is_gone in zip(entries, found, strict=True) if is_gone]


async def restore_version(deps: Deps, principal: Principal, token: str | None,
                          cmd: RestoreProjectVersion) -> ProjectRestored:
    """A new project holding the version's manifest: rows name the same objects, nothing is copied."""
    project = await _project(deps, principal, token, cmd.project_id)
    version = await _version_of(deps, cmd.project_id, cmd.version_id, cmd.version_num)
    saved = json.loads(version["manifest"])
    missing = await _missing(deps, saved)
    if missing and not cmd.skip_missed_entities:
        raise Conflict(f"{len(missing)} object(s) of version {version['number']} are missing from storage"
                       f" ({', '.join(missing[:5])}); restore with skip_missed_entities to leave them out")
    restored = manifest.without(saved, set(missing))
    name = cmd.name or f"{project['name']} (v{version['number']})"
    async with deps.pool.acquire() as conn, conn.transaction():
        row = await store.insert_project(conn, project["workspace_id"], name, project["description"],
                                         uuid.UUID(principal.user_id), version["id"])
        if row is None:
            # the name given, or the default one a restore before took: either way another name is the way out
            raise Conflict(f"workspace {project['workspace_id']} already has a project named {name!r}; "
                           + ("give another name" if cmd.name else "give the restored project a name (name)"))
        for dataset in restored["datasets"]:
            dataset_id = await store.insert_dataset(conn, row["id"], dataset["name"], dataset["kind"])
            if dataset["rows"]:
                await store.set_rows(conn, dataset_id, dataset["rows"]["sha256"], dataset["rows"]["count"])
            await store.put_dataset_files(conn, dataset_id, dataset["files"])
        await graph.restored_node(conn, version, row)
        info = await _project_info(conn, row)
        await store.add_event(conn, subjects.EVENT_PROJECT_CHANGED, ProjectChanged(
            workspace_id=info.workspace_id, project_id=info.id, action="restored", content_sha256=info.content_sha256))
    deps.events_committed()
    return ProjectRestored(project=info, version_id=version["id"], skipped=missing)


async def verify_version(deps: Deps, principal: Principal, token: str | None, version_id: int) -> VersionVerification:
    """Recompute a version's manifest hash and check its objects are all in storage."""
    require_user(principal)
    row = await store.version(deps.pool, version_id)
    if row is None:
        raise NotFound(f"version {version_id} not found")
    try:
        await _member(deps, principal, token, row["workspace_id"])
    except NotFound:
        raise NotFound(f"version {version_id} not found") from None
    saved = json.loads(row["manifest"])
    computed = hashlib.sha256(row["manifest"].encode()).hexdigest()
    missing = await _missing(deps, saved)
    return VersionVerification(version_id=version_id, manifest_sha256=row["manifest_sha256"],
                               computed_sha256=computed, ok=computed == row["manifest_sha256"] and not missing,
                               missing=missing)
