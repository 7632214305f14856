"""Business logic of the registry service, as plain async functions.

An upload arrives as bytes the gateway streamed to `staging/<user id>/<uuid>` in the artifacts bucket
(shared/staging.py). The registry takes it only from that user's command (anyone else: 403, the object neither read
nor deleted), checks the caller's membership, copies the bytes to a local temporary file while hashing them, checks
(or converts) them in a separate limited process (a check's answer is kept by sha256: the same bytes are checked
once per registry process, CheckCache), stores them content-addressed (`sha256/..`, once however
many versions share them) and records the version. The caller's staged object is always deleted, whatever
happens then, so a rejected upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from services.registry import store
from services.registry.worker import run_worker, run_worker_verdict
from shared import paging, subjects
from shared.authz import MembershipLookup, Principal, require_member, require_user
from shared.errors import InvalidRequest, NotFound, RailyardError, echo
from shared.messages.registry import (
    MissingModel,
    ModelConfig,
    ModelDetails,
    ModelExists,
    ModelInserted,
    ModelList,
    ModelLookup,
    ModelsFound,
    ModelsLookup,
    ModelSummary,
    ModelUploaded,
    ModelVersionFinished,
    ModelVersionRecord,
    ModelVersions,
    ModelWithVersions,
    ResolvedModel,
    ResolveModel,
    UploadModel,
)
from shared.objectstore import BUCKET_ARTIFACTS, ObjectStore, content_key
from shared.settings import RegistrySettings
from shared.staging import check_staged

log = logging.getLogger("railyard.registry")

MODEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
CHECKED = {"onnx", "python", "custom"}  # frameworks checked as they are and run natively
CONVERTED = {"sklearn", "xgboost"}  # frameworks converted to ONNX
ALIASES = {"byop": "custom", "arbitrary-python": "custom", "scikit-learn": "sklearn"}


CHECKS_AT_ONCE = 2


class CheckCache:
    """The sandboxed check's answers (accepted or rejected) by (framework, sha256 of the bytes), most recently used
    last, per registry process: a check is a sandboxed Python process importing onnx, onnxruntime and pyarrow,
    ~0.25-0.4 s of CPU, and the same bytes come again (new versions of a model, CI pipelines, the test suite).

    An answer depends on the bytes, the framework, the installed onnx/onnxruntime/pyarrow versions and the
    worker's limits; the last two are fixed for the life of the process, so (framework, sha256) is the whole key.
    Only the worker's verdict on the bytes is kept (`worker.answer_and_verdict`): a limit hit, a signal or no
    answer may depend on the load at the time and is asked again. Bounded by entries and by the characters of the
    answers kept (two Arrow schemas in base64, or a sentence: typically under 2 KB, at most 64 KiB each)."""

    def __init__(self, max_entries: int = 128, max_chars: int = 2 * 1024 * 1024) -> None:
        self.max_entries, self.max_chars = max_entries, max_chars
        self._answers: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._chars = 0
        # the checks under way by (framework, sha256): an upload of bytes being checked waits for that answer
        self._running: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}

    async def answer(self, framework: str, sha: str,
                     check: Callable[[], Awaitable[tuple[dict[str, Any], bool]]]) -> dict[str, Any]:
        """The check's answer on these bytes: kept from before, the answer of the check of the same bytes under
        way (concurrent uploads of one file, a CI pipeline's parallel jobs: one sandboxed check, not one each), or
        `check()`'s (answer, whether the bytes decided it: only then kept). A check that fails or whose upload
        goes away answers no one: the uploads waiting for it ask again (one of them checks)."""
        key = (framework, sha)
        while True:
            if (found := self.get(framework, sha)) is not None:
                return found
            running = self._running.get(key)
            if running is None:
                break
            await asyncio.wait([running])  # being cancelled here does not cancel the check
            if not running.cancelled():
                return dict(running.result())
        running = asyncio.get_running_loop().create_future()
        self._running[key] = running
        try:
            result, verdict = await check()
        except BaseException:
            running.cancel()
            raise
        finally:
            del self._running[key]
        if verdict:
            self.put(framework, sha, result)
        running.set_result(dict(result))
        return result

    def get(self, framework: str, sha: str) -> dict[str, Any] | None:
        found = self._answers.pop((framework, sha), None)
        if found is None:
            return None
        self._answers[(framework, sha)] = found  # most recently used
        return dict(found[0])

    def put(self, framework: str, sha: str, answer: dict[str, Any]) -> None:
        chars = sum(len(v) for v in answer.values() if isinstance(v, str))
        if chars > self.max_chars:
            return
        if (old := self._answers.pop((framework, sha), None)) is not None:
            self._chars -= old[1]
        self._answers[(framework, sha)] = (dict(answer), chars)
        self._chars += chars
        while len(self._answers) > self.max_entries or self._chars > self.max_chars:
            self._chars -= self._answers.pop(next(iter(self._answers)))[1]  # least recently used first

    def __len__(self) -> int:
        return len(self._answers)


@dataclass
class RegistryDeps:
    """What the registry handlers need."""

    pool: asyncpg.Pool
    objects: ObjectStore
    settings: RegistrySettings
    membership: Callable[[str | None], MembershipLookup]
    tasks: set[asyncio.Task] = field(default_factory=set)
    conversions: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    # uploads are handled several at once (nats.command_workers); each sandboxed check is a process of up to
    # worker_memory_mb, so at most CHECKS_AT_ONCE run together (the rest of an upload does not wait for them)
    checks: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CHECKS_AT_ONCE))
    checked: CheckCache = field(default_factory=CheckCache)  # the checks' answers by (framework, sha256)
    # the registry's events (a version's events.model.uploaded / version_finished, a registry's events.registry.changed)
    # are written to the outbox in the change's transaction (store.EVENT_TYPES); called after such a commit: the
    # outbox (app.py) sends them now
    events_committed: Callable[[], None] = lambda: None

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _answer_schemas(result: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """The input and output schemas of a worker's answer, or None if they are not Arrow schemas (the worker's
    answer is the user's code's to write once it has unpickled anything)."""
    import pyarrow as pa  # here, not at import: the idle service does without pyarrow and numpy (~40 MiB)

    try:
        schemas = base64.b64decode(result["input_schema"]), base64.b64decode(result["output_schema"])
        for raw in schemas:
            pa.ipc.read_schema(pa.py_buffer(raw))
    except (KeyError, TypeError, ValueError, pa.ArrowInvalid):
        return None
    return schemas


# --- uploads ------------------------------------------------------------------------------------------


def _decode_schema(value: str | None, what: str) -> bytes | None:
    if value is None:
        return None
    import pyarrow as pa  # (see _answer_schemas)

    try:
        raw = base64.b64decode(value, validate=True)
        pa.ipc.read_schema(pa.py_buffer(raw))
    except (ValueError, pa.ArrowInvalid):
        raise InvalidRequest(f"{what} must be a base64-encoded serialized Arrow schema") from None
    return raw


def _framework(cmd: UploadModel) -> str:
    framework = cmd.conversion.framework.strip().lower()
    framework = ALIASES.get(framework, framework)
    if framework not in CHECKED | CONVERTED:
        supported = ", ".join(sorted(CHECKED | CONVERTED))
        raise InvalidRequest(f"framework {cmd.conversion.framework!r} is not supported (supported: {supported})")
    return framework


async def upload_model(deps: RegistryDeps, principal: Principal, token: str | None, cmd: UploadModel) -> ModelInserted:
    """Check and record the caller's staged model file as a new version of `cmd.name`. Only the uploader may
    consume their staged file: a malformed key is 400 and another user's 403, before anything is read or deleted,
    so a failed membership (or any other) check deletes the caller's own upload only."""
    check_staged(cmd.staged_key, principal)
    try:
        return await _upload(deps, principal, token, cmd)
    finally:
        try:
            await deps.objects.delete(BUCKET_ARTIFACTS, cmd.staged_key)
        except Exception:  # the upload's outcome stands; a leftover staged object is only garbage
            log.warning("could not delete staged upload %s", cmd.staged_key)


