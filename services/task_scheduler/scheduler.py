"""The scheduler loop of one task-scheduler process; any number of processes run it side by side.

A pass of the loop:

1. fails runs whose supervisor stopped beating (a killed or crashed process; not its own, which it beats even
   after a pause): `failure`, with the reason;
2. turns due schedule points into runs. A task's row is locked (`FOR UPDATE SKIP LOCKED`) while its `next_fire`
   moves past now, and the run is inserted with `ON CONFLICT (task_id, scheduled_for) DO NOTHING` in the same
   transaction: a point makes exactly one run, whichever process sees it, across kills and restarts. When
   several points passed while no scheduler ran, only the latest is considered: `fire_once` runs it (late),
   `skip` runs it only if it is at most `missed_run_grace` seconds old. Never several runs for one catch-up. A point
   that comes while QUEUED_PER_TASK runs of its task wait to start makes no run (logged);
3. starts queued runs, a workspace's oldest first, up to the workspace's concurrent-run limit (counted under a
   per-workspace advisory lock, so the limit holds across processes) and this process's own room, one run per
   waiting workspace in turn, the workspace with the fewest running first (then the longest wait);
4. heartbeats its runs and stops those whose task was killed, and those another process declared lost (this one
   was paused or cut off from PostgreSQL past `supervisor_lost_after`): their process is stopped through the runner
   and nothing more is recorded for them;
5. installs one waiting requirements environment at a time (claimed with a heartbeat as well; an install whose
   claim another process took is stopped, and only the claimant records its end).

Between passes the process sleeps until something can be due, not on a fixed tick: until the earliest of the next
schedule point, the oldest heartbeat's deadline (a run's or an installation's: its process may die without a word)
and, while it supervises runs, its own next heartbeat. Everything else that makes work (a queued run, a new
schedule, a kill, a run's end freeing its workspace's place, an environment to install) is written with a
PostgreSQL `NOTIFY` (store.WORK_CHANNEL) that wakes every process LISTENing on its own held connection, which
also serves the passes' queries. A notification lost (the connection dropped, the process was paused) only
delays: no sleep is longer than `tick`. An idle stack so costs one pass every `tick` (5 s) instead of one every
0.5 s. The guarantees above are the SQL's, so they do not depend on when a pass runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from croniter import croniter
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from services.task_scheduler import packaging, runner, store
from services.task_scheduler.fetch_orchestration import download_verified
from services.task_scheduler.handlers import Deps, check_schedule
from shared import db
from shared.data_errors import is_database_unavailable
from shared.errors import RailyardError
from shared.messages import tasks as tasks_messages
from shared.outbox import Outbox
from shared.settings import TASK_STOP_TIMEOUT

log = logging.getLogger("railyard.task_scheduler.scheduler")

T = TypeVar("T")

FIRE_BATCH = 50
# seconds before trying again a workspace whose queue another process is starting (its advisory lock was held)
BUSY_RETRY = 0.5
# a due point is woken for this much after it, so that the pass's `<= now()` / `< now() - ...` finds it
DUE_SLACK = 0.02
# the shortest sleep after a pass: a point still due right after one is another process's at that moment (a task
# row it holds, SKIP LOCKED) or past a batch, and is looked at again this soon, not in a spin
MIN_SLEEP = 0.1
# A stop takes at most TASK_STOP_TIMEOUT (20 s; the embedded stack gives the service that plus the services' grace,
# shared/embedded/stack.py): the loop's last pass, its connection's release and the outbox's last send each at most
# STOP_STEP, the runs the rest (at least 14 s: a run's process may take runner.TERM_GRACE after its SIGTERM, then its
# last lines and its end are written)
STOP_STEP = 2.0
DROP_SECONDS = 5.0  # the loop's connection released (its LISTEN dropped) within this, else terminated
END_ATTEMPT_SECONDS = 5.0  # one attempt at recording a run's end (a server that stopped answering): tried again
END_RECORD_SECONDS = 30.0  # how long a run's end record is retried before it is left to the lost-run step
BEATS_UNDER_WAY = 2  # an install's beats sent and not answered yet, at most (Scheduler._install_one)
# how long a run's token mint is retried while auth cannot answer it (Scheduler._minted): auth restarting, its database
# away, the bus reconnecting. Before, one such failure failed the run for good ("the run could not be started")
MINT_RETRY_SECONDS = 30.0
# missed schedule points walked one by one at most (due_point); past it: "at least" that many. A pass catches up to
# FIRE_BATCH tasks in one go on the event loop: 50 x 100 croniter steps, ~0.3 s (~60 us a step; 0.15-0.4 ms at load
# 9). At 1,000 (review of 7d59f296) a batch of per-second tasks back after 17 minutes took 3 s quiet, 7-19 s at load 9,
# past supervisor_lost_after (10 s): the pass beats its runs after it, so another process could take them as lost
MISSED_COUNTED = 100
# runs of one task waiting to start (`queued`) at most, unless the task's max_queued says otherwise (concurrency
# policy allow): a point that comes while it has that many is not queued, and logged (Scheduler.fire_due). Before, a
# task whose runs outlast its interval queued one more at every point, without end: the backlog only grew, each run
# started later than the last, and the workspace's other tasks' runs (started oldest first) waited behind all of it.
# Airflow's max_active_runs (16 a DAG) bounds the same; a CronJob makes no queue (its forbid/replace: the policies)
QUEUED_PER_TASK = tasks_messages.QUEUED_PER_TASK
# the start of a failed run's reason when its task's schedule could not be evaluated (Scheduler.fire_due)
UNEVALUATED = "schedule cannot be evaluated"
# the start of the reason of a run a later point's run replaced (concurrency_policy replace; Scheduler.fire_due)
REPLACED = "replaced by the task's run for"
# the reason of a run whose main.py its scheduler's stop ended (one the stop killed before it started goes back to the
# queue instead: Scheduler._supervise)
STOPPED = "stopped: its task scheduler process shut down"
# the start of the outcome's reason of a run whose claim could not be checked right before its main.py (PostgreSQL not
# answering for the check's END_RECORD_SECONDS): it goes back to the queue (Scheduler._put_back_unchecked), at most
# UNCHECKED_REQUEUES times, then fails with this reason. Before, it failed for good: "the run could not be started:
# TimeoutError"
UNCHECKED = "its claim could not be checked right before its main.py started (PostgreSQL did not answer)"
UNCHECKED_REQUEUES = 3
# A database error for one task's point undoes that task's writes alone (Scheduler.fire_due: a savepoint). One that
# says the database could not answer now stays the pass's (re-raised: the pass fails and is tried again on a new
# connection): what shared/data_errors.py is_database_unavailable counts (the connection lost or refused, the server
# shutting down, starting up or out of resources, a standby refusing writes, a statement prepared before a migration),
# as do asyncpg's own errors (InterfaceError, not a PostgresError). Until session 40 a tuple of classes decided
# (PostgresConnectionError, OperatorInterventionError, InsufficientResourcesError, InternalServerError): a statement
# of one task's point over a role's statement_timeout (57014, query_canceled, which meets it again) failed every pass,
# and no task of any workspace fired, nor were runs started or beaten; it is now that task's, held (HELD_FIRST..)
HELD_FIRST = 2.0  # seconds a task whose point met a database error is left out of this process's passes, at first
HELD_MAX = 60.0  # ... doubling at each error in a row, up to this
# A pass that failed on an error that is not an outage (a pass's own query over a role's statement_timeout, our SQL,
# asyncpg misused, another OSError, a bug: a retry meets it again) is tried again after PASS_RETRY, doubling at each
# such failure in a row up to the idle `tick` (while the process supervises runs, up to their beat's wait:
# heartbeat_interval / 2), and logged with its traceback the first time that error (its type and words, their numbers
# aside: ERROR_VARYING) is met in the row, then as one line with its count. Before session 41 every such pass was
# tried again within PASS_RETRY and logged its traceback each time: a statement the timeout cancels every time wrote
# a traceback a second for as long as it lasted. An outage (is_database_unavailable) is still tried again within
# PASS_RETRY, a line each time: the database may be back at any moment
PASS_RETRY = 1.0
PASS_ERRORS_KEPT = 32  # distinct errors of the failed passes in a row remembered (their count), the oldest let go
# the characters of an error's key kept (its type and words, numbers aside), with a hash of the whole past them. Before
# session 42 a key was the error's words whole, so the 32 kept could hold as many errors quoting megabytes (a value
# or a statement in a DataError's words, an OSError naming a long path) for as long as the passes failed. The hash
# keeps two errors alike that far and different after two (each its traceback once): 1070e608 cut the words alone,
# and the second error's traceback was never logged, its lines counted as the first's (review of 1070e608)
PASS_ERROR_KEY_CHARS = 200
# what one error's words may change from one failure to the next (a uuid, a number: a row's id, an OID, a time) and
# do not make it another error: without, an error naming the row it met logged its traceback at every pass
ERROR_VARYING = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}|[0-9]+")


class KilledWhileMinting(Exception):
    """A run's kill came while its token's mint waited to be asked again (Scheduler._minted)."""


PASSING_STATUSES = (408, 429, 502, 503, 504)
"""The statuses of a token mint's failure that may answer otherwise if asked again (`passing`)."""


