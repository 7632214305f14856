"""Business logic of the assay_runner service: creating, listing and running assays, and the scheduler that
scores each window of an active assay once it has closed and the log store holds every record that could belong
to it (compute.py has the arithmetic).

When a window is complete (`LogWatermark`): records travel engine -> INFERENCE_LOGS -> the log store's durable
consumer -> a segment indexed in PostgreSQL, and the log store acknowledges a message only after that commit
(services/log_store/handlers.py, `Ingestor.flush`). So once the consumer's ack floor (the highest stream sequence
up to which every message is acknowledged) has reached the stream's last sequence as it was at some moment,
every record published before that moment is readable. A window `[next_run - width, next_run)` is due
`close_delay` after it closes; it is scored once a moment at or after it was due is covered that way. Until then
it waits, and so do the assay's later windows (a window is scored once, in order); after `max_log_wait` seconds
it is scored with what the log store has (`logs_complete: false` in the result, and a warning in the log).

Several assay runners may share the database: an assay's pass runs under its advisory lock (`store.claim`) and
commits only if no other runner moved its schedule meanwhile (`store.record_results`). Its events are rows of the
outbox written in the same transaction, published by `outbox.Outbox` (docs/assays.md, Events)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from services.assay_runner import compute, store
from services.assay_runner.outbox import Outbox
from shared import paging, subjects
from shared.authz import MembershipLookup, Principal, require_member
from shared.bus import read_held_note
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.lean_imports import lazy_module
from shared.messages.assays import (
    AssayActive,
    AssayConfig,
    AssayCreated,
    AssayResults,
    Assays,
    AssayThresholdCrossed,
    AssayWasCreated,
    BaselineRows,
    GetAssayResults,
    GetBaseline,
    SetAssayActive,
)
from shared.settings import AssaySettings

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # imported by the first assay that runs, not at start (~10 MiB of RSS idle)

log = logging.getLogger("railyard.assay_runner")

# read_field(token, workspace_id, pipeline, model, column, index, start_ms, end_ms) -> values
FieldReader = Callable[[str | None, int, str, str | None, str, int, int, int], Awaitable["np.ndarray"]]
# reference_feature(token, query body) -> the monitoring service's ReferenceFeature as a dict
ReferenceReader = Callable[[str | None, dict[str, Any]], Awaitable[dict[str, Any]]]

PSEUDO_SAMPLE = 1000
"""A Training baseline is summarized on this many values of the reference's piecewise-linear quantile function."""


@dataclass(frozen=True)
class LogProgress:
    """Where the log store stands in INFERENCE_LOGS: the stream's last sequence, and the sequence up to which every
    message of the stream is stored (acknowledged by the log store's durable consumer, which acknowledges a message
    only once its rows are indexed and readable)."""

    last_seq: int
    stored_seq: int
    # the log store's note while it holds batches for their deployments' announcements (shared.bus.held_note): every
    # message up to held_through is stored but the held ones, whose lowest sequence per (workspace, pipeline) is held
    held_through: int = 0
    held: dict[tuple[int, str], int] = field(default_factory=dict)

    def stored_for(self, pipeline: tuple[int, str] | None) -> int:
        """The sequence up to which every message of the (workspace, pipeline) is stored: past the ack floor when
        the batches holding it back are held for other pipelines only."""
        if pipeline is None or self.held_through <= self.stored_seq:
            return self.stored_seq
        first = self.held.get(pipeline)
        return max(self.stored_seq, self.held_through if first is None else min(self.held_through, first - 1))


def log_progress(last_seq: int, ack_floor: int, num_pending: int | None, num_ack_pending: int | None,
                 metadata: dict[str, str] | None = None) -> LogProgress:
    """A LogProgress from the stream's last sequence (asked first) and the consumer's info (asked after it).

    The ack floor is the highest contiguous acknowledged stream sequence. A consumer with nothing undelivered and
    nothing unacknowledged has stored everything the stream had when its info was given, which is at least
    `last_seq`, even where its ack floor lags (a filter that skips messages of other subjects, messages the
    stream removed by age or size before delivery)."""
    stored = ack_floor
    if num_pending == 0 and num_ack_pending == 0:
        stored = max(stored, last_seq)
    through, held = read_held_note(metadata)
    return LogProgress(last_seq=last_seq, stored_seq=stored, held_through=through, held=held)


