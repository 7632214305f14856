"""Seed 003's training-data reference and get_stats (monitoring service).

set_training_data lists the images dataset's files with the caller's rights and records them with status
`computing`; a background task (one per service process, under a Postgres advisory lock per deployment, picking up
any reference still `computing`, so a restart resumes it) reads each image from object storage, computes
images.image_features (the same statistics every prediction keeps) and the file's labels, and stores the reference:
each feature's mean, standard deviation and deciles (inputs), and the label distribution (outputs). Progress is
`images_done / images_total`. A newer set_training_data or disable_training_data_reference bumps the attempt, so a
computation that finishes late never overwrites it.

get_stats computes the asked ServiceMetrics now, from the `predictions` table (the deployment's own predictions and
the monitored ones: seed-003 predictions are kept there, not in the inference log store) joined with `reviews`,
and the reference when it is ready (stats.py holds the arithmetic): AGGREGATED_LABEL_DISTRIBUTION reads the hourly
pre-aggregation (aggregates.py), PREDICTIONS_DATA a count and the newest rows, every other value only the columns and
rows it needs (stats_columns.py); all equal stats.compute over every matching row."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from faststream.nats import NatsRouter

from services.monitoring import aggregates, stats, stats_columns, sweeps
from services.monitoring import feedback_store as fs
from services.monitoring.feedback import FeedbackDeps, _dataset, _view, dataset_files
from shared import subjects
from shared.authz import Principal
from shared.background import Sweeper
from shared.bus import CallContext, command, request
from shared.errors import Conflict, InvalidRequest, NotFound, RailyardError
from shared.images import image_features
from shared.messages.monitoring import DeploymentQuery, ModelVersionRef
from shared.messages.monitoring_feedback import (
    DeploymentStats,
    GetStats,
    ReferenceFeature,
    ReferenceFeatureQuery,
    SetTrainingData,
    TrainingDataStatus,
)
from shared.messages.registry import ResolvedModel, ResolveModel
from shared.objectstore import BUCKET_DATASETS, content_key

log = logging.getLogger("railyard.monitoring.reference")

REFERENCE_SWEEP = 2.0
"""The reference computer's soonest look: its first after the start, after a failed sweep, while another process holds
a computing reference's lock. With none computing it waits sweeps.IDLE_WAIT for one a stopped process left (it looked
every 2 s); set_training_data wakes it."""
PROGRESS_EVERY = 10
MAX_REFERENCE_IMAGES = 20_000
MAX_STATS_ROWS = 200_000
"""get_stats computes over at most this many predictions (more: 400 asking to narrow the filters)."""


def _status(name: str, row: dict[str, Any] | None) -> TrainingDataStatus:
    if row is None:
        return TrainingDataStatus(deployment=name, status="none")
    return TrainingDataStatus(deployment=name, status=row["status"], dataset_id=row["dataset_id"],
                              version_id=row["version_id"], images_done=row["images_done"],
                              images_total=row["images_total"], error=row["error"],
                              requested_at=row["requested_at"], computed_at=row["computed_at"])


async def set_training_data(deps: FeedbackDeps, principal: Principal, token: str | None,
                            cmd: SetTrainingData) -> TrainingDataStatus:
    """Record the dataset's images and start computing their reference in the background."""
    view = await _view(deps, principal, token, cmd.deployment)
    version_id = cmd.dataset_version.version_id
    dataset = await _dataset(deps, token, view, cmd.dataset_version)  # with its file count: nothing listed yet
    m = deps.monitoring
    where = f"dataset {dataset['id']}" if version_id is None else f"dataset {dataset['id']} in version {version_id}"
    if not dataset["file_count"]:
        raise InvalidRequest(f"{where} has no images: upload the training images first (and save a version)")
    if dataset["file_count"] > MAX_REFERENCE_IMAGES:
        raise InvalidRequest(f"{where} has {dataset['file_count']} images: a reference takes at most "
                             f"{MAX_REFERENCE_IMAGES}")
    # page by page: one list of a large dataset (or of large labels) would not fit the bus. A version's files are
    # content-addressed objects the version keeps.
    listed = await dataset_files(deps, token, dataset["id"], version_id, MAX_REFERENCE_IMAGES)
    if not listed:  # emptied since it was counted
        raise InvalidRequest(f"{where} has no images: upload the training images first (and save a version)")
    files = [{"name": f.name, "sha256": f.sha256, "labels": f.labels} for f in listed]
    await fs.set_reference(m.pool, view.route.deployment_id, view.route.workspace_id, dataset["id"],
                           cmd.dataset_version.version_id, files)
    deps.wake_reference.set()
    return _status(view.route.name, await fs.reference_row(m.pool, view.route.deployment_id, reference=False))


