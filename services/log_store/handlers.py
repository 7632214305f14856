"""Business logic of the log_store service: ingestion, get_logs pages, and maintenance.

Ingestion: a durable pull consumer on INFERENCE_LOGS, which waits for work when idle (IDLE_FETCH: one fetch of one
message, not a fetch every `flush_interval`). Batches gather for `flush_interval` seconds (or
`segment_max_bytes`), are de-duplicated by batch id (within the gathering and against the ids already
committed), grouped per pipeline and schema, written as Parquet segments to object storage, indexed in one
transaction that also records their batch ids, and only then acknowledged. A crash anywhere before the commit
leaves the messages unacknowledged (redelivered, and at worst an object no index row names, which
maintenance deletes); a crash after it makes the redelivered batches known duplicates. A `Railyard-Segment`
message describes a segment an engine replica wrote itself (shared/log_segments.py): it is indexed as it is, as
soon as it is fetched unless descriptions were indexed less than `flush_interval` ago (then with those that come
until it is up: one transaction, the same flush as rows'; rows fetched with it gather on), the log store writing
or deleting no object for it; an unindexed engine segment is kept for
the stream's age cap plus an hour (its description may still be on the way) before maintenance deletes it. A batch
is taken only when its `Railyard-Log` header agrees with the deployer's announcement of the deployment its subject
names (`Ingestor.check_owners`, deployments.py); one that disagrees is quarantined, one of a deployment not
announced yet waits unacknowledged.

Pages (services/log_store/pages.py): rows of every schema merged by (time, position), where a row's position
is the number it was given when stored (per pipeline) and never changes; a cursor is the last row's (time,
position), so a page continues exactly after the previous one however segments are compacted meanwhile. Each
segment is written with its rows sorted by (time, position).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
import nats.errors

from services.log_store import pages, store
from services.log_store.deployments import Deployments
from services.log_store.segments import POS, SegmentReader, drop_unwritable, empty_page, encode_segment
from services.log_store.waits import IDLE_FETCH
from shared import subjects
from shared.authz import MembershipLookup, Principal, require_admin, require_member
from shared.bus import held_note, log_store_consumer_config
from shared.consumers import DeliveryPolicy
from shared.errors import InvalidRequest, NotFound, echo
from shared.lean_imports import lazy_module
from shared.log_segments import (
    ENGINE_SUFFIX,
    SEGMENT_HEADER,
    SegmentRef,
    day_folders,
    describe,
    key_moment,
    key_prefix,
    key_time,
    segment_key,
    sort_by_time,
)
from shared.logrecords import (
    BATCH_ID,
    LOG_HEADER,
    META_LAST_MODEL,
    MSG_ID,
    REQUESTS_HEADER,
    TIME,
    check_dataset_names,
    expand_runs,
    model_name_of,
    schema_fingerprint,
    storage_order,
)
from shared.messages.logs import (
    MAX_RETENTION_DAYS,
    GetLogs,
    ListQuarantinedLogs,
    LogMaintenanceReport,
    LogPage,
    LogRetention,
    QuarantinedLog,
    QuarantinedLogs,
    ReadLogField,
    SetLogRetention,
)
from shared.objectstore import BUCKET_LOGS, BUCKET_TABLES, MinioObjectStore
from shared.pg_text import headers_jsonb, no_nul
from shared.service import DurableConsumer, set_up_durable_consumers
from shared.settings import LogSettings

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
else:  # imported with the first log batch or read, not at start (~50 MiB of RSS idle)
    np = lazy_module("numpy")
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")

log = logging.getLogger("railyard.log_store")
ORPHAN_AGE = 3600.0
ORPHAN_SLACK = 300.0  # seconds an orphan sweep's window reaches back past the previous one's (writers' clocks)
# a pipeline this process heard of no write for is still listed once its windows to list span this many seconds:
# writes it cannot hear of (an engine that died between storing a segment and describing it, another log store
# process's) have their orphans deleted this much later at most
ORPHAN_UNHEARD_LIST = 3600.0
ORPHAN_LISTINGS_AT_ONCE = 8  # ranged listings of one sweep in flight together (S3 answers each in ~ms; 2 cores)
MAX_ATTEMPTS = 3  # tries of one flush before its messages are stored one by one, then quarantined
QUARANTINE_PREFIX = "quarantine/"
TRANSIT_PREFIXES = ("inference/", "fields/")  # in BUCKET_TABLES: see _purge
FETCH_BYTES = 8 * 1024 * 1024
LOG_SUBJECT_PREFIX = "logs.inference."
# a batch whose deployment the deployer has not announced (deployments.py) comes back this many seconds later, twice
# that after its second delivery, and so on up to UNKNOWN_RETRY_MAX: ~65 redeliveries in UNKNOWN_WAIT, not 1,800.
# Once this process records the announcement, its held batches are asked back at once (`Ingestor.wake_held`); once
# another log-store process recorded it, when its NOTIFY is heard (deployments.CHANNEL) or at the next look in
# PostgreSQL (`Ingestor.look_up_held`)
UNKNOWN_RETRY = 2.0  # the default of logs.unknown_retry (RAILYARD_LOGS__UNKNOWN_RETRY; 0.5 s in the test stack)
UNKNOWN_RETRY_MAX = 60.0
# batches held at most at once (they count in the consumer's max_ack_pending, 50,000: at that many the server sends
# no other batch); one more of a deployment not announced is quarantined at once, so ingestion goes on
HOLD_MAX = 10_000
# ... and at most a quarter of the bytes INFERENCE_LOGS may hold (settings.stream_max_bytes): a full stream refuses
# every engine's batches
HOLD_SHARE = 4
# at a start, ingestion waits at most this long for the announcements consumer to read EVENTS' backlog: a log store
# back from a stop judged the batches of deployments announced meanwhile before knowing them, and past the hold's
# bounds (a busy deployment's batches of the stop) quarantined them at once
START_WAIT = 60.0
HOLD_STALE = 300.0  # seconds after which a held batch not seen again is forgotten (gone from the stream)
# ... and is quarantined once it waited this long in the stream (a deployment no announcement will come for: one
# announced before EVENTS' age cap at an upgrade, or a subject no deployment has)
UNKNOWN_WAIT = 3600.0
UNKNOWN_LOG_EVERY = 60.0  # seconds between two log lines about one deployment's batches waiting
HELD_FRESH = 2 * UNKNOWN_RETRY_MAX  # seconds a held batch not seen again still counts as held (`note_held`)
HELD_NOTE_EVERY = 1.0  # seconds between two looks at the consumer while batches are held (`Ingestor.note_held`)
STOP_WAIT = 5.0  # seconds a stop waits for the flush under way before it cancels the loop
# IDLE_FETCH (waits.py): seconds an idle consumer loop waits for its next message, in one fetch of one
ANNOUNCED_MAX = 4096  # announcements noted between two turns of the loop at most; past it every held batch is woken
# seconds between two looks in PostgreSQL, while batches are held, for announcements another log-store process recorded
HELD_LOOKUP_EVERY = 1.0
# ... a deployment not found is looked up again HELD_LOOKUP_EVERY later, twice that after the next miss, and so on up
# to HELD_LOOKUP_MAX (its NOTIFY, deployments.CHANNEL, is what brings an announcement promptly; these looks make up
# for one lost): ~125 looks at one never announced in its UNKNOWN_WAIT, not 3,600
HELD_LOOKUP_MAX = 30.0
HELD_LOOKUP_BACKOFF = DeliveryPolicy(backoff=HELD_LOOKUP_EVERY, backoff_max=HELD_LOOKUP_MAX)
HOLD_PRUNE_EVERY = 10.0  # seconds between two sweeps of held entries not seen for HOLD_STALE


@dataclass
class Batch:
    msg: Any
    batch_id: str
    workspace_id: int
    pipeline: str
    table: pa.Table | None  # None: an engine stored the rows itself (`ref`)
    requests: dict[str, tuple[int, int]] = field(default_factory=dict)  # rows of requests to store once
    ref: SegmentRef | None = None
    deployment: str | None = None  # the header's (checked against the subject and the deployer's announcement)


class Held(NamedTuple):
    """A batch left unacknowledged for its deployment's announcement: when it was last held (monotonic), its bytes,
    the deployment its subject names, the reply subject of its last delivery (to ask it back by), the workspace
    and pipeline its header names and the consumer sequence of that delivery (`Ingestor.note_held`; None: unknown,
    and then nothing is noted)."""

    at: float
    size: int
    deployment: str
    reply: str | None
    owner: tuple[int, str]
    delivery: int | None = None


@dataclass
class Deps:
    pool: asyncpg.Pool
    objects: MinioObjectStore
    settings: LogSettings
    reader: SegmentReader
    membership: Callable[[str | None], MembershipLookup]
    pipeline_exists: Callable[[str | None, int, str], Awaitable[bool]]
    orphan_sweep: OrphanSweep = field(default_factory=lambda: OrphanSweep())


@dataclass
class OrphanSweep:
    """Where the orphan sweep got to (`_sweep_orphan_segments`): the cutoffs of its last whole listing (the log
    store's own segments, engines'), None before the first, and how far each pipeline's windows reached since;
    keys it saw that were too young to judge; when this process last heard of a segment of each pipeline being
    named (by key prefix: its own writes, an engine's descriptions, accepted or refused)."""

    last: tuple[float, float] | None = None
    pending: dict[str, float] = field(default_factory=dict)
    relist_at: float | None = None  # when to list the whole bucket again, for keys no later window lists
    reached: dict[str, tuple[float, float]] = field(default_factory=dict)
    heard: dict[str, list[float]] = field(default_factory=dict)

    def hear(self, prefix: str, engine: bool, moment: float) -> None:
        """A segment key under `prefix` may have been named at about `moment` (this process's clock)."""
        times = self.heard.setdefault(prefix, [0.0, 0.0])
        times[engine] = max(times[engine], moment)


def key_pipeline_prefix(key: str) -> str | None:
    """The pipeline prefix (`key_prefix`) of a segment key `ws-<id>/<pipeline>/<yyyy/mm/dd>/<name>`."""
    parts = key.rsplit("/", 4)
    return parts[0] + "/" if len(parts) == 5 and parts[0].startswith("ws-") else None


def hear_description(sweep: OrphanSweep, msg: Any) -> None:
    """An engine's segment description came (whether it is stored, refused or quarantined): its segment's pipeline
    is listed by the sweeps until their windows pass now (an unindexed segment is exactly an orphan)."""
    headers = msg.headers or {}
    if not headers.get(SEGMENT_HEADER):
        return
    now = time.time()
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        meta = json.loads(headers[LOG_HEADER])
        sweep.hear(key_prefix(int(meta["workspace_id"]), str(meta["pipeline"])), True, now)
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        prefix = key_pipeline_prefix(json.loads(msg.data)["key"])
        if prefix is not None:
            sweep.hear(prefix, True, now)


class Unreadable(Exception):
    """A stream message that is not an inference log batch (quarantined with this reason)."""


def is_description(msg: Any) -> bool:
    """Whether a stream message is an engine's segment description (`Railyard-Segment`), not rows."""
    return bool((getattr(msg, "headers", None) or {}).get(SEGMENT_HEADER))


def message_batch_id(msg: Any) -> str:
    headers = msg.headers or {}
    return headers.get(BATCH_ID) or headers.get(MSG_ID) or f"seq-{msg.metadata.sequence.stream}"


def parse_batch(msg: Any, probe: bool = False) -> Batch:
    """A stream message as a batch; input/output columns Parquet cannot store are dropped and listed in
    `metadata.dropped` (with `probe`, any such column that fails to encode alone). Unreadable when it is not
    a batch at all."""
    headers = msg.headers or {}
    try:
        meta = json.loads(headers[LOG_HEADER])
        if headers.get(SEGMENT_HEADER):  # the engine stored the segment: its description only
            workspace_id, pipeline = int(meta["workspace_id"]), str(meta["pipeline"])
            ref = SegmentRef.from_json(msg.data, workspace_id, pipeline)
            return Batch(msg, message_batch_id(msg), workspace_id, pipeline, None, ref=ref,
                         deployment=_deployment_of(meta))
        table = storage_order(expand_runs(pa.ipc.open_stream(pa.py_buffer(msg.data)).read_all()))
        if TIME not in table.column_names or table.num_rows == 0:
            raise ValueError("no rows or no time column")
        if not pa.types.is_integer(table.schema.field(TIME).type):
            raise ValueError(f"time is {table.schema.field(TIME).type}, not milliseconds as an integer")
        table, dropped = drop_unwritable(table, probe)
        if dropped:
            log.warning("%s: columns Parquet cannot store were dropped from %d rows: %s", msg.subject,
                        table.num_rows, ", ".join(dropped))
        requests = {str(k): (int(v[0]), int(v[1])) for k, v in json.loads(headers.get(REQUESTS_HEADER) or "{}").items()}
        return Batch(msg, message_batch_id(msg), int(meta["workspace_id"]), str(meta["pipeline"]), table, requests,
                     deployment=_deployment_of(meta))
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, pa.ArrowException) as exc:
        raise Unreadable(f"not an inference log batch: {type(exc).__name__}: {exc}"[:500]) from None