@dataclass
class LogWatermark:
    """Until when every record published to INFERENCE_LOGS is readable in the log store (`through`).

    A mark (t, s) says: everything published by t has a sequence <= s (the stream's last sequence, asked for
    after t). Once the log store has stored through s, `through` moves to t. A mark whose sequence equals the
    newest's only moves that one's time on (nothing was published between them), so marks are one per distinct
    sequence; marks older than `keep` seconds are dropped (a window due then is scored anyway by then)."""

    marks: deque[tuple[datetime, int]] = field(default_factory=deque)
    through: datetime | None = None
    since: datetime | None = None  # the first moment this process asked (or noted): waits are counted from it
    failing_since: float | None = None
    progress: LogProgress | None = None  # the last answer (`covers` of one pipeline)
    asking: asyncio.Lock = field(default_factory=asyncio.Lock)  # one question at a time: answers in order

    def note(self, now: datetime, progress: LogProgress, keep: float) -> None:
        if self.since is None:
            self.since = now
        self.progress = progress
        if self.marks and progress.last_seq < self.marks[-1][1]:
            self.marks.clear()  # the stream was deleted and made again: its sequences start over
        if self.marks and now <= self.marks[-1][0]:
            pass  # a caller's moment older than the newest mark (it waited for another's question): says no more
        elif self.marks and self.marks[-1][1] == progress.last_seq:
            self.marks[-1] = (now, progress.last_seq)
        else:
            self.marks.append((now, progress.last_seq))
        while self.marks and self.marks[0][1] <= progress.stored_seq:
            moment = self.marks.popleft()[0]
            self.through = moment if self.through is None else max(self.through, moment)
        while self.marks and self.marks[0][0] < now - timedelta(seconds=keep):
            self.marks.popleft()

    def covers(self, moment: datetime, pipeline: tuple[int, str] | None = None) -> bool:
        """Is every record published by `moment` readable in the log store (of the (workspace, pipeline) given:
        batches the log store holds for other pipelines' announcements are not waited for)?"""
        if self.through is not None and moment <= self.through:
            return True
        if pipeline is None or self.progress is None:
            return False
        stored = self.progress.stored_for(pipeline)
        return any(at >= moment and seq <= stored for at, seq in self.marks)

    async def update(self, now: datetime, deps: Deps) -> None:
        """Ask where the log store stands (`now` taken before asking); on failure `through` stays where it was."""
        if deps.log_progress is None:
            return
        if self.since is None:
            self.since = now
        async with self.asking:  # the scheduler and run_interactive requests share the watermark
            try:
                progress = await deps.log_progress()
            except Exception as exc:
                if self.failing_since is None or time.monotonic() - self.failing_since > 60:
                    log.warning("could not ask how far the log store has stored INFERENCE_LOGS (windows wait, at "
                                "most %.0f s): %s", deps.settings.max_log_wait, exc)
                    self.failing_since = time.monotonic()
                return
            self.failing_since = None
            self.note(now, progress, deps.settings.max_log_wait + deps.settings.close_delay + 60)


@dataclass
class Deps:
    pool: asyncpg.Pool
    settings: AssaySettings
    membership: Callable[[str | None], MembershipLookup]
    read_field: FieldReader
    pipeline_of: Callable[[str | None, int], Awaitable[dict[str, Any]]]
    log_page: Callable[[str | None, dict[str, Any]], Awaitable[list[dict[str, Any]]]]
    # the events of committed changes: woken after a commit that added some (outbox.py); None: nothing is sent
    # (unit tests that read the store's calls)
    outbox: Outbox | None = None
    reference_feature: ReferenceReader | None = None
    # where the log store stands in INFERENCE_LOGS; None: windows are scored once due, without waiting for it
    log_progress: Callable[[], Awaitable[LogProgress]] | None = None
    watermark: LogWatermark = field(default_factory=LogWatermark)
    # set after a change of an assay's schedule (created, activated): the scheduler looks at once (`scheduler_wait`)
    scheduled: asyncio.Event = field(default_factory=asyncio.Event)


def _ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _jsonb(value: Any) -> Any:
    """A jsonb column as asyncpg returns it (text unless a codec is set)."""
    return json.loads(value) if isinstance(value, str) else value


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return _utc(moment).isoformat().replace("+00:00", "Z") if moment else None


@dataclass
class Plan:
    """A checked assay configuration."""

    config: AssayConfig
    column: str
    index: int
    width: float
    interval: float
    summarizer: dict[str, Any]


def plan(cfg: AssayConfig) -> Plan:
    column, index = compute.parse_iopath(cfg.iopath)
    if cfg.baseline.Training is not None and (not column.startswith("in.") or index != 0):
        raise InvalidRequest(f"with a Training baseline the iopath names an image feature of the training reference, "
                             f"e.g. 'input brightness_mean', not {cfg.iopath!r}")
    summarizer = cfg.summarizer.model_dump()
    compute.check_summarizer(summarizer)
    width = compute.parse_duration(cfg.window.width, "window.width")
    interval = compute.parse_duration(cfg.window.interval, "window.interval") if cfg.window.interval else width
    for what, moment in (("window.start", cfg.window.start),
                         ("baseline.Fixed.end_at", cfg.baseline.Fixed.end_at if cfg.baseline.Fixed else None)):
        if moment is not None and _utc(moment) > datetime.max.replace(tzinfo=UTC) - timedelta(seconds=width):
            # the first window (from here, one width long) would end past year 9999: OverflowError, a 500
            raise InvalidRequest(f"{what}: {moment.isoformat()} is too late: its first window of {cfg.window.width!r} "
                                 "would end after 9999-12-31")
    if cfg.baseline.Fixed is not None and _ms(cfg.baseline.Fixed.end_at) <= _ms(cfg.baseline.Fixed.start_at):
        raise InvalidRequest("baseline.Fixed.end_at must be after start_at")
    if cfg.warning_threshold is not None and cfg.warning_threshold > cfg.alert_threshold:
        raise InvalidRequest("warning_threshold must not be above alert_threshold")
    return Plan(cfg, column, index, width, interval, summarizer)


