"""Seed 003's feedback slice of the monitoring service: reviews of predictions, the review queue and its images, and
the feedback loop that writes reviewed predictions into workflow-lineage datasets as new project versions.

Reviews: one per prediction. A later review of the same prediction replaces the earlier one (new review id,
`revision` + 1), so the table counts distinct reviewed predictions; `events.monitoring.review_created` is written to
monitoring's outbox in the review's transaction and sent from there (a wake-up only: whoever counts reviews reads the
table; kept through a bus outage or a crash after the commit, it still wakes continuous training at once).

The feedback loop is driven by tables, never by the event alone: `feedback_exports` records, per attached dataset, which
review revision is already in the dataset and which project version recorded it. The exporter (one task per service
process, woken by each review, otherwise looking when a pair's back-off ends, at most sweeps.IDLE_WAIT apart) takes a
Postgres advisory lock per (deployment, dataset), writes each pending review's image as the file
`<prediction_id>.png|.jpg` with its ground truth as labels (`datasets.add_file` replaces a file by name, so writing it
again changes nothing), records it, then asks for a project version (`versions.create` answers the last version
unchanged when nothing changed), and records that. A crash anywhere repeats only idempotent steps: nothing acknowledged
is lost and nothing lands twice. Batching: a round writes every pending review (at most EXPORT_BATCH) and then makes one
version, so a burst of reviews makes one version, a lone review one version of its own. The writes use a short-lived
token scoped to the deployment's workspace with the rights of the user who set the loop up (`auth.token.issue_task`), so
a loop stops writing when its owner leaves the workspace: auth's refusal of the owner's token suspends the loop
(inactive, `suspended_reason` in check_feedback_loop_status, logged once; migration 020) until it is set up or turned on
again."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faststream.nats import NatsRouter
from pydantic import ValidationError

from services.monitoring import feedback_store as fs
from services.monitoring import handlers, predictions, sweeps
from shared import images, outbox, paging, subjects
from shared.authz import Principal, require_user
from shared.background import Sweeper
from shared.bus import CallContext, command, request
from shared.errors import Conflict, InvalidRequest, NotFound, RailyardError, Unauthorized, validation_detail
from shared.lean_imports import lazy_module
from shared.messages.monitoring import DeploymentQuery
from shared.messages.monitoring_feedback import (
    DatasetVersionRef,
    FeedbackLoopDataset,
    FeedbackLoopDatasetCommand,
    FeedbackLoopDatasets,
    FeedbackLoopStatus,
    GroundTruth,
    ListPredictionsToReview,
    PredictionImage,
    PredictionImageQuery,
    PredictionsToReview,
    PredictionToReview,
    Review,
    ReviewCreated,
    ReviewPrediction,
    SetupFeedbackLoop,
    ToggleFeedbackLoop,
)
from shared.messages.monitoring_predictions import PredictionFormat
from shared.messages.tasks import IssueTaskToken, TaskTokenIssued
from shared.objectstore import BUCKET_DATASETS, BUCKET_MONITORING, ObjectStore
from shared.staging import staged_key_for

if TYPE_CHECKING:
    from shared.messages import lineage
else:
    # the lineage service's models (~40 ms of a start, ~2 MiB of RSS; shared/messages/__init__.py) built by the first
    # command that uses them, not when the service starts (its restart is ~70 % imports)
    lineage = lazy_module("shared.messages.lineage")

log = logging.getLogger("railyard.monitoring.feedback")

EXPORT_SWEEP = 2.0
"""The exporter's soonest look: its first after the start, after a failed sweep, while another process holds one of its
pairs' locks (a pair's first back-off too). With nothing to write it waits sweeps.IDLE_WAIT (it looked every 2 s)."""
EXPORT_BATCH = 100
"""At most this many reviews go into one project version."""
TOKEN_TTL = 900
"""Lifetime of the loop owner's workspace-scoped token (renewed a minute before it ends)."""
MAX_BACKOFF = 60.0


def image_key(sha256: str) -> str:
    """Where a prediction's image is in the monitoring bucket."""
    return f"images/{sha256}"