def passing(exc: BaseException) -> bool:
    """Whether a failed token mint (Scheduler._minted) may answer if asked again: auth did not answer in time (504,
    408), could not be reached or was not ready (503: the bus down, no auth listening; 502), asked to slow down (429),
    or the connection failed (an OSError: the mint is a request over the bus, which reads no file and no object
    storage; or runner.transient). Not auth's refusals (another 4xx: asked again, they answer the same)
    nor another 5xx: a 500 is a fault in auth (an unhandled error), which answers the same when asked again. Before,
    any 5xx was asked again for MINT_RETRY_SECONDS, and the run failed 30 s later saying only 'internal error'."""
    if isinstance(exc, RailyardError):
        return exc.status in PASSING_STATUSES
    return isinstance(exc, OSError) or runner.transient(exc)


def not_minted(exc: RailyardError) -> RailyardError:
    """The error a run fails with when auth answered its token's mint with an error of its own (a 5xx not
    `passing`: a fault in auth), which names the mint and says it was not asked again; auth's refusals (4xx) and
    the passing errors it gave up on are left as they are, their words say why."""
    if exc.status < 500 or passing(exc):
        return exc
    failed = RailyardError(f"auth failed to mint the run's token ({exc.status} {exc.code}: {exc.msg}); not asked "
                           "again, as only a 408, 429, 502, 503, 504 or a lost connection is", code=exc.code)
    failed.status = exc.status
    return failed


def sleep_for(to_next_due: float | None, tick: float, own_beat_in: float | None) -> float:
    """How long a process sleeps after a pass: until the next due point or its own next heartbeat, at most
    `tick` (a lost notification only delays), at least MIN_SLEEP."""
    delay = tick
    if to_next_due is not None:
        delay = min(delay, to_next_due + DUE_SLACK)
    if own_beat_in is not None:
        delay = min(delay, own_beat_in)
    return max(delay, MIN_SLEEP)

# mint(owner_id, workspace_id, ttl_seconds, task_id, run_id) -> a bearer token with the owner's rights in that
# workspace, naming the task and the run
TokenMinter = Callable[[str, int, int, str, str], Awaitable[str]]


def due_point(schedule: str, next_fire: datetime, now: datetime, policy: str | None,
              grace: timedelta) -> tuple[datetime | None, datetime, int]:
    """For a task whose `next_fire` has come: (the point to run now or None to skip, the next point after now,
    how many points before it were missed: exact below MISSED_COUNTED, else MISSED_COUNTED, a lower bound). Only
    the latest due point can run: `fire_once` runs it however late, `skip` only if it is at most `grace` late.

    The missed points are walked one by one (croniter, ~60 us each) only up to MISSED_COUNTED; past that the latest
    point and the next are found from `now` (the first point after it, and the one before that). Before, every missed
    point was walked, on the event loop inside the pass's transaction: a per-minute task after a week with no
    scheduler took 0.6 s, a per-second one after a day 5 s, each of up to FIRE_BATCH tasks in turn, and the process
    meanwhile beat none of its runs (another process could take them as lost) and answered no command."""
    points = croniter(schedule, next_fire - timedelta(microseconds=1))
    latest = points.get_next(datetime)
    missed = 0
    while (following := points.get_next(datetime)) <= now:
        latest = following
        missed += 1
        if missed >= MISSED_COUNTED:
            following = croniter(schedule, now).get_next(datetime)  # the first point after now
            # the last at or before now (croniter marks what get_prev answers fold=1: cleared, as get_next's)
            latest = croniter(schedule, following).get_prev(datetime).replace(fold=0)
            break
    if policy == "skip" and now - latest > grace:
        return None, following, missed
    return latest, following, missed


