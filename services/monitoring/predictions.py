"""Seed 003's predictions on images: `predict` / `predict_bytes` and `monitor` / `monitor_bytes`.

predict: the deployment is resolved with the caller's token (another workspace's answers 404 as a missing one), the
image decoded (PNG/JPEG), turned into the model's input by the image configuration of the pipeline's model step
(key `image`, `ImageConfig`), and sent to the deployment's engine replicas over the bus, as the gateway sends an
inference (it is logged like one). With a shadow challenger the request asks the engine to run it before answering
(`Railyard-Shadows: inline`), so the answer holds both outputs. An A/B split (a `RandomSplit` holding the models)
is sent the same request: the engine's split picks the arm, as for any inference, and the prediction is recorded under
the model version the answer's `_model_split` names (ML-backend arms: each read with its own labeling config's
control, as the first arm's kind and class ids; a split by `hash_key` is a 409, an image has no key). The outputs
become the seed's PredictionFormat (min_threshold drops low-scoring boxes; at most MAX_DETECTIONS entries, the best
scoring), checked as one before anything is written (an answer that is not one is the model's `inference_failed`,
nothing stored), then the image is stored content-addressed (`images/<sha256>` in the monitoring bucket), then the
row, with `events.monitoring.prediction_created` in monitoring's outbox in the row's transaction (sent from there
once committed, so a bus outage or a crash after the commit does not lose it).

monitor: the same without the engine: the caller's PredictionFormat is checked strictly first, and nothing (no
image, no row) is written when anything is wrong.

An image comes base64 in the command (`image`, within the bus payload), or staged: the gateway put a multipart
upload at `staged_key` (`staging/<user id>/<uuid>` in the monitoring bucket, `staging/<user id>/ws-<id>/<uuid>` from
a task run's token) and the command names it. A staged image is consumed only for the user whose id its key holds
(anyone else: 403, the object untouched, it is not theirs) and only by a token of the same workspace scope (a task
run's token may not take its owner's image staged from a normal session, nor the reverse: 403 `out_of_scope`), is
read once (at most `monitoring.max_image_bytes`), and is deleted whatever happens next: a bad image, an unknown
deployment, missing rights or a stored prediction alike leave no staged object (the gateway deletes it too once
the command answered, so a service that never got the command leaves none either).

A failure after the image was written leaves at most an image object that other predictions may share (it is
content-addressed); the row is written last, so a prediction id that was answered always has its image."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from faststream.nats import NatsRouter
from pydantic import ValidationError

from services.monitoring import datalake, ml_backend_predictions, store
from services.monitoring.handlers import (
    DeploymentView,
    MonitoringDeps,
    _current_shadow,
    _deployment,
    _model_step,
    _served_model,
    check_tags,
    current_model,
    split_arms,
    split_step,
)
from services.monitoring.monitored_model import monitored_model
from services.monitoring.predictions_store import PredictionRow, insert_prediction
from shared import images, paging, subjects
from shared.authz import Principal, require_user
from shared.bus import ENGINE_FIRST_ATTEMPT, CallContext, command, raise_for_error_header, request, request_engine
from shared.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RailyardError,
    Unavailable,
    validation_detail,
    validation_message,
)
from shared.lean_imports import lazy_module
from shared.logrecords import TIME_HEADER
from shared.messages.deployer import DeploymentRoute, GetPipeline, PipelineRecord, ResolveDeployment
from shared.messages.monitoring import ModelVersionRef
from shared.messages.monitoring_predictions import (
    ImageConfig,
    MonitorImage,
    PredictImage,
    PredictionFormat,
    PredictionResult,
)
from shared.not_serving import not_serving
from shared.objectstore import BUCKET_MONITORING, BUCKET_TABLES
from shared.pipeline_pages import caller_pages
from shared.staging import StagedWording, check_staged
from shared.table_transport import (
    BUS_HEADROOM,
    INFERENCE_PREFIX,
    META_HEADER,
    SHADOWS_HEADER,
    SHADOWS_INLINE,
    TABLE_REF,
    above_bus_limit,
    put_table,
    take_table,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from PIL import Image
else:  # imported by the first prediction (~12 MiB of RSS the idle monitoring service does without)
    np = lazy_module("numpy")
    Image = lazy_module("PIL.Image")

NAME = "monitoring"
log = logging.getLogger("railyard.monitoring.predictions")
ENGINE_TIMEOUT = 30.0
FIRST_ATTEMPT = ENGINE_FIRST_ATTEMPT
"""A predict unanswered after FIRST_ATTEMPT seconds is sent once more (the rest of ENGINE_TIMEOUT), with the same
request id, as the gateway re-sends an inference (services/gateway/inference.py, services/engine/answers.py): a replica
killed while it held the image never answers, so the predict went on waiting for it and the caller got a 504 after
ENGINE_TIMEOUT (30 s) while the deployment's other replicas (or the dead one's replacement) were idle. A live replica
takes the second attempt; one still running the first answers the second from that one run; none listening (a
one-replica deployment whose replica died: its replacement loading, or a crash loop) is the deployer's word at once
(_no_engine: 503 starting, or deployment_crash_loop with Retry-After). The attempts are shared.bus.request_engine's,
which workflow_lineage's benchmarks use too."""
SPLIT_COLUMN = "_model_split"  # the engine's RandomSplit names the arm that answered in this column (JSON)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()  # monitor's timestamps before this are refused
LATEST_AHEAD = 86_400.0  # seconds a monitor timestamp may be ahead of the service's clock
# how `_image` refuses a staged key (shared/staging.py check_staged): worded for the images the gateway stages
IMAGE_WORDING = StagedWording(
    malformed="staged_key must name an image staged by the gateway (upload the image as the 'image' part of a "
              "multipart/form-data body)",
    other_user="the staged image was uploaded by another user",
    other_scope="the staged image was uploaded with a token of another workspace scope (a task run's token takes only "
                "images staged with it): upload the image with this token")