@dataclass
class FeedbackDeps:
    """What the feedback slice needs besides the monitoring deps: object storage and a way to act as a workspace
    member in the background."""

    monitoring: handlers.MonitoringDeps
    objects: ObjectStore
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    wake_reference: asyncio.Event = field(default_factory=asyncio.Event)
    tokens: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)


async def workspace_token(deps: FeedbackDeps, owner_id: str, workspace_id: int, purpose: str) -> str:
    """A short-lived token with `owner_id`'s rights in `workspace_id` only (cached until a minute before expiry);
    auth refuses an owner who is deactivated or no longer a member."""
    cached = deps.tokens.get((owner_id, workspace_id))
    if cached and cached[1] > time.monotonic() + 60:
        return cached[0]
    m = deps.monitoring
    try:
        issued = await request(m.broker, subjects.AUTH_TOKEN_ISSUE_TASK, IssueTaskToken(
            user_id=owner_id, workspace_id=workspace_id, ttl=TOKEN_TTL, task_id=purpose), timeout=m.timeout,
            reply_model=TaskTokenIssued)
    except (Unauthorized, NotFound) as exc:  # a refusal, unlike a timeout or auth away: the loop is suspended
        raise handlers.OwnerRefused(exc.msg) from exc
    deps.tokens[(owner_id, workspace_id)] = (issued.access_token, time.monotonic() + issued.expires_in)
    return issued.access_token


# --- reviews ---------------------------------------------------------------------------------------------


def _check_ground_truth(kind: str, truth: GroundTruth, height: int, width: int) -> dict[str, Any]:
    """The ground truth as stored (scores default to 1.0), or InvalidRequest saying what is wrong."""
    n = len(truth.detection_classes)
    if any(c < 0 for c in truth.detection_classes):
        raise InvalidRequest("ground_truth.detection_classes must be class ids (integers >= 0)")
    scores = truth.detection_scores if truth.detection_scores is not None else [1.0] * n
    if len(scores) != n or any(not 0.0 <= s <= 1.0 for s in scores):
        raise InvalidRequest("ground_truth.detection_scores needs one score in [0, 1] per class")
    out: dict[str, Any] = {"detection_classes": list(truth.detection_classes), "detection_scores": list(scores)}
    if kind == "classification":
        if n == 0:
            raise InvalidRequest("a classification's ground truth needs at least one class in detection_classes")
        if truth.detection_boxes or truth.detection_masks:
            raise InvalidRequest("a classification's ground truth has no detection_boxes or detection_masks")
        return out
    boxes = truth.detection_boxes or []
    if len(boxes) != n:
        raise InvalidRequest(f"a {kind}'s ground truth needs one box per class in detection_boxes "
                             f"({n} classes, {len(boxes)} boxes)")
    for box in boxes:
        if len(box) != 4 or not (0 <= box[0] <= box[2] <= height and 0 <= box[1] <= box[3] <= width):
            raise InvalidRequest(f"box {box} must be [top, left, bottom, right] inside the {height}x{width} image")
    out["detection_boxes"] = [list(b) for b in boxes]
    if kind == "segmentation":
        masks = truth.detection_masks or []
        if len(masks) != n or any(len(m) < 6 or len(m) % 2 for m in masks):
            raise InvalidRequest("a segmentation's ground truth needs one polygon per class in detection_masks, "
                                 "each [x1, y1, x2, y2, x3, y3, ...] with at least three points")
        out["detection_masks"] = [list(m) for m in masks]
    elif truth.detection_masks:
        raise InvalidRequest("a detection's ground truth has no detection_masks")
    return out


def _check_format(truth: dict[str, Any], row: dict[str, Any], labels: list[str] | None) -> None:
    """The prediction slice's PredictionFormat rules on the ground truth too (integer pixel boxes, polygons inside
    the image, class ids below the number of the deployment's labels when its image configuration or ML backend
    names them)."""
    try:
        fmt = PredictionFormat.model_validate(truth)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(["ground_truth", *(str(part) for part in error["loc"])])  # "ground_truth." alone before
        raise InvalidRequest(f"{where}: {validation_detail(error)} (boxes and polygons are integer pixels)") from None
    images.check_prediction(fmt, row["height"], row["width"], "ground_truth", labels)


