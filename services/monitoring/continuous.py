"""Seed 003's continuous training and continuous deployment, and the promotion of a shadow challenger by the
always-valid sequential test (sequential.py).

How it runs (docs/monitoring.md, "Continuous training and deployment"):
- **Trigger.** `events.monitoring.review_created` is only a wake-up: the trigger is computed from the tables. Under a
  row lock on the deployment's `continuous_training` row, the reviews are counted; when `threshold` more predictions
  were reviewed than at the last training (`reviews_at_last_training`) and no training is open, a `trainings` row is
  inserted and the baseline moved in the same transaction. A restart loses nothing (the next review, or the next
  toggle, recounts) and two wake-ups never start two trainings (the row lock, and a unique index allowing one open
  training per deployment). A training that ends (done or failed) checks the trigger again at once (recheck_after):
  what counted while it was open opens the next one then, not at the next review or alert.
- **ASSAY_ALERT** (the other trigger): `events.assay.alert` (never a warning) of an assay on the deployment's pipeline
  (`continuous_training.pipeline_id`, in the deployment's workspace), raised since it was set up or turned on, is
  recorded under the same row lock, keyed by
  (deployment, event_id) so a redelivered event counts once; `threshold` (default 1) more alerts than at the last
  training open one training as above.
- **Events** (training_started, training_finished, challenger_decided, model_swapped) are written to the service's
  outbox in the transaction of the change they tell of and sent by shared/outbox.py's Outbox (started by `start`).
  A continuous deployment's swap is the deployer's change: the training's delivery (`delivering_since`) is closed
  in the transaction that writes its model_swapped, and one left open by a process that died is delivered again
  (resume_deliveries). A deploy that lands after its command went unanswered (even after the resumes gave up) is
  recorded from the deployer's events.pipeline.deployed naming the pipeline version it carried (sent_deploys,
  written before the command: on_pipeline_deployed; rows deleted once they can no longer matter: prune_sent_deploys).
- **Starting the run** happens off the review path: the trigger only inserts the training `starting`; the
  TrainingStarter (one background task per service process, woken by the trigger, looking at the table again when
  its next training is due, at most sweeps.IDLE_WAIT later) waits until
  the feedback loop has written the reviews that triggered it into a project version (at most EXPORT_WAIT after the
  trigger), claims it with a conditional UPDATE (`run_claimed_at`: one process wins, so no run starts twice) and
  creates the run. A trigger
  committed by any process is started by any process's starter, also after a restart. The claim chooses the run's
  task id (`run_task_id`): a claimed training whose run was not recorded RESUME_START after the claim (run_once's
  answer lost, or its process stopped) is claimed again and asked for again with that id, which the task scheduler
  answers with the task already made (no second run); one claimed before that column is failed after NO_MODEL_GRACE.
- **The run** is an orchestration task run (`task_scheduler.tasks.run_once`) with the parameters, the aliased
  dataset versions and the model name as its arguments, created with the rights of the user who set continuous
  training up: monitoring asks auth for a short-lived token of that user scoped to the deployment's workspace (as
  the task scheduler does for runs), so a user who left the workspace trains nothing. Auth's refusal of that token
  suspends continuous training (`suspended_reason`, migration 017); a delivery or a swap refused for the continuous
  deployment's owner suspends continuous deployment likewise (migration 020).
- **Its output.** The run registers a model version with the SDK, with its run token; the registry's
  `events.model.uploaded` carries the uploader's task (`task_id`), which names the training. A converting upload
  waits for `events.model.version_finished`, or finds its conversion ended already (finished_conversions: the two
  events are read by separate consumers, in either order). Once the run has succeeded and its model version is
  ready, the training is done: `events.monitoring.training_finished` carries `outputs: [{kind: model_version,
  ref}]`, which the lineage service draws as an arrow from the run's card to the model version's.
- **The policy** (`continuous_deployment`): DEPLOY_MANUAL (or no active policy) leaves the version pending for a
  person (retrieve_information shows it); DEPLOY_SHADOW sets it as the shadow challenger (the set_shadow_model path)
  and opens a challenge; DEPLOY_AUTO serves it (the set_model path).
- **Promotion.** While a challenge is open, every review wake-up joins the deployment's predictions answered by
  that champion and that challenger with their reviews (ground truth), counts the paired outcomes and runs the
  sequential test. The first non-CONTINUE decision moves the challenge to promoting / rolling_back under a
  conditional UPDATE (one process wins), is published with its evidence, and the swap follows: promote serves the
  challenger alone, roll back serves the champion alone (the ShadowDeploy step becomes a ModelInference step).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from faststream.nats import NatsRouter
from pydantic import BaseModel

from services.monitoring import challenge_pairs, handlers, ml_backend, model_inputs, sequential, sweeps
from services.monitoring import feedback_store as fs
from shared import outbox, subjects
from shared.authz import Principal, require_user
from shared.background import Sweeper
from shared.bus import CallContext, command, publish_event, request
from shared.consumers import DeliveryPolicy, durable_subscriber, json_model
from shared.db import xact_lock
from shared.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RailyardError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UpstreamTimeout,
)
from shared.lean_imports import lazy_module
from shared.messages.assays import AssayThresholdCrossed
from shared.messages.base import Event
from shared.messages.deployer import (
    CreatePipeline,
    Deployed,
    DeploymentRoute,
    DeployPipeline,
    GetPipeline,
    PipelineCreated,
    PipelineDeployed,
    PipelineRecord,
    ResolveDeployment,
)
from shared.messages.monitoring import ModelVersionRef
from shared.messages.monitoring_continuous import (
    ChallengerDecided,
    ChallengeRecord,
    ContinuousDeploymentState,
    ContinuousInformation,
    ContinuousTrainingDataset,
    ContinuousTrainingState,
    DetachContinuousTrainingDataset,
    ModelSwapped,
    SetupContinuousDeployment,
    SetupContinuousTraining,
    ToggleContinuous,
    TrainingFinished,
    TrainingRecord,
    TrainingStarted,
)
from shared.messages.monitoring_feedback import DatasetVersionRef, ReviewCreated
from shared.messages.monitoring_predictions import PredictionCreated
from shared.messages.registry import ModelUploaded, ModelVersionFinished, ResolvedModel, ResolveModel
from shared.messages.tasks import (
    IssueTaskToken,
    RunTaskOnce,
    TaskCreated,
    TaskRunEvent,
    TaskTokenIssued,
)
from shared.settings import Settings, deploy_wait

if TYPE_CHECKING:
    from shared.messages import lineage
else:
    # the lineage service's models (~40 ms of a start, ~2 MiB of RSS; shared/messages/__init__.py) built by the first
    # command that uses them, not when the service starts (its restart is ~70 % imports)
    lineage = lazy_module("shared.messages.lineage")

log = logging.getLogger("railyard.monitoring.continuous")

NAME = "monitoring"
TOKEN_TTL = 900
NO_MODEL_GRACE = 60.0  # seconds a succeeded run may take for its model upload event to arrive before it is failed
OPEN_TRAININGS = ("starting", "running", "succeeded")
STALE_MARGIN = 8
"""Request timeouts a stalled delivery or swap waits beyond its deploy's own wait (deploy_wait) before it counts as
stale (stale_swap): what a delivery or swap asks for between its claim and its deploy (the owner's token, the
deployment, its pipeline, the model version, the new pipeline version), with room for the database."""


def stale_swap(settings: Settings) -> float:
    """Seconds after which a delivery or a decided challenge whose swap did not finish is taken up again (by any
    process: resume_deliveries, resume_swap): past what the first process may still be doing, its deploy's wait
    (deploy_wait of these settings) and the requests before it (STALE_MARGIN request timeouts): 345 s with the
    defaults, 1340 s with deployer.ready_timeout 600. Before, a fixed 300 s, below deploy_wait (305 s at the
    defaults): another process could take up a delivery or swap whose deploy was still under way."""
    return deploy_wait(settings) + STALE_MARGIN * settings.nats.request_timeout


STALE_SWAP = 345.0
"""stale_swap at the default settings: ContinuousDeps.stale_swap's default (the service sets its settings')."""
RESUME_CONCURRENCY = 4  # deployments whose unfinished deliveries / swaps one sweep resumes at once
MAX_RESUMES = 6  # a swap or delivery taken up again this many times (~40 min) is failed at the next (migration 022)
HELD_UP_CHARS = 300  # characters of what last held a delivery or swap up that its give-up's reason quotes (_held_up)
EXPORT_WAIT = 30.0  # seconds a training waits for the feedback loop to write the reviews that triggered it
STARTER_SWEEP = 2.0  # the training starter's soonest look: its first after the start, after a failed sweep, or when
# a training is due that its look did not take (with none due it waits for the next, at most sweeps.IDLE_WAIT)
EXPORT_POLL = 0.25  # seconds between the starter's looks while a training waits for the feedback loop
RESUME_START = 60.0  # seconds after its claim a training whose run_once went unanswered is asked for again
CONVERSION_LOCK = "monitoring.continuous_conversion"
"""The advisory lock (shared.db.xact_lock, keyed by the model version) on_model_uploaded (of a converting version) and
on_model_finished take first: the upload's look for a conversion that ended already and the finished event's look for
a training with the version are one step each, so the one that comes second sees what the first wrote."""


EVENT_TYPES: dict[str, type[Event]] = {
    subjects.EVENT_MONITORING_TRAINING_STARTED: TrainingStarted,
    subjects.EVENT_MONITORING_TRAINING_FINISHED: TrainingFinished,
    subjects.EVENT_MONITORING_CHALLENGER_DECIDED: ChallengerDecided,
    subjects.EVENT_MONITORING_MODEL_SWAPPED: ModelSwapped,
    subjects.EVENT_MONITORING_REVIEW_CREATED: ReviewCreated,  # feedback.review_prediction
    subjects.EVENT_MONITORING_PREDICTION_CREATED: PredictionCreated,  # predictions_store.insert_prediction
}
"""Monitoring's own events: each written to the service's `outbox` table (migration 014) in the transaction of the
change it tells of, and published from there by shared/outbox.py's Outbox (in order per deployment)."""
DEPLOYED_DURABLE = "monitoring-continuous-deployed"
"""Monitoring's durable consumer of the deployer's events.pipeline.deployed (on_pipeline_deployed)."""
SENT_SETTLED = 3600.0
"""Seconds a sent_deploys row whose delivery or swap is settled for good (recorded, closed) is kept after its deploy
was sent (prune_sent_deploys): past the deploy's own wait (deploy_wait, 305 s) and, at the default settings, the
deployed event's redeliveries (nats.consumer_max_deliver 10, waits of 2 s doubling up to 300 s: 810 s). A margin, not
a bound its event keeps (a deploy may land after the wait; those settings may be raised; a dead letter may be
replayed any time): a settled row's own event records nothing whenever it comes (each record is conditional), and a
recorded row that still matters, guarding an older row of its version (_newer_recorded), is kept as long as that one."""
PRUNE_BATCH = 1000  # sent_deploys rows one resume sweep deletes at most (every 30 s)
RECORD_LOCK = "monitoring.continuous_record"
"""The advisory lock (shared.db.xact_lock, keyed by the deployment id) every transaction recording a delivery or a
swap takes first (_record_lock), so that its check for a newer command recorded already (_newer_recorded,
_older_than_recorded) and its record are one step for every other record path, in any process: the deployed event's
(on_pipeline_deployed), a delivery's own answer, resume or one more look (_deliver, both policies), a swap's
(_apply_decision). Before, the check ran in READ COMMITTED before the record with no lock the newer command's own
record path took: a newer command committing its record in between (another process, or a second connection of this
one) was recorded first, and the older command's record, committed after it, told it last."""
MAX_RUN_ALERTS = 100  # the newest alerts of an ASSAY_ALERT training given to its run (task_args()["assay_alerts"])