async def _upload(deps: RegistryDeps, principal: Principal, token: str | None, cmd: UploadModel) -> ModelInserted:
    require_user(principal)
    if not MODEL_NAME.fullmatch(cmd.name):
        raise InvalidRequest(f"invalid model name {echo(cmd.name)}: use 1-63 ASCII letters, digits or dashes, starting"
                             " and ending with a letter or digit (DNS-compliant; '.' and '_' are not allowed)")
    framework = _framework(cmd)
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    input_schema = _decode_schema(cmd.input_schema or cmd.conversion.input_schema, "input_schema")
    output_schema = _decode_schema(cmd.output_schema or cmd.conversion.output_schema, "output_schema")
    if cmd.visibility not in ("public", "private"):
        raise InvalidRequest("visibility must be 'public' or 'private'")
    with tempfile.TemporaryDirectory(prefix="railyard-upload-") as folder:
        workdir = Path(folder) / "work"  # the sandboxed check's only writable directory
        workdir.mkdir()
        local = workdir / "model"
        try:
            sha, size = await deps.objects.download_to(BUCKET_ARTIFACTS, cmd.staged_key, local)
        except NotFound:
            raise InvalidRequest("the uploaded file was not found (upload it through models/upload_and_convert)"
                                 ) from None
        if size == 0:
            raise InvalidRequest("the uploaded file is empty")
        runtime = None
        if framework in CHECKED:
            result = await _check(deps, framework, sha, workdir, local)
            if not result["ok"]:
                raise InvalidRequest(f"{framework} model rejected: {result['error']}")
            runtime = framework  # onnx, python or custom: checked as they are, run as they are
            if framework == "onnx":
                schemas = _answer_schemas(result)
                if schemas is None:
                    raise InvalidRequest("onnx model rejected: its inputs and outputs could not be read")
                input_schema, output_schema = schemas
    key = content_key(sha)
    if not await deps.objects.exists(BUCKET_ARTIFACTS, key):
        await deps.objects.copy(BUCKET_ARTIFACTS, cmd.staged_key, key)
    model_version = uuid.uuid4()
    status = "ready" if framework in CHECKED else "converting"
    async with deps.pool.acquire() as conn, conn.transaction():
        model_id = await store.insert_version(
            conn, workspace_id=cmd.workspace_id, name=cmd.name, owner=uuid.UUID(principal.user_id),
            visibility=cmd.visibility, model_version=model_version, file_name=cmd.file_name, framework=framework,
            runtime=runtime, status=status, sha=sha if status == "ready" else None, source_sha=sha, size=size,
            input_schema=input_schema, output_schema=output_schema,
            conversion=cmd.conversion.model_dump(exclude={"input_schema", "output_schema"}),
        )
        await store.add_event(conn, subjects.EVENT_MODEL_UPLOADED, ModelUploaded(
            workspace_id=cmd.workspace_id, model_id=model_id, model_version=model_version, name=cmd.name,
            framework=framework, status=status, sha256=sha, task_id=principal.scoped_task))
    deps.events_committed()
    if status == "converting":
        deps.spawn(convert_version(deps, model_version, framework, sha, cmd.workspace_id, model_id))
    # the version this upload made, beside the seed's model id: a client finds it by it, not by its bytes' sha256 (a
    # converted version's is the converted bytes') nor as the newest (another upload of the name may be newer)
    return ModelInserted(insert_models={"returning": [{"models": [{"id": model_id,
                                                                   "model_version": str(model_version)}]}]})