async def _labels(deps: FeedbackDeps, token: str | None, view: handlers.DeploymentView) -> list[str] | None:
    """The deployment's labels, when its image configuration (valid) or its ML backend's labeling config names
    them."""
    try:
        return (await predictions.model_labels(deps.monitoring, token, view))[0]
    except Conflict:
        return None


async def _prediction(deps: FeedbackDeps, principal: Principal, token: str | None, deployment: str,
                      prediction_id: uuid.UUID) -> tuple[handlers.DeploymentView, dict[str, Any]]:
    """The deployment and one of its predictions; a prediction of another deployment or workspace does not exist."""
    require_user(principal)
    view = await handlers._deployment(deps.monitoring, principal, token, deployment)
    row = await fs.prediction(deps.monitoring.pool, prediction_id)
    if row is None or row["deployment_id"] != view.route.deployment_id:
        raise NotFound(f"prediction {prediction_id} not found in deployment {deployment!r}")
    return view, row


async def review_prediction(deps: FeedbackDeps, principal: Principal, token: str | None,
                            cmd: ReviewPrediction) -> Review:
    """Accept a prediction or correct it; replaces the prediction's earlier review."""
    if cmd.decision == "accepted" and cmd.ground_truth is not None:
        raise InvalidRequest("an accepted review takes no ground_truth (the prediction is the ground truth): send "
                             "decision 'corrected' with the ground truth")
    if cmd.decision == "corrected" and cmd.ground_truth is None:
        raise InvalidRequest("a corrected review needs ground_truth (detection_classes, detection_scores, and boxes "
                             "[top, left, bottom, right] for detection)")
    view, row = await _prediction(deps, principal, token, cmd.deployment, cmd.prediction_id)
    if cmd.ground_truth is None:
        truth = row["prediction"]
    else:
        truth = _check_ground_truth(row["kind"], cmd.ground_truth, row["height"], row["width"])
        _check_format(truth, row, await _labels(deps, token, view))
    async with deps.monitoring.pool.acquire() as conn, conn.transaction():
        saved = await fs.save_review(conn, row, cmd.decision, truth, principal.username or principal.user_id)
        await outbox.add_event(conn, subjects.EVENT_MONITORING_REVIEW_CREATED, ReviewCreated(
            review_id=saved["id"], prediction_id=saved["prediction_id"], deployment_id=saved["deployment_id"],
            workspace_id=saved["workspace_id"]))
    deps.monitoring.events_committed()
    deps.wake.set()
    return Review(review_id=saved["id"], prediction_id=saved["prediction_id"], deployment=view.route.name,
                  decision=saved["decision"], ground_truth=saved["ground_truth"], reviewer=saved["reviewer"],
                  revision=saved["revision"], created_at=saved["created_at"])


async def predictions_to_review(deps: FeedbackDeps, principal: Principal, token: str | None,
                                cmd: ListPredictionsToReview) -> PredictionsToReview:
    require_user(principal)
    after = paging.after_key(cmd.cursor, "deployments/list_predictions_to_review")
    if after is not None and cmd.offset:
        raise InvalidRequest("list_predictions_to_review takes cursor or offset, not both: the cursor alone says "
                             "where the page starts")
    view = await handlers._deployment(deps.monitoring, principal, token, cmd.deployment)
    # one more than the page: whether more follow (the next cursor)
    rows, pending = await fs.predictions_to_review(deps.monitoring.pool, view.route.deployment_id, cmd.limit + 1,
                                                   cmd.offset, after)
    labels = await _labels(deps, token, view)

    def item(r: Any) -> PredictionToReview:
        return PredictionToReview(
            id=r["id"], predicted_at=r["predicted_at"], origin=r["origin"], source=r["source"], tags=list(r["tags"]),
            kind=r["kind"], prediction=r["prediction"], shadow_prediction=r["shadow_prediction"], height=r["height"],
            width=r["width"], content_type=r["content_type"])

    def cursor_of(r: Any) -> str:
        return paging.key_cursor({"created_at": r["predicted_at"], "id": r["id"]})

    if after is None:
        # the seed's offset paging (the first page too: the gateway sends offset 0 when none is given, so a cursor
        # reader's first page looks the same): `limit` predictions as the seed answers them (its 422 past a reply),
        # never fewer by bytes: its caller's next page is at offset + limit, which would skip those cut off
        predictions = [item(r) for r in rows[:cmd.limit]]
        next_cursor = cursor_of(rows[cmd.limit - 1]) if len(rows) > cmd.limit else None
    else:
        predictions, next_cursor = await paging.page(rows, cmd.limit, item, cursor_of)
    return PredictionsToReview(pending=pending, labels=labels, predictions=predictions, next_cursor=next_cursor)