@dataclass
class ContinuousDeps:
    """What continuous training and deployment use besides the deployment handlers' deps."""

    base: handlers.MonitoringDeps
    verify: Callable[[str | None], Awaitable[Principal]]
    events_committed: Callable[[], None]  # wakes the outbox after a commit that wrote events (Outbox.wake)
    max_task_timeout: int  # the task scheduler's own limit (settings.tasks.max_timeout): a run's timeout above it
    # would be refused only when the training starts, in the background, so setup refuses it at once
    locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    deploying: dict[int, int] = field(default_factory=dict)  # deployment id -> its deploys under way here (busy)
    wake_starter: asyncio.Event = field(default_factory=asyncio.Event)
    # deployments whose assay alerts this process found not deployed (and said so once at INFO), until deployed again
    undeployed: set[int] = field(default_factory=set)
    # work started by a command that outlasts its answer (a refused swap redone: a deploy), kept until it ends
    background: set[asyncio.Task] = field(default_factory=set)
    # seconds a sent_deploys row whose delivery or swap may still be recorded is kept (prune_sent_deploys): the
    # EVENTS stream's nats.events_max_age, how long a deployed event naming it can wait for monitoring; None (a stream
    # keeping events for good, max_age 0): kept as long
    sent_retention: float | None = 30 * 86400.0
    # seconds after which a delivery or swap that did not finish is taken up again: stale_swap of the settings in use
    stale_swap: float = STALE_SWAP

    def in_background(self, work: Awaitable[Any], what: str) -> asyncio.Task:
        """Run `work` after the command answered; its failure is logged (what is left undone is resumed by the
        sweeps: a decided challenge by resume_swap)."""
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("%s failed", what)

        task = asyncio.create_task(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def lock(self, deployment_id: int) -> asyncio.Lock:
        """Serializes this process's background work on one deployment (the database serializes processes)."""
        return self.locks.setdefault(deployment_id, asyncio.Lock())

    @contextlib.contextmanager
    def deploying_to(self, deployment_id: int) -> Iterator[None]:
        """A deploy of this process to the deployment under way (_serve: a delivery's or a swap's, under its lock)."""
        self.deploying[deployment_id] = self.deploying.get(deployment_id, 0) + 1
        try:
            yield
        finally:
            self.deploying[deployment_id] -= 1
            if not self.deploying[deployment_id]:
                del self.deploying[deployment_id]

    def busy(self) -> list[int]:
        """The deployments this process is deploying to now (a delivery or a swap under way, holding their lock while
        it waits up to deploy_wait, 305 s, for the deploy): the resume sweep leaves them unclaimed and comes back at
        its next look (DeliveryResumer), instead of waiting for them with every deployment after them. Not every
        deployment whose lock is held: its other holders (a review's trigger check and sequential test, a training's
        advance) hold it for a transaction or two, and a sweep that skipped a deployment whenever one did left one
        with a steady flow of reviews unresumed sweep after sweep (it waits for them, as for any lock)."""
        return list(self.deploying)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _ref(value: Any) -> ModelVersionRef | None:
    value = _json(value)
    return ModelVersionRef.model_validate(value) if value else None


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


async def _event(conn: Any, subject: str, event: Event) -> None:
    """Write one of monitoring's events in the caller's transaction (sent by the outbox once that commits)."""
    await outbox.add_event(conn, subject, event)


# --- acting for the user who set it up ---------------------------------------------------------------------------

OwnerRefused = handlers.OwnerRefused  # auth refused the owner's token: what acts as them is suspended


async def act_as(deps: ContinuousDeps, owner_id: uuid.UUID | str, workspace_id: int,
                 purpose: str) -> tuple[Principal, str]:
    """A short-lived token of `owner_id` scoped to `workspace_id` (auth refuses it when the user is deactivated or
    no longer a member: OwnerRefused), and its verified principal: background work acts with that user's rights
    only, never another's (no fallback to a workspace owner: that would widen what the set-up granted)."""
    base = deps.base
    try:
        issued = await request(base.broker, subjects.AUTH_TOKEN_ISSUE_TASK, IssueTaskToken(
            user_id=str(owner_id), workspace_id=workspace_id, ttl=TOKEN_TTL, task_id=purpose),
            timeout=base.timeout, reply_model=TaskTokenIssued)
    except (Unauthorized, NotFound) as exc:
        raise OwnerRefused(exc.msg) from exc
    return await deps.verify(issued.access_token), issued.access_token


async def deployed_name(deps: ContinuousDeps, token: str, name: str) -> str | None:
    """The current name of the deployment set up as `name` (`<deploy_id>-<id>`), asked of the deployer with `token`
    (act_as's); None when it is not deployed. A redeploy of its pipeline under another deploy_id keeps the
    deployment (its id, its monitoring state) but renames it, so the name stored at set-up may be stale: trainings
    and swaps resolve it here when they start, and the stored names are brought in step."""
    base = deps.base
    deployment_id = int(name.rpartition("-")[2])
    ct = await base.pool.fetchrow("SELECT pipeline_id FROM continuous_training WHERE"
                                  " deployment_id = $1", deployment_id)
    if ct is None or ct["pipeline_id"] is None:  # set up before migration 013 stored the pipeline: by its name
        try:
            route = await request(base.broker, subjects.DEPLOYER_DEPLOYMENTS_RESOLVE, ResolveDeployment(name=name),
                                  token=token, timeout=base.timeout, reply_model=DeploymentRoute)
        except NotFound:
            return None
        return route.name
    # the deployment stays its pipeline's (a redeploy keeps its id): the pipeline's active one, if it is it; that
    # one pipeline's record (pipelines/get), not the workspace's pipelines/list page by page
    try:
        pipeline = await request(base.broker, subjects.DEPLOYER_PIPELINES_GET, GetPipeline(
            pipeline_id=ct["pipeline_id"]), token=token, timeout=base.timeout, reply_model=PipelineRecord)
    except NotFound:  # deleted
        return None
    active = pipeline.deployment
    if not active or active["id"] != deployment_id:
        return None
    current = active["name"]
    if current != name:
        for table in ("continuous_training", "continuous_deployment"):  # updated_at unchanged: it dates the set-up
            await base.pool.execute(f"UPDATE {table} SET deployment = $2 WHERE deployment_id = $1 AND"
                                    " deployment <> $2", deployment_id, current)
        log.info("deployment %s was redeployed as %s: continuous training and deployment follow it", name, current)
    return current


# --- the user-facing commands ------------------------------------------------------------------------------------

async def _check_dataset(deps: ContinuousDeps, token: str | None, workspace_id: int,
                         ref: DatasetVersionRef) -> lineage.DatasetInfo:
    dataset = await request(deps.base.broker, subjects.LINEAGE_DATASETS_GET,
                            lineage.DatasetRef(dataset_id=ref.dataset_id), token=token, timeout=deps.base.timeout,
                            reply_model=lineage.DatasetInfo)
    if dataset.workspace_id != workspace_id:
        raise NotFound(f"dataset {ref.dataset_id} not found in the deployment's workspace")
    if ref.version_id is not None:  # a version of the dataset's project that holds it (the lineage service: 404);
        # a small answer, not the version's file list (which grows with the dataset, beyond the bus payload)
        await request(deps.base.broker, subjects.LINEAGE_DATASETS_SAVED, lineage.SavedDatasetQuery(
            dataset_id=ref.dataset_id, version_id=ref.version_id), token=token, timeout=deps.base.timeout,
            reply_model=lineage.SavedDatasetInfo)
    return dataset


def _backend_reads(dataset: lineage.DatasetInfo) -> None:
    """An ML backend's training run reads reviewed predictions, which the feedback loop writes as files of images
    datasets (railyard_ml.continuous_training.reviewed_files): any other kind would fail every run it starts."""
    if dataset.kind != "images":
        raise InvalidRequest(f"dataset {dataset.id} is {lineage.a_dataset_of_kind(dataset.kind)}: continuous training "
                             "through the deployment's ML backend trains its fit on reviewed predictions, which the "
                             "feedback loop writes to images datasets; give the feedback loop's images dataset "
                             "(or orchestration_id, a recipe of your own that reads other data)")


async def _backend_reads_kept(deps: ContinuousDeps, token: str | None, deployment_id: int,
                              given: DatasetVersionRef | None) -> None:
    """Set up again as an ML backend's (kind ml_backend) over a set-up with a recipe of its own: the datasets attached
    then stay attached (a set-up keeps them), and a tabular one among them would fail every run as one given now
    would (_backend_reads). Those this set-up does not replace (`given` replaces the `train` alias and its own
    dataset) are checked: a 400 naming the alias and what to do. A set-up that was an ML backend's already checked
    each when it was attached: nothing is asked then; a dataset deleted since is not this check's to refuse."""
    rows = await deps.base.pool.fetch(
        "SELECT d.alias, d.dataset_id FROM continuous_training_datasets d JOIN continuous_training c USING"
        " (deployment_id) WHERE d.deployment_id = $1 AND c.kind IS DISTINCT FROM 'ml_backend' ORDER BY d.alias",
        deployment_id)
    for row in rows:
        if given is not None and (row["alias"] == "train" or row["dataset_id"] == given.dataset_id):
            continue
        try:
            dataset = await request(deps.base.broker, subjects.LINEAGE_DATASETS_GET, lineage.DatasetRef(
                dataset_id=row["dataset_id"]), token=token, timeout=deps.base.timeout, reply_model=lineage.DatasetInfo)
        except NotFound:
            continue
        if dataset.kind != "images":
            raise InvalidRequest(
                f"dataset {dataset.id}, attached as {row['alias']!r} when continuous training was set up with a recipe "
                f"of its own, is {lineage.a_dataset_of_kind(dataset.kind)}: continuous training through the "
                "deployment's ML backend reads reviewed predictions from images datasets, so every run would fail; "
                "detach it first (detach_dataset_version_from_continuous_training), or give orchestration_id")


async def _review_count(conn: Any, deployment_id: int) -> int:
    """Predictions of the deployment reviewed so far (one reviews row per reviewed prediction)."""
    return await conn.fetchval("SELECT count(*) FROM reviews WHERE deployment_id = $1", deployment_id)


async def _alert_count(conn: Any, deployment_id: int) -> int:
    """Assay alerts counted for the deployment so far (one row per alert event, by its event_id)."""
    return await conn.fetchval("SELECT count(*) FROM continuous_training_alerts WHERE deployment_id = $1",
                               deployment_id)


async def setup_training(deps: ContinuousDeps, principal: Principal, token: str | None,
                         cmd: SetupContinuousTraining) -> ContinuousInformation:
    """setup_continuous_training: checked whole before anything is stored (400/404/409 change nothing)."""
    if cmd.orchestration_id is None and cmd.experiment_parameters is None and cmd.scan_config is None:
        raise InvalidRequest("give experiment_parameters (experiment_parameters={} for none): without "
                             "orchestration_id, the deployment's ML backend trains through its own fit, which takes "
                             "experiment_parameters as keywords (scan_config is for a recipe of your own, given as "
                             "orchestration_id)", code="experiment_parameters_missing")
    if (cmd.experiment_parameters is None) == (cmd.scan_config is None):
        raise InvalidRequest("give exactly one of experiment_parameters or scan_config (the seed: 'whether "
                             "experiment_parameters or scan_config but not both')")
    if cmd.orchestration_id is None and cmd.scan_config is not None:
        raise InvalidRequest("scan_config needs orchestration_id (your training recipe, which decides what a scan "
                             "means): without one, the deployment's ML backend trains through its own fit, which "
                             "has no scan; give experiment_parameters (passed to fit as keywords)",
                             code="scan_config_unsupported")
    if cmd.timeout is not None and cmd.timeout > deps.max_task_timeout:
        raise InvalidRequest(f"timeout {cmd.timeout} s is above the {deps.max_task_timeout} s the task scheduler "
                             "allows a run (tasks.max_timeout): give a timeout of at most that, or none for the "
                             "scheduler's default", code="timeout_too_long")
    require_user(principal)
    base = deps.base
    view = await handlers._deployment(base, principal, token, cmd.deployment)
    workspace_id = view.route.workspace_id
    current = handlers.current_model(view.definition)
    model_name = cmd.model_name
    if model_name is None:
        if current is None:
            raise Conflict("this deployment's pipeline has no model step: give model_name")
        model_name = current.name
    kind = "orchestration"
    if cmd.orchestration_id is None:
        # no recipe given: only a deployment served by an ML backend trains without one (through its fit)
        if current is None or not await ml_backend.is_backend(base, token, workspace_id, current):
            raise InvalidRequest("give orchestration_id (the training recipe): the deployment's model is not an ML "
                                 "backend deployed with `railyard-ml deploy railyard`, whose fit could train it")
        if current.name != model_name:  # the backend's fit trains the model it serves, under that model's name
            raise InvalidRequest(f"model_name {model_name!r} is not the model of the deployment's ML backend "
                                 f"({current.name!r}), whose fit trains the model it serves: leave model_name out, "
                                 "or give orchestration_id (a recipe of your own registering that model)")
        kind = "ml_backend"
    project = await request(base.broker, subjects.LINEAGE_PROJECTS_GET, lineage.ProjectRef(project_id=cmd.project_id),
                            token=token, timeout=base.timeout, reply_model=lineage.ProjectInfo)
    if project.workspace_id != workspace_id:
        raise NotFound(f"project {cmd.project_id} not found in the deployment's workspace")
    orchestration_id = cmd.orchestration_id
    if orchestration_id is not None:
        found = False
        async for listed in ml_backend.orchestration_pages(base, workspace_id, token):  # up to the page holding it
            if any(o.id == orchestration_id for o in listed.orchestrations):
                found = True
                break
        if not found:
            raise NotFound(f"orchestration {orchestration_id} not found in the deployment's workspace")
    if cmd.dataset_version is not None:
        dataset = await _check_dataset(deps, token, workspace_id, cmd.dataset_version)
        if kind == "ml_backend":
            _backend_reads(dataset)
    if kind == "ml_backend":
        await _backend_reads_kept(deps, token, view.route.deployment_id, cmd.dataset_version)
    if orchestration_id is None:  # every check passed: register the built-in recipe (once per workspace)
        orchestration_id = await ml_backend.builtin_orchestration(base, token, workspace_id, principal)
    deployment_id = view.route.deployment_id
    async with base.pool.acquire() as conn, conn.transaction():
        reviews = await _review_count(conn, deployment_id)
        # pipeline_id: the deployment's pipeline, whose assays' alerts an ASSAY_ALERT trigger counts
        await conn.execute(
            "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
            " orchestration_id, trigger, threshold, experiment_parameters, scan_config, model_name, timeout, active,"
            " reviews_at_last_training, kind, pipeline_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
            " $12, true, $13, $14, $15) ON CONFLICT (deployment_id) DO UPDATE SET owner_id = $4, project_id = $5,"
            " orchestration_id = $6, trigger = $7, threshold = $8, experiment_parameters = $9, scan_config = $10,"
            " model_name = $11, timeout = $12, active = true, kind = $14, pipeline_id = $15, updated_at = now(),"
            " suspended_reason = NULL",
            deployment_id, workspace_id, view.route.name, uuid.UUID(principal.user_id), cmd.project_id,
            orchestration_id, cmd.trigger, cmd.threshold,
            json.dumps(cmd.experiment_parameters) if cmd.experiment_parameters is not None else None,
            json.dumps(cmd.scan_config) if cmd.scan_config is not None else None, model_name, cmd.timeout, reviews,
            kind, view.pipeline_id)
        if cmd.dataset_version is not None:
            await _attach(conn, deployment_id, "train", cmd.dataset_version)
    # not behind this process's lock of the deployment, which a delivery's or swap's deploy holds up to deploy_wait
    # (305 s) while the gateway waits setup_answers: the row lock on continuous_training makes the check once
    await check_trigger(deps, deployment_id, in_process_lock=False)
    return await information(base.pool, deployment_id)


async def _attach(conn: Any, deployment_id: int, alias: str, ref: DatasetVersionRef) -> None:
    await conn.execute("DELETE FROM continuous_training_datasets WHERE deployment_id = $1 AND"
                       " (alias = $2 OR dataset_id = $3)", deployment_id, alias, ref.dataset_id)
    await conn.execute("INSERT INTO continuous_training_datasets (deployment_id, alias, dataset_id, version_id)"
                       " VALUES ($1, $2, $3, $4)", deployment_id, alias, ref.dataset_id, ref.version_id)


async def _configured(conn: Any, deployment_id: int, table: str, what: str) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT * FROM {table} WHERE deployment_id = $1 FOR UPDATE", deployment_id)
    if row is None:
        raise Conflict(f"{what} is not set up for this deployment: call setup_{what.replace(' ', '_')} first")
    return row


async def attach_dataset(deps: ContinuousDeps, principal: Principal, token: str | None,
                         cmd: ContinuousTrainingDataset) -> ContinuousInformation:
    """attach_dataset_version_to_continuous_training: an alias names one dataset version (attaching an alias or a
    dataset again replaces it)."""
    view = await handlers._deployment(deps.base, principal, token, cmd.deployment)
    dataset = await _check_dataset(deps, token, view.route.workspace_id, cmd.dataset_version)
    async with deps.base.pool.acquire() as conn, conn.transaction():
        ct = await _configured(conn, view.route.deployment_id, "continuous_training", "continuous training")
        if ct["kind"] == "ml_backend":
            _backend_reads(dataset)
        await _attach(conn, view.route.deployment_id, cmd.alias, cmd.dataset_version)
    return await information(deps.base.pool, view.route.deployment_id)


async def detach_dataset(deps: ContinuousDeps, principal: Principal, token: str | None,
                         cmd: DetachContinuousTrainingDataset) -> ContinuousInformation:
    """detach_dataset_version_from_continuous_training: 404 when that dataset is not attached."""
    view = await handlers._deployment(deps.base, principal, token, cmd.deployment)
    async with deps.base.pool.acquire() as conn, conn.transaction():
        await _configured(conn, view.route.deployment_id, "continuous_training", "continuous training")
        removed = await conn.fetchval("DELETE FROM continuous_training_datasets WHERE deployment_id = $1 AND"
                                      " dataset_id = $2 RETURNING alias", view.route.deployment_id,
                                      cmd.dataset_version.dataset_id)
    if removed is None:
        raise NotFound(f"dataset {cmd.dataset_version.dataset_id} is not attached to this continuous training")
    return await information(deps.base.pool, view.route.deployment_id)


async def toggle_training(deps: ContinuousDeps, principal: Principal, token: str | None,
                          cmd: ToggleContinuous) -> ContinuousInformation:
    """toggle_continuous_training: inactive, reviews still count; active again, the threshold is checked at once."""
    view = await handlers._deployment(deps.base, principal, token, cmd.deployment)
    async with deps.base.pool.acquire() as conn, conn.transaction():
        await _configured(conn, view.route.deployment_id, "continuous_training", "continuous training")
        await conn.execute("UPDATE continuous_training SET active = $2, updated_at = now(), suspended_reason ="
                           " CASE WHEN $2 THEN NULL ELSE suspended_reason END WHERE deployment_id = $1",
                           view.route.deployment_id, cmd.active)
    if cmd.active:  # not behind a deploy under way (setup_training's reason)
        await check_trigger(deps, view.route.deployment_id, in_process_lock=False)
    return await information(deps.base.pool, view.route.deployment_id)


async def setup_deployment(deps: ContinuousDeps, principal: Principal, token: str | None,
                           cmd: SetupContinuousDeployment) -> ContinuousInformation:
    """setup_continuous_deployment: the policy (and the sequential test's alpha and minimum sample)."""
    require_user(principal)
    view = await handlers._deployment(deps.base, principal, token, cmd.deployment)
    await deps.base.pool.execute(
        "INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id, policy, alpha,"
        " min_sample, active) VALUES ($1, $2, $3, $4, $5, $6, $7, true) ON CONFLICT (deployment_id) DO UPDATE SET"
        " owner_id = $4, policy = $5, alpha = $6, min_sample = $7, active = true, updated_at = now(),"
        " suspended_reason = NULL",
        view.route.deployment_id, view.route.workspace_id, view.route.name, uuid.UUID(principal.user_id),
        cmd.policy, cmd.alpha, cmd.min_sample)
    _redo_refused_swap_later(deps, view.route.deployment_id)
    return await information(deps.base.pool, view.route.deployment_id)


def _redo_refused_swap_later(deps: ContinuousDeps, deployment_id: int) -> None:
    """After continuous deployment is set up or turned on again: a challenge's swap auth refused for the owner is
    made (redo_refused_swap), off the command's path (a deploy may take deploy_wait)."""
    deps.in_background(redo_refused_swap(deps, deployment_id),
                       f"redoing the refused swap of deployment {deployment_id}'s challenge")


async def toggle_deployment(deps: ContinuousDeps, principal: Principal, token: str | None,
                            cmd: ToggleContinuous) -> ContinuousInformation:
    """toggle_continuous_deployment: inactive, new model versions wait for a person as under DEPLOY_MANUAL (an
    open challenge is still decided: it was started under the policy)."""
    view = await handlers._deployment(deps.base, principal, token, cmd.deployment)
    async with deps.base.pool.acquire() as conn, conn.transaction():
        await _configured(conn, view.route.deployment_id, "continuous_deployment", "continuous deployment")
        await conn.execute("UPDATE continuous_deployment SET active = $2, updated_at = now(), suspended_reason ="
                           " CASE WHEN $2 THEN NULL ELSE suspended_reason END WHERE deployment_id = $1",
                           view.route.deployment_id, cmd.active)
    if cmd.active:
        _redo_refused_swap_later(deps, view.route.deployment_id)
    return await information(deps.base.pool, view.route.deployment_id)


async def kept_state(pool: asyncpg.Pool, deployment_id: int) -> list[str]:
    """What delete would lose of continuous training and deployment (delete refuses without force_delete)."""
    kept = []
    for table, what in (("continuous_training", "continuous training"),
                        ("continuous_deployment", "continuous deployment"), ("trainings", "trainings")):
        if await pool.fetchval(f"SELECT 1 FROM {table} WHERE deployment_id = $1 LIMIT 1", deployment_id):
            kept.append(what)
    return kept


async def forget(pool: asyncpg.Pool, deployment_id: int) -> None:
    """Drop the deployment's continuous training and deployment, its trainings and challenges (delete)."""
    async with pool.acquire() as conn, conn.transaction():
        for table in ("challenges", "trainings", "continuous_training", "continuous_deployment"):
            await conn.execute(f"DELETE FROM {table} WHERE deployment_id = $1", deployment_id)


# --- what retrieve_information shows -----------------------------------------------------------------------------

def _training_record(row: asyncpg.Record) -> TrainingRecord:
    """`delivery_held_up` (migration 027) only while the delivery is under way (claimed: left for the resume): once
    it ended, the reason says how (a give-up's quotes it; one closed overtaken or failed otherwise keeps what held
    its earlier tries up, not to be read as holding it up now)."""
    return TrainingRecord(id=row["id"], state=row["state"], reviews=row["reviews"], trigger=row["trigger"],
                          alerts=row["alerts"], task_id=row["task_id"],
                          run_id=row["run_id"], model_version=_ref(row["model_version"]), outcome=row["outcome"],
                          reason=row["reason"], created_at=_iso(row["created_at"]),
                          updated_at=_iso(row["updated_at"]),
                          delivery_held_up=row["delivery_held_up"] if row["delivering_since"] is not None else None)


def _challenge_record(row: asyncpg.Record) -> ChallengeRecord:
    """`swap_held_up` (migration 027) only while the swap is under way (decided: left for the resume), as
    _training_record's delivery_held_up."""
    return ChallengeRecord(id=row["id"], champion=_ref(row["champion"]), challenger=_ref(row["challenger"]),
                           state=row["state"], evidence=_json(row["evidence"]), started_at=_iso(row["started_at"]),
                           decided_at=_iso(row["decided_at"]), reason=row["reason"],
                           swap_held_up=row["swap_held_up"] if row["state"] in ("promoting", "rolling_back") else None)


async def information(pool: asyncpg.Pool, deployment_id: int) -> ContinuousInformation:
    """The deployment's continuous training and deployment state, last training and current/last challenge."""
    async with pool.acquire() as conn:
        ct = await conn.fetchrow("SELECT * FROM continuous_training WHERE deployment_id = $1", deployment_id)
        cd = await conn.fetchrow("SELECT * FROM continuous_deployment WHERE deployment_id = $1", deployment_id)
        training = await conn.fetchrow("SELECT * FROM trainings WHERE deployment_id = $1"
                                       " ORDER BY created_at DESC LIMIT 1", deployment_id)
        pending = await conn.fetchrow("SELECT model_version FROM trainings WHERE deployment_id = $1 AND"
                                      " outcome = 'pending' ORDER BY created_at DESC LIMIT 1", deployment_id)
        challenge = await conn.fetchrow("SELECT * FROM challenges WHERE deployment_id = $1"
                                        " ORDER BY started_at DESC LIMIT 1", deployment_id)
        training_state = None
        if ct is not None:
            datasets = await conn.fetch("SELECT * FROM continuous_training_datasets WHERE deployment_id = $1"
                                        " ORDER BY alias", deployment_id)
            training_state = ContinuousTrainingState(
                active=ct["active"], project_id=ct["project_id"], orchestration_id=ct["orchestration_id"],
                kind=ct["kind"], trigger=ct["trigger"], threshold=ct["threshold"],
                experiment_parameters=_json(ct["experiment_parameters"]), scan_config=_json(ct["scan_config"]),
                model_name=ct["model_name"],
                datasets={d["alias"]: DatasetVersionRef(dataset_id=d["dataset_id"], version_id=d["version_id"])
                          for d in datasets},
                reviews=await _review_count(conn, deployment_id),
                reviews_at_last_training=ct["reviews_at_last_training"],
                alerts=await _alert_count(conn, deployment_id),
                alerts_at_last_training=ct["alerts_at_last_training"], suspended_reason=ct["suspended_reason"])
    return ContinuousInformation(
        training=training_state,
        deployment=ContinuousDeploymentState(active=cd["active"], policy=cd["policy"], alpha=cd["alpha"],
                                             min_sample=cd["min_sample"], suspended_reason=cd["suspended_reason"])
        if cd is not None else None,
        last_training=_training_record(training) if training is not None else None,
        pending_model_version=_ref(pending["model_version"]) if pending is not None else None,
        challenge=_challenge_record(challenge) if challenge is not None else None)


# --- the trigger and the training run ----------------------------------------------------------------------------

async def check_trigger(deps: ContinuousDeps, deployment_id: int,
                        alert: tuple[uuid.UUID, AssayThresholdCrossed] | None = None, *,
                        in_process_lock: bool = True) -> uuid.UUID | None:
    """Open one training when the threshold is reached (computed from the tables); the training's id, or None. Its
    run is created off this path, by a TrainingStarter. `alert`: an assay alert (its event_id and event) to count
    first, in the same transaction, when this deployment's active continuous training is ASSAY_ALERT on that
    workspace's pipeline (a redelivered event_id counts once). `in_process_lock` False: not waiting for the
    deployment's in-process lock (held by a deploy under way, up to deploy_wait): the row lock on its
    continuous_training row is what makes the check once (every process's check takes it)."""
    checked = await _check_trigger(deps, deployment_id, alert, in_process_lock)
    if checked.ended:  # once committed: the outbox sends their training_finished
        deps.events_committed()
    if checked.opened is not None:
        deps.wake_starter.set()  # the run is created off this path (TrainingStarter), once the reviews are written
    return checked.opened


@dataclass
class _Checked:
    """What one check of the trigger committed: the training it opened, and how many trainings it failed (each with
    its training_finished in the outbox)."""

    opened: uuid.UUID | None = None
    ended: int = 0


async def _check_trigger(deps: ContinuousDeps, deployment_id: int,
                         alert: tuple[uuid.UUID, AssayThresholdCrossed] | None, in_process_lock: bool = True
                         ) -> _Checked:
    pool = deps.base.pool
    async with deps.lock(deployment_id) if in_process_lock else contextlib.nullcontext():
        async with pool.acquire() as conn, conn.transaction():
            ct = await conn.fetchrow("SELECT * FROM continuous_training WHERE deployment_id = $1 FOR UPDATE",
                                     deployment_id)
            if ct is None or not ct["active"]:
                return _Checked()
            if alert is not None:
                event_id, event = alert
                if (ct["trigger"], ct["workspace_id"], ct["pipeline_id"]) != ("ASSAY_ALERT", event.workspace_id,
                                                                             event.pipeline_id):
                    return _Checked()  # set up again meanwhile (another trigger or pipeline), or not this one's
                if event.occurred_at < ct["updated_at"]:
                    return _Checked()  # raised before it was set up (or turned on): a backlog the consumer caught up on
                await conn.execute(
                    "INSERT INTO continuous_training_alerts (deployment_id, event_id, assay_id, assay_name, iopath,"
                    " score, window_start, window_end) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    " ON CONFLICT (deployment_id, event_id) DO NOTHING", deployment_id, event_id, event.assay_id,
                    event.name, event.iopath, event.score, event.window_start, event.window_end)
            # a run that succeeded but whose model version never arrived does not block training forever (the
            # starter fails it on time too: TrainingStarter.sweep)
            ended = len(await _fail_modelless(conn, deployment_id))
            # nor does one claimed by a starter whose run was never recorded (its process stopped in between); an
            # unclaimed one is still started by a starter (TrainingStarter)
            ended += len(await _fail_unstarted(conn, deployment_id))
            # the trigger's own count decides; the other one is read only when a training opens (a review's check
            # of a REVIEWS trigger does not count alerts)
            if ct["trigger"] == "ASSAY_ALERT":
                alerts = await _alert_count(conn, deployment_id)
                if alerts - ct["alerts_at_last_training"] < ct["threshold"]:
                    return _Checked(ended=ended)
                reviews = None
            else:
                reviews = await _review_count(conn, deployment_id)
                if reviews - ct["reviews_at_last_training"] < ct["threshold"]:
                    return _Checked(ended=ended)
                alerts = None
            if await conn.fetchval("SELECT 1 FROM trainings WHERE deployment_id = $1 AND state = ANY($2::text[])",
                                   deployment_id, list(OPEN_TRAININGS)):
                # one training at a time; the reviews (alerts) keep counting for the next one
                return _Checked(ended=ended)
            if reviews is None:
                reviews = await _review_count(conn, deployment_id)
            if alerts is None:
                alerts = await _alert_count(conn, deployment_id)
            training_id = uuid.uuid4()
            await conn.execute("INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, trigger,"
                               " alerts) VALUES ($1, $2, $3, 'starting', $4, $5, $6)", training_id, deployment_id,
                               ct["workspace_id"], reviews, ct["trigger"],
                               alerts if ct["trigger"] == "ASSAY_ALERT" else None)
            await conn.execute("UPDATE continuous_training SET reviews_at_last_training = $2,"
                               " alerts_at_last_training = $3 WHERE deployment_id = $1", deployment_id, reviews, alerts)
    return _Checked(opened=training_id, ended=ended)


async def _fail_trainings(conn: Any, update: str, *args: Any) -> list[asyncpg.Record]:
    """Run an `UPDATE trainings ... ` that fails trainings, in the caller's transaction, with each failed training's
    training_finished (status failed, its reason); the trainings it failed (the caller wakes the outbox after its
    commit)."""
    rows = await conn.fetch(update + " RETURNING *", *args)
    for row in rows:
        await _event(conn, subjects.EVENT_MONITORING_TRAINING_FINISHED, _finished(row))
    return rows


async def _fail_modelless(conn: Any, deployment_id: int | None) -> list[asyncpg.Record]:
    """Fail trainings whose run succeeded more than NO_MODEL_GRACE ago without its model version having arrived (None:
    of every deployment), in the caller's transaction; the trainings failed. The reason says what the next run has
    to do: a version uploaded after the failure is written on the failed training and delivers nothing (before, the
    reason advised such an upload: 'upload one with the run's token')."""
    return await _fail_trainings(
        conn, "UPDATE trainings SET state = 'failed', outcome = 'failed', updated_at = now(), reason = $3 WHERE"
        " ($1::int IS NULL OR deployment_id = $1) AND state = 'succeeded' AND model_version IS NULL AND updated_at <"
        " now() - make_interval(secs => $2)", deployment_id, NO_MODEL_GRACE,
        f"the run succeeded but registered no model version within {NO_MODEL_GRACE:.0f} s of its end (the training"
        " run has to upload its model version with its run's token before it ends; one uploaded later delivers"
        " nothing)")


async def recheck_after(deps: ContinuousDeps, deployment_ids: Any) -> None:
    """Trainings of these deployments ended (done or failed; committed): each one's trigger is checked again at
    once, so that what counted while its training was open (reviews, assay alerts: they count towards the next one)
    opens the next training now, not at the deployment's next review or alert, which a quiet pipeline may never
    send. One deployment's failure is logged, not the caller's. A deployment this process is deploying to now
    (ContinuousDeps.busy: its lock held up to deploy_wait) is checked without waiting for that lock: the training
    starter, which calls this, is not held up behind a deploy."""
    for deployment_id in sorted(set(deployment_ids)):
        try:
            opened = await check_trigger(deps, deployment_id, in_process_lock=deployment_id not in deps.busy())
        except Exception:
            log.exception("deployment %s: checking its continuous-training trigger after its training ended failed"
                          " (checked again at its next review, alert or toggle)", deployment_id)
            continue
        if opened is not None:
            log.info("deployment %s: its training ended with the trigger's threshold reached meanwhile: continuous"
                     " training %s opened", deployment_id, opened)


async def _fail_unstarted(conn: Any, deployment_id: int | None) -> list[asyncpg.Record]:
    """Fail trainings claimed by a starter more than NO_MODEL_GRACE ago, without a chosen task id (claimed before
    migration 016), whose run was never recorded (None: of every deployment): the claim says a run may exist and
    its task's id is unknown, so none is started again. The trainings failed (in the caller's transaction). A claim
    with its task id is asked for again instead (TrainingStarter.resume)."""
    return await _fail_trainings(
        conn, "UPDATE trainings SET state = 'failed', outcome = 'failed', updated_at = now(), reason = 'the service"
        " stopped before the training run was created' WHERE ($1::int IS NULL OR deployment_id = $1) AND state ="
        " 'starting' AND task_id IS NULL AND run_task_id IS NULL AND run_claimed_at < now() - make_interval(secs =>"
        " $2)", deployment_id, NO_MODEL_GRACE)


class TrainingStarter(Sweeper):
    """Creates the runs of the trainings the trigger opened (`starting`, unclaimed), off the review path: each once
    the feedback loop has written the reviews that triggered it (or EXPORT_WAIT after the trigger). Woken by the
    trigger of its process; otherwise it looks when the next training is due (a claim's resume), at most
    sweeps.IDLE_WAIT apart (it looked every STARTER_SWEEP, which kept a PostgreSQL backend open for good)."""

    task_name = "training-starter"
    every, log, failure = STARTER_SWEEP, log, "training starter sweep failed (retried on the next sweep)"
    _due = sweeps.IDLE_WAIT  # the wait until the next training is due, as the last look found it

    def __init__(self, deps: ContinuousDeps) -> None:
        self.deps = deps

    def wake_event(self) -> asyncio.Event:
        return self.deps.wake_starter

    def quiet_pool(self) -> asyncpg.Pool:
        return self.deps.base.pool

    def next_wait(self, waiting: bool | None) -> float:
        if waiting is None:  # a failed sweep
            return STARTER_SWEEP
        return EXPORT_POLL if waiting else self._due  # a training waits for the feedback loop: look again soon

    async def sweep(self) -> bool:
        """Start every training that may start now; whether one still waits for the feedback loop (and when the
        next one is due, for next_wait)."""
        pool = self.deps.base.pool
        async with pool.acquire() as conn, conn.transaction():
            # a succeeded run whose model version did not come within NO_MODEL_GRACE is failed on time here (before,
            # only the deployment's next trigger check failed it, and its training stayed open until then)
            failed = [*await _fail_unstarted(conn, None), *await _fail_modelless(conn, None)]
        if failed:  # once committed: woken before, the outbox could read the table first and wait its IDLE round
            self.deps.events_committed()
            # what counted while they were open opens the next training now (started below, in this sweep)
            await recheck_after(self.deps, (row["deployment_id"] for row in failed))
        await self.resume()
        waiting = False
        rows = await pool.fetch(
            "SELECT id, deployment_id, created_at < now() - make_interval(secs => $1) AS overdue FROM trainings"
            " WHERE state = 'starting' AND task_id IS NULL AND run_claimed_at IS NULL ORDER BY created_at",
            EXPORT_WAIT)
        for row in rows:
            if await _feedback_pending(pool, row["deployment_id"]):
                if not row["overdue"]:
                    waiting = True
                    continue
                late = True
            else:
                late = False
            try:
                await start_training(self.deps, row["id"], late)
            except Exception:
                # its claim failed (the database): this training's alone, the other deployments' trainings start in
                # this sweep all the same; unclaimed, it is started by a later sweep. A failure once claimed is
                # start_training's to log (asked for again RESUME_START after the claim)
                log.exception("continuous training %s of deployment %s could not be started (not claimed); tried"
                              " again at the next sweep", row["id"], row["deployment_id"])
        self._due = await self.next_due()
        return waiting

    async def next_due(self) -> float:
        """The wait until the next training this starter has to act on is due: an unclaimed one now (its claim failed,
        or one another process opened since this look), a claimed one whose run was not recorded at its resume
        (RESUME_START after its claim), one claimed before migration 016 at its failure (NO_MODEL_GRACE), a succeeded
        run still without its model version at its failure (NO_MODEL_GRACE after its success); at least
        STARTER_SWEEP, at most sweeps.IDLE_WAIT (none: what another process opens wakes that process's starter)."""
        due = await self.deps.base.pool.fetchval(
            "SELECT extract(epoch FROM least((SELECT min(CASE WHEN run_claimed_at IS NULL THEN now() WHEN run_task_id"
            " IS NULL THEN run_claimed_at + make_interval(secs => $1) ELSE run_claimed_at + make_interval(secs => $2)"
            " END) FROM trainings WHERE state = 'starting' AND task_id IS NULL), (SELECT min(updated_at) +"
            " make_interval(secs => $1) FROM trainings WHERE state = 'succeeded' AND model_version IS NULL)) -"
            " now())::float8", NO_MODEL_GRACE, RESUME_START)
        return sweeps.until(due, STARTER_SWEEP)

    async def resume(self) -> None:
        """Ask again for the runs of trainings whose run_once went unanswered (a timeout, or the process stopped
        before the answer) RESUME_START after their claim: with the task id each chose, so the task scheduler
        answers the task the first call made (or makes it) and queues no second run. Claimed again first (one
        process resumes each), which also fences the earlier attempt's late recording."""
        pool = self.deps.base.pool
        rows = await pool.fetch(
            "UPDATE trainings SET run_claimed_at = now(), updated_at = now() WHERE state = 'starting' AND task_id IS"
            " NULL AND run_task_id IS NOT NULL AND run_claimed_at < now() - make_interval(secs => $1) RETURNING *",
            RESUME_START)
        for training in rows:
            log.info("continuous training %s of deployment %s: its run was not recorded %.0f s after its claim; asking"
                     " the task scheduler again for task %s", training["id"], training["deployment_id"],
                     RESUME_START, training["run_task_id"])
            try:
                await _start_claimed(self.deps, training)
            except Exception:  # this training's alone: the others are resumed in this sweep all the same
                log.exception("continuous training %s of deployment %s could not be resumed; asked again in %.0f s",
                              training["id"], training["deployment_id"], RESUME_START)


async def start_training(deps: ContinuousDeps, training_id: uuid.UUID, late: bool = False) -> bool:
    """Claim a `starting` training (a conditional UPDATE: one process wins) and create its run; whether this call
    claimed it. `late`: the feedback loop had still not written every review after EXPORT_WAIT."""
    pool = deps.base.pool
    async with pool.acquire() as conn, conn.transaction():
        # the run's task id, chosen now: a run_once whose answer is lost is asked again with it (no second run)
        training = await conn.fetchrow(
            "UPDATE trainings SET run_claimed_at = now(), run_task_id = $2, updated_at = now() WHERE id = $1 AND"
            " state = 'starting' AND task_id IS NULL AND run_claimed_at IS NULL RETURNING *", training_id,
            uuid.uuid4())
    if training is None:
        return False  # another process claimed it, or it ended
    if late:
        log.warning("deployment %s: the feedback loop has not written every review %.0f s after the trigger; the"
                    " training starts with what the datasets hold", training["deployment_id"], EXPORT_WAIT)
    try:
        await _start_claimed(deps, training)
    except Exception:
        # claimed (e.g. the write suspending continuous training, or recording its failure, raised): asked for again
        # RESUME_START after the claim with its task id (TrainingStarter.resume). Before, the sweep logged this,
        # and said the same of a training whose claim itself failed, which the next sweep starts instead
        log.exception("continuous training %s of deployment %s could not be started; asked again in %.0f s",
                      training["id"], training["deployment_id"], RESUME_START)
    return True


async def _start_claimed(deps: ContinuousDeps, training: asyncpg.Record) -> None:
    """Create the run of a training this process claimed, with the continuous-training settings and datasets as
    they are now."""
    pool = deps.base.pool
    async with pool.acquire() as conn:
        ct = await conn.fetchrow("SELECT * FROM continuous_training WHERE deployment_id = $1",
                                 training["deployment_id"])
        datasets = await conn.fetch("SELECT * FROM continuous_training_datasets WHERE deployment_id = $1",
                                    training["deployment_id"])
    if ct is None:  # defensive: delete drops the trainings with the settings
        async with pool.acquire() as conn, conn.transaction():
            await _fail_trainings(conn, "UPDATE trainings SET state = 'failed', outcome = 'failed', reason ="
                                  " 'continuous training was removed', updated_at = now() WHERE id = $1",
                                  training["id"])
        deps.events_committed()
        return
    await _start_run(deps, ct, datasets, training)


async def _read_versions(pool: asyncpg.Pool, deployment_id: int, datasets: list[asyncpg.Record]) -> dict[str, Any]:
    """The run's datasets: `{alias: {dataset_id, version_id}}`, the version the run reads (null: the dataset as it
    is). A named version is read as named, except in a dataset the active feedback loop writes into: the loop's
    newest version there (its versions are the named one plus the reviews, and it holds those that triggered the
    training), else the reviews would never reach a training."""
    fed = {r["dataset_id"]: r["last_version_id"] for r in await pool.fetch(
        "SELECT d.dataset_id, d.last_version_id FROM feedback_loop_datasets d JOIN feedback_loops l USING"
        " (deployment_id) WHERE d.deployment_id = $1 AND l.active AND d.last_version_id IS NOT NULL", deployment_id)}
    return {d["alias"]: {"dataset_id": d["dataset_id"], "version_id": fed.get(d["dataset_id"], d["version_id"])
                         if d["version_id"] is not None else None} for d in datasets}


async def _run_alerts(pool: asyncpg.Pool, training: asyncpg.Record) -> list[dict[str, Any]]:
    """The newest alerts (at most MAX_RUN_ALERTS) counted for the deployment when the ASSAY_ALERT training opened,
    oldest first: what drifted, for the run."""
    rows = await pool.fetch(
        "SELECT assay_id, assay_name, iopath, score, window_start, window_end FROM continuous_training_alerts"
        " WHERE deployment_id = $1 AND received_at <= $2 ORDER BY received_at DESC, event_id LIMIT $3",
        training["deployment_id"], training["created_at"], MAX_RUN_ALERTS)
    return [dict(row) for row in reversed(rows)]


async def _start_run(deps: ContinuousDeps, ct: asyncpg.Record, datasets: list[asyncpg.Record],
                     training: asyncpg.Record) -> None:
    base = deps.base
    training_id, reviews = training["id"], training["reviews"]
    args: dict[str, Any] = {
        "deployment": ct["deployment"], "deployment_id": ct["deployment_id"], "training_id": str(training_id),
        "project_id": ct["project_id"], "trigger": training["trigger"], "threshold": ct["threshold"],
        "reviews": reviews, "model_name": ct["model_name"],
        "datasets": await _read_versions(base.pool, ct["deployment_id"], datasets),
    }
    if training["trigger"] == "ASSAY_ALERT":
        args["alerts"] = training["alerts"]
        args["assay_alerts"] = await _run_alerts(base.pool, training)
    if ct["experiment_parameters"] is not None:
        args["experiment_parameters"] = _json(ct["experiment_parameters"])
    else:
        args["scan_config"] = _json(ct["scan_config"])
    try:
        principal, token = await act_as(deps, ct["owner_id"], ct["workspace_id"],
                                        f"monitoring-training-{training_id}")
        # the deployment's name now: its pipeline deployed again under another deploy_id renames it, and it stays
        # the same deployment (its id, this continuous training), so the name stored at set-up may be stale
        name = await deployed_name(deps, token, ct["deployment"])
        if name is None and (training["trigger"] == "ASSAY_ALERT" or ct["kind"] == "ml_backend"):
            # an ASSAY_ALERT training is for the drift of what it serves: undeployed since the alert opened it
            # (an alert that comes while it is not deployed opens none: on_assay_alert), it is not retrained; an
            # ML backend is fitted from the version it serves
            raise NotFound(f"deployment {ct['deployment']!r} is not deployed")
        name = name or ct["deployment"]  # FEEDBACK_LOOP: the reviews are its data, served or not
        args["deployment"] = name
        if ct["kind"] == "ml_backend":
            # the backend is fitted from the version serving now (after a promotion: the promoted one)
            view = await handlers._deployment(base, principal, token, name)
            current = handlers.current_model(view.definition)
            args["ml_backend"] = {"name": ct["model_name"], "version": current.version if current is not None
                                  and current.name == ct["model_name"] else None}
        try:
            # with the task id the training chose at its claim (none: claimed before migration 016): asked again
            # after a lost answer, the task scheduler answers the task the first call made and queues no second run
            task = await request(base.broker, subjects.TASKS_RUN_ONCE, RunTaskOnce(
                name=f"continuous training of {name} ({training_id})", orch_id=ct["orchestration_id"],
                workspace_id=ct["workspace_id"], json=args, timeout=ct["timeout"], id=training["run_task_id"]),
                token=token, timeout=base.timeout, reply_model=TaskCreated)
        except (UpstreamTimeout, Unavailable) as exc:
            if training["run_task_id"] is None:
                raise
            # the task may exist and its run be under way: not failed (the run's end would be ignored), asked for
            # again with the same task id by a starter's resume, RESUME_START after the claim
            log.warning("continuous training %s of deployment %s: tasks/run_once did not answer (%s); asked again"
                        " for task %s in %.0f s", training_id, ct["deployment_id"], exc.msg, training["run_task_id"],
                        RESUME_START)
            return
    except RailyardError as exc:
        log.warning("continuous training %s of deployment %s could not start: %s", training_id,
                    ct["deployment_id"], exc.msg)
        async with base.pool.acquire() as conn, conn.transaction():  # the failure and its event, or neither
            if isinstance(exc, OwnerRefused):
                await _suspend(conn, ct, exc)
            # unless its run was recorded meanwhile: run_once created it but answered too late, and the run's end
            # event (on_run_ended, which finds it by the task's name) has moved the training on already; and only
            # while this attempt's claim holds (a resume claimed it again: that attempt decides)
            failed = await _fail_trainings(
                conn, "UPDATE trainings SET state = 'failed', outcome = 'failed', reason = $2, updated_at = now()"
                " WHERE id = $1 AND state = 'starting' AND task_id IS NULL AND run_claimed_at = $3", training_id,
                f"could not start: {exc.msg}", training["run_claimed_at"])
        deps.events_committed()
        if failed:
            await recheck_after(deps, [ct["deployment_id"]])
        return
    # a run that ended at once may have been recorded already (on_run_ended finds it by the task's name); a resume
    # that claimed the training again meanwhile records it itself (the claim fences this late answer)
    async with base.pool.acquire() as conn, conn.transaction():  # the run's task and its event, or neither
        recorded = await conn.fetchval(
            "UPDATE trainings SET task_id = $2, updated_at = now(), state = CASE WHEN state = 'starting' THEN"
            " 'running' ELSE state END WHERE id = $1 AND run_claimed_at = $3 RETURNING true", training_id, task.id,
            training["run_claimed_at"])
        if recorded:
            await _event(conn, subjects.EVENT_MONITORING_TRAINING_STARTED, TrainingStarted(
                deployment_id=ct["deployment_id"], workspace_id=ct["workspace_id"], training_id=training_id,
                task_id=task.id, reviews=reviews, trigger=training["trigger"], alerts=training["alerts"]))
    if not recorded:
        return
    deps.events_committed()
    log.info("continuous training %s of deployment %s (%s) started task %s at %d reviews, %s alerts", training_id,
             ct["deployment_id"], training["trigger"], task.id, reviews, training["alerts"])


async def _suspend(conn: Any, ct: asyncpg.Record, exc: OwnerRefused) -> None:
    """The owner's token was refused (they left the workspace, or were deactivated): continuous training is
    suspended, inactive with the reason (`suspended_reason`), in the caller's transaction, so each later review or
    assay alert does not open another training that fails the same way. Only while that user still owns it (set up
    again meanwhile by someone else: theirs now). A member's setup_continuous_training (they become its owner) or
    toggle_continuous_training(active=true) lifts it; nothing acts as anyone else meanwhile."""
    suspended = await conn.fetchval(
        "UPDATE continuous_training SET active = false, suspended_reason = $3 WHERE deployment_id = $1 AND"
        " owner_id = $2 AND active RETURNING true", ct["deployment_id"], ct["owner_id"],
        handlers.owner_refused_reason("continuous training", exc))
    if suspended:
        log.warning("continuous training of deployment %s is suspended: its owner %s's token was refused (%s)",
                    ct["deployment_id"], ct["owner_id"], exc.msg)


async def _suspend_deployment(conn: Any, deployment_id: int, owner_id: Any, exc: OwnerRefused) -> None:
    """Continuous deployment's owner's token was refused (they left the workspace, or were deactivated), when a
    delivery or a challenge's swap acted as them: continuous deployment is suspended, inactive with the reason, in
    the caller's transaction, so later trainings wait for a person (as under DEPLOY_MANUAL) instead of each failing
    its delivery the same way. Only while that user still owns it; setup_continuous_deployment (the caller becomes its
    owner) or toggle_continuous_deployment(active=true) lifts it."""
    suspended = await conn.fetchval(
        "UPDATE continuous_deployment SET active = false, suspended_reason = $3 WHERE deployment_id = $1 AND"
        " owner_id = $2 AND active RETURNING true", deployment_id, owner_id,
        handlers.owner_refused_reason("continuous deployment", exc))
    if suspended:
        log.warning("continuous deployment of deployment %s is suspended: its owner %s's token was refused (%s)",
                    deployment_id, owner_id, exc.msg)


async def _feedback_pending(pool: asyncpg.Pool, deployment_id: int) -> bool:
    """Whether the active feedback loop has reviews that are not yet in a project version of a dataset it shares
    with continuous training: the run reads the loop's newest version there (_read_versions), which must hold the
    reviews that triggered it. Written files whose version is still being made count as pending: the run would
    read the version before them."""
    return bool(await pool.fetchval(
            "SELECT 1 FROM feedback_loop_datasets d JOIN feedback_loops l USING (deployment_id)"
            " JOIN continuous_training_datasets c ON c.deployment_id = d.deployment_id AND c.dataset_id = d.dataset_id"
            f" WHERE d.deployment_id = $1 AND l.active AND EXISTS (SELECT 1 FROM {fs.REVIEWS_NOT_IN_A_VERSION})"
            " LIMIT 1", deployment_id))


async def on_run_ended(deps: ContinuousDeps, event: TaskRunEvent, succeeded: bool) -> None:
    """A task run ended: if it is a training's, record it and move the training on."""
    pool = deps.base.pool
    row = await pool.fetchrow("SELECT id, deployment_id FROM trainings WHERE task_id = $1", event.task_id)
    if row is None and (event.name or "").startswith("continuous training of ") and (event.name or "").endswith(")"):
        # the run ended before run_once's answer was recorded: the task's name carries the training's id
        try:
            training_id = uuid.UUID(event.name.rsplit("(", 1)[-1][:-1])
        except ValueError:
            return
        row = await pool.fetchrow("UPDATE trainings SET task_id = $2, state = 'running' WHERE id = $1 AND task_id IS"
                                  " NULL AND state = 'starting' AND workspace_id = $3 RETURNING id, deployment_id",
                                  training_id, event.task_id, event.workspace_id)
    if row is None:
        return
    if succeeded:
        modelless = await pool.fetchval(
            "UPDATE trainings SET state = 'succeeded', run_id = $2, updated_at = now() WHERE id = $1 AND"
            " state = 'running' RETURNING model_version IS NULL", row["id"], event.run_id)
        if modelless:  # its model version's deadline (NO_MODEL_GRACE) is the starter's to keep: it looks again
            deps.wake_starter.set()
    else:
        async with pool.acquire() as conn, conn.transaction():  # the failure and its event, or neither
            failed = await conn.fetchrow(
                "UPDATE trainings SET state = 'failed', outcome = 'failed', run_id = $2, reason = $3, updated_at ="
                " now() WHERE id = $1 AND state IN ('running', 'succeeded') RETURNING *", row["id"], event.run_id,
                f"the training run failed: {event.reason or event.status}")
            if failed is not None:
                await _event(conn, subjects.EVENT_MONITORING_TRAINING_FINISHED, _finished(failed))
        if failed is not None:
            deps.events_committed()
            await recheck_after(deps, [row["deployment_id"]])
        return
    await advance(deps, row["deployment_id"], row["id"])


async def on_model_uploaded(deps: ContinuousDeps, event: ModelUploaded) -> None:
    """A model version was registered with a task run's token: if that task is a training's, it is its output. Also
    before the training recorded its run (`starting`: run_once's answer late or lost, the run under way): its task
    is the one the training chose at its claim (`run_task_id`). Before, such an upload found no training and was
    dropped, and the run's success left the training without a model version, failed NO_MODEL_GRACE later."""
    task_id = event.task_id
    if not task_id:
        return
    try:
        task_uuid = uuid.UUID(str(task_id))
    except ValueError:
        return
    # a converted upload's served sha is the converted file's: resolved when it is delivered
    model = {"name": event.name, "version": str(event.model_version),
             "sha": event.sha256 if event.status == "ready" else None}
    status = event.status
    async with deps.base.pool.acquire() as conn, conn.transaction():
        if status == "converting":
            # its conversion may have ended already, its version_finished handled first (another consumer) and
            # kept (on_model_finished): the training then does not wait for it. Before, it did, open for good
            await xact_lock(conn, CONVERSION_LOCK, str(event.model_version))
            status = await conn.fetchval("DELETE FROM finished_conversions WHERE model_version = $1 RETURNING"
                                         " status", event.model_version) or status
        row = await conn.fetchrow(
            "UPDATE trainings SET model_version = $2, model_status = $3, updated_at = now() WHERE (task_id = $1 OR"
            " (state = 'starting' AND task_id IS NULL AND run_task_id = $1)) AND model_version IS NULL AND"
            " workspace_id = $4 RETURNING id, deployment_id", task_uuid, json.dumps(model), status,
            event.workspace_id)
    if row is not None:
        await advance(deps, row["deployment_id"], row["id"])


async def on_model_finished(deps: ContinuousDeps, event: ModelVersionFinished) -> None:
    """A conversion ended: a training waiting for that model version moves on (also one whose run is not recorded
    yet, `starting`: its upload found it by the task id it chose, on_model_uploaded; its run's end moves it on).
    No training has that version yet: its status is kept (finished_conversions, migration 026) for the upload's
    event, which another consumer reads and may handle after this one (a backlog after a restart, a conversion
    faster than that consumer): on_model_uploaded takes it. Before, that upload recorded the version `converting`
    on a training whose conversion had ended: it stayed open for good, and no later training of its deployment
    opened. Both hold the version's CONVERSION_LOCK, so one of them sees what the other wrote."""
    async with deps.base.pool.acquire() as conn, conn.transaction():
        await xact_lock(conn, CONVERSION_LOCK, str(event.model_version))
        row = await conn.fetchrow(
            "UPDATE trainings SET model_status = $2, updated_at = now() WHERE model_version->>'version' = $1 AND"
            " state IN ('starting', 'running', 'succeeded') RETURNING id, deployment_id", str(event.model_version),
            event.status)
        if row is None:
            await conn.execute("INSERT INTO finished_conversions (model_version, status) VALUES ($1, $2) ON CONFLICT"
                               " DO NOTHING", event.model_version, event.status)
    if row is not None:
        await advance(deps, row["deployment_id"], row["id"])


async def advance(deps: ContinuousDeps, deployment_id: int, training_id: uuid.UUID) -> None:
    """A training whose run succeeded and whose model version is ready is done: the policy decides what its model
    version does (once: the state moves under a row lock). Then, ended (done or failed), the trigger is checked
    again (recheck_after), outside the deployment's lock, also when its delivery raised."""
    ended: list[bool] = []
    try:
        await _advance(deps, deployment_id, training_id, ended)
    finally:
        if ended:
            await recheck_after(deps, [deployment_id])


async def _advance(deps: ContinuousDeps, deployment_id: int, training_id: uuid.UUID, ended: list[bool]) -> None:
    """advance's step under the deployment's lock; `ended` gets True once the training's end is committed."""
    pool = deps.base.pool
    async with deps.lock(deployment_id):
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM trainings WHERE id = $1 FOR UPDATE", training_id)
            if row is None or row["state"] != "succeeded" or row["model_version"] is None:
                return
            if row["model_status"] == "error":
                done = await conn.fetchrow("UPDATE trainings SET state = 'failed', outcome = 'failed', reason ="
                                           " 'the model version the run registered failed its conversion',"
                                           " updated_at = now() WHERE id = $1 RETURNING *", training_id)
                policy = None
            elif row["model_status"] != "ready":
                return
            else:
                cd = await conn.fetchrow("SELECT * FROM continuous_deployment WHERE deployment_id = $1",
                                         deployment_id)
                policy = cd["policy"] if cd is not None and cd["active"] else "DEPLOY_MANUAL"
                outcome = {"DEPLOY_SHADOW": "shadow", "DEPLOY_AUTO": "deployed"}.get(policy, "pending")
                # a version to serve: delivering from now until the swap is recorded with its model_swapped (a
                # process dying in between leaves it set, and it is delivered again: resume_deliveries)
                done = await conn.fetchrow(
                    "UPDATE trainings SET state = 'done', outcome = $2, updated_at = now(), delivering_since = CASE"
                    " WHEN $2 IN ('shadow', 'deployed') THEN now() END, delivery_held_up = NULL WHERE id = $1"
                    " RETURNING *", training_id, outcome)  # a new delivery: no earlier one's held-up note
            await _event(conn, subjects.EVENT_MONITORING_TRAINING_FINISHED, _finished(done))
        deps.events_committed()
        ended.append(True)
        if done["state"] == "done" and policy in ("DEPLOY_SHADOW", "DEPLOY_AUTO"):
            await _deliver(deps, done, policy)


def _finished(row: asyncpg.Record) -> TrainingFinished:
    """The training_finished event of an ended training's row (written with the row's change)."""
    model = _ref(row["model_version"])
    outputs = [{"kind": "model_version", "ref": model.version}] if model is not None and model.version else []
    return TrainingFinished(
        deployment_id=row["deployment_id"], workspace_id=row["workspace_id"], training_id=row["id"],
        run_id=row["run_id"], status="done" if row["state"] == "done" else "failed", outcome=row["outcome"],
        model_version=model, outputs=outputs if row["state"] == "done" else [], reason=row["reason"])


# --- serving what the policy and the test decide -----------------------------------------------------------------

def _serving(definition: dict[str, Any], champion: dict[str, Any], challenger: dict[str, Any] | None
             ) -> dict[str, Any]:
    """The definition whose model step serves `champion`, shadowed by `challenger` (None: no shadow step)."""
    if challenger is not None:
        return handlers._with_model(handlers._with_model(definition, champion, False), challenger, True)
    changed = copy.deepcopy(definition)
    for index, step in enumerate(changed.get("steps", [])):
        kind, body = next(iter(step.items()))
        if kind == "ShadowDeploy":
            # the step's other settings (e.g. the image configuration of predict) stay with it
            rest = {key: value for key, value in body.items() if key not in ("champion", "challengers")}
            changed["steps"][index] = {"ModelInference": {"models": [champion], **rest}}
            return changed
    return handlers._with_model(changed, champion, False)


async def _serve(deps: ContinuousDeps, owner_id: Any, workspace_id: int, deployment: str, champion: dict[str, Any],
                 challenger: dict[str, Any] | None, purpose: str,
                 found: tuple[str, handlers.DeploymentView] | None = None,
                 expect: tuple[dict[str, Any], dict[str, Any]] | None = None, give_up: str | None = None,
                 sent: Callable[[str], Awaitable[None]] | None = None) -> str:
    """Deploy a new pipeline version serving champion (shadowed by challenger) in place, as the owner; the
    pipeline version it serves. `found`: the owner's token and the deployment as the caller just looked them up
    (_deliver), used instead of looking them up again. `expect`: the (champion, challenger) pair the caller means to
    replace (a challenge's swap): ServingChanged when the deployment serves anything else (and not already what this
    would serve), before anything is deployed. `give_up`: nothing is deployed; its version serving already is
    this serving done, else GivenUp(give_up). `sent`: called with the pipeline version the deploy carries before
    pipelines/deploy is sent (_sent_deploy: the deployer's events.pipeline.deployed naming it is this deploy landed,
    on_pipeline_deployed).

    The deploy is made only if the pipeline version looked at still serves when the deployer gets to it
    (pipelines/deploy's `only_if_serving`, checked under the deployer's pipeline lock): a deploy that waited behind
    another (a person's, a newer delivery's) or that the deployer serves late, after this process gave up on it
    (DeployUnanswered), never lands over what was served after the look. Refused (409 serving_changed): when the
    version this deploy made is what serves now (an earlier deploy of it, unanswered, landed first) that is this
    serving done; otherwise ServingChanged."""
    base = deps.base
    if found is not None:
        token, view = found
    else:
        principal, token = await act_as(deps, owner_id, workspace_id, purpose)
        # by its name now (a redeploy under another deploy_id renamed it); not deployed: _deployment's 404 tells it
        view = await handlers._deployment(base, principal, token, await deployed_name(deps, token, deployment)
                                          or deployment)
    # the sweep leaves this deployment to its next look meanwhile (ContinuousDeps.busy): a deploy is waited for up to
    # deploy_wait (305 s)
    with deps.deploying_to(view.route.deployment_id):
        definition = _serving(view.definition, champion, challenger)
        if definition == view.definition:
            return view.route.pipeline_version
        if expect is not None and not _serves_challenge(view.definition, *expect):
            served = handlers.current_model(view.definition)
            raise ServingChanged(f"the deployment serves {served.version if served else 'no model'}"
                                 f"{' shadowed' if handlers._current_shadow(view.definition) else ''} since, not the"
                                 " challenge's champion with its challenger as shadow")
        if give_up is not None:
            raise GivenUp(give_up)
        created = await request(base.broker, subjects.DEPLOYER_PIPELINES_CREATE, CreatePipeline(
            pipeline_id=view.route.pipeline_name, workspace_id=workspace_id, definition=definition),
            token=token, timeout=base.timeout, reply_model=PipelineCreated)
        if sent is not None:
            await sent(created.pipeline_variant_version)
        try:
            await request(base.broker, subjects.DEPLOYER_PIPELINES_DEPLOY, DeployPipeline(
                deploy_id=view.deploy_id, pipeline_version_pk_id=created.pipeline_variant_pk_id,
                pipeline_id=view.pipeline_id, engine_config=view.engine_config, only_if_serving=view.version_pk_id),
                token=token, timeout=base.deploy_timeout, reply_model=Deployed)
        except UpstreamTimeout as exc:
            raise DeployUnanswered(exc.msg) from exc
        except Unavailable as exc:  # the deployer's database failed the deploy, the deployer is away, or the
            # replicas could not be ready within the wait (deploy_out_of_time): later
            raise DeployUnavailable(exc.msg, exc.code) from exc
        except Conflict as exc:
            if exc.code == DEPLOY_IN_PROGRESS:  # nothing made: done later, as an unanswered deploy is
                raise DeployHeldUp(exc.msg) from exc
            if exc.code != SERVING_CHANGED:
                raise
            record = await request(base.broker, subjects.DEPLOYER_PIPELINES_GET, GetPipeline(
                pipeline_id=view.pipeline_id), token=token, timeout=base.timeout, reply_model=PipelineRecord)
            if record.deployment and record.deployment["pipeline_version_pk_id"] == created.pipeline_variant_pk_id:
                return created.pipeline_variant_version
            raise ServingChanged(exc.msg) from exc
        return created.pipeline_variant_version


SERVING_CHANGED = "serving_changed"
"""The deployer's 409 code for a deploy whose `only_if_serving` no longer serves (services/deployer/handlers.py)."""
DEPLOY_IN_PROGRESS = "deploy_in_progress"
"""The deployer's 409 code for a deploy that waited for another deploy of its pipeline (a person's, another
process's delivery or swap) longer than its lock wait (services/deployer/handlers.py deploy_lock_wait): nothing
made (DeployHeldUp)."""


class ServingChanged(Conflict):
    """What serves changed since _serve looked (the deployer refused its deploy: 409 serving_changed, or a swap's
    expected pair no longer serves): nothing was deployed. Not a failure: the caller's serving was overtaken (a
    person's deploy, a newer delivery, a swap), and what serves now stays."""

    code = SERVING_CHANGED


class GivenUp(RailyardError):
    """A swap's or delivery's last resume (MAX_RESUMES) found its version not serving: it is failed with this
    reason, nothing deployed (its version serving, a late deploy that landed, is recorded as done instead)."""

    code = "given_up"


def _serves_challenge(definition: dict[str, Any], champion: dict[str, Any], challenger: dict[str, Any]) -> bool:
    """Whether `definition` serves `champion` shadowed by `challenger` (by version), as a challenge compares them."""
    model, shadow = handlers.current_model(definition), handlers._current_shadow(definition)
    return (model is not None and shadow is not None and model.version == (champion or {}).get("version")
            and shadow.version == (challenger or {}).get("version"))


class DeployUnanswered(UpstreamTimeout):
    """The deployer did not answer a deploy of _serve's in time: an unknown outcome, not a failure. The deployer
    keeps going (deploys of a pipeline wait on its lock, then for the replicas) and may serve that version after the
    caller gave up. Its precondition (`only_if_serving`: the version _serve looked at) means it can land only over
    that version, never over one served after the look (a newer delivery's, a person's), however late; so the caller
    does not record it as failed: it leaves its delivery claimed / its challenge decided, and looks again STALE_SWAP
    later at what serves (resume_deliveries, resume_swap): its version serving is recorded; the look-at version
    still serving is served again (the same pipeline version: whichever of the two deploys comes second is refused
    and finds its version serving); anything else is what _serve's refusal (ServingChanged) or the newer delivery's
    check handles."""


class DeployHeldUp(DeployUnanswered):
    """The deployer refused a deploy of _serve's with 409 deploy_in_progress: it waited behind another deploy of
    the pipeline past its lock wait and nothing of it was made. Handled as a DeployUnanswered (it is one: before the
    deployer bounded that wait, the same deploy went unanswered within deploy_wait): the delivery left claimed, the
    challenge decided, for the resume STALE_SWAP later, which looks at what serves then (the other deploy landed
    or not). Before, the 409 was raised as it was and failed the delivery or the swap."""


class DeployUnavailable(DeployUnanswered):
    """The deployer answered a deploy of _serve's 503 (its code kept as `deployer_code`): `unavailable`, its database
    failed or did not answer one of the deploy's steps (services/deployer/handlers.py _deploy_step: nothing of it
    runs; or a redeploy's record it could not confirm, which it rechecks in the background once the database answers:
    RecordRechecks), or no deployer listens; `deploy_out_of_time`, what the caller waits left the deploy's replicas
    less than their ready_timeout to serve (handlers._out_of_time: nothing of it made, or its replicas undone).
    Handled as a DeployUnanswered, the outcome left to the resume STALE_SWAP later: before the deployer bounded its
    database steps, a database that did not answer left the same deploy unanswered (resumed); since, the 503 failed the
    delivery or the swap for good, though it says to deploy again once the database answers."""

    def __init__(self, msg: str, deployer_code: str) -> None:
        super().__init__(msg)
        self.deployer_code = deployer_code


def _not_done(exc: DeployUnanswered) -> str:
    """What became of a deploy of _serve's that is not done yet, for the log."""
    if isinstance(exc, DeployHeldUp):
        return "was held up behind another deploy of the pipeline: nothing of it made"
    if isinstance(exc, DeployUnavailable):  # the deployer's message, which says why, follows in the log
        return f"was refused 503 {exc.deployer_code} for now"
    return "went unanswered in time: it may still be served"


def _for_now(exc: RailyardError) -> bool:
    """Whether a delivery's or a swap's Railyard error (other than its deploy's: DeployUnanswered) says "not now"
    rather than "never": a 503 (`unavailable`: the registry, the deployer or auth away or its database failing, the
    object store unreadable, ml_backend.PackageUnreadable), a 504 (a look-up or pipelines/create unanswered: nothing
    of it serves) or a 429 (`rate_limited`: nothing done, retry after `retry_after`; none of the services a delivery
    asks answers one today, so a limit added to one later does not fail deliveries for good: the resume STALE_SWAP
    later comes after any Retry-After Railyard sends). Such a delivery is left claimed, a swap decided, for the resume
    STALE_SWAP later, as an unanswered deploy is (bounded by MAX_RESUMES: its last resume fails it with the reason);
    another 4xx (refused, incompatible, not found, the owner refused) and a 500 fail it at once. Before, every one of
    them failed it for good."""
    return isinstance(exc, (Unavailable, UpstreamTimeout, TooManyRequests))


def _held_up(exc: RailyardError) -> str:
    """What held a delivery or a swap up (or failed its last look), as its give-up's reason quotes it: the status,
    the typed code and the message, cut to HELD_UP_CHARS. A deploy's own answer as the deployer gave it: 409
    deploy_in_progress (DeployHeldUp), 503 and the deployer's code (DeployUnavailable); unanswered, 504."""
    if isinstance(exc, DeployHeldUp):
        status, code = 409, DEPLOY_IN_PROGRESS
    elif isinstance(exc, DeployUnavailable):
        status, code = 503, exc.deployer_code
    else:
        status, code = exc.status, exc.code
    said = f"{status} {code}: {exc.msg}"
    return said if len(said) <= HELD_UP_CHARS else said[:HELD_UP_CHARS - 1] + "…"


def _last_held_up(held_up: str | None) -> str:
    """The give-up reason's words for what held up its tries last (migration 027; '' when nothing was recorded:
    every try's process stopped mid-way, or tries made before the column)."""
    return f"; its last held-up try met {held_up}" if held_up else ""


async def _note_held_up(pool: asyncpg.Pool, what: str, sql: str, *args: Any) -> None:
    """Record what held a delivery or a swap up (`sql`: a conditional UPDATE, only while it is still this one's), for
    the reason its give-up will say past MAX_RESUMES; before, that was in the WARNING log only. Best effort: a failure
    to write it leaves the delivery or the swap as it is, for its resume."""
    try:
        await pool.execute(sql, *args)
    except Exception as exc:
        log.warning("%s: could not record what held it up (%s)", what, exc)


async def _deliver(deps: ContinuousDeps, training: asyncpg.Record, policy: str, *, again: bool = False,
                   displaced: dict[str, Any] | None = None, alone: bool = False, refused: bool = False,
                   give_up: str | None = None) -> bool:
    """DEPLOY_SHADOW: the new version becomes the shadow challenger (and a challenge opens); DEPLOY_AUTO: served.
    False when it failed (a Railyard error, recorded while its claim held); `again`: a Railyard error is raised, not
    recorded on this training (see _deliver_again).

    A newer training of the deployment delivered while this delivery's deploy ran (after its still-due check: by
    another process, or a resumed delivery) may have been served before this deploy ended, and this older version
    would then serve in its place: the check is made again once the deploy is done, in the transaction that would
    record it; a newer one found there closes this delivery unrecorded (no model_swapped) and the newest delivered
    training is served again after it (`again`: its own delivery may be recorded already, so its claim is not
    required; serving what already serves makes no new pipeline version; its event is written once, by whichever
    records it). `displaced`: the older training's model version whose deploy may have displaced this one's; served
    again only while that older version is what the deployment serves (the model, or the shadow under
    DEPLOY_SHADOW): anything else since (this one's own deploy ending last, a challenge's swap, a person's change) is
    left as it is. `alone`: `displaced` was served as the model alone, without shadow (a challenge's swap,
    _apply_decision): served again only while the deployment serves exactly that. The older delivery stays claimed
    until this one is done, so a process dying in between leaves it to resume_deliveries, which serves the newest
    again the same way.

    A deploy unanswered in time (DeployUnanswered, from _serve) may still be served later by the deployer, though
    only over the version this delivery looked at (its precondition): it is not recorded as failed (which a late
    serving would contradict) but left claimed, so resume_deliveries takes it STALE_SWAP later: it records it if it
    serves, delivers it again if not, or serves the newest delivered training again over it when a newer one was
    delivered since. A 503, 504 or 429 before the deploy (_for_now: a look-up, pipelines/create, the object store for
    the inputs' check) is left claimed the same way; another 4xx or a 500 fails it (_delivery_failed).

    A deploy the deployer refused because what serves changed since this delivery's look (ServingChanged: another
    deploy landed first, a person's, a newer delivery's, an older one's late one) deployed nothing: with a newer
    training delivered, this delivery is overtaken and closed (the reason; that newer one's delivery serves it);
    otherwise it is made again at once on what serves now (`refused`: that second try), and refused again it is left
    claimed for resume_deliveries. `again`: the displaced version no longer serves, nothing is served again.

    `give_up` (resume_deliveries' last resume, past MAX_RESUMES): nothing is deployed; its version serving already
    (its last deploy landed late, after the look of the resume before) is recorded as delivered, else it is failed
    with that reason (GivenUp)."""
    pool = deps.base.pool
    deployment_id = training["deployment_id"]
    cd = await pool.fetchrow("SELECT * FROM continuous_deployment WHERE deployment_id = $1", deployment_id)
    new = _json(training["model_version"])
    try:
        principal, token = await act_as(deps, cd["owner_id"], cd["workspace_id"], f"monitoring-deploy-{deployment_id}")
        view = await handlers._deployment(deps.base, principal, token, await deployed_name(
            deps, token, cd["deployment"]) or cd["deployment"])
        champion = handlers.current_model(view.definition)
        if champion is None:
            raise Conflict("the deployment's pipeline has no model step")
        if displaced is not None:
            if alone:
                serving = champion if handlers._current_shadow(view.definition) is None else None
            else:
                serving = champion if policy == "DEPLOY_AUTO" else handlers._current_shadow(view.definition)
            if serving is None or serving.version != displaced.get("version"):
                log.info("continuous deployment of training %s: the older version %s does not serve (%s does): not"
                         " served again", training["id"], displaced.get("version"), serving and serving.version)
                return True
        champion_dict = champion.model_dump()
        if alone and policy == "DEPLOY_SHADOW":
            # a swap served its decided version alone in place of this delivery (champion + this challenger): the
            # champion served again is the one this delivery's challenge compares (what it served), not the swap's
            # version, under which that challenge's pairs would never be made
            opened = await pool.fetchval("SELECT champion FROM challenges WHERE training_id = $1 AND state ="
                                         " 'running'", training["id"])
            if opened is not None:
                champion_dict = _json(opened)
        resolved = await request(deps.base.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
            workspace_id=cd["workspace_id"], name=new["name"], version=new["version"]), token=token,
            timeout=deps.base.timeout, reply_model=ResolvedModel)
        new = {"name": resolved.name, "version": resolved.model_version, "sha": resolved.sha}
        await pool.execute("UPDATE trainings SET model_version = $2 WHERE id = $1", training["id"], json.dumps(new))
        # a version taking other inputs than the served model would fail every request once served (set_model's
        # check, model_inputs.py): the delivery fails with the reason (IncompatibleModel), nothing deployed
        served = await _resolve_served(deps, token, cd["workspace_id"], champion)
        if served is not None and served.sha != resolved.sha:  # the same artifact takes the same inputs
            await model_inputs.check(deps.base.objects, served, resolved, f"continuous deployment ({policy})", (
                "the trained version stays registered: serve it through a pipeline whose steps feed it, or have the "
                "training recipe keep the served model's inputs"))
        if policy == "DEPLOY_AUTO":
            # not served over a newer training delivered meanwhile (during the look-ups above: a resumed delivery
            # would otherwise serve the older version over it); its claim holds
            async with pool.acquire() as conn, conn.transaction():
                if not await _still_due(conn, training, claim=not again):
                    return True
            version = await _serve(deps, cd["owner_id"], cd["workspace_id"], cd["deployment"], new, None,
                                   f"monitoring-deploy-{deployment_id}", found=(token, view), give_up=give_up,
                                   sent=_sent_deploy(pool, deployment_id, training_id=training["id"]))
            # the serving is the deployer's; the training's delivery ends with its event, once (a resumed delivery
            # of it may finish too: the first to clear delivering_since writes it). The running challenge ends
            # (the version served has no shadow) with that record, not before the deploy: a deploy refused
            # (ServingChanged), failed or unanswered serves nothing, and the challenge's champion and challenger
            # go on serving under it
            async with pool.acquire() as conn, conn.transaction():
                await _record_lock(conn, deployment_id)
                newest = await _overtaken(conn, training)
                # the version it sent carried by a newer command (a swap) recorded already: closed, not recorded
                # after that one (on_pipeline_deployed's rule, for a resume or a look finding it serving)
                older = None if newest is not None else await _older_than_recorded(
                    conn, deployment_id, version, training_id=training["id"])
                if older is not None:
                    await _close_older(conn, older)
                elif newest is None and await _delivered(conn, training["id"], policy):
                    await _deployed_auto(conn, training, cd, new, version)
            deps.events_committed()
            if newest is not None:
                await _deliver_again(deps, newest, training, new)
            return True
        # DEPLOY_SHADOW: not served as the challenger over a newer training delivered meanwhile (during the look-ups
        # above: its challenge would be superseded by this older one's); its claim is not required here, as before:
        # the delivery that records first decides (_delivered)
        async with pool.acquire() as conn, conn.transaction():
            if not await _still_due(conn, training, claim=False):
                return True
        version = await _serve(deps, cd["owner_id"], cd["workspace_id"], cd["deployment"], champion_dict, new,
                               f"monitoring-deploy-{deployment_id}", found=(token, view), give_up=give_up,
                               sent=_sent_deploy(pool, deployment_id, training_id=training["id"], champion=champion))
        # the challenge opens once the challenger serves (pairs are matched on both versions anyway), once
        async with pool.acquire() as conn, conn.transaction():
            await _record_lock(conn, deployment_id)
            newest = await _overtaken(conn, training)
            # the rule of every record path (DEPLOY_AUTO's above): the version it sent carried by a newer command
            # recorded already closes it. No such command is made today (a shadow delivery's definition, what serves
            # shadowed by the training's own model version, equals no swap's, a model alone, nor another training's
            # delivery's): checked all the same, so that one that comes (a new policy, a retraining registering the
            # same version) is not recorded over it (before, this path had no check)
            if newest is None:
                older = await _older_than_recorded(conn, deployment_id, version, training_id=training["id"])
                if older is not None:
                    await _close_older(conn, older)
                    return True
                if not await _delivered(conn, training["id"], policy):
                    return True
                await _open_challenge(conn, training, cd, champion, new, version)
        if newest is not None:
            await _deliver_again(deps, newest, training, new)
            return True
        deps.events_committed()
        return True
    except ServingChanged as exc:
        if again:  # `displaced` does not serve any more (looked at again by the deployer): as the check above
            log.info("continuous deployment of training %s: what serves changed (%s): not served again",
                     training["id"], exc.msg)
            return True
        return await _delivery_refused(deps, training, policy, exc, refused)
    except DeployUnanswered as exc:
        if again:
            raise
        # the deploy went unanswered: it may still be served; left claimed for resume_deliveries
        log.warning("continuous deployment of training %s: %s (%s); looked at again in %.0f s (resume_deliveries)",
                    training["id"], _not_done(exc), exc.msg, deps.stale_swap)
        await _note_delivery_held_up(pool, training, exc)
        return False
    except RailyardError as exc:
        if again:
            # serving the newest again (for an older delivery overtaken): not this training's own delivery, which
            # may be under way in another process (its claim set) and must not be failed by it; the caller (the
            # older delivery) handles it. The owner's token refused suspends continuous deployment all the same
            if isinstance(exc, OwnerRefused):
                async with pool.acquire() as conn, conn.transaction():
                    await _suspend_deployment(conn, deployment_id, cd["owner_id"], exc)
            raise
        if give_up is None and _for_now(exc):  # left claimed for resume_deliveries, as an unanswered deploy
            log.warning("continuous deployment of training %s: %s %s (%s); delivered again in %.0f s"
                        " (resume_deliveries)", training["id"], exc.status, exc.code, exc.msg, deps.stale_swap)
            await _note_delivery_held_up(pool, training, exc)
            return False
        if give_up is not None and not isinstance(exc, (GivenUp, OwnerRefused)):
            exc = RailyardError(f"{give_up}; its last look at what serves failed: {_held_up(exc)}")
        await _delivery_failed(pool, training, policy, exc, cd["owner_id"])
        return False


