"""Business logic of the deployer service, as plain async functions: pipelines and their versions,
deployments and their engine replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from services.deployer import store
from services.deployer.backend import KEPT_FAILED_FOR, KEPT_FAILED_MAX, LocalBackend
from services.engine.logpolicy import check_batching, check_log_policy
from shared import db, paging, subjects
from shared.authz import (
    MembershipLookup,
    Principal,
    deployment_not_found,
    require_inference_access,
    require_member,
    require_user,
)
from shared.background import BackgroundTask
from shared.bus import PublishRefused, publish_refusals, request
from shared.data_errors import database_retryable
from shared.errors import (
    ECHO_CHARS,
    Conflict,
    InvalidRequest,
    NotFound,
    RailyardError,
    Unavailable,
    UpstreamTimeout,
    echo,
)
from shared.messages.base import INT64
from shared.messages.deployer import (
    CopyPipeline,
    CreatePipeline,
    Deployed,
    DeploymentRoute,
    DeploymentStatus,
    DeployPipeline,
    ExternalUrl,
    ModelRef,
    PipelineCopied,
    PipelineCreated,
    PipelineDeployed,
    PipelineRecord,
    Pipelines,
    PipelineServing,
    PipelineUndeployed,
    PipelineVersionCreated,
)
from shared.messages.engine import ReplicaDeployment, ReplicaSpec, ReplicaStep
from shared.messages.registry import (
    MODELS_LOOKED_UP_AT_ONCE,
    ModelExists,
    ModelLookup,
    ModelReference,
    ModelsFound,
    ModelsLookup,
    ResolvedModel,
    ResolveModel,
)
from shared.settings import COPY_STEPS_TAKE, Settings, deploy_wait

RESTORE_CONCURRENCY = 2
DEPLOYMENT_FAILED = "deployment_failed"  # the 503's code for a deployment whose restore failed
SERVING_CHANGED = "serving_changed"  # the 409's code for a deploy whose only_if_serving does not serve (_activate)
UNDEPLOY_LOCK_WAIT = 0.5  # of the request timeout: an undeploy waits this long for a deploy of its pipeline, then 409
log = logging.getLogger("railyard.deployer")
NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
STEP_KINDS = {"ModelInference", "ShadowDeploy", "RandomSplit"}


@dataclass
class DeployerDeps:
    """What the deployer handlers need."""

    pool: asyncpg.Pool
    broker: Any
    backend: LocalBackend
    membership: Callable[[str | None], MembershipLookup]
    public_url: str
    timeout: float
    # the events of a change are written to the outbox in its transaction (store.EVENT_TYPES); called after such a
    # commit: the outbox (app.py) sends them now
    events_committed: Callable[[], None] = lambda: None
    changing: weakref.WeakValueDictionary[int, PipelineLock] = field(default_factory=weakref.WeakValueDictionary)
    # active deployments whose restore after a restart failed (name -> reason): nothing runs for them until a deploy
    # or an undeploy (docs/inference.md); kept in memory, as the replica sets are, so a later restart tries again
    failed_restores: dict[str, str] = field(default_factory=dict)
    # deployments serving whose deployed event's write failed: written again in the background (OwedDeployed)
    owed: OwedDeployed = field(default_factory=lambda: OwedDeployed())
    # failed first deploys whose clean-up the database did not take, and deploys whose activation's commit did not
    # answer: their rows made inactive in the background
    deactivations: Deactivations = field(default_factory=lambda: Deactivations())
    # redeploys whose record's outcome nothing could tell: what runs made what the row names, in the background
    rechecks: RecordRechecks = field(default_factory=lambda: RecordRechecks())
    # seconds a deploy waits for the pipeline's lock (_deploy_lock): app.py's from the settings (deploy_lock_wait)
    lock_wait: float = field(default_factory=lambda: deploy_lock_wait(Settings()))
    # seconds a deploy answers within, counted from its command's start (deploy_answers_within): app.py's from the
    # settings
    deploy_within: float = field(default_factory=lambda: deploy_answers_within(Settings()))

    def pipeline_lock(self, pipeline_id: int) -> PipelineLock:
        """One deploy or undeploy of a pipeline at a time in this process. Commands are handled several at once
        (nats.command_workers), and the replica sets live in this process's memory (LocalBackend.sets): two deploys
        of one pipeline interleaved could leave the older version's replicas serving, or orphan the newer ones,
        while the database names the other. The advisory lock in store.py covers only the rows."""
        lock = self.changing.get(pipeline_id)
        if lock is None:
            lock = self.changing[pipeline_id] = PipelineLock()
        return lock


class PipelineLock:
    """A pipeline's lock (DeployerDeps.pipeline_lock): an asyncio.Lock that also counts the tasks holding it or waiting
    for it, so that the background write of an owed deployed event can take it only when nobody does (try_acquire).
    asyncio.Lock has no try-acquire: its locked() is false for a lock just released to a waiter that has not run yet,
    and an acquire() then queues behind that waiter. Before, the owed write read asyncio.Lock's private `_waiters`."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._users = 0  # tasks in acquire() or holding the lock

    @property
    def waiting(self) -> int:
        """Tasks waiting in acquire() (the one the lock was just released to among them, until it runs)."""
        return self._users - self._lock.locked()

    def locked(self) -> bool:
        return self._lock.locked()

    async def acquire(self) -> bool:
        self._users += 1
        try:
            return await self._lock.acquire()
        except BaseException:  # cancelled (the undeploy's wait_for): asyncio.Lock passes the lock on itself
            self._users -= 1
            raise

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it or waits for it (True), else leave it at once (False). Nobody counted:
        the lock is free with no waiter, which asyncio.Lock.acquire() takes without waiting."""
        if self._users:
            return False
        return await self.acquire()

    def release(self) -> None:
        self._users -= 1
        self._lock.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


def deployed_event(deployment_id: int, name: str, pipeline_id: int, workspace_id: int,
                   pipeline_version: Any, pipeline_name: str | None = None) -> PipelineDeployed:
    """The deployment's events.pipeline.deployed: the one place it is built, for the deploy whose replicas serve, the
    restore that writes one owed, the undeploy writing one owed first (store.deactivate) and the background write
    (OwedDeployed). `pipeline_version`: the deployed version's UUID (a uuid.UUID or its text); `pipeline_name`: the
    name its replicas write in their log batches' header (a pipeline's name never changes), which the log store
    checks."""
    return PipelineDeployed(deployment_id=deployment_id, name=name, pipeline_id=pipeline_id, workspace_id=workspace_id,
                            pipeline_version=str(pipeline_version), pipeline_name=pipeline_name)


def _deployed_event_of(row: Any) -> PipelineDeployed:
    """deployed_event of a store.deployment / store.active_deployments row (its name from deploy_id and id)."""
    return deployed_event(row["id"], f"{row['deploy_id']}-{row['id']}", row["pipeline_id"], row["workspace_id"],
                          row["pipeline_version"], row.get("pipeline_name"))


async def owed_before(conn: asyncpg.Connection, existing: dict[str, Any] | None, pipeline, *,
                      serving: bool) -> None:
    """Before a deploy makes a new activation of the pipeline's deployment (store.activate_deployment, or a redeploy
    of a serving one recording its new row), in its transaction: the deployed event the row still owes for its
    current activation (`existing`, as store.pipeline_deployment read it) is written when that activation's replicas
    served: `serving` (they serve now) or the row says they did (`served`: its event's write failed, and the restore
    after a restart failed since). The new activation owes its own. Before, the new activation cleared what the row
    owed, and lineage never heard of a deployment that served and answered inferences."""
    if existing is None or not (existing["active"] and existing["deployed_pending"]):
        return
    if not (serving or existing.get("served")):  # never seen serving (its deployer died while the replicas loaded)
        return
    version = await store.version(conn, existing["pipeline_version_id"])
    await store.record_deployed(conn, deployed_event(existing["id"], f"{existing['deploy_id']}-{existing['id']}",
                                                     pipeline["id"], pipeline["workspace_id"], version["version"],
                                                     pipeline.get("name")))


async def _owe(deps: DeployerDeps, pipeline_id: int, event: PipelineDeployed) -> None:
    """The deployment serves but the write of its deployed event failed: the row says it served (store.mark_served,
    its own commit; if that fails too the background write marks it) and the event is written in the background
    (OwedDeployed). Under the pipeline's lock."""
    async def mark(conn: asyncpg.Connection) -> None:
        await store.mark_served(conn, event.deployment_id)

    try:  # bounded as a deploy's steps (_deploy_step): a deploy waits for it
        await _answered_within(deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN, _in_transaction(deps, mark))
    except Exception as exc:
        log.warning("deployment %s: not marked as served yet (%r)", event.name, exc)
    deps.owed.owe(deps, pipeline_id, event)


def _check_name(name: str, what: str) -> None:
    if not NAME.fullmatch(name):
        raise InvalidRequest(f"invalid {what} {echo(name)}: use 1-63 ASCII letters, digits or dashes, starting and"
                             " ending with a letter or digit (DNS-compliant; '.' and '_' are not allowed)")