async def prediction_image(deps: FeedbackDeps, principal: Principal, token: str | None,
                           cmd: PredictionImageQuery) -> PredictionImage:
    _, row = await _prediction(deps, principal, token, cmd.deployment, cmd.prediction_id)
    return PredictionImage(image_sha256=row["image_sha256"], content_type=row["content_type"])


# --- the feedback loop -----------------------------------------------------------------------------------


async def _dataset(deps: FeedbackDeps, token: str | None, view: handlers.DeploymentView,
                   ref: DatasetVersionRef) -> dict[str, Any]:
    """The images dataset (and project version) named, seen with the caller's rights, in the deployment's
    workspace: {id, project_id, name, file_count}, `file_count` as the named version saved the dataset (the lineage
    service's small datasets.saved answer, whose size does not grow with the dataset's), or as it is now without a
    version. A version that is another project's (so also another workspace's), or that was saved before the
    dataset existed, is not found (404), as the lineage service answers. `dataset_files` reads the files."""
    m = deps.monitoring
    info = await request(m.broker, subjects.LINEAGE_DATASETS_GET, lineage.DatasetRef(dataset_id=ref.dataset_id),
                         token=token, timeout=m.timeout, reply_model=lineage.DatasetInfo)
    if info.workspace_id != view.route.workspace_id:
        raise InvalidRequest(f"dataset {ref.dataset_id} is in another workspace than deployment "
                             f"{view.route.name!r}: attach a dataset of workspace {view.route.workspace_id}")
    if info.kind != "images":
        raise InvalidRequest(f"dataset {ref.dataset_id} is {lineage.a_dataset_of_kind(info.kind)}: the feedback loop"
                             " and the training reference take images datasets")
    file_count = info.file_count
    if ref.version_id is not None:
        file_count = (await request(m.broker, subjects.LINEAGE_DATASETS_SAVED, lineage.SavedDatasetQuery(
            dataset_id=info.id, version_id=ref.version_id), token=token, timeout=m.timeout,
            reply_model=lineage.SavedDatasetInfo)).file_count
    return {"id": info.id, "project_id": info.project_id, "name": info.name, "file_count": file_count}


FILES_PAGE = 1000
"""Files per datasets/list_files page that dataset_files asks for (the lineage service also stops a page before
half the bus payload limit, so labels of any size fit)."""


async def dataset_files(deps: FeedbackDeps, token: str | None, dataset_id: int, version_id: int | None,
                        max_files: int) -> list[lineage.DatasetFile]:
    """A dataset's files (as the version saved them, or now), read page by page with the caller's rights: one
    answer would pass the bus payload limit for a large dataset or large labels. InvalidRequest as soon as there
    are more than `max_files` (the dataset grew since its count was read)."""
    m = deps.monitoring
    files: list[lineage.DatasetFile] = []
    cursor = None
    while True:
        page = await request(m.broker, subjects.LINEAGE_DATASETS_LIST_FILES, lineage.DatasetFilesQuery(
            dataset_id=dataset_id, version_id=version_id, limit=FILES_PAGE, cursor=cursor), token=token,
            timeout=m.timeout, reply_model=lineage.DatasetFiles)
        files.extend(page.files)
        if len(files) > max_files:
            raise InvalidRequest(f"dataset {dataset_id} has more than {max_files} files: at most {max_files} are "
                                 "read here")
        if page.next_cursor is None:
            return files
        cursor = page.next_cursor