def _deployment_of(meta: dict[str, Any]) -> str | None:
    deployment = meta.get("deployment")
    return deployment if isinstance(deployment, str) else None


def subject_deployment(subject: str) -> str:
    """The deployment a log batch's subject names (`logs.inference.<deployment>`, shared/logrecords.log_subject)."""
    return subject[len(LOG_SUBJECT_PREFIX):] if subject.startswith(LOG_SUBJECT_PREFIX) else ""


def _describe(table: pa.Table, key: str, size: int, workspace_id: int, pipeline: str) -> store.NewSegment:
    """The index row of a segment the log store wrote: the engine's description of the same table (one
    definition, so both kinds of segment are indexed alike)."""
    return _segment_row(workspace_id, pipeline, describe(table, key, size))


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of one fingerprint as one (cast to the first's schema where list items are named otherwise)."""
    if len(tables) == 1:
        return tables[0]
    first = tables[0].schema
    return pa.concat_tables([t if t.schema.equals(first) else t.cast(first) for t in tables])


class Ingestor:
    """The consumer loop (one task); `flush` is the unit that is durable before it is acknowledged."""

    def __init__(self, deps: Deps, js: Any, events_committed: Callable[[], None] = lambda: None,
                 deployments: Deployments | None = None, nc: Any = None) -> None:
        self.deps = deps
        self.js = js
        self.nc = nc if nc is not None else getattr(js, "_nc", None)  # the connection held batches are asked back by
        # whose each deployment is (the deployer's announcements): a batch is taken only when its header agrees
        self.deployments = deployments
        self.waiting: dict[str, float] = {}  # deployment not announced yet -> when its batches waiting were logged
        self.held = 0  # batches left unacknowledged because their deployment was not announced yet
        # stream sequence of each batch held now -> when it was held, its bytes, deployment, reply subject, owner
        self.holding: dict[int, Held] = {}
        # deployments this process recorded an announcement of since the loop last looked (`announced`); None: more
        # than ANNOUNCED_MAX, every held batch is asked back
        self.announced_names: set[str] | None = set()
        self.noted: dict[str, str] | None = None  # the held note last written to the consumer (`note_held`)
        self.noted_at = 0.0
        self.looked_up_at = 0.0  # when `look_up_held` last asked PostgreSQL
        # deployment of batches held here -> (looks in PostgreSQL that did not find it, when it is looked up next)
        self.lookup_plan: dict[str, tuple[int, float]] = {}
        self.listening = False  # LISTENing for recorded deployments is wanted (`listen`)
        self.lookup_failed = False
        # the consumer sequences of the latest unbroken run of deliveries this process received (`saw`): from the first
        # (None: broken, a delivery of unknown sequence) to the last. A gap is a delivery to another process
        self.deliveries_from: int | None = None
        self.last_delivery = 0
        if deployments is not None:
            deployments.on_recorded = self.announced
        self.holding_bytes = 0
        self.pruned = 0.0
        # a quarantine's event is put in the outbox with its row (store.quarantine); called after that commit: the
        # outbox (app.py) sends it now, while ingestion goes on (it waited for each publish's ack before)
        self.events_committed = events_committed
        self.quarantined = 0
        self.task: asyncio.Task | None = None
        self.running = True
        self.fetch_batch = 16
        self.idle: asyncio.Future | None = None  # the idle loop's fetch (`idle_fetch`), which a stop cancels

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """The consumer's CONSUMER.INFO (and CREATE when missing), what `pull_subscribe` did unretried, tried again
        while JetStream does not answer (shared.service.set_up_durable_consumers: a late answer ended the start with
        "TimeoutError: nats: timeout"); the bind asks nothing. Nothing is started when `stop` came first."""
        consumer = DurableConsumer(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE, "logs.inference.>",
                                   log_store_consumer_config(self.deps.settings.ack_wait))
        if not await set_up_durable_consumers(self.js, [consumer], stop or asyncio.Event()):
            return
        self.sub = await self.js.pull_subscribe_bind(durable=consumer.durable, stream=consumer.stream)
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        """Let a flush under way finish (its messages are then acknowledged), then stop fetching; after STOP_WAIT the
        loop is cancelled (what it had not acknowledged is redelivered). A cancel of stop() itself cancels the loop and
        is raised: before, `except CancelledError: pass` took it for the loop's and stop() returned normally. Bounded
        with asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the loop's result instead of raising
        when the loop ends in the step the cancel comes (bpo-42130); asyncio.wait raises nothing of the loop's, so
        a CancelledError here is stop()'s own."""
        self.running = False
        if self.idle is not None:  # waiting for a message with nothing to flush: nothing to wait for
            self.idle.cancel()
        task = self.task
        if task is None:
            return
        try:
            async with asyncio.timeout(STOP_WAIT):
                await asyncio.wait({task})
        except TimeoutError:
            task.cancel()
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        # the loop has ended: its subscription goes, so the server drops a pull request still waiting there (the idle
        # fetch's, up to IDLE_FETCH, whose wait was cancelled above). app.py closes this connection only after the
        # deployer's announcements stop, and a record published meanwhile went to this process, never acknowledged,
        # and came back to another only after ack_wait (30 s)
        with contextlib.suppress(Exception):  # the connection closed or lost: its requests went with it
            await self.sub.unsubscribe()
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("the inference log consumer had stopped on an error", exc_info=error)

    async def run(self) -> None:
        ready = getattr(self.deployments, "ready", None)
        if ready is not None and not ready.is_set():
            try:
                await asyncio.wait_for(ready.wait(), START_WAIT)
            except TimeoutError:
                log.warning("the deployer's announcements were not all read in %.0f s; ingestion starts", START_WAIT)
        settings = self.deps.settings
        pending: list[Any] = []  # rows fetched, gathering
        size = 0
        opened = 0.0
        # segment descriptions fetched, not indexed yet: indexed at once unless descriptions were indexed less than
        # flush_interval ago, then with those that come until it is up (at most one such flush per flush_interval,
        # as when they gathered with rows: a busy stack's ~10-20 segments a second cost no more transactions). The
        # engine gathered their rows for engine_segment_ms already and there is nothing to write: waiting here only
        # made a lone record readable ~0.25 s later (docs/performance.md item 85)
        described: list[Any] = []
        indexed = -settings.flush_interval  # when descriptions were last indexed (monotonic)
        while self.running:
            if self.holding or self.listening:
                await self.listen()
            if self.holding:
                self.prune_held()
                await self.look_up_held()
            if self.announced_names is None or self.announced_names:
                await self.wake_held(pending + described)
            if self.holding and not pending and not described:
                await self.note_held()
            due = [opened] if pending else []
            if described:
                due.append(indexed)
            wait = settings.flush_interval if not due else max(0.01, min(due) + settings.flush_interval
                                                                - time.monotonic())
            try:
                if pending or described or self.holding or self.listening:
                    msgs = await self.sub.fetch(batch=self.fetch_batch, timeout=wait)
                else:  # idle: wait for work, not for flush_interval
                    msgs = await self.idle_fetch()
            except (TimeoutError, nats.errors.TimeoutError):  # no message in time: since nats-py 2.15 also the
                msgs = []  # builtin TimeoutError, when the deadline runs out between fetch's two pull requests
            except Exception as exc:  # bus trouble: wait and fetch again (unacked messages stay in the stream)
                log.warning("fetching inference logs failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if msgs:
                self.saw(msgs)
                # at most ~8 MiB per fetch: the server cuts off a client that falls far behind its socket
                average = sum(len(m.data) for m in msgs) / len(msgs)
                self.fetch_batch = max(1, min(1024, int(FETCH_BYTES // max(average, 1))))
            rows = [m for m in msgs if not is_description(m)]
            if rows and not pending:
                opened = time.monotonic()
            pending += rows
            size += sum(len(m.data) for m in rows)
            described += [m for m in msgs if is_description(m)]
            if described and time.monotonic() - indexed >= settings.flush_interval:
                indexed = time.monotonic()
                await self.flush_with_retry(described)
                described = []
            if pending and (time.monotonic() - opened >= settings.flush_interval or size >= settings.segment_max_bytes
                            or len(pending) >= 20_000):
                await self.flush_with_retry(pending)
                pending, size = [], 0

    async def idle_fetch(self) -> list[Any]:
        """The idle loop's fetch: one message, waited for up to IDLE_FETCH (nats-py's fetch of one is one lingering
        pull request, which the server answers with the first message published: measured on a bare nats-server,
        ~2 ms after the publish, as the 0.25-s fetch it replaces answered). Those that come with it are fetched by
        the loop's next, batched fetch at once. `[]` when a stop ended the wait."""
        if not self.running:  # stopped during this turn's awaits: not waited for
            return []
        self.idle = asyncio.ensure_future(self.sub.fetch(batch=1, timeout=IDLE_FETCH))
        try:
            return await self.idle
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.running or (current is not None and current.cancelling()):
                raise  # the loop's own cancel (stop's after STOP_WAIT, or anyone's)
            return []  # stop() cancelled the wait
        finally:
            self.idle = None

    def saw(self, msgs: list[Any]) -> None:
        """Deliveries this process received, in the order the server sent them: the run of consumer sequences with no
        gap (`deliveries_from`..`last_delivery`) goes on, or starts again after one (`note_held`)."""
        for msg in msgs:
            delivery = _consumer_seq(msg)
            if delivery is None:
                self.deliveries_from, self.last_delivery = None, 0
            elif delivery != self.last_delivery + 1 or self.deliveries_from is None:
                self.deliveries_from, self.last_delivery = delivery, delivery
            else:
                self.last_delivery = delivery

    def announced(self, name: str) -> None:
        """The deployer's announcement of deployment `name` was recorded (Deployments.record): the batches of it held
        here are asked back at the loop's next turn (`wake_held`), not at their nak's delay (up to a minute)."""
        if self.announced_names is not None:
            self.announced_names.add(name)
            if len(self.announced_names) > ANNOUNCED_MAX:
                self.announced_names = None

    async def listen(self) -> None:
        """While batches are held here, LISTEN for the deployments any log-store process records
        (Deployments.listen): each one heard is `announced`, its held batches asked back at the loop's next turn.
        When listening (re)starts, every held deployment is looked up at the next look (`look_up_held`): what was
        recorded before was not heard."""
        wanted = bool(self.holding)
        if await self.deployments.listen(wanted):
            self.lookup_plan.clear()
        self.listening = wanted

    async def look_up_held(self) -> None:
        """Note as announced the deployments of batches held here whose announcement another log-store process
        recorded, in case its NOTIFY was not heard (`listen`: not listening yet, the connection dropped). The
        announcements consumer gives each announcement to one process (during a rolling update two run), and only
        that one hears of it (`announced`); every process reads the `deployments` table, so each asks it, at most
        every HELD_LOOKUP_EVERY while it holds batches not asked back yet and seen within HELD_FRESH, for those
        batches' deployments that are due (one indexed query; a deployment this process knows is answered from its
        cache). A deployment not found is due again after HELD_LOOKUP_EVERY, then twice that, up to HELD_LOOKUP_MAX:
        before, one never announced was asked of PostgreSQL every second until its batches were quarantined (an
        hour)."""
        now = time.monotonic()
        if self.deployments is None or now - self.looked_up_at < HELD_LOOKUP_EVERY:
            return
        self.looked_up_at = now
        # only batches seen here within HELD_FRESH (one held here comes back at least every UNKNOWN_RETRY_MAX): an
        # entry whose batch went to another process or left the stream is not looked up until `prune_held` drops it
        held = {held.deployment for held in self.holding.values()
                if held.reply is not None and now - held.at < HELD_FRESH}
        self.lookup_plan = {name: plan for name, plan in self.lookup_plan.items() if name in held}
        names = sorted(name for name in held if self.lookup_plan.setdefault(name, (0, now))[1] <= now)
        if not names:
            return
        try:
            found = await self.deployments.lookup(names)
        except Exception as exc:  # PostgreSQL away: they come back at their nak's delay, or at the next look
            if not self.lookup_failed:
                log.warning("looking up the deployments of held inference log batches failed: %s", exc)
            self.lookup_failed = True
            return
        self.lookup_failed = False
        for name in names:
            if name in found:
                self.lookup_plan.pop(name, None)
                self.announced(name)
            else:
                misses = self.lookup_plan[name][0] + 1
                self.lookup_plan[name] = (misses, now + HELD_LOOKUP_BACKOFF.delay(misses))

    async def wake_held(self, fetched: list[Any]) -> int:
        """Ask the server to deliver again, now, the held batches of the deployments announced since the last look
        (all of them after more than ANNOUNCED_MAX announcements). A plain NAK of a message the consumer still has
        pending puts it on the server's redelivery queue at once (nats-server's processNak), where the nak that held
        it set a delay. Called by the loop between two flushes, never from the announcements' task: a flush that
        looked a deployment up before its announcement was recorded and holds its batch after would otherwise set
        the delay again after the wake-up (lost, the batch back up to a minute later). A batch fetched again and
        not flushed yet (`fetched`) is left alone: its flush finds the announcement. The redelivered batches are
        checked as any batch is; one delivered twice (its delay ran out as well) is a known batch id the second
        time, acknowledged and skipped. The number of batches asked back."""
        names, self.announced_names = self.announced_names, set()
        if self.nc is None or not self.holding:
            return 0
        again = {_stream_seq(msg) for msg in fetched}
        woken = 0
        for seq, held in list(self.holding.items()):
            if seq in again or held.reply is None or (names is not None and held.deployment not in names):
                continue
            try:
                await self.nc.publish(held.reply, b"-NAK")
            except Exception as exc:  # it comes back at its nak's delay instead
                log.warning("asking held inference log batches back failed (they come back later): %s", exc)
                break
            # released: no longer held here (it comes back here and is taken, or held anew; or another process
            # takes it). Before, its entry stayed, asked back no more, until the hold was full (`may_hold`)
            self.release_held(seq)
            woken += 1
        if woken:
            log.info("%d held inference log batches asked back: their deployments were announced", woken)
        return woken

    def release_held(self, seq: int) -> Held | None:
        """The entry of a batch held here dropped (taken, asked back, quarantined); it, or None if none."""
        held = self.holding.pop(seq, None)
        if held is not None:
            self.holding_bytes -= held.size
        return held

    def prune_held(self) -> None:
        """Drop the entries of batches not seen here for HOLD_STALE (taken by another process, gone from the stream
        at its caps; one held here comes back at least every UNKNOWN_RETRY_MAX): at most every HOLD_PRUNE_EVERY
        seconds. Before, only a full hold dropped them (`may_hold`)."""
        now = time.monotonic()
        if now - self.pruned < HOLD_PRUNE_EVERY:
            return
        self.pruned = now
        self.holding = {seq: held for seq, held in self.holding.items() if now - held.at < HOLD_STALE}
        self.holding_bytes = sum(held.size for held in self.holding.values())

    async def note_held(self) -> None:
        """While batches are held, note in the consumer's metadata (shared.bus.held_note) the sequence up to which
        every other message is acknowledged and the workspace and pipeline each held batch's header names, so that
        the assay runner, which reads the consumer's ack floor to know the log complete, waits only for batches
        held for its own window's pipeline (a held batch holds the floor, one number for the whole stream, and so
        every assay before). Called by the loop with nothing fetched unflushed. Written only when the consumer's
        unacknowledged messages are these held batches and nothing else, which the count alone does not say (a held
        batch stored by another process after a redelivery, or gone from the stream, while as many others are in
        flight elsewhere, counts the same): so also when every delivery the consumer made since the held batches'
        were made was to this process (their consumer sequences and the ones after up to the consumer's last run
        on with no gap: no other process got one of them back, nor has anything of those in flight) and none lies
        below the stream's first sequence (gone at its age cap). Otherwise nothing is noted: the note written
        last stays true, and windows wait for the floor. At most every HELD_NOTE_EVERY seconds, written only when it
        changed."""
        now = time.monotonic()
        if now - self.noted_at < HELD_NOTE_EVERY:
            return
        self.noted_at = now
        # a held batch comes back at least every UNKNOWN_RETRY_MAX: one not seen for twice that was stored by another
        # process or has left the stream; an older one still unacknowledged makes the counts differ (no note)
        fresh = {seq: held for seq, held in self.holding.items() if now - held.at < HELD_FRESH}
        if not fresh or self.deliveries_from is None or any(
                held.delivery is None or held.delivery < self.deliveries_from for held in fresh.values()):
            return
        try:
            info = await self.js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
            if info.num_ack_pending != len(fresh) or info.delivered is None \
                    or info.delivered.consumer_seq != self.last_delivery:
                return
            # asked after the consumer: a held batch gone at the age cap before its count was taken lies below it
            stream = await self.js.stream_info(subjects.INFERENCE_LOGS_STREAM)
            if min(fresh) < int(stream.state.first_seq or 0):
                return
            held: dict[tuple[int, str], int] = {}
            for seq, batch in fresh.items():
                held[batch.owner] = min(seq, held.get(batch.owner, seq))
            note = held_note(int(info.delivered.stream_seq or 0), held)
            if note is None or note == self.noted:
                return
            # the consumer's own settings as they are (an operator's pause, a limit tuned), only the note changed; the
            # server's `_nats.` keys are its own to write
            config = info.config
            config.metadata = {key: value for key, value in (config.metadata or {}).items()
                               if not key.startswith("_nats.")} | note
            await self.js.add_consumer(subjects.INFERENCE_LOGS_STREAM, config=config)
            self.noted = note
        except Exception as exc:  # windows wait for the floor meanwhile, as without a note
            log.warning("noting the held inference log batches in the consumer failed: %s", exc)

    async def flush_with_retry(self, msgs: list[Any], probe: bool = False) -> None:
        """Store the messages, retrying a few times. A group that still fails is stored one message at a time,
        so one bad batch holds up no other; a single batch that still fails while the database and object
        storage answer is quarantined (kept whole with the reason) and ingestion goes on. While the stores
        themselves fail, nothing is quarantined: the flush waits and tries again."""
        delay, attempts = 0.2, 0
        while True:
            try:
                await self.flush(msgs, probe)
                return
            except store.Raced:
                continue  # another writer committed one of these batches meanwhile: filter again
            except Exception as exc:
                attempts += 1
                if attempts < MAX_ATTEMPTS:
                    log.warning("storing %d inference log messages failed (attempt %d): %s", len(msgs), attempts,
                                exc)
                elif not await self.stores_answer():
                    log.error("storing inference logs waits for the database or object storage: %s", exc)
                    attempts = 0
                elif len(msgs) > 1:
                    log.error("storing %d inference log messages failed %d times (%s); storing them one by one",
                              len(msgs), attempts, exc)
                    for msg in msgs:
                        await self.flush_with_retry([msg], probe=True)
                    return
                else:
                    try:
                        await self.quarantine(msgs[0], f"{type(exc).__name__}: {exc}")
                        return
                    except Exception:
                        log.exception("quarantining an inference log batch failed; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stores_answer(self) -> bool:
        """Whether PostgreSQL and object storage answer now (a failing batch is then the batch's fault). Bounded with
        asyncio.timeout, not wait_for: on Python 3.11 wait_for gives the probe's answer (an error: the stores away)
        instead of CancelledError when it comes in the step the stop's cancel does (bpo-42130), and the retry loop
        went on while the stores were away, the stop waiting for it until the service was killed."""
        try:
            async with asyncio.timeout(5.0):
                await self.deps.pool.fetchval("SELECT 1")
            async with asyncio.timeout(5.0):
                await self.deps.objects.put_bytes(BUCKET_LOGS, QUARANTINE_PREFIX + "probe", b"")
            return True
        except Exception:
            return False

    async def quarantine(self, msg: Any, reason: str) -> None:
        """Keep a message that cannot be stored in object storage with its reason, tell admins, acknowledge it."""
        deps = self.deps
        self.release_held(_stream_seq(msg))  # held before (unreadable now, say): held here no more, whatever follows
        headers = dict(msg.headers or {})
        batch_id = message_batch_id(msg)
        if await store.committed_batches(deps.pool, [batch_id]):
            await _ack(msg)  # quarantined (or stored) before; this is a redelivery
            return
        workspace_id, pipeline, rows = None, None, None
        try:
            meta = json.loads(headers.get(LOG_HEADER) or "{}")
            workspace_id = int(meta["workspace_id"]) if "workspace_id" in meta else None
            pipeline = no_nul(meta["pipeline"])[:500] if "pipeline" in meta else None
        except (ValueError, TypeError, AttributeError):
            pass
        if workspace_id is not None and not -(2**63) <= workspace_id < 2**63:
            workspace_id = None  # a header PostgreSQL cannot hold may be why the batch is here
        if headers.get(SEGMENT_HEADER) == "1":  # an engine's segment description: its rows are in that object,
            # which must outlive the quarantine (maintenance deletes an unindexed segment as an orphan otherwise)
            try:
                described = json.loads(msg.data)
                segment_key = described["key"]
                if isinstance(segment_key, str) and segment_key.startswith(f"ws-{workspace_id}/") \
                        and segment_key.endswith(ENGINE_SUFFIX) and "\x00" not in segment_key:
                    headers[store.QUARANTINED_SEGMENT] = segment_key
                    rows = int(described["rows"]) if isinstance(described.get("rows"), int) else None
            except (ValueError, TypeError, KeyError):
                pass
        else:
            try:
                rows = pa.ipc.open_stream(pa.py_buffer(msg.data)).read_all().num_rows
            except (pa.ArrowException, ValueError):
                pass
        if rows is not None and not 0 <= rows < 2**31:
            rows = None  # a count the row's integer column cannot hold (maybe why the batch is here): left out
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        key = f"{QUARANTINE_PREFIX}{day}/{uuid.uuid4().hex}.arrows"
        await deps.objects.put_bytes(BUCKET_LOGS, key, bytes(msg.data))
        quarantine_id = await store.quarantine(deps.pool, batch_id, workspace_id, pipeline, no_nul(msg.subject),
                                               no_nul(reason)[:1000], rows, len(msg.data), key,
                                               headers_jsonb(headers))
        self.events_committed()  # its events.logs.batch_quarantined, put in the outbox with the row
        await _ack(msg)
        self.quarantined += 1
        log.error("quarantined inference log batch %s (quarantine %d) of %s/%s (%s rows): %s (%d quarantined since"
                  " start)", batch_id, quarantine_id, workspace_id, pipeline, rows, reason, self.quarantined)

    async def store_requests_once(self, batches: list[Batch]) -> list[str]:
        """Drop the rows of requests already stored (a re-sent request that two replicas ran); the ids of the
        requests these batches store, to commit with them."""
        wanted = [request_id for b in batches for request_id in b.requests]
        if not wanted:
            return []
        known = await store.committed_requests(self.deps.pool, wanted)
        taken: list[str] = []
        for batch in batches:
            if batch.table is None:
                continue
            keep = np.ones(batch.table.num_rows, bool)
            for request_id, (start, count) in batch.requests.items():
                if request_id in known or request_id in taken:
                    keep[start:start + count] = False
                    log.info("a re-sent request's record (%s) was stored before; this copy is dropped", request_id)
                else:
                    taken.append(request_id)
            if not keep.all():
                batch.table = batch.table.filter(pa.array(keep))
        return taken

    async def flush(self, msgs: list[Any], probe: bool = False) -> None:
        deps = self.deps
        batches: list[Batch] = []
        for msg in msgs:
            hear_description(deps.orphan_sweep, msg)
            try:
                batches.append(parse_batch(msg, probe))
            except Unreadable as exc:  # never storable: no retry helps
                await self.quarantine(msg, str(exc))
        batches, held = await self.check_owners(batches)
        seen: set[str] = set()
        unique: list[Batch] = []
        for batch in batches:
            if batch.batch_id not in seen:
                seen.add(batch.batch_id)
                unique.append(batch)
        if unique and all(b.ref is not None for b in unique):  # engines' segment descriptions only: each recorded
            # and its segment indexed in one statement, one recorded before skipped there (no look-up first)
            await store.index_described(deps.pool, [(b.batch_id, _from_ref(b)) for b in unique])
            seen, unique = set(), []
        committed = await store.committed_batches(deps.pool, list(seen)) if seen else set()
        fresh = [b for b in unique if b.batch_id not in committed]
        once = await self.store_requests_once(fresh)
        groups: dict[tuple[int, str, str], list[pa.Table]] = {}
        stored = [_from_ref(b) for b in fresh if b.ref is not None]  # segments an engine wrote: indexed as they are
        for batch in fresh:
            if batch.table is None or batch.table.num_rows == 0:  # stored by the engine, or every row a request
                continue  # stored before
            fp = schema_fingerprint(batch.table.schema)
            groups.setdefault((batch.workspace_id, batch.pipeline, fp), []).append(batch.table)
        written: list[store.NewSegment] = []
        try:
            for (workspace_id, pipeline, _), tables in groups.items():
                table = sort_by_time(_concat(tables))
                data = await asyncio.to_thread(encode_segment, table, deps.settings.row_group_rows)
                key = segment_key(workspace_id, pipeline)
                deps.orphan_sweep.hear(key_prefix(workspace_id, pipeline), False, time.time())
                await deps.objects.put_bytes(BUCKET_LOGS, key, data)
                written.append(_describe(table, key, len(data), workspace_id, pipeline))
                deps.reader.remember(key, data)
            if fresh:
                await store.commit_segments(deps.pool, [b.batch_id for b in fresh], written + stored, once)
        except BaseException:
            for seg in written:  # not indexed: nobody may see these objects (an engine's stay: redelivered)
                deps.reader.forget(seg.object_key)
                try:
                    await deps.objects.delete(BUCKET_LOGS, seg.object_key)
                except Exception:
                    log.warning("could not delete unindexed segment %s (maintenance will)", seg.object_key)
            raise
        for msg in msgs:
            if id(msg) not in held:
                await _ack(msg)

    async def check_owners(self, batches: list[Batch]) -> tuple[list[Batch], set[int]]:
        """The batches whose header agrees with the platform: the deployment the subject names is the header's, and
        the deployer announced it in the workspace the header names, of the pipeline it names when the announcement
        says (deployments.py). Those that disagree are
        quarantined, saying why; those of a deployment not announced yet are left unacknowledged (the message comes
        back UNKNOWN_RETRY seconds later, then less and less often), quarantined only once the announcements the
        stream held UNKNOWN_WAIT after they came were all read (`Deployments.caught_up`: not while a restarted log
        store reads its backlog), or at once when HOLD_MAX batches are held already. A segment
        description's key was already checked to lie under the header's workspace and pipeline (parse_batch), so
        it lies under the deployment's. Raises when the announcements cannot be read (PostgreSQL away): the flush
        fails and is retried, nothing acknowledged. The ids of the messages held."""
        if self.deployments is None:
            raise RuntimeError("the log store checks every batch's deployment: Ingestor needs `deployments`")
        owners = await self.deployments.lookup([b.deployment for b in batches if b.deployment is not None
                                                and b.deployment == subject_deployment(b.msg.subject)
                                                and "\x00" not in b.deployment])  # text PostgreSQL refuses
        kept: list[Batch] = []
        held: set[int] = set()
        for batch in batches:
            subject = subject_deployment(batch.msg.subject)
            seq = _stream_seq(batch.msg)
            holding = self.release_held(seq)
            if batch.deployment != subject or "\x00" in subject:
                await self.quarantine(batch.msg, f"its subject names deployment {subject[:200]!r}, its Railyard-Log "
                                      f"header deployment {str(batch.deployment)[:200]!r}")
            elif (owner := owners.get(subject)) is None:
                # quarantined only once every announcement the stream had an hour after the batch came was read
                if self.deployments.caught_up - _stream_time(batch.msg) >= UNKNOWN_WAIT:
                    await self.quarantine(batch.msg, f"deployment {subject[:200]!r} was not announced by the deployer"
                                          f" (events.pipeline.deployed) in {UNKNOWN_WAIT:.0f} s: no workspace is"
                                          " known to own it")
                    continue
                if holding is None and not self.may_hold():
                    await self.quarantine(batch.msg, f"deployment {subject[:200]!r} was not announced by the deployer"
                                          f" (events.pipeline.deployed), and {len(self.holding)} batches "
                                          f"({self.holding_bytes} bytes) already wait for announcements (more held "
                                          "would stop the log store's consumer)")
                    continue
                size = len(batch.msg.data or b"")
                self.holding[seq] = Held(time.monotonic(), size, subject, getattr(batch.msg, "reply", None),
                                         (batch.workspace_id, batch.pipeline), _consumer_seq(batch.msg))
                self.holding_bytes += size
                held.add(id(batch.msg))
                self.held += 1
                now = time.monotonic()
                if now - self.waiting.get(subject, -UNKNOWN_LOG_EVERY) >= UNKNOWN_LOG_EVERY:
                    if len(self.waiting) >= 4096:  # many made-up subjects: forget when each was last logged
                        self.waiting.clear()
                    self.waiting[subject] = now
                    log.warning("inference log batches of deployment %s wait for the deployer to announce it "
                                "(events.pipeline.deployed); kept unacknowledged (%d held since start)", subject[:200],
                                self.held)
                await _nak(batch.msg, _retry_delay(batch.msg, getattr(self.deps.settings, "unknown_retry",
                                                                      UNKNOWN_RETRY)))
            elif owner.workspace_id != batch.workspace_id:
                await self.quarantine(batch.msg, f"deployment {subject[:200]!r} belongs to workspace "
                                      f"{owner.workspace_id}, not to workspace {batch.workspace_id} its Railyard-Log "
                                      "header names")
            elif owner.pipeline is not None and owner.pipeline != batch.pipeline:
                await self.quarantine(batch.msg, f"deployment {subject[:200]!r} belongs to pipeline "
                                      f"{owner.pipeline[:200]!r}, not to pipeline {str(batch.pipeline)[:200]!r} its "
                                      "Railyard-Log header names")
            else:
                self.waiting.pop(subject, None)
                kept.append(batch)
        return kept, held

    def may_hold(self) -> bool:
        """Whether one more batch may be held (HOLD_MAX, HOLD_SHARE); those not seen for HOLD_STALE are forgotten
        first."""
        max_bytes = getattr(self.deps.settings, "stream_max_bytes", 8 * 1024**3) // HOLD_SHARE

        def room() -> bool:
            return len(self.holding) < HOLD_MAX and self.holding_bytes < max_bytes

        if not room():
            self.prune_held()
        return room()


def _stream_seq(msg: Any) -> int:
    """The message's stream sequence (a redelivery has the same); the message's id when unknown."""
    try:
        return int(msg.metadata.sequence.stream)
    except (AttributeError, TypeError, ValueError):
        return id(msg)


def _consumer_seq(msg: Any) -> int | None:
    """The consumer sequence of the message's delivery (each delivery, a redelivery too, has its own); None when
    unknown."""
    try:
        return int(msg.metadata.sequence.consumer)
    except (AttributeError, TypeError, ValueError):
        return None


def _retry_delay(msg: Any, first: float = UNKNOWN_RETRY) -> float:
    """`first` (logs.unknown_retry) after a first delivery, doubling with each redelivery, at most UNKNOWN_RETRY_MAX
    (the consumers' own backoff, shared.consumers.DeliveryPolicy, with these bounds)."""
    try:
        delivered = int(msg.metadata.num_delivered)
    except (AttributeError, TypeError, ValueError):
        delivered = 1
    return DeliveryPolicy(backoff=first, backoff_max=UNKNOWN_RETRY_MAX).delay(delivered)


def _stream_time(msg: Any) -> float:
    """When the stream took the message (time.time(); now when unknown)."""
    try:
        return msg.metadata.timestamp.timestamp()
    except (AttributeError, TypeError, ValueError):
        return time.time()


async def _nak(msg: Any, delay: float) -> None:
    try:
        await msg.nak(delay=delay)
    except nats.errors.MsgAlreadyAckdError:
        pass  # held before in this flush's retries: it comes back once
    except Exception as exc:  # not told: it comes back after the consumer's ack wait instead
        log.warning("nak failed: %s", exc)


def _from_ref(batch: Batch) -> store.NewSegment:
    return _segment_row(batch.workspace_id, batch.pipeline, batch.ref)


def _segment_row(workspace_id: int, pipeline: str, ref: SegmentRef) -> store.NewSegment:
    return store.NewSegment(workspace_id=workspace_id, pipeline=pipeline, row_count=ref.rows,
                            min_time=ref.min_time, max_time=ref.max_time, schema_fp=ref.schema_fp,
                            versions=ref.versions, dropped=ref.dropped, object_key=ref.key, bytes=ref.bytes)


async def _ack(msg: Any) -> None:
    try:
        await msg.ack()
    except nats.errors.MsgAlreadyAckdError:
        pass  # a quarantined message, acknowledged when it was set aside
    except Exception as exc:  # a lost ack means a redelivery, which is refused as a duplicate
        log.warning("ack failed: %s", exc)


# ---- get_logs ----

async def resolve_pipeline(deps: Deps, principal: Principal, token: str | None, workspace_id: int,
                           name: str) -> asyncpg.Record | None:
    """The pipeline's log record (None when it exists but has logged nothing yet); 404 if there is no such
    pipeline in the workspace or the caller is not a member."""
    await require_member(deps.membership(token), principal, workspace_id)
    row = await store.pipeline(deps.pool, workspace_id, name)
    if row is None and not await deps.pipeline_exists(token, workspace_id, name):
        raise NotFound(f"pipeline {echo(name)} not found in workspace {workspace_id}")
    return row


async def get_logs(deps: Deps, principal: Principal, token: str | None, cmd: GetLogs) -> tuple[pa.Table, LogPage]:
    """One page and what to say about it (status, cursor, warning)."""
    check_dataset_names(cmd.dataset, cmd.dataset_exclude)
    if cmd.page_size > deps.settings.max_page_size:
        raise InvalidRequest(f"page_size may be at most {deps.settings.max_page_size}")
    cursor = pages.decode_cursor(cmd.cursor, cmd.order) if cmd.cursor else None
    row = await resolve_pipeline(deps, principal, token, cmd.workspace_id, cmd.pipeline_id)
    if row is None:
        return empty_page(), LogPage(status="All", rows=0)
    return await pages.scan(deps.pool, deps.reader, row["id"], cmd, cursor, deps.settings.page_max_bytes)


async def set_retention(deps: Deps, principal: Principal, token: str | None, cmd: SetLogRetention) -> LogRetention:
    await resolve_pipeline(deps, principal, token, cmd.workspace_id, cmd.pipeline_id)
    await store.set_retention(deps.pool, cmd.workspace_id, cmd.pipeline_id, cmd.retention_days)
    return LogRetention(pipeline_id=cmd.pipeline_id, workspace_id=cmd.workspace_id,
                        retention_days=cmd.retention_days)


async def list_quarantined(deps: Deps, principal: Principal, cmd: ListQuarantinedLogs) -> QuarantinedLogs:
    """Quarantined batches, newest first (administrators only)."""
    require_admin(principal, "list quarantined inference logs")
    rows, total = await store.quarantined(deps.pool, cmd.workspace_id, cmd.before_id, cmd.limit)
    return QuarantinedLogs(batches=[QuarantinedLog(**dict(r)) for r in rows], total=total)


# ---- fields for assays ----

async def read_field(deps: Deps, principal: Principal | None, token: str | None, cmd: ReadLogField) -> pa.Array:
    """One element of one column over [start_ms, end_ms) as a numeric array, in stored order; 400 when the
    column is not logged, is not numeric, or has no such element. Without a principal (a service on the bus)
    no membership is checked."""
    if cmd.end_ms <= cmd.start_ms:
        raise InvalidRequest("the time range is empty (end is not after start)")
    if principal is None:
        row = await store.pipeline(deps.pool, cmd.workspace_id, cmd.pipeline)
    else:
        row = await resolve_pipeline(deps, principal, token, cmd.workspace_id, cmd.pipeline)
    if row is None:
        return pa.array([], pa.float64())
    segments = await store.segments_between(deps.pool, row["id"], cmd.start_ms, cmd.end_ms)
    parts = await asyncio.gather(*[asyncio.to_thread(_segment_field, deps.reader, seg, cmd) for seg in segments])
    found = [p for p in parts if p is not None]
    if segments and not found:
        known = sorted({n for seg in segments[:3] for n in deps.reader.columns(seg["object_key"], seg["bytes"])
                        if n.startswith(("in.", "out"))})
        raise InvalidRequest(f"{cmd.column!r} is not logged for pipeline {cmd.pipeline!r}; logged fields: "
                             f"{', '.join(known)}")
    if not found:
        return pa.array([], pa.float64())
    return pa.concat_arrays(found) if len(found) > 1 else found[0]


def _segment_field(reader: SegmentReader, seg: Any, cmd: ReadLogField) -> pa.Array | None:
    names = reader.columns(seg["object_key"], seg["bytes"])
    if cmd.column not in names:
        return None
    inside = seg["min_time"] >= cmd.start_ms and seg["max_time"] < cmd.end_ms  # no need to read `time`
    columns = ([] if inside else [TIME]) + [cmd.column] + (
        [META_LAST_MODEL] if cmd.model and META_LAST_MODEL in names else [])
    table = reader.read_columns(seg["object_key"], seg["bytes"], columns)
    if inside:
        keep = np.ones(table.num_rows, bool)
    else:
        times = table.column(TIME).to_numpy()
        keep = (times >= cmd.start_ms) & (times < cmd.end_ms)
    if cmd.model and META_LAST_MODEL in names:
        keep &= _answered_by(table.column(META_LAST_MODEL).combine_chunks(), cmd.model)
    column = table.column(cmd.column).combine_chunks()
    if not keep.all():
        column = column.filter(pa.array(keep))
    return _element(column, cmd)


def _answered_by(models: pa.Array, model: str) -> np.ndarray:
    """Which rows the model answered: each distinct last_model is parsed once, not once a row."""
    if not pa.types.is_dictionary(models.type):
        models = pc.dictionary_encode(models)
    matching = np.array([model_name_of(v) == model for v in models.dictionary.to_pylist()] + [False], bool)
    indices = pc.fill_null(models.indices, len(models.dictionary)).to_numpy(zero_copy_only=False)
    return matching[indices]


def _element(column: pa.Array, cmd: ReadLogField) -> pa.Array:
    values = column
    width = 1
    while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type):
        if pa.types.is_list(values.type):
            if len(values) and cmd.index >= int(pc.min(pc.list_value_length(values)).as_py()):
                raise InvalidRequest(f"{cmd.column} has no element {cmd.index} in every row")
            return _element(pc.list_element(values, cmd.index), cmd.model_copy(update={"index": 0}))
        width *= values.type.list_size
        values = values.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise InvalidRequest(f"{cmd.column} holds {values.type}, not numbers: an assay needs a numeric field")
    if cmd.index >= width:
        raise InvalidRequest(f"{cmd.column} has {width} element{'s' if width != 1 else ''} per row; "
                             f"index {cmd.index} is out of range")
    if width == 1:
        return values
    return pa.array(values.to_numpy(zero_copy_only=False).reshape(-1, width)[:, cmd.index])


# ---- maintenance ----

async def maintain(deps: Deps, compact: bool = True, retention: bool = True, purge: bool = True,
                   wait: bool = False) -> LogMaintenanceReport:
    """One pass of retention, compaction and purging, by one log-store process at a time. The timer skips its
    pass while another runs; asked on the bus (`wait`), a pass waits for the one under way, then runs."""
    report = LogMaintenanceReport()
    async with deps.pool.acquire() as lock_conn:
        if wait:
            await lock_conn.execute("SELECT pg_advisory_lock(hashtext('log_store.maintenance'))")
        elif not await lock_conn.fetchval("SELECT pg_try_advisory_lock(hashtext('log_store.maintenance'))"):
            return report
        try:
            pipelines = await store.pipelines(deps.pool)
            now_ms = int(time.time() * 1000)
            if retention:
                for row in pipelines:
                    days = row["retention_days"] if row["retention_days"] is not None else deps.settings.retention_days
                    days = min(days, MAX_RETENTION_DAYS)  # one stored before the bound must not stop every pass
                    report.expired_segments += await store.expire(deps.pool, row["id"], now_ms - int(days * 86_400_000))
            if compact:
                for row in pipelines:
                    await _compact_pipeline(deps, row, report)
            if purge:
                await _purge(deps, report)
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock(hashtext('log_store.maintenance'))")
    return report


def _runs(segments: list[Any], target: int) -> list[list[Any]]:
    """Contiguous runs (no position gap, one schema) of small segments, each at most `target` rows."""
    runs: list[list[Any]] = []
    current: list[Any] = []
    rows = 0
    for seg in segments:
        joins = current and seg["first_pos"] == current[-1]["last_pos"] + 1 \
            and seg["schema_fp"] == current[-1]["schema_fp"] and rows + seg["row_count"] <= target
        if not joins:
            if len(current) > 1:
                runs.append(current)
            current, rows = [], 0
        current.append(seg)
        rows += seg["row_count"]
    if len(current) > 1:
        runs.append(current)
    return runs


def _merge_run(run: list[Any], tables: list[pa.Table], row_group_rows: int) -> tuple[pa.Table, bytes]:
    """Segments of a run as one, rows sorted by (time, position), each keeping its position in `_pos`."""
    positions = np.concatenate([
        t.column(POS).to_numpy().astype(np.int64) if POS in t.column_names
        else np.arange(seg["first_pos"], seg["first_pos"] + t.num_rows, dtype=np.int64)
        for seg, t in zip(run, tables, strict=True)])
    table = _concat([t.drop_columns([POS]) if POS in t.column_names else t for t in tables])
    order = np.lexsort((positions, table.column(TIME).to_numpy()))
    if not bool(np.all(order[1:] > order[:-1])):  # already in order (the usual case): no copy
        table, positions = table.take(pa.array(order)), positions[order]
    return table, encode_segment(table.append_column(POS, pa.array(positions, pa.int64())), row_group_rows)


async def _compact_pipeline(deps: Deps, pipeline: Any, report: LogMaintenanceReport) -> None:
    target = deps.settings.compact_target_rows
    small = await store.small_segments(deps.pool, pipeline["id"], target // 2, deps.settings.compact_min_age,
                                       deps.settings.compact_below_bytes)
    for run in _runs(small, target):
        tables = [await asyncio.to_thread(deps.reader.read_all, seg["object_key"], seg["bytes"]) for seg in run]
        table, data = await asyncio.to_thread(_merge_run, run, tables, deps.settings.row_group_rows)
        key = segment_key(pipeline["workspace_id"], pipeline["name"])
        deps.orphan_sweep.hear(key_prefix(pipeline["workspace_id"], pipeline["name"]), False, time.time())
        await deps.objects.put_bytes(BUCKET_LOGS, key, data)
        merged = _describe(table, key, len(data), pipeline["workspace_id"], pipeline["name"])
        # the run's own fingerprint (one, `_runs`), not the read-back's: Parquet gives timestamp[s], time32[s] and
        # date64 back as timestamp[ms], time32[ms] and date32, whose fingerprint is another one than the fresh
        # segments' (pages ended at it with SchemaChange, and the merge never joined them again)
        merged.schema_fp = run[0]["schema_fp"]
        merged.versions = sorted({v for seg in run for v in seg["versions"]})
        merged.dropped = sorted({d for seg in run for d in seg["dropped"]})
        try:
            await store.replace_segments(deps.pool, [seg["id"] for seg in run], merged, pipeline["id"],
                                         run[0]["first_pos"], max(seg["level"] for seg in run) + 1)
        except store.Raced:
            await deps.objects.delete(BUCKET_LOGS, key)
            continue
        deps.reader.remember(key, data)
        report.compacted_segments += len(run)
        report.new_segments += 1


async def _purge(deps: Deps, report: LogMaintenanceReport) -> None:
    for row in await store.superseded(deps.pool, deps.settings.superseded_grace):
        deps.reader.forget(row["object_key"])
        await deps.objects.delete(BUCKET_LOGS, row["object_key"])
        await store.delete_segment(deps.pool, row["id"])
        report.purged_objects += 1
    report.batch_ids_pruned = await store.prune_batches(deps.pool, deps.settings.dedupe_hours)
    cutoff = time.time() - ORPHAN_AGE
    # tables that went by reference through object storage (inference requests and answers, field reads) are
    # deleted by whoever read them; a process killed in between leaves them: swept here after an hour
    for prefix in TRANSIT_PREFIXES:
        for key, modified in await deps.objects.list_keys(BUCKET_TABLES, prefix):
            if modified < cutoff:
                await deps.objects.delete(BUCKET_TABLES, key)
                report.orphans_deleted += 1
    await _sweep_orphan_segments(deps, report)


async def _sweep_orphan_segments(deps: Deps, report: LogMaintenanceReport, now: float | None = None) -> None:
    """Delete segment objects no index row names (a writer that stopped between storing a segment and indexing
    it; compaction raced): the log store's own an hour after they were written, an engine's once its description
    can no longer be waiting in the stream (`stream_max_age`, the log store down) plus that hour.

    The first sweep of a process lists the whole logs bucket, and so does a later one once the keys that sweep
    found too young to judge and no window would list (uuid4 names of before 2026-12-02, a writer's clock far
    behind) are all old enough. Later ones list, per pipeline, only the keys named in the time that passed each
    cutoff since that pipeline's previous window (segment keys sort by time within their day folder,
    shared/log_segments.py `segment_key`), reaching ORPHAN_SLACK further back for writers whose clock is behind
    the object store's; keys seen there but written too recently to judge are kept for the next sweep. Listing a
    whole bucket of 10,000 segments cost this process ~1.5 s of CPU and SeaweedFS ~0.5 s, and a busy replica
    stores a few segments a second: every pass over a week's history would have taken minutes.

    A pipeline is listed only when something may have been named in its next window: this process heard of a
    segment of it being named (`OrphanSweep.hear`: its own writes and compactions, each engine description that
    came, stored or refused, young keys of the whole listing) no earlier than ORPHAN_SLACK before where its last
    window ended, or its unlisted span reached ORPHAN_UNHEARD_LIST (for what it cannot hear of: an engine that
    died before describing its segment, another log store process's writes). A skipped pipeline's window does not
    move, so its next listing covers the whole span: skipping delays a deletion, never loses one. Every pass made 2
    listings per pipeline the log store ever had, one after another (seconds a pass at 1,000+ pipelines); the
    listings left run ORPHAN_LISTINGS_AT_ONCE at a time. Deletion is unchanged: the object's own mtime past its
    cutoff, and no index or quarantine row naming it (`store.known_keys`)."""
    now = time.time() if now is None else now
    cutoff = now - ORPHAN_AGE
    engine_cutoff = cutoff - deps.settings.stream_max_age  # its description may wait that long in the stream
    sweep = deps.orphan_sweep
    whole = sweep.last is None or (sweep.relist_at is not None and now >= sweep.relist_at)
    if whole:
        listed = await deps.objects.list_keys(BUCKET_LOGS)
    else:
        listed = list((await _list_windows(deps, sweep, cutoff, engine_cutoff)).items())
    old, pending, relist_at = [], {}, None
    for key, modified in listed:
        if key.startswith(QUARANTINE_PREFIX):
            continue
        engine = key.endswith(ENGINE_SUFFIX)
        kind_cutoff = engine_cutoff if engine else cutoff
        if modified < kind_cutoff:
            old.append(key)
        elif not whole:
            pending[key] = modified  # named within its window but written after its cutoff: judged next time
        elif not _listed_later(key, kind_cutoff, now):
            # too young to judge, and no later window lists it (a uuid4 name, or a writer's clock far behind): the
            # whole bucket is listed again once every such key is old enough, one listing however many there are
            due = modified + (now - kind_cutoff) + 1.0
            relist_at = due if relist_at is None else max(relist_at, due)
        elif (prefix := key_pipeline_prefix(key)) is not None:
            sweep.hear(prefix, engine, key_moment(key) or modified)  # its pipeline's windows must reach it
    for start in range(0, len(old), 1000):
        chunk = old[start:start + 1000]
        known = await store.known_keys(deps.pool, chunk)
        for key in chunk:
            if key not in known:
                await deps.objects.delete(BUCKET_LOGS, key)
                report.orphans_deleted += 1
    sweep.pending = pending
    if whole:
        sweep.last, sweep.reached, sweep.relist_at = (cutoff, engine_cutoff), {}, relist_at


async def _list_windows(deps: Deps, sweep: OrphanSweep, cutoff: float, engine_cutoff: float) -> dict[str, float]:
    """The keys (with their mtimes) named in the windows of the pipelines that may have new ones (see
    `_sweep_orphan_segments`), and the pending keys of the previous sweep; each listed pipeline's windows move
    to these cutoffs once every listing succeeded."""
    windows: list[tuple[str, bool, float, float]] = []
    moved: dict[str, tuple[float, float]] = {}
    prefixes: set[str] = set()
    for row in await store.pipelines(deps.pool):
        prefix = key_prefix(row["workspace_id"], row["name"])
        prefixes.add(prefix)
        reached = sweep.reached.get(prefix, sweep.last)
        heard = sweep.heard.get(prefix)
        ends = list(reached)
        for engine, end in ((False, cutoff), (True, engine_cutoff)):
            begin = reached[engine]
            if end <= begin:
                continue
            if (heard is not None and heard[engine] + ORPHAN_SLACK >= begin) or end - begin >= ORPHAN_UNHEARD_LIST:
                windows.extend((f"{prefix}{day}/", engine, begin - ORPHAN_SLACK, end)
                               for day in day_folders(begin - ORPHAN_SLACK, end))
                ends[engine] = end
        if ends != list(reached):
            moved[prefix] = (ends[0], ends[1])
    at_once = asyncio.Semaphore(ORPHAN_LISTINGS_AT_ONCE)

    async def listing(folder: str, start: float, end: float) -> list[tuple[str, float]]:
        async with at_once:
            return await deps.objects.list_keys_between(BUCKET_LOGS, folder, key_time(start), key_time(end))

    found = await asyncio.gather(*(listing(folder, start, end) for folder, _, start, end in windows))
    seen: dict[str, float] = dict(sweep.pending)
    for (_, engine, _, _), keys in zip(windows, found, strict=True):
        for key, modified in keys:
            if key.endswith(ENGINE_SUFFIX) == engine:  # the other kind's cutoff is not near
                seen[key] = modified
    sweep.reached = {prefix: ends for prefix, ends in (sweep.reached | moved).items() if prefix in prefixes}
    # what no window can still be due for goes, so the table stays as small as the pipelines: a prefix of no
    # pipeline (a description can name any key; a write heard before its pipeline's row exists is then listed
    # within ORPHAN_UNHEARD_LIST), or a moment its pipeline's windows have passed
    sweep.heard = {prefix: times for prefix, times in sweep.heard.items() if prefix in prefixes and any(
        times[kind] + ORPHAN_SLACK >= sweep.reached.get(prefix, sweep.last)[kind] for kind in (0, 1))}
    return seen


def _listed_later(key: str, kind_cutoff: float, now: float) -> bool:
    """Whether a later sweep's window lists `key`: its name is a time of its own day folder, no earlier than where
    the next window starts (this cutoff less ORPHAN_SLACK) and no later than a day ahead (a writer's clock ahead)."""
    moment = key_moment(key)
    return moment is not None and kind_cutoff - ORPHAN_SLACK <= moment <= now + 86400.0