async def _check_pipeline(deps: Deps, principal: Principal, token: str | None, cfg: AssayConfig) -> None:
    await require_member(deps.membership(token), principal, cfg.workspace_id)
    pipeline = await deps.pipeline_of(token, cfg.pipeline_id)
    if pipeline["workspace_id"] != cfg.workspace_id:
        raise NotFound(f"pipeline {cfg.pipeline_id} not found in workspace {cfg.workspace_id}")
    if pipeline["name"] != cfg.pipeline_name:
        raise InvalidRequest(f"pipeline {cfg.pipeline_id} is named {pipeline['name']!r}, not {cfg.pipeline_name!r}")


async def _check_named_assay(deps: Deps, cfg: AssayConfig) -> None:
    """The assay a run_interactive (or run_interactive_baseline) body names by `id` (the seed's "identifier for
    the assay"; its results echo it as `assay_id`) is one of the body's pipeline, in its workspace: else a 404, as
    get_results answers. Before, any id was echoed (99999: a 200 whose results named an assay that does not exist).
    No id (the SDK's run_assay, a preview of an assay not created) is scored as before. After _check_pipeline: the
    caller is a member of cfg.workspace_id, so an assay of another workspace is the same 404 as none."""
    if cfg.id is None:
        return
    row = await store.get(deps.pool, cfg.id)
    if row is None or row["workspace_id"] != cfg.workspace_id or row["pipeline_id"] != cfg.pipeline_id:
        raise NotFound(f"assay {cfg.id} not found in pipeline {cfg.pipeline_id} (leave `id` out to score an assay "
                       "that is not created)")


async def _training(deps: Deps, token: str | None, p: Plan, start_ms: int | None = None,
                    end_ms: int | None = None) -> dict[str, Any]:
    """The Training baseline's feature from the monitoring service (and its values in a window): with a token by
    the deployment's name, checked with the caller's rights; without one (the scheduler) by the id kept at create."""
    cfg = p.config
    training = cfg.baseline.Training
    assert training is not None and deps.reference_feature is not None
    body: dict[str, Any] = {"workspace_id": cfg.workspace_id, "feature": p.column.removeprefix("in."),
                            "start_ms": start_ms, "end_ms": end_ms}
    if token is not None:  # the pipeline checked by the monitoring service first (its 400 before a 409 not ready)
        body["deployment"] = training.deployment
        body["pipeline_name"] = cfg.pipeline_name
    else:
        body["deployment_id"] = training.deployment_id
    answer = await deps.reference_feature(token, body)
    if token is not None and answer["pipeline_name"] != cfg.pipeline_name:
        raise InvalidRequest(f"deployment {training.deployment!r} serves pipeline {answer['pipeline_name']!r}, not "
                             f"{cfg.pipeline_name!r}: an assay on a training reference belongs to its pipeline")
    training.deployment_id = answer["deployment_id"]
    return answer


def training_values(reference: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(quantile levels, values) of a training-reference feature: min, the inner deciles, max."""
    levels = np.linspace(0.0, 1.0, len(reference["edges"]) + 2)
    return levels, np.asarray([reference["min"], *reference["edges"], reference["max"]], dtype=np.float64)


def training_baseline(reference: dict[str, Any], summarizer: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """The baseline summary and bin boundaries of a training-reference feature, which keeps its deciles, not its
    values. Quantile bins take the reference's quantiles (exact when num_bins divides 10, linear between deciles
    otherwise); Equal bins split [min, max]. Densities are those of the piecewise-linear quantile function sampled
    at PSEUDO_SAMPLE evenly spaced levels (exactly 1/num_bins per Quantile bin when the feature varies); count,
    mean, std, min, max and median are the reference's own."""
    levels, quantiles = training_values(reference)
    pseudo = np.interp((np.arange(PSEUDO_SAMPLE) + 0.5) / PSEUDO_SAMPLE, levels, quantiles)
    if summarizer.get("provided_edges") is None and summarizer.get("bin_mode", "Quantile") == "Quantile":
        bounds = np.interp(np.linspace(0.0, 1.0, int(summarizer.get("num_bins", 5)) + 1), levels, quantiles)
        quantile_names = True
    else:
        bounds = compute.boundaries(quantiles, summarizer)
        quantile_names = False
    summary = compute.summarize(pseudo, bounds, summarizer, quantile_names, None, None)
    summary |= {"count": int(reference["count"]), "mean": float(reference["mean"]), "std": float(reference["std"]),
                "min": float(reference["min"]), "max": float(reference["max"]),
                "median": float(np.interp(0.5, levels, quantiles))}
    return summary, bounds