def _loop_dataset(row: dict[str, Any]) -> FeedbackLoopDataset:
    return FeedbackLoopDataset(
        dataset_id=row["dataset_id"], project_id=row["project_id"], dataset_name=row["dataset_name"],
        attached_version_id=row["attached_version_id"], last_version_id=row["last_version_id"],
        last_version_number=row["last_version_number"], exported_reviews=row["exported_reviews"],
        pending_reviews=row["pending_reviews"], last_error=row["last_error"], attached_at=row["attached_at"])


async def _status(deps: FeedbackDeps, view: handlers.DeploymentView) -> FeedbackLoopStatus:
    pool = deps.monitoring.pool
    deployment_id = view.route.deployment_id
    loop = await fs.feedback_loop(pool, deployment_id)
    datasets = [_loop_dataset(r) for r in await fs.loop_datasets(pool, deployment_id)] if loop else []
    return FeedbackLoopStatus(deployment=view.route.name, configured=loop is not None,
                              active=bool(loop and loop["active"]), reviews=await fs.review_count(pool, deployment_id),
                              pending_reviews=max((d.pending_reviews for d in datasets), default=0), datasets=datasets,
                              suspended_reason=loop["suspended_reason"] if loop else None)


async def _view(deps: FeedbackDeps, principal: Principal, token: str | None, name: str) -> handlers.DeploymentView:
    require_user(principal)
    return await handlers._deployment(deps.monitoring, principal, token, name)


async def _require_loop(deps: FeedbackDeps, view: handlers.DeploymentView) -> None:
    if await fs.feedback_loop(deps.monitoring.pool, view.route.deployment_id) is None:
        raise Conflict(f"deployment {view.route.name!r} has no feedback loop: call setup_feedback_loop first")


async def setup_feedback_loop(deps: FeedbackDeps, principal: Principal, token: str | None,
                              cmd: SetupFeedbackLoop) -> FeedbackLoopStatus:
    """Create (or re-activate) the loop, acting with the caller's rights; attach the dataset given."""
    view = await _view(deps, principal, token, cmd.deployment)
    dataset = await _dataset(deps, token, view, cmd.dataset_version) if cmd.dataset_version else None
    async with deps.monitoring.pool.acquire() as conn, conn.transaction():
        await fs.setup_feedback_loop(conn, view.route.deployment_id, view.route.workspace_id,
                                     uuid.UUID(principal.user_id))
        if dataset is not None:
            await fs.attach_dataset(conn, view.route.deployment_id, dataset, cmd.dataset_version.version_id)
    deps.wake.set()
    return await _status(deps, view)


async def attach_dataset(deps: FeedbackDeps, principal: Principal, token: str | None,
                         cmd: FeedbackLoopDatasetCommand) -> FeedbackLoopStatus:
    """Attach a dataset: every review of the deployment (earlier ones too) will be written into it."""
    view = await _view(deps, principal, token, cmd.deployment)
    await _require_loop(deps, view)
    dataset = await _dataset(deps, token, view, cmd.dataset_version)
    async with deps.monitoring.pool.acquire() as conn, conn.transaction():
        await fs.attach_dataset(conn, view.route.deployment_id, dataset, cmd.dataset_version.version_id)
    deps.wake.set()
    return await _status(deps, view)


async def detach_dataset(deps: FeedbackDeps, principal: Principal, token: str | None,
                         cmd: FeedbackLoopDatasetCommand) -> FeedbackLoopStatus:
    """Detach a dataset (what was written into it stays there)."""
    view = await _view(deps, principal, token, cmd.deployment)
    await _require_loop(deps, view)
    async with deps.monitoring.pool.acquire() as conn, conn.transaction():
        if not await fs.detach_dataset(conn, view.route.deployment_id, cmd.dataset_version.dataset_id):
            raise NotFound(f"dataset {cmd.dataset_version.dataset_id} is not attached to the feedback loop of "
                           f"{view.route.name!r}")
    return await _status(deps, view)


async def list_datasets(deps: FeedbackDeps, principal: Principal, token: str | None,
                        cmd: DeploymentQuery) -> FeedbackLoopDatasets:
    view = await _view(deps, principal, token, cmd.deployment)
    return FeedbackLoopDatasets(dataset_versions=(await _status(deps, view)).datasets)