def _step_models(step_kind: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The model references a step names, in order (champion first for shadow deploys)."""
    if step_kind == "ModelInference":
        return list(body.get("models") or [])
    if step_kind == "ShadowDeploy":
        return [body.get("champion")] + list(body.get("challengers") or [])
    return list(body.get("models") or [])


def _definition_models(definition: dict[str, Any]) -> list[dict[str, str | None]]:
    """Every model a (checked) definition names, as {name, version}, for the lineage graph."""
    found = []
    for step in definition.get("steps", []):
        kind, body = next(iter(step.items()))
        for model in _step_models(kind, body):
            version = model.get("version")
            found.append({"name": str(model["name"]), "version": str(version) if version else None})
    return found


def _check_definition(definition: dict[str, Any]) -> None:
    steps = definition.get("steps", [])
    if not isinstance(steps, list):
        raise InvalidRequest("definition.steps must be a list")
    for index, step in enumerate(steps):
        where = f"definition.steps[{index}]"
        if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in STEP_KINDS:
            raise InvalidRequest(f"{where} must be one of {sorted(STEP_KINDS)}")
        kind, body = next(iter(step.items()))
        if not isinstance(body, dict):
            raise InvalidRequest(f"{where}.{kind} must be an object")
        models = _step_models(kind, body)
        if not models or not all(isinstance(m, dict) and m.get("name") for m in models):
            raise InvalidRequest(f"{where}.{kind} must name its models (each with a name)")
        if kind == "ShadowDeploy" and not body.get("challengers"):
            raise InvalidRequest(f"{where}.ShadowDeploy needs a champion and at least one challenger")
        if kind == "RandomSplit":
            weights = body.get("weights")
            # finite, and a finite sum: [1e308, 1e308] add up to inf, and every request then went to the last model
            if not isinstance(weights, list) or len(weights) != len(models) or \
                    not all(isinstance(w, int | float) and 0 <= w < math.inf for w in weights) or \
                    not 0 < sum(weights) < math.inf:
                raise InvalidRequest(f"{where}.RandomSplit needs one non-negative, finite weight per model, not all "
                                     "zero, whose sum is finite")
            if body.get("hash_key") is not None and not isinstance(body["hash_key"], str):
                raise InvalidRequest(f"{where}.RandomSplit.hash_key must be a column name")


async def _reachable(deps: DeployerDeps, principal: Principal, token: str | None, row, missing: NotFound, *,
                     check_member: bool = True):
    """`row` (a pipeline's or a deployment's, with its workspace_id) if it exists and the caller is a member of its
    workspace (unless not `check_member`); else `missing`, the one answer for both, so a non-member learns nothing."""
    if row is None:
        raise missing
    if check_member:
        try:
            await require_member(deps.membership(token), principal, row["workspace_id"])
        except NotFound:
            raise missing from None
    return row


async def _pipeline_for(deps: DeployerDeps, principal: Principal, token: str | None, pipeline_id: int):
    return await _reachable(deps, principal, token, await store.pipeline(deps.pool, pipeline_id),
                            NotFound(f"pipeline {pipeline_id} not found"))


async def create_pipeline(deps: DeployerDeps, principal: Principal, token: str | None,
                          cmd: CreatePipeline) -> PipelineCreated:
    require_user(principal)
    _check_name(cmd.pipeline_id, "pipeline name")
    _check_definition(cmd.definition)
    refs = _definition_refs(cmd.definition)
    looked_up_by = asyncio.get_running_loop().time() + deps.timeout * MODEL_LOOKUPS_WITHIN

    async def create() -> PipelineCreated:
        await require_member(deps.membership(token), principal, cmd.workspace_id)
        # every model the definition names exists in the workspace, before anything is written: before, a typo or
        # a model of another workspace made a version all the same, and its deploy was the 404
        await _check_models_exist(deps, token, cmd.workspace_id, cmd.pipeline_id, refs, looked_up_by)
        return await _create_version(deps, principal, cmd.workspace_id, cmd.pipeline_id, cmd.definition)

    # a write: given up on, its commit may still take effect; created again, the same definition makes no new version
    return await _created_in_time(deps, f"pipelines/create of {cmd.pipeline_id!r}", create(), maybe=(
        " (the version may have been created all the same: creating it again is safe, a definition the same as the"
        " pipeline's latest version's makes no new version)"))


MODEL_LOOKUPS_WITHIN = 0.5
"""Of the request timeout, counted from pipelines/create's start: its membership check and the registry's look-ups of
the definition's models end by then (a 504 naming the registry, nothing created), leaving what remains of its bound
(READ_ANSWERS_WITHIN) to its write."""
MODEL_LOOKUPS_AT_ONCE = 8  # look-ups under way at once: registry.models.exist's batches, or (a registry before it) one
# per distinct model reference
MISSING_NAMED = 10  # the missing references a create's 400 names one by one (then how many more)
MODELS_EXIST_REFUSED_FOR = 60.0
"""Seconds after the bus refused the deployer registry.models.exist (a NATS server still on the permissions of the
release before it) during which creates ask one registry.models.resolve per reference without trying it first."""


def _definition_refs(definition: dict[str, Any]) -> dict[tuple[str, str | None, str | None], str]:
    """Each distinct model reference (name, version, sha) a checked definition names, with where it is named first
    (`definition.steps[i].Kind`). A name, version or sha that is not a string is a 400 (the registry looks them up as
    text; before, the deploy's look-up failed on it)."""
    refs: dict[tuple[str, str | None, str | None], str] = {}
    for index, step in enumerate(definition.get("steps", [])):
        kind, body = next(iter(step.items()))
        where = f"definition.steps[{index}].{kind}"
        for model in _step_models(kind, body):
            ref = (model["name"], model.get("version"), model.get("sha"))
            for field_name, value in zip(("name", "version", "sha"), ref, strict=True):
                if value is not None and not isinstance(value, str):
                    raise InvalidRequest(f"{where}: a model's {field_name} must be a string, not {_json_kind(value)}")
            refs.setdefault(ref, where)
    return refs


def _json_kind(value: Any) -> str:
    """What JSON calls `value`'s type (a message about a body names its types, not Python's)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return {dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


async def _look_up_model(deps: DeployerDeps, token: str | None, workspace_id: int, name: str, version: str | None,
                         sha: str | None, by: float, *, since: str) -> str | None:
    """None when the workspace has the model version (in any status: one uploaded a moment ago may still be
    converting, registry.models.resolve's exists_only), else why not, in the registry's words (a 404's: another sha,
    no such version, no such model; or a 400's: a version that is no UUID). A model of another workspace is not
    found, as one that does not exist. Answered by the loop time `by` (counted from `since`, as the 504 says).

    A registry of the release before exists_only (a rolling update) refuses the field as unknown (its 400
    "exists_only: Extra inputs are not permitted"), which was read as the model missing: every create naming a
    model a 400 until the registry was updated. It is asked again as a deploy asks (ResolveModel): its 404 is
    missing, its 400 for a version not ready ("... is converting") says the version exists."""
    loop = asyncio.get_running_loop()
    try:
        await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ModelLookup(
            workspace_id=workspace_id, name=name, version=version, sha=sha, exists_only=True), token=token,
            timeout=by - loop.time(), reply_model=ModelExists)
    except (NotFound, InvalidRequest) as exc:
        if not (isinstance(exc, InvalidRequest) and exc.msg.startswith("exists_only:")):
            return exc.msg
    else:
        return None
    if by - loop.time() <= 0:
        raise UpstreamTimeout(f"not ended within {deps.timeout * MODEL_LOOKUPS_WITHIN:g}s of {since}")
    try:
        await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
            workspace_id=workspace_id, name=name, version=version, sha=sha), token=token,
            timeout=by - loop.time(), reply_model=ResolvedModel)
    except NotFound as exc:
        return exc.msg
    except InvalidRequest as exc:  # not ready (it exists), or a version that is no UUID
        return exc.msg if exc.msg.startswith("version must be") else None
    return None


async def _check_models_exist(deps: DeployerDeps, token: str | None, workspace_id: int, pipeline: str,
                              refs: dict[tuple[str, str | None, str | None], str], by: float, *,
                              verb: str = "create", since: str = "the create's start") -> None:
    """pipelines/create's check of its definition's models (_definition_refs): registry.models.exist for up to
    MODELS_LOOKED_UP_AT_ONCE distinct references a request (before, one registry.models.resolve each, 8 at a time: a
    definition naming ~4,000 models, what 64 KiB holds, passed the bound and was a 504), all ended by the loop time
    `by`; every reference the workspace does not have is named in one 400 invalid_request (so a definition is fixed
    in one go), and nothing is written. A registry that does not answer in time is a 504, one that cannot be asked a
    503: nothing created either. A registry of the release before registry.models.exist (nobody answers it: a 503)
    is asked one reference at a time, MODEL_LOOKUPS_AT_ONCE at once, as before; so is one the bus does not let the
    deployer ask it (a NATS server still on the permissions of the release before: a rolling update, a ConfigMap
    rolling, docker-compose not recreating NATS), known from the server's permissions violation as soon as it
    arrives (PublishRefusals), and for MODELS_EXIST_REFUSED_FOR after it without asking. Before, that publish was
    dropped and every create or copy naming a model was a 504 at the bound. pipelines/copy (`verb` "copy", its
    bound counted from `since`) checks the copied definition in its target workspace alike."""
    if not refs:
        return
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(MODEL_LOOKUPS_AT_ONCE)
    listed = list(refs)

    def time_left() -> float:
        left = by - loop.time()
        if left <= 0:  # the membership check and the look-ups before it took the time: this one is not sent
            raise UpstreamTimeout(f"not ended within {deps.timeout * MODEL_LOOKUPS_WITHIN:g}s of {since}")
        return left

    refusals = publish_refusals(deps.broker)

    async def batch(start: int) -> list[str | None]:
        chunk = listed[start:start + MODELS_LOOKED_UP_AT_ONCE]
        async with gate:
            asked = request(deps.broker, subjects.REGISTRY_MODELS_EXIST, ModelsLookup(
                workspace_id=workspace_id, models=[ModelReference(name=n, version=v, sha=s) for n, v, s in chunk],
                explained=MISSING_NAMED), token=token, timeout=time_left(), reply_model=ModelsFound)
            # a refused publish (PublishRefused, an Unavailable) ends at once, not at the bound as a 504
            found = await (refusals.unless_refused(asked, subjects.REGISTRY_MODELS_EXIST) if refusals else asked)
        answers: list[str | None] = [None] * len(chunk)
        for gone in found.missing:
            if not 0 <= gone.index < len(chunk):
                raise Unavailable(f"registry answered about model reference {gone.index} of {len(chunk)} asked")
            # each batch says why for its first MISSING_NAMED missing: the 400 names no other (past them, counted)
            answers[gone.index] = gone.why or "not found in the workspace"
        return answers

    async def look(ref: tuple[str, str | None, str | None]) -> str | None:
        async with gate:
            time_left()
            return await _look_up_model(deps, token, workspace_id, *ref, by=by, since=since)

    async def gathered(looks: list[asyncio.Future]) -> list[Any]:
        try:
            return await asyncio.gather(*looks)
        finally:
            for pending in looks:
                pending.cancel()

    try:
        try:
            if refusals and refusals.refused_within(subjects.REGISTRY_MODELS_EXIST, MODELS_EXIST_REFUSED_FOR):
                raise PublishRefused("refused lately")  # not asked again: the one-by-one look-ups below
            answers = [answer for answered in await gathered([asyncio.ensure_future(batch(start)) for start in range(
                0, len(listed), MODELS_LOOKED_UP_AT_ONCE)]) for answer in answered]
        except Unavailable:  # nobody answers registry.models.exist (a registry of the release before), or none runs,
            # or the bus refuses it to the deployer (a NATS server still on the release before's permissions). Or the
            # registry answered it 503 (its database away), which the bus does not tell apart: the first reference is
            # asked alone, and a registry that cannot answer ends the create at once, after one look-up rather than
            # MODEL_LOOKUPS_AT_ONCE (each a request the registry answered 503 again)
            answers = [await look(listed[0])]
            answers += await gathered([asyncio.ensure_future(look(ref)) for ref in listed[1:]])
    except (UpstreamTimeout, Unavailable) as exc:
        raise type(exc)(f"pipelines/{verb} of {pipeline!r}: the definition's models could not be looked up "
                        f"({exc.msg}); nothing was created: {verb} it again", code=exc.code) from None
    missing = [f"{where}: {why}" for (ref, where), why in zip(refs.items(), answers, strict=True) if why]
    if missing:
        more = f"; and {len(missing) - MISSING_NAMED} more" if len(missing) > MISSING_NAMED else ""
        raise InvalidRequest(
            f"the definition names {len(missing)} model version{'s' if len(missing) > 1 else ''} the workspace does "
            f"not have, so nothing was created: {'; '.join(missing[:MISSING_NAMED])}{more}. Upload the model "
            "(models/upload_and_convert) or correct the reference's name, version or sha (models/list lists the "
            f"workspace's models, models/list_versions their versions), then {verb} the pipeline again")


async def _created_in_time(deps: DeployerDeps, what: str, work: Coroutine[Any, Any, _T], *, maybe: str) -> _T:
    """_answered_in_time of a command that creates a pipeline version (pipelines/create, pipelines/copy): given up on,
    its transaction is left to end (shared.db.within), and when it ends the outbox is woken (events_committed): its
    commit may have landed with the version's events.pipeline.version_created, which otherwise waited for the
    outbox's idle round (60 s; _create_version's own wake is never reached by the cancelled work). Work that failed
    (a connection lost once its COMMIT was sent: a 503 too) may have committed as well: the outbox is woken at once.
    Before (review r1), only work given up on woke it: the failed one had ended, its `finally` run, before the
    command knew to ask."""
    left = ended = False

    async def woken_if_left() -> _T:
        nonlocal ended
        try:
            return await work
        finally:  # also cancelled (given up on): run once its transaction ended, committed or not
            ended = True
            if left:
                deps.events_committed()

    try:
        return await _answered_in_time(deps, what, woken_if_left(), maybe=maybe)
    except Unavailable:
        if ended:  # failed: its finally ran before this
            deps.events_committed()
        else:  # given up on: the work is cancelled, and runs on, in a later step of the loop
            left = True
        raise


async def _create_version(deps: DeployerDeps, principal: Principal, workspace_id: int, name: str,
                          definition: dict[str, Any], *, new_name: bool = False) -> PipelineCreated:
    """The workspace's pipeline `name` with `definition` as its latest version, under the name's advisory lock
    (store.PIPELINE_NAME_LOCK): a name taken is a new version, or with `new_name` (a copy) a 409."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await store.lock_pipeline_name(conn, workspace_id, name)
        if new_name and await store.pipeline_by_name(conn, workspace_id, name) is not None:
            raise Conflict(f"a pipeline named {name!r} already exists in the workspace")
        pipeline_id, version_id, version, created = await store.create_pipeline_version(
            conn, workspace_id, name, uuid.UUID(principal.user_id), definition)
        if created:  # with the version, in its transaction (the outbox sends it)
            await store.add_event(conn, subjects.EVENT_PIPELINE_VERSION_CREATED, PipelineVersionCreated(
                pipeline_id=pipeline_id, workspace_id=workspace_id, name=name,
                pipeline_version=str(version), models=_definition_models(definition)))
    if created:
        deps.events_committed()
    return PipelineCreated(pipeline_pk_id=pipeline_id, pipeline_variant_pk_id=version_id,
                           pipeline_variant_version=str(version))


async def copy_pipeline(deps: DeployerDeps, principal: Principal, token: str | None,
                        cmd: CopyPipeline) -> PipelineCopied:
    # with `deploy`, the whole copy ends by what its caller waits (shared.settings.copy_wait: a deploy's wait and
    # COPY_STEPS_TAKE of the request timeout for the copy's create and its rows' read), counted from here, as a
    # deploy's (deploy): before, its deploy was bounded by each step only, and its caller (the gateway's 70 s: the
    # request timeout twice and ready_timeout) got a 504 while it went on, its replicas given their whole
    # ready_timeout after the copy's read, lookups, create and first step
    started = asyncio.get_running_loop().time()
    extra = COPY_STEPS_TAKE * deps.timeout

    async def read() -> Any:
        # the target workspace first: a non-member learns nothing of its pipeline names (409 vs 404)
        await require_member(deps.membership(token), principal, cmd.workspace_id)
        source = await _pipeline_for(deps, principal, token, cmd.source_pipeline)
        if not cmd.pipeline_version:
            return await store.latest_version(deps.pool, source["id"])
        try:
            wanted = uuid.UUID(cmd.pipeline_version)
        except ValueError:
            raise InvalidRequest("pipeline_version must be a version UUID") from None
        found = await store.version_by_uuid(deps.pool, source["id"], wanted)
        if found is None:
            raise NotFound(f"version {cmd.pipeline_version} of pipeline {source['id']} not found")
        return found

    # bounded as pipelines/get's reads and pipelines/create's write (READ_ANSWERS_WITHIN, a 503): before, a database
    # that stopped answering held the copy until it answered again, its caller's 504 long gone
    what = f"pipelines/copy of pipeline {cmd.source_pipeline} as {cmd.name!r}"
    version = await _answered_in_time(deps, what, read())
    definition = json.loads(version["definition"]) if version else {}
    _check_name(cmd.name, "pipeline name")
    _check_definition(definition)
    # with `deploy`, everything a deploy checks (deploy_id, engine_config, steps, every model resolved in the target
    # workspace) before the copy exists: a copy refused with a 400 was created all the same, and its retry a 409
    plan = None
    if cmd.deploy:
        plan = await _plan_deployment(deps, token, cmd.workspace_id, definition, cmd.deploy, cmd.engine_config, None)
    else:  # as pipelines/create: every model the definition names exists in the target workspace (which may be
        # another than the source's), looked up with the caller's token; before, the copy was a 200 and its deploy
        # the 404. With `deploy` the plan above resolved each (ready) in the target workspace already
        await _check_models_exist(deps, token, cmd.workspace_id, cmd.name, _definition_refs(definition),
                                  asyncio.get_running_loop().time() + deps.timeout * MODEL_LOOKUPS_WITHIN,
                                  verb="copy", since="the copy's read of its source")
    # the name check and the create in one transaction under the name's lock: two copies to one name, or a copy
    # and a pipelines/create of it, at once, both passed the check (copies were one at a time for this)
    created = await _created_in_time(deps, what, _create_version(
        deps, principal, cmd.workspace_id, cmd.name, definition, new_name=True), maybe=(
        " (the copy may have been created all the same: look for it with pipelines/list before copying again, which"
        " would be a 409 if it was)"))
    deployment = None
    if plan is not None:
        try:
            pipeline, version = await _deploy_step(deps, created.pipeline_pk_id, _rows_of(deps, created))
            deployed = await _start_deployment(deps, pipeline, version, cmd.deploy, *plan,
                                               lock_by=started + deps.timeout + extra + deps.lock_wait,
                                               by=started + deps.deploy_within + extra)
        except (InvalidRequest, Unavailable, Conflict) as exc:
            # replicas that fail to start cannot be checked before: as with pipelines/deploy, the (new) version
            # stays and nothing runs; the copy is kept, and the answer says where to deploy it again. Likewise a
            # database that failed the deploy (a 503, retryable), a deploy out of time (503 deploy_out_of_time) and
            # another deploy of the new pipeline under way (409 deploy_in_progress)
            raise type(exc)(f"{exc} (the copy was created: pipeline {created.pipeline_pk_id}, version "
                            f"{created.pipeline_variant_pk_id}; deploy it with pipelines/deploy)", code=exc.code
                            ) from None
        deployment = {"id": deployed.id, "name": f"{cmd.deploy}-{deployed.id}"}
    return PipelineCopied(pipeline_pk_id=created.pipeline_pk_id, pipeline_variant_pk_id=created.pipeline_variant_pk_id,
                          pipeline_version=cmd.pipeline_version, deployment=deployment)


async def _rows_of(deps: DeployerDeps, created: PipelineCreated) -> tuple[Any, Any]:
    return (await store.pipeline(deps.pool, created.pipeline_pk_id),
            await store.version(deps.pool, created.pipeline_variant_pk_id))


async def list_pipelines(deps: DeployerDeps, principal: Principal, token: str | None, workspace_id: int,
                         limit: int | None = None, cursor: str | None = None) -> Pipelines:
    """A workspace's pipelines, oldest first: all of them, or a page (shared/paging.py; the cursor is the last id)."""
    after = paging.after(cursor, "pipelines/list")
    return await _answered_in_time(deps, f"pipelines/list of workspace {workspace_id}", _list_pipelines(
        deps, principal, token, workspace_id, after, limit))


async def _list_pipelines(deps: DeployerDeps, principal: Principal, token: str | None, workspace_id: int,
                          after: int | None, limit: int | None) -> Pipelines:
    await require_member(deps.membership(token), principal, workspace_id)
    # a page reads its own rows (and one more: whether another page follows), not the whole list each time
    rows = await store.pipelines_in(deps.pool, workspace_id, after, None if limit is None else limit + 1)
    # the page's deployments and versions in two queries, not three per pipeline (docs/performance.md item 53):
    # read for the pipelines the page is likely to hold (about PAGE_BYTES of versions), and again from a pipeline
    # the page gets to past them (its records were smaller than the SQL's estimate)
    ids = [row["id"] for row in rows[:limit]]
    active: dict[int, Any] = {}
    listed: dict[int, Any] = {}

    async def read_from(index: int) -> None:
        # a page's read sizes every version of each pipeline it is given (the SQL reads each definition), so it is
        # given LIST_READ_AHEAD of them, or as many as the page holds already: all of a 1000-limit page's sized
        # every version of its 1000 pipelines, for a page that large records fill after a few (and the next page
        # again, from the next of them)
        upto = None if limit is None else index + max(LIST_READ_AHEAD, index)
        # one snapshot: the deployments and the versions they list agree
        async with deps.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            found = await store.active_deployments_of(conn, ids[index:upto])
            versions = await store.listed_versions(conn, ids[index:upto], VERSIONS_BYTES,
                                                   None if limit is None else paging.PAGE_BYTES)
        # each pipeline's deployment from the snapshot of its versions: one not reached here is read again later,
        # and a deployment this read found for it (undeployed by then) stayed in `active`
        active.update({pipeline_id: found.get(pipeline_id) for pipeline_id in versions})
        listed.update(versions)

    async def record(row) -> PipelineRecord:
        if row["id"] not in listed:
            await read_from(ids.index(row["id"]))
        versions, total, deployed = listed[row["id"]]
        return _record(row, active.get(row["id"]), versions, total, deployed)

    records, next_cursor = await paging.page(rows, limit, record)
    return Pipelines(pipelines=records, next_cursor=next_cursor)


async def get_pipeline(deps: DeployerDeps, principal: Principal, token: str | None, pipeline_id: int,
                       versions_cursor: str | None = None) -> PipelineRecord:
    before = paging.after(versions_cursor, "pipelines/get (versions_cursor)")

    async def read() -> PipelineRecord:
        return await _pipeline_record(deps, await _pipeline_for(deps, principal, token, pipeline_id), before)

    return await _answered_in_time(deps, f"pipelines/get of pipeline {pipeline_id}", read())


LIST_READ_AHEAD = 128
"""Pipelines of a pipelines/list page whose versions its first read sizes (list_pipelines); a later read, from a
pipeline the page gets to past them, as many as the page holds by then (at least this many)."""

VERSIONS_BYTES = paging.PAGE_BYTES
"""JSON bytes of a pipeline record's versions after which it lists no older ones (docs/api-paging.md): a pipeline with
every version listed passed a bus reply above ~120 versions of the largest definitions, and pipelines/get, its assay
routes and the pipelines/list page holding it answered 422 with no way past it."""


async def _pipeline_record(deps: DeployerDeps, row, before: int | None = None) -> PipelineRecord:
    """A pipeline with its newest versions up to VERSIONS_BYTES (all of them, as before, when they fit) and always the
    deployed one; when older ones are left out, `versions_cursor` reads them (pipelines/get) and `versions_omitted`
    counts them. With `before` (a versions_cursor): the versions older than it, the deployed one among them when it
    is: the pipeline may have been deployed again since the record that answered the cursor, and a version that
    became the deployed one meanwhile, left out of both reads, would be missing (readers merge by id)."""
    active = await store.active_deployment(deps.pool, row["id"])
    deployed = active["pipeline_version_id"] if active else None
    rows, total = await store.newest_versions(deps.pool, row["id"], before, deployed if before is None else None,
                                              VERSIONS_BYTES)
    # listed wherever it is in the history: monitoring reads it here
    deployed_row = await store.version_row(deps.pool, deployed) if before is None and deployed is not None else None
    return _record(row, active, rows, total, deployed_row)


def _record(row, active, rows: list[Any], total: int, deployed_row) -> PipelineRecord:
    """_pipeline_record's answer from what it read: the pipeline's row, its active deployment, its newest versions
    (the deployed one left out unless `before`), how many such in all, and its deployed version to list with them."""
    omitted = total - len(rows)
    cursor = str(rows[0]["id"]) if omitted else None
    if deployed_row is not None:
        rows = sorted([*rows, deployed_row], key=lambda v: v["id"])
    versions = [{"id": v["id"], "version": str(v["version"]), "definition": json.loads(v["definition"]),
                 "created_at": v["created_at"].isoformat()} for v in rows]
    deployment = {"id": active["id"], "name": f"{active['deploy_id']}-{active['id']}",
                  "pipeline_version_pk_id": active["pipeline_version_id"],
                  "engine_config": json.loads(active["engine_config"])} if active else None
    return PipelineRecord(id=row["id"], name=row["name"], workspace_id=row["workspace_id"],
                          created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(),
                          versions=versions, deployment=deployment, versions_cursor=cursor,
                          versions_omitted=omitted or None)


# --- deployments -------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    return echo(value) if isinstance(value, str) else echo(json.dumps(value, default=str))


def _whole(key: str, value: Any) -> int:
    """An integer setting of engine_config: an integer, or a number or text holding one (2.0, "2"). A fraction or a
    boolean is refused, not cut: `replica_count` 2.5 started 2 replicas and `true` 1, with a 200."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = math.nan
    if not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise InvalidRequest(f"engine_config.{key} must be an integer (got {_shown(value)})")
    return int(number)


def _engine_config(config: dict[str, Any] | None) -> dict[str, Any]:
    config = dict(config or {})
    try:
        cpus = float(config.get("cpus", 1))
    except (TypeError, ValueError):
        raise InvalidRequest(f"engine_config.cpus must be a number (got {_shown(config.get('cpus'))})") from None
    except OverflowError:  # an integer past a float's range (1 and 400 zeros: the bus carries it, HTTP does not)
        raise InvalidRequest(f"engine_config.cpus must be a number above 0, at most 64 (got "
                             f"{_shown(config.get('cpus'))})") from None
    # named alone: a replica_count of "two" was told "engine_config.cpus must be a number and replica_count an
    # integer", about cpus it had not given
    replicas = _whole("replica_count", config.get("replica_count", 1))
    autoscale = config.get("replica_autoscale_min_max")
    if autoscale is not None:
        if not isinstance(autoscale, dict) or not {"minimum", "maximum"} <= autoscale.keys():
            raise InvalidRequest("engine_config.replica_autoscale_min_max needs integer minimum and maximum")
        low = _whole("replica_autoscale_min_max.minimum", autoscale["minimum"])
        high = _whole("replica_autoscale_min_max.maximum", autoscale["maximum"])
        # the same ceiling as replica_count: an autoscaler allowed a million replicas would start them under load
        if not 0 <= low <= high <= 16:
            raise InvalidRequest("engine_config.replica_autoscale_min_max: need 0 <= minimum <= maximum <= 16")
        # kept as the integers read (the autoscaler reads them with int(): "4.0" would fail there)
        config["replica_autoscale_min_max"] = {**autoscale, "minimum": low, "maximum": high}
        replicas = max(low, 1)
    # cpus becomes each replica's onnxruntime thread count: a million would start a million threads; and
    # float("nan") is neither > 0 nor <= 0
    if not (math.isfinite(cpus) and 0 < cpus <= 64):
        raise InvalidRequest(f"engine_config.cpus must be a number above 0, at most 64 (got {cpus:g})")
    if not 1 <= replicas <= 16:  # named alone: `--replicas 99` was told about cpus it had not given
        shown = str(replicas) if len(str(replicas)) <= ECHO_CHARS else echo(str(replicas))  # 10**400: not 401 digits
        raise InvalidRequest(f"engine_config.replica_count must be between 1 and 16 (got {shown})")
    try:
        utilization = float(config.get("autoscale_cpu_utilization", 50))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past a float's range
        utilization = math.nan
    if not 0 < utilization <= 100:
        raise InvalidRequest("engine_config.autoscale_cpu_utilization must be a percentage above 0, at most 100")
    for key in ("memory", "lb_memory"):
        if config.get(key) is not None:
            config[key] = _memory_spec(key, config[key])
    check_batching(config)
    if "log_policy" in config:  # which rows the engine logs (services/engine/logpolicy.py)
        config["log_policy"] = check_log_policy(config["log_policy"])
    return config | {"cpus": cpus, "replica_count": replicas}


# the seed's memory_spec (KiB, MiB, GiB, TiB) or Kubernetes' own spelling (Ki, Mi, Gi, Ti), kept in the latter: the
# Kubernetes backend puts it in the pod's requests and limits as it is
_MEMORY_SPEC = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(Ki|Mi|Gi|Ti)B?\s*$")


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
MEMORY_BOUNDS = (16 * 2**20, 2**40)  # below 16 MiB no replica process starts; above 1 TiB no node has it


def _memory_spec(key: str, value: Any) -> str:
    found = _MEMORY_SPEC.match(value) if isinstance(value, str) else None
    if not found or float(found.group(1)) <= 0:
        raise InvalidRequest(f"engine_config.{key} must be a size with a unit, e.g. '999Mi' or '2GiB' (units KiB, MiB, "
                             f"GiB, TiB; got {value!r})")
    size = float(found.group(1)) * _MEMORY_UNITS[found.group(2)]
    if not MEMORY_BOUNDS[0] <= size <= MEMORY_BOUNDS[1]:  # '0.001Ki' was accepted and the pod then failed to start
        raise InvalidRequest(f"engine_config.{key} must be between 16MiB and 1TiB (got {value!r})")
    return found.group(1) + found.group(2)


def _autoscale(config: dict[str, Any]) -> tuple[tuple[int, int] | None, float]:
    bounds = config.get("replica_autoscale_min_max")
    if bounds is None or config.get("disable_autoscale"):
        return None, 50.0
    return (int(bounds["minimum"]), int(bounds["maximum"])), float(config.get("autoscale_cpu_utilization", 50))


async def _resolve(deps: DeployerDeps, token: str | None, workspace_id: int, name: str | None, version: str | None,
                   sha: str | None, model_id: int | None = None) -> dict[str, Any]:
    resolved = await request(deps.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
        workspace_id=workspace_id, name=name, version=version, sha=sha, model_id=model_id), token=token,
        timeout=deps.timeout, reply_model=ResolvedModel)
    return resolved.model_dump()


_Ref = tuple[str | None, str | None, str | None, int | None]  # name, version, sha, model_id


async def _resolve_all(deps: DeployerDeps, token: str | None, workspace_id: int,
                       refs: list[_Ref]) -> list[dict[str, Any]]:
    """Each of `refs` resolved (_resolve), each distinct one once and MODEL_LOOKUPS_AT_ONCE at once, in their order;
    the error of the first that fails in that order is raised (the look-ups still under way cancelled), as when they
    were resolved one after another. Once one is answered that the registry cannot answer (503, or none in time: 504)
    no other is sent: the ones waiting for the gate end unasked (they come after it in the order, so the error raised
    is the same); before, the look-ups went on being sent, MODEL_LOOKUPS_AT_ONCE at a time, until the first in the
    order answered, each a request the registry answered 503 again. Before, a deploy (and pipelines/copy with
    `deploy`) asked the registry one reference at a time, one named twice twice: 1,000 references took 6.1-8.1 s on a
    2-core test stack at load ~4, 8 at once 4.0-5.6 s (the registry's CPU bounds it; its registry.models.exist of the
    same 1,000: 0.04-0.06 s)."""
    gate = asyncio.Semaphore(MODEL_LOOKUPS_AT_ONCE)
    cannot_answer: list[RailyardError] = []  # the registry's first 503 or 504: nothing more is sent

    async def one(ref: _Ref) -> dict[str, Any]:
        name, version, sha, model_id = ref
        async with gate:
            if cannot_answer:
                raise cannot_answer[0]
            try:
                if model_id is None:
                    return await _resolve(deps, token, workspace_id, name, version, sha)
                return await _resolve(deps, token, workspace_id, name, version, sha, model_id=model_id)
            except (Unavailable, UpstreamTimeout) as exc:
                cannot_answer.append(exc)
                raise

    # keyed by their JSON: a version stored before _definition_refs' check may be any JSON value, a list too
    keys = [json.dumps(ref) for ref in refs]
    looks: dict[str, asyncio.Future[dict[str, Any]]] = {}
    for key, ref in zip(keys, refs, strict=True):
        if key not in looks:
            looks[key] = asyncio.ensure_future(one(ref))
    try:
        resolved = {key: await look for key, look in looks.items()}
    finally:
        for look in looks.values():
            if not look.done():
                look.cancel()
            elif not look.cancelled():
                look.exception()  # a later one's error is not the answer: retrieved, not logged as never read
    return [resolved[key] for key in keys]


async def _plan_deployment(deps: DeployerDeps, token: str | None, workspace_id: int, definition: dict[str, Any],
                           deploy_id: str, engine_config: dict[str, Any] | None, models: list[ModelRef] | None,
                           model_ids: list[int] | None = None,
                           model_configs: list[int] | None = None,
                           kept: Callable[[], Awaitable[dict[str, Any] | None]] | None = None,
                           ) -> tuple[dict[str, Any], list[ReplicaStep]]:
    """Everything a deploy checks before it changes anything: the deploy_id, the engine config, and every model
    resolved through the registry (ready versions only). The checked config and the steps to start. `kept`: the
    engine config the pipeline's deployment has stored, read only when `engine_config` is refused (below)."""
    _check_name(deploy_id, "deploy_id")
    try:
        config = _engine_config(engine_config)
    except InvalidRequest:
        # the config stored by an earlier deploy, sent back unchanged (monitoring's set_model, set_shadow_model and a
        # challenge's promotion redeploy with the deployment's own), is taken as it was stored: a value the checks
        # refuse since (session 37: a replica_autoscale_min_max bound or batch_max_rows of 2.5 or true) made every
        # such redeploy of a deployment nobody changed a 400
        if kept is None or not engine_config or engine_config != await kept():
            raise
        config = dict(engine_config)
    if model_configs:  # the seed's deploy parameter (seed 001 line 3401); read and ignored before
        raise InvalidRequest("model_configs: Railyard keeps no model configs (models/get_config_by_id answers null), "
                             "so there are none to apply: leave it out, and pin versions with `models` or in the "
                             "pipeline's definition")
    # the seed's model_ids (line 3402): models of the workspace by id, their newest versions (which must be ready, as
    # for a model named without a version); read and ignored before, so an empty pipeline deployed with them was a
    # 400 "no steps". An id given twice is one model of the step.
    by_id = await _resolve_all(deps, token, workspace_id,
                               [(None, None, None, i) for i in dict.fromkeys(model_ids or [])])
    named = {ref["name"] for step in definition.get("steps", []) for ref in _step_models(*next(iter(step.items())))}
    given = sorted({m.name for m in models or []} | {r["name"] for r in by_id})
    if named and set(given) - named:  # a typo deployed the definition's models with a 200
        raise InvalidRequest(f"models and model_ids name {sorted(set(given) - named)}, which no step of the "
                             f"pipeline's definition has (its models: {sorted(named)}); leave them out, or create a "
                             "pipeline version whose definition has them")
    pinned = {m.name: m for m in models or []}
    # every step's models looked up together (_resolve_all), then put in their steps
    kinds = [next(iter(step.items())) for step in definition.get("steps", [])]
    wanted: list[list[_Ref]] = []
    for kind, body in kinds:
        wanted.append([])
        for ref in _step_models(kind, body):
            override = pinned.get(ref["name"])
            wanted[-1].append((ref["name"], override.version if override else ref.get("version"),
                               override.sha if override else ref.get("sha"), None))
    found = iter(await _resolve_all(deps, token, workspace_id, [ref for refs in wanted for ref in refs]))
    steps = []
    for (kind, body), refs in zip(kinds, wanted, strict=True):
        resolved = {"kind": kind, "models": [next(found) for _ in refs]}
        if kind == "RandomSplit":
            resolved |= {"weights": body["weights"], "hash_key": body.get("hash_key")}
        steps.append(resolved)
    if not steps and (models or by_id):
        resolved_models = await _resolve_all(deps, token, workspace_id,
                                              [(m.name, m.version, m.sha, None) for m in models or []])
        steps = [{"kind": "ModelInference", "models": resolved_models + [
            r for r in by_id if r["name"] not in pinned]}]  # `models` pins the version of a model given both ways
    if not steps:
        raise InvalidRequest("the pipeline has no steps: add models to its definition or pass `models` or "
                             "`model_ids`")
    return config, [ReplicaStep.model_validate(step) for step in steps]


async def deploy(deps: DeployerDeps, principal: Principal, token: str | None, cmd: DeployPipeline) -> Deployed:
    # the pipeline's lock waited for until what its caller waits leaves (deploy_lock_wait: the request timeout for
    # the reads and lookups below, then lock_wait), not lock_wait after lookups that took longer (_deploy_lock); the
    # whole deploy ends by what its caller waits (deploy_answers_within), counted from here too (_activate)
    started = asyncio.get_running_loop().time()
    lock_by = started + deps.timeout + deps.lock_wait

    async def read() -> tuple[Any, Any]:
        pipeline = await _pipeline_for(deps, principal, token, cmd.pipeline_id)
        _check_name(cmd.deploy_id, "deploy_id")
        version = await store.version(deps.pool, cmd.pipeline_version_pk_id)
        if version is None or version["pipeline_id"] != pipeline["id"]:
            raise NotFound(f"version {cmd.pipeline_version_pk_id} of pipeline {pipeline['id']} not found")
        return pipeline, version

    # the membership check in the bound too: a slow auth read as a database that did not answer
    pipeline, version = await _deploy_step(deps, cmd.pipeline_id, read(),
                                           asked="the database (or the membership check)")
    async def kept() -> dict[str, Any] | None:
        active = await _deploy_step(deps, cmd.pipeline_id, store.active_deployment(deps.pool, pipeline["id"]))
        return json.loads(active["engine_config"]) if active else None

    config, steps = await _plan_deployment(deps, token, pipeline["workspace_id"], json.loads(version["definition"]),
                                           cmd.deploy_id, cmd.engine_config, cmd.models, cmd.model_ids,
                                           cmd.model_configs, kept)
    return await _start_deployment(deps, pipeline, version, cmd.deploy_id, config, steps,
                                   only_if_serving=cmd.only_if_serving, lock_by=lock_by,
                                   by=started + deps.deploy_within)


async def _start_deployment(deps: DeployerDeps, pipeline, version, deploy_id: str, config: dict[str, Any],
                            steps: list[ReplicaStep], *, only_if_serving: int | None = None,
                            lock_by: float | None = None, by: float | None = None) -> Deployed:
    """Activates the deployment of a (planned) version and starts its replicas. Replicas that fail to start are a
    400 with their reason that changes nothing: a redeploy of a deployment that serves leaves it serving as before
    (version, deploy_id, config, active); otherwise the deployment is inactive and nothing runs. `only_if_serving`:
    the precondition of DeployPipeline's field (_activate checks it). `lock_by`: the loop time until which the
    pipeline's lock is waited for (_deploy_lock); `by`: the loop time by which the deploy answers (_activate)."""
    spec = ReplicaSpec(deployment=ReplicaDeployment(pipeline=pipeline["name"],
                                                    pipeline_version=str(version["version"]),
                                                    workspace_id=pipeline["workspace_id"]),
                       steps=steps, engine_config=config)
    row = (pipeline["id"], version["id"], deploy_id, config, spec.model_dump(mode="json"))
    try:
        return await _activate(deps, pipeline, version, deploy_id, config, spec, row, uuid.uuid4(), only_if_serving,
                               lock_by, by)
    finally:
        deps.events_committed()  # its events.pipeline.deployed, when the replicas serve (committed by _activate)


async def _activate(deps: DeployerDeps, pipeline, version, deploy_id: str, config: dict[str, Any], spec: ReplicaSpec,
                    row: tuple[Any, ...], activation: uuid.UUID, only_if_serving: int | None = None,
                    lock_by: float | None = None, by: float | None = None) -> Deployed:
    """_start_deployment's work, under the pipeline's lock. events.pipeline.deployed goes to the outbox once the
    replicas serve, in the transaction that records it: a redeploy of a deployment that serves writes its new row
    then (`record`); otherwise the row was made active before the replicas started (so the deployment shows as
    starting), and the event is written alone right after they serve. Never before: a deploy whose replicas fail
    to start sends none (the event is not written at the activation, which a failed start undoes).

    `only_if_serving` (a version's pk id) is checked first, under the lock and in the first transaction, before
    anything is activated or started: a deploy that waited for the lock behind another deploy of the pipeline is
    refused (409 serving_changed, nothing changed) when that one changed what serves (_check_serving).

    `activation` names this deploy's activation in the row (store.activate_deployment): what a commit that raised
    did is read from it (_recorded), and a late clean-up touches only it (Deactivations).

    Each database step is bounded (DEPLOY_STEP_ANSWERS_WITHIN): the first transaction is a 503 (its activation, if
    its commit may have taken effect, made inactive in the background: no replica of it runs), a redeploy's record a
    503 (_recorded), a failed start's clean-up and the deployed event's write go to the background.

    `by` (pipelines/deploy's: its command's start + deploy_answers_within) bounds the whole deploy, not only each of
    its steps: with the pipeline's lock, a deploy that has less left than its first step, the least its replicas need
    to start and what follows their start (_after_start) is a 503 deploy_out_of_time that changes nothing; else its
    replicas have what is left after their start's share (at most deployer.ready_timeout), and replicas that do not
    serve within that are the same 503, undone as replicas that failed to start are. Before, only each step was
    bounded: the lock wait, the replicas' ready_timeout, the record, its looks and the previous set's stop added up
    past the caller's wait (with ready_timeout above ~295 s at once), and the caller's 504 came while the deploy
    went on."""

    def deployed(deployment_id: int, name: str) -> PipelineDeployed:
        return deployed_event(deployment_id, name, pipeline["id"], pipeline["workspace_id"], version["version"],
                              pipeline["name"])

    async with _deploy_lock(deps, pipeline["id"], lock_by):
        loop = asyncio.get_running_loop()
        if by is not None:  # nothing written yet: refused now if its replicas could not get the least they need
            _check_time_left(deps, pipeline["id"], by - loop.time() - deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN -
                             _after_start(deps.timeout, deps.backend.stop_timeout, serving=True))
        seen: dict[str, Any] = {}  # what the first transaction read, should it not answer

        async def first() -> tuple[dict[str, Any] | None, str | None, bool, int]:
            async with deps.pool.acquire() as conn, conn.transaction():
                before = seen["before"] = await store.pipeline_deployment(conn, pipeline["id"])
                old = f"{before['deploy_id']}-{before['id']}" if before is not None else None
                # a deployment that serves keeps its row, which tells what serves (version, schemas, name), until the
                # new set serves too (`record`): written at once, pipelines/get and the gateway's routes showed the
                # new version while only the old replicas answered, and a failed redeploy's for a moment after it
                serving = before is not None and before["active"] and old in deps.backend.sets
                if only_if_serving is not None:  # raised before any write: the transaction changes nothing
                    _check_serving(pipeline, before, old, serving, only_if_serving)
                seen["writes"] = not serving
                if not serving:  # a deployed event owed by the activation replaced, if it served (owed_before)
                    await owed_before(conn, before, pipeline, serving=False)
                deployment_id = before["id"] if serving else await store.activate_deployment(
                    conn, before, *row, activation=activation)
            return before, old, serving, deployment_id

        try:
            before, old, serving, deployment_id = await _deploy_step(deps, pipeline["id"], first(),
                                                                     lambda: seen.get("writes", False))
        except Unavailable:
            if seen.get("writes"):
                # its commit may have taken effect (its answer lost, or cut short by the bound): the row would
                # then be active for replicas never started ("Starting"), so it is made inactive once the database
                # answers, only while it holds this activation (a first deploy's id is not known: the row is found
                # by its activation), as after a failed start
                before = seen["before"]
                deps.deactivations.owe(
                    deps, before["id"] if before else None, f"{deploy_id}-{before['id']}" if before else
                    f"{deploy_id}-? (a first deploy of pipeline {pipeline['id']})", _undeployed_of(pipeline, before),
                    activation, pipeline["id"])
            raise
        if not serving:  # a new activation: the replaced one's owed event was written above, or is not owed
            deps.owed.forget(deployment_id)
        name = f"{deploy_id}-{deployment_id}"
        # a redeploy under another deploy_id renames the deployment: the backend swaps replica sets of one name only,
        # so the old name's set is stopped here, once the new one serves
        renamed = old if old is not None and old != name else None
        for failed in (name, old):  # a restore that failed is over: this deploy decides what runs
            deps.failed_restores.pop(failed, None)
        spec.deployment.id, spec.deployment.name = deployment_id, name

        async def record_in(conn: asyncpg.Connection) -> None:
            existing = await store.pipeline_deployment(conn, pipeline["id"])
            # the old set serves: a deployed event its row still owes (its write failed) is written first
            await owed_before(conn, existing, pipeline, serving=True)
            await store.activate_deployment(conn, existing, *row, activation=activation)
            await store.record_deployed(conn, deployed(deployment_id, name))

        async def record() -> None:
            try:  # bounded as the deploy's other steps: a server that stopped answering held it (and the lock)
                await _answered_within(deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN, _in_transaction(deps, record_in))
            except Exception as exc:
                # what was committed decides: a commit that took effect but whose answer was lost (the connection
                # dropped after COMMIT, a command timeout) left the row naming the new set, which must serve then.
                # Raising stopped it (LocalBackend.start) while the row, and the outbox's deployed event, named it
                try:
                    committed = await _recorded(deps, pipeline["id"], deployment_id, name, activation, exc)
                except Unavailable:  # no look answered: the new set is stopped (raised), the old one serves, and
                    # the row may name the new one: once the database answers, what runs is made what the row says
                    deps.rechecks.owe(deps, pipeline["id"], deployment_id, old, activation)
                    raise
                if not committed and not database_refused(exc):
                    # the deployer's own error (a bug), not the database's: a 500 internal error, logged with its
                    # traceback. Before, any error was "the database failed (KeyError)", a 503 to retry
                    log.error("the redeploy of pipeline %s as %s was not recorded: internal error", pipeline["id"],
                              name, exc_info=exc)
                    raise RailyardError(f"the redeploy of pipeline {pipeline['id']} as {name!r} was not recorded: "
                                        f"the deployer failed (internal error, {type(exc).__name__}); nothing "
                                        f"changed, {old} still serves the previous version") from exc
                if not committed:
                    # not committed: nothing changed, and the database failed, not the replicas. Raised as it was,
                    # a command timeout (TimeoutError) read as the replicas' and was a 400 "failed to start", any
                    # other error a 500 "internal error"
                    raise Unavailable(f"the redeploy of pipeline {pipeline['id']} as {name!r} was not recorded: the"
                                      f" database {_failure(deps, exc)}; nothing changed, {old} still serves the"
                                      " previous version. Deploy again once the database answers") from exc
            deps.owed.forget(deployment_id)  # the replaced activation's owed event was written with it

        # what the caller's wait leaves for the replicas to serve, after what follows their start
        ready_within = None if by is None else min(
            deps.backend.ready_timeout,
            by - loop.time() - _after_start(deps.timeout, deps.backend.stop_timeout, serving=serving))
        try:
            await deps.backend.start(name, spec, config["replica_count"], *_autoscale(config),
                                     serving=record if serving else None, ready_within=ready_within)
        except Exception as exc:
            # RuntimeError, TimeoutError: the replicas failed to start (400). Another error (an OSError writing the
            # spec or spawning a replica: ENOSPC, EMFILE) is the deployer's own and raised as it is, after the same
            # undoing: before, it left the row of a first deploy active and owing its event with nothing running
            # ("Starting" until a restart's restore started it, for a deploy that had answered an error)
            started = isinstance(exc, (RuntimeError, TimeoutError))
            # not the replicas' fault: they had less than their ready_timeout, what the caller's wait left them
            out_of_time = isinstance(exc, TimeoutError) and ready_within is not None and \
                ready_within < deps.backend.ready_timeout
            if serving:
                # the previous set still serves (the backend swaps only once the new one is ready) and the row still
                # says so: the deployment stays what it was (docs/inference.md)
                if not started:
                    raise
                if out_of_time:
                    raise _out_of_time(deps, pipeline["id"], ready_within, f"nothing changed: {old} still serves the "
                                       "previous version") from None
                raise InvalidRequest(f"the deployment failed to start: {exc} (nothing changed: {old} still serves "
                                     "the previous version)") from None
            # inactive now, with its undeployed event if it was active (_undeployed_of)
            undeployed = _undeployed_of(pipeline, before)
            later = ""
            try:  # bounded: a server that stopped answering held the deploy's answer (and the lock) until it answered
                await _answered_within(deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN, store.deactivate(
                    deps.pool, deployment_id, undeployed, activation=activation))
            except Exception as cleanup:
                # the database did not take it: the row stays active with nothing running ("Starting") until it
                # does, in the background. Before, the error ended the deploy (a 500) and the row stayed so until a
                # deploy, an undeploy or a restart's restore (which started it again)
                log.warning("deployment %s failed to start and could not be made inactive (%r): retried in the"
                            " background", name, cleanup)
                deps.deactivations.owe(deps, deployment_id, name, undeployed, activation, pipeline["id"])
                later = "; it is made inactive once the database answers"
            if renamed is not None:
                await deps.backend.stop(renamed)
            if not started:
                raise
            if out_of_time:
                raise _out_of_time(deps, pipeline["id"], ready_within, "nothing of it runs"
                                   f"{later or ': the deployment is inactive'}") from None
            raise InvalidRequest(f"the deployment failed to start: {exc}{later}") from None
        if not serving:  # the row says active since before the start: the event alone, now that the replicas serve
            # (the row owes it until this commits: a deployer dying before has the restore write it, `_restart`)
            event = deployed(deployment_id, name)
            try:  # bounded: a server that stopped answering held the deploy's answer (and the lock) until it answered
                await _answered_within(deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN, _in_transaction(
                    deps, lambda conn: store.record_deployed(conn, event)))
            except Exception as exc:  # the replicas serve and the row says so: the deploy did happen, its event is
                # owed (deployed_pending) and written in the background once the database takes it (OwedDeployed:
                # only while the row owes it, so a write given up on here that commits late is not written twice)
                log.warning("deployment %s serves but its events.pipeline.deployed was not written (%r): retried in"
                            " the background", name, exc)
                await _owe(deps, pipeline["id"], event)
        if renamed is not None:
            await deps.backend.stop(renamed)
    return Deployed(id=deployment_id)


RECORD_CHECK_DELAYS = (0.0, 0.2, 0.6)
"""Of the request timeout: waits before each look at what the failed record of a redeploy (or deactivation of an
undeploy) committed (_look_again): three looks over ~0.8 of it (~4 s at the default 5 s)."""
RECORD_CHECK_ANSWERS_WITHIN = 1.0
"""Of the request timeout: how long one such look may take (a connection, the pipeline's lock, the read), and one try
of the background deactivation and record recheck: with none, a database that does not answer held the deploy (and
the pipeline's lock) for the pool's timeouts, a connection's 60 s and a command's 30 s, at each look, not the ~4 s the
looks were meant to take (a look that gives up counts as one not answered). The looks take at most
record_looks_take() in all: 3.8 of the request timeout (19 s at the default 5 s). Before, 5 s and (0, 1, 3) s
whatever the request timeout: a deployer with a 1 s request timeout (whose callers wait that) still looked for 19 s."""


def record_check_within(deps: DeployerDeps) -> float:
    """Seconds one look at a failed record may take (RECORD_CHECK_ANSWERS_WITHIN of the request timeout)."""
    return deps.timeout * RECORD_CHECK_ANSWERS_WITHIN


def record_looks_take(timeout: float) -> float:
    """Seconds the looks at a failed record take at most (_look_again), with the request timeout `timeout`."""
    return timeout * (sum(RECORD_CHECK_DELAYS) + len(RECORD_CHECK_DELAYS) * RECORD_CHECK_ANSWERS_WITHIN)


DEPLOY_STEP_ANSWERS_WITHIN = 0.8
"""Of the request timeout: each of a deploy's own database steps (the pipeline's and version's read, the first
transaction, a redeploy's record, a failed start's clean-up, the deployed event's write and the served mark) answers
within it (_answered_within), or the deploy is a 503 (or, once its replicas serve, the write is left to the
background). Before, each waited the pool's own timeouts (60 s to connect, 30 s a command), and a server that took the
connection and stopped answering held the deploy, and the pipeline's lock, until it answered again: the gateway
answered 504 after its ~305 s while the deploy went on."""


DEPLOY_IN_PROGRESS = "deploy_in_progress"  # the 409's code for a deploy or undeploy held up by another of its pipeline
DEPLOY_OUT_OF_TIME = "deploy_out_of_time"  # the 503's code for a deploy that ran out of what its caller waits
DEPLOY_ANSWER_MARGIN = 0.2
"""Of the request timeout: what a deploy leaves of its caller's wait for its answer's way back
(deploy_answers_within)."""


def deploy_answers_within(settings: Settings) -> float:
    """Seconds a deploy answers within, counted from its command's start (_activate's `by`): its caller's wait
    (shared.settings.deploy_wait) less DEPLOY_ANSWER_MARGIN of the request timeout, 304 s with the defaults; never
    less than what the deploy's own steps may take (_deploy_takes), so one that nothing held up gives its replicas
    their whole deployer.ready_timeout. deploy_wait counts those steps (shared.settings.DEPLOY_STEPS_TAKE) and
    another deploy of the pipeline ahead of it (DEPLOY_HOLDS_LOCK), so the floor is the caller's wait less the margin
    at the most: a deploy's worst case (a record the database failed, a slow drain) is answered before its caller
    gives up, and one behind another deploy of its pipeline waits for the lock as long as that one may hold it
    (deploy_lock_wait). Before, deploy_wait did not count what follows the replicas' start (4.6 of the request
    timeout and stop_timeout), nor a deploy ahead: where worker_timeout was below ~108 s (the test stack's 45 s: a
    70 s wait, the floor 112 s) a deploy could answer past its caller's wait, and one behind another waited 2.5 s for
    the lock (the test stack's), then a 409 deploy_in_progress. Before that (review r1), the
    worst case came out of the replicas' time: with a 60 s request timeout, or ready_timeout and worker_timeout 30 s,
    every deploy was a 503 deploy_out_of_time; on the test stack's settings a redeploy's replicas had 26 s of
    their 60."""
    request = settings.nats.request_timeout
    return max(deploy_wait(settings) - DEPLOY_ANSWER_MARGIN * request, _deploy_takes(settings))


def _deploy_takes(settings: Settings) -> float:
    """Seconds a deploy that no other deploy of its pipeline holds up takes at most by its own bounds: its reads and
    model lookups (the request timeout), its first database step (DEPLOY_STEP_ANSWERS_WITHIN), its replicas' start
    (deployer.ready_timeout) and what follows it (_after_start of a redeploy). 112 s with the defaults."""
    request = settings.nats.request_timeout
    return request + DEPLOY_STEP_ANSWERS_WITHIN * request + settings.deployer.ready_timeout + \
        _after_start(request, settings.deployer.stop_timeout, serving=True)


def _after_start(timeout: float, stop_timeout: float, *, serving: bool) -> float:
    """Seconds a deploy may still take once its replicas serve or fail to, with the request timeout `timeout` and
    the backend's stop_timeout: a redeploy of a serving deployment records its new row (DEPLOY_STEP_ANSWERS_WITHIN),
    looks at a failed record (record_looks_take) and stops the previous set, or its own new one (stop_timeout);
    another deploy writes its deployed event and the served mark, or stops its replicas that failed and makes the row
    inactive (the longer: the stop and two steps)."""
    step = DEPLOY_STEP_ANSWERS_WITHIN * timeout
    return step + stop_timeout + (record_looks_take(timeout) if serving else step)


def deploy_lock_wait(settings: Settings) -> float:
    """Seconds a deploy waits for the pipeline's lock while another deploy (or an undeploy, the start's restore of its
    deployment, a record recheck) holds it (_deploy_lock): what its caller's wait (deploy_answers_within) leaves after
    the deploy's own work: its reads and model lookups before (the request timeout), its first database step once it
    has the lock (DEPLOY_STEP_ANSWERS_WITHIN), its replicas' start (deployer.ready_timeout) and what follows it
    (_after_start of a redeploy: its record, the looks at a failed one, a set's stop: _deploy_takes); at least the
    undeploy's wait (UNDEPLOY_LOCK_WAIT). 192 s with the defaults (304 - 5 - 4 - 60 - 4 - 19 - 20); never less than
    another deploy may hold the lock (its first step, ready_timeout, _after_start of a redeploy: 107 s with the
    defaults), as shared.settings.deploy_wait counts one. Before, 228 s: the looks and the stop were not counted,
    and a redeploy that waited it all answered past its caller's wait."""
    return max(deploy_answers_within(settings) - _deploy_takes(settings),
               UNDEPLOY_LOCK_WAIT * settings.nats.request_timeout)


def _check_time_left(deps: DeployerDeps, pipeline_id: int, left: float) -> None:
    """A deploy whose replicas would have `left` seconds to serve (what its caller's wait leaves them, _activate) is
    refused, nothing of it made, when that is less than the least a start takes: the request timeout, or
    deployer.ready_timeout if shorter."""
    if left < min(deps.timeout, deps.backend.ready_timeout):
        raise _out_of_time(deps, pipeline_id, max(left, 0.0), "nothing of it was made")


def _out_of_time(deps: DeployerDeps, pipeline_id: int, left: float, outcome: str) -> Unavailable:
    """The 503 deploy_out_of_time of a deploy whose replicas had (or would have had) `left` seconds to serve, less
    than their ready_timeout: what its caller's wait left after its lookups, its wait for the pipeline's lock and
    its steps; `outcome`: what of it runs."""
    log.warning("deploy of pipeline %s: 503 %s (%.3g s left for its replicas)", pipeline_id, DEPLOY_OUT_OF_TIME, left)
    return Unavailable(
        f"the deploy of pipeline {pipeline_id} ran out of time: what its caller waits ({deps.deploy_within:g} s from "
        f"its start) left its replicas {left:.3g} s to serve after its model lookups, its wait for another deploy of "
        f"the pipeline and its database steps, less than deployer.ready_timeout ({deps.backend.ready_timeout:g} s); "
        f"{outcome}. Deploy again (once another deploy of the pipeline ended), or lower deployer.ready_timeout",
        code=DEPLOY_OUT_OF_TIME)


@contextlib.asynccontextmanager
async def _deploy_lock(deps: DeployerDeps, pipeline_id: int, by: float | None = None) -> AsyncIterator[None]:
    """The pipeline's lock for a deploy, waited for at most deps.lock_wait and not past the loop time `by` (what its
    caller's wait leaves: pipelines/deploy's reads and model lookups took the rest, deploy), else a 409
    deploy_in_progress that changes nothing. Before, a deploy behind another one of the pipeline (whose replicas take
    up to deployer.ready_timeout to serve, each) waited as long as that took: two or more of them queued, its caller
    got a 504 after its wait while the deploy went on, and deployed later over whatever the caller did next; and a
    deploy whose lookups took longer than the request timeout (a model each, a slow registry) still waited lock_wait
    after them, past its caller's wait."""
    lock = deps.pipeline_lock(pipeline_id)
    wait = deps.lock_wait if by is None else max(min(deps.lock_wait, by - asyncio.get_running_loop().time()), 0.0)
    try:
        # awaited in this task (as undeploy's): cancelled, asyncio.Lock passes the lock on. A free lock is taken at
        # once, whatever `wait` (acquire does not yield)
        async with asyncio.timeout(wait):
            await lock.acquire()
    except TimeoutError:
        shortened = " (what its caller waits left after its model lookups)" if wait < deps.lock_wait else ""
        raise Conflict(f"another deploy or undeploy of pipeline {pipeline_id} (or its restore after a deployer "
                       f"restart) is under way and did not end within {round(wait, 1):g} s{shortened}; nothing of this"
                       " deploy was made: deploy again when it finishes", code=DEPLOY_IN_PROGRESS) from None
    try:
        yield
    finally:
        lock.release()


def _failure(deps: DeployerDeps, exc: BaseException) -> str:
    """How the database failed a deploy's step, for its 503."""
    if isinstance(exc, _NotAnswered):
        return f"did not answer within {deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN:g} s"
    return f"failed ({type(exc).__name__})"


async def _deploy_step(deps: DeployerDeps, pipeline_id: int, work: Coroutine[Any, Any, _T],
                       wrote: Callable[[], bool] = lambda: False, asked: str = "the database") -> _T:
    """A deploy's database step before anything of it runs: what `work` answers within DEPLOY_STEP_ANSWERS_WITHIN of
    the request timeout; a database that failed it (database_failed) or did not answer is a 503 unavailable
    (retryable) saying nothing of the deploy runs; `wrote()`: the step had begun writing the deploy's activation, so
    the answer says it may have been recorded; `asked`: what the answer names as not answering (the read's
    membership check, a request to auth of up to the request timeout, is bounded with it). Before, a refused
    connection was a 500 and a database that did not answer held the deploy for the pool's timeouts, or until it
    answered again (a server stopped, a partition)."""
    try:
        return await _answered_within(deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN, work)
    except Exception as exc:
        if not database_failed(exc):
            raise
        log.warning("deploy of pipeline %s: 503 (%r)", pipeline_id, exc)
        maybe = (" (its activation may have been recorded all the same: if so, the deployment is made inactive once"
                 " the database answers)") if wrote() else ""
        failure = _failure(deps, exc)
        raise Unavailable(f"the deploy of pipeline {pipeline_id} was not made: "
                          f"{asked if isinstance(exc, _NotAnswered) else 'the database'} {failure};"
                          f" nothing of it runs, and what served before serves as before{maybe}. Deploy again once"
                          " the database answers") from None


READ_ANSWERS_WITHIN = 0.8
"""Of the request timeout: the work of pipelines/create, pipelines/get, pipelines/list, status/get_deployment,
admin/get_pipeline_external_url and the route of a deployment (deployments/resolve: the gateway's, monitoring's and
lineage's) answers within it, its membership check and its database reads (and create's write), or the command is a
503 unavailable (_answered_in_time). Their callers wait the request timeout (the gateway's Route.wait; the resolve's
requests): before, a database that took the connection and stopped answering held each for the pool's own timeouts
(60 s to connect, 30 s a command) or until it answered again, the caller got a 504 (a timeout) after the request
timeout while the deployer went on, and the lost answer could not tell a slow database from a lost deployer."""


async def _answered_in_time(deps: DeployerDeps, what: str, work: Coroutine[Any, Any, _T], *,
                           maybe: str = "") -> _T:
    """What `work` (a command's reads, `what` names it) answers within READ_ANSWERS_WITHIN of the request timeout;
    else, or when the database failed it (database_failed), a 503 unavailable that says which (the work given up on
    is cancelled and left to end, _answered_within). A read changes nothing; `maybe`: what a write given up on may
    have done all the same."""
    try:
        return await _answered_within(deps.timeout * READ_ANSWERS_WITHIN, work)
    except Exception as exc:
        if not database_failed(exc):
            raise
        log.warning("%s: 503 (%r)", what, exc)
        failure = (f"the database (or the membership check) did not answer within "
                   f"{deps.timeout * READ_ANSWERS_WITHIN:g} s" if isinstance(exc, _NotAnswered) else
                   f"the database failed ({type(exc).__name__})")
        raise Unavailable(f"{what} was not answered: {failure}{maybe}. Ask again once the database answers"
                          ) from None


def _undeployed_of(pipeline, before: dict[str, Any] | None) -> PipelineUndeployed | None:
    """A deploy whose replicas did not start (or never started) makes the pipeline's deployment inactive: its
    events.pipeline.undeployed when it was active before (its restore after a restart had failed: nothing served),
    as an undeploy would tell, when lineage was told it was deployed (store.deactivate; it kept it active otherwise).
    The deployed event its previous activation owed was written at the activation if it had served (owed_before:
    lineage was told, so the undeployed follows); this activation never served (store.deactivate, no `owed`)."""
    if before is None or not before["active"]:
        return None
    return PipelineUndeployed(deployment_id=before["id"], name=f"{before['deploy_id']}-{before['id']}",
                              pipeline_id=pipeline["id"], workspace_id=pipeline["workspace_id"])


_UNANSWERED = object()  # _look_again: no look answered
_T = TypeVar("_T")


class _NotAnswered(TimeoutError):
    """_answered_within's: the work did not answer within its bound (a TimeoutError of the work's own, a command
    timeout, is raised as it is)."""


async def _answered_within(seconds: float, work: Coroutine[Any, Any, _T]) -> _T:
    """What `work` answers within `seconds`, else _NotAnswered: the work is cancelled and left to end in the
    background, not waited for (shared.db.within says why: asyncio.timeout would wait for a query cancelled on a
    server that stopped answering). `work` is a coroutine (as for _deploy_step, _answered_in_time and
    _created_in_time), what shared.db.begin notes the connections of: any Awaitable was declared, while db.within
    refuses every future but a task begin made (a TypeError), so a caller the annotation let pass failed at once."""
    return await db.within(seconds, work, lambda: _NotAnswered(f"no answer within {seconds:.3g} s"))


async def _in_transaction(deps: DeployerDeps, read: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
    async with deps.pool.acquire() as conn, conn.transaction():
        return await read(conn)


async def _look_again(deps: DeployerDeps, name: str, what: str, error: Exception,
                      read: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    """What `read` answers, in a transaction of its own, after the commit of `what` (of the deployment `name`) raised
    `error`: asked again (RECORD_CHECK_DELAYS) while the database does not answer, each look given up after
    record_check_within (it counts as one not answered; _answered_within: a server that stopped answering held a
    look under asyncio.timeout until it answered again); _UNANSWERED when none answered. The looks of a redeploy's
    record (_recorded) and an undeploy's deactivation (_deactivated)."""
    for delay in RECORD_CHECK_DELAYS:
        await asyncio.sleep(delay * deps.timeout)
        try:
            return await _answered_within(record_check_within(deps), _in_transaction(deps, read))
        except Exception as exc:
            log.warning("deployment %s: %s raised (%s) and its row could not be read (%s)", name, what, error, exc)
    return _UNANSWERED


async def _recorded(deps: DeployerDeps, pipeline_id: int, deployment_id: int, name: str, activation: uuid.UUID,
                    error: Exception) -> bool:
    """Whether the transaction of a redeploy's `record` that raised `error` was committed all the same: the pipeline's
    deployment read again under the pipeline's advisory lock (store.pipeline_deployment), which that transaction
    held, so one the database still runs (its client gone) is over before the row is read. Committed: the row holds
    the redeploy's `activation` (store.activate_deployment) and owes no deployed event (record_deployed cleared it).
    Before, the row's version, deploy_id, config and spec were compared with the redeploy's: one identical to what
    served read as committed when it was refused, so its new replicas served and its deployed event was never
    written. Never answered (_look_again): Unavailable, the outcome unknown (the new set is stopped, as for a record
    that failed, and the old one keeps serving)."""
    now = await _look_again(deps, name, "the record of its redeploy", error,
                            lambda conn: store.pipeline_deployment(conn, pipeline_id))
    if now is _UNANSWERED:
        log.error("deployment %s: the record of its redeploy raised (%s) and the database never answered whether it"
                  " was committed; the new replicas are stopped, the row may name them", name, error)
        raise Unavailable(f"the redeploy of pipeline {pipeline_id} as {name!r} could not be confirmed: its replicas "
                          "served, but the database did not answer, and it is not known whether the new version was "
                          "recorded; its replicas were stopped and the previous ones keep serving (should it have "
                          "been recorded, its replicas are started again once the database answers). Look at the "
                          "pipeline (pipelines/get) once the database answers, and deploy again") from error
    committed = now is not None and now["id"] == deployment_id and now["active"] and \
        not now["deployed_pending"] and now["activation"] == activation
    if committed:
        log.warning("deployment %s: the record of its redeploy raised (%s) but was committed: its new replicas serve",
                    name, error)
    return committed


def _check_serving(pipeline, before: dict[str, Any] | None, name: str | None, serving: bool, wanted: int) -> None:
    """A deploy's precondition (DeployPipeline.only_if_serving): version `wanted` is what the pipeline's deployment
    serves, as _activate reads it under the pipeline's lock: `before` (the pipeline's deployment row) active and its
    replica set `name` running (`serving`). An active deployment whose replicas do not run (its restore after a
    deployer restart failed, or is still waiting for its turn) serves nothing: refused too. Else a 409
    serving_changed naming what serves now."""
    if serving and before["pipeline_version_id"] == wanted:
        return
    if serving:
        now = f"version {before['pipeline_version_id']} serves now (deployment {name!r})"
    elif before is not None and before["active"]:
        now = (f"nothing serves now: deployment {name!r} is active but its engine replicas do not run (its restore "
               "after a deployer restart failed or has not run yet)")
    else:
        now = "nothing serves now (the pipeline is not deployed)"
    raise Conflict(f"only_if_serving: version {wanted} of pipeline {pipeline['id']} does not serve: {now}; nothing "
                   "was deployed. Look at what serves (pipelines/get) and deploy again, with only_if_serving set to "
                   "that version or without it", code=SERVING_CHANGED)


def _deployment_id(name: str) -> int:
    _, _, tail = name.rpartition("-")
    # ASCII digits only ('²'.isdigit() is true, int('²') fails) and within a bigint, or no deployment has the id
    if not (tail.isascii() and tail.isdigit()) or int(tail) > INT64[1]:
        raise NotFound(f"deployment {echo(name)} not found")
    return int(tail)


async def _deployment_for(deps: DeployerDeps, principal: Principal, token: str | None, name: str,
                          check_member: bool = True):
    row = await store.deployment(deps.pool, _deployment_id(name))
    if row is not None and f"{row['deploy_id']}-{row['id']}" != name:
        row = None
    return await _reachable(deps, principal, token, row, deployment_not_found(name), check_member=check_member)


async def deployment_status(deps: DeployerDeps, principal: Principal, token: str | None,
                            name: str) -> DeploymentStatus:
    row = await _answered_in_time(deps, f"status/get_deployment of {echo(name)}",
                                  _deployment_for(deps, principal, token, name))
    if not row["active"]:
        return DeploymentStatus(status="Stopped", details=[], engines=[], engine_lbs=[], sidekicks=[])
    failure = _restore_failure(deps, name)
    if failure is not None:
        return DeploymentStatus(status="Error", details=[failure], engines=[], engine_lbs=[], sidekicks=[])
    engines = await deps.backend.status(name)
    details = [f"{e['name']}: {e['reason']}" for e in engines if e.get("reason")]
    lbs = [{"ip": "127.0.0.1", "name": "gateway", "status": "Running", "reason": None, "details": []}]
    return DeploymentStatus(status=deployment_state(engines), details=details, engines=engines, engine_lbs=lbs,
                            sidekicks=[])


CRASH_LOOP_AFTER = 2
"""Exits in a row before coming up (a replica's `crashes`) from which its slot is in a crash loop for the
deployment's status: one is a restart (a replica killed once, out of memory while loading), not yet a loop."""


def deployment_state(engines: list[dict[str, Any]]) -> str:
    """A deployment's status from its replicas': `Running` when every replica runs, or when the others all run and
    the rest are in a crash loop (CRASH_LOOP_AFTER exits in a row before coming up: waiting out the back-off or
    starting again; the details name them); `Error` when none runs and every one exited or is in a crash loop; else
    `Starting` (replicas loading for the first time, or after a restart that is no loop). Before 2026-12-05 a crash
    loop read `Starting` (mixed states), for up to crash_backoff_max (60 s) at a time and for as long as it lasted,
    as if it were about to serve: a replica that keeps failing is not starting, and `Running` is what the seed tells
    users to wait for before inferring, which the other replicas answer (the gateway's route is `Running` then
    too)."""
    running = sum(e["status"] == "Running" for e in engines)
    if engines and running and all(e["status"] == "Running" or _looping(e) for e in engines):
        return "Running"
    if engines and not running and all(e["status"] == "Error" or _looping(e) for e in engines):
        return "Error"
    return "Starting"


def _looping(engine: dict[str, Any]) -> bool:
    """Whether a replica's slot is in a crash loop (CRASH_LOOP_AFTER)."""
    return engine["status"] != "Running" and engine.get("crashes", 0) >= CRASH_LOOP_AFTER


ROUTE_REASON_MAX = 500  # characters of a crash loop's reason in a route (a replica's log line may be 8 KiB)


def route_state(engines: list[dict[str, Any]]) -> tuple[str, str | None, float | None]:
    """A route's (status, reason, retry_after): `Running` when any replica is; `Error` when every replica is in a
    crash loop (CRASH_LOOP_AFTER exits in a row before coming up; a one-replica deployment whose model no longer
    loads), with the deployer's reason (a replica's CrashLoopBackOff reason, the last line of its log) and, when
    none is starting now, the seconds until the next one starts; else `Starting`. Before 2026-12-05 a crash loop's
    route said `Starting`, and the gateway answered its inferences 503 "deployment X is starting; retry shortly"
    for as long as the loop lasted. Not `Error` for replicas that merely exited (a restart, replaced within a
    supervisor pass) or whose first replacement failed: that is no loop yet."""
    if any(e["status"] == "Running" for e in engines):
        return "Running", None, None
    if not engines or not all(_looping(e) for e in engines):
        return "Starting", None, None
    reason = next((e["reason"] for e in engines if e.get("reason")), None) or \
        f"{len(engines)} replica(s) exiting soon after their start"
    waits = [e["restart_in"] for e in engines if e.get("restart_in") is not None]
    return "Error", reason[:ROUTE_REASON_MAX], min(waits) if len(waits) == len(engines) else None


UNDEPLOY_ANSWERS_WITHIN = 0.8
"""Of the request timeout: an undeploy's work before its replicas' stop (the pipeline's read, the wait for its lock,
the deactivation and the looks at a failed one) ends within it, or the undeploy is a 503. The gateway waits the request
timeout and the stop timeout for an undeploy (services/gateway/http.py replicas_stop): a database that did not answer
held it for the pool's own timeouts (60 s to connect, 30 s a command) and the ~19 s of the looks, and the caller got
a 504 while the undeploy went on."""
def database_failed(exc: BaseException) -> bool:
    """Whether `exc` says the database failed a step (a 503, not a 500): our own bound on it (a TimeoutError:
    _answered_within's _NotAnswered; the pool's own timeouts are asyncpg's TimeoutError too), or what every command's
    503 rule counts (shared/data_errors.py database_retryable): the connection refused, lost or timed out, the server
    shutting down, starting up or out of resources, a standby after a failover refusing writes, and a deadlock or
    serialization failure (the transaction rolled back whole: asked again, it runs anew). For an except clause:
    `except Exception as exc: if not database_failed(exc): raise`. Before session 40 it was a tuple (DATABASE_ERRORS)
    that took any OSError (object storage's, a file's: not asyncpg's) and any asyncpg InterfaceError (also a misuse of
    a connection: a bug) for the database failing, and answered a 503 'deploy again once the database answers' that
    no retry got past; those are the 500 'internal error' now, logged with their traceback, and a protocol violation,
    a role's statement_timeout or TLS failing as a setting with them (shared/data_errors.py says why)."""
    return isinstance(exc, TimeoutError) or database_retryable(exc)


def database_refused(exc: BaseException) -> bool:
    """Whether a database step's error is the database's (a redeploy's record failing so is a 503 "the database
    failed"): database_failed, or any error the server answered (a constraint). Another error is the deployer's own,
    a 500 internal error logged with its traceback (DATABASE_FAILURES before session 40, which took any OSError and
    InterfaceError for the database's too)."""
    return database_failed(exc) or isinstance(exc, asyncpg.PostgresError)


async def undeploy(deps: DeployerDeps, principal: Principal, token: str | None, pipeline_id: int,
                   deployment_id: int) -> dict:
    loop = asyncio.get_running_loop()
    # the database's work under _answered_within, not asyncio.timeout: a server that stopped answering held the
    # cancelled work (and the undeploy) until it answered again
    deadline = loop.time() + deps.timeout * UNDEPLOY_ANSWERS_WITHIN
    lock: PipelineLock | None = None
    try:
        pipeline = await _answered_within(deadline - loop.time(), _pipeline_for(deps, principal, token, pipeline_id))
        # a deploy holds the lock until its replicas serve (up to a minute), far past the caller's request timeout:
        # rather than being done later, after the caller got a 504, the undeploy is refused, and changes nothing
        waited = deps.pipeline_lock(pipeline["id"])  # held here: the deps keep a lock only while it is used
        waits_until = min(deadline, loop.time() + deps.timeout * UNDEPLOY_LOCK_WAIT)
        try:
            # awaited in this task, not asyncio.wait_for's: on Python 3.11 wait_for runs the acquire as a task of
            # its own and, cancelled (the deployer's stop) after that task took the lock, returns the lock and drops
            # the cancellation, so the undeploy went on past its bound. Cancelled here, asyncio.Lock passes the lock
            # on; taken, `lock` is set in the same step
            async with asyncio.timeout_at(waits_until):
                await waited.acquire()
                lock = waited
        except TimeoutError:
            if waits_until >= deadline:
                raise _NotAnswered("the pipeline's lock") from None
            raise Conflict(f"a deploy of pipeline {pipeline_id} is in progress: retry the undeploy when it "
                           "finishes", code=DEPLOY_IN_PROGRESS) from None
        name = await _answered_within(deadline - loop.time(), _undeploy_row(deps, pipeline, deployment_id))
    except _DeactivationUnknown as exc:
        # its commit may have taken effect (its answer lost): "was not made" said what nobody knew
        lock.release()
        deps.events_committed()
        error = exc.__cause__
        raise Unavailable(f"the undeploy of deployment {deployment_id} of pipeline {pipeline_id} could not be "
                          f"confirmed: its deactivation raised ({type(error).__name__}) and the database did not "
                          "answer whether it was recorded; its replicas still run. Undeploy again once the database "
                          "answers (an undeploy of a deployment already inactive stops what runs of it)") from error
    except Exception as exc:
        if lock is not None:
            lock.release()
            deps.events_committed()
        if not database_failed(exc):  # a refusal (NotFound, Conflict) or a bug: raised as it is, the lock released
            raise
        log.warning("undeploy of deployment %s of pipeline %s: 503 (%r)", deployment_id, pipeline_id, exc)
        if isinstance(exc, _NotAnswered):
            raise Unavailable(f"the undeploy of deployment {deployment_id} of pipeline {pipeline_id} could not be "
                              "made: the database (or the membership check) did not answer within "
                              f"{deps.timeout * UNDEPLOY_ANSWERS_WITHIN:g} s; the deployment serves as before unless "
                              "its deactivation was recorded meanwhile. "
                              "Undeploy again once the database answers (an undeploy of a deployment already "
                              "inactive stops what runs of it)") from None
        raise Unavailable(f"the undeploy of deployment {deployment_id} of pipeline {pipeline_id} was not made: the "
                          f"database failed ({type(exc).__name__}); the deployment serves as before. Undeploy again "
                          "once the database answers") from exc
    except BaseException:
        if lock is not None:
            lock.release()
            deps.events_committed()
        raise
    try:
        deps.owed.forget(deployment_id)  # its owed deployed event, if any, was written with the undeployed
        deps.failed_restores.pop(name, None)
        await deps.backend.stop(name, every_name=True)  # and its folders under earlier names (failed deploys')
    finally:
        lock.release()
        deps.events_committed()
    return {}


async def _undeploy_row(deps: DeployerDeps, pipeline, deployment_id: int) -> str:
    """undeploy's change of the row, under the pipeline's lock: the deployment inactive (its events with it); its
    name. Raises the deactivation's error when it was not committed, _DeactivationUnknown when no look could tell."""
    # the row inside the lock: a redeploy that ran while this waited may have renamed the deployment (a new
    # deploy_id), and the name read before it would stop replicas that no longer exist, leaving the new ones
    row = await store.deployment(deps.pool, deployment_id)
    if row is None or row["pipeline_id"] != pipeline["id"]:
        raise NotFound(f"deployment {deployment_id} of pipeline {pipeline['id']} not found")
    name = f"{row['deploy_id']}-{row['id']}"
    # inactive and its events.pipeline.undeployed in one transaction (none when it was inactive already, or
    # never told deployed); preceded by its events.pipeline.deployed if the row still owes it and its replicas
    # serve, or served (`served`: the write of the event failed, and the restore after a restart failed since).
    # A row owing it that never served as far as anything can tell (the deployer died while its replicas loaded,
    # or before the event's commit, and the restore failed): no deployed event for it (store.deactivate)
    serving = deps.backend.sets.get(name)
    try:
        await store.deactivate(deps.pool, deployment_id, PipelineUndeployed(
            deployment_id=deployment_id, name=name, pipeline_id=pipeline["id"],
            workspace_id=pipeline["workspace_id"]), _deployed_event_of(row),
            serving=serving is not None and serving.ready)
    except Exception as exc:
        # a commit that took effect but whose answer was lost left the row inactive: its replicas stop, as after
        # one that answered. Before, they ran on (until a retried undeploy or a restart) with no active row
        inactive = await _deactivated(deps, deployment_id, name, exc)
        if inactive is None:
            raise _DeactivationUnknown(exc) from exc
        if not inactive:
            raise
    return name


class _DeactivationUnknown(Exception):
    """An undeploy's deactivation raised and no look at the row answered: whether it was committed is not known."""


async def _deactivated(deps: DeployerDeps, deployment_id: int, name: str, error: Exception) -> bool | None:
    """Whether the deployment is inactive after an undeploy's deactivation raised `error` (store.deactivate: its
    commit may have taken effect, its answer lost): the row read again once no transaction changes it
    (store.deployment_active: one the server still runs ends first; _look_again). None when no look answered."""
    active = await _look_again(deps, name, "its undeploy", error,
                               lambda conn: store.deployment_active(conn, deployment_id))
    if active is _UNANSWERED:
        return None
    if active:
        return False
    log.warning("deployment %s: its undeploy raised (%s) but was committed: its replicas stop", name, error)
    return True


async def external_url(deps: DeployerDeps, principal: Principal, token: str | None, workspace_id: int,
                       pipeline_name: str) -> ExternalUrl:
    async def read() -> Any:
        await require_member(deps.membership(token), principal, workspace_id)
        pipeline = await store.pipeline_by_name(deps.pool, workspace_id, pipeline_name)
        if pipeline is None:
            raise NotFound(f"pipeline {echo(pipeline_name)} not found")
        return await store.active_deployment(deps.pool, pipeline["id"])

    active = await _answered_in_time(deps, f"admin/get_pipeline_external_url of {echo(pipeline_name)}", read())
    if active is None:
        raise NotFound(f"pipeline {echo(pipeline_name)} is not deployed")
    return ExternalUrl(url=f"{deps.public_url}/v1/api/pipelines/infer/{active['deploy_id']}-{active['id']}/"
                           f"{pipeline_name}")


async def resolve_deployment(deps: DeployerDeps, principal: Principal, token: str | None,
                             name: str) -> DeploymentRoute:
    """For the gateway: where a deployment's inferences go. Members (user tokens) and the workspace's own
    inference tokens only; anyone else gets the answer a deployment that does not exist gets."""
    async def read() -> Any:
        row = await _deployment_for(deps, principal, token, name, check_member=False)
        await require_inference_access(deps.membership(token), principal, row["workspace_id"],
                                       deployment_not_found(name))
        return row

    row = await _answered_in_time(deps, f"the route of deployment {echo(name)}", read())
    if not row["active"]:
        raise NotFound(f"deployment {echo(name)} is not deployed")
    failure = _restore_failure(deps, name)
    if failure is not None:
        raise Unavailable(failure, code=DEPLOYMENT_FAILED)
    spec = json.loads(row["spec"])
    # Running when any replica is: known without a probe of every replica when one answered lately (serving_now)
    if deps.backend.serving_now(name):
        status, reason, retry_after = "Running", None, None
    else:
        status, reason, retry_after = route_state(await deps.backend.status(name))
    first = spec["steps"][0]["models"][0] if spec.get("steps") else {}
    last = spec["steps"][-1]["models"][0] if spec.get("steps") else {}
    return DeploymentRoute(deployment_id=row["id"], name=name, pipeline_name=row["pipeline_name"],
                           workspace_id=row["workspace_id"], status=status,
                           pipeline_version=str(row["pipeline_version"]), input_schema=first.get("input_schema"),
                           output_schema=last.get("output_schema"), batchable=_batchable(spec),
                           pipeline_id=row["pipeline_id"], reason=reason, retry_after=retry_after)


def _restore_failure(deps: DeployerDeps, name: str) -> str | None:
    """What to tell about an active deployment whose restore after a deployer restart failed (nothing of it runs,
    and nothing will until it is deployed again), or None."""
    reason = deps.failed_restores.get(name)
    if reason is None or name in deps.backend.sets:
        return None
    return (f"deployment {name!r} failed to restore after the deployer restarted: {reason}; nothing runs for it: "
            "redeploy it (pipelines/deploy) or undeploy it")


def _batchable(spec: dict[str, Any]) -> bool:
    """Rows of concurrent requests may share one engine call (services/engine/batching.py): plain ONNX steps."""
    steps = spec.get("steps") or []
    return bool(steps) and float(spec.get("engine_config", {}).get("batch_max_delay_ms", 0)) >= 0 and all(
        step["kind"] == "ModelInference" and len(step["models"]) == 1 and step["models"][0].get("runtime") == "onnx"
        for step in steps)


OWED_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0)
"""Waits before each background write of an owed deployed event (about 3.5 minutes in all); past the last, the
row still owes it (deployed_pending) and the restore at the next start writes it."""


class OwedDeployed:
    """events.pipeline.deployed of deployments whose replicas serve but whose write of the event failed (the
    database refused or lost the commit): each written again in the background, a bounded number of times
    (OWED_RETRY_DELAYS), under the pipeline's lock (taken once the pool gave a connection, and only when free:
    _write_once) and only while the row still owes it (record_deployed's
    `if_pending`: active and deployed_pending), so never a second one: an undeploy meanwhile writes it itself
    (store.deactivate), a redeploy writes it first (owed_before), and a later owed event of the same deployment (a
    redeploy whose write failed too) replaces this one. Each ends the write (forget/owe, under the pipeline's lock):
    `if_pending` tells that the row owes an event, not which activation's. Before, the event waited for the next restart
    of the deployer or a redeploy. The deployer's stop cancels what is left (the row keeps owing it)."""

    def __init__(self) -> None:
        self.tasks: dict[int, asyncio.Task] = {}
        self.stopped = False

    def owe(self, deps: DeployerDeps, pipeline_id: int, event: PipelineDeployed) -> None:
        if self.stopped:  # a deploy that answers after the stop (past the command drain): no task outliving the
            # stop, which would write through a closed pool; the row keeps owing it, the next start's restore writes it
            log.warning("deployment %s: its events.pipeline.deployed is left to the next start's restore (stopping)",
                        event.name)
            return
        previous = self.tasks.pop(event.deployment_id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self._write(deps, pipeline_id, event),
                                   name=f"deployer.owed_deployed.{event.deployment_id}")
        self.tasks[event.deployment_id] = task
        task.add_done_callback(lambda done: self.tasks.pop(event.deployment_id, None)
                               if self.tasks.get(event.deployment_id) is done else None)

    def forget(self, deployment_id: int) -> None:
        """The deployment's activation is over (undeployed, or activated again): its owed event was written or is
        not owed any more, so its background write stops. Called under the pipeline's lock, which the write takes
        before it writes, so a cancelled write never writes. Before, it went on: record_deployed's `if_pending` checks
        that the row owes an event, not which activation's, so a later activation of the row (same id) left owing
        its own (a deploy failing with an error it does not undo) had the earlier event written a second time."""
        task = self.tasks.pop(deployment_id, None)
        if task is not None:
            task.cancel()

    async def _write(self, deps: DeployerDeps, pipeline_id: int, event: PipelineDeployed) -> None:
        for attempt, delay in enumerate(OWED_RETRY_DELAYS, 1):
            await asyncio.sleep(delay)
            try:
                told = await self._write_once(deps, pipeline_id, event)
            except Exception as exc:
                log.warning("deployment %s: its owed events.pipeline.deployed not written (attempt %d of %d): %s",
                            event.name, attempt, len(OWED_RETRY_DELAYS), exc)
                continue
            if told is None:  # a deploy or undeploy of the pipeline is under way: it writes the event or clears the
                # mark (a redeploy, an undeploy), or the next attempt finds it still owed
                log.info("deployment %s: its owed events.pipeline.deployed waits for a deploy or undeploy of its"
                         " pipeline (attempt %d of %d)", event.name, attempt, len(OWED_RETRY_DELAYS))
                continue
            if told:
                log.info("deployment %s: its owed events.pipeline.deployed written", event.name)
                deps.events_committed()
            return
        log.error("deployment %s: its events.pipeline.deployed still not written; the next start's restore writes it",
                  event.name)

    @staticmethod
    async def _write_once(deps: DeployerDeps, pipeline_id: int, event: PipelineDeployed) -> bool | None:
        """One write of the owed event: a pool connection first, holding no lock while the pool is exhausted, then
        the pipeline's lock only if it is free (None when it is not: a deploy or undeploy holds it, or waits for
        it), so never a connection held while waiting for the lock either (that deploy may need one from the pool
        to finish). Under the lock, as deploy and undeploy change the row, and only while the row still owes the
        event (record_deployed's `if_pending`): never twice. Before, the lock was taken first and held while waiting
        for a connection: an undeploy of the pipeline meanwhile waited, and answered 409 deploy_in_progress."""
        async with deps.pool.acquire() as conn:
            lock = deps.pipeline_lock(pipeline_id)
            # busy while held or waited for: a lock just released to a waiting undeploy is the undeploy's
            if not await lock.try_acquire():
                return None
            try:
                # the row says its replicas served first, in a commit of its own (the deploy's mark may have failed
                # with the event's write): should the event's write keep failing, it is still owed (store.mark_served)
                await store.mark_served(conn, event.deployment_id)
                async with conn.transaction():
                    return await store.record_deployed(conn, event, if_pending=True)
            finally:
                lock.release()

    async def stop(self) -> None:
        self.stopped = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


DEACTIVATION_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0) + (30.0,) * 19
"""Waits before each background deactivation of a failed first deploy's row (Deactivations): about 10 minutes in all,
a PostgreSQL restart or failover included."""


class _Background:
    """Background repairs the deployer owns (Deactivations, RecordRechecks): their tasks, kept (the event loop keeps
    only weak references), and cancelled by the deployer's stop; none is started after it."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()
        self.stopped = False

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def stop(self) -> None:
        tasks = list(self.tasks)
        self.stopped = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Deactivations(_Background):
    """Rows of first deploys (or of deployments that were not serving) whose replicas failed to start and whose
    clean-up (store.deactivate) the database did not take, or whose activation's commit did not answer (it may have
    been committed, no replica started): active with nothing running, shown "Starting" for ever. Each is made inactive
    in the background, a bounded number of times (DEACTIVATION_RETRY_DELAYS), only while the row still holds the
    failed deploy's activation (store.deactivate's `activation`), so a deploy or undeploy of the pipeline meanwhile is
    left as it is (no in-process lock needed), each try under the pipeline's advisory lock, so a transaction of the
    deploy the server still runs ends before the row is read. Past the last try, or when the deployer stops
    first, the row stays active: an undeploy ends it, and the next start's restore starts its replicas again (as for
    a deployer that died while a first deploy's replicas loaded). Until then this start's restore leaves it alone
    (`pending`). docs/deployment.md."""

    def __init__(self) -> None:
        super().__init__()
        # activations being made inactive: the restore (_restart) starts no replicas for a row holding one. Started,
        # they ran on once the row was made inactive under them (a deploy during the start's restore)
        self.pending: set[uuid.UUID] = set()

    def owe(self, deps: DeployerDeps, deployment_id: int | None, name: str, event: PipelineUndeployed | None,
            activation: uuid.UUID, pipeline_id: int) -> None:
        """`deployment_id` None: a first deploy whose activation's commit did not answer (its row found by
        `activation`, if it was committed)."""
        if self.stopped:
            log.warning("deployment %s: left active with nothing running (stopping)", name)
            return
        self.pending.add(activation)
        task = self._start(self._tries(deps, deployment_id, name, event, activation, pipeline_id),
                           f"deployer.deactivation.{activation}")
        # when the task ends, however: a task cancelled before it first ran (the deployer's stop) runs no finally
        task.add_done_callback(lambda _: self.pending.discard(activation))

    @staticmethod
    async def _tries(deps: DeployerDeps, deployment_id: int | None, name: str, event: PipelineUndeployed | None,
                     activation: uuid.UUID, pipeline_id: int) -> None:
        for attempt, delay in enumerate(DEACTIVATION_RETRY_DELAYS, 1):
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(record_check_within(deps)):
                    # under the pipeline's advisory lock: the deploy's own transaction, given up on by the deploy
                    # but still run by the server, ends first
                    changed = await store.deactivate(deps.pool, deployment_id, event, activation=activation,
                                                     pipeline_id=pipeline_id)
                    now = None if changed else await store.activation_of(deps.pool, activation)
            except Exception as exc:
                log.warning("deployment %s: still not made inactive (attempt %d of %d): %s", name, attempt,
                            len(DEACTIVATION_RETRY_DELAYS), exc)
                continue
            log.info("deployment %s: %s", name, _deactivation_outcome(changed, now))
            if (changed and event is not None) or now is not None:  # (the outbox's sweep would send them too)
                deps.events_committed()  # a try whose answer was lost may have written the undeployed
            return
        log.error("deployment %s: its replicas failed to start and it could not be made inactive; undeploy it",
                  name)


class RecordRechecks(_Background):
    """Redeploys of a serving deployment whose record's outcome no look could tell (_recorded's 503 "could not be
    confirmed"): their new replicas were stopped and the previous ones serve, while the record may have been committed
    all the same (its answer lost, or the server committed it after the looks gave up): the row would then name a
    version, and maybe a name, whose replicas do not run, and the previous ones serve with no row naming them. Once
    the database answers, the row is read again (then under the pipeline's lock): if it still holds the activation,
    its replicas are started from the row (as a restore does; under one name the backend swaps them in for the previous
    set; the previous name, if it was renamed, is stopped once they serve; not started twice when a restore since
    started them); else the row names what runs (or a deploy or an undeploy since decided it), but for the previous
    set if it still runs with the row no longer naming it active: a deploy or an undeploy since went by the row's name
    (the redeploy's, its record committed) and left it running, which is stopped. Tried a bounded number of times
    (DEACTIVATION_RETRY_DELAYS); the deployer's stop cancels what is left (the next start's restore starts what the row
    names)."""

    def __init__(self) -> None:
        super().__init__()
        # the rechecks under way, in the order they were owed: each redeploy's activation -> its previous set (`old`)
        self.pending: dict[uuid.UUID, str] = {}

    def owe(self, deps: DeployerDeps, pipeline_id: int, deployment_id: int, old: str, activation: uuid.UUID) -> None:
        if self.stopped:
            log.warning("deployment %s: whether its redeploy was recorded is left to the next start's restore"
                        " (stopping)", old)
            return
        self.pending[activation] = old
        task = self._start(self._recheck(deps, pipeline_id, deployment_id, old, activation),
                           f"deployer.record_recheck.{activation}")
        task.add_done_callback(lambda _: self.pending.pop(activation, None))

    def _left_to_a_later_one(self, old: str, activation: uuid.UUID) -> bool:
        """Whether a recheck owed after this one (`activation`'s) has the same previous set `old`: a redeploy of `old`
        again, while this one's recheck had not decided, whose record no look could tell either. That one decides what
        of `old` runs (it stops it once its own replicas serve, or leaves it serving when they do not start or its
        database never answers): stopped here because the row names the later redeploy, `old` left the row active with
        nothing running until that recheck started its replicas, and for good if it never did."""
        owed = list(self.pending.items())
        mine = next((index for index, (made, _) in enumerate(owed) if made == activation), len(owed))
        return any(previous == old for _, previous in owed[mine + 1:])

    async def _recheck(self, deps: DeployerDeps, pipeline_id: int, deployment_id: int, old: str,
                       activation: uuid.UUID) -> None:
        def recorded(row: dict[str, Any] | None) -> bool:
            return row is not None and row["id"] == deployment_id and row["active"] and \
                row["activation"] == activation

        def left_running(row: dict[str, Any] | None) -> bool:
            # the previous set runs while the row does not name it active: a deploy or an undeploy since went by the
            # row's name, the redeploy's when its record was committed (the deploy started it and left `old`, the
            # undeploy stopped it, which did not run, and left `old`)
            return old in deps.backend.sets and (row is None or not row["active"] or
                                                 f"{row['deploy_id']}-{row['id']}" != old)

        async def read(conn: asyncpg.Connection) -> dict[str, Any] | None:
            # under the pipeline's advisory lock, which the record's transaction held: one the server still runs (its
            # client gone) ends before the row is read
            row = await store.pipeline_deployment(conn, pipeline_id)
            if row is not None:
                # and its active flag under the row's lock: an undeploy's deactivation (which takes no advisory lock)
                # given up on by the undeploy (its 503) but still run by the server ends first. Read without, the row
                # read active, the recheck started its replicas and the deactivation then committed under them
                row["active"] = bool(await store.deployment_active(conn, row["id"]))
            return row

        for attempt, delay in enumerate(DEACTIVATION_RETRY_DELAYS, 1):
            await asyncio.sleep(delay)
            try:
                # first without the pipeline's lock (a deploy or undeploy meanwhile is not held up), on one
                # connection: a try that a server stopped answering holds waits, cancelled, until it answers, rather
                # than one more connection left at each try (as Deactivations)
                async with asyncio.timeout(record_check_within(deps)):
                    row = await _in_transaction(deps, read)
                if recorded(row) or left_running(row):  # again under the lock, as a deploy changes the row and
                    # what runs
                    async with deps.pipeline_lock(pipeline_id):
                        row = await _answered_within(record_check_within(deps), _in_transaction(deps, read))
                        if recorded(row):
                            await RecordRechecks._start_recorded(deps, row, old)
                            return
                        if left_running(row):
                            if self._left_to_a_later_one(old, activation):
                                log.info("deployment %s: left to the recheck of a later redeploy of it", old)
                                return
                            await RecordRechecks._stop_left(deps, row, old)
                            return
            except Exception as exc:
                log.warning("deployment %s: whether its redeploy was recorded is still not known (attempt %d of %d):"
                            " %r", old, attempt, len(DEACTIVATION_RETRY_DELAYS), exc)
                continue
            log.info("deployment %s: its redeploy was not recorded (or a deploy or undeploy since decided what runs):"
                     " what runs is what the row names", old)
            return
        log.error("deployment %s: whether its redeploy was recorded was never known; look at the pipeline and deploy"
                  " again", old)

    @staticmethod
    async def _start_recorded(deps: DeployerDeps, row: dict[str, Any], old: str) -> None:
        """The recorded redeploy's replicas started from its row (under the pipeline's lock), the previous name
        stopped once they serve if it was renamed; a start that fails leaves the previous ones serving."""
        name = f"{row['deploy_id']}-{row['id']}"
        if name != old and name in deps.backend.sets:
            # a restore since (the deployer's start, waiting for this pipeline behind the redeploy) started them from
            # the row: started again here, they were swapped for a second set of the same replicas
            log.warning("deployment %s: its redeploy was recorded after all (as %s), whose replicas run", old, name)
        else:
            log.warning("deployment %s: its redeploy was recorded after all (as %s): its replicas are started again",
                        old, name)
            spec = ReplicaSpec.model_validate_json(row["spec"])
            spec.deployment.id, spec.deployment.name = row["id"], name
            config = json.loads(row["engine_config"])
            try:
                await deps.backend.start(name, spec, config.get("replica_count", 1), *_autoscale(config))
            except Exception as exc:
                log.error("deployment %s: its recorded redeploy's replicas failed to start again (%r); the previous"
                          " ones serve: deploy again", name, exc)
                return
        if old != name:
            await RecordRechecks._stop_left(deps, row, old)

    @staticmethod
    async def _stop_left(deps: DeployerDeps, row: dict[str, Any] | None, old: str) -> None:
        """The previous set `old` stopped, no row naming it active (under the pipeline's lock). Logged, not raised:
        raised, the recheck tried again and started the recorded replicas a second time."""
        now = "inactive" if row is None or not row["active"] else f"{row['deploy_id']}-{row['id']}"
        log.warning("deployment %s: stopped, its row names %s", old, now)
        try:
            await deps.backend.stop(old)
        except Exception as exc:
            log.error("deployment %s: its replicas, which no row names, could not be stopped (%r)", old, exc)


def _deactivation_outcome(changed: bool, now: Any) -> str:
    """What a background deactivation (Deactivations) found: `changed` (it made the row inactive), else `now`, the row
    that holds the failed deploy's activation (store.activation_of) or None. Before, whatever it found unchanged was
    logged as "deployed or undeployed since", also when an earlier try's commit had taken effect, its answer lost."""
    if changed:
        return "made inactive, its replicas not started"
    if now is not None:  # inactive: an undeploy keeps the activation, and so does a try of ours
        return ("already inactive: an earlier try's commit took effect though its answer was lost (or it was "
                "undeployed since)")
    # the row holds another activation, or none of the pipeline's does: which, the row cannot tell (a deploy whose
    # activation's commit did not answer may never have been recorded; a later deploy replaces an activation)
    return "no row holds its activation (deployed again since, or it was never recorded): left as it is"


class DeploymentRestore(BackgroundTask):
    """After a restart of the deployer, active deployments get their replicas again, two deployments at a time
    (all at once, their model loading would starve every other process on a small machine). One task owns the
    restarts: the event loop keeps only weak references to tasks, so restarts created and forgotten could be
    garbage-collected mid-flight (the asyncio docs' warning), and a stopping deployer had no way to cancel them."""

    task_name = "deployer.restore"

    def __init__(self, deps: DeployerDeps, rows: list[Any]) -> None:
        self.deps = deps
        self.rows = rows

    async def _run(self) -> None:
        gate = asyncio.Semaphore(RESTORE_CONCURRENCY)
        # gather owns the restarts: cancelling this task (stop()) cancels each, and their replicas are stopped
        outcomes = await asyncio.gather(*(_restart(self.deps, row["pipeline_id"], row["id"], gate,
                                                   _restored_as(row)) for row in self.rows), return_exceptions=True)
        for row, outcome in zip(self.rows, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("could not restore deployment %s", row["id"], exc_info=outcome)


async def restore_deployments(deps: DeployerDeps) -> DeploymentRestore:
    """Name the deployments this deployer serves (announce_serving), then start restoring the active deployments (in
    the background); stop() of the answer cancels what is left."""
    rows = await store.active_deployments(deps.pool)
    await announce_serving(deps, rows)
    restore = DeploymentRestore(deps, rows)
    restore.start()
    return restore


async def sweep_gone_folders(deps: DeployerDeps) -> list[str]:
    """At the deployer's start and every GONE_SWEEP_EVERY: remove the folders (deployments/<name>/, engine-work/<name>/)
    of deployment names no deployment has any more, which nothing else would ever remove: a name whose deployment row
    does not exist (a database reset under a kept data directory); a name other than its row's own (`<deploy_id>-<id>`
    with another deploy_id) of an inactive row (an earlier name left by an undeploy or a rename made before session 32,
    2026-12-05, when deployments/<name>/ was never removed, and which no later undeploy names); and an inactive row's
    own name's unless it holds a failed deploy's kept logs (backend.KEPT_MARKER, written by a failed first start:
    before session 34 nothing told those apart from what an undeploy before session 32 left, so both stayed for
    ever), and those too KEPT_FAILED_FOR after their marker's time or once KEPT_FAILED_MAX newer ones are kept. A data
    directory of before the markers has its unmarked folders adopted at the first sweep (LocalBackend.kept_folders:
    kept KEPT_FAILED_FOR from then, not removed). An active row's folders are never touched (a failed renamed
    redeploy's logs, a failed restore's, stay until its undeploy), nor a name a replica running here has. Decided on
    the event loop as an undeploy's removal (LocalBackend.remove_gone: never a set's name, one a start uses, nor one
    a start began or ended for since the listing, whose marker the listing may have missed; a deploy that comes
    after makes folders of its own). The names whose removal began; a listing or a database that fails removes
    nothing (logged): the next sweep looks again."""
    backend = deps.backend
    try:
        since = backend.sweep_began()
        names = await asyncio.to_thread(backend.folder_names)
        ids: dict[str, int] = {}
        for name in names:
            deploy_id, dash, tail = name.rpartition("-")
            if deploy_id and dash and tail.isascii() and tail.isdigit() and int(tail) < 2**63:
                ids[name] = int(tail)
        rows = await _answered_within(deps.timeout, store.deployment_names(
            deps.pool, sorted(set(ids.values())))) if ids else {}
        own = [name for name, number in ids.items()
               if number in rows and not rows[number][1] and name == f"{rows[number][0]}-{number}"]
        now = time.time()
        # (also with no folder to look at: a data directory with none from before the markers is marked now)
        kept, live = await asyncio.to_thread(backend.kept_folders, own, now)
    except Exception as exc:  # noqa: BLE001 - logged; nothing is removed, the next sweep looks again
        log.warning("could not look for the folders of deployments that are gone: %r", exc)
        return []
    if not ids:
        return []
    gone = {name for name, number in ids.items()
            if number not in rows or (not rows[number][1] and name != f"{rows[number][0]}-{number}")}
    gone.update(name for name, marked in kept.items() if marked is None)
    newest_first = sorted(((marked, name) for name, marked in kept.items() if marked is not None), reverse=True)
    gone.update(name for place, (marked, name) in enumerate(newest_first)
                if place >= KEPT_FAILED_MAX or now - marked > KEPT_FAILED_FOR)
    removing = backend.remove_gone(gone - live, since)
    if removing:
        log.info("removing the folders of %d deployment names no deployment has any more: %s", len(removing),
                 ", ".join(removing[:20]) + (" ..." if len(removing) > 20 else ""))
    return removing


GONE_SWEEP_EVERY = 3600.0
"""Seconds between sweep_gone_folders' runs after the start's: a failed deploy's kept logs go KEPT_FAILED_FOR after
their marker's time without waiting for the deployer's next start."""


async def sweep_gone_folders_every(deps: DeployerDeps, every: float = GONE_SWEEP_EVERY) -> None:
    """sweep_gone_folders every `every` seconds, until cancelled (the deployer's stop)."""
    while True:
        await asyncio.sleep(every)
        try:
            await sweep_gone_folders(deps)
        except Exception:  # noqa: BLE001 - logged; the next run looks again
            log.exception("the sweep of the folders of deployments that are gone failed")


NAMED_AGAIN_AFTER = 3600.0
"""Seconds before a start names a deployment again in an events.pipeline.serving (store.record_serving)."""


async def announce_serving(deps: DeployerDeps, rows: list[Any]) -> None:
    """At a start, an events.pipeline.serving for every active deployment whose events.pipeline.deployed was written
    (`announced`, and not owed again for a new activation: `deployed_pending`), in one transaction of the outbox:
    the log store takes a deployment's log batches only once it knows whose the deployment is, and a deployed event
    older than EVENTS' retention (30 days, 1 GiB) is gone from the stream, so a log store upgraded or started on an
    empty table would hold, then quarantine, the batches of every deployment serving since (docs/logs.md). Written
    for the rows, not once their replicas serve again: whose a deployment is does not depend on its restore, and
    replicas that outlive the deployer (Kubernetes) log meanwhile. A row owing its deployed event (a first deploy,
    or a redeploy, under its new name) gets that when its replicas serve (_restart). Lineage records the event and
    draws nothing of it (services/workflow_lineage/graph.py DRAWN). A deployment named less than NAMED_AGAIN_AFTER
    ago is not named again (its naming is still in EVENTS): a deployer restarted in a loop wrote one event per
    deployment per start, until EVENTS' size limit refused every service's events. Raises when PostgreSQL fails: the
    start fails, as it does when the rows cannot be read."""
    events = [PipelineServing(**_deployed_event_of(row).model_dump(exclude={"event_id", "occurred_at"}))
              for row in rows if row.get("announced") and not row.get("deployed_pending")]
    if not events:
        return
    async with deps.pool.acquire() as conn, conn.transaction():
        events = await store.record_serving(conn, events, NAMED_AGAIN_AFTER)
    if not events:
        return
    log.info("named the %d deployments this deployer serves (events.pipeline.serving)", len(events))
    deps.events_committed()


RESTORE_READ_DELAYS = (0.0, *DEACTIVATION_RETRY_DELAYS)
"""Waits before each try of a deployment's restore whose row the database did not give (_restart): ~10 minutes in
all, the pipeline's lock let go between tries."""


class _RowUnread(Exception):
    """_restart_once: the deployment's row was not read (the database failed or did not answer)."""


def _restored_as(row: Any) -> str | None:
    """The name of a deployment the restore was asked for, as its row read at the start said (None if unknown)."""
    return f"{row['deploy_id']}-{row['id']}" if row.get("deploy_id") else None


async def _restart(deps: DeployerDeps, pipeline_id: int, deployment_id: int, gate: asyncio.Semaphore,
                   name: str | None = None) -> None:
    """A deployment's restore (DeploymentRestore), tried again while its row cannot be read (RESTORE_READ_DELAYS),
    neither the pipeline's lock nor the restore's gate held in between. Raises once no try read it, the deployment
    `name` (as the start read it) then marked as failed to restore: its status is Error saying to redeploy it
    (_restore_failure), as for replicas that failed to start, until a deploy or an undeploy. Before (review r1), it
    said "Starting" with nothing left to start it."""
    for attempt, delay in enumerate(RESTORE_READ_DELAYS, 1):
        await asyncio.sleep(delay)
        try:
            async with gate, deps.pipeline_lock(pipeline_id):
                await _restart_once(deps, pipeline_id, deployment_id)
            return
        except _RowUnread as exc:
            log.warning("deployment %s: not restored yet, its row was not read (attempt %d of %d): %r",
                        deployment_id, attempt, len(RESTORE_READ_DELAYS), exc.__cause__)
        except Exception as exc:
            # what no try gets past: the row's read raised what is not the database failing (database_failed: a
            # role's statement_timeout, a protocol violation, a bug), or the replicas' start raised otherwise than
            # failing to start (_restart_once marked that one). Nothing runs for it: its status says so, as when no
            # try read the row, not "Starting" with nothing left to start it (session 40: those read errors were
            # _RowUnread, retried and then marked, until database_failed narrowed the deployer's tuple)
            if name is not None:
                deps.failed_restores.setdefault(name, f"the deployer's restore of it raised {type(exc).__name__} "
                                                      "(see the deployer's log)")
            raise
    if name is not None:  # a deploy under this name meanwhile runs its set (_restore_failure) and forgets this
        deps.failed_restores.setdefault(name, "the database did not give its row while the deployer restored it")
    raise Unavailable(f"deployment {deployment_id}: its row was never read; it is restored at the next start, or by "
                      "a deploy of its pipeline")


async def _restart_once(deps: DeployerDeps, pipeline_id: int, deployment_id: int) -> None:
    """_restart's try, under the pipeline's lock: the row's read is bounded (READ_ANSWERS_WITHIN of the request
    timeout, else _RowUnread), as is the owed deployed event's write (DEPLOY_STEP_ANSWERS_WITHIN, else written in the
    background). Before, both waited as long as a database that stopped answering did, the pipeline's lock held: every
    deploy of the pipeline a 409 deploy_in_progress after its lock wait, every undeploy after its own."""
    # under the pipeline's lock, as deploy and undeploy: a deploy of the same name during the restore had its
    # live set removed from the backend by the restore's failure cleanup, its replicas running untracked. The
    # row again, inside the lock: a deploy or undeploy that ran while this waited decides what runs now.
    try:
        row = await _answered_within(deps.timeout * READ_ANSWERS_WITHIN, store.deployment(deps.pool, deployment_id))
    except Exception as exc:
        if not database_failed(exc):
            raise
        raise _RowUnread() from exc
    if row is None or not row["active"]:
        return
    name = f"{row['deploy_id']}-{row['id']}"
    if name in deps.backend.sets:  # a deploy while this waited started it
        return
    if row.get("activation") in deps.deactivations.pending:
        # a deploy while this waited answered that this activation is made inactive (its commit's answer lost, or
        # its replicas failed to start and the clean-up did not take): started here, they ran on under a row
        # Deactivations then made inactive, named by no active row
        log.info("deployment %s: not restored, being made inactive (its deploy failed)", name)
        return
    deps.failed_restores.pop(name, None)
    try:
        spec = ReplicaSpec.model_validate_json(row["spec"])
        spec.deployment.id, spec.deployment.name = row["id"], name
        config = json.loads(row["engine_config"])
        await deps.backend.start(name, spec, config.get("replica_count", 1), *_autoscale(config))
    except (RuntimeError, TimeoutError) as exc:
        # the deployment stays active (a later restart tries again) but says it failed, rather than "Starting"
        # forever with nothing running (docs/inference.md)
        deps.failed_restores[name] = str(exc) or "its engine replicas did not start"
        log.error("could not restore deployment %s: %s", name, exc)
        return  # nothing serves: an owed deployed event stays owed (deployed_pending) for a restore that serves
    except Exception:
        deps.failed_restores[name] = "the deployer could not start its replicas (see the deployer's log)"
        raise
    if row["deployed_pending"]:  # the deployer that started it died before its deployed event's commit
        event = _deployed_event_of(row)
        try:
            told = await _answered_within(deps.timeout * DEPLOY_STEP_ANSWERS_WITHIN, _in_transaction(
                deps, lambda conn: store.record_deployed(conn, event, if_pending=True)))
        except Exception as exc:  # the replicas serve: as for a deploy, the event is written in the background
            # (OwedDeployed). Before, the error ended the restart and the event waited for the next one.
            log.warning("deployment %s restored but its owed events.pipeline.deployed was not written (%s):"
                        " retried in the background", name, exc)
            await _owe(deps, pipeline_id, event)
            return
        if told:
            log.info("deployment %s restored: its events.pipeline.deployed, not written before, is sent now", name)
            deps.events_committed()