async def _note_delivery_held_up(pool: asyncpg.Pool, training: asyncpg.Record, exc: RailyardError) -> None:
    """_note_held_up for a delivery left claimed for resume_deliveries: while its claim holds."""
    await _note_held_up(pool, f"continuous deployment of training {training['id']}", "UPDATE trainings SET"
                        " delivery_held_up = $3 WHERE id = $1 AND delivering_since = $2", training["id"],
                        training["delivering_since"], _held_up(exc))


async def _resolve_served(deps: ContinuousDeps, token: str, workspace_id: int,
                          served: ModelVersionRef) -> ResolvedModel | None:
    """The served model as the registry knows it, to compare a delivery's inputs with (None: no longer there)."""
    try:
        return await request(deps.base.broker, subjects.REGISTRY_MODELS_RESOLVE, ResolveModel(
            workspace_id=workspace_id, name=served.name, version=served.version, sha=served.sha), token=token,
            timeout=deps.base.timeout, reply_model=ResolvedModel)
    except NotFound:
        return None


async def _delivery_refused(deps: ContinuousDeps, training: asyncpg.Record, policy: str, exc: ServingChanged,
                            refused: bool) -> bool:
    """_deliver's deploy was refused because what serves changed since its look (see _deliver): nothing of it was
    deployed. A newer training delivered meanwhile: this delivery is overtaken, closed while its claim holds (no
    event, the reason). Otherwise delivered again on what serves now, once (`refused`: this was that try), then left
    claimed for resume_deliveries (False)."""
    pool = deps.base.pool
    newest = await newest_delivered(pool, training["deployment_id"], newer_than=training)
    if newest is not None:
        log.warning("continuous deployment of training %s (deployment %s): its deploy was refused (%s) and training %s,"
                    " newer, was delivered meanwhile: not delivered", training["id"], training["deployment_id"],
                    exc.msg, newest["id"])
        await pool.execute(
            "UPDATE trainings SET delivering_since = NULL, reason = $3 WHERE id = $1 AND delivering_since = $2",
            training["id"], training["delivering_since"], "a newer training of the deployment was delivered during"
            f" its delivery, and its deploy was refused: not delivered ({exc.msg})")
        return True
    if not refused:
        log.info("continuous deployment of training %s: what serves changed before its deploy (%s): delivered again on"
                 " what serves now", training["id"], exc.msg)
        return await _deliver(deps, training, policy, refused=True)
    log.warning("continuous deployment of training %s: its deploy was refused again (%s): delivered again in %.0f s",
                training["id"], exc.msg, deps.stale_swap)
    await _note_delivery_held_up(pool, training, exc)
    return False