async def check_status(deps: FeedbackDeps, principal: Principal, token: str | None,
                       cmd: DeploymentQuery) -> FeedbackLoopStatus:
    return await _status(deps, await _view(deps, principal, token, cmd.deployment))


async def disable_feedback_loop(deps: FeedbackDeps, principal: Principal, token: str | None,
                                cmd: DeploymentQuery) -> FeedbackLoopStatus:
    """Forget the loop and its attachments (reviews stay; what was written into datasets stays)."""
    view = await _view(deps, principal, token, cmd.deployment)
    await _require_loop(deps, view)
    async with deps.monitoring.pool.acquire() as conn, conn.transaction():
        await fs.delete_feedback_loop(conn, view.route.deployment_id)
    return await _status(deps, view)


async def toggle_feedback_loop(deps: FeedbackDeps, principal: Principal, token: str | None,
                               cmd: ToggleFeedbackLoop) -> FeedbackLoopStatus:
    view = await _view(deps, principal, token, cmd.deployment)
    await _require_loop(deps, view)
    async with deps.monitoring.pool.acquire() as conn, conn.transaction():
        await fs.toggle_feedback_loop(conn, view.route.deployment_id, cmd.active)
    deps.wake.set()
    return await _status(deps, view)


# --- the exporter ----------------------------------------------------------------------------------------


def file_labels(review: dict[str, Any]) -> dict[str, Any]:
    """A reviewed prediction's labels in its dataset file: the ground truth as the seed's PredictionFormat, and for
    boxes COCO-style `boxes` ([x, y, width, height] with `category`), which the lineage detection benchmark reads."""
    truth = review["ground_truth"]
    labels: dict[str, Any] = {"kind": review["kind"], "decision": review["decision"],
                              "prediction_id": str(review["prediction_id"]), "ground_truth": truth}
    if truth.get("detection_boxes") is not None:
        labels["boxes"] = [{"bbox": [b[1], b[0], b[3] - b[1], b[2] - b[0]], "category": c}
                           for c, b in zip(truth["detection_classes"], truth["detection_boxes"], strict=False)]
    return labels


def file_name(review: dict[str, Any]) -> str:
    return f"{review['prediction_id']}.{'jpg' if review['content_type'] == 'image/jpeg' else 'png'}"