@dataclass
class Scheduler:
    """One process's scheduler loop and the runs it supervises."""

    deps: Deps
    mint: TokenMinter
    gateway_url: str
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    runs: dict[uuid.UUID, asyncio.Task] = field(default_factory=dict)
    kills: dict[uuid.UUID, asyncio.Event] = field(default_factory=dict)
    # runs another process declared lost: stopped (their kill event), their lines and end no longer recorded
    lost: set[uuid.UUID] = field(default_factory=set)
    ending: set[uuid.UUID] = field(default_factory=set)  # runs whose end is being recorded (store.finish_run)
    # runs whose end this process could not record (Scheduler._supervise gave up): they ran, and are never adopted
    # (Scheduler.fail_lost); an id is dropped once no longer running under this process
    unrecorded: set[uuid.UUID] = field(default_factory=set)
    # tasks whose point met a database error (fire_due), left out of its passes: (the wait, until loop.time());
    # `retrying`: those tried again after one, (the wait that preceded, doubled at the next error; since loop.time()),
    # forgotten once handled, or HELD_MAX after they were let go (killed meanwhile, fired by another process): before,
    # a task that met an error once and was then killed stayed in it for the process's life
    held: dict[uuid.UUID, tuple[float, float]] = field(default_factory=dict)
    retrying: dict[uuid.UUID, tuple[float, float]] = field(default_factory=dict)
    # the passes failed in a row on an error that is not an outage (_pass_failed): how many times each error (its type
    # and words, numbers aside) was met since the first, whose traceback was logged; emptied by a pass that succeeds
    failed_passes: dict[str, int] = field(default_factory=dict)
    # why each run's kill was set, recorded as its reason: what set it first (Scheduler._kill), never overwritten: the
    # stop (STOPPED), task/kill (runner.KILLED) or a replace policy's later point (its reason). Before, the stop's
    # reason was read at the run's end, so a run a replace had already killed read "stopped" when the stop came
    # during its SIGTERM's grace
    kill_reasons: dict[uuid.UUID, str] = field(default_factory=dict)
    installing: asyncio.Task | None = None
    _loop: asyncio.Future | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _conn: Any = None  # the loop's own connection (LISTENing on store.WORK_CHANNEL), one of the pool's
    passes: int = 0
    # a run's events.task_run.* are written to the outbox with its status (store.add_run_event) and sent from there
    outbox: Outbox | None = None
    _outbox_task: asyncio.Task | None = None
    _stopping: asyncio.Task | None = None  # the one stop (Scheduler.stop): a second call waits for it

    def wake(self, *_: object) -> None:
        """Run a pass now (a notification came, or this process freed room)."""
        self._wake.set()

    def start(self) -> None:
        if self.outbox is None:
            self.outbox = Outbox(self.deps.pool, self.deps.publish, event_types=store.EVENT_TYPES,
                                 order_field="run_id", what="task run events", rows=store)
        self._outbox_task = asyncio.create_task(self.outbox.run())
        self._loop = db.begin(self._forever())  # left by a stop, its connections cut as other left work's are

    def events_committed(self) -> None:
        if self.outbox is not None:
            self.outbox.wake()

    async def remove_stale_workdirs(self) -> None:
        """Working directories left by runs that are no longer running (their process was killed)."""
        folder = self.deps.work_root / "runs"
        names = await asyncio.to_thread(lambda: [p.name for p in folder.iterdir()] if folder.is_dir() else [])
        ids = []
        for name in names:
            with contextlib.suppress(ValueError):
                ids.append(uuid.UUID(name))
        running = await store.running_among(self.deps.pool, ids)
        for run_id in ids:
            if run_id not in running:
                await asyncio.to_thread(runner.cleanup, folder / str(run_id))

    async def stop(self) -> None:
        """Stop scheduling; runs in progress are stopped and recorded as failed (a restart would find them lost).
        Within TASK_STOP_TIMEOUT, PostgreSQL answering or not: each step that waits for it is bounded (runner.bounded)
        and what is left unrecorded is the lost-run step's (a run failed as its supervisor's, an event sent at a
        start). Before, the stop waited 15 s for its runs alone, and for the loop's pass, the connection's release,
        the beats and the outbox as long as the server took, while the embedded stack killed it after 5 s: a run
        whose process ignored its SIGTERM was left 'running' with no record of the stop.

        Idempotent: a second call (at once or later) waits for the first and returns, raising nothing. Before, it
        did the steps again, and awaited a loop the first had given up on (cancelled): its CancelledError came out
        of the second stop."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop_once())
            await self._stopping  # the first caller: its outcome (and a cancel of it cancels the stop, as before)
            return
        await asyncio.wait({self._stopping})  # the first's outcome is the first caller's; a cancel here leaves it

    async def _stop_once(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TASK_STOP_TIMEOUT
        self._stop.set()  # from here nothing is started or adopted unkilled, by a pass left below too (_supervised)
        self._wake.set()
        if self._loop is not None:
            await self._stop_step(self._loop, "the scheduler's last pass")
        conn = self._conn
        if not await self._stop_step(self._drop_connection(), "releasing the scheduler's connection"):
            # the server drops its LISTEN with it. The release left in the background may have given the connection
            # back to the pool already (its proxy detached a few steps of the loop before the step's task ends):
            # then the pool's reset dropped the LISTEN and terminate raises InterfaceError, which came out of stop
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
        for run_id in list(self.kills):
            self._kill(run_id, STOPPED)  # a run killed already keeps what killed it
        # beside the runs' wait, at most STOP_STEP (shorter than it): the stop's whole bound is unchanged
        putting_back = asyncio.ensure_future(self._stop_step(self._put_back_unanswered(),
                                                             "putting back the starts whose answer was lost"))
        if self.runs:
            await self._runs_ended(deadline - STOP_STEP - loop.time())
        await putting_back
        if self.installing is not None:
            self.installing.cancel()
        if self._outbox_task is not None:  # the stopped runs' events: sent now if the bus takes them, else at a start
            await self._stop_step(self.outbox.stop(self._outbox_task), "the outbox's last send")

    async def _put_back_unanswered(self) -> None:
        """At a stop: the runs started under this process whose start's answer never came back (adopt_unanswered's,
        which a stopping process no longer adopts) go back to the queue (store.requeue_unstarted: their main.py never
        started), for another scheduler or this one after its restart. Before, they stayed `running`, unbeaten, until
        the lost-run step failed them supervisor_lost_after later ("the task scheduler process supervising the run
        died"), never run. A start a pass left in the background commits after this read: its answer, if it comes,
        makes a run the stop kills and puts back (_supervise); put back here first, that one finds it no longer this
        process's and records nothing. Not a run whose end could not be recorded (`unrecorded`: it ran). One whose
        kill was asked (task/kill, a replace) is recorded ended with that reason, its main.py never run, as an
        adoption's would be; before, it was left to the lost-run step, which failed it "the task scheduler process
        supervising the run died" supervisor_lost_after later. Errors are logged: the lost-run step fails what is
        left, as before."""
        try:
            found = await store.own_unsupervised(self.deps.pool, self.identity, list(self.runs))
            for row in found:
                if row["id"] in self.unrecorded:
                    continue
                back = await store.requeue_unstarted(self.deps.pool, row["id"], self.identity)
                log.warning("run %s: its start was committed but the answer did not reach this process, which is"
                            " stopping: %s", row["id"], "back in the queue" if back is False else
                            "no longer this process's" if back is None else "its kill was asked: ended, never run")
                if back is not None and back is not False:
                    await store.finish_run(self.deps.pool, row["id"], self.identity, "failure", None,
                                           back if isinstance(back, str) else runner.KILLED)
                if back is not None:  # its events.task_run.queued (put back) or .failed (ended)
                    self.events_committed()
        except Exception as exc:  # noqa: BLE001 - the stop goes on; what is left is the lost-run step's
            log.warning("stopping: could not put back the starts whose answer was lost (%s: %s)", type(exc).__name__,
                        exc)

    @staticmethod
    async def _stop_step(step: Awaitable[Any], what: str) -> bool:
        """A step of a stop, at most STOP_STEP; False when it was left (cancelled, ending in the background)."""
        try:
            await runner.bounded(step, STOP_STEP, what)
        except TimeoutError as exc:
            log.warning("stopping: %s", exc)
            return False
        return True

    async def _runs_ended(self, within: float) -> None:
        """Wait up to `within` seconds for the runs being stopped to end (a run's process may take its SIGTERM's 5 s,
        its output's last reads up to 10 s more), beating them meanwhile: the loop that beats them has stopped, and
        another process would take them as lost after supervisor_lost_after and fail them, this stop's own record
        then not written and the runs' last lines refused (store.LATE_LINES). A beat that fails (PostgreSQL away)
        only leaves them to that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        supervising = list(self.runs.values())  # each ends once its end is recorded (in self.runs until then)
        pending = set(supervising)
        while (left := deadline - loop.time()) > 0:
            _, pending = await asyncio.wait(supervising, timeout=min(left, self.deps.settings.heartbeat_interval / 2))
            if not pending:
                return
            asked = list(self.runs)
            if not asked:
                continue
            try:  # bounded by the stop's deadline even on a server that stopped answering (runner.bounded)
                beaten = await runner.bounded(store.beat_runs(self.deps.pool, asked, self.identity),
                                              deadline - loop.time(), "beating the runs still ending")
            except Exception as exc:  # noqa: BLE001 - the stop goes on; a run not beaten may be taken as lost
                log.warning("stopping: could not beat the runs still ending: %s", exc)
            else:
                self._taken_over(asked, beaten)
        if pending:
            log.warning("stopping: %d run(s) still ending after %.0f s, left to the lost-run step: %s", len(pending),
                        within, ", ".join(str(run_id) for run_id in self.runs))

    async def _forever(self) -> None:
        settings = self.deps.settings
        try:
            await self.remove_stale_workdirs()
        except Exception:
            log.exception("could not remove stale run directories")
        last_beat = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            self._wake.clear()  # a notification during the pass makes another pass at once
            delay = settings.tick
            try:
                conn = await self._connection()
                self.passes += 1
                await self.fail_lost(conn)
                await self.fire_due(conn)
                busy = await self.start_queued(conn)
                if self.runs:  # every pass: a kill is announced by a notification
                    await self.heartbeat(conn)
                    last_beat = loop.time()
                await self.install_next(conn)
                own_beat_in = (last_beat + settings.heartbeat_interval / 2 - loop.time()) if self.runs else None
                installer_free = self.installing is None or self.installing.done()  # else its end wakes the loop
                to_next_due = await store.seconds_to_next_due(conn, settings.supervisor_lost_after, installer_free,
                                                              list(self.held))
                if (held_for := self.held_for()) is not None:  # a held task's point: looked at again then
                    to_next_due = held_for if to_next_due is None else min(to_next_due, held_for)
                delay = sleep_for(to_next_due, settings.tick, own_beat_in)
                if busy:
                    delay = min(delay, BUSY_RETRY)
                if self.failed_passes:
                    log.info("scheduler pass succeeded again, after %d failed on errors other than an outage",
                             sum(self.failed_passes.values()))
                    self.failed_passes.clear()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                if is_database_unavailable(exc):  # an outage: a line, no traceback, tried again soon
                    log.warning("scheduler pass failed: %s: %s", type(exc).__name__, exc)
                    delay = min(delay, PASS_RETRY)
                else:  # one a retry meets again (a role's statement_timeout, our SQL, asyncpg misused, another OSError)
                    delay = self._pass_failed(exc, self._longest_retry())
                # The connection goes, and its LISTEN with it: the wait below is not ended by a notification, only by
                # the delay, a stop or this process's own wake (a run of it ending, its installer freed); the next
                # pass listens again on a new connection and looks at everything. Decided so (session 42, review of
                # b2803373, whose back-off meant a notification to end it): after an outage the server took the
                # LISTEN anyway and the delay is PASS_RETRY; after another database error the database answers and a
                # retry meets the error again (that is what sets it apart), and each retry costs the database the
                # failing statement again, the whole statement_timeout for a 57014: a pass at each notification of a
                # busy stack (runs queued, ended) would undo the back-off where it spares the database most. The work
                # a notification announces waits for the next pass, at most the back-off: the tick, or
                # heartbeat_interval / 2 while runs are supervised. A bug (the clause below) keeps the connection, and a
                # notification ends its wait: its pass costs the database only the queries before the bug
                await self._drop_connection()
                # Nor by a wake during the failed pass (a notification heard before the drop, a run of its own ending):
                # it left the wake set and the wait ended at once (review of 8d80d3e9). A failing pass lasts (a 57014's
                # whole statement_timeout) and PostgreSQL hands a listener what was notified during a transaction at
                # its end, the failed pass's rollback: on a busy stack a notification came nearly every time and the
                # back-off was not waited at all. A stop is kept
                if not self._stop.is_set():
                    self._wake.clear()
            except Exception as exc:  # a bug: the same back-off (it waited the tick, logging "next pass in 1 s")
                delay = self._pass_failed(exc, self._longest_retry())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _longest_retry(self) -> float:
        """The longest wait after a failed pass: the tick, and while the process supervises runs their beat's own
        wait (sleep_for's own_beat_in): only a pass beats them, and a step after the beat failing every time must not
        leave them unbeaten past supervisor_lost_after (another process would fail them as lost)."""
        settings = self.deps.settings
        return min(settings.tick, settings.heartbeat_interval / 2) if self.runs else settings.tick

    def _pass_failed(self, exc: Exception, tick: float) -> float:
        """Logs a pass's failure on an error that is not an outage, and answers the seconds until the next pass:
        PASS_RETRY after the first failure in a row, doubling at each one up to `tick` (see PASS_RETRY). The error's
        traceback is logged the first time it (its type and words, their numbers aside: ERROR_VARYING; kept as their
        first PASS_ERROR_KEY_CHARS and a hash of the whole) is met in the row, then a line with its count."""
        failed = sum(self.failed_passes.values()) + 1
        delay = min(PASS_RETRY * 2 ** min(failed - 1, 16), tick)
        try:
            said = f"{type(exc).__name__}: {exc}"
        except Exception:  # noqa: BLE001 - its __str__ failing: raised here, it ended the loop (no more passes)
            said = f"{type(exc).__name__}: (its str() failed)"
        words = ERROR_VARYING.sub("#", said)  # numbers aside first: one cut at the end would vary
        key = words if len(words) <= PASS_ERROR_KEY_CHARS else f"{words[:PASS_ERROR_KEY_CHARS]}... #{hash(words):x}"
        if key not in self.failed_passes:
            if len(self.failed_passes) >= PASS_ERRORS_KEPT:  # errors whose words change: the oldest let go
                del self.failed_passes[next(iter(self.failed_passes))]
            self.failed_passes[key] = 1
            log.error("scheduler pass failed (next pass in %.1f s, later ones doubling to %.1f s while it fails)",
                      delay, tick, exc_info=exc)
            return delay
        self.failed_passes[key] += 1
        log.error("scheduler pass failed again: %s (%d times since its traceback above; next pass in %.1f s)",
                  said[:500], self.failed_passes[key], delay)
        return delay

    async def _connection(self) -> asyncpg.Connection:
        """The loop's connection, LISTENing on the work channel; a new one after a failure. While it is being
        set up nothing is heard, so the pass that follows looks at everything anyway."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        await self._drop_connection()
        conn = await self.deps.pool.acquire()
        try:
            await conn.add_listener(store.WORK_CHANNEL, self.wake)
        except BaseException:
            await self.deps.pool.release(conn)
            raise
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        """The loop's connection back to the pool, its LISTEN dropped, within DROP_SECONDS (runner.bounded), else
        terminated (the server drops the LISTEN with it; a terminated connection's holder returns to the pool).
        Before, the UNLISTEN had no bound and the release asyncio.wait_for's (bpo-42130): on a server that stopped
        answering, a pass's failure held the loop for as long as the server took."""
        conn, self._conn = self._conn, None
        if conn is None:
            return

        async def release() -> None:  # a broken connection is closed by the pool's release
            if not conn.is_closed():
                await conn.remove_listener(store.WORK_CHANNEL, self.wake)
            await self.deps.pool.release(conn)

        try:
            await runner.bounded(release(), DROP_SECONDS, "releasing the scheduler's connection")
        except Exception as exc:  # noqa: BLE001 - the connection is gone either way
            log.debug("releasing the scheduler's connection: %s", exc)
            with contextlib.suppress(Exception):
                conn.terminate()

    # --- 1. lost runs -------------------------------------------------------------------------------------------

    async def fail_lost(self, conn: asyncpg.Connection) -> None:
        await self.adopt_unanswered(conn)
        # not this process's own runs, whose beats (the pass's step 4) may be older than supervisor_lost_after when it
        # was paused (SIGSTOP, a suspended VM, a loop held up): it failed them as lost on waking, its live supervisors
        # could no longer record their end, and their last lines were refused (store.LATE_LINES)
        for row in await store.fail_lost_runs(conn, self.deps.settings.supervisor_lost_after, self.identity,
                                              list(self.runs)):
            log.warning("run %s lost its supervisor %s: marked failed", row["id"], row["supervisor"])
            self.events_committed()

    async def adopt_unanswered(self, conn: asyncpg.Connection) -> None:
        """Supervises the runs started under this process's identity whose start's answer never came back: the
        transaction of store.start_queued committed, then the connection dropped (or the pass was cut) before its rows
        were read, so the pass failed and no supervisor was made for them. Such a run is `running` under this process
        and not among its runs; nobody beat it, and the lost-run step failed it SUPERVISOR_LOST_AFTER later as if
        this process had died ("the task scheduler process supervising the run died"), its point never run. It is
        beaten and supervised now, at the next pass (its main.py never started: it starts now; a kill asked before
        that beat stops it before it starts, one asked later as any run's kill does). Not a run whose end this process
        could not record (`unrecorded`): that one ran, and is left to the lost-run step.

        Adopted within the process's room (max_runs_per_process, as start_queued): one found when the process is full
        goes back to the queue (store.requeue_unstarted; its main.py never started), where this process or another
        starts it in its turn. Before, every one found was adopted, and a start whose commit landed after the next
        pass's look (that pass then started another run in the room it took) made the process one past its
        limit. A run whose kill was asked is adopted all the same: it never starts a process, only records its end."""
        if self._stop.is_set():  # a stop adopts nothing (_supervised): it puts them back (_put_back_unanswered)
            return
        found = await store.own_unsupervised(conn, self.identity, list(self.runs))
        self.unrecorded.intersection_update(r["id"] for r in found)  # the others ended (the lost-run step)
        found = [r for r in found if r["id"] not in self.unrecorded]
        if not found:
            return
        # beaten before it is supervised, and adopted only if that beat found it still this process's: another
        # process's lost-run step (its beat older than supervisor_lost_after: this process was cut off that long) either
        # failed it first (not beaten: not run) or meets the fresh beat (the row's lock orders the two). Before, a run
        # failed meanwhile as lost was adopted from the read and its main.py could start before this pass's heartbeat
        # found it gone
        beaten = await store.beat_runs(conn, [r["id"] for r in found], self.identity)
        room = self.deps.settings.max_runs_per_process - len(self.runs)  # as start_queued counts it
        for row in found:
            if row["id"] not in beaten:
                log.warning("run %s: its start was committed but the answer did not reach this process, and another"
                            " process failed it as lost meanwhile: not run", row["id"])
                continue
            kill_requested = beaten[row["id"]]
            if not kill_requested and room <= 0:
                back = await store.requeue_unstarted(conn, row["id"], self.identity)
                log.warning("run %s: its start was committed but the answer did not reach this process, which is full"
                            " (%d runs at most): %s", row["id"], self.deps.settings.max_runs_per_process,
                            "back in the queue" if back is False else "no longer this process's to give back"
                            if back is None else "its kill was asked meanwhile: left to the next pass")
                if back is False:
                    self.events_committed()
                continue
            log.warning("run %s: its start (at %s) was committed but the answer did not reach this process (the pass"
                        " that started it failed): supervised now", row["id"],
                        row["started_at"].isoformat() if row["started_at"] is not None else "?")
            self.events_committed()  # its events.task_run.started, committed with the start
            if not kill_requested:
                room -= 1
            # asked meanwhile (a replace: its reason; task/kill: True): never started
            self._supervised(row, killed=None if not kill_requested else kill_requested
                             if isinstance(kill_requested, str) else runner.KILLED)

    # --- 2. schedule points -------------------------------------------------------------------------------------

    async def fire_due(self, conn: asyncpg.Connection) -> None:
        """Turns the due tasks' points into runs, in one transaction, each task's writes in a savepoint of their own.

        Each task's schedule is evaluated before anything is written for it; one that cannot be (check_schedule refuses
        it now, as a stored `R` schedule since 71adc2bc or one a newer croniter rejects; croniter raises) stops that
        task alone (store.stop_schedule: a failed run saying why, the task `failed`), logged once: its `next_fire`
        cleared, no pass takes it again. Before, the exception left the transaction, every pass, and no task of any
        workspace fired, nor were runs started or beaten (the pass's later steps).

        A database error for one task (one its data or writes meet: a value refused, a constraint, a deadlock, a role's
        statement_timeout; not the database failing to answer, which stays the pass's: is_database_unavailable) undoes
        that task's writes alone (its savepoint): the pass's other tasks fire, and the task, its point not handled, is
        left out of this process's passes for a while (HELD_FIRST, doubling up to HELD_MAX; `held`), then tried again.
        Before, it failed the whole pass, every pass, for every workspace: a point that met such an error every time
        stopped every task's runs (started, beaten) on every process that took it."""
        grace = timedelta(seconds=self.deps.settings.missed_run_grace)
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task_id in [t for t, (_, until) in self.held.items() if until <= now]:
            self.retrying[task_id] = (self.held.pop(task_id)[0], now)  # its next error doubles the wait
        for task_id in [t for t, (_, since) in self.retrying.items() if now - since > HELD_MAX]:
            del self.retrying[task_id]  # not handled by this process since: a later error starts at HELD_FIRST
        ended = False
        async with conn.transaction():
            for task in await store.due_tasks(conn, FIRE_BATCH, list(self.held)):
                try:
                    async with conn.transaction():  # a savepoint
                        ended = await self._fire_one(conn, task, grace) or ended
                except asyncpg.PostgresError as exc:
                    if is_database_unavailable(exc):  # the pass's: every task would meet it
                        raise
                    # its traceback the first time in a row (not when tried again after its wait): where the
                    # statement over a statement_timeout (57014) or the server's own error (XX000) came from
                    first = task["id"] not in self.retrying
                    wait = min(self.retrying.pop(task["id"], (HELD_FIRST / 2, now))[0] * 2, HELD_MAX)
                    self.held[task["id"]] = (wait, loop.time() + wait)
                    log.warning("task %s: its point %s could not be handled (%s: %s): tried again in %.0f s; the"
                                " pass's other tasks go on", task["id"], task["next_fire"].isoformat(),
                                type(exc).__name__, exc, wait, exc_info=exc if first else None)
                else:
                    self.retrying.pop(task["id"], None)
        if ended:
            self.events_committed()  # the failed runs' events.task_run.failed

    def held_for(self) -> float | None:
        """Seconds until a held task (fire_due) is tried again, the soonest; None when none is held."""
        if not self.held:
            return None
        return max(min(until for _, until in self.held.values()) - asyncio.get_running_loop().time(), 0.0)

    async def _fire_one(self, conn: asyncpg.Connection, task: asyncpg.Record, grace: timedelta) -> bool:
        """One due task's point (fire_due), under its row lock; whether runs were ended (their events to send)."""
        try:
            check_schedule(task["schedule"])  # what a new task's schedule must pass
            point, following, missed = due_point(task["schedule"], task["next_fire"], task["now"],
                                                 task["missed_run_policy"], grace)
        except Exception as exc:  # noqa: BLE001 - this task's schedule alone: the others fire
            error = exc.msg if isinstance(exc, RailyardError) else f"{type(exc).__name__}: {exc}"
            reason = (f"{UNEVALUATED}: {error}"[:1500] + "; the task makes no more runs: kill it and"
                      " schedule it again (task/run_scheduled) with a schedule Railyard accepts")
            recorded = await store.stop_schedule(conn, task["id"], task["workspace_id"], task["next_fire"], reason)
            log.warning("task %s: its schedule %r stopped at %s: %s%s", task["id"], task["schedule"],
                        task["next_fire"].isoformat(), reason,
                        "" if recorded else " (the point had a run already: no failed run recorded)")
            return recorded
        ended = False
        # the task's concurrency policy (task/run_scheduled; NULL, as every task stored before it: allow): what a point
        # does while a run of the task is queued or running, counted and changed under the task's row lock, which
        # every point of it is fired under (a start elsewhere meanwhile changes nothing read)
        policy = task.get("concurrency_policy") or "allow"
        bound = task.get("max_queued") or QUEUED_PER_TASK
        if point is None:
            log.info("task %s: skipping missed schedule points up to %s", task["id"], task["now"])
        elif policy == "forbid" and await store.active_of_task(conn, task["id"], task["workspace_id"]):
            log.info("task %s: point %s skipped: a run of the task is still queued or running"
                     " (concurrency_policy forbid)", task["id"], point.isoformat())
        elif policy not in ("forbid", "replace") and await store.queued_of_task(  # allow (one it does not know too:
                conn, task["id"], task["workspace_id"], bound) >= bound:  # a newer process's, read as allow, bounded)
            log.info("task %s: point %s not queued: %d runs of the task are still waiting to start (at most"
                     " %d; its workspace runs %d at a time)", task["id"], point.isoformat(), bound, bound,
                     self.deps.settings.max_concurrent_runs_per_workspace)
        elif await store.fire(conn, task["id"], task["workspace_id"], point):
            log.info("task %s: run queued for %s%s", task["id"], point.isoformat(),
                     "" if not missed else f" ({missed} earlier points were missed)" if missed < MISSED_COUNTED
                     else f" (at least {missed} earlier points were missed)")
            if policy == "replace":  # the task's other runs: this point's run takes their place
                failed, flagged = await store.replace_active(
                    conn, task["id"], task["workspace_id"], point,
                    f"{REPLACED} {point.isoformat()} (concurrency_policy replace)")
                ended = failed > 0
                if failed or flagged:
                    log.info("task %s: the run for %s replaces %d queued run(s) (failed) and %d running"
                             " (being stopped)", task["id"], point.isoformat(), failed, flagged)
        await store.set_next_fire(conn, task["id"], following)
        return ended

    # --- 3. starting queued runs --------------------------------------------------------------------------------

    async def start_queued(self, conn: asyncpg.Connection) -> bool:
        """Start what fits; True when a workspace's queue was being started by another process (look again soon:
        that process may lack the room this one has)."""
        settings = self.deps.settings
        busy = False
        # Rounds: each offers every waiting workspace one run, fairest first (store.workspaces_waiting), and the next
        # reads the order again with the runs just started counted; until this process is full or a round starts
        # nothing. Before, a workspace was given all the room it could take, in ascending id, and a process's places
        # went to the lowest-id workspace with a backlog for as long as it lasted
        while True:
            started_any = False
            for workspace_id in await store.workspaces_waiting(conn, settings.max_concurrent_runs_per_workspace):
                if settings.max_runs_per_process - len(self.runs) <= 0 or self._stop.is_set():
                    return busy  # full, or stopping: a stop starts nothing (_supervised)
                # not a run this process still has a task for: one queued again by its put-back whose answer was
                # lost, which that task is still retrying (_put_back_unchecked; store.start_queued's `supervised`)
                started = await store.start_queued(conn, workspace_id, settings.max_concurrent_runs_per_workspace,
                                                   1, self.identity, supervised=list(self.runs))
                if started is None:
                    busy = True
                    continue
                for row in started:
                    started_any = True
                    self.events_committed()
                    self._supervised(row)
            if not started_any:
                return busy

    def _supervised(self, row: asyncpg.Record, killed: str | None = None) -> None:
        """A run this process started or adopts, supervised from now on; its kill set at once (`killed`, or a stop
        under way), so its main.py never starts. The stop (_stop_once) sets `_stop` before it sets every run's kill, and
        nothing awaits between this check and the run's place in `kills`: a run is either among the kills the stop sets
        or killed here. Before, a pass the stop gave up on (past STOP_STEP, left to end in the background) could still
        start or adopt a run after the stop had set every kill: its main.py ran while the process shut down, killed by
        nothing (and one started while the stop waited for that pass ran until the kills came)."""
        self.kills[row["id"]] = asyncio.Event()
        if killed or self._stop.is_set():
            self._kill(row["id"], killed or STOPPED)
        self.runs[row["id"]] = asyncio.create_task(self._supervise(row))

    def _kill(self, run_id: uuid.UUID, why: str) -> None:
        """Set the run's kill, `why` recorded as its reason if it ends killed (kill_reasons); a run killed already keeps
        the reason of what killed it first."""
        event = self.kills.get(run_id)
        if event is None or event.is_set():
            return
        self.kill_reasons[run_id] = why
        event.set()

    # --- 4. heartbeats and kills --------------------------------------------------------------------------------

    async def heartbeat(self, conn: asyncpg.Connection) -> None:
        asked = list(self.runs)  # those recording their end too: beaten while finish_run waits for the database
        if not asked:
            return
        beaten = await store.beat_runs(conn, asked, self.identity)
        self._taken_over(asked, beaten)
        for run_id, kill_requested in beaten.items():
            event = self.kills.get(run_id)
            if kill_requested and event is not None and not event.is_set():
                log.info("run %s: kill requested%s", run_id,
                         f" ({kill_requested})" if isinstance(kill_requested, str) else "")
                # store.beat_runs: the reason it was asked with (a replace), or True: task/kill
                self._kill(run_id, kill_requested if isinstance(kill_requested, str) else runner.KILLED)

    def _taken_over(self, asked: list[uuid.UUID], beaten: dict[uuid.UUID, bool]) -> None:
        """Runs beaten for and not beaten: another process declared them lost (this one was paused, or cut off from
        PostgreSQL, past supervisor_lost_after; the run is failed, its place in the workspace given to another). Their
        process is stopped through the runner (`kill`: SIGTERM to the sandbox's launcher, which ends its whole pid
        namespace), their later lines are dropped and their end is not recorded: before, the user's code ran on
        unsupervised to its end or its timeout, beside whatever took its place. Not a run whose end is being
        recorded (`ending`, marked before finish_run starts): its row may have been ended by that finish_run."""
        for run_id in asked:
            if run_id in beaten or run_id in self.lost or run_id in self.ending or run_id not in self.runs:
                continue
            log.warning("run %s is no longer this process's (another process declared it lost): its process is"
                        " stopped and nothing more is recorded for it", run_id)
            self.lost.add(run_id)
            self.kills[run_id].set()

    # --- 5. environments ----------------------------------------------------------------------------------------

    async def install_next(self, conn: asyncpg.Connection) -> None:
        """The next environment waiting to be installed, claimed and installed in the background (`installing`). A
        stopping process claims none, and one its claim found as the stop began is not installed (the claim lapses
        and another scheduler claims it supervisor_lost_after later, as after a crash): the stop cancels `installing`
        after setting `_stop`, and nothing awaits between the check and the install's start. Before, a last pass the
        stop gave up on could start an install after that cancel: pip ran on in the sandbox while the process shut
        down, cancelled by nothing."""
        if self._stop.is_set() or not (self.installing is None or self.installing.done()):
            return
        env = await store.claim_env(conn, self.identity, self.deps.settings.supervisor_lost_after)
        if env is None:
            return
        if self._stop.is_set():
            log.info("requirements %s: claimed as this process stops: not installed here (another scheduler claims"
                     " them %.0f s after this claim)", env["requirements_sha"][:12],
                     self.deps.settings.supervisor_lost_after)
            return
        self.installing = asyncio.create_task(self._install_one(env))

    async def _install_one(self, env: asyncpg.Record) -> None:
        deps = self.deps
        sha = env["requirements_sha"]
        log.info("installing requirements %s", sha[:12])

        # a beat the database refused (or did not answer) is tried again at the next: before, the first failure ended
        # the beating, an exception nobody read, and another process could claim the install mid-way. A beat is sent
        # every heartbeat_interval after the last one answered; one not answered within half the time left until the
        # install could be claimed (supervisor_lost_after after the last beat that landed, counted from its sending),
        # at least heartbeat_interval, has the next sent beside it, and either's answer counts: a beat hung on a
        # connection that stopped answering (its network path gone, new connections pass) does not keep the next from
        # landing in time on another. A beat is not cancelled for being slow (at most BEATS_UNDER_WAY under way, none
        # sent meanwhile; one older than supervisor_lost_after is given up, shared.db cutting its connection): a
        # database answering every beat in s seconds keeps the claim while heartbeat_interval + s stays under
        # supervisor_lost_after. Before, a beat was cancelled at that bound, so a database answering every beat in over
        # (supervisor_lost_after - heartbeat_interval) / 3 (2.7 s with the defaults) had all of them cancelled, and
        # another scheduler claimed the install of a live one
        async def beat() -> None:
            """Beats until the claim is found lost (returns then): another process claimed the install."""
            loop = asyncio.get_running_loop()
            lost_after, interval = deps.settings.supervisor_lost_after, deps.settings.heartbeat_interval
            landed = loop.time()  # the claim (store.claim_env) beat it
            under_way: dict[asyncio.Future[bool], float] = {}  # beats sent, not answered yet: when each was sent

            def lost(answered: asyncio.Future[bool]) -> bool:
                """An answered beat read (and no longer under way): True when it found the claim taken."""
                nonlocal landed
                at = under_way.pop(answered)
                try:
                    held = answered.result()
                except Exception as exc:  # noqa: BLE001 - beaten again next time; unbeaten, another may claim it
                    log.warning("requirements %s: could not beat the install (%s: %s): another scheduler may claim it"
                                " %.0f s after its last beat", sha[:12], type(exc).__name__, exc, lost_after)
                    return False
                landed = max(landed, at) if held else landed
                return not held

            try:
                while True:
                    await asyncio.sleep(interval)
                    # answered meanwhile: read, no longer under way (else they kept the next from being sent)
                    if any([lost(answered) for answered in [b for b in under_way if b.done()]]):
                        return
                    for old in [b for b, at in under_way.items() if loop.time() - at > lost_after]:
                        del under_way[old]
                        db.leave(old)  # its answer could no longer keep the claim
                    began, sent = loop.time(), None
                    if len(under_way) < BEATS_UNDER_WAY:
                        sent = db.begin(store.beat_env(deps.pool, sha, self.identity))
                        under_way[sent] = began
                    bound = max((landed + lost_after - began) / 2, interval)
                    # the beat sent now waited for up to its bound (or, none sent, the first answer), the answers of
                    # older ones read as they come. Before (review r5), the wait ended at any beat's answer: an older
                    # one answering just after this one was sent ended its wait at once, and from then on each beat's
                    # answer was read at the next beat only (a beat already answered ends a wait at once), every beat
                    # logged as not answered within its bound however fast the database answered
                    while under_way and (sent is None or sent in under_way):
                        done, _ = await asyncio.wait(under_way, timeout=max(began + bound - loop.time(), 0.0),
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if any([lost(answered) for answered in done]):  # a list: every answer read (and popped)
                            return
                        if not done or sent is None:
                            break
                    if sent is not None and sent in under_way:
                        log.info("requirements %s: a beat of the install was not answered within %.3g s: %s", sha[:12],
                                 bound, "the next is sent beside it" if len(under_way) < BEATS_UNDER_WAY else
                                 f"{BEATS_UNDER_WAY} under way, the next is sent once either is answered or given up")
            finally:
                for left in under_way:
                    db.leave(left)

        # The install (users' requirements, pip in the sandbox) stops when a beat finds the claim taken over (this
        # process's beats came later than supervisor_lost_after: paused, cut off, a database that did not answer):
        # cancelled, which kills its sandbox (shared.sandbox.run) or its download (packaging._download), and its end
        # is not recorded; the new claimant installs and records its own (its file lock waits for this one's end on
        # one machine). Before, this one went on installing beside the new claimant and recorded its end over the
        # claimant's. An end found lost when recorded (the install ended before a beat saw the claim go) is dropped by
        # store.finish_env itself, and logged here.
        beating = asyncio.create_task(beat())
        install = asyncio.create_task(packaging.install_env(deps.work_root, sha, env["requirements"], deps.settings))
        ok, reason = False, None
        try:
            await asyncio.wait({install, beating}, return_when=asyncio.FIRST_COMPLETED)
            if not install.done():
                await self._ended(install)
                log.warning("requirements %s: another scheduler claimed the install (this one's beats were over %.0f s"
                            " apart): its install was stopped and its end is that scheduler's to record", sha[:12],
                            deps.settings.supervisor_lost_after)
                return
            try:
                ok, reason = install.result()
            except Exception as exc:
                log.exception("installing requirements %s failed", sha[:12])
                ok, reason = False, f"the installer could not run: {type(exc).__name__}: {exc}"[:1500]
            # retried as a run's end is, beaten meanwhile (an attempt whose answer was lost makes the next find the end
            # there: nothing is recorded twice). Before, one failure raised out of this task, whose exception nobody
            # reads, the environment left 'installing'
            attempts = 0

            def finish() -> Awaitable[store.EnvEnd]:
                nonlocal attempts
                attempts += 1
                return store.finish_env(deps.pool, sha, self.identity, ok, reason)

            recorded = await self._retried(finish, "recording an install's end")
        except Exception as exc:  # noqa: BLE001 - never raised out of the task
            log.warning("requirements %s: the install's end (%s) could not be recorded (%s: %s): installed again once"
                        " a scheduler claims them, %.0f s after this one's last beat", sha[:12],
                        "ready" if ok else "failed", type(exc).__name__, exc, deps.settings.supervisor_lost_after)
            return
        finally:
            beating.cancel()
            try:
                await self._ended(install)  # this task cancelled (a stop): the install with it, its sandbox killed
            finally:
                self.wake()  # the installer is free: another environment may wait
        if not recorded:
            log.warning("requirements %s: the install ended (%s): %s", sha[:12], "ready" if ok else f"failed: {reason}",
                        self._not_recorded(recorded, attempts))
            return
        log.info("requirements %s: %s", sha[:12], "ready" if ok else f"failed: {reason}")

    def _not_recorded(self, found: store.EnvEnd, attempts: int) -> str:
        """Why store.finish_env wrote nothing (`found`: what it found), after `attempts` attempts. Only this process's
        installer claims while it installs, a claim sets the worker, and only an upload sets a failed environment to be
        installed again (its worker kept): a retry that finds this worker's name on an environment no longer ended
        this way follows an earlier attempt that recorded the end. Before, every such end was said to be dropped
        after another scheduler's claim, also when an earlier attempt (its answer lost) had recorded it."""
        # set to be installed again (an upload), the environment is nobody's until claimed though its worker is kept:
        # before (review r5), such a retry's WARNING said it was claimed by this very scheduler
        now = ("gone" if found.status is None else f"{found.status}, claimed by {found.worker}" if found.claimed
               and found.worker else f"{found.status}, claimed by nobody" + (f" (last by {found.worker})"
                                                                              if found.worker else ""))
        took = (f"another scheduler claimed the install (this one's beats were over "
                f"{self.deps.settings.supervisor_lost_after:.0f} s apart)")
        if attempts <= 1:
            return f"its end was dropped: {took}, and records its own (the environment now: {now})"
        if found.worker == self.identity:
            return (f"recorded by an earlier attempt whose answer was lost; the environment has been set to be"
                    f" installed again since (an upload of its requirements; now: {now})")
        return (f"not written by this attempt (the environment now: {now}): either {took} before it was recorded,"
                f" its end dropped, or an earlier attempt, whose answer was lost, recorded it and the environment was"
                f" set to be installed again since and claimed")

    @staticmethod
    async def _ended(install: asyncio.Task) -> None:
        """`install` cancelled if still under way, and waited for: its sandbox is killed and waited for by
        shared.sandbox.run (each of its steps ends at a cancel). Its outcome is not raised here (nor left unread)."""
        install.cancel()
        await asyncio.wait({install})
        if not install.cancelled():
            install.exception()

    # --- a run ---------------------------------------------------------------------------------------------------

    async def _supervise(self, row: asyncpg.Record) -> None:
        run_id = row["id"]
        # the run stays in self.runs (beaten, stopped by a stop, not taken as lost by this process's own fail_lost)
        # until its end is recorded: before, it left just before finish_run, and in that window a stop returned
        # without waiting for the record and a pass after a pause took the run as lost and failed it
        try:
            try:
                outcome = await self._run(row)
            except RailyardError as exc:  # e.g. the sandbox is unavailable on this host: its message says why
                log.warning("run %s could not be started: %s", run_id, exc.msg)
                outcome = runner.RunOutcome("failure", None, f"the run could not be started: {exc.msg}")
            except Exception as exc:
                log.exception("run %s could not be started", run_id)
                outcome = runner.RunOutcome("failure", None, f"the run could not be started: {type(exc).__name__}")
            if run_id in self.lost:  # another process failed it (store.fail_lost_runs' reason stands)
                log.warning("run %s, declared lost by another process, was stopped: %s%s", run_id, outcome.status,
                            f" ({outcome.reason})" if outcome.reason else "")
                return
            if outcome.reason == runner.KILLED:  # what set its kill first (_kill): the stop, task/kill, a replace
                if (self.kill_reasons.get(run_id) == STOPPED and not outcome.ran
                        and await self._requeued(run_id)):
                    return
                outcome = runner.RunOutcome("failure", outcome.exit_code,
                                            self.kill_reasons.get(run_id, runner.KILLED))
            elif not outcome.ran and (outcome.reason or "").startswith(UNCHECKED):
                why = await self._put_back_unchecked(run_id, outcome.reason or UNCHECKED)
                if why is None:
                    return
                outcome = runner.RunOutcome("failure", None, why)
            self.ending.add(run_id)
            try:
                await self._record_end(run_id, outcome)  # False: the run was ended already (below)
            except Exception as exc:  # noqa: BLE001 - never raised out of the task, whose exception nobody reads
                self.unrecorded.add(run_id)  # it ran: not one to adopt (fail_lost)
                log.warning("run %s: its end (%s%s) could not be recorded (%s: %s): it stays 'running' until a"
                            " scheduler's lost-run step fails it, %.0f s after its last heartbeat", run_id,
                            outcome.status, f", {outcome.reason}" if outcome.reason else "", type(exc).__name__, exc,
                            self.deps.settings.supervisor_lost_after)
                return
            # woken even when this record found the run ended: an earlier attempt whose answer was lost (or that was
            # left past END_ATTEMPT_SECONDS) may have committed the run's end and its event; before, that event waited
            # for the outbox's IDLE round (a minute)
            self.events_committed()
            log.info("run %s: %s%s", run_id, outcome.status, f" ({outcome.reason})" if outcome.reason else "")
        finally:
            self.runs.pop(run_id, None)
            self.kills.pop(run_id, None)
            self.kill_reasons.pop(run_id, None)
            self.lost.discard(run_id)
            self.ending.discard(run_id)
            self.wake()  # this process has room again

    async def _requeued(self, run_id: uuid.UUID) -> bool:
        """A run the stop killed before its main.py started, put back in the queue (store.requeue_unstarted, retried as
        a run's end is): another scheduler, or this one's next start, runs it in its turn. Before, it was recorded
        failed 'stopped: its task scheduler process shut down', its point never run (a stopping pass's start answered
        after the stop began; a run still being set up, its environment installed, when the stop came). False when
        its kill was asked meanwhile (task/kill, a replace): its end is recorded with that reason (kill_reasons). True
        otherwise, nothing more to record: put back, no longer this process's (declared lost meanwhile, or put back by
        an attempt whose answer was lost), or not put back for the database's errors (logged: the lost-run step fails
        it supervisor_lost_after after its last beat). Marked `ending` first: the stop's beats (_runs_ended) do not
        take the run put back (no longer beaten) for one another process declared lost."""
        self.ending.add(run_id)
        try:
            back = await self._retried(lambda: store.requeue_unstarted(self.deps.pool, run_id, self.identity),
                                       "putting a run back in the queue")
        except Exception as exc:  # noqa: BLE001 - never raised out of the run's task
            log.warning("run %s: killed by the stop before it started, it could not be put back in the queue (%s: %s):"
                        " it stays 'running' until a scheduler's lost-run step fails it", run_id, type(exc).__name__,
                        exc)
            return True
        if isinstance(back, str) or back is True:  # its kill asked meanwhile: that is what ended it
            self.kill_reasons[run_id] = back if isinstance(back, str) else runner.KILLED
            return False
        log.info("run %s: killed by the stop before its main.py started: %s", run_id,
                 "back in the queue" if back is False else "no longer this process's")
        self.events_committed()
        return True

    async def _put_back_unchecked(self, run_id: uuid.UUID, why: str) -> str | None:
        """A run whose claim could not be checked right before its main.py (`why`: PostgreSQL did not answer the
        check's beats for END_RECORD_SECONDS), put back in the queue (store.requeue_unstarted, counted against
        UNCHECKED_REQUEUES, retried as a run's end is): its main.py never started, so another scheduler, or this one
        once PostgreSQL answers, runs it in its turn, as a stop's put-back does. None when nothing more is to be
        recorded: put back, no longer this process's (declared lost meanwhile: its reason stands), or not put back for
        the database's errors (logged: this process adopts it once PostgreSQL answers, or another fails it as lost).
        Else the reason its failure is recorded with: its kill's, asked meanwhile (task/kill, a replace), or, put back
        UNCHECKED_REQUEUES times already, `why` and that. Before, the check's error failed the run for good ("the run
        could not be started: TimeoutError").

        The stop's kill set meanwhile (its attempts under way or retried): from the next attempt on, the put-back is the
        stop's, not counted (no cap, its event PUT_BACK), as _requeued's is; an attempt under way when it came that
        finds the run at the cap is followed by the stop's. Before, it was counted, and a run at the cap failed though
        the stop would have put it back. While it retries, this process claims the run no more (start_queued's
        `supervised`): an attempt whose commit landed and whose answer was lost left it queued, and a pass claimed it
        again, its next attempt put that claim back (counted again) and its end removed the new claim's supervisor
        from `runs` and `kills` (review of 82fa1e41)."""
        self.ending.add(run_id)

        def put_back() -> Awaitable[bool | str | None]:
            stopped = self.kill_reasons.get(run_id) == STOPPED
            return store.requeue_unstarted(self.deps.pool, run_id, self.identity,
                                           unchecked_cap=None if stopped else UNCHECKED_REQUEUES)

        try:
            try:
                back = await self._retried(put_back, "putting a run back in the queue")
            except store.RequeueCapped:
                if self.kill_reasons.get(run_id) != STOPPED:
                    raise
                # the stop came while that attempt, counted, was under way: the stop's put-back now (not counted), as
                # for a stop before that attempt. Before, the run failed "... so not again" or was put back depending
                # on which of the two the stop met (review of e67dc93e)
                back = await self._retried(put_back, "putting a run back in the queue")
        except store.RequeueCapped as capped:
            log.warning("run %s: %s; %s: failed", run_id, why, capped)
            return f"the run could not be started: {why}; {capped}, so not again"
        except Exception as exc:  # noqa: BLE001 - never raised out of the run's task
            # not `unrecorded` (its main.py never ran): this process adopts it (adopt_unanswered) at its first pass
            # that reaches PostgreSQL, and starts it then, unless another process's lost-run step failed it first; a
            # stopping process adopts nothing, and its stop's own put-back (_put_back_unanswered) skips its runs
            log.warning("run %s: %s, and it could not be put back in the queue (%s: %s): %s", run_id, why,
                        type(exc).__name__, exc, "it stays 'running' until a scheduler's lost-run step fails it"
                        if self._stop.is_set() else "this scheduler starts it once PostgreSQL answers, unless another"
                        " scheduler's lost-run step fails it first")
            return None
        if isinstance(back, str) or back is True:  # its kill asked meanwhile: that is what ended it
            return back if isinstance(back, str) else runner.KILLED
        log.warning("run %s: %s: %s", run_id, why, "put back in the queue" if back is False else
                    "no longer this process's")
        self.events_committed()
        return None

    async def _record_end(self, run_id: uuid.UUID, outcome: runner.RunOutcome) -> bool:
        """store.finish_run, retried on a transient error (runner.transient) with backoff for END_RECORD_SECONDS, each
        attempt given up at END_ATTEMPT_SECONDS (runner.bounded); the run is beaten meanwhile (it is in self.runs).
        An attempt whose commit was applied but whose answer was lost makes the next one find the run ended (False):
        nothing is recorded twice. Before, one failure (PostgreSQL restarting at the run's end) raised out of the
        run's task, never read, and the run was left to the lost-run step at once."""
        return await self._retried(lambda: store.finish_run(self.deps.pool, run_id, self.identity, outcome.status,
                                                            outcome.exit_code, outcome.reason),
                                   "recording a run's end")

    @staticmethod
    async def _retried(step: Callable[[], Awaitable[T]], what: str) -> T:
        """`step()` retried on a transient error (runner.transient) with backoff for END_RECORD_SECONDS, each attempt
        given up at END_ATTEMPT_SECONDS (runner.bounded, its TimeoutError naming `what`); the last error raised."""
        async def attempt() -> T:  # an `async def`: tenacity awaits what a coroutine function returns
            return await runner.bounded(step(), END_ATTEMPT_SECONDS, what)

        return await AsyncRetrying(
            stop=stop_after_delay(END_RECORD_SECONDS),
            wait=wait_exponential(multiplier=runner.FLUSH_BACKOFF, max=runner.FLUSH_BACKOFF_MAX),
            retry=retry_if_exception(runner.transient), reraise=True)(attempt)

    async def _minted(self, run_id: uuid.UUID, task: asyncpg.Record, ttl: int) -> str:
        """The run's token (self.mint), asked again with backoff (runner.FLUSH_BACKOFF doubling to FLUSH_BACKOFF_MAX)
        for MINT_RETRY_SECONDS while auth cannot answer it (`passing`), and no longer once the run's kill is set (its
        backoff cut short by it). A refusal (auth's 4xx: the owner deactivated or no longer a member, the run ended)
        is raised at once and fails the run, as every failure did before."""
        kill = self.kills[run_id]

        async def attempt() -> str:  # an `async def`: tenacity awaits what a coroutine function returns
            if kill.is_set():  # during the backoff's wait (not passing: the retries end, the caller reads the kill)
                raise KilledWhileMinting(f"run {run_id} was killed before its token could be minted")
            return await self.mint(task["owner_id"], task["workspace_id"], ttl, str(task["id"]), str(run_id))

        async def nap(seconds: float) -> None:  # the backoff's wait, ended by the run's kill
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kill.wait(), seconds)

        return await AsyncRetrying(
            stop=stop_after_delay(MINT_RETRY_SECONDS),
            wait=wait_exponential(multiplier=runner.FLUSH_BACKOFF, max=runner.FLUSH_BACKOFF_MAX), sleep=nap,
            retry=retry_if_exception(passing), reraise=True)(attempt)

    async def _still_claimed(self, run_id: uuid.UUID) -> bool:
        """Whether the run is still this process's and not killed, beaten (store.beat_runs) right before its main.py
        starts, retried on a transient error as a run's end record is (_retried). Its setup and token mint may have
        outlasted supervisor_lost_after (the process paused, a slow install): another process then failed it
        (fail_lost_runs) and may have started the task's next run, while this one's heartbeat, a pass away, had not
        noticed yet. Not beaten: taken over (_taken_over: lost, its kill set); beaten with a kill asked (task/kill, a
        replace): killed with its reason. Before, main.py started all the same, for a run already failed, with a token
        auth would refuse."""
        beaten = await self._retried(lambda: store.beat_runs(self.deps.pool, [run_id], self.identity),
                                     "checking a run is still this process's before it starts")
        self._taken_over([run_id], beaten)
        kill_requested = beaten.get(run_id)
        if kill_requested:
            self._kill(run_id, kill_requested if isinstance(kill_requested, str) else runner.KILLED)
        return not self.kills[run_id].is_set()

    async def _run(self, row: asyncpg.Record) -> runner.RunOutcome:
        deps = self.deps
        if self.kills[row["id"]].is_set():  # killed as it was started (a stop under way, a kill asked): nothing set up
            return runner.RunOutcome("failure", None, runner.KILLED, ran=False)
        task = await store.task(deps.pool, row["task_id"])
        orch = await store.orchestration(deps.pool, task["orch_id"])
        zip_path = await self._local_zip(orch["sha"])
        env_dir = None
        python = runner.base_python()
        if orch["requirements_sha"]:
            requirements = await deps.pool.fetchval("SELECT requirements FROM envs WHERE requirements_sha = $1",
                                                    orch["requirements_sha"])
            ok, reason = await packaging.install_env(deps.work_root, orch["requirements_sha"], requirements,
                                                     deps.settings)
            if not ok:
                return runner.RunOutcome("failure", None, f"the orchestration's environment is missing: {reason}")
            env_dir = packaging.env_dir(deps.work_root, orch["requirements_sha"])
            python = str(packaging.env_python(env_dir))
        try:  # the owner's relay address, no other owner's (store.relay_number)
            owner_number = await store.relay_number(deps.pool, task["owner_id"])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            owner_number = None
            log.warning("run %s: the owner's relay number could not be read or allocated (%s: %s): the run reaches the"
                        " gateway from an address of a digest of its owner's id, which another owner's may equal",
                        row["id"], type(exc).__name__, exc, exc_info=not is_database_unavailable(exc))
        # the run's token is minted last, once everything else is set up and only if no kill came meanwhile (below):
        # a run the stop kills during its setup (its environment installed, say) goes back to the queue with no token
        # minted. Before, it was minted before that check, and a run put back had a token nobody ever received, valid
        # (the run's session is revoked at its end, which is after its restart) until then or its expiry
        if self.kills[row["id"]].is_set():
            return runner.RunOutcome("failure", None, runner.KILLED, ran=False)
        ttl = min(deps.settings.token_ttl, task["timeout_seconds"] + 60)
        try:
            token = await self._minted(row["id"], task, ttl)
        except Exception as exc:
            if self.kills[row["id"]].is_set():  # killed while auth could not answer: nothing started (a stop: requeued)
                return runner.RunOutcome("failure", None, runner.KILLED, ran=False)
            if isinstance(exc, RailyardError):
                raise not_minted(exc) from None
            raise
        args = task["args"]
        plan = runner.RunPlan(
            run_id=str(row["id"]), workdir=deps.work_root / "runs" / str(row["id"]), zip_path=zip_path,
            entrypoint=orch["entrypoint"], python=python, env_dir=env_dir,
            env=runner.run_env(task_id=str(task["id"]), run_id=str(row["id"]), orch_sha=orch["sha"],
                               owner_id=task["owner_id"], workspace_id=task["workspace_id"],
                               gateway_url=self.gateway_url, token=token,
                               args=args if isinstance(args, dict) else json.loads(args)),
            timeout=task["timeout_seconds"], memory_bytes=deps.settings.run_memory_mb << 20,
            cpu_seconds=deps.settings.run_cpu_seconds, disk_bytes=deps.settings.run_disk_mb << 20,
            disk_files=deps.settings.run_disk_files, at_once=deps.settings.max_runs_per_process,
            owner_number=owner_number)
        seq = 0
        refused = False

        async def sink(lines: list[Any]) -> None:
            nonlocal seq, refused
            if row["id"] in self.lost:  # no longer this process's run: its lines are not recorded
                return
            stored = await store.append_logs(deps.pool, row["id"], seq, lines)
            seq += len(lines)
            if stored < len(lines) and not refused:  # its run ended (declared lost) more than LATE_LINES ago
                refused = True
                log.info("run %s ended more than %.0f s ago (declared lost while this process was away): its later"
                         " lines are not stored", row["id"], store.LATE_LINES)

        writer = runner.LogWriter(sink=sink, max_bytes=deps.settings.max_log_bytes)
        # killed, taken over or stopping while its token was being minted, or failed by another process meanwhile (a
        # pause past supervisor_lost_after: _still_claimed): never started, the token handed to no process (see
        # above: only a kill during the mint's own round trip leaves one)
        if self.kills[row["id"]].is_set():
            return runner.RunOutcome("failure", None, runner.KILLED, ran=False)
        try:
            claimed = await self._still_claimed(row["id"])
        except Exception as exc:
            # killed (a stop) while the database could not be asked: nothing started, as for the mint above (a stop's
            # run goes back to the queue). Before, the check's error failed the run: "the run could not be started"
            if self.kills[row["id"]].is_set():
                return runner.RunOutcome("failure", None, runner.KILLED, ran=False)
            if runner.transient(exc):  # its retries' END_RECORD_SECONDS without an answer: not started,
                # back to the queue (_supervise: _put_back_unchecked). Before, failed for good: "...: TimeoutError"
                return runner.RunOutcome("failure", None, f"{UNCHECKED}: {type(exc).__name__}: {exc}", ran=False)
            raise
        if not claimed:
            return runner.RunOutcome("failure", None, runner.KILLED, ran=False)
        try:
            return await runner.execute(plan, writer, self.kills[row["id"]])
        finally:
            await asyncio.to_thread(runner.cleanup, plan.workdir)

    async def _local_zip(self, sha: str):
        """The orchestration's zip on this machine (fetched from object storage once, checked against its sha)."""
        folder = self.deps.work_root / "orchestrations"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        path = folder / f"{sha}.zip"
        if not path.exists():
            await download_verified(self.deps.objects, sha, folder / f"{sha}.{uuid.uuid4().hex}.part", path, 0o644)
        return path