async def _check(deps: RegistryDeps, framework: str, sha: str, workdir: Path, local: Path) -> dict[str, Any]:
    """The sandboxed check's answer on the uploaded bytes, from `deps.checked` when the same bytes (the sha256
    `download_to` computed while copying them) were checked as the same framework before or are being checked."""
    async def check() -> tuple[dict[str, Any], bool]:
        async with deps.checks:
            return await run_worker_verdict(deps.settings, framework, workdir, "inspect", framework, str(local))

    return await deps.checked.answer(framework, sha, check)


async def _convert(settings: RegistrySettings, framework: str, workdir: Path, source: Path,
                   target: Path) -> dict[str, Any]:
    """Convert in the sandbox, then check what it wrote afresh, as an uploaded ONNX file is checked: the process
    that wrote it ran the pickle's code, so its answer proves nothing."""
    try:
        result = await run_worker(settings, framework, workdir, "convert", framework, str(source), str(target))
        if result["ok"]:
            result = await run_worker(settings, "onnx", workdir, "inspect", "onnx", str(target))
    except RailyardError as exc:  # the sandbox is unavailable on this host: said once, in the version's error
        return {"ok": False, "error": exc.msg}
    if result["ok"] and _answer_schemas(result) is None:
        return {"ok": False, "error": "the converted model's inputs and outputs could not be read"}
    return result