async def _deployed_auto(conn: Any, training: asyncpg.Record, cd: asyncpg.Record, new: dict[str, Any],
                         version: str) -> None:
    """DEPLOY_AUTO's record, in the caller's transaction once _delivered ended the delivery: the running challenge
    superseded (the version served has no shadow) and the training's model_swapped written."""
    await conn.execute("UPDATE challenges SET state = 'superseded', decided_at = now(), reason = 'a newer model"
                       " version was deployed (DEPLOY_AUTO)' WHERE deployment_id = $1 AND state = 'running'",
                       training["deployment_id"])
    await _event(conn, subjects.EVENT_MONITORING_MODEL_SWAPPED, ModelSwapped(
        deployment_id=training["deployment_id"], workspace_id=cd["workspace_id"], action="deployed",
        model_version=_ref(new), shadow_model_version=None, pipeline_version=version,
        reason=f"continuous deployment (DEPLOY_AUTO) of training {training['id']}"))


def _sent_deploy(pool: asyncpg.Pool, deployment_id: int, *, training_id: uuid.UUID | None = None,
                 challenge_id: uuid.UUID | None = None,
                 champion: ModelVersionRef | None = None) -> Callable[[str], Awaitable[None]]:
    """_serve's `sent` for a delivery (`training_id`; DEPLOY_SHADOW's `champion`, what its challenge compares) or a
    challenge's swap (`challenge_id`): the pipeline version its deploy carries, written before the deploy is sent
    (migration 024), so its events.pipeline.deployed, however late, is known as this deploy's. The same version sent
    again (a resume: an equal definition makes no new version) moves its `sent_at` to this send: the order of the
    commands (on_pipeline_deployed) and the row's age (prune_sent_deploys) are its last send's."""
    async def sent(version: str) -> None:
        await pool.execute(
            "INSERT INTO sent_deploys (pipeline_version, deployment_id, training_id, challenge_id, champion) VALUES"
            " ($1, $2, $3, $4, $5) ON CONFLICT (deployment_id, pipeline_version, COALESCE(training_id, challenge_id))"
            " DO UPDATE SET sent_at = now()", version, deployment_id, training_id, challenge_id,
            json.dumps(champion.model_dump()) if champion is not None else None)

    return sent