async def _baseline(deps: Deps, token: str | None, p: Plan) -> tuple[dict[str, Any], np.ndarray, datetime | None]:
    """(baseline summary, bin boundaries, baseline end)."""
    cfg = p.config
    if cfg.baseline.Training is not None:
        answer = await _training(deps, token, p)
        summary, bounds = training_baseline(answer["reference"], p.summarizer)
        return summary, bounds, None
    if cfg.baseline.Static is not None:
        values = np.asarray(cfg.baseline.Static.values, dtype=np.float64)
        start = end = None
    else:
        fixed = cfg.baseline.Fixed
        start, end = _utc(fixed.start_at), _utc(fixed.end_at)
        values = await deps.read_field(token, cfg.workspace_id, fixed.pipeline, fixed.model, p.column, p.index,
                                       _ms(start), _ms(end))
        if len(values) == 0:
            raise InvalidRequest(f"the baseline (pipeline {fixed.pipeline!r}{_answered_by(fixed.model)}, {_iso(start)} "
                                 f"to {_iso(end)}) has no logged values of {cfg.iopath!r}")
    if not np.isfinite(values).all():
        raise InvalidRequest("the baseline has NaN or infinite values")
    bounds = compute.boundaries(values, p.summarizer)
    quantile_names = p.summarizer.get("provided_edges") is None and p.summarizer.get("bin_mode") == "Quantile"
    return compute.summarize(values, bounds, p.summarizer, quantile_names, start, end), bounds, end


def _answered_by(model: str | None) -> str:
    """The model filter of a Fixed baseline or a window, in a message about logs found empty: only the rows that model
    answered count (a model name the pipeline never ran, or misspelt, finds none), which the message left unsaid."""
    return f", only rows model {model!r} answered" if model else ""