def image_key(sha256: str) -> str:
    """The object key of an image in the monitoring bucket."""
    return f"images/{sha256}"


def _decoded(encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image is not valid base64: send the image's bytes base64-encoded") from None


async def _read_staged(deps: MonitoringDeps, key: str) -> bytes:
    try:
        size = await deps.objects.size(BUCKET_MONITORING, key)
    except NotFound:
        raise InvalidRequest("the staged image was not found: upload the image again (it is consumed once)") from None
    if size > deps.max_image_bytes:
        raise PayloadTooLarge(f"the image is {size} bytes, larger than {deps.max_image_bytes} bytes "
                              "(monitoring.max_image_bytes): send a smaller image")
    try:
        return await deps.objects.get_bytes(BUCKET_MONITORING, key)
    except NotFound:
        raise InvalidRequest("the staged image was not found: upload the image again (it is consumed once)") from None


@asynccontextmanager
async def _image(deps: MonitoringDeps, principal: Principal, cmd: PredictImage | MonitorImage) -> AsyncIterator[bytes]:
    """The command's image bytes, inline or staged. A staged image must be the caller's own (its key holds their
    user id) and staged with the caller's workspace scope (a task run's token reaches its run's workspace only, so
    it may not take an image its owner staged from a session that reaches every workspace of theirs); it is deleted
    when the block ends, however it ends."""
    if cmd.staged_key is None:
        yield _decoded(cmd.image or "")
        return
    check_staged(cmd.staged_key, principal, IMAGE_WORDING)  # refused: neither read nor deleted
    try:
        yield await _read_staged(deps, cmd.staged_key)
    finally:
        try:
            await deps.objects.delete(BUCKET_MONITORING, cmd.staged_key)
        except Exception as exc:  # the outcome stands; the gateway deletes it too
            log.warning("could not delete staged image %s: %s", cmd.staged_key, exc)


def image_config(definition: dict[str, Any]) -> ImageConfig | None:
    """The image configuration of the pipeline's model step, or of its A/B split (None without one); Conflict when
    it is malformed."""
    step = _model_step(definition)
    raw = step[1].get("image") if step else (split_step(definition) or {}).get("image")
    if raw is None:
        return None
    try:
        return ImageConfig.model_validate(raw)
    except ValidationError as exc:
        # validation_message: an error about the whole configuration read "(: Input should be ...)"
        raise Conflict(f"the pipeline's image configuration is invalid ({validation_message(exc.errors(), 'image', 1)})"
                       ": fix the 'image' of its model step (docs/monitoring.md)") from None


def _ref_dict(ref: ModelVersionRef | None) -> dict[str, Any] | None:
    return ref.model_dump() if ref is not None else None


async def _store_image(deps: MonitoringDeps, data: bytes, content_type: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    key = image_key(sha)
    if not await deps.objects.exists(BUCKET_MONITORING, key):
        await deps.objects.put_bytes(BUCKET_MONITORING, key, data, content_type=content_type)
    return sha


class ModelAnswerInvalid(RailyardError):
    """The model's answer, converted, is not a PredictionFormat (the model's error, not the caller's)."""

    code = "inference_failed"


def _formatted(row: PredictionRow) -> tuple[PredictionFormat, PredictionFormat | None]:
    """The row's prediction and shadow prediction as PredictionFormats, checked before anything is written: an
    answer that is not one fails with nothing stored (a shadow's is left out, as a failed challenger's)."""
    try:
        prediction = PredictionFormat.model_validate(row.prediction)
    except ValidationError as exc:
        raise ModelAnswerInvalid("the model's answer is not a PredictionFormat "
                                 f"({validation_message(exc.errors(), 'answer', 1)}); nothing was stored") from None
    if row.shadow_prediction is None:
        return prediction, None
    try:
        return prediction, PredictionFormat.model_validate(row.shadow_prediction)
    except ValidationError as exc:
        log.warning("the shadow answer of deployment %s is left out: %s", row.deployment_id,
                    validation_detail(exc.errors()[0]))
        row.shadow_prediction = row.shadow_model_version = row.shadow_latency = None
        return prediction, None


async def _keep(deps: MonitoringDeps, token: str | None, row: PredictionRow, data: bytes, deployment: str,
                labels: list[str] | None, target_datalake: str | None, *, owner: Principal) -> PredictionResult:
    """Check the prediction is a PredictionFormat (else nothing is written), store the image, then the row with its
    event (outbox), then (best effort) add it to the target datalake; the answer."""
    prediction, shadow_prediction = _formatted(row)
    row.image_sha256 = await _store_image(deps, data, row.content_type)
    await insert_prediction(deps.pool, row)  # with its prediction_created in the outbox, one transaction
    deps.events_committed()
    datalake_file = await _to_datalake(deps, token, row, data, labels, target_datalake, owner)
    return PredictionResult(
        id=row.id, deployment=deployment, origin=row.origin, kind=row.kind,
        prediction=prediction, labels=[labels[c] for c in prediction.detection_classes] if labels else None,
        shadow_prediction=shadow_prediction,
        model_version=row.model_version, shadow_model_version=row.shadow_model_version,
        pipeline_version=row.pipeline_version, latency=row.latency, shadow_latency=row.shadow_latency,
        height=row.height, width=row.width, content_type=row.content_type, image_sha256=row.image_sha256,
        filename=row.filename, tags=row.tags, source=row.source, predicted_at=row.predicted_at.isoformat(),
        datalake_file=datalake_file)


async def _to_datalake(deps: MonitoringDeps, token: str | None, row: PredictionRow, data: bytes,
                       labels: list[str] | None, target: str | None, owner: Principal) -> str | None:
    """The prediction's file in the deployment's target datalake (None without one, or when it could not be
    written: the prediction is kept anyway)."""
    if not target:
        return None
    try:
        dataset = await datalake.resolve(deps.broker, token, deps.timeout, row.workspace_id, target)
        return await datalake.write(
            deps.broker, deps.objects, token, deps.timeout, dataset, datalake.file_name(row.id, row.content_type),
            data, row.content_type, datalake.file_labels(row.id, row.kind, row.origin, row.prediction, labels,
                                                         row.source, row.tags), owner)
    except Exception as exc:
        log.warning("prediction %s is stored but not added to target datalake %r: %s", row.id, target,
                    getattr(exc, "msg", exc))
        return None


# --- predict ---------------------------------------------------------------------------------------------------------


ENGINE_CLOCK_SKEW = 60.0
"""Seconds an engine's time of an inference may lie before monitoring received the request or after its answer
arrived (its clock a little off monitoring's); further out it is not the inference's time (_answered_at)."""


def _answered_at(headers: dict[str, str], received: datetime, answered: datetime) -> datetime:
    """When the replica took the request: its answer's TIME_HEADER, the time of the inference's log rows (ms since
    the epoch), so a prediction and its row in the pipeline's log carry one time, as the gateway's answer and its rows
    do. Else `received` (an engine without the header, or a value that is not a whole number of ms, or one outside
    [received, answered] by more than ENGINE_CLOCK_SKEW: the replica took the request between the two, so such a time
    is a replica's clock gone wrong or a forged header (a compromised replica: every replica is the `engine`
    identity, docs/security.md). Until session 37's review the bound was monitor's timestamp range, 2000 to a day
    ahead of this clock, which let such an answer file a prediction years back or hours ahead, in another hour of
    the statistics than the one it was made in)."""
    said = headers.get(TIME_HEADER)
    if said is None or len(said) > 18 or not (said.isascii() and said.isdigit()):
        return received
    ms = int(said)
    if not (received.timestamp() - ENGINE_CLOCK_SKEW) * 1000 <= ms <= (answered.timestamp() + ENGINE_CLOCK_SKEW) * 1000:
        return received
    return datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)


async def _ask_engine(deps: MonitoringDeps, deployment: str, table: pa.Table, by_reference: bool = False, *,
                      token: str | None = None) -> tuple[pa.Table, dict[str, Any], dict[str, str]]:
    """One inference on the deployment's replicas: (answer table, the answer's meta header, its headers: its time,
    _answered_at). Challengers, if the serving version has any, run before the answer and their outputs come with it.
    `by_reference`: a table above the bus limit goes through object storage, as the gateway sends one (an ML
    backend's task holds the image). No replica taking it: the deployer's word now, asked with the caller's `token`
    (_no_engine)."""
    from shared.arrow_codec import from_ipc, to_ipc_stream

    nc = deps.broker.config.connection_state.connection
    payload = to_ipc_stream(table)
    headers = {SHADOWS_HEADER: SHADOWS_INLINE}
    staged = None
    if above_bus_limit(payload, nc.max_payload):
        if not by_reference:
            raise InvalidRequest("the preprocessed image is larger than the bus carries: configure a smaller size")
        staged = await put_table(deps.objects, INFERENCE_PREFIX, payload)
        headers[TABLE_REF], payload = staged, b""
    try:  # None: no replica listening, answered below once the staged table is gone
        reply = await request_engine(nc.request, subjects.engine_infer(deployment), payload, headers,
                                     timeout=ENGINE_TIMEOUT, first_attempt=FIRST_ATTEMPT)
    finally:
        if staged is not None:
            await deps.objects.delete(BUCKET_TABLES, staged)
    if reply is None:
        raise await _no_engine(deps, deployment, token)
    answer_headers = dict(reply.headers or {})
    raise_for_error_header(answer_headers)
    data = await take_table(deps.objects, answer_headers, reply.data)
    return from_ipc(data), json.loads(answer_headers.get(META_HEADER) or "{}"), answer_headers


async def _no_engine(deps: MonitoringDeps, deployment: str, token: str | None) -> RailyardError:
    """The answer to a predict no replica took (nobody listens on the deployment's queue). The route _deployment read
    at the start said Running, and may be stale by now (the replicas exited since: a crash loop, an undeploy), so the
    deployer is asked once more, as the gateway's inference asks it (services/gateway/inference.py RouteCache.ask):
    not Running, its words (shared.not_serving: a crash loop is 503 deployment_crash_loop, why, and the back-off as
    Retry-After; the reason shown, as in _prepare_predict: the caller is a member of the deployment's workspace);
    gone, 404 'is not deployed'; still Running, or the deployer not answering in deps.timeout (its own 503 or 504
    would hide the engine's), 'no running engine; retry shortly'. Before, that was the answer whatever the deployer
    would have said."""
    no_engine = Unavailable(f"deployment {deployment!r} has no running engine; retry shortly")
    try:
        route = await request(deps.broker, subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, ResolveDeployment(name=deployment),
                              token=token, timeout=deps.timeout, reply_model=DeploymentRoute)
    except NotFound:
        return NotFound(f"deployment {deployment!r} is not deployed")
    except RailyardError as exc:
        log.info("no engine of deployment %s took a predict, and the deployer's route could not be read again: %s",
                 deployment, exc.msg)
        return no_engine
    if route.status != "Running":
        return not_serving(route, reason_shown=True)
    return no_engine


def _row_outputs(table: pa.Table, prefix: str | None) -> dict[str, np.ndarray]:
    """The first row's outputs: the champion's (prefix None: columns without `out_`), or one challenger's
    (`out_<name>.` columns, the prefix removed)."""
    found = {}
    for name in table.column_names:
        if prefix is None and not name.startswith("out_") and name != SPLIT_COLUMN:
            found[name] = np.asarray(table.column(name)[0].as_py())
        elif prefix is not None and name.startswith(prefix):
            found[name[len(prefix):]] = np.asarray(table.column(name)[0].as_py())
    return found


def served_definition(versions: list[dict[str, Any]], version: str) -> dict[str, Any] | None:
    """The definition of one version among a pipeline record's listed versions (None when it is not listed)."""
    for listed in versions:
        if str(listed.get("version")) == version:
            return listed.get("definition") or {}
    return None


async def _served(deps: MonitoringDeps, token: str | None, view: DeploymentView,
                  meta: dict[str, Any]) -> dict[str, Any]:
    """The definition of the pipeline version that answered: the deployment's, unless the replica served another
    one (a swap was under way: its challengers, not the new version's, made the shadow outputs). Read from
    pipelines/get, then the older versions its `versions_cursor` reads: a record whose versions pass 4 MiB lists only
    the newest and the deployed one (docs/api-paging.md), and the version being swapped out may be older than those."""
    served = meta.get("pipeline_version")
    if not served or served == view.route.pipeline_version:
        return view.definition
    older = caller_pages(deps.broker, subjects.DEPLOYER_PIPELINES_GET, lambda cursor: GetPipeline(
        pipeline_id=view.pipeline_id, versions_cursor=cursor), PipelineRecord, token, deps.timeout, "versions_cursor")
    try:
        async for record in older:
            found = served_definition(record.versions, str(served))
            if found is not None:
                return found
    except NotFound:  # deleted meanwhile
        pass
    except paging.RepeatedCursor as repeated:  # a cursor answered before (a cycle too): not found, as an old version
        log.warning("pipeline %s: %s; the deployment's definition stands for version %s", view.pipeline_id,
                    repeated, served)
    return view.definition


def _split_answered(answer: pa.Table) -> dict[str, Any] | None:
    """The arm of an A/B split that answered, as the engine names it in `_model_split` ({name, version, sha} of the
    model version it served); None when the answer has no such column (no split) or it names nothing readable."""
    if SPLIT_COLUMN not in answer.column_names or answer.num_rows == 0:
        return None
    named = answer.column(SPLIT_COLUMN)[0].as_py()
    try:
        arm = ModelVersionRef.model_validate_json(named[0] if isinstance(named, list) else named)
    except (ValidationError, TypeError, IndexError):
        return None
    return arm.model_dump()


def _answered_by(meta: dict[str, Any], champion: ModelVersionRef | None) -> dict[str, Any] | None:
    """The model version that answered: the definition's champion, unless the replica names another (a swap was
    under way), then that one by name and sha."""
    try:
        last = json.loads(meta.get("last_model") or "{}")
    except ValueError:
        last = {}
    if champion is not None and (not last or last.get("model_sha") == champion.sha):
        return _ref_dict(champion)
    if last.get("model_name"):
        return {"name": last["model_name"], "version": None, "sha": last.get("model_sha")}
    return _ref_dict(champion)


async def predict(deps: MonitoringDeps, principal: Principal, token: str | None, cmd: PredictImage) -> PredictionResult:
    """predict / predict_bytes: the deployment's model answers the image; the prediction is kept."""
    require_user(principal)
    async with _image(deps, principal, cmd) as data:
        return await _predict(deps, principal, token, cmd, data)


async def _predict(deps: MonitoringDeps, principal: Principal, token: str | None, cmd: PredictImage,
                   data: bytes) -> PredictionResult:
    tags = check_tags(cmd.tags)
    view = await _deployment(deps, principal, token, cmd.deployment)
    received = datetime.now(UTC)
    # before the slot: the ML backend's labeling asks the registry and reads the artifact, which the image's decode
    # does not need; inside the slot, a slow registry held every image predict and monitor waiting
    _check_split(view)
    arms = split_arms(view.definition) if image_config(view.definition) is None else None
    challenger = None
    if arms:  # an A/B split of ML backends: the engine's RandomSplit picks the arm that answers
        backend, backend_arms = await _split_backends(deps, token, view, arms)
    else:
        (backend, challenger), backend_arms = await _ml_backend(deps, token, view), []
    async with deps.image_slots:  # the decoded image and its copies, until only its measures are left
        prepared = await _prepare_predict(deps, cmd, view, data, backend, backend_arms, challenger)
    return await _predict_prepared(deps, token, cmd, view, data, tags, received, prepared, owner=principal)


@dataclass
class _PreparedImage:
    """An image ready for the engine, without the decoded image itself (it may be a hundred MiB)."""

    table: Any  # the engine's input (pyarrow.Table)
    convert: Callable[..., dict[str, Any] | None]  # (answer, column prefix, min threshold[, a backend's reading])
    kind: str
    labels: list[str] | None
    height: int
    width: int
    content_type: str
    features: dict[str, float]
    by_reference: bool  # the table goes to the engine through object storage (an ML backend's base64 task)
    backend: ml_backend_predictions.BackendLabeling | None = None  # the champion's, when it is an ML backend
    challenger: _ChallengerLabeling | None = None  # the shadow's, asked for alongside the champion's
    arms: list[tuple[ModelVersionRef, ml_backend_predictions.BackendLabeling]] = field(default_factory=list)
    """An A/B split of ML backends: each arm's labeling (`backend` is the first arm's: its kind and class ids)."""
    shadow_base: ml_backend_predictions.BackendLabeling | None = None
    """How an ML-backend challenger's answer is read (for_challenger): the champion's labeling, or an ONNX champion's
    image configuration's kind and labels when its challenger is an ML backend (it was sent a task); None: the
    challenger's outputs are read as the champion's (ONNX)."""


@dataclass
class _ChallengerLabeling:
    """The labeling of the deployment's shadow challenger, asked for alongside the champion's: what the lookup
    returned or raised, kept until the engine's answer shows whether the challenger answered at all."""

    model: ModelVersionRef
    outcome: ml_backend_predictions.BackendLabeling | None | Exception


async def _ml_backend(deps: MonitoringDeps, token: str | None, view: DeploymentView,
                      ) -> tuple[ml_backend_predictions.BackendLabeling | None, _ChallengerLabeling | None]:
    """The labeling of the deployment's ML backend, when its model step has no image configuration (an ML backend
    needs none: its labeling config says what it answers) and its model is one; None otherwise. With it, the
    labeling of its shadow challenger, looked up at the same time (one registry round trip, not two in series).
    With an image configuration, the champion takes images (None), and its shadow challenger's labeling is looked up
    alone: an ML-backend challenger is then sent the image as a task next to the champion's input."""
    if image_config(view.definition) is not None:
        shadow = _current_shadow(view.definition)
        if shadow is None:
            return None, None
        try:
            outcome = await ml_backend_predictions.labeling(deps, token, view.route.workspace_id, shadow)
        except Exception as exc:  # raised again only where the challenger answered (_challenger_labeling)
            outcome = exc
        return None, _ChallengerLabeling(shadow, outcome)
    champion = current_model(view.definition)
    if champion is None:
        return None, None
    workspace_id = view.route.workspace_id
    shadow = _current_shadow(view.definition)
    if shadow is None:
        return await ml_backend_predictions.labeling(deps, token, workspace_id, champion), None

    async def settled() -> ml_backend_predictions.BackendLabeling | None | Exception:
        try:  # raised again where it was used before (_predict_prepared): only when the challenger answered
            return await ml_backend_predictions.labeling(deps, token, workspace_id, shadow)
        except Exception as exc:  # kept, not swallowed
            return exc

    challenger = asyncio.ensure_future(settled())
    try:
        backend = await ml_backend_predictions.labeling(deps, token, workspace_id, champion)
    except BaseException:
        challenger.cancel()
        raise
    if backend is None:  # no ML backend: its challenger's labeling is not needed
        challenger.cancel()
        return None, None
    return backend, _ChallengerLabeling(shadow, await challenger)


def _check_split(view: DeploymentView) -> None:
    """Conflict when the deployment's A/B split picks its arm by a column's value (`hash_key`): an image has none,
    and the engine would refuse every request for lacking it."""
    body = split_step(view.definition)
    if body is not None and body.get("hash_key"):
        raise Conflict(f"deployment {view.route.name!r} picks the arm of its A/B split by the {body['hash_key']!r} "
                       "column, which an image has not: predict on images needs a split by weight (no hash_key)")


async def _split_backends(deps: MonitoringDeps, token: str | None, view: DeploymentView, arms: list[ModelVersionRef],
                          ) -> tuple[ml_backend_predictions.BackendLabeling | None,
                                     list[tuple[ModelVersionRef, ml_backend_predictions.BackendLabeling]]]:
    """The labelings of an A/B split's arms, looked up side by side: (the first arm's, every arm's) when every arm
    is an ML backend, (None, []) when none is. The first arm's kind and labels are the prediction's whichever arm
    answers (stats and reviews compare one deployment's predictions by class id), so the others must answer the
    same kind with labels among the first's; a mix of ML backends and other models, or arms that disagree, is a
    Conflict before anything runs (refused every time, not on the requests that reach one arm)."""
    workspace_id, name = view.route.workspace_id, view.route.name
    found = await asyncio.gather(*(ml_backend_predictions.labeling(deps, token, workspace_id, arm) for arm in arms))
    if all(one is None for one in found):
        return None, []
    first_arm, first = arms[0], found[0]
    for arm, one in zip(arms, found, strict=True):
        if one is None:
            raise Conflict(f"deployment {name!r} splits its requests between ML backends and model {arm.name!r}, "
                           "which is not one: predict on images reads every arm's answer as an ML backend's; split "
                           "ML backends only (or models that take images, with an 'image' on the RandomSplit step)")
        if one.kind != first.kind or not set(one.labels) <= set(first.labels):  # first: checked on the way
            raise Conflict(f"the arms of deployment {name!r}'s A/B split answer differently: {first_arm.name!r} a "
                           f"{first.kind} over {first.labels}, {arm.name!r} a {one.kind} over {one.labels}; predict "
                           "keeps one kind and one set of class ids per deployment, so every arm's labeling config "
                           "needs the first arm's kind and labels among the first arm's")
    return first, [(arm, one) for arm, one in zip(arms, found, strict=True) if one is not None]


async def _arm_labeling(deps: MonitoringDeps, token: str | None, view: DeploymentView, image: _PreparedImage,
                        arm: dict[str, Any]) -> ml_backend_predictions.BackendLabeling:
    """How the answer of the split's arm that answered (`_model_split`) is read: its own control, the first arm's
    kind and class ids. An arm the definition does not name (the replica served another pipeline version during a
    swap) is looked up now."""
    for ref, labeling in image.arms:  # image.backend: the first arm's (set whenever arms are)
        if ref.name == arm["name"] and ref.sha in (None, arm.get("sha")) and ref.version in (None, arm.get("version")):
            return ml_backend_predictions.for_challenger(image.backend, labeling)
    labeling = await ml_backend_predictions.labeling(deps, token, view.route.workspace_id,
                                                     ModelVersionRef.model_validate(arm))
    if labeling is None:
        raise ml_backend_predictions.BackendAnswerInvalid(f"the split's arm {arm['name']!r} answered, and it is not "
                                                          "an ML backend")
    return ml_backend_predictions.for_challenger(image.backend, labeling)


async def _challenger_labeling(deps: MonitoringDeps, token: str | None, view: DeploymentView, shadow: ModelVersionRef,
                               asked: _ChallengerLabeling | None) -> ml_backend_predictions.BackendLabeling | None:
    """The labeling of the challenger that answered: the one asked for alongside the champion's, unless the replica
    served another pipeline version (a swap) whose challenger differs; then asked for now."""
    if asked is None or asked.model != shadow:
        return await ml_backend_predictions.labeling(deps, token, view.route.workspace_id, shadow)
    if isinstance(asked.outcome, Exception):
        raise asked.outcome
    return asked.outcome


async def _prepare_predict(
        deps: MonitoringDeps, cmd: PredictImage, view: DeploymentView, data: bytes,
        backend: ml_backend_predictions.BackendLabeling | None,
        arms: list[tuple[ModelVersionRef, ml_backend_predictions.BackendLabeling]] | None = None,
        challenger: _ChallengerLabeling | None = None) -> _PreparedImage:
    """The image decoded and checked against the deployment (and its ML backend's labeling, from _ml_backend, or
    its A/B split's arms' labelings, from _split_backends; its shadow challenger's, from _ml_backend), turned into
    the engine's input and measured."""
    img = await asyncio.to_thread(images.decode_image, data, cmd.content_type)  # CPU work off the event loop
    height, width = img.height, img.width
    config = image_config(view.definition)
    if config is None:
        if backend is None:
            where = "A/B split (RandomSplit)" if split_step(view.definition) is not None else "model step"
            raise Conflict(f"deployment {cmd.deployment!r} has no image configuration: give its pipeline's {where} "
                           "an 'image' (how images become the model's input, see docs/monitoring.md) to predict on "
                           "images, or serve an ML backend (railyard-ml deploy railyard)")
    if view.route.status != "Running":
        # the gateway's words (a crash loop: 503 deployment_crash_loop, failing to start, the deployer's back-off);
        # the reason shown: predict is a user's (require_user) who is a member of the deployment's workspace
        # (_deployment), who reads it in status/get_deployment too
        raise not_serving(view.route, reason_shown=True)
    content_type = images.content_type_of(img)
    shadow_base = None  # how an ML-backend challenger's answer is read, when the champion is no ML backend
    import pyarrow as pa  # here, not at the top: the idle service does without pyarrow (~25 MiB)

    if backend is not None:
        features = await asyncio.to_thread(images.image_features, img)
        others = [one for _, one in arms or [] if one.value != backend.value]  # arms reading the image elsewhere
        table = pa.table({ml_backend_predictions.TASK_COLUMN: pa.array(
            [ml_backend_predictions.task_json(backend, data, content_type, *others)], pa.string())})
        kind, labels = backend.kind, backend.labels

        def convert(answer: pa.Table, prefix: str, min_threshold: float | None,
                    reading: ml_backend_predictions.BackendLabeling | None = None) -> dict[str, Any] | None:
            column = f"{prefix}{ml_backend_predictions.PREDICTION_COLUMN}"
            if column not in answer.column_names:
                if prefix:
                    return None
                raise ml_backend_predictions.BackendAnswerInvalid(
                    f"the ML backend's step answered no {column!r} column")
            return ml_backend_predictions.to_prediction(answer.column(column)[0].as_py(), reading or backend, height,
                                                        width, min_threshold)
    else:
        input_width, input_height = config.size or img.size
        nc = deps.broker.config.connection_state.connection
        if input_width * input_height * config.channels * 4 > nc.max_payload - BUS_HEADROOM:  # float32 values
            raise InvalidRequest(f"the image becomes a {input_width}x{input_height}x{config.channels} model input, "
                                 "more than the bus carries: give the pipeline's image configuration a size, or send "
                                 "a smaller image")
        batch, features = await asyncio.to_thread(lambda: (images.preprocess(img, config),
                                                           images.image_features(img)))
        from shared.arrow_codec import tensor_array

        columns = {config.input: tensor_array(batch)}
        rival = challenger.outcome if challenger is not None else None
        if isinstance(rival, ml_backend_predictions.BackendLabeling):
            # an ML-backend challenger reads a task, which the engine keeps from the ONNX champion (Step._columns_for);
            # its answer is read as the image configuration's kind and labels, as a backend champion's challenger's
            columns[ml_backend_predictions.TASK_COLUMN] = pa.array(
                [ml_backend_predictions.task_json(rival, data, content_type)], pa.string())
            shadow_base = ml_backend_predictions.BackendLabeling(control="", kind=config.kind,
                                                                 labels=list(config.labels or []), value=rival.value)
        table = pa.table(columns)
        kind, labels = config.kind, config.labels

        def convert(answer: pa.Table, prefix: str, min_threshold: float | None,
                    reading: ml_backend_predictions.BackendLabeling | None = None) -> dict[str, Any] | None:
            if reading is not None:  # an ML-backend challenger's answer
                column = f"{prefix}{ml_backend_predictions.PREDICTION_COLUMN}"
                if column not in answer.column_names:
                    return None
                return ml_backend_predictions.to_prediction(answer.column(column)[0].as_py(), reading, height, width,
                                                            min_threshold)
            outputs = _row_outputs(answer, prefix or None)
            if prefix and not outputs:
                return None
            return images.to_prediction(outputs, config, height, width, min_threshold)

    return _PreparedImage(table=table, convert=convert, kind=kind, labels=labels, height=height, width=width,
                          content_type=content_type, features=features,
                          by_reference=backend is not None or shadow_base is not None, backend=backend,
                          challenger=challenger, arms=list(arms or []), shadow_base=backend or shadow_base)


async def _predict_prepared(deps: MonitoringDeps, token: str | None, cmd: PredictImage, view: DeploymentView,
                            data: bytes, tags: list[str], received: datetime,
                            image: _PreparedImage, *, owner: Principal) -> PredictionResult:
    convert = image.convert
    started = time.perf_counter()
    answer, meta, answered = await _ask_engine(deps, view.route.name, image.table, by_reference=image.by_reference,
                                               token=token)
    round_trip = time.perf_counter() - started
    arrived = datetime.now(UTC)  # the answer's arrival: no engine time after it (_answered_at)
    definition = await _served(deps, token, view, meta)
    shadow = _current_shadow(definition)
    kept = await store.settings(deps.pool, view.route.deployment_id)
    min_threshold = kept["min_threshold"] if kept else None
    # an A/B split holding the models: the arm the engine chose answered (a later step's split is not the model's)
    arm = _split_answered(answer) if split_step(definition) is not None else None
    if arm is not None and image.arms:
        prediction = convert(answer, "", min_threshold, await _arm_labeling(deps, token, view, image, arm))
    else:
        prediction = convert(answer, "", min_threshold)
    shadow_prediction, shadow_latency = None, None
    if shadow is not None:
        prefix = f"out_{shadow.name}."
        try:  # a challenger that failed or timed out has no columns: the prediction has no shadow part
            if image.shadow_base is None:
                shadow_prediction = convert(answer, prefix, min_threshold)
            elif f"{prefix}{ml_backend_predictions.PREDICTION_COLUMN}" in answer.column_names:
                # an ML backend challenger's results are those of its own labeling config's control
                reading = ml_backend_predictions.for_challenger(image.shadow_base, await _challenger_labeling(
                    deps, token, view, shadow, image.challenger))
                shadow_prediction = convert(answer, prefix, min_threshold, reading)
        except (ml_backend_predictions.BackendAnswerInvalid, Conflict, NotFound) as exc:  # the champion's answer stands
            log.warning("the shadow answer of %s is left out: %s", cmd.deployment, exc.msg)
        if shadow_prediction is not None:
            elapsed = (meta.get("shadow_elapsed") or {}).get(shadow.name)
            shadow_latency = elapsed / 1e9 if isinstance(elapsed, int | float) else None
    elapsed = meta.get("elapsed") or []
    latency = elapsed[0] / 1e9 if elapsed and isinstance(elapsed[0], int | float) and elapsed[0] > 0 else round_trip
    row = PredictionRow(
        id=uuid.uuid4(), deployment_id=view.route.deployment_id, workspace_id=view.route.workspace_id,
        origin="predict", source=cmd.source, tags=tags,
        model_version=arm or _answered_by(meta, current_model(definition)),
        shadow_model_version=_ref_dict(shadow) if shadow_prediction is not None else None, kind=image.kind,
        prediction=prediction, shadow_prediction=shadow_prediction, latency=latency, shadow_latency=shadow_latency,
        height=image.height, width=image.width, content_type=image.content_type, image_sha256="",
        features=image.features, predicted_at=_answered_at(answered, received, arrived), filename=cmd.filename,
        pipeline_version=meta.get("pipeline_version") or view.route.pipeline_version)
    return await _keep(deps, token, row, data, cmd.deployment, image.labels,
                       kept["target_datalake"] if kept else None, owner=owner)


# --- monitor ---------------------------------------------------------------------------------------------------------


def _predicted_at(timestamp: float | None) -> datetime:
    if timestamp is None:
        return datetime.now(UTC)
    latest = time.time() + LATEST_AHEAD
    if not math.isfinite(timestamp) or not EARLIEST <= timestamp <= latest:
        raise InvalidRequest(f"timestamp {timestamp} is not a time since the epoch in seconds between 2000 and "
                             "tomorrow: send time.time() of when the prediction was made, or leave it out")
    return datetime.fromtimestamp(timestamp, UTC)


def _check_monitored(cmd: MonitorImage, img: Image.Image, labels: list[str] | None, expected: str | None) -> str:
    """The prediction's kind, once the monitored prediction and its image agree with each other and with the
    deployment (its model's labels and kind, when known); InvalidRequest otherwise."""
    if (cmd.width, cmd.height) != img.size:
        raise InvalidRequest(f"height and width are {cmd.height} and {cmd.width} but the image is {img.height} high "
                             f"and {img.width} wide: send the image's own size")
    kind = images.check_prediction(cmd.prediction, img.height, img.width, "prediction", labels)
    if expected is not None and kind != expected:
        raise InvalidRequest(f"prediction is a {kind} but the deployment's model makes {expected}s: send a "
                             f"{expected} PredictionFormat")
    if cmd.shadow_prediction is not None:
        shadow_kind = images.check_prediction(cmd.shadow_prediction, img.height, img.width, "shadow_prediction",
                                              labels)
        if shadow_kind != kind:
            raise InvalidRequest(f"shadow_prediction is a {shadow_kind} but prediction a {kind}: both must be of "
                                 "one kind")
    elif cmd.shadow_latency is not None:
        raise InvalidRequest("shadow_latency without shadow_prediction: send both or neither")
    for name, value in (("latency", cmd.latency), ("shadow_latency", cmd.shadow_latency)):
        if value is not None and not math.isfinite(value):
            raise InvalidRequest(f"{name} must be a finite number of seconds")
    return kind


async def model_labels(deps: MonitoringDeps, token: str | None,
                           view: DeploymentView) -> tuple[list[str] | None, str | None]:
    """(labels, kind) of the deployment's model, for checking a monitored prediction or a review: its image
    configuration's, or its ML backend's labeling config's (an A/B split's: its first arm's, whose class ids predict
    records every arm's answer with); (None, None) when neither says (any kind, class ids checked against
    nothing)."""
    config = image_config(view.definition)
    if config is not None:
        return config.labels, config.kind
    champion = _served_model(view.definition)
    if champion is None:
        return None, None
    try:
        backend = await ml_backend_predictions.labeling(deps, token, view.route.workspace_id, champion)
    except (Conflict, NotFound):  # a labeling config predict cannot use, or a model version no longer listed,
        return None, None  # does not stop predictions made elsewhere
    return (backend.labels, backend.kind) if backend is not None else (None, None)


async def monitor(deps: MonitoringDeps, principal: Principal, token: str | None, cmd: MonitorImage) -> PredictionResult:
    """monitor / monitor_bytes: a prediction made elsewhere, checked strictly, then kept like the deployment's own
    (its model versions: the deployment's current ones; for an A/B split, the arm `model_version` names, or none)."""
    require_user(principal)
    async with _image(deps, principal, cmd) as data:
        return await _monitor(deps, principal, token, cmd, data)


async def _monitor(deps: MonitoringDeps, principal: Principal, token: str | None, cmd: MonitorImage,
                   data: bytes) -> PredictionResult:
    tags = check_tags(cmd.tags)
    predicted_at = _predicted_at(cmd.timestamp)
    view = await _deployment(deps, principal, token, cmd.deployment)
    # the arm of an A/B split the caller names (or the current model), checked before anything is stored
    model = await monitored_model(deps, token, view, cmd.model_version)
    labels, expected = await model_labels(deps, token, view)  # before the slot: it may ask the registry (_predict)
    async with deps.image_slots:  # the decoded image and its copies, until only its measures are left
        img = await asyncio.to_thread(images.decode_image, data, cmd.content_type)  # CPU work off the event loop
        kind = _check_monitored(cmd, img, labels, expected)
        features = await asyncio.to_thread(images.image_features, img)
        height, width, content_type = img.height, img.width, images.content_type_of(img)
        del img
    shadow = _current_shadow(view.definition)
    row = PredictionRow(
        id=uuid.uuid4(), deployment_id=view.route.deployment_id, workspace_id=view.route.workspace_id,
        origin="monitor", source=cmd.source, tags=tags, model_version=_ref_dict(model),
        shadow_model_version=_ref_dict(shadow) if cmd.shadow_prediction is not None else None, kind=kind,
        prediction=cmd.prediction.model_dump(exclude_none=True),
        shadow_prediction=cmd.shadow_prediction.model_dump(exclude_none=True) if cmd.shadow_prediction else None,
        latency=cmd.latency, shadow_latency=cmd.shadow_latency, height=height, width=width,
        content_type=content_type, image_sha256="", features=features,
        predicted_at=predicted_at, filename=cmd.filename, pipeline_version=view.route.pipeline_version)
    kept = await store.settings(deps.pool, view.route.deployment_id)
    return await _keep(deps, token, row, data, cmd.deployment, labels, kept["target_datalake"] if kept else None,
                       owner=principal)


# --- subscribers -----------------------------------------------------------------------------------------------------


def register(router: NatsRouter, deps_fn: Callable[[], MonitoringDeps],
             caller_fn: Callable[[CallContext], Awaitable[Principal]]) -> None:
    """The prediction commands' subscribers (called from app.build_router)."""

    @command(router, subjects.MONITORING_PREDICT, service=NAME)
    async def predict_image(cmd: PredictImage, ctx: CallContext) -> PredictionResult:
        """Run the deployment's model on an image and keep the prediction (predict, predict_bytes)."""
        return await predict(deps_fn(), await caller_fn(ctx), ctx.token, cmd)

    @command(router, subjects.MONITORING_MONITOR, service=NAME)
    async def monitor_image(cmd: MonitorImage, ctx: CallContext) -> PredictionResult:
        """Keep a prediction made elsewhere (monitor, monitor_bytes)."""
        return await monitor(deps_fn(), await caller_fn(ctx), ctx.token, cmd)