async def convert_version(deps: RegistryDeps, model_version: uuid.UUID, framework: str, source_sha: str,
                          workspace_id: int, model_id: int) -> None:
    """Convert a version's uploaded file to ONNX in the limited worker; mark it ready or error."""
    async with deps.conversions:
        result: dict[str, Any]
        with tempfile.TemporaryDirectory(prefix="railyard-convert-") as folder:
            workdir = Path(folder) / "work"  # the sandboxed conversion's only writable directory
            workdir.mkdir()
            source, target = workdir / "source", workdir / "model.onnx"
            try:
                sha, _ = await deps.objects.download_to(BUCKET_ARTIFACTS, content_key(source_sha), source)
            except RailyardError as exc:
                sha, result = "", {"ok": False, "error": f"the uploaded file is gone: {exc.msg}"}
            else:
                if sha != source_sha:
                    result = {"ok": False, "error": "the stored upload does not match its sha256"}
                else:
                    result = await _convert(deps.settings, framework, workdir, source, target)
            event = ModelVersionFinished(
                workspace_id=workspace_id, model_id=model_id, model_version=model_version,
                status="ready" if result["ok"] else "error", error=None if result["ok"] else result["error"])
            if result["ok"]:
                input_schema, output_schema = _answer_schemas(result)
                with target.open("rb") as handle:
                    stored = await deps.objects.put_content_addressed(BUCKET_ARTIFACTS, handle)
                finished = await store.finish_version(
                    deps.pool, model_version, status="ready", error=None, sha=stored.sha256, runtime="onnx",
                    input_schema=input_schema, output_schema=output_schema, event=event)
            else:
                finished = await store.finish_version(
                    deps.pool, model_version, status="error", error=result["error"], sha=None, runtime=None,
                    input_schema=None, output_schema=None, event=event)
    if not finished:  # another registry process's conversion of it finished first (store.finish_version)
        log.info("conversion of %s: finished by another registry process first; its result stands", model_version)
        return
    deps.events_committed()
    log.info("conversion of %s finished: %s", model_version, "ready" if result["ok"] else result["error"])


async def resume_conversions(deps: RegistryDeps) -> None:
    """Conversions cut short by a restart start again."""
    for row in await store.converting_versions(deps.pool):
        deps.spawn(convert_version(deps, row["model_version"], row["framework"], row["source_sha"],
                                   row["workspace_id"], row["model_id"]))


# --- reading ------------------------------------------------------------------------------------------


def _ts(value) -> str:
    return value.isoformat()


async def _visible_model(deps: RegistryDeps, principal: Principal, token: str | None, model_id: int):
    row = await store.model(deps.pool, model_id)
    if row is None:
        raise NotFound(f"model {model_id} not found")
    try:
        await require_member(deps.membership(token), principal, row["workspace_id"])
    except NotFound:
        raise NotFound(f"model {model_id} not found") from None
    return row


def _version_record(row) -> ModelVersionRecord:
    return ModelVersionRecord(
        sha=row["sha"], models_pk_id=row["model_id"], model_version=str(row["model_version"]),
        owner_id=str(row["owner_id"]), model_id=row["name"], id=row["model_id"], file_name=row["file_name"],
        status=row["status"], framework=row["framework"], runtime=row["runtime"], error=row["error"])