class Exporter(Sweeper):
    """Writes reviews into the attached datasets, one (deployment, dataset) at a time under an advisory lock. Woken by
    the commands of its process that make work (a review, a loop set up, attached or turned on); otherwise it looks
    when a pair's back-off ends, soon while another process holds a pair, at most sweeps.IDLE_WAIT apart."""

    task_name = "feedback-exporter"
    every, log, failure = EXPORT_SWEEP, log, "feedback exporter sweep failed (retried on the next sweep)"

    def __init__(self, deps: FeedbackDeps) -> None:
        self.deps = deps
        self._retry_at: dict[tuple[int, int], tuple[float, float]] = {}

    def wake_event(self) -> asyncio.Event:
        return self.deps.wake

    def quiet_pool(self) -> Any:
        return self.deps.monitoring.pool

    def next_wait(self, due: float | None) -> float:
        return EXPORT_SWEEP if due is None else due  # None: a failed sweep

    async def sweep(self) -> float:
        """One round of every active pair not backing off; the wait until the next look (sweeps.IDLE_WAIT when
        nothing is left to write)."""
        now = time.monotonic()
        due = sweeps.IDLE_WAIT
        refused: set[int] = set()  # loops suspended in this sweep: their other datasets are not tried
        for pair in await fs.active_loop_datasets(self.deps.monitoring.pool):
            key = (pair["deployment_id"], pair["dataset_id"])
            retry_at = self._retry_at.get(key, (0.0, 0.0))[0]
            if retry_at > now:
                due = min(due, retry_at - now)
                continue
            if key[0] in refused:
                continue
            try:
                if not await self.export(pair):
                    # another process is on it: its round may have read the reviews before this process's committed
                    # (which woke this exporter), and nothing else looks for them before IDLE_WAIT
                    due = min(due, EXPORT_SWEEP)
                self._retry_at.pop(key, None)
            except handlers.OwnerRefused as exc:
                # the loop's owner left the workspace or was deactivated: suspended (logged once), not retried for
                # ever; its other datasets are left out of this sweep and the next ones, the other loops go on
                refused.add(key[0])
                try:
                    suspended = await fs.suspend_feedback_loop(
                        self.deps.monitoring.pool, key[0], pair["owner_id"],
                        handlers.owner_refused_reason("the feedback loop", exc))
                except Exception as failure:  # that write is this loop's alone: the other loops go on; the loop
                    # stays on, so the next sweep's export is refused again and suspends it then
                    log.warning("feedback loop of deployment %s: its owner %s's token was refused (%s), but"
                                " suspending it failed (%s: %s): tried again on the next sweep", key[0],
                                pair["owner_id"], exc.msg, type(failure).__name__, str(failure)[:200])
                    due = min(due, EXPORT_SWEEP)
                    continue
                if suspended:
                    log.warning("feedback loop of deployment %s is suspended: its owner %s's token was refused (%s)",
                                key[0], pair["owner_id"], exc.msg)
            except Exception as exc:
                backoff = min(MAX_BACKOFF, max(EXPORT_SWEEP, self._retry_at.get(key, (0.0, 0.0))[1] * 2))
                self._retry_at[key] = (time.monotonic() + backoff, backoff)
                due = min(due, backoff)
                message = exc.msg if isinstance(exc, RailyardError) else f"{type(exc).__name__}: {str(exc)[:200]}"
                log.warning("feedback loop of deployment %s could not write to dataset %s: %s", *key, message)
                try:
                    await fs.record_error(self.deps.monitoring.pool, *key, message)
                except Exception as failure:  # this pair's alone: the others go on
                    log.warning("feedback loop of deployment %s: its error for dataset %s was not recorded (%s)",
                                *key, type(failure).__name__)
        return due

    async def export(self, pair: dict[str, Any]) -> bool:
        """One round for a (deployment, dataset): write pending reviews, then make the version; False when another
        process holds the pair (it is on it)."""
        pool = self.deps.monitoring.pool
        deployment_id, dataset_id = pair["deployment_id"], pair["dataset_id"]
        async with pool.acquire() as lock_conn:
            locked = await lock_conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtextextended('monitoring.feedback:' || $1::int || ':' || $2::int,"
                " 0))", deployment_id, dataset_id)
            if not locked:
                return False  # another replica is on it
            try:
                await self._export_locked(pair)
            finally:
                await lock_conn.execute(
                    "SELECT pg_advisory_unlock(hashtextextended('monitoring.feedback:' || $1::int || ':' || $2::int,"
                    " 0))", deployment_id, dataset_id)
        return True

    async def _export_locked(self, pair: dict[str, Any]) -> None:
        deps, m = self.deps, self.deps.monitoring
        deployment_id, dataset_id = pair["deployment_id"], pair["dataset_id"]
        token = await workspace_token(deps, str(pair["owner_id"]), pair["workspace_id"],
                                      f"feedback-loop-{deployment_id}")
        pending = await fs.pending_reviews(m.pool, deployment_id, dataset_id, EXPORT_BATCH)
        for review in pending:
            data = await deps.objects.get_bytes(BUCKET_MONITORING, image_key(review["image_sha256"]))
            # the token acts for the owner in the pair's workspace only: lineage takes it with that scope
            staged = staged_key_for(str(pair["owner_id"]), pair["workspace_id"])
            await deps.objects.put_bytes(BUCKET_DATASETS, staged, data, content_type=review["content_type"])
            await request(m.broker, subjects.LINEAGE_DATASETS_ADD_FILE, lineage.AddDatasetFile(
                dataset_id=dataset_id, name=file_name(review), staged_key=staged, labels=file_labels(review)),
                token=token, timeout=m.timeout)
            await fs.mark_written(m.pool, deployment_id, dataset_id, review["prediction_id"], review["revision"])
        if await fs.unversioned(m.pool, deployment_id, dataset_id):
            count = await fs.unversioned(m.pool, deployment_id, dataset_id)
            version = await request(m.broker, subjects.LINEAGE_VERSIONS_CREATE, lineage.CreateProjectVersion(
                project_id=pair["project_id"], version_title=f"feedback loop of deployment {deployment_id}",
                version_description=f"{count} reviewed prediction(s) written to dataset {dataset_id}"),
                token=token, timeout=m.timeout, reply_model=lineage.ProjectVersionInfo)
            async with m.pool.acquire() as conn, conn.transaction():
                await fs.mark_versioned(conn, deployment_id, dataset_id, version.id, version.number)
            log.info("feedback loop of deployment %s: %d review(s) in dataset %s, project version %s", deployment_id,
                     count, dataset_id, version.number)
        if len(pending) == EXPORT_BATCH:
            deps.wake.set()  # more are waiting: the next round starts at once