async def training_status(deps: FeedbackDeps, principal: Principal, token: str | None,
                          cmd: DeploymentQuery) -> TrainingDataStatus:
    view = await _view(deps, principal, token, cmd.deployment)
    return _status(view.route.name, await fs.reference_row(deps.monitoring.pool, view.route.deployment_id,
                                                        reference=False))


async def disable_reference(deps: FeedbackDeps, principal: Principal, token: str | None,
                            cmd: DeploymentQuery) -> TrainingDataStatus:
    """Drop the reference (stats that need it answer 409 until a new one is ready)."""
    view = await _view(deps, principal, token, cmd.deployment)
    if await fs.reference_row(deps.monitoring.pool, view.route.deployment_id, reference=False) is None:
        raise Conflict(f"deployment {view.route.name!r} has no training data reference: nothing to disable")
    await fs.disable_reference(deps.monitoring.pool, view.route.deployment_id)
    return _status(view.route.name, await fs.reference_row(deps.monitoring.pool, view.route.deployment_id,
                                                        reference=False))


def _ids(values: list[str] | None, what: str) -> list[uuid.UUID] | None:
    if values is None:
        return None
    try:
        return [uuid.UUID(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_uuid(v))
        raise InvalidRequest(f"{what} must be prediction ids (UUIDs), got {bad!r}") from None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _time(value: float, what: str) -> datetime:
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidRequest(f"{what} must be a Unix timestamp in seconds, got {value!r}") from None


async def predictions_data(pool: Any, deployment_id: int, **filters: Any) -> tuple[int, dict[str, Any]]:
    """PREDICTIONS_DATA (and the number of predictions the filters keep) from a count and the newest
    stats.MAX_LISTED rows, which are all the answer lists: two queries in one snapshot instead of every row, so no
    row limit either. Equal to stats.compute over every row (tests/integration/test_monitoring_stats_aggregates.py)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        total = await fs.stats_count(conn, deployment_id, **filters)
        newest = await fs.stats_rows(conn, deployment_id, limit=stats.MAX_LISTED, **filters)
    return total, stats.compute("PREDICTIONS_DATA", newest, None) | {"count": total}


async def get_stats(deps: FeedbackDeps, principal: Principal, token: str | None, cmd: GetStats) -> DeploymentStats:
    """One ServiceMetrics value over the predictions (and reviews) the filters keep. A `model_version` that keeps no
    prediction is looked up in the registry (_known_model): one the workspace does not have is a 404 naming it, as
    set_model answers, not an answer of 0 predictions."""
    answer, workspace_id = await _stats(deps, principal, token, cmd)
    if answer.predictions == 0 and cmd.model_version is not None:
        await _known_model(deps, token, workspace_id, cmd.model_version)
    return answer


async def _known_model(deps: FeedbackDeps, token: str | None, workspace_id: int, model: ModelVersionRef) -> None:
    """NotFound when the registry has no model version `model` names in the deployment's workspace `workspace_id`
    (the registry's message: the model, or its version, not found). Asked only when the filter kept no prediction: a
    version deleted from the registry whose predictions are kept still filters them. Any other answer (a version
    not ready, a version that is no UUID, which may still name a sha, the registry not answering) leaves the 0."""
    m = deps.monitoring
    version = model.version
    try:
        uuid.UUID(version or "")
    except ValueError:  # the filter also matches a sha given as the version
        version = None
    try:
        await request(m.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
            workspace_id=workspace_id, name=model.name, version=version, sha=model.sha or (
                model.version if model.version is not None and version is None else None)),
            token=token, timeout=m.timeout, reply_model=ResolvedModel)
    except NotFound:
        raise  # the registry's words (the model, or its version or sha, not found), as set_model answers
    except RailyardError:
        return


async def _stats(deps: FeedbackDeps, principal: Principal, token: str | None,
                 cmd: GetStats) -> tuple[DeploymentStats, int]:
    """get_stats' answer and the deployment's workspace."""
    service = stats.check_service(cmd.service)
    start = _time(cmd.from_timestamp, "from_timestamp") if cmd.from_timestamp is not None else None
    end = _time(cmd.to_timestamp, "to_timestamp") if cmd.to_timestamp is not None else None
    if start and end and start > end:
        raise InvalidRequest("from_timestamp is after to_timestamp: nothing can match")
    if cmd.since is not None:
        recent = datetime.now(UTC) - timedelta(seconds=cmd.since)
        start = max(start, recent) if start else recent
    includes, excludes = _ids(cmd.includes, "includes"), _ids(cmd.excludes, "excludes")
    view = await _view(deps, principal, token, cmd.deployment)
    workspace_id = view.route.workspace_id
    pool = deps.monitoring.pool
    model = cmd.model_version
    if service in aggregates.AGGREGATED and includes is None and excludes is None:
        total, counts = await aggregates.label_counts(
            pool, view.route.deployment_id, model_name=model.name if model else None,
            model_version=(model.version or model.sha) if model else None, start=start, end=end, tags=cmd.tags)
        kept = await fs.reference_row(pool, view.route.deployment_id)
        reference = kept["reference"] if kept and kept["status"] == "ready" else None
        return DeploymentStats(deployment=view.route.name, service=service, predictions=total,
                               stats=aggregates.compute(service, total, counts, reference)), workspace_id
    if service == "PREDICTIONS_DATA":
        total, result = await predictions_data(
            pool, view.route.deployment_id, model_name=model.name if model else None,
            model_version=(model.version or model.sha) if model else None, start=start, end=end, includes=includes,
            excludes=excludes, tags=cmd.tags)
        return DeploymentStats(deployment=view.route.name, service=service, predictions=total,
                               stats=result), workspace_id
    # what follows reads up to MAX_STATS_ROWS predictions into memory: a few at once (monitoring.stats_at_once)
    async with deps.monitoring.stats_slots:
        if service in stats_columns.COLUMNAR:
            kept = await fs.reference_row(pool, view.route.deployment_id)
            total, result = await stats_columns.compute(
                pool, service, view.route.deployment_id,
                kept["reference"] if kept and kept["status"] == "ready" else None, max_rows=MAX_STATS_ROWS,
                model_name=model.name if model else None, model_version=(model.version or model.sha) if model else None,
                start=start, end=end, includes=includes, excludes=excludes, tags=cmd.tags)
            return DeploymentStats(deployment=view.route.name, service=service, predictions=total,
                               stats=result), workspace_id
        rows = await fs.stats_rows(pool, view.route.deployment_id, model_name=model.name if model else None,
                                   model_version=(model.version or model.sha) if model else None, start=start,
                                   end=end, includes=includes, excludes=excludes, tags=cmd.tags,
                                   limit=MAX_STATS_ROWS + 1)
        if len(rows) > MAX_STATS_ROWS:
            raise InvalidRequest(f"more than {MAX_STATS_ROWS} predictions match: narrow them with from_timestamp / "
                                 "to_timestamp, since, tags or model_version")
        kept = await fs.reference_row(pool, view.route.deployment_id)
        reference = kept["reference"] if kept and kept["status"] == "ready" else None
        result = await asyncio.to_thread(stats.compute, service, rows, reference)
        return DeploymentStats(deployment=view.route.name, service=service, predictions=len(rows),
                               stats=result), workspace_id


# --- the background computation --------------------------------------------------------------------------


MAX_FEATURE_VALUES = 200_000
"""A window of an assay on the training reference reads at most this many predictions (more: 400)."""


async def reference_feature(deps: FeedbackDeps, principal: Principal | None, token: str | None,
                            cmd: ReferenceFeatureQuery) -> ReferenceFeature:
    """One feature of the deployment's ready training reference, and its values in the deployment's predictions
    of [start_ms, end_ms) when a window is given (assays with a Training baseline). With a token the deployment is
    resolved with the caller's rights; without one (the assay scheduler on the bus) it is looked up by id in its
    workspace."""
    pool = deps.monitoring.pool
    if token is not None:
        if not cmd.deployment:
            raise InvalidRequest("name the deployment whose training reference is the baseline")
        assert principal is not None
        view = await _view(deps, principal, token, cmd.deployment)
        deployment_id, workspace_id, pipeline_name = (view.route.deployment_id, view.route.workspace_id,
                                                      view.route.pipeline_name)
        name = view.route.name
        if cmd.pipeline_name is not None and pipeline_name != cmd.pipeline_name:
            # the definite answer first: before, a reference not ready yet answered 409 (wait for it), and only once
            # it was ready this 400 came (from the assay runner)
            raise InvalidRequest(f"deployment {name!r} serves pipeline {pipeline_name!r}, not {cmd.pipeline_name!r}:"
                                 " an assay on a training reference belongs to its pipeline")
    else:
        if cmd.deployment_id is None:
            raise InvalidRequest("deployment_id is needed without a token")
        deployment_id, workspace_id, pipeline_name, name = cmd.deployment_id, cmd.workspace_id, None, str(
            cmd.deployment_id)
    if workspace_id != cmd.workspace_id:
        raise NotFound(f"deployment {cmd.deployment or cmd.deployment_id!r} not found in workspace "
                       f"{cmd.workspace_id}")
    kept = await fs.reference_row(pool, deployment_id)
    if kept is not None and kept["workspace_id"] != workspace_id:
        raise NotFound(f"deployment {name!r} not found in workspace {cmd.workspace_id}")
    if kept is None or kept["status"] != "ready":
        raise Conflict(f"deployment {name!r} has no ready training-data reference: call set_training_data and wait "
                       "until check_training_data_metrics_status is `ready`")
    features = kept["reference"]["features"]
    if cmd.feature not in features:
        raise InvalidRequest(f"the training reference has no feature {cmd.feature!r}: use one of "
                             f"{', '.join(sorted(features))}")
    values: list[float] = []
    if cmd.start_ms is not None and cmd.end_ms is not None:
        start = datetime.fromtimestamp(cmd.start_ms / 1000, UTC)
        end = datetime.fromtimestamp(cmd.end_ms / 1000, UTC)
        rows = await pool.fetch(
            "SELECT (features ->> $4)::double precision AS v FROM predictions WHERE deployment_id = $1"
            " AND workspace_id = $5 AND predicted_at >= $2 AND predicted_at < $3 AND features ? $4 LIMIT $6",
            deployment_id, start, end, cmd.feature, workspace_id, MAX_FEATURE_VALUES + 1)
        if len(rows) > MAX_FEATURE_VALUES:
            raise InvalidRequest(f"more than {MAX_FEATURE_VALUES} predictions in one window: use a narrower width")
        values = [float(r["v"]) for r in rows]
    return ReferenceFeature(deployment_id=deployment_id, workspace_id=workspace_id, pipeline_name=pipeline_name,
                            feature=cmd.feature, reference=features[cmd.feature], values=values)


def _features_of(data: bytes) -> dict[str, float] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return image_features(img)
    except Exception:
        return None


class ReferenceComputer(Sweeper):
    """Computes references left `computing` (new ones, woken by set_training_data, and those a stopped process left,
    found within sweeps.IDLE_WAIT)."""

    task_name = "training-reference"
    every, log, failure = REFERENCE_SWEEP, log, "training reference sweep failed (retried on the next sweep)"

    def __init__(self, deps: FeedbackDeps) -> None:
        self.deps = deps

    def wake_event(self) -> asyncio.Event:
        return self.deps.wake_reference

    def quiet_pool(self) -> Any:
        return self.deps.monitoring.pool

    def next_wait(self, due: float | None) -> float:
        return REFERENCE_SWEEP if due is None else due  # None: a failed sweep

    async def sweep(self) -> float:
        """Compute every reference left computing; the wait until the next look."""
        due = sweeps.IDLE_WAIT
        for deployment_id, attempt in await fs.computing_references(self.deps.monitoring.pool):
            if not await self.compute(deployment_id, attempt):
                # another process computes it, perhaps an attempt a newer set_training_data here superseded (which
                # woke this computer): nothing else looks for the new attempt before IDLE_WAIT
                due = REFERENCE_SWEEP
        return due

    async def compute(self, deployment_id: int, attempt: int) -> bool:
        """Compute the reference under its advisory lock; False when another process holds it."""
        pool = self.deps.monitoring.pool
        async with pool.acquire() as lock_conn:
            if not await lock_conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtextextended('monitoring.reference:' || $1::int, 0))",
                    deployment_id):
                return False
            try:
                row = await fs.reference_row(pool, deployment_id, reference=False, files=True)
                if row is None or row["status"] != "computing" or row["attempt"] != attempt:
                    return True
                try:
                    reference, error = await self._reference(deployment_id, attempt, row["files"]), None
                except Exception as exc:
                    reference, error = None, str(exc) or type(exc).__name__
                await fs.reference_finished(pool, deployment_id, attempt, reference, error)
            finally:
                await lock_conn.execute(
                    "SELECT pg_advisory_unlock(hashtextextended('monitoring.reference:' || $1::int, 0))",
                    deployment_id)
        return True

    async def _reference(self, deployment_id: int, attempt: int, files: list[dict[str, Any]]) -> dict[str, Any]:
        features, labels, skipped = [], [], []
        for index, entry in enumerate(files, start=1):
            data = await self.deps.objects.get_bytes(BUCKET_DATASETS, content_key(entry["sha256"]))
            found = await asyncio.to_thread(_features_of, data)
            if found is None:
                skipped.append(entry["name"])
            else:
                features.append(found)
                labels.append(stats.labels_of(entry.get("labels")))
            if index % PROGRESS_EVERY == 0 or index == len(files):
                await fs.reference_progress(self.deps.monitoring.pool, deployment_id, attempt, index)
        if not features:
            raise ValueError(f"none of the dataset's {len(files)} files is an image that decodes")
        reference = await asyncio.to_thread(stats.build_reference, features, labels)
        reference["skipped"] = skipped
        return reference


def register(router: NatsRouter, deps_fn: Callable[[], FeedbackDeps], caller_fn: Callable[[CallContext], Any],
             service: str) -> None:
    """The training-reference and get_stats subscribers."""

    @command(router, subjects.MONITORING_TRAINING_SET, service=service)
    async def set_training(cmd: SetTrainingData, ctx: CallContext) -> TrainingDataStatus:
        """Use an images dataset as the training-data reference (computed in the background)."""
        return await set_training_data(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_TRAINING_STATUS, service=service)
    async def training(cmd: DeploymentQuery, ctx: CallContext) -> TrainingDataStatus:
        """The training-data reference's status and progress."""
        return await training_status(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_TRAINING_DISABLE, service=service)
    async def disable_training(cmd: DeploymentQuery, ctx: CallContext) -> TrainingDataStatus:
        """Stop using the training-data reference."""
        return await disable_reference(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_REFERENCE_FEATURE, service=service)
    async def feature(cmd: ReferenceFeatureQuery, ctx: CallContext) -> ReferenceFeature:
        """A training-reference feature and its values in a window of predictions (the assay runner's Training
        baseline). No HTTP route; without a token only the assay runner may publish it (nats-permissions)."""
        principal = await caller_fn(ctx) if ctx.token is not None else None
        return await reference_feature(deps_fn(), principal, ctx.token, cmd)

    @command(router, subjects.MONITORING_GET_STATS, service=service)
    async def deployment_stats(cmd: GetStats, ctx: CallContext) -> DeploymentStats:
        """A ServiceMetrics value of the deployment, computed from its predictions and reviews."""
        return await get_stats(deps_fn(), await caller_fn(ctx), ctx.token, cmd)