async def _open_challenge(conn: Any, training: asyncpg.Record, cd: asyncpg.Record, champion: ModelVersionRef,
                          new: dict[str, Any], version: str) -> None:
    """DEPLOY_SHADOW's record, in the caller's transaction: the running challenge superseded, the training's opened
    (`champion` shadowed by `new`, served by pipeline version `version`) and its model_swapped written."""
    deployment_id = training["deployment_id"]
    # a decided one too, whose swap is still under way or left for resume_swap (its deploy unanswered): this newer
    # training's delivery is what serves now, and that swap's record finds it (_swap_overtaken)
    await conn.execute("UPDATE challenges SET state = 'superseded', decided_at = COALESCE(decided_at, now()), reason"
                       " = 'a newer training replaced the challenger' WHERE deployment_id = $1 AND state IN"
                       " ('running', 'promoting', 'rolling_back')", deployment_id)
    await conn.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha,"
        " min_sample, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running')", uuid.uuid4(), deployment_id,
        cd["workspace_id"], training["id"], json.dumps(champion.model_dump()), json.dumps(new), cd["alpha"],
        cd["min_sample"])
    await _event(conn, subjects.EVENT_MONITORING_MODEL_SWAPPED, ModelSwapped(
        deployment_id=deployment_id, workspace_id=cd["workspace_id"], action="shadow_set", model_version=champion,
        shadow_model_version=_ref(new), pipeline_version=version,
        reason=f"continuous deployment (DEPLOY_SHADOW) of training {training['id']}: challenger under the"
               " sequential test"))


async def newest_delivered(conn: Any, deployment_id: int, newer_than: Any = None, *,
                           recorded: bool = False) -> asyncpg.Record | None:
    """The newest training of the deployment delivered or being delivered (done, deployed or shadow): the version
    continuous deployment means to serve; `newer_than` (a training's row: its id and created_at): only one created
    after it, None when there is none; `recorded`: only one whose delivery was recorded (delivered_at, migration
    023), not one still under way. One query for every check that an older serving was overtaken (_overtaken, a
    challenge's swap, resume_deliveries); `conn` a connection or the pool."""
    return await conn.fetchrow(
        "SELECT * FROM trainings WHERE deployment_id = $1 AND state = 'done' AND outcome IN ('deployed', 'shadow')"
        " AND ($2::uuid IS NULL OR (id <> $2 AND created_at > $3)) AND (NOT $4 OR delivered_at IS NOT NULL)"
        " ORDER BY created_at DESC LIMIT 1", deployment_id, newer_than["id"] if newer_than is not None else None,
        newer_than["created_at"] if newer_than is not None else None, recorded)


async def _overtaken(conn: Any, training: asyncpg.Record) -> asyncpg.Record | None:
    """After this delivery's deploy, in the transaction that would record it: the newest training of the deployment
    delivered (or being delivered) that is newer than `training`, or None. Its deploy may have ended before this
    one's, which then serves the older version in its place: this delivery is not recorded, and the caller serves
    that newest one again (_deliver_again), which closes it with the reason once done; until then it stays claimed,
    so a process dying in between leaves it to resume_deliveries (which serves the newest again)."""
    await conn.execute("SELECT 1 FROM trainings WHERE id = $1 FOR UPDATE", training["id"])
    newest = await newest_delivered(conn, training["deployment_id"], newer_than=training)
    if newest is not None:
        log.warning("continuous deployment of training %s (deployment %s): training %s, newer, was delivered during"
                    " its deploy: serving it again after this one", training["id"], training["deployment_id"],
                    newest["id"])
    return newest


async def _deliver_again(deps: ContinuousDeps, newest: asyncpg.Record, older: asyncpg.Record,
                         displaced: dict[str, Any]) -> None:
    """Serve `newest` again after `older`'s delivery deployed `displaced` (see _deliver), then close that delivery,
    unrecorded, with the reason (not before: a process dying in between leaves it claimed, to resume_deliveries).
    Serving it again failed (the deployer, the registry, or any unexpected error): left claimed too, so
    resume_deliveries tries once more STALE_SWAP later (and then closes it whatever happens). The failure is not
    recorded on `newest`, whose own delivery may still be under way in another process."""
    try:
        await _deliver(deps, newest, "DEPLOY_AUTO" if newest["outcome"] == "deployed" else "DEPLOY_SHADOW",
                       again=True, displaced=displaced)
    except RailyardError as exc:
        log.warning("continuous deployment of training %s: serving the newer training %s again failed (%s): tried"
                    " again in %.0f s", older["id"], newest["id"], exc.msg, deps.stale_swap)
        return
    except Exception:
        log.exception("continuous deployment of training %s: serving the newer training %s again failed"
                      " unexpectedly: tried again in %.0f s", older["id"], newest["id"], deps.stale_swap)
        return
    await deps.base.pool.execute(
        "UPDATE trainings SET delivering_since = NULL, reason = 'a newer training of the deployment was delivered"
        " during its deploy: not delivered, the newer one served again after it' WHERE id = $1 AND delivering_since"
        " IS NOT NULL", older["id"])


async def _delivery_failed(pool: asyncpg.Pool, training: asyncpg.Record, policy: str, exc: RailyardError,
                           owner_id: Any) -> None:
    """A delivery failed (a Railyard error: the owner's token, the deployer, the registry); the owner's token
    refused suspends continuous deployment too (_suspend_deployment). Logged at WARNING only when recorded: the one
    more look at a given-up delivery (look_again_at_given_up) finding its version still not serving writes nothing
    (its claim is gone) and said so again at WARNING, minutes after the give-up's own."""
    # only while this delivery's claim holds (delivering_since as it set or found it): a slow delivery that
    # fails after another delivery of it (resume_deliveries, or the first one while a resumed one was slow)
    # served and recorded it must not fail the delivered training, nor the challenge that one opened
    async with pool.acquire() as conn, conn.transaction():
        if isinstance(exc, OwnerRefused):
            await _suspend_deployment(conn, training["deployment_id"], owner_id, exc)
        recorded = await conn.fetchval(
            "UPDATE trainings SET outcome = 'failed', reason = $2, updated_at = now(), delivering_since = NULL WHERE"
            " id = $1 AND delivering_since = $3 RETURNING true", training["id"], f"{policy} failed: {exc.msg}",
            training["delivering_since"])
        if recorded:
            await conn.execute("UPDATE challenges SET state = 'failed', reason = $2, decided_at = now() WHERE"
                               " training_id = $1 AND state = 'running'", training["id"], exc.msg)
    if recorded:
        log.warning("continuous deployment of training %s failed: %s", training["id"], exc.msg)
    else:
        log.info("continuous deployment of training %s: %s; nothing recorded (not claimed by this delivery: recorded,"
                 " failed or taken over by another, or a given-up delivery looked at again)", training["id"], exc.msg)


NEWER_DELIVERED = (
    "EXISTS (SELECT 1 FROM trainings n WHERE n.deployment_id = t.deployment_id AND n.id <> t.id AND n.created_at >"
    " t.created_at AND n.state = 'done' AND n.outcome IN ('deployed', 'shadow'))")
"""SQL: a newer training of training `t`'s deployment has been delivered (or is being delivered): `t`'s version is
not to be served any more (it would replace the newer one)."""


async def _still_due(conn: Any, training: asyncpg.Record, *, claim: bool = True) -> bool:
    """Whether this delivery of `training` is still to be made, checked in the caller's transaction (the training's
    row locked until it ends): its claim (delivering_since) holds — another delivery did not take it over or record
    it; `claim` False: not asked — and no newer training of the deployment has been delivered; one such newer
    delivery closes this one (while its claim holds), with the reason, as resume_deliveries does."""
    row = await conn.fetchrow(
        f"SELECT delivering_since IS NOT DISTINCT FROM $2 AS claimed, {NEWER_DELIVERED} AS newer FROM trainings t"
        " WHERE id = $1 FOR UPDATE", training["id"], training["delivering_since"])
    if row is None or (claim and not row["claimed"]):
        log.info("continuous deployment of training %s: another delivery took it over or recorded it", training["id"])
        return False
    if row["newer"]:
        # closed only while a delivery of it is under way (its claim): a failed one looked at again
        # (look_again_at_given_up) or a recorded one served again (`again`) keeps its outcome's reason
        if row["claimed"] and training["delivering_since"] is not None:
            await conn.execute("UPDATE trainings SET delivering_since = NULL, reason = 'a newer training of the"
                               " deployment was delivered during its delivery: not delivered' WHERE id = $1",
                               training["id"])
        log.warning("continuous deployment of training %s (deployment %s): a newer training was delivered meanwhile:"
                    " not delivered", training["id"], training["deployment_id"])
        return False
    return True