async def list_models(deps: RegistryDeps, principal: Principal, token: str | None, workspace_id: int,
                      limit: int | None = None, cursor: str | None = None) -> ModelList:
    """A workspace's models, newest first: all of them, or a page (shared/paging.py; the cursor is the last id)."""
    before = paging.after(cursor, "models/list")
    await require_member(deps.membership(token), principal, workspace_id)
    rows = await store.models_in(deps.pool, workspace_id, before, None if limit is None else limit + 1)
    models, next_cursor = await paging.page(rows, limit, lambda r: ModelSummary(
        id=r["id"], name=r["name"], owner_id=str(r["owner_id"]), created_at=_ts(r["created_at"]),
        updated_at=_ts(r["updated_at"])))
    return ModelList(models=models, next_cursor=next_cursor)


async def get_model_by_id(deps: RegistryDeps, principal: Principal, token: str | None, model_id: int) -> ModelDetails:
    row = await _visible_model(deps, principal, token, model_id)
    return ModelDetails(id=row["id"], owner_id=str(row["owner_id"]), workspace_id=row["workspace_id"],
                        name=row["name"], updated_at=_ts(row["updated_at"]), created_at=_ts(row["created_at"]),
                        model_config=json.loads(row["model_config"]) if row["model_config"] else None)


async def list_versions(deps: RegistryDeps, principal: Principal, token: str | None, models_pk_id: int,
                        name: str | None, limit: int | None = None, cursor: str | None = None,
                        order: str = "oldest") -> ModelVersions:
    """A model's versions, oldest first (the seed's order) or newest first (`order` "newest": the latest version is
    one row, not the last of every page): all of them, or a page (shared/paging.py; the cursor is the last version's
    row id)."""
    after = paging.after(cursor, "models/list_versions")
    row = await _visible_model(deps, principal, token, models_pk_id)
    if name is not None and name != row["name"]:
        raise NotFound(f"model {models_pk_id} is not named {name!r}")
    rows = await store.versions(deps.pool, models_pk_id, after, None if limit is None else limit + 1,
                                newest_first=order == "newest")
    versions, next_cursor = await paging.page(rows, limit, _version_record, lambda v: str(v["version_pk"]))
    return ModelVersions(versions=versions, next_cursor=next_cursor)


async def get_model_config(deps: RegistryDeps, principal: Principal, token: str | None, model_id: int) -> ModelConfig:
    row = await _visible_model(deps, principal, token, model_id)
    return ModelConfig(model_config=json.loads(row["model_config"]) if row["model_config"] else None)


async def _unresolved(deps: RegistryDeps, cmd: ResolveModel, version: uuid.UUID | None) -> str:
    """Why no version matched, as far as the caller's workspace shows it: a model and version that exist with
    another sha were answered "not found in the workspace" before, which sent the user looking for a model that is
    there (a definition copied with a stale or mistyped sha)."""
    named = echo(cmd.name) if cmd.name is not None else f"id {cmd.model_id}"
    if cmd.sha is not None:
        other = await store.find_version(deps.pool, cmd.workspace_id, cmd.name, version, None, cmd.model_id)
        if other is not None:
            if version is None:
                found = f"no version of model {named} has sha {echo(cmd.sha)}"
            elif other["sha"] is None:  # converting (its sha is its converted bytes'), or its conversion failed
                why = ("yet (it is converting: its sha is the converted file's, known once it is ready)"
                       if other["status"] == "converting" else "(its conversion failed)")
                found = f"model {named} version {other['model_version']} has no sha {why}, not {echo(cmd.sha)}"
            else:
                found = f"model {named} version {other['model_version']} has sha {other['sha']}, not {echo(cmd.sha)}"
            return f"{found}: give the version's sha as models/list_versions lists it, or leave sha out"
    if version is not None and await store.find_version(deps.pool, cmd.workspace_id, cmd.name, None, None,
                                                         cmd.model_id) is not None:
        return f"model {named} has no version {version} in the workspace (models/list_versions lists its versions)"
    return f"model {named} (version {cmd.version or 'latest'}) not found in the workspace"