# --- wiring ----------------------------------------------------------------------------------------------


async def start(runtime: Any) -> None:
    """Build the slice's deps from the running service (after app.start made `deps`) and start the exporter and
    the reference computation."""
    from services.monitoring.reference import ReferenceComputer
    deps = FeedbackDeps(monitoring=runtime.extras["deps"], objects=runtime.objects)
    exporter, computer = Exporter(deps), ReferenceComputer(deps)
    exporter.start()
    computer.start()
    runtime.extras.update(feedback=deps, feedback_exporter=exporter, reference_computer=computer)


async def stop(runtime: Any) -> None:
    for key in ("feedback_exporter", "reference_computer"):
        worker = runtime.extras.get(key)
        if worker is not None:
            await worker.stop()



def register(router: NatsRouter, deps_fn: Callable[[], FeedbackDeps], caller_fn: Callable[[CallContext], Any],
             service: str) -> None:
    """The feedback slice's command subscribers."""

    @command(router, subjects.MONITORING_REVIEW_PREDICTION, service=service)
    async def review(cmd: ReviewPrediction, ctx: CallContext) -> Review:
        """Review a prediction: accept it or correct its labels/boxes (a later review replaces it)."""
        return await review_prediction(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_PREDICTIONS_TO_REVIEW, service=service)
    async def to_review(cmd: ListPredictionsToReview, ctx: CallContext) -> PredictionsToReview:
        """The deployment's predictions waiting for a review, oldest first."""
        return await predictions_to_review(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_PREDICTION_IMAGE, service=service)
    async def image(cmd: PredictionImageQuery, ctx: CallContext) -> PredictionImage:
        """Where a prediction's image is (the gateway streams it)."""
        return await prediction_image(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_FEEDBACK_SETUP, service=service)
    async def setup(cmd: SetupFeedbackLoop, ctx: CallContext) -> FeedbackLoopStatus:
        """Set up (or re-activate) the deployment's feedback loop."""
        return await setup_feedback_loop(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_FEEDBACK_ATTACH, service=service)
    async def attach(cmd: FeedbackLoopDatasetCommand, ctx: CallContext) -> FeedbackLoopStatus:
        """Attach an images dataset to the feedback loop."""
        return await attach_dataset(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_FEEDBACK_DETACH, service=service)
    async def detach(cmd: FeedbackLoopDatasetCommand, ctx: CallContext) -> FeedbackLoopStatus:
        """Detach a dataset from the feedback loop."""
        return await detach_dataset(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_FEEDBACK_LIST, service=service)
    async def datasets(cmd: DeploymentQuery, ctx: CallContext) -> FeedbackLoopDatasets:
        """The datasets attached to the feedback loop."""
        return await list_datasets(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_FEEDBACK_STATUS, service=service)
    async def status(cmd: DeploymentQuery, ctx: CallContext) -> FeedbackLoopStatus:
        """The feedback loop's state: active, attached datasets, reviews written and pending."""
        return await check_status(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_FEEDBACK_DISABLE, service=service)
    async def disable(cmd: DeploymentQuery, ctx: CallContext) -> FeedbackLoopStatus:
        """Remove the feedback loop (reviews and written dataset versions stay)."""
        return await disable_feedback_loop(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_FEEDBACK_TOGGLE, service=service)
    async def toggle(cmd: ToggleFeedbackLoop, ctx: CallContext) -> FeedbackLoopStatus:
        """(De)activate the feedback loop."""
        return await toggle_feedback_loop(deps_fn(), await caller_fn(ctx), ctx.token, cmd)