async def _delivered(conn: Any, training_id: uuid.UUID, policy: str) -> bool:
    """End the training's delivery in the caller's transaction; whether this call ended it (False: another
    process's delivery of it was recorded first). A failure of the other delivery recorded first (it failed while
    this one, slower, was still deploying) is overruled: this one served the version."""
    return bool(await conn.fetchval(
        "UPDATE trainings SET delivering_since = NULL, outcome = $2, delivered_at = now(), reason = CASE WHEN"
        " delivering_since IS NULL THEN NULL ELSE reason END, delivery_held_up = NULL WHERE id = $1 AND"
        " (delivering_since IS NOT NULL OR"
        " (outcome = 'failed' AND reason LIKE $3)) RETURNING true", training_id,
        "deployed" if policy == "DEPLOY_AUTO" else "shadow", f"{policy} failed: %"))


async def _resume_delivery(deps: ContinuousDeps, training: asyncpg.Record) -> None:
    """One unfinished delivery claimed again by resume_deliveries: delivered again, or past MAX_RESUMES looked at
    once more and failed unless its version serves; its failure is its own (logged), not the sweep's."""
    policy = "DEPLOY_AUTO" if training["outcome"] == "deployed" else "DEPLOY_SHADOW"
    give_up = None
    if training["delivery_resumes"] > MAX_RESUMES:  # bounded (migration 022): not tried every STALE_SWAP for ever
        # one last look, no deploy: its last deploy landing since the previous resume's look is recorded as
        # delivered, not failed while it serves
        log.error("continuous deployment of training %s (deployment %s) did not finish after %d tries: failed"
                  " unless its version serves now", training["id"], training["deployment_id"],
                  training["delivery_resumes"])
        give_up = (f"its delivery did not finish after {training['delivery_resumes']} tries, {deps.stale_swap:.0f} s"
                   " apart (its deploy unanswered, a service unavailable, or the service stopping mid-delivery): given"
                   " up; the deployer may still serve its last deploy, made only over the version it was made from"
                   + _last_held_up(training.get("delivery_held_up")))
    else:
        log.info("continuous deployment of training %s (deployment %s) did not finish: delivered again",
                 training["id"], training["deployment_id"])
    try:
        async with deps.lock(training["deployment_id"]):
            await _deliver(deps, training, policy, give_up=give_up)
    except Exception:
        # _deliver records Railyard errors itself; anything else is this delivery's alone (claimed now, it is
        # tried again STALE_SWAP later): the others claimed with it are delivered now, not one sweep later
        log.exception("continuous deployment of training %s (deployment %s) failed unexpectedly; delivered again"
                      " in %.0f s", training["id"], training["deployment_id"], deps.stale_swap)
        if give_up is not None:  # the last resume's look failed: failed all the same, not looked at for ever
            try:
                await _delivery_failed(deps.base.pool, training, policy, RailyardError(give_up), None)
            except Exception:
                log.exception("continuous deployment of training %s: recording its failure failed; tried again"
                              " in %.0f s", training["id"], deps.stale_swap)


async def resume_deliveries(deps: ContinuousDeps) -> None:
    """Deliver again what a process did not finish delivering (it died between the serving and the commit of its
    model_swapped, or before the serving) once clearly stale (STALE_SWAP: a deploy may take deploy_wait): serving
    what already serves makes no new pipeline version, so the swap is recorded with its event, once. Not one a newer
    training of the deployment has been delivered after (or is being delivered): serving it again would put the
    older version back in place of the newer one; its delivery is closed, without event. Its deploy may have ended
    after the newer one's (or its process died before serving the newer one again, _overtaken): the newest delivered
    training of the deployment is served again if the older version is what serves (_deliver's `displaced`)."""
    # claimed again (not closed yet: a process dying before it has served the newest again leaves it to this sweep,
    # STALE_SWAP later), then closed once that is tried, whatever its outcome (a failure is in the reason)
    # a deployment whose lock is held (this process delivering or swapping it now) is not claimed: the next sweep's
    # (STALE_SWAP / 10 later) takes it, or another process's
    busy = deps.busy()
    superseded = await deps.base.pool.fetch(
        "UPDATE trainings t SET delivering_since = now() WHERE delivering_since < now() - make_interval(secs => $1)"
        f" AND {NEWER_DELIVERED} AND deployment_id <> ALL($2::integer[]) RETURNING id, deployment_id, model_version,"
        " delivering_since", deps.stale_swap, busy)
    for training in superseded:
        log.warning("continuous deployment of training %s (deployment %s) did not finish, and a newer training was"
                    " delivered since: not delivered again", training["id"], training["deployment_id"])
    stale = await deps.base.pool.fetch(
        "SELECT deployment_id FROM trainings WHERE delivering_since < now() - make_interval(secs => $1) GROUP BY"
        " deployment_id ORDER BY min(created_at)", deps.stale_swap)
    # up to RESUME_CONCURRENCY deployments at once (before, one deployment's deploy answered slowly, up to
    # deploy_wait, 305 s, held back every other deployment's resume behind it), a deployment's own one after the
    # other, oldest first (they share its lock anyway). Each deployment's are claimed when its turn comes, not at
    # the sweep's start: one waiting behind the bound holds no claim, so another process's sweep takes it meanwhile,
    # and one whose turn comes after STALE_SWAP is not claimed by another process too (both delivering it, each
    # counting a resume towards MAX_RESUMES)
    limit = asyncio.Semaphore(RESUME_CONCURRENCY)
    resumed: set[int] = set()  # their newest is being delivered again just now

    async def resume_deployment(deployment_id: int) -> None:
        async with limit:
            if deployment_id in deps.busy():  # a deploy under way here now: claimed at a later sweep, not waited for
                return
            try:
                rows = await deps.base.pool.fetch(
                    "UPDATE trainings SET delivering_since = now(), delivery_resumes = delivery_resumes + 1 WHERE"
                    " deployment_id = $2 AND delivering_since < now() - make_interval(secs => $1) RETURNING *",
                    deps.stale_swap, deployment_id)
            except Exception:
                log.exception("continuous deployment of deployment %s: claiming its unfinished deliveries failed;"
                              " tried again at the next sweep", deployment_id)
                return
            if rows:
                resumed.add(deployment_id)
            for training in sorted(rows, key=lambda row: row["created_at"]):
                await _resume_delivery(deps, training)

    await asyncio.gather(*(resume_deployment(row["deployment_id"]) for row in stale))
    for training in superseded:
        newest = await newest_delivered(deps.base.pool, training["deployment_id"])
        failed = None
        if newest is not None and training["deployment_id"] not in resumed and training["model_version"] is not None:
            # this older delivery is closed whatever happens here: it is this sweep's try (a second one, when the
            # first, _deliver_again's, failed), so a newest that cannot be served again is not tried for ever
            try:
                async with deps.lock(training["deployment_id"]):
                    await _deliver(deps, newest, "DEPLOY_AUTO" if newest["outcome"] == "deployed" else
                                   "DEPLOY_SHADOW", again=True, displaced=_json(training["model_version"]))
            except RailyardError as exc:
                failed = exc.msg
                log.warning("continuous deployment of training %s (deployment %s): serving it again over the older"
                            " training %s's unfinished delivery failed (%s): that delivery is closed", newest["id"],
                            newest["deployment_id"], training["id"], exc.msg)
            except Exception as exc:
                failed = f"unexpected error {type(exc).__name__}"
                log.exception("continuous deployment of training %s (deployment %s): serving it again over the older"
                              " training %s's unfinished delivery failed unexpectedly: that delivery is closed",
                              newest["id"], newest["deployment_id"], training["id"])
        await deps.base.pool.execute(
            "UPDATE trainings SET delivering_since = NULL, reason = $3 WHERE id = $1 AND delivering_since = $2",
            training["id"], training["delivering_since"],
            "its delivery did not finish (the service stopped, or its deploy went unanswered) and a newer training of"
            " the deployment was delivered since: not delivered again"
            + (f"; serving the newer one again failed: {failed}" if failed else ""))
    await look_again_at_given_up(deps)


GIVEN_UP_REASON = "% failed: its delivery did not finish after %"
"""SQL LIKE: the reason of a delivery its last resume failed (_resume_delivery's give_up, `<policy> failed: ...`)."""


async def look_again_at_given_up(deps: ContinuousDeps) -> None:
    """Look once more, STALE_SWAP after it was failed, at each delivery its last resume gave up on (past MAX_RESUMES)
    that no newer delivery followed: its last deploy, unanswered, may have landed after that look (the deployer
    serves it late, only over the version it was made from). Serving it, it is recorded as delivered after all
    (_delivered overrules the failure), with its model_swapped, and DEPLOY_AUTO's running challenge superseded,
    DEPLOY_SHADOW's challenge opened; not serving, it stays failed and nothing is deployed. Before, it stayed failed
    while its version served, and under DEPLOY_AUTO the old challenge stayed running with no shadow left to pair.
    Claimed by delivery_resumes (MAX_RESUMES + 2): one process looks, once. Not one whose deployment this process is
    delivering or swapping now (its lock held): left unclaimed for the next sweep, not waited for (ContinuousDeps.busy).
    """
    rows = await deps.base.pool.fetch(
        "UPDATE trainings t SET delivery_resumes = delivery_resumes + 1 WHERE state = 'done' AND outcome = 'failed' AND"
        " delivering_since IS NULL AND delivered_at IS NULL AND delivery_resumes = $1 AND reason LIKE $2 AND updated_at"
        f" < now() - make_interval(secs => $3) AND NOT {NEWER_DELIVERED} AND deployment_id <> ALL($4::integer[])"
        " RETURNING *", MAX_RESUMES + 1, GIVEN_UP_REASON, deps.stale_swap, deps.busy())
    for training in rows:
        policy = training["reason"].partition(" failed: ")[0]
        if policy not in ("DEPLOY_AUTO", "DEPLOY_SHADOW") or training["model_version"] is None:
            continue
        try:
            async with deps.lock(training["deployment_id"]):
                # give_up: nothing deployed; its version serving is recorded, else the failure's write matches
                # nothing (its claim, delivering_since, is gone) and the training stays as it was
                await _deliver(deps, training, policy, give_up=training["reason"].partition(" failed: ")[2])
        except Exception:
            log.exception("continuous deployment of training %s (deployment %s): looking again at its given-up"
                          " delivery failed; not looked at again", training["id"], training["deployment_id"])


async def resume_swaps(deps: ContinuousDeps) -> None:
    """Swap again the decided challenges whose swap did not finish STALE_SWAP after their decision (the process died,
    or the swap's deploy went unanswered: DeployUnanswered), each once (resume_swap claims it). Before, only the
    deployment's next review did (on_review): a deployment reviewed no more kept such a challenge decided for good,
    its decided version possibly serving (a late deploy) with no model_swapped. One deployment's failure is its own."""
    rows = await deps.base.pool.fetch(
        "SELECT DISTINCT deployment_id FROM challenges WHERE state IN ('promoting', 'rolling_back') AND decided_at <"
        " now() - make_interval(secs => $1) ORDER BY deployment_id", deps.stale_swap)
    limit = asyncio.Semaphore(RESUME_CONCURRENCY)  # as resume_deliveries: a slow deploy does not hold back others

    async def resume_one(deployment_id: int) -> None:
        async with limit:
            if deployment_id in deps.busy():  # a deploy under way here now: swapped again at a later sweep
                return
            try:
                await resume_swap(deps, deployment_id)
            except Exception:
                log.exception("the unfinished swap of deployment %s's challenge failed unexpectedly; tried again in"
                              " %.0f s", deployment_id, deps.stale_swap)

    await asyncio.gather(*(resume_one(row["deployment_id"]) for row in rows))
    await look_again_at_given_up_swaps(deps)


async def look_again_at_given_up_swaps(deps: ContinuousDeps) -> None:
    """As look_again_at_given_up for a challenge's swap its last resume gave up on (failed, swap_resumes MAX_RESUMES
    + 1): once, STALE_SWAP after (decided_at, set by that resume's claim), _apply_decision looks again without
    deploying: the decided version alone serving (its last deploy landed after the give-up's look), the swap is
    recorded (promoted / rolled back, with its model_swapped) over the failure; otherwise nothing changes (the
    failure's write needs the challenge still decided). Claimed by swap_resumes reaching MAX_RESUMES + 2; not while
    this process holds the deployment's lock (left for the next sweep, as look_again_at_given_up)."""
    rows = await deps.base.pool.fetch(
        "UPDATE challenges SET swap_resumes = swap_resumes + 1 WHERE state = 'failed' AND swap_refused IS NULL AND"
        " swap_resumes = $1 AND reason LIKE '% decided, but its swap did not finish after %' AND decided_at < now() -"
        " make_interval(secs => $2) AND deployment_id <> ALL($3::integer[]) RETURNING *", MAX_RESUMES + 1,
        deps.stale_swap, deps.busy())
    for row in rows:
        evidence = _evidence(row)
        state = "promoting" if evidence.decision == sequential.Decision.PROMOTE else "rolling_back"
        try:
            async with deps.lock(row["deployment_id"]):
                await _apply_decision(deps, row, state, evidence, resumed=True, looked_again=True,
                                      give_up=row["reason"].partition(" decided, but ")[2])
        except Exception:
            log.exception("challenge %s of deployment %s: looking again at its given-up swap failed; not looked at"
                          " again", row["id"], row["deployment_id"])


async def on_pipeline_deployed(deps: ContinuousDeps, event: PipelineDeployed) -> int:
    """The deployer's events.pipeline.deployed (a durable consumer of monitoring's): a deploy continuous deployment
    sent (sent_deploys, written before the deploy command: migration 024) landed. Recorded as it would have been had
    the command answered in time, whenever the event comes: after the command went unanswered (the delivery still
    claimed, the challenge still decided: recorded before the resume STALE_SWAP later), after the last resume gave up
    and after the one more look at it (failed: recorded over the failure, as that look does). Nothing is deployed
    and the deployer is not asked anything. Each record is a conditional write (the delivery's _delivered, the
    swap's _swapped: whichever of this, the command's own answer, a resume or another monitoring process comes
    first writes it and its model_swapped), so a redelivered event, or one handled by two processes, records
    once. Left as they are: a deploy monitoring did not send (no row names the version), a delivery or swap a newer
    training overtook, its delivery recorded (a delivery still claimed is resume_deliveries' to close, serving the
    newest again; a failed one stays failed), one closed otherwise (superseded, not delivered). How many it
    recorded.

    A version both a delivery and a swap carried (the deployer makes one pipeline version for an equal definition:
    DEPLOY_AUTO's new version alone, a swap's decided version alone) was both deploys landing: they are recorded in
    the order they were sent (sent_at), each as its command's answer would have been, so the newer command's record
    comes last and what the deployment's history ends with is what was asked last. One whose newer command (sent
    after it, naming the same version) is recorded already is left as it is: recorded after it, it would tell the
    older command last, and it is closed as overtaken (_close_older), as a resume would otherwise record it after
    the newer one since its version serves. Before, the rows came in the table's order, and the older one recorded
    first could make the newer one overtaken (a swap after the newer training's delivery) or be recorded over it.
    Each row's check and record are one transaction under the deployment's RECORD_LOCK, which every record path
    takes: a newer command's own record (its answer, a resume, another process's event) comes wholly before the
    check, which then sees it, or wholly after the record."""
    pool = deps.base.pool
    recorded = 0
    for row in await pool.fetch("SELECT * FROM sent_deploys WHERE deployment_id = $1 AND pipeline_version = $2"
                                " ORDER BY sent_at, COALESCE(training_id, challenge_id)", event.deployment_id,
                                event.pipeline_version):
        async with pool.acquire() as conn, conn.transaction():
            await _record_lock(conn, row["deployment_id"])
            # read again under the lock: its command may have sent this version again since the read above (a
            # resume: sent_at moved to that send, it is the newer command now), or the row was pruned. Before, the
            # stale sent_at closed a command sent last as overtaken by one sent before its new send
            sent = await conn.fetchrow(
                "SELECT * FROM sent_deploys WHERE deployment_id = $1 AND pipeline_version = $2 AND"
                " COALESCE(training_id, challenge_id) = $3", row["deployment_id"], row["pipeline_version"],
                row["training_id"] or row["challenge_id"])
            if sent is None:
                continue
            if await _newer_recorded(conn, sent):
                await _close_older(conn, sent)
                continue
            if sent["training_id"] is not None:
                landed = await _delivery_landed(conn, sent, event)
            else:
                landed = await _swap_landed(conn, sent, event)
        recorded += landed
    if recorded:
        deps.events_committed()
    return recorded


async def _record_lock(conn: Any, deployment_id: int) -> None:
    """RECORD_LOCK of the deployment, until the caller's transaction ends: the first statement of every transaction
    that records a delivery or a swap (before any row lock it takes, so no two such transactions wait on each other
    in the other order)."""
    await xact_lock(conn, RECORD_LOCK, deployment_id)


async def _newer_recorded(pool: Any, sent: asyncpg.Record) -> bool:
    """Whether a delivery or swap that carried the same pipeline version as `sent` and was sent after it is recorded
    (delivered_at; promoted, rolled back): see on_pipeline_deployed. `pool` a pool or a connection."""
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM sent_deploys s LEFT JOIN trainings t ON t.id = s.training_id LEFT JOIN"
        " challenges c ON c.id = s.challenge_id WHERE s.deployment_id = $1 AND s.pipeline_version = $2 AND s.sent_at >"
        " $3 AND (t.delivered_at IS NOT NULL OR c.state IN ('promoted', 'rolled_back')))", sent["deployment_id"],
        sent["pipeline_version"], sent["sent_at"]))


async def _older_than_recorded(conn: Any, deployment_id: int, version: str, *, training_id: uuid.UUID | None = None,
                               challenge_id: uuid.UUID | None = None) -> asyncpg.Record | None:
    """In the transaction that would record a delivery (`training_id`) or swap (`challenge_id`) serving pipeline
    version `version`: its own sent_deploys row when a newer command that carried that version is recorded already
    (_newer_recorded: recorded now, it would be told after that one), else None. None too when it never sent that
    version (it found it serving at its first look: asked now, it is the newer one). Before, only the deployed
    event's handling looked (on_pipeline_deployed): a resume or a one more look finding the version serving (the
    newer command's deploy) recorded the older command after the newer one."""
    own = await conn.fetchrow(
        "SELECT * FROM sent_deploys WHERE deployment_id = $1 AND pipeline_version = $2 AND COALESCE(training_id,"
        " challenge_id) = $3", deployment_id, version, training_id or challenge_id)
    return own if own is not None and await _newer_recorded(conn, own) else None


async def _close_older(pool: Any, sent: asyncpg.Record) -> None:
    """An older command whose pipeline version a newer one (a delivery or a swap) carried and recorded first
    (on_pipeline_deployed): closed unrecorded with the reason, as an overtaken one is, so that its resume does not
    record it after the newer one (its version serves): a delivery still claimed is closed (a failed one keeps its
    failure), a swap still decided is superseded (a failed one stays failed, as a given-up swap overtaken does). A
    failed one given up by its last resume has its one more look (look_again_at_given_up, _swaps) taken as made:
    that look records it when its version serves, which it does by the newer command's deploy (before, the look
    STALE_SWAP after the give-up recorded it after the newer one all the same)."""
    reason = "a newer command that carried the same pipeline version was recorded first"
    if sent["training_id"] is not None:
        closed = await pool.fetchval(
            "UPDATE trainings SET delivering_since = NULL, reason = $2 WHERE id = $1 AND delivering_since IS NOT NULL"
            " AND delivered_at IS NULL RETURNING id", sent["training_id"], f"{reason}: not delivered")
        await pool.execute(
            "UPDATE trainings SET delivery_resumes = $2 WHERE id = $1 AND outcome = 'failed' AND delivering_since IS"
            " NULL AND delivered_at IS NULL AND delivery_resumes = $2 - 1", sent["training_id"], MAX_RESUMES + 2)
    else:
        closed = await pool.fetchval(
            "UPDATE challenges SET state = 'superseded', reason = (evidence->>'decision') || $2, swap_refused = NULL"
            " WHERE id = $1 AND state IN ('promoting', 'rolling_back') RETURNING id", sent["challenge_id"],
            f" decided, but {reason}: not recorded")
        await pool.execute(
            "UPDATE challenges SET swap_resumes = $2 WHERE id = $1 AND state = 'failed' AND swap_refused IS NULL AND"
            " swap_resumes = $2 - 1", sent["challenge_id"], MAX_RESUMES + 2)
    log.info("deployment %s: pipeline version %s landed; the deploy of %s %s that carried it is not recorded: %s%s",
             sent["deployment_id"], sent["pipeline_version"], "training" if sent["training_id"] else "challenge",
             sent["training_id"] or sent["challenge_id"], reason, " (closed)" if closed else "")