async def resolve_model(deps: RegistryDeps, principal: Principal, token: str | None,
                        cmd: ResolveModel) -> ResolvedModel | ModelExists:
    """A ready version (ResolvedModel; one not ready is a 400 naming its status), or with a ModelLookup's
    `exists_only` the version in any status (ModelExists: the deployer's pipelines/create checks that its definition's
    models exist, and a model uploaded a moment ago may still be converting). Only the caller's workspace is looked
    in: a model of another workspace is not found, as one that does not exist (the same 404 and words)."""
    if cmd.name is None and cmd.model_id is None:
        raise InvalidRequest("give the model's name (or its id, model_id)")
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    try:
        version = uuid.UUID(cmd.version) if cmd.version else None
    except ValueError:
        raise InvalidRequest(f"version must be a model version UUID, got {echo(cmd.version)}") from None
    row = await store.find_version(deps.pool, cmd.workspace_id, cmd.name, version, cmd.sha, cmd.model_id)
    if row is None:
        raise NotFound(await _unresolved(deps, cmd, version))
    if isinstance(cmd, ModelLookup) and cmd.exists_only:
        return ModelExists(model_id=row["model_id"], name=row["name"], model_version=str(row["model_version"]),
                           status=row["status"])
    if row["status"] != "ready":
        raise InvalidRequest(f"model {row['name']!r} version {row['model_version']} is {row['status']}"
                             + (f": {row['error']}" if row["error"] else ""))
    b64 = base64.b64encode
    return ResolvedModel(
        model_id=row["model_id"], name=row["name"], model_version=str(row["model_version"]), sha=row["sha"],
        runtime=row["runtime"], framework=row["framework"],
        input_schema=b64(row["input_schema"]).decode() if row["input_schema"] else None,
        output_schema=b64(row["output_schema"]).decode() if row["output_schema"] else None)


async def models_exist(deps: RegistryDeps, principal: Principal, token: str | None,
                       cmd: ModelsLookup) -> ModelsFound:
    """Which of a definition's model references the workspace does not have (registry.models.exist): one membership
    check and one query for them all, where the deployer sent one resolve with exists_only each (a definition of
    ~4,000 references was a 504). Found is what resolve_model's exists_only finds (a version in any status, in the
    caller's workspace only); a missing one is said why in resolve's 404 words, the first `explained` of them (a
    version that is no UUID in its 400's), the others counted only."""
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    versions: list[uuid.UUID | None] = []
    bad: dict[int, str] = {}
    for index, ref in enumerate(cmd.models):
        try:
            versions.append(uuid.UUID(ref.version) if ref.version else None)
        except ValueError:
            versions.append(None)
            bad[index] = f"version must be a model version UUID, got {echo(ref.version)}"
    places = [index for index in range(len(cmd.models)) if index not in bad]
    asked = [(cmd.models[index].name, versions[index], cmd.models[index].sha) for index in places]
    found = {places[i] for i in await store.versions_exist(deps.pool, cmd.workspace_id, asked)} if asked else set()
    missing: list[MissingModel] = []
    for index, (ref, version) in enumerate(zip(cmd.models, versions, strict=True)):
        if index in found:
            continue
        why = None
        if len(missing) < cmd.explained:
            why = bad.get(index) or await _unresolved(deps, ResolveModel(
                workspace_id=cmd.workspace_id, name=ref.name, version=ref.version, sha=ref.sha), version)
        missing.append(MissingModel(index=index, why=why))
    return ModelsFound(missing=missing)


async def get_model(deps: RegistryDeps, principal: Principal, token: str | None, model_id: int) -> ModelWithVersions:
    row = await _visible_model(deps, principal, token, model_id)
    return ModelWithVersions(
        id=row["id"], name=row["name"], owner_id=str(row["owner_id"]), created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]),
        models=[_version_record(v) for v in await store.versions(deps.pool, model_id)])