def _ordered(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and _utc(end) < _utc(start):
        raise InvalidRequest(f"end {_iso(end)} is before start {_iso(start)}")


def _result(p: Plan, assay_id: int | None, baseline: dict[str, Any], window: dict[str, Any], started: float,
            status: str | None = None) -> dict[str, Any]:
    cfg = p.config
    weights = p.summarizer.get("bin_weights")
    value, scores, bin_index = compute.score(baseline["aggregated_values"], window["aggregated_values"],
                                             p.summarizer["metric"], weights)
    shown = {k: v for k, v in p.summarizer.items() if k not in ("bin_width", "add_outlier_edges")}
    return {"id": None, "assay_id": assay_id, "window_start": window["start"],
            "analyzed_at": _iso(datetime.now(UTC)), "elapsed_millis": int((time.perf_counter() - started) * 1000),
            "iopath": cfg.iopath, "pipeline_id": cfg.pipeline_id, "baseline_summary": baseline,
            "window_summary": window, "warning_threshold": cfg.warning_threshold,
            "alert_threshold": cfg.alert_threshold, "score": value, "scores": scores, "bin_index": bin_index,
            "summarizer": shown, "status": status or compute.status(value, cfg.warning_threshold, cfg.alert_threshold),
            "created_at": None}


async def _window(deps: Deps, token: str | None, p: Plan, bounds: np.ndarray, start: datetime, end: datetime
                  ) -> dict[str, Any] | None:
    cfg = p.config
    if cfg.baseline.Training is not None:
        answer = await _training(deps, token, p, _ms(start), _ms(end))
        values = np.asarray(answer["values"], dtype=np.float64)
    else:
        values = await deps.read_field(token, cfg.workspace_id, cfg.window.pipeline, cfg.window.model, p.column,
                                       p.index, _ms(start), _ms(end))
    if len(values) == 0:
        return None
    values = values[np.isfinite(values)]
    return compute.summarize(values, bounds, p.summarizer, False, start, end) if len(values) else None


# ---- routes ----

def closed_windows(p: Plan, first_start: datetime, until: datetime) -> int:
    """How many of the windows [first_start + k·interval, + width) have ended by `until`."""
    span = (until - first_start).total_seconds() - p.width
    return 0 if span < 0 else int(span // p.interval) + 1


def refuse_a_long_backlog(p: Plan, first_start: datetime, max_windows: int) -> None:
    """A scheduled assay starts with every window already closed (from window.start to now, or to run_until): more
    than `max_windows` (what one run_interactive may score) is refused. The scheduler scores them all, in order and
    `max_windows` a pass, one log store read each, before the assay's first new window: a start a month back with 1-s
    windows was 2.6 million reads, about five hours of catching up (150 windows a second measured) with every new
    window held behind them; ten years back, decades."""
    now = datetime.now(UTC)
    until = min(now, _utc(p.config.run_until)) if p.config.run_until else now
    closed = closed_windows(p, first_start, until)
    if closed > max_windows:
        raise InvalidRequest(
            f"window.start {_iso(first_start)} leaves {closed} windows of {p.config.window.width} already closed, more "
            f"than the {max_windows} a scheduled assay may start with (it scores every one before its first new "
            "window): give a later window.start or a wider window.width or window.interval")


async def create(deps: Deps, principal: Principal, token: str | None, cfg: AssayConfig) -> AssayCreated:
    p = plan(cfg)
    first_start = _utc(cfg.window.start) if cfg.window.start else datetime.now(UTC)
    refuse_a_long_backlog(p, first_start, deps.settings.max_windows)
    await _check_pipeline(deps, principal, token, cfg)
    await _refuse_a_taken_name(deps.pool, cfg)  # before the baseline's reads: a taken name costs nothing
    baseline, bounds, _ = await _baseline(deps, token, p)
    stored = cfg.model_dump(mode="json")
    stored["baseline"] = {kind: spec for kind, spec in stored["baseline"].items() if spec is not None}
    async with deps.pool.acquire() as conn, conn.transaction():  # the assay and its event, or neither
        await store.lock_name(conn, cfg.pipeline_id, cfg.name)
        await _refuse_a_taken_name(conn, cfg)  # again under the name's lock: a create of the same name meanwhile
        assay_id = await store.create(
            conn, cfg.workspace_id, cfg.pipeline_id, cfg.pipeline_name, cfg.name, cfg.active, "created",
            stored, cfg.warning_threshold, cfg.alert_threshold, p.width, p.interval,
            _utc(cfg.run_until) if cfg.run_until else None, first_start + timedelta(seconds=p.width),
            {**baseline, "_bounds": bounds.tolist()}, uuid.UUID(principal.user_id))
        await store.add_event(conn, subjects.EVENT_ASSAY_CREATED, AssayWasCreated(
            assay_id=assay_id, name=cfg.name, workspace_id=cfg.workspace_id, pipeline_id=cfg.pipeline_id,
            pipeline_name=cfg.pipeline_name, iopath=cfg.iopath))
    deps.scheduled.set()
    if deps.outbox is not None:
        # published before the answer when the outbox sends it at once, as before the outbox; a failure is the
        # outbox's to retry, not a 500. Waited for CREATED_EVENT_WAIT at most: the send waits for a round under
        # way (after a bus outage, the whole backlog of alerts) and for JetStream's ack (up to 5 s each when it does
        # not answer), so the answer came after the gateway's request timeout (5 s): a 504 for a stored assay, and
        # a client that tried again created it twice. The send goes on; the assay is answered.
        sending = asyncio.ensure_future(deps.outbox.send())
        _SENDING.add(sending)
        sending.add_done_callback(_created_event_sent)
        try:
            await asyncio.wait_for(asyncio.shield(sending), CREATED_EVENT_WAIT)
        except TimeoutError:
            log.info("assay %s: its events.assay.created goes out with the outbox's round under way", assay_id)
        except Exception:  # noqa: BLE001, S110 - told by _created_event_sent
            pass
    return AssayCreated(assay_id=assay_id)


async def _refuse_a_taken_name(db: asyncpg.Pool | asyncpg.Connection, cfg: AssayConfig) -> None:
    """An assay's name is unique in its pipeline (decision, December 2026; docs/assays.md, Names): a second create
    of a name is a 409 `conflict` naming the assay that has it, and nothing is stored. It was accepted, and the
    pipeline's list, its events and alerts then showed two assays no reader could tell apart by name."""
    taken = await store.named(db, cfg.pipeline_id, cfg.name)
    if taken is not None:
        raise Conflict(f"pipeline {cfg.pipeline_name!r} (id {cfg.pipeline_id}) already has an assay named "
                       f"{cfg.name!r} (assay {taken}): give this one another name (assay names are unique in a "
                       "pipeline), or turn that one off or on with assays/set_active")


CREATED_EVENT_WAIT = 1.0
"""Seconds `create` waits for the outbox to send the new assay's events.assay.created before it answers."""
_SENDING: set[asyncio.Future] = set()  # those sends, held until they end (the loop keeps only weak references)


def _created_event_sent(sending: asyncio.Future) -> None:
    _SENDING.discard(sending)
    if not sending.cancelled() and sending.exception() is not None:
        log.warning("events.assay.created is left to the outbox's next round: %s", sending.exception())


def _listing(row: Any) -> dict[str, Any]:
    config = _jsonb(row["config"])
    return {"id": row["id"], "name": row["name"], "active": row["active"], "status": row["status"],
            "warning_threshold": row["warning_threshold"], "alert_threshold": row["alert_threshold"],
            "pipeline_id": row["pipeline_id"], "pipeline_name": row["pipeline_name"],
            "workspace_id": row["workspace_id"], "iopath": config["iopath"], "last_run": _iso(row["last_run"]),
            "next_run": _iso(row["next_run"]), "run_until": _iso(row["run_until"]),
            "updated_at": _iso(row["updated_at"]), "baseline": config["baseline"], "window": config["window"],
            "summarizer": {k: v for k, v in config["summarizer"].items() if k not in ("bin_width",
                                                                                     "add_outlier_edges")}}


async def list_assays(deps: Deps, principal: Principal, token: str | None, pipeline_id: int,
                      limit: int | None = None, cursor: str | None = None) -> Assays:
    """A pipeline's assays, newest first: all of them, or a page (shared/paging.py; the cursor is the last id)."""
    before = paging.after(cursor, "assays/list")
    pipeline = await deps.pipeline_of(token, pipeline_id)
    await require_member(deps.membership(token), principal, pipeline["workspace_id"])
    # a page reads its own rows (and one more: whether another page follows), not the whole list each time
    rows = await store.by_pipeline(deps.pool, pipeline_id, before, None if limit is None else limit + 1)
    assays, next_cursor = await paging.page(rows, limit, _listing)
    return Assays(assays=assays, next_cursor=next_cursor)


async def _assay(deps: Deps, principal: Principal, token: str | None, assay_id: int) -> Any:
    """The assay's row; one of a workspace the caller is not in is "not found" in the same words as one that does
    not exist. Before, `get_results` and `set_active` on another workspace's assay answered "workspace N not
    found", which told an outsider that the assay exists and in which workspace."""
    row = await store.get(deps.pool, assay_id)
    if row is None:
        raise NotFound(f"assay {assay_id} not found")
    try:
        await require_member(deps.membership(token), principal, row["workspace_id"])
    except NotFound:
        raise NotFound(f"assay {assay_id} not found") from None
    return row


def resumed_next_run(next_run: datetime, interval_seconds: float, run_until: datetime | None, now: datetime,
                     max_windows: int) -> tuple[datetime, int]:
    """(next_run, windows skipped) of an assay turned on again: the windows it owes end at next_run, next_run +
    interval, ... up to now (or run_until); of more than `max_windows` only the newest `max_windows` are scored (the
    schedule starts at the first of them), as `create` refuses a start with more closed windows. Without the bound a
    1-second assay paused for a day scored its 86,400 windows, a log store read each, before its first new one."""
    until = min(now, run_until) if run_until else now
    if until < next_run:
        return next_run, 0
    interval = timedelta(seconds=interval_seconds)
    owed = (until - next_run) // interval + 1
    skipped = max(0, owed - max_windows)
    return next_run + skipped * interval, skipped


async def set_active(deps: Deps, principal: Principal, token: str | None, cmd: SetAssayActive) -> AssayActive:
    """Turn an assay on or off; one turned on again scores at most the newest `max_windows` windows it owes
    (`resumed_next_run`): the older ones are not scored (logged at INFO)."""
    await _assay(deps, principal, token, cmd.id)
    skipped: list[tuple[int, float]] = []  # (windows not scored, interval) of a resume

    def resume(row: Any) -> datetime:
        moved, count = resumed_next_run(row["next_run"], row["interval_seconds"], row["run_until"], datetime.now(UTC),
                                        deps.settings.max_windows)
        skipped.append((count, row["interval_seconds"]))
        return moved

    moved = await store.set_active(deps.pool, cmd.id, cmd.active, resume=resume if cmd.active else None)
    if moved is not None and skipped[0][0]:
        (paused_at, first), (count, interval) = moved, skipped[0]
        log.info("assay %s turned on again owing more than %d windows: the %d windows ending %s to %s are not scored; "
                 "its results go on from the window ending %s", cmd.id, deps.settings.max_windows, count,
                 _iso(paused_at), _iso(first - timedelta(seconds=interval)), _iso(first))
    deps.scheduled.set()
    return AssayActive(id=cmd.id, active=cmd.active)


async def run_baseline(deps: Deps, principal: Principal, token: str | None, cfg: AssayConfig) -> dict[str, Any]:
    started = time.perf_counter()
    p = plan(cfg)
    await _check_pipeline(deps, principal, token, cfg)
    await _check_named_assay(deps, cfg)
    baseline, bounds, _ = await _baseline(deps, token, p)
    edges, names = compute.edges_and_names(bounds, p.summarizer, False)
    as_window = {**baseline, "edges": edges, "edge_names": names}
    result = _result(p, cfg.id, baseline, as_window, started, status="BaselineRun")
    return result


async def run_interactive(deps: Deps, principal: Principal, token: str | None, cfg: AssayConfig) -> AssayResults:
    """Every window from the window start (default: the end of a Fixed baseline) until now or run_until, each
    scored against the baseline; windows without logged values are left out (400 if all are; no results when no
    window has ended yet). Nothing waits for the log store: each result says whether it had every record
    (`logs_complete`, as a scheduled one; false for a window that closed less than `close_delay` ago or whose records
    the log store has not all stored yet)."""
    p = plan(cfg)
    await _check_pipeline(deps, principal, token, cfg)
    await _check_named_assay(deps, cfg)
    baseline, bounds, baseline_end = await _baseline(deps, token, p)
    start = _utc(cfg.window.start) if cfg.window.start else baseline_end
    if start is None:
        raise InvalidRequest("window.start is needed with a Static or Training baseline")
    now = datetime.now(UTC)
    await deps.watermark.update(now, deps)
    limit = min(now, _utc(cfg.run_until)) if cfg.run_until else now
    first = start
    results = []
    windows = 0
    while start + timedelta(seconds=p.width) <= limit:
        windows += 1
        if windows > deps.settings.max_windows:
            raise InvalidRequest(f"more than {deps.settings.max_windows} windows: set window.start or run_until "
                                 "closer together, or a wider interval")
        started = time.perf_counter()
        end = start + timedelta(seconds=p.width)
        window = await _window(deps, token, p, bounds, start, end)
        if window is not None:
            results.append(_result(p, cfg.id, baseline, window, started)
                           | {"logs_complete": bool(window_ready(deps, end, now, cfg.baseline.Training is None,
                                                               (cfg.workspace_id, cfg.window.pipeline)))})
        start += timedelta(seconds=p.interval)
    if not windows:  # a window is scored once it has ended: none has, so there are no results yet (seed 001:
        # "returns all of the results for this assay at this time", a list), as get_results of a new assay answers;
        # it was a 400 "no window has ended yet", which the seed's own example (window.start None, the baseline
        # ending now) met
        return AssayResults(results=[])
    if not results:
        raise InvalidRequest(f"no window from {_iso(first)} until {_iso(limit)} has logged values of "
                             f"{cfg.iopath!r} (pipeline {cfg.window.pipeline!r}{_answered_by(cfg.window.model)})")
    return AssayResults(results=results)


async def get_baseline(deps: Deps, principal: Principal, token: str | None, cmd: GetBaseline) -> BaselineRows:
    """Logged rows of a pipeline (flat columns, as the seed shows), oldest first within start..end, or the newest
    `limit` without a range."""
    await require_member(deps.membership(token), principal, cmd.workspace_id)
    if (cmd.start is None) != (cmd.end is None):
        raise InvalidRequest("start and end go together: give both or neither")
    _ordered(cmd.start, cmd.end)  # the log store's own words named its fields: "start_time is after end_time"
    body: dict[str, Any] = {"pipeline_id": cmd.pipeline_name, "workspace_id": cmd.workspace_id,
                            "page_size": cmd.limit or 1000}
    if cmd.start is not None:
        body |= {"start_time": _iso(cmd.start), "end_time": _iso(cmd.end), "order": "Asc"}
    rows = await deps.log_page(token, body)
    if cmd.model_name:
        from shared.logrecords import model_name_of  # pyarrow's module, loaded by log_page already

        rows = [r for r in rows if model_name_of(r.get("metadata.last_model")) == cmd.model_name]
    return BaselineRows(rows=rows)


async def get_results(deps: Deps, principal: Principal, token: str | None, cmd: GetAssayResults) -> AssayResults:
    _ordered(cmd.start, cmd.end)  # answered [] before: no result is both after start and before end
    row = await _assay(deps, principal, token, cmd.assay_id)
    if cmd.pipeline_id is not None and cmd.pipeline_id != row["pipeline_id"]:
        raise NotFound(f"assay {cmd.assay_id} not found in pipeline {cmd.pipeline_id}")
    rows = await store.results(deps.pool, cmd.assay_id, _utc(cmd.start) if cmd.start else None,
                               _utc(cmd.end) if cmd.end else None, cmd.limit or 1000)
    out = []
    for r in rows:
        result = _jsonb(r["result"])
        out.append({**result, "id": r["id"], "created_at": _iso(r["analyzed_at"])})
    return AssayResults(results=out)


# ---- the scheduler ----

SCHEDULER_IDLE = 60.0
"""The scheduler's longest wait: no assay active, or the next window far off. An assay created or activated by this
process wakes it at once (`Deps.scheduled`); by another assay runner, it is seen within this."""


def scheduler_wait(next_run: datetime | None, now: datetime, settings: AssaySettings) -> float:
    """Seconds until the scheduler's next pass: `tick` while a window is due (scored, or waiting for the log store),
    else until the earliest active window is due, at most SCHEDULER_IDLE. It looked every tick (1 s) whether anything
    was due, with nothing active too, which kept a PostgreSQL backend open for good in an idle stack."""
    if next_run is None:
        return max(settings.tick, SCHEDULER_IDLE)
    until = (next_run - now).total_seconds() + settings.close_delay
    return min(max(settings.tick, until), max(settings.tick, SCHEDULER_IDLE))


async def run_due(deps: Deps) -> int:
    """Score every closed window of every active assay that is due and complete (module docstring); returns how
    many results were stored."""
    now = datetime.now(UTC)
    stored = 0
    due_before = now - timedelta(seconds=deps.settings.close_delay)
    due = await store.due(deps.pool, due_before)
    if due:
        await deps.watermark.update(now, deps)
    for listed in due:
        try:  # a config that no longer reads included: one assay's problem stops no other
            # under the assay's lock, read again: another assay runner may be scoring it (skipped: it is its
            # pass) or have moved it on since `due` was read
            async with store.claim(deps.pool, listed["id"], due_before) as claimed:
                if claimed is None:
                    continue
                conn, row = claimed
                config = AssayConfig.model_validate(_jsonb(row["config"]))
                stored += await _run_assay(deps, row, config, now, conn)
        except Exception as exc:  # the assay's own problem (a field gone, the log store away): try next tick
            log.warning("assay %s could not run: %s", listed["id"], exc)
    return stored


def window_ready(deps: Deps, window_end: datetime, now: datetime, reads_logs: bool = True,
                 pipeline: tuple[int, str] | None = None) -> bool | None:
    """Whether a closed window may be scored now: True when the log store holds every record published until it was
    due (`close_delay` after `window_end`), False when it does not but the window has waited `max_log_wait` (scored
    with what there is), None when it waits. Without `log_progress`, or for a window that reads no logs (a Training
    baseline's reads the monitoring service's predictions), True once due.

    The wait counts from the window's due time or from this process's first question to NATS, whichever is later:
    a window that fell due while the assay runner was stopped cannot be known complete before the log store has
    stored past the first mark, and is not given up on at the first tick merely because it is old."""
    due_at = window_end + timedelta(seconds=deps.settings.close_delay)
    if due_at > now:
        return None
    if not reads_logs or deps.log_progress is None or deps.watermark.covers(due_at, pipeline):
        return True
    waiting_since = max(due_at, deps.watermark.since or now)
    return False if (now - waiting_since).total_seconds() >= deps.settings.max_log_wait else None


async def _run_assay(deps: Deps, row: Any, cfg: AssayConfig, now: datetime, conn: Any = None) -> int:
    """Score the assay's due windows and commit them; `conn`: the connection holding its lock (`store.claim`), used
    for the commit (else one of the pool's)."""
    p = plan(cfg)
    saved = _jsonb(row["baseline_summary"])
    bounds = np.asarray(saved.pop("_bounds"), dtype=np.float64)
    width, interval = timedelta(seconds=row["width_seconds"]), timedelta(seconds=row["interval_seconds"])
    run_until = row["run_until"]
    next_run = row["next_run"]
    results: list[dict[str, Any]] = []
    for _ in range(deps.settings.max_windows):
        if run_until and next_run > run_until:
            break
        complete = window_ready(deps, next_run, now, reads_logs=cfg.baseline.Training is None,
                                pipeline=(cfg.workspace_id, cfg.window.pipeline))
        if complete is None:  # not due yet, or the log store has not stored all it could hold: wait, in order
            break
        if not complete:
            log.warning("assay %s: window %s to %s is scored after waiting %.0f s for the log store, which has not "
                        "stored every record published until it was due; late records are not in it", row["id"],
                        _iso(next_run - width), _iso(next_run), deps.settings.max_log_wait)
        started = time.perf_counter()
        window = await _window(deps, None, p, bounds, next_run - width, next_run)
        if window is not None:
            result = _result(p, row["id"], saved, window, started)
            result |= {"logs_complete": complete, "_start": next_run - width, "_end": next_run}
            results.append(result)
            if result["status"] in ("Warning", "Alert"):
                subject = subjects.EVENT_ASSAY_ALERT if result["status"] == "Alert" else subjects.EVENT_ASSAY_WARNING
                result["_event"] = (subject, AssayThresholdCrossed(
                    assay_id=row["id"], name=row["name"], workspace_id=row["workspace_id"],
                    pipeline_id=row["pipeline_id"], pipeline_name=row["pipeline_name"], iopath=cfg.iopath,
                    status=result["status"], score=result["score"], warning_threshold=cfg.warning_threshold,
                    alert_threshold=cfg.alert_threshold, window_start=_iso(next_run - width),
                    window_end=_iso(next_run)))
        next_run += interval
    still_active = not (run_until and next_run > run_until)
    if next_run == row["next_run"] and still_active:
        return 0  # its due window waits for the log store: nothing to store or move yet
    status = results[-1]["status"] if results else row["status"]
    # the results, their events (the outbox's) and the move of next_run in one transaction, if no other runner
    # has moved next_run meanwhile
    if not await store.record_results(conn or deps.pool, row["id"], results, now, next_run, still_active, status,
                                      read_next_run=row["next_run"]):
        log.info("assay %s: windows from %s were stored by another assay runner meanwhile", row["id"],
                 _iso(row["next_run"] - width))
        return 0
    if deps.outbox is not None and any("_event" in r for r in results):
        deps.outbox.wake()
    return len(results)