async def _delivery_landed(conn: Any, sent: asyncpg.Record, event: PipelineDeployed) -> bool:
    """on_pipeline_deployed for a training's delivery, in its transaction: recorded delivered (DEPLOY_AUTO's running
    challenge superseded, DEPLOY_SHADOW's challenge opened, its model_swapped) while it is claimed or failed, not
    overtaken."""
    training = await conn.fetchrow("SELECT * FROM trainings WHERE id = $1", sent["training_id"])
    if (training is None or training["workspace_id"] != event.workspace_id or training["state"] != "done"
            or training["delivered_at"] is not None or training["model_version"] is None):
        return False
    if training["delivering_since"] is not None:
        policy = "DEPLOY_AUTO" if training["outcome"] == "deployed" else "DEPLOY_SHADOW"
    elif training["outcome"] == "failed":
        policy = (training["reason"] or "").partition(" failed: ")[0]
    else:  # closed unrecorded (a newer training delivered during it): not put back
        return False
    if policy not in ("DEPLOY_AUTO", "DEPLOY_SHADOW") or (policy == "DEPLOY_SHADOW" and sent["champion"] is None):
        return False
    cd = await conn.fetchrow("SELECT * FROM continuous_deployment WHERE deployment_id = $1", training["deployment_id"])
    if cd is None:
        return False
    new = _json(training["model_version"])
    await conn.execute("SELECT 1 FROM trainings WHERE id = $1 FOR UPDATE", training["id"])
    # overtaken: a newer training whose delivery was recorded. Not one still being delivered: its deploy may be
    # refused (this version serves now, not the one it looked at) or fail, and this event, acknowledged, was
    # this delivery's last word (it stayed failed while its version served); recorded now, the newer one's own
    # record comes after it, as its deploy does
    if await newest_delivered(conn, training["deployment_id"], newer_than=training, recorded=True) is not None:
        return False
    if not await _delivered(conn, training["id"], policy):
        return False
    if policy == "DEPLOY_AUTO":
        await _deployed_auto(conn, training, cd, new, event.pipeline_version)
    else:
        await _open_challenge(conn, training, cd, ModelVersionRef(**_json(sent["champion"])), new,
                              event.pipeline_version)
    log.info("continuous deployment of training %s (deployment %s): its deploy (pipeline version %s) landed: recorded"
             " delivered from the deployer's event", training["id"], training["deployment_id"], event.pipeline_version)
    return True


async def _swap_landed(conn: Any, sent: asyncpg.Record, event: PipelineDeployed) -> bool:
    """on_pipeline_deployed for a challenge's swap, in its transaction: recorded promoted / rolled back (its
    model_swapped) while the challenge is decided, or failed (not a refusal kept for a redo), and no newer delivered
    training overtook it."""
    challenge = await conn.fetchrow("SELECT * FROM challenges WHERE id = $1", sent["challenge_id"])
    if challenge is None or challenge["workspace_id"] != event.workspace_id or challenge["evidence"] is None:
        return False
    evidence = _evidence(challenge)
    decided = {sequential.Decision.PROMOTE: "promoting", sequential.Decision.ROLL_BACK: "rolling_back"}.get(
        evidence.decision)
    if decided is None or not (challenge["state"] == decided
                               or (challenge["state"] == "failed" and challenge["swap_refused"] is None)):
        return False
    served = _json(challenge["challenger"] if decided == "promoting" else challenge["champion"])
    await conn.execute("SELECT 1 FROM challenges WHERE id = $1 FOR UPDATE", challenge["id"])
    if await _swap_overtaken(conn, challenge, say=False) is not None:
        return False
    if not await _swapped(conn, challenge, decided, served, event.pipeline_version, _summary(evidence)):
        return False
    log.info("challenge %s of deployment %s: its swap's deploy (pipeline version %s) landed: recorded from the"
             " deployer's event", challenge["id"], challenge["deployment_id"], event.pipeline_version)
    return True


class DeliveryResumer(Sweeper):
    """Delivers again the continuous deployments a process left unfinished (resume_deliveries), in a loop of its own:
    a delivery is a deploy the process waits up to deploy_wait (305 s) for, which in the training starter's sweep
    held back every training start of this process meanwhile. Swaps again the challenges' unfinished swaps too
    (resume_swaps). Nobody wakes it: each look (every 30 s) closes the connection it opened (quiet_pool), where the
    pool's own 30 s idle time kept it open for good."""

    task_name = "delivery-resumer"
    # a stalled delivery or swap is taken up at the first look after its deps.stale_swap (345 s at the defaults)
    every, log, failure = 30.0, log, "continuous deployment resume sweep failed (retried on the next sweep)"

    def __init__(self, deps: ContinuousDeps) -> None:
        self.deps = deps

    def quiet_pool(self) -> asyncpg.Pool:
        return self.deps.base.pool

    async def sweep(self) -> None:
        # a failed delivery sweep does not hold the swaps back, nor the prune: each runs, the first failure is raised
        # at the end (a later one logged here). Not after a cancel (the service stopping): chained by `finally`, a
        # stop during the deliveries' resumes ran the swaps' (deploys waited for up to deploy_wait, 305 s) and the
        # prune before the stop could end
        failure: Exception | None = None
        for step in (resume_deliveries, resume_swaps, prune_sent_deploys, prune_finished_conversions):
            try:
                await step(self.deps)
            except Exception as exc:
                if failure is not None:
                    log.exception(self.failure)
                failure = failure or exc
        if failure is not None:
            raise failure


SETTLED_DELIVERY = (
    "t.delivered_at IS NOT NULL OR (t.delivering_since IS NULL AND t.outcome IS DISTINCT FROM 'failed')")
"""SQL: training `t`'s delivery can no longer be recorded from a deployed event (_delivery_landed): recorded, or closed
unrecorded (a newer training delivered during it; never put back). Claimed or failed, it may be."""
SETTLED_SWAP = "c.state NOT IN ('promoting', 'rolling_back', 'failed')"
"""SQL: challenge `c`'s swap can no longer be recorded from a deployed event (_swap_landed needs it decided, or failed):
recorded (promoted, rolled back) or closed superseded. A failed one may be (its give-up's late deploy; a refusal
redone decides it again)."""


async def prune_sent_deploys(deps: ContinuousDeps) -> int:
    """Delete the sent_deploys rows (migration 024) that can no longer matter, at most PRUNE_BATCH a sweep (the
    DeliveryResumer's, every 30 s); how many. Before, every deploy continuous deployment sent (each delivery, each
    swap, each resume) kept its row for good. A row is kept while a deployed event naming it may still record its
    delivery or swap (on_pipeline_deployed): its delivery claimed or failed, its challenge decided or failed. Settled
    for good (SETTLED_DELIVERY, SETTLED_SWAP: recorded, closed; a training or challenge deleted takes its rows with
    it), it is deleted SENT_SETTLED after it was sent: the event, redelivered or handled by a second process, is
    acknowledged unused then as before (each record is conditional), so nothing changes but the table's size. Not
    while an older row of its deployment and pipeline version is left: a recorded newer row is what keeps that older
    one from being recorded after it (_newer_recorded), and an older one may wait for the retention (given up);
    before, the newer row went an hour after its send and any later event naming the version (a dead letter
    replayed, the same definition deployed again) recorded the older command over it. One
    never settled (a delivery or swap failed for good whose deploy never landed) is deleted after the retention
    (`sent_retention`: nats.events_max_age, 30 days, how long the EVENTS stream keeps the event that would name it;
    a stream keeping events for good keeps these rows too): a deploy landing later than that is not recorded (its
    delivery or swap stays failed). Idempotent; two processes deleting at once delete each row once."""
    return len(await deps.base.pool.fetch(f"DELETE FROM sent_deploys WHERE ctid = ANY(ARRAY({PRUNABLE})) RETURNING 1",
                                          SENT_SETTLED, deps.sent_retention, PRUNE_BATCH))


async def prune_finished_conversions(deps: ContinuousDeps) -> int:
    """Delete the finished_conversions rows (migration 026) older than the events' retention (`sent_retention`:
    nats.events_max_age, how long the EVENTS stream keeps an upload event that would take one; None: kept as long),
    at most PRUNE_BATCH a sweep (the DeliveryResumer's); how many. Most are never taken: every conversion of a
    version no training waits for writes one."""
    if deps.sent_retention is None:
        return 0
    return len(await deps.base.pool.fetch(
        "DELETE FROM finished_conversions WHERE model_version = ANY(ARRAY(SELECT model_version FROM"
        " finished_conversions WHERE finished_at < now() - make_interval(secs => $1::float8) LIMIT $2)) RETURNING 1",
        deps.sent_retention, PRUNE_BATCH))


PRUNABLE = (
    "SELECT s.ctid FROM sent_deploys s LEFT JOIN trainings t ON t.id = s.training_id LEFT JOIN challenges c ON c.id ="
    " s.challenge_id WHERE s.sent_at < now() - make_interval(secs => $2::float8) OR (s.sent_at < now() -"
    f" make_interval(secs => $1) AND ((t.id IS NOT NULL AND ({SETTLED_DELIVERY})) OR (c.id IS NOT NULL AND"
    f" {SETTLED_SWAP})) AND NOT EXISTS (SELECT 1 FROM sent_deploys o WHERE o.deployment_id = s.deployment_id AND"
    " o.pipeline_version = s.pipeline_version AND o.sent_at < s.sent_at)) LIMIT $3")
"""SQL: the sent_deploys rows prune_sent_deploys deletes ($1 SENT_SETTLED, $2 the retention, $3 PRUNE_BATCH); both of
its sent_at bounds are read from the index on sent_at (migration 025), not from every row of the table."""


# --- promotion by the sequential test ----------------------------------------------------------------------------

def top_class(prediction: Any) -> int | None:
    """A classification's answer: the class with the highest score (the first class without scores)."""
    prediction = _json(prediction) or {}
    classes = prediction.get("detection_classes") or []
    scores = prediction.get("detection_scores") or []
    if not classes:
        return None
    if len(scores) == len(classes):
        return int(classes[max(range(len(scores)), key=lambda i: scores[i])])
    return int(classes[0])


async def paired_counts(conn: Any, deployment_id: int, champion: dict[str, Any],
                        challenger: dict[str, Any]) -> challenge_pairs.Pairing:
    """Reviewed predictions that this champion and this challenger both answered, as paired outcomes: for
    classification whether each top class equals the reviewed one, for detection and segmentation which model has the
    higher per-image F1 at IoU 0.5 (challenge_pairs.py)."""
    rows = await conn.fetch(
        "SELECT p.kind, p.prediction, p.shadow_prediction, p.height, p.width, r.ground_truth FROM predictions p"
        " JOIN reviews r ON r.prediction_id = p.id WHERE p.deployment_id = $1 AND"
        " p.shadow_prediction IS NOT NULL AND p.model_version->>'version' = $2 AND"
        " p.shadow_model_version->>'version' = $3 ORDER BY r.created_at, p.id", deployment_id,
        str(champion.get("version")), str(challenger.get("version")))
    # COCOeval over the detections runs off the event loop (a classification pairing is a loop over rows)
    if any(row["kind"] in challenge_pairs.DETECTION_KINDS for row in rows):
        return await asyncio.to_thread(challenge_pairs.pair_rows, [dict(row) for row in rows])
    return challenge_pairs.pair_rows([dict(row) for row in rows])


def challenge_evidence(pairing: challenge_pairs.Pairing, alpha: float, min_sample: int) -> sequential.Evidence:
    """The sequential test on the pairs; for detection pairs, the accuracies are the shares of images each model got
    entirely right and the scores the mean per-image F1."""
    evidence = sequential.evaluate(sequential.PairCounts.from_pairs(pairing.pairs), alpha, min_sample)
    if not pairing.champion_scores:
        return evidence
    n = len(pairing.champion_scores)
    return dataclasses.replace(
        evidence, metric=pairing.metric, champion_score=sum(pairing.champion_scores) / n,
        challenger_score=sum(pairing.challenger_scores) / n,
        champion_accuracy=sum(s == 1.0 for s in pairing.champion_scores) / n if pairing.metric == "f1_iou50"
        else evidence.champion_accuracy,
        challenger_accuracy=sum(s == 1.0 for s in pairing.challenger_scores) / n if pairing.metric == "f1_iou50"
        else evidence.challenger_accuracy)


async def evaluate_challenge(deps: ContinuousDeps, deployment_id: int) -> sequential.Evidence | None:
    """Run the sequential test on the open challenge; on a decision, publish it and swap."""
    pool = deps.base.pool
    async with deps.lock(deployment_id):
        async with pool.acquire() as conn, conn.transaction():
            challenge = await conn.fetchrow("SELECT * FROM challenges WHERE deployment_id = $1 AND state = 'running'"
                                            " FOR UPDATE", deployment_id)
            if challenge is None:
                return None
            champion, challenger = _json(challenge["champion"]), _json(challenge["challenger"])
            pairing = await paired_counts(conn, deployment_id, champion, challenger)
            evidence = challenge_evidence(pairing, challenge["alpha"], challenge["min_sample"])
            state = {sequential.Decision.PROMOTE: "promoting", sequential.Decision.ROLL_BACK: "rolling_back"}.get(
                evidence.decision, "running")
            await conn.execute("UPDATE challenges SET evidence = $2, state = $3, decided_at = CASE WHEN $3 ="
                               " 'running' THEN NULL ELSE now() END WHERE id = $1", challenge["id"],
                               json.dumps(evidence.as_dict()), state)
            if state != "running":  # the decision and its event, or neither
                await _event(conn, subjects.EVENT_MONITORING_CHALLENGER_DECIDED, ChallengerDecided(
                    deployment_id=deployment_id, workspace_id=challenge["workspace_id"], challenge_id=challenge["id"],
                    decision=evidence.decision.value, champion=_ref(champion), challenger=_ref(challenger),
                    evidence=evidence.as_dict()))
        if state == "running":
            return evidence
        deps.events_committed()
        await _apply_decision(deps, challenge, state, evidence)
    return evidence


async def _apply_decision(deps: ContinuousDeps, challenge: asyncpg.Record, state: str,
                          evidence: sequential.Evidence, *, resumed: bool = False, give_up: str | None = None,
                          looked_again: bool = False) -> None:
    """Serve what the decision says (promote: the challenger alone; roll back: the champion alone) and record it with
    its model_swapped. As a delivery (_deliver): a newer training of the deployment delivered while this swap's
    deploy ran may have been served before this deploy ended, and the decided version would then serve in its
    place: checked once the deploy is done, in the transaction that would record it; a newer one found there (one
    query, newest_delivered) leaves the swap unrecorded and that newest training is served again while the
    decided version alone is what serves (_deliver's `displaced`, `alone`), then the challenge is closed
    ('superseded', with the reason). It stays decided until then, so a process dying in between leaves it to
    resume_swap; serving the newest again failing leaves it decided for resume_swap's one more try (`resumed`:
    that try, after which it is closed whatever happens). A deploy unanswered in time (DeployUnanswered) leaves
    it decided too, for resume_swap, and so does a 503, 504 or 429 before it (_for_now). Auth refusing the owner
    fails it and suspends continuous deployment, keeping the refused decision (`swap_refused`) for a set-up or
    re-activation to redo (redo_refused_swap). `give_up` (resume_swap's last resume, past MAX_RESUMES): nothing is
    deployed; the decided version alone serving already (its last deploy landed late) is recorded as the swap done,
    else the challenge is failed with that reason.
    `looked_again` (look_again_at_given_up_swaps, the challenge failed by that give-up): only the decided version
    alone serving changes it (recorded as the swap done); anything else leaves it failed as it was, neither closed
    superseded nor the newest training served again."""
    pool = deps.base.pool
    deployment_id = challenge["deployment_id"]
    champion, challenger = _json(challenge["champion"]), _json(challenge["challenger"])
    cd = await pool.fetchrow("SELECT * FROM continuous_deployment WHERE deployment_id = $1", deployment_id)
    served = challenger if state == "promoting" else champion
    summary = _summary(evidence)
    async with pool.acquire() as conn:  # overtaken already (a resumed or redone swap): the decided version is not
        newest = await _swap_overtaken(conn, challenge)  # served over the newer one, even for a moment
    if newest is not None:
        if not looked_again:  # a given-up swap overtaken since stays failed (its give-up's reason), nothing served
            await _close_overtaken_swap(deps, challenge, state, evidence, newest, served, resumed)
        return
    try:
        version = await _serve(deps, cd["owner_id"], cd["workspace_id"], cd["deployment"], served, None,
                               f"monitoring-deploy-{deployment_id}", expect=(champion, challenger), give_up=give_up,
                               sent=_sent_deploy(pool, deployment_id, challenge_id=challenge["id"]))
    except ServingChanged as exc:
        # overtaken: the deployment serves something else since the decision (a person's deploy, a newer delivery)
        # and the deployer refused the swap's deploy, or the swap saw it first: nothing deployed, nothing to undo
        log.info("challenge %s of deployment %s: its swap is not made: %s", challenge["id"], deployment_id, exc.msg)
        if looked_again:  # failed by its give-up, which said so: not closed again as superseded minutes later
            return
        await pool.execute(
            "UPDATE challenges SET state = 'superseded', reason = $3, swap_refused = NULL WHERE id = $1 AND"
            " state IN ($2, 'failed')", challenge["id"], state,
            f"{evidence.decision.value} decided, but what the deployment serves changed before its swap: not made"
            f" ({exc.msg})")
        return
    except DeployUnanswered as exc:
        log.warning("challenge %s: the swap's deploy %s (%s); swapped again %.0f s after the decision (resume_swap)",
                    challenge["id"], _not_done(exc), exc.msg, deps.stale_swap)
        await _note_swap_held_up(pool, challenge, state, exc)
        return
    except RailyardError as exc:
        if give_up is None and _for_now(exc):  # left decided for resume_swap, as an unanswered deploy
            log.warning("challenge %s: the swap met %s %s (%s); swapped again %.0f s after the decision (resume_swap)",
                        challenge["id"], exc.status, exc.code, exc.msg, deps.stale_swap)
            await _note_swap_held_up(pool, challenge, state, exc)
            return
        log.warning("challenge %s: the swap failed: %s", challenge["id"], exc.msg)
        async with pool.acquire() as conn, conn.transaction():
            if isinstance(exc, OwnerRefused):
                await _suspend_deployment(conn, deployment_id, cd["owner_id"], exc)
            # only while still decided: another process's swap of it (resume_swap) may have finished it meanwhile
            if isinstance(exc, GivenUp):
                reason = f"{evidence.decision.value} decided, but {exc.msg}"
            elif give_up is not None:
                reason = f"{evidence.decision.value} decided, but {give_up}; its last look failed: {_held_up(exc)}"
            else:
                reason = f"{evidence.decision.value} decided, but the swap failed: {exc.msg}"
            await conn.execute("UPDATE challenges SET state = 'failed', reason = $2, swap_refused = $4 WHERE id = $1"
                               " AND state = $3", challenge["id"], reason, state,
                               state if isinstance(exc, OwnerRefused) else None)
        return
    async with pool.acquire() as conn, conn.transaction():  # the swap's record and its event, or neither
        await _record_lock(conn, deployment_id)
        await conn.execute("SELECT 1 FROM challenges WHERE id = $1 FOR UPDATE", challenge["id"])
        newest = await _swap_overtaken(conn, challenge)
        swapped = older = None
        if newest is None:
            # the version it sent (a resume, a look: found serving) carried by a newer command recorded already:
            # closed as on_pipeline_deployed closes it, not recorded after that one
            older = await _older_than_recorded(conn, deployment_id, version, challenge_id=challenge["id"])
            if older is not None:
                await _close_older(conn, older)
            else:
                # once: a decided swap still under way after STALE_SWAP (a deploy may take deploy_wait, 305 s) is
                # resumed by another process too, and both get here; the first records it and writes the event (a
                # failure of the other's swap recorded meanwhile is superseded: this one served)
                swapped = await _swapped(conn, challenge, state, served, version, summary)
    if newest is not None:
        if not looked_again:
            await _close_overtaken_swap(deps, challenge, state, evidence, newest, served, resumed)
        return
    if older is not None:
        return
    if not swapped:
        log.info("challenge %s of deployment %s: its swap was recorded by another process first", challenge["id"],
                 deployment_id)
        return
    deps.events_committed()
    log.info("challenge %s of deployment %s: %s", challenge["id"], deployment_id, summary)


def _summary(evidence: sequential.Evidence) -> str:
    """A decided swap's reason: the sequential test's numbers."""
    return (f"{evidence.decision.value}: challenger {evidence.n01} vs champion {evidence.n10} wins over"
            f" {evidence.pairs} reviewed pairs, log evidence {evidence.log_evidence:.2f} >= log(1/alpha)"
            f" {evidence.threshold:.2f} (alpha {evidence.alpha}, minimum sample {evidence.min_sample})")


async def _swapped(conn: Any, challenge: asyncpg.Record, state: str, served: dict[str, Any], version: str,
                   summary: str) -> bool:
    """A swap's record, in the caller's transaction: the challenge promoted / rolled back with its model_swapped,
    once (only while still decided, or failed: whichever swap of it records first writes it); whether this did."""
    swapped = await conn.fetchval(
        "UPDATE challenges SET state = $2, reason = $3, swap_refused = NULL, swap_held_up = NULL WHERE id = $1 AND"
        " state IN ($4, 'failed') RETURNING 1", challenge["id"], "promoted" if state == "promoting" else "rolled_back",
        summary, state)
    if swapped:
        await _event(conn, subjects.EVENT_MONITORING_MODEL_SWAPPED, ModelSwapped(
            deployment_id=challenge["deployment_id"], workspace_id=challenge["workspace_id"],
            action="promoted" if state == "promoting" else "rolled_back", model_version=_ref(served),
            shadow_model_version=None, pipeline_version=version, reason=summary))
    return bool(swapped)


async def _close_overtaken_swap(deps: ContinuousDeps, challenge: asyncpg.Record, state: str,
                                evidence: sequential.Evidence, newest: asyncpg.Record, served: dict[str, Any],
                                resumed: bool) -> None:
    """A decided swap overtaken by `newest`'s delivery: `newest` is served again while the decided version (`served`)
    alone is what serves, then the challenge is closed superseded, unrecorded (no model_swapped); when serving it
    again failed, left decided for resume_swap's try (`resumed`: this is that try, closed whatever happens)."""
    failed = await _serve_newest_again(deps, newest, served, f"challenge {challenge['id']}")
    if failed is None or resumed:
        await deps.base.pool.execute(
            "UPDATE challenges SET state = 'superseded', reason = $3, swap_refused = NULL WHERE id = $1 AND"
            " state IN ($2, 'failed')", challenge["id"], state,
            f"{evidence.decision.value} decided, but a newer training of the deployment was delivered during its"
            " swap: not recorded, the newer one served again after it"
            + (f"; serving it again failed: {failed}" if failed else ""))


async def _swap_overtaken(conn: Any, challenge: asyncpg.Record, *, say: bool = True) -> asyncpg.Record | None:
    """The newest training of the challenge's deployment delivered after the challenge's own training (the one whose
    delivery opened it), or None: its delivery is newer than this decision's swap, which must not serve over it. A
    challenge without its training (none is opened so) is compared by its start.

    Only a delivery recorded counts (`recorded`), not one still under way: before the deployer's precondition
    (only_if_serving) a swap gave way to it, closing the challenge superseded, and when that delivery then failed
    (or was refused) the decision was never made, the champion and challenger serving on with no challenge. Now
    the two deploys are each made only over the version they looked at, so whichever comes second is refused: the
    swap's, and its challenge is superseded (_apply_decision's ServingChanged); or the delivery's, made again on
    what serves now, the swap's version (_delivery_refused), so it lands after the swap either way."""
    training = None
    if challenge["training_id"] is not None:
        training = await conn.fetchrow("SELECT id, created_at FROM trainings WHERE id = $1", challenge["training_id"])
    if training is None:
        training = {"id": uuid.UUID(int=0), "created_at": challenge["started_at"]}
    newest = await newest_delivered(conn, challenge["deployment_id"], newer_than=training, recorded=True)
    if newest is not None and say:
        log.warning("challenge %s (deployment %s): training %s, newer, was delivered during its swap: serving it"
                    " again after it", challenge["id"], challenge["deployment_id"], newest["id"])
    return newest


async def _serve_newest_again(deps: ContinuousDeps, newest: asyncpg.Record, displaced: dict[str, Any],
                              what: str) -> str | None:
    """Serve the newest delivered training `newest` again after a swap of `what` served `displaced` alone over it
    (only while that is what serves: _deliver's `displaced`, `alone`); None when done, else what failed (logged;
    not recorded on `newest`, whose own delivery may still be under way in another process)."""
    try:
        await _deliver(deps, newest, "DEPLOY_AUTO" if newest["outcome"] == "deployed" else "DEPLOY_SHADOW",
                       again=True, displaced=displaced, alone=True)
    except RailyardError as exc:
        log.warning("%s: serving the newer training %s again failed (%s)", what, newest["id"], exc.msg)
        return exc.msg
    except Exception as exc:
        log.exception("%s: serving the newer training %s again failed unexpectedly", what, newest["id"])
        return f"unexpected error {type(exc).__name__}"
    return None


async def resume_swap(deps: ContinuousDeps, deployment_id: int) -> None:
    """A decision whose swap never finished (the process died mid-way, or its deploy went unanswered) is applied
    again once it is clearly stale (a swap takes seconds); serving what is already served makes no new pipeline
    version. Taken up MAX_RESUMES times already (counted in `swap_resumes`, migration 022), it is failed with the
    reason instead: before, a deploy the deployer never answered was tried every STALE_SWAP without end."""
    async with deps.lock(deployment_id):
        row = await deps.base.pool.fetchrow(
            "UPDATE challenges SET decided_at = now(), swap_resumes = swap_resumes + 1 WHERE deployment_id = $1 AND"
            " state IN ('promoting', 'rolling_back') AND decided_at < now() - make_interval(secs => $2) RETURNING *",
            deployment_id, deps.stale_swap)
        if row is None:
            return
        if row["swap_resumes"] <= MAX_RESUMES:
            await _apply_decision(deps, row, row["state"], _evidence(row), resumed=True)
            return
        # one last look, no deploy: the decided version serving since the previous resume's look (its last deploy
        # landed late) is recorded as the swap done, not failed while it serves
        log.error("challenge %s of deployment %s: its swap did not finish after %d tries: failed unless its version"
                  " serves now", row["id"], deployment_id, row["swap_resumes"])
        give_up = (f"its swap did not finish after {row['swap_resumes']} tries, {deps.stale_swap:.0f} s apart (its"
                   " deploy unanswered, a service unavailable, or the service stopping mid-swap): given up; the"
                   " deployer may still serve its last deploy, made only over the version it was made from"
                   + _last_held_up(row.get("swap_held_up")))
        try:
            await _apply_decision(deps, row, row["state"], _evidence(row), resumed=True, give_up=give_up)
        except Exception:  # the look failed unexpectedly: failed all the same, not looked at for ever
            await deps.base.pool.execute(
                "UPDATE challenges SET state = 'failed', reason = $3 WHERE id = $1 AND state = $2", row["id"],
                row["state"], f"{_evidence(row).decision.value} decided, but {give_up}")
            raise


async def _note_swap_held_up(pool: asyncpg.Pool, challenge: asyncpg.Record, state: str, exc: RailyardError) -> None:
    """_note_held_up for a swap left decided for resume_swap: while it is still decided, and still this try's: a
    resume claims the swap by moving decided_at (resume_swap), so a slower try another process made before that claim
    does not write over the note of the resume's try (the delivery's note is held to its claim likewise). A first try
    (evaluate_challenge's row, read before its decision set decided_at) is held to the state alone."""
    await _note_held_up(pool, f"the swap of challenge {challenge['id']}", "UPDATE challenges SET swap_held_up = $3"
                        " WHERE id = $1 AND state = $2 AND ($4::timestamptz IS NULL OR decided_at = $4)",
                        challenge["id"], state, _held_up(exc), challenge.get("decided_at"))


def _evidence(row: asyncpg.Record) -> sequential.Evidence:
    """The sequential test's evidence a decided challenge's row keeps."""
    stored = _json(row["evidence"])
    return sequential.Evidence(**{k: v for k, v in stored.items() if k != "decision"},
                               decision=sequential.Decision(stored["decision"]))


async def redo_refused_swap(deps: ContinuousDeps, deployment_id: int) -> bool:
    """Continuous deployment was set up again or turned on again: the deployment's last challenge whose swap auth
    refused for the owner (failed, `swap_refused` keeping its decision) is decided again and swapped, as its owner
    now (the set-up's caller, or the owner back), unless a newer challenge opened or a newer training was delivered
    since (then that one is what serves). Whether one was; a failure is the swap's as any (logged, recorded)."""
    async with deps.lock(deployment_id):
        row = await deps.base.pool.fetchrow(
            "UPDATE challenges c SET state = swap_refused, swap_refused = NULL, reason = NULL, decided_at = now(),"
            " swap_resumes = 0, swap_held_up = NULL"  # its tries start again: not a give-up quoting an older one's
            " WHERE deployment_id = $1 AND state = 'failed' AND swap_refused IS NOT NULL AND NOT EXISTS (SELECT 1"
            " FROM challenges n WHERE n.deployment_id = c.deployment_id AND n.started_at > c.started_at) AND NOT"
            " EXISTS (SELECT 1 FROM trainings n WHERE n.deployment_id = c.deployment_id AND n.state = 'done' AND"
            " n.outcome IN ('deployed', 'shadow') AND n.id IS DISTINCT FROM c.training_id AND n.created_at >"
            " COALESCE((SELECT created_at FROM trainings t WHERE t.id = c.training_id), c.started_at)) RETURNING *",
            deployment_id)
        if row is None:
            return False
        try:
            still = await _still_challenged(deps, row)
        except RailyardError:  # what serves cannot be told: the swap's own try records why (the owner refused again)
            still = True
        except Exception as exc:
            # an error of this process's (the database away for a moment): the refusal is put back as it was, for the
            # next set-up or toggle. Before, the claim left it decided, and resume_swap made it STALE_SWAP later
            # without looking at what serves, over a person's change since
            await deps.base.pool.execute(
                "UPDATE challenges SET state = 'failed', swap_refused = $2, reason = $3 WHERE id = $1 AND state = $2",
                row["id"], row["state"], f"{_evidence(row).decision.value} decided, but its swap was refused for the"
                f" owner; making it now failed ({type(exc).__name__}): tried again at the next set-up or toggle")
            raise
        if not still:
            # a person's change (or any other) since the refusal is what serves now: the old decision is not made
            # over it, and not again at a later toggle
            await deps.base.pool.execute(
                "UPDATE challenges SET state = 'failed', reason = $3 WHERE id = $1 AND state = $2", row["id"],
                row["state"], f"{_evidence(row).decision.value} decided, but its swap was refused for the owner and"
                " the deployment no longer serves the challenge's champion with its challenger as shadow: not made")
            log.info("challenge %s of deployment %s: its swap refused for the owner is not made now: the deployment"
                     " serves something else since", row["id"], deployment_id)
            return False
        log.info("challenge %s of deployment %s: its swap refused for the owner is made now that continuous"
                 " deployment is on again", row["id"], deployment_id)
        await _apply_decision(deps, row, row["state"], _evidence(row))
    return True


async def _still_challenged(deps: ContinuousDeps, challenge: asyncpg.Record) -> bool:
    """Whether the deployment still serves what `challenge` compared, its champion shadowed by its challenger (as a
    refused swap left it): a decision made later (redo_refused_swap) is made only then, not over a change since."""
    cd = await deps.base.pool.fetchrow("SELECT * FROM continuous_deployment WHERE deployment_id = $1",
                                       challenge["deployment_id"])
    principal, token = await act_as(deps, cd["owner_id"], cd["workspace_id"],
                                    f"monitoring-deploy-{challenge['deployment_id']}")
    view = await handlers._deployment(deps.base, principal, token, await deployed_name(
        deps, token, cd["deployment"]) or cd["deployment"])
    return _serves_challenge(view.definition, _json(challenge["champion"]), _json(challenge["challenger"]))


async def on_assay_alert(deps: ContinuousDeps, event: AssayThresholdCrossed) -> list[uuid.UUID]:
    """An assay alert (never a warning): counted for every deployment of the alert's workspace whose active
    continuous training is ASSAY_ALERT on the assay's pipeline, once per event_id, and each such deployment's trigger
    checked in the same transaction; the trainings it opened."""
    if event.status != "Alert":
        return []
    rows = await deps.base.pool.fetch(
        "SELECT deployment_id, deployment, owner_id, workspace_id FROM continuous_training WHERE trigger ="
        " 'ASSAY_ALERT' AND active AND workspace_id = $1 AND pipeline_id = $2 ORDER BY deployment_id",
        event.workspace_id, event.pipeline_id)
    opened = []
    for row in rows:
        if not await _alert_counts(deps, row):
            continue
        training_id = await check_trigger(deps, row["deployment_id"], alert=(event.event_id, event))
        if training_id is not None:
            log.info("assay %s alerted on pipeline %s (score %.3f, window %s to %s): continuous training %s of"
                     " deployment %s", event.assay_id, event.pipeline_name, event.score, event.window_start,
                     event.window_end, training_id, row["deployment_id"])
            opened.append(training_id)
    return opened


async def _alert_counts(deps: ContinuousDeps, row: asyncpg.Record) -> bool:
    """Whether an assay alert counts for this ASSAY_ALERT deployment: not while it is not deployed (its pipeline's
    drift is not what it serves, as an alert while continuous training is inactive: not counted, no training, so
    nothing recorded per alert; said once at INFO per process until it is deployed again). When that cannot be
    told (its owner's token refused, a service not answering) the alert counts and the training's start decides,
    with the reason."""
    deployment_id = row["deployment_id"]
    try:
        _, token = await act_as(deps, row["owner_id"], row["workspace_id"], f"monitoring-alert-{deployment_id}")
        deployed = await deployed_name(deps, token, row["deployment"]) is not None
    except RailyardError as exc:
        log.debug("deployment %s: could not tell whether it is deployed (%s): the alert counts", deployment_id,
                  exc.msg)
        return True
    if deployed:
        deps.undeployed.discard(deployment_id)
    elif deployment_id not in deps.undeployed:
        deps.undeployed.add(deployment_id)
        log.info("deployment %s is not deployed: assay alerts on its pipeline are not counted for its continuous"
                 " training (ASSAY_ALERT) until it is deployed again", deployment_id)
    return deployed


async def on_review(deps: ContinuousDeps, event: ReviewCreated) -> None:
    """A review was committed: recount for the trigger, then re-run the open challenge's test."""
    await check_trigger(deps, event.deployment_id)
    await resume_swap(deps, event.deployment_id)
    await evaluate_challenge(deps, event.deployment_id)


# --- transport ---------------------------------------------------------------------------------------------------

def _outbox(runtime: Any) -> outbox.Outbox:
    """The sender of monitoring's outbox (made once per process; started by `start`)."""
    extras = runtime.extras
    if "outbox" not in extras:
        async def publish(subject: str, event: Event) -> None:
            await publish_event(runtime.broker, subject, event)
        extras["outbox"] = outbox.Outbox(runtime.db, publish, event_types=EVENT_TYPES, order_field="deployment_id",
                                         what="monitoring events")
    return extras["outbox"]


def _deps(runtime: Any) -> ContinuousDeps:
    """The slice's deps, made once per process from the running service (after app.start made `deps`)."""
    extras = runtime.extras
    if "continuous" not in extras:
        extras["continuous"] = ContinuousDeps(base=extras["deps"], verify=extras["verifier"].verify,
                                              events_committed=_outbox(runtime).wake,
                                              max_task_timeout=runtime.settings.tasks.max_timeout,
                                              sent_retention=runtime.settings.nats.events_max_age or None,
                                              stale_swap=stale_swap(runtime.settings))
    return extras["continuous"]


async def start(runtime: Any) -> None:
    """Start the outbox's sender (monitoring's events: those this or another process committed) and the training
    starter (runs of trainings the trigger opened, here or in another process)."""
    runtime.extras["outbox_task"] = asyncio.create_task(_outbox(runtime).run())
    starter = TrainingStarter(_deps(runtime))
    starter.start()
    runtime.extras["training_starter"] = starter
    resumer = DeliveryResumer(_deps(runtime))
    resumer.start()
    runtime.extras["delivery_resumer"] = resumer


async def stop(runtime: Any) -> None:
    for name in ("training_starter", "delivery_resumer"):
        background = runtime.extras.get(name)
        if background is not None:
            await background.stop()
    deps = runtime.extras.get("continuous")
    cut = list(deps.background if deps is not None else ())
    for task in cut:  # a redone swap cut short stays decided: resume_swap makes it (resume_swaps, a review)
        task.cancel()
    # ended before stop returns (the service closes its pool and bus next): a cancelled task left pending would run
    # on, its next query or request failing on a closed pool, and the loop's end would destroy it still pending
    await asyncio.gather(*cut, return_exceptions=True)
    task, sender = runtime.extras.get("outbox_task"), runtime.extras.get("outbox")
    if task is not None:  # what is unsent: now if the bus takes it, else at a start (this or another process)
        await sender.stop(task)


def register(router: NatsRouter, runtime: Any) -> None:
    """Continuous training/deployment commands and the event consumers that drive them (called from build_router)."""
    def deps() -> ContinuousDeps:
        return _deps(runtime)

    async def caller(ctx: CallContext) -> Principal:
        return await runtime.extras["verifier"].verify(ctx.token)

    @command(router, subjects.MONITORING_CT_SETUP, service=NAME)
    async def setup_continuous_training(cmd: SetupContinuousTraining, ctx: CallContext) -> ContinuousInformation:
        """Set up (or replace) continuous training: a run every `threshold` reviews (or assay alerts)."""
        who = await caller(ctx)  # the token first: nothing is touched for a caller without one
        return await setup_training(deps(), who, ctx.token, cmd)

    @command(router, subjects.MONITORING_CT_ATTACH, service=NAME)
    async def attach_ct_dataset(cmd: ContinuousTrainingDataset, ctx: CallContext) -> ContinuousInformation:
        """Attach a dataset version to continuous training under an alias."""
        who = await caller(ctx)  # the token first: nothing is touched for a caller without one
        return await attach_dataset(deps(), who, ctx.token, cmd)

    @command(router, subjects.MONITORING_CT_DETACH, service=NAME)
    async def detach_ct_dataset(cmd: DetachContinuousTrainingDataset, ctx: CallContext) -> ContinuousInformation:
        """Detach a dataset version from continuous training."""
        who = await caller(ctx)  # the token first: nothing is touched for a caller without one
        return await detach_dataset(deps(), who, ctx.token, cmd)

    @command(router, subjects.MONITORING_CT_TOGGLE, service=NAME)
    async def toggle_continuous_training(cmd: ToggleContinuous, ctx: CallContext) -> ContinuousInformation:
        """Activate or deactivate continuous training."""
        who = await caller(ctx)  # the token first: nothing is touched for a caller without one
        return await toggle_training(deps(), who, ctx.token, cmd)

    @command(router, subjects.MONITORING_CD_SETUP, service=NAME)
    async def setup_continuous_deployment(cmd: SetupContinuousDeployment,
                                          ctx: CallContext) -> ContinuousInformation:
        """Set the continuous deployment policy."""
        who = await caller(ctx)  # the token first: nothing is touched for a caller without one
        return await setup_deployment(deps(), who, ctx.token, cmd)

    @command(router, subjects.MONITORING_CD_TOGGLE, service=NAME)
    async def toggle_continuous_deployment(cmd: ToggleContinuous, ctx: CallContext) -> ContinuousInformation:
        """Activate or deactivate continuous deployment."""
        who = await caller(ctx)  # the token first: nothing is touched for a caller without one
        return await toggle_deployment(deps(), who, ctx.token, cmd)

    policy = DeliveryPolicy.from_settings(runtime.settings.nats)

    def consumer(subject: str, durable: str, model: type[BaseModel], description: str, title: str | None = None):
        # an event that does not decode, or whose handler fails at every delivery, is kept in dead_letters
        # (shared/consumers.py) instead of being redelivered for ever
        return durable_subscriber(
            router, subject, durable=durable, service=NAME, decode=json_model(model), pool=lambda: runtime.db,
            policy=policy, ack_wait=30.0, batch_size=16,
            title=f"{subject}:{title or model.__name__}:{durable}", description=description)

    @consumer(subjects.EVENT_MONITORING_REVIEW_CREATED, "monitoring-continuous-reviews", ReviewCreated,
              "Recount reviews for the continuous-training trigger and re-run the open challenge's test.")
    async def on_review_created(event: ReviewCreated, message: Any) -> None:
        await on_review(deps(), event)

    @consumer(subjects.EVENT_ASSAY_ALERT, "monitoring-continuous-assay-alerts", AssayThresholdCrossed,
              "Count an assay alert for the ASSAY_ALERT continuous trainings of the deployments on its pipeline "
              "(once per event_id) and open a training at the threshold.")
    async def on_alert(event: AssayThresholdCrossed, message: Any) -> None:
        await on_assay_alert(deps(), event)

    @consumer(subjects.EVENT_MODEL_UPLOADED, "monitoring-continuous-models", ModelUploaded,
              "A model version a training run registered is that training's output.")
    async def on_uploaded(event: ModelUploaded, message: Any) -> None:
        await on_model_uploaded(deps(), event)

    @consumer(subjects.EVENT_MODEL_VERSION_FINISHED, "monitoring-continuous-conversions", ModelVersionFinished,
              "A training's converting model version became ready (or failed).")
    async def on_finished(event: ModelVersionFinished, message: Any) -> None:
        await on_model_finished(deps(), event)

    @consumer(subjects.EVENT_TASK_RUN_SUCCEEDED, "monitoring-continuous-runs-succeeded", TaskRunEvent,
              "A training run succeeded.", title="TaskRunSucceeded")
    async def on_succeeded(event: TaskRunEvent, message: Any) -> None:
        await on_run_ended(deps(), event, succeeded=True)

    @consumer(subjects.EVENT_TASK_RUN_FAILED, "monitoring-continuous-runs-failed", TaskRunEvent,
              "A training run failed.", title="TaskRunFailed")
    async def on_failed(event: TaskRunEvent, message: Any) -> None:
        await on_run_ended(deps(), event, succeeded=False)

    @consumer(subjects.EVENT_PIPELINE_DEPLOYED, DEPLOYED_DURABLE, PipelineDeployed,
              "A deploy continuous deployment sent landed (however late): its delivery or swap recorded.")
    async def on_deployed(event: PipelineDeployed, message: Any) -> None:
        await on_pipeline_deployed(deps(), event)

