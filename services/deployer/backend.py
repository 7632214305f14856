"""Where engine replicas run. The local backend runs each replica as an OS process of this machine
(`python -m services.engine.replica <spec> <replica id>`), restarts one that dies or hangs, and swaps a redeployed
pipeline without failing requests: the new replicas join the deployment's queue group and must answer
before the old ones are asked to drain and stop. A Kubernetes backend will implement the same methods.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import psutil

from shared import sched_hint, subjects
from shared.messages.engine import ReplicaSpec
from shared.settings import DeployerSettings

log = logging.getLogger("railyard.deployer.backend")
MEASURE_EVERY = 2.0
SCALE_UP_AFTER = 3.0
STATUS_PROBE_WAIT = 0.5  # seconds a replica has to answer a status probe
SILENT_KEPT_FOR = DeployerSettings.model_fields["silent_kept_for"].default  # settings.deployer.silent_kept_for's
SILENT_KEPT_PROBES = 3
"""A replica that answered its status probe before keeps its last answer (Running) while its probes go unanswered
(time out: busy), until they have for silent_kept_for seconds (settings.deployer; SILENT_KEPT_FOR, 10 s, by default:
the test stack's is shorter, tests/stack.py) and SILENT_KEPT_PROBES probes in a row: then it is
`Starting` again with the reason. The probe is answered on the replica's event loop, beside its requests (its own
subscription, not queued behind them), which a replica short of CPU answers late: 30 ms median, 280 ms at most
under batch-1000 load at load 8 (session 28), past 0.5 s at load ~19 (docs/inference.md); the deployment then said
`Starting` while it served (its route was resolved again on every request, OIP's model ready said no).
A replica never answered yet is Starting (it loads its models); one with no status subscriber (it unsubscribes when
it drains) is not kept."""
LIVENESS_PROBE_WAIT = 2.0  # seconds the supervisor's own status probe waits (4x a status read's, 7x the most seen)
LIVENESS_KILL_GRACE = 5.0  # seconds a replica killed as hung has after SIGTERM before SIGKILL (not if it is stopped)
LIVENESS_LATE = 1.0  # a liveness probe whose timeout fired this much late: the deployer's own loop stalled, not counted
"""Liveness (as a Kubernetes liveness probe, which KServe's predictors get): a replica that answered before and whose
status probes then went unanswered (timed out) for settings.deployer.liveness_timeout seconds and liveness_probes
probes in a row is hung (a deadlocked or stopped event loop): it still holds its place in the deployment's queue
group, so NATS kept sending it a share of the requests (each re-sent after the gateway's 3 s, or a 504 after 30 s
with one replica) until someone redeployed. The supervisor probes every replica itself every liveness_timeout /
liveness_probes seconds (a status read's probe counts too), so a replica nobody asks about is noticed; a hung one is
sent SIGTERM, SIGKILL after LIVENESS_KILL_GRACE (sooner if it stays stopped: STOPPED_LOOK), and replaced at once as one
that exited. Busy is not hung: the busiest replica measured answered within 280 ms (session 28, batch-1000 at load 8),
and any one answer resets the count. Only the supervisor's own probes (LIVENESS_PROBE_WAIT) are counted: a status
read's 0.5 s probe times out on
a replica short of CPU (load ~19), and the gateway reads the status every ROUTE_MAX_AGE per deployment, and on every
request once the deployment says Starting; counted, and deferring the supervisor's probe, they had a busy replica
killed. A probe that timed out while the deployer's own bus connection was down or reconnected does not count (a NATS
outage is not every replica hanging), nor one whose timeout fired LIVENESS_LATE late (the deployer's loop stalled: the
answer may be waiting unread). A replica not subscribed (no responders: loading, draining) is not counted."""
"""Crash-loop back-off (as Kubernetes' CrashLoopBackOff; settings.deployer.crash_backoff, crash_backoff_max,
crash_stable_after): a replica that exits after it came up (answered a status probe and lived crash_stable_after) is
replaced at once; one that exits before (a bad model, OOM at load, a broken environment), or that the supervisor
killed for not answering within ready_timeout of its start (a load that hangs), is replaced after crash_backoff,
doubling for each such exit in a row up to crash_backoff_max. Before 2026-12-05 it was respawned on the supervisor's
next 0.2 s pass, for ever: a Python process started several times a second. While it waits the replica is `Error`, its
reason saying so and `restart_in` the seconds left; its replacement is `Starting` with a CrashLoopBackOff reason until
it answers; both carry `crashes` (the exits in a row), and a deployment whose other replicas all run is `Running`,
one whose replicas all exited or loop `Error` (handlers.deployment_state), not `Starting`. A replica killed as hung
(liveness) answered before, so it came up: replaced at once, the count reset. Before 2026-12-05 the three were module
constants (1, 60 and 10 s)."""
_DEFAULTS = DeployerSettings.model_fields  # the back-off's defaults live in the settings only
TAIL_BYTES = 8192  # of an exited replica's log read for its reason (the last line, an engine error preferred)
KEPT_LOGS = 10
"""The logs of the last KEPT_LOGS replicas the supervisor replaced (exited, crashed, killed as hung) are kept per
replica set; an older one's (deployments/<name>/replica-<id>.log) is removed when the next is replaced. A crash loop
wrote one a restart for as long as it lasted (one a crash_backoff_max, 60 s: 1,440 a day). Kubernetes keeps a
container's current and previous logs."""
STOPPED_LOOK = 0.25
"""A replica being ended (SIGTERM, then SIGKILL past its grace: LIVENESS_KILL_GRACE when hung, stop_timeout when
stopped by an undeploy, a scale-down or a stack stop) is looked at every STOPPED_LOOK seconds meanwhile: one stopped
(state T: SIGSTOP, SIGTSTP; t: a debugger's or a sampler's trace stop) at two looks in a row that did not run in
between (its main thread's context switches the same: each stop is one) is sent SIGKILL then, not at the grace's end.
A stopped process runs no handler: its SIGTERM waits pending, and the grace (5 s hung, 20 s by default for a stop)
ran out for the same SIGKILL. Not at the first look (2eff55c2 killed a hung one at once): a process stopped for a
moment (py-spy's or gdb's sample of it, a SIGSTOP/SIGCONT CPU limiter) takes its SIGTERM once continued and drains,
publishing the log records of the requests it answered (docs/logs.md, "Graceful stop"), which SIGKILL loses. Not
SIGCONT either: what a stopped replica took was re-sent by the gateway long before, and its queued requests and
probes would be answered after its replacement's. A cgroup freezer's stop reads D or S, not T: the grace, as before."""
REPLICA_MODULE = "services.engine.replica"  # a replica's command line: python -m REPLICA_MODULE <spec> <replica id>
REMOVING = ".removing-"
"""An undeployed deployment's folders (deployments/<name>, engine-work/<name>) are renamed to <their parent>/
.removing-<name>-<random> on the event loop, then removed in the sweep thread (LocalBackend._release); one left by a
deployer that died meanwhile goes at the next start (sweep_stale_work). A deployment's name never starts with '.'
(handlers._check_name)."""
RECHECK_EVERY, RECHECK_FOR = 2.0, 600.0
"""A renamed folder (REMOVING) holding what a live replica uses (a previous deployer's replica still draining: its
log, its workers' folders) keeps those and is looked at again every RECHECK_EVERY seconds, removed once the replica
has exited; after RECHECK_FOR (a replica that never exits) what is left is the next start's (sweep_stale_work)."""
LIVE_LISTING_FOR = 1.0
"""Seconds one listing of the live replicas and working directories (_live_replicas, ~10-30 ms of CPU: every process's
command line and working directory) serves the removals of one batch (remove_gone's, _remove_all_later). Removed one
by one as an undeploy's, each folder listed every process itself: the thousands of folders of names no deployment has
a start may find took that many listings of the sweep thread, every removal and cgroup sweep queued behind them."""
CGROUP_RESWEEP = 5.0
"""An undeploy's cgroup sweep runs again this long after the first: a replica killed with SIGKILL (past stop_timeout)
takes its launchers with it by their parent-death signal, which the kernel delivers asynchronously, so a launcher
may still hold its cgroup at the first sweep."""
KEPT_MARKER = "kept.txt"
"""In deployments/<name>/ of a deploy whose first start failed (and of a folder from before the marker, adopted at the
first start with it: DATA_DIR_MARKED): its replicas' logs and spec are kept for the user, until an undeploy or until
KEPT_FAILED_FOR has passed since the marker's time (its mtime: touch it to keep them longer) or KEPT_FAILED_MAX newer
kept folders are there (handlers.sweep_gone_folders). An inactive deployment's own-name folder without one is what
an undeploy (or a deactivation) left: removed at the next sweep. Removed when a set of the name serves."""
DATA_DIR_MARKED = ".kept-marked"
"""In deployments/: written once a sweep looked at every inactive deployment's own-name folder with KEPT_MARKER in
use (kept_folders). Before it is there (a data directory of a deployer before session 34), a folder without a marker
may be a failed deploy's logs: it is adopted (a marker written, kept KEPT_FAILED_FOR from then), not removed. Its
time is the last sweep's: a process's first sweep adopts the unmarked folders written since (a deployer without the
markers, run in between, wrote none for its failed deploys), unless its RUN_LINE says the deployer before was one with
the markers that did not stop."""
RUN_LINE = "Deployer: "
"""DATA_DIR_MARKED's line saying whether the last deployer with the markers here runs ("running", written by its first
sweep that had nothing left to adopt) or stopped ("stopped at ...", written by its close(), which sets the file's time
too). A start that reads "running" follows a deployer with the markers that was killed (between an undeploy's commit
and the folder's removal, say): it marked its failed deploys at once, so the unmarked folders written since its last
sweep are its undeploys' leftovers, which the first sweep removes instead of adopting them. A deployer without the
markers run after it leaves the line as it was: after a stop, what it wrote is newer than the file's time (adopted); a
deployer with the markers killed, then one without run, then this one: the middle one's failed deploys' folders go."""
KEPT_FAILED_FOR = 7 * 86400.0
KEPT_FAILED_MAX = 50
"""A failed deploy's kept folder (KEPT_MARKER) of an inactive deployment is removed KEPT_FAILED_FOR seconds after
its marker's time, or when KEPT_FAILED_MAX kept folders newer than it are there (the newest are kept)."""


def _die_with_parent(slice_us: int = 0, parent: int | None = None) -> None:
    """In a replica between fork and exec: SIGTERM when the deployer (`parent`, its pid) dies, so a deployer killed
    and restarted leaves no replica that no row names (its restore starts each active deployment again). SIGTERM's
    default action first: until the exec the child has the deployer's handler (asyncio's, for its graceful stop),
    which took the signal and did nothing; and the deployer may have died before the child asked, when the kernel
    sends nothing (the child reparented already): then it exits. Before, a replica forked in either window ran on."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sched_hint.parent_death_signal(signal.SIGTERM)  # libc found at import: no dlopen between fork and exec
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    if slice_us:  # the replica is on every request's path: a short scheduler slice (shared/sched_hint.py)
        sched_hint.request_path_slice(slice_us)


# Memory (docs/performance.md, "memory"): Arrow buffers from glibc's heap instead of mimalloc, which kept the freed
# blocks of batch-1000 load (~75 MiB) where the replica's malloc_trim could not give them back; and one glibc arena
# instead of one per thread that ever ran a model call (~65 MiB of them after load). One, not two (item 31):
# malloc_trim gives back only the main arena's free top, a thread arena's top goes only when a free finds it above
# the trim threshold (dynamic: up to 64 MiB), so the second arena kept 9-28 MiB of the log segments' Parquet writes
# after the idle trim. Neither measured slower (decode + predict + encode, batch 1 and 1000; the replica at
# batch-1000 load, item 31). glibc's mmap and trim thresholds stay dynamic: fixed ones were measured and not kept
# (items 30, 31, 37). Both backends start replicas with these unless the operator set them (kubernetes.replica_objects
# too).
REPLICA_MEMORY_DEFAULTS = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"}


def replica_environment(environ: Any) -> dict[str, str]:
    """An engine replica's environment: the deployer's, but connecting to the bus as `engine` (the identity that
    may answer `engine.<deployment>.infer` and publish inference logs), never as the deployer, and without the
    deployer's database DSN or password (a replica keeps no tables). Users' code gets none of this: it runs in the
    replica's sandboxed workers, whose environment is empty but for thread counts (services/engine/sandboxed.py)."""
    env = {name: value for name, value in environ.items()
           if not name.startswith(("RAILYARD_POSTGRES__", "RAILYARD_DB_PASSWORD__"))}
    env.pop("RAILYARD_NATS__ENGINE_PASSWORD", None)
    env.pop("RAILYARD_PROBE_DIR", None)  # the deployer pod's probe files are the deployer's own (shared/probe_files.py)
    for name, value in REPLICA_MEMORY_DEFAULTS.items():  # an operator's own values win
        env.setdefault(name, value)
    if env.get("RAILYARD_NATS__USER"):
        env["RAILYARD_NATS__USER"] = "engine"
        env["RAILYARD_NATS__PASSWORD"] = environ.get("RAILYARD_NATS__ENGINE_PASSWORD", "")
    return env


@dataclass
class Replica:
    """One engine process."""

    replica_id: str
    process: asyncio.subprocess.Process
    started_at: float
    restarts: int = 0
    last_exit: int | None = None
    usage: psutil.Process | None = None  # kept so cpu_percent measures since the previous call
    answered: dict[str, Any] | None = None  # its last answer to a status probe
    silent_since: float | None = None  # when the first of its unanswered probes in a row was sent
    silent_probes: int = 0  # its status probes unanswered in a row
    probed_at: float = 0.0  # when its last liveness probe was sent, or it last answered any probe
    answered_at: float | None = None  # when it last answered a status probe (any)
    live_silent_since: float | None = None  # when the first of its unanswered liveness probes in a row was sent
    live_silent_probes: int = 0  # its liveness probes (the supervisor's, LIVENESS_PROBE_WAIT) unanswered in a row
    probing: bool = False  # the supervisor's liveness probe of it is under way
    last_restart: str | None = None  # why the replica it replaced went: "exited with 1", "hung: ..."
    crashes: int = 0  # exits in a row of this slot's replicas before they came up (crash_backoff)
    respawn_at: float | None = None  # exited: when the supervisor replaces it (crash-loop back-off)
    crash_reason: str | None = None  # in a crash loop: why the replica it replaced went (its log's last line)
    gave_up: str | None = None  # why the supervisor killed it before it came up (not ready within ready_timeout)

    def cpu_percent(self) -> float:
        if self.usage is None:
            self.usage = psutil.Process(self.process.pid)
        return self.usage.cpu_percent(interval=None)


@dataclass
class ReplicaSet:
    """The replicas serving one deployment's current spec."""

    name: str
    spec_path: Path
    replicas: list[Replica] = field(default_factory=list)
    stopping: bool = False
    ready: bool = False  # every replica answered once: from then on the supervisor replaces the ones that die
    autoscale: tuple[int, int] | None = None  # (minimum, maximum) replicas
    cpu_target: float = 50.0  # percent of one core per replica
    last_scaled: float = field(default_factory=time.monotonic)
    last_measured: float = 0.0
    replaced: collections.deque[str] = field(default_factory=collections.deque)  # KEPT_LOGS: replaced replicas' ids


class LocalBackend:
    """Engine replicas as local processes, supervised."""

    def __init__(self, work_dir: Path, nats_request, *, scale_down_after: float, ready_timeout: float,
                 stop_timeout: float, request_slice_us: int = 0, liveness_timeout: float = 0.0,
                 liveness_probes: int = 1, bus_epoch: Callable[[], int | None] = lambda: 0,
                 crash_backoff: float = _DEFAULTS["crash_backoff"].default,
                 crash_backoff_max: float = _DEFAULTS["crash_backoff_max"].default,
                 crash_stable_after: float = _DEFAULTS["crash_stable_after"].default,
                 silent_kept_for: float = SILENT_KEPT_FOR,
                 engine_work_dir: Path | None = None, sweep_cgroups: Callable[[], int] | None = None) -> None:
        """Timings from settings.deployer (their defaults live there only): an idle replica retires
        scale_down_after seconds after the last scaling, new replicas have ready_timeout to answer, a stopping
        one stop_timeout to drain, a hung one is replaced after liveness_timeout and liveness_probes unanswered
        probes (0: never), one that never answers is killed ready_timeout after its start; a replica that exits
        (or is killed) before it came up is replaced after crash_backoff, doubling up to crash_backoff_max (it came
        up once it answered and lived crash_stable_after); a replica that answered keeps its answer for silent_kept_for
        while its probes go unanswered (SILENT_KEPT_FOR); request_slice_us: the scheduler slice replicas ask for
        (settings' request_path_slice_us). bus_epoch: the deployer's bus connection, None while it is down, else a
        number that changes when it reconnects (a probe timed out across an outage is not counted).
        engine_work_dir: where replicas keep their sandboxed workers' folders (engine-work; sweep_work,
        sweep_stale_work). sweep_cgroups: removes the sandbox cgroups their owners left (shared/sandbox.py
        sweep_unused_cgroups), called by sweep_stale_work and after an undeploy's replicas are gone (_release)."""
        self.work_dir = work_dir
        self.engine_work_dir = engine_work_dir
        self.liveness_timeout = liveness_timeout
        self.liveness_probes = liveness_probes
        self.crash_backoff, self.crash_backoff_max = crash_backoff, crash_backoff_max
        self.crash_stable_after = crash_stable_after
        self.silent_kept_for = silent_kept_for
        self.bus_epoch = bus_epoch
        self._probes: set[asyncio.Task] = set()  # the supervisor's liveness probes under way
        self.request_slice_us = request_slice_us
        self.request = nats_request  # async (subject, payload bytes, timeout) -> bytes
        self.scale_down_after = scale_down_after
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.sets: dict[str, ReplicaSet] = {}
        self._supervisor: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()  # scaled-down replicas draining; close() waits for them too
        self._sweeps: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()  # _sweep_later
        self._sweeper: asyncio.Task | None = None
        self.sweep_cgroups = sweep_cgroups
        # a name's folders in use outside self.sets: its starts, its replicas being spawned and its retiring replicas
        self._users: collections.Counter[str] = collections.Counter()
        # names whose folders go once nothing uses them (_release): True both folders (an undeploy), False its
        # engine-work folder only (a first start that failed: its replicas' logs and spec stay for the user)
        self._undeployed: dict[str, bool] = {}
        self._later: dict[Any, asyncio.TimerHandle] = {}  # removals and sweeps to run again (_at_later)
        self._closed = False
        self._closing = False  # close() began: a first start failing from here on is the stop's doing, not the user's
        # kept_folders: whether this process swept yet (its first sweep adopts what was written since the last sweep
        # of a deployer with the markers: an older one's failed deploys, run in between), and the names a sweep
        # adopted, whose marker remove_gone takes back from a set that serves under the name (a start that ended
        # while the sweep's thread wrote it)
        self._first_sweep = True
        self._to_adopt: set[str] = set()  # the first sweep's to adopt whose marker could not be written: retried
        self._run_stamped = False  # this process wrote DATA_DIR_MARKED's RUN_LINE "running": its close() says stopped
        # a sweep thread's look at _closing and its "running", and close()'s "stopped", one at a time: a thread that
        # outlived its cancelled task (asyncio.to_thread) and wrote after close() made the stop read as a kill
        self._stamp_lock = threading.Lock()
        self._adopted: list[str] = []
        # starts counted at their beginning and end, and each name's last (remove_gone: not a name started since
        # the caller's listing, whose folders and kept marker it may have missed)
        self._starts = 0
        self._started: dict[str, int] = {}

    async def _spawn(self, replica_set: ReplicaSet, replica_id: str) -> Replica:
        """A new replica of the set. Its deployment's folders count as in use while it is spawned (a stop of the set
        meanwhile does not remove them, _release); the caller then keeps it in the set or retires it, in the same
        step (no await between), which takes over."""
        name = replica_set.name
        self._users[name] += 1
        try:
            log_path = self.work_dir / name / f"replica-{replica_id}.log"
            with open(log_path, "ab") as handle:  # noqa: ASYNC230 - the child writes to it for its life
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", REPLICA_MODULE, str(replica_set.spec_path), replica_id,
                    stdout=handle, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                    preexec_fn=functools.partial(_die_with_parent, self.request_slice_us, os.getpid()),
                    env=replica_environment(os.environ))
        except BaseException:
            self._leave(name)
            raise
        self._leave(name, release=False)  # the caller's now (in the set, or retired: _retire counts it)
        return Replica(replica_id=replica_id, process=process, started_at=time.monotonic())

    async def start(self, name: str, spec: ReplicaSpec, replicas: int,
                    autoscale: tuple[int, int] | None = None, cpu_target: float = 50.0,
                    serving: Callable[[], Awaitable[None]] | None = None,
                    ready_within: float | None = None) -> ReplicaSet:
        """Start a replica set for `name`; returns once every replica answers (or raises TimeoutError). `serving` is
        awaited once they answer, before they replace the running set (a redeploy records its new version then, not
        while the old set still serves alone); when it raises, the new set is stopped and the running one kept.
        `ready_within`: seconds the replicas have to answer when less than ready_timeout (what a deploy's caller
        waits left them: handlers._activate), else TimeoutError as past ready_timeout.

        The deployment's folders are in use from here (an undeploy's removal of them not begun yet is called off,
        _release); when a first start fails, its engine-work folder goes but deployments/<name>/ stays: its
        replicas' logs (the whole traceback behind the reason the deploy's 400 quotes) and its spec."""
        self._undeployed.pop(name, None)
        self._users[name] += 1
        self._starting(name)
        try:
            return await self._start(name, spec, replicas, autoscale, cpu_target, serving, ready_within)
        finally:
            self._starting(name)
            self._leave(name)

    def _starting(self, name: str) -> None:
        self._starts += 1
        self._started[name] = self._starts

    def sweep_began(self) -> int:
        """A mark to give remove_gone: names a start began or ended for after it are not removed."""
        return self._starts

    async def _start(self, name: str, spec: ReplicaSpec, replicas: int, autoscale: tuple[int, int] | None,
                     cpu_target: float, serving: Callable[[], Awaitable[None]] | None,
                     ready_within: float | None) -> ReplicaSet:
        folder = self.work_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / f"spec-{uuid.uuid4().hex[:8]}.json"
        spec_path.write_text(spec.model_dump_json())
        replica_set = ReplicaSet(name=name, spec_path=spec_path, autoscale=autoscale, cpu_target=cpu_target)
        previous = self.sets.get(name)
        try:
            for _ in range(replicas):
                replica_set.replicas.append(await self._spawn(replica_set, uuid.uuid4().hex[:8]))
            if previous is None:  # a first deploy shows its replicas while they start
                self.sets[name] = replica_set
            async with asyncio.timeout(ready_within):
                await self._wait_ready(replica_set)
            replica_set.ready = True
            if serving is not None:
                await serving()
        except BaseException as exc:
            await self._stop_set(replica_set)
            if previous is None:
                if self.sets.get(name) is replica_set:
                    del self.sets[name]
                self._undeployed.setdefault(name, False)  # its workers' folders go (the start's _leave)
                # a failed start's logs are kept for the user; a start cancelled (the deployer's stop: the restore's
                # start still loading, a deploy past the command drain) or whose set close() stopped did not fail:
                # its row stays active and the next start's restore starts it again. Marked, it was kept as a failed
                # deploy's for KEPT_FAILED_FOR should the row go inactive without an undeploy
                if not isinstance(exc, asyncio.CancelledError) and not self._closing:
                    _mark_kept(folder, f"the failed start of deployment {name}")
            raise
        # a redeploy (hot swap): the running set stays the deployment's status until the new one serves, so the
        # gateway never sees a "starting" deployment in between (it would answer 503)
        self.sets[name] = replica_set
        self._undeployed.pop(name, None)  # it serves: a stop() made meanwhile stopped the previous set only
        _unlink(folder / KEPT_MARKER)  # a failed start's before it: its folder is a serving set's now
        if previous is not None:
            await self._stop_set(previous)
        return replica_set

    async def _wait_ready(self, replica_set: ReplicaSet) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            states = await self._states(replica_set)
            if all(s["status"] == "Running" for s in states):
                return
            failed = [s for s in states if s["status"] == "Error"]
            if failed:
                raise RuntimeError(failed[0].get("reason") or "an engine replica failed to start")
            await asyncio.sleep(0.05)
        raise TimeoutError("the engine replicas did not become ready")

    async def replica_state(self, replica_set: ReplicaSet, replica: Replica,
                            wait: float = STATUS_PROBE_WAIT, liveness: bool = False) -> dict[str, Any]:
        """The replica's state; `liveness`: the supervisor's probe, whose timeout counts towards hung (_hung)."""
        base = {"name": f"engine-{replica_set.name}-{replica.replica_id}", "ip": "127.0.0.1", "details": [],
                "reason": None, "pid": replica.process.pid, "restarts": replica.restarts,
                "last_restart": replica.last_restart}
        if replica.process.returncode is not None:
            reason = self._exit_reason(replica_set, replica)
            left = None if replica.respawn_at is None else replica.respawn_at - time.monotonic()
            if left is None or left <= 0:
                return base | {"status": "Error", "reason": reason} | self._looping(replica)
            return base | {"status": "Error", "restart_in": round(left, 1), "crashes": replica.crashes,
                           "reason": f"CrashLoopBackOff: {reason} ({replica.crashes} exits in a row soon after "
                                     f"start); restarted in {left:.0f} s"}
        if replica.gave_up is not None:  # being killed (_give_up): it counts as this slot's next exit
            return base | {"status": "Error", "reason": replica.gave_up, "crashes": replica.crashes + 1}
        return base | self._starting_in_a_loop(replica, await self._probe(replica_set, replica, wait, liveness))

    @staticmethod
    def _looping(replica: Replica) -> dict[str, Any]:
        """The `crashes` field of a replica whose slot is in a crash loop (its exits in a row before coming up)."""
        return {"crashes": replica.crashes} if replica.crashes else {}

    @staticmethod
    def _starting_in_a_loop(replica: Replica, state: dict[str, Any]) -> dict[str, Any]:
        """A replacement in a crash loop that has not answered yet: `Starting` with the loop's reason and `crashes`,
        not a bare `Starting` (which reads as a first start: the deployment said `Starting` for the whole loop)."""
        if not replica.crashes or replica.answered is not None or state.get("status") == "Running":
            return state
        return state | {"crashes": replica.crashes, "reason": (
            f"CrashLoopBackOff: restarted after {replica.crashes} exit{'s' if replica.crashes > 1 else ''} in a row "
            f"soon after start (the last: "
            f"{replica.crash_reason or replica.last_restart}); starting") + (
            f"; {state['reason']}" if state.get("reason") else "")}

    def _exit_reason(self, replica_set: ReplicaSet, replica: Replica) -> str:
        """Why an exited replica went: the supervisor's reason when it killed it (_give_up), else its log's last
        line, else its exit code."""
        return replica.gave_up or self._last_log_line(replica_set, replica) or \
            f"exited with {replica.process.returncode}"

    async def _probe(self, replica_set: ReplicaSet, replica: Replica, wait: float,
                     liveness: bool) -> dict[str, Any]:
        """A running replica's answer to its status probe, or what its silence means (SILENT_KEPT_FOR)."""
        sent = time.monotonic()
        if liveness:
            replica.probed_at = sent
        epoch = self.bus_epoch()
        try:
            answer = json.loads(await self.request(
                subjects.engine_replica_status(replica_set.name, replica.replica_id), b"{}", wait))
        except TimeoutError:  # no answer in time: loading its models, or busy (SILENT_KEPT_FOR)
            if epoch is None or self.bus_epoch() != epoch:  # the deployer's bus was down: nothing known of it
                return replica.answered or {"status": "Starting"}
            if liveness:
                self._missed(replica, sent, wait)
            return self._silent(replica, wait)
        except Exception:  # no responders (not subscribed yet, or draining), the bus down, a reply not JSON
            replica.answered_at = None  # not known to run any more: a route's resolve probes it (serving_now)
            return {"status": "Starting"}
        replica.answered, replica.silent_since, replica.silent_probes = answer, None, 0
        replica.live_silent_since, replica.live_silent_probes = None, 0
        # alive now: the next liveness probe is due a period from here
        replica.probed_at = replica.answered_at = time.monotonic()
        return answer

    @staticmethod
    def _missed(replica: Replica, sent: float, wait: float) -> None:
        """A liveness probe of a replica timed out: counted unless the timeout fired late (LIVENESS_LATE)."""
        late = time.monotonic() - sent - wait
        if late > LIVENESS_LATE:  # the deployer's loop stalled: the answer may have come and waited unread
            log.info("liveness probe of engine replica %s timed out %.1f s late: the deployer's loop was busy; "
                     "not counted", replica.replica_id, late)
            return
        if replica.live_silent_since is None:
            replica.live_silent_since = sent
        replica.live_silent_probes += 1

    def _silent(self, replica: Replica, wait: float = STATUS_PROBE_WAIT) -> dict[str, Any]:
        """What a replica whose status probe timed out is: its last answer for a while when it answered before."""
        now = time.monotonic()
        if replica.answered is None:
            return {"status": "Starting"}
        if replica.silent_since is None:
            replica.silent_since = now - wait
        replica.silent_probes += 1
        silent = now - replica.silent_since
        if silent < self.silent_kept_for or replica.silent_probes < SILENT_KEPT_PROBES:
            return replica.answered
        return {"status": "Starting", "reason": f"it answered no status probe for {silent:.0f} s "
                                                f"({replica.silent_probes} in a row): busy or hung"}

    async def _states(self, replica_set: ReplicaSet) -> list[dict[str, Any]]:
        """Every replica's state, probed at once: one after another, each replica that did not answer added its
        STATUS_PROBE_WAIT to every status and route read."""
        return list(await asyncio.gather(*(self.replica_state(replica_set, r) for r in list(replica_set.replicas))))

    def _last_log_line(self, replica_set: ReplicaSet, replica: Replica) -> str | None:
        """The last line of the replica's log, an engine error's (`railyard-engine:`) preferred, from its last
        TAIL_BYTES only: the whole file was read on every status read of an exited replica."""
        path = self.work_dir / replica_set.name / f"replica-{replica.replica_id}.log"
        try:
            with path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - TAIL_BYTES))
                tail = handle.read(TAIL_BYTES)
        except OSError:
            return None
        lines = tail.decode(errors="replace").splitlines()
        if size > TAIL_BYTES:
            lines = lines[1:]  # the first one is cut
        lines = [line for line in lines if line.strip()]
        errors = [line for line in lines if "railyard-engine:" in line]
        return (errors or lines or [None])[-1]

    async def stop(self, name: str, every_name: bool = False) -> None:
        """Stop deployment `name`'s replicas (an undeploy, a redeploy under another name); its folders,
        deployments/<name>/ (its replicas' logs, its specs) and engine-work/<name>/, go once no replica of it runs
        and no start of it is under way (_release), also when none ran (an undeploy after a failed deploy, whose
        logs a failed start kept). `every_name` (an undeploy): the folders of the deployment's other names too
        (<deploy_id>-<id> with another deploy_id: a redeploy under a new deploy_id that failed while the previous
        name served kept its replicas' logs there, which no later stop named) that no set runs or starts under."""
        replica_set = self.sets.pop(name, None)
        self._undeployed[name] = True
        if replica_set is not None:  # its draining replicas use the folders: an exit meanwhile of a replica retired
            self._users[name] += 1  # before (_retire's _leave) is no cue to remove them
            try:
                await self._stop_set(replica_set)
            finally:
                self._leave(name, release=False)
        self._release(name)
        if every_name:
            # listed in a thread (one folder a deployment ever made here, those of before session 32 included), and
            # decided here, on the loop: a name no set runs and no start uses now (a start of it keeps it)
            found = await asyncio.to_thread(self._folder_names, "-" + name.rpartition("-")[2])
            for other in sorted(found - {name}):
                if other not in self.sets and not self._users.get(other):
                    self._undeployed[other] = True
                    self._release(other)

    def _folder_names(self, ending: str) -> set[str]:
        """The names of the deployment folders ending in `ending` (a deployment's `-<id>`: its names), in both tops."""
        return {path.name for top in (self.work_dir, self.engine_work_dir) if top is not None
                for path in _listed(top, "") if path.name.endswith(ending) and not path.name.startswith(REMOVING)}

    def folder_names(self) -> set[str]:
        """(in a thread) The names of every deployment folder here, in both tops (not those being removed)."""
        return self._folder_names("")

    def kept_folders(self, names: Iterable[str], now: float) -> tuple[dict[str, float | None], set[str]]:
        """(in a thread) Of these deployment names (inactive deployments' own names: handlers.sweep_gone_folders),
        the time of each one's KEPT_MARKER (a failed deploy's logs kept), None for one without (what an undeploy left:
        to remove); one whose folder or marker cannot be read is left out (kept). And the names the replicas running
        on this machine have (found by their command lines, listed after the folders: a previous deployer's,
        draining). A data directory not DATA_DIR_MARKED yet (its folders made before the markers) has its folders
        without one adopted: a marker written (time `now`), so they are kept as a failed deploy's are, then it is
        marked (unless a marker could not be written: the next sweep adopts those again). Each sweep with nothing left
        to adopt sets DATA_DIR_MARKED's time to `now` (and its RUN_LINE to "running"); a process's first sweep also
        adopts the unmarked folders written since that time (by a deployer without the markers, run in between: a
        rollback, whose failed deploys wrote none), unless the deployer before was one with the markers that did not
        stop (RUN_LINE "running": they are its undeploys'). Its later sweeps remove such folders (this process marks
        its own failed starts) but those the first sweep could not mark, which they try again."""
        stamp = self.work_dir / DATA_DIR_MARKED
        try:
            stamped: float | None = stamp.stat().st_mtime
        except OSError:  # not there (or unreadable, as exists() took it): not marked
            stamped = None
        if stamped is not None and _marked_lines(stamp) is None:  # its time may be a torn write's, its line gone:
            log.warning("%s cannot be read or was cut short: taken as not there (the deployment folders without %s "
                        "are adopted, none removed), then written again", stamp, KEPT_MARKER)
            stamped = None
        first, self._first_sweep = self._first_sweep, False
        since: float | None = None  # unmarked folders written since this are adopted (None: the first's left only)
        if first and stamped is None:
            since = -math.inf
        elif first and not _run_unstopped(stamp):
            since = stamped
        why = ("found at the first start that marks kept folders" if stamped is None else
               f"written since this data directory's last sweep with the markers ({_iso(stamped)})")
        failed: set[str] = set()
        self._adopted = []
        found: dict[str, float | None] = {}
        for name in names:
            folder = self.work_dir / name
            try:
                found[name] = (folder / KEPT_MARKER).stat().st_mtime
                continue
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as exc:
                log.warning("could not read %s: %s", folder / KEPT_MARKER, exc)
                continue
            if since is None and name not in self._to_adopt or folder.is_symlink() or not folder.is_dir() or \
                    since is not None and not _written_since(folder, since):
                found[name] = None  # a link is unlinked, what it points at stays
            elif _mark_kept(folder, f"deployment {name}, {why}", now):
                found[name] = now
                self._adopted.append(name)
            else:
                failed.add(name)
        self._to_adopt = failed
        with self._stamp_lock:
            if not failed and not self._closing:  # (a sweep's thread outliving close(): it says stopped)
                try:
                    self.work_dir.mkdir(parents=True, exist_ok=True)
                    _stamp(stamp, now, "running")
                    self._run_stamped = True
                except OSError as exc:
                    log.warning("could not write %s: %s", stamp, exc)
        return found, _live_replicas()[1]

    def remove_gone(self, names: set[str], since: int | None = None) -> list[str]:
        """(on the event loop) Remove the folders of deployment `names` that no deployment has any more
        (handlers.sweep_gone_folders, at the deployer's start and every GONE_SWEEP_EVERY): as an undeploy's removal
        (_release: renamed at once, removed in the sweep thread, what a live replica or process uses kept), but never
        a name a set runs under, a start or a replica uses, whose removal is already decided, or (`since`: the
        caller's sweep_began() before it listed them) a start of which began or ended since. The names whose removal
        began."""
        for name in self._adopted:  # adopted by the sweep's thread while a start of the name ended serving (it took
            # its folder's marker away before the thread wrote one): a serving set's folder is no failed deploy's
            replica_set = self.sets.get(name)
            if replica_set is not None and replica_set.ready:
                _unlink(self.work_dir / name / KEPT_MARKER)
        self._adopted = []
        removing: list[str] = []
        removals: list[tuple[str, Path, bool]] = []
        for name in sorted(names):
            if name in self.sets or self._users.get(name) or name in self._undeployed:
                continue
            if since is not None and self._started.get(name, 0) > since:
                continue
            self._undeployed[name] = True
            self._release(name, cgroups=False, removals=removals)
            removing.append(name)
        if removals:  # renamed, all of them: removed in one job of the sweep thread
            self._remove_all_later(removals)
        return removing

    def _remove_all_later(self, removals: list[tuple[str, Path, bool]]) -> None:
        """Remove renamed folders ((what, folder, workers) each) in the sweep thread, each as _remove_later would
        (what a live replica or process uses kept, and looked at again), in one job whose listing of the live
        processes serves LIVE_LISTING_FOR seconds of removals: taken after every rename, so a replica started since
        uses none of them (a start of the name makes folders of its own). The job stops at close(): what is left is
        the next start's (sweep_stale_work removes .removing-* folders)."""
        loop = asyncio.get_running_loop()

        def sweep() -> None:
            listing: tuple[set[str], set[str], set[Path]] | None = None
            taken = 0.0

            def live() -> tuple[set[str], set[str], set[Path]]:
                nonlocal listing, taken
                if listing is None or time.monotonic() - taken > LIVE_LISTING_FOR:
                    listing, taken = _live_replicas(cwds=True), time.monotonic()
                return listing

            for what, moved, workers in removals:
                if self._closed:
                    return
                try:
                    kept = _remove_moved(moved, workers, live)
                except Exception as exc:  # noqa: BLE001 - logged; one folder's error does not keep the others
                    log.warning("removing %s failed: %r", what, exc)
                    continue
                if kept:
                    loop.call_soon_threadsafe(self._at_later, moved, RECHECK_EVERY, self._remove_later, what, moved,
                                              workers)

        self._sweep_later(f"{len(removals)} folders of deployment names no deployment has any more", sweep)

    def _leave(self, name: str, release: bool = True) -> None:
        """One user of `name`'s folders less (_users); `release`: they go now if that was the last (_release)."""
        self._users[name] -= 1
        if self._users[name] <= 0:
            del self._users[name]
        if release:
            self._release(name)

    def _release(self, name: str, cgroups: bool = True,
                 removals: list[tuple[str, Path, bool]] | None = None) -> None:
        """Remove `name`'s folders once it was undeployed (stop) or its first start failed (engine-work only), and
        no set of it runs, no start of it is under way, no replica of it is being spawned or retired. Decided
        here, on the event loop, where a start of the name happens too: each folder is renamed out of the way
        (REMOVING) at once, and the renamed one removed in the sweep thread (_sweep_later). A redeploy of the name
        that comes after makes folders of its own; one that came before called the removal off (start). Before
        session 32 (2026-12-05) deployments/<name>/ was never removed, and the empty engine-work/<name>/ was removed
        by the sweep thread after it had looked whether a set of the name ran: a redeploy starting between the look
        and the removal lost the folder its replica was making its worker's in."""
        everything = self._undeployed.get(name)
        if everything is None or name in self.sets or self._users.get(name):
            return
        del self._undeployed[name]
        for top, what in ((self.engine_work_dir, "engine-work folder"),
                          (self.work_dir if everything else None, "deployments folder")):
            if top is None:
                continue
            moved = top / f"{REMOVING}{name}-{uuid.uuid4().hex[:8]}"
            try:
                (top / name).rename(moved)
            except FileNotFoundError:  # nothing of it there (no sandboxed worker ran, or never deployed here)
                continue
            except OSError as exc:
                log.warning("could not remove the %s of deployment %s: %s", what, name, exc)
                continue
            what_moved, workers = f"the {what} of deployment {name} ({moved})", top == self.engine_work_dir
            if removals is None:
                self._remove_later(what_moved, moved, workers)
            else:  # the caller removes them with others (remove_gone: _remove_all_later)
                removals.append((what_moved, moved, workers))
        if everything and cgroups and self.sweep_cgroups is not None:  # replicas killed past stop_timeout left
            # their sandboxes' cgroups (their launchers died with them: what a replica's own removal would have
            # removed), and once more a little later (CGROUP_RESWEEP: a launcher's parent-death signal may not have
            # ended it yet). Not for remove_gone's names: no replica of them ran in this process
            what = "the sandbox cgroups of replicas that are gone"
            self._sweep_later(what, self.sweep_cgroups)
            self._at_later("cgroups", CGROUP_RESWEEP, self._sweep_later, what, self.sweep_cgroups)

    def _remove_later(self, what: str, moved: Path, workers: bool, until: float | None = None) -> None:
        """Remove a renamed folder in the sweep thread (_remove_moved); what a live replica still uses in it stays,
        and it is looked at again every RECHECK_EVERY seconds until it is gone or RECHECK_FOR has passed."""
        loop = asyncio.get_running_loop()
        until = time.monotonic() + RECHECK_FOR if until is None else until

        def sweep() -> None:
            if _remove_moved(moved, workers) and time.monotonic() < until:
                loop.call_soon_threadsafe(self._at_later, moved, RECHECK_EVERY, self._remove_later, what, moved,
                                          workers, until)

        self._sweep_later(what, sweep)

    def _at_later(self, key: Any, delay: float, callback: Callable[..., None], *args: Any) -> None:
        """`callback(*args)` on the loop `delay` seconds from now, unless close() comes first; one per `key` (a
        later one for the same key replaces it)."""
        if self._closed:  # a sweep thread that ran on past close(): what it left is the next start's
            return
        if key in self._later:
            self._later.pop(key).cancel()
        loop = asyncio.get_running_loop()

        def run() -> None:
            self._later.pop(key, None)
            callback(*args)

        self._later[key] = loop.call_later(delay, run)

    async def _stop_set(self, replica_set: ReplicaSet) -> None:
        """Every replica drains at once (SIGTERM: it answers what it took and publishes its logs) and is killed if
        it has not exited within stop_timeout: a set stops in at most stop_timeout, whatever its size. The waits
        used to run one after another, each with its own 20 s, so N replicas that hung took N x 20 s."""
        replica_set.stopping = True
        await asyncio.gather(*(self._stop_replica(replica, replica_set.name) for replica in replica_set.replicas))

    async def _stop_replica(self, replica: Replica, name: str | None = None) -> None:
        """SIGTERM, SIGKILL past stop_timeout or once it stays stopped (STOPPED_LOOK); then its work folders swept
        when `name` (its deployment) is given."""
        if await self._end(replica, self.stop_timeout, name) == "late":
            log.warning("engine replica %s did not stop within %g s; killed", replica.replica_id, self.stop_timeout)
        if name is not None:
            self.sweep_work(name, replica)

    async def _end(self, replica: Replica, grace: float, name: str | None) -> Literal["late", "stopped"] | None:
        """SIGTERM, then SIGKILL past `grace` seconds ("late") or once it stayed stopped from one look to the next
        ("stopped", STOPPED_LOOK, said in a WARNING); None: it exited by itself."""
        if replica.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                replica.process.send_signal(signal.SIGTERM)
        waiter = asyncio.ensure_future(replica.process.wait())
        why: Literal["late", "stopped"] | None = "late"
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the replica exits in the step a
            # cancel of the stop comes (bpo-42130), and the caller went on as if never cancelled
            async with asyncio.timeout(grace):
                seen = _stop_mark(replica.process.pid)
                while why == "late":
                    if (await asyncio.wait({waiter}, timeout=STOPPED_LOOK))[0]:
                        why = None
                    elif (mark := _stop_mark(replica.process.pid)) is not None and mark == seen:
                        why = "stopped"
                    else:
                        seen = mark
        except TimeoutError:
            pass
        finally:
            waiter.cancel()
        if why is None:
            return None
        if why == "stopped":
            log.warning("engine replica %s%s (pid %s) is stopped: killed without waiting out its %g s (a stopped "
                        "process takes no SIGTERM)", replica.replica_id, f" of {name}" if name else "",
                        replica.process.pid, grace)
        with contextlib.suppress(ProcessLookupError):
            replica.process.kill()
        await replica.process.wait()
        return why

    async def status(self, name: str) -> list[dict[str, Any]]:
        replica_set = self.sets.get(name)
        if replica_set is None:
            return []
        return await self._states(replica_set)

    def serving_now(self, name: str) -> bool:
        """Whether a replica of `name` is known to run without asking: it answered `Running` to a status probe
        within silent_kept_for (the supervisor's liveness probes, status reads, resolves), no probe of it went
        unanswered or found no status subscriber (draining, its bus connection lost) since, and it has not exited
        (its process's exit is seen at once: the replica is this process's child) or been given up on (_give_up).
        A route's resolve then needs no probe of every replica (handlers.resolve_deployment); otherwise it asks
        them, as before. Only the route's Running/Starting rests on it: the gateway sends each request to the
        deployment's queue group, which NATS keeps to the replicas subscribed, whatever the route says."""
        replica_set = self.sets.get(name)
        if replica_set is None or replica_set.stopping:
            return False
        now = time.monotonic()
        return any(
            r.process.returncode is None and r.gave_up is None and r.answered is not None
            and r.answered.get("status") == "Running" and r.answered_at is not None
            and now - r.answered_at < self.silent_kept_for and not r.silent_probes and not r.live_silent_probes
            for r in replica_set.replicas)

    def start_supervising(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise())

    async def _autoscale(self, replica_set: ReplicaSet) -> None:
        """Between the autoscale bounds: a replica more when the replicas' average CPU is above the target,
        one less when it stays under a third of it (each change waits for the previous one to settle)."""
        now = time.monotonic()
        if replica_set.autoscale is None or now - replica_set.last_measured < MEASURE_EVERY:
            return
        replica_set.last_measured = now
        usage = []
        for replica in replica_set.replicas:
            with contextlib.suppress(psutil.Error):
                usage.append(replica.cpu_percent())
        if not usage:
            return
        average = sum(usage) / len(usage)
        low, high = replica_set.autoscale
        count = len(replica_set.replicas)
        if average > replica_set.cpu_target and count < high and now - replica_set.last_scaled > SCALE_UP_AFTER:
            added = await self._spawn(replica_set, uuid.uuid4().hex[:8])
            if replica_set.stopping:  # stopped while it spawned: _stop_set did not see it, so it would run on
                self._retire(replica_set.name, self._stop_replica(added, replica_set.name))
                return
            replica_set.replicas.append(added)
            replica_set.last_scaled = now
            log.info("%s: CPU %.0f%% > %.0f%%: scaled up to %d replicas", replica_set.name, average,
                     replica_set.cpu_target, count + 1)
        elif average < replica_set.cpu_target / 3 and count > max(low, 1) and \
                now - replica_set.last_scaled > self.scale_down_after:
            retired = replica_set.replicas.pop()
            replica_set.last_scaled = now
            log.info("%s: CPU %.0f%%: scaled down to %d replicas", replica_set.name, average, count - 1)
            # it drains its in-flight requests and publishes its logs first (killed past stop_timeout, as in a set)
            self._retire(replica_set.name, self._stop_replica(retired, replica_set.name))

    def _hung(self, replica: Replica) -> str | None:
        """Why `replica` counts as hung (LIVENESS_PROBE_WAIT's rule), or None."""
        if not self.liveness_timeout or replica.answered is None or replica.live_silent_since is None:
            return None
        silent = time.monotonic() - replica.live_silent_since
        if silent < self.liveness_timeout or replica.live_silent_probes < self.liveness_probes:
            return None
        return f"hung: it answered no status probe for {silent:.0f} s ({replica.live_silent_probes} in a row)"

    def _probe_if_due(self, replica_set: ReplicaSet, replica: Replica) -> None:
        """The supervisor's own liveness probe of `replica`, in the background (the loop goes on replacing the ones
        that exited), when none was sent and it answered no probe for liveness_timeout / liveness_probes seconds: at
        most one a replica under way, one small request a replica every 10 s by default."""
        if not self.liveness_timeout or replica.probing or replica.process.returncode is not None or \
                time.monotonic() - replica.probed_at < self.liveness_timeout / self.liveness_probes:
            return
        replica.probing = True

        async def probe() -> None:
            try:
                await self.replica_state(replica_set, replica, LIVENESS_PROBE_WAIT, liveness=True)
            finally:
                replica.probing = False

        task = asyncio.create_task(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _kill_hung(self, replica: Replica, name: str) -> None:
        """SIGTERM, then SIGKILL after LIVENESS_KILL_GRACE (a hung loop does not drain) or once it stays stopped
        (STOPPED_LOOK: a stopped process cannot take the SIGTERM, which stayed pending while the grace ran out, 5 s
        for the same end); its work folders swept (sweep_work)."""
        await self._end(replica, min(LIVENESS_KILL_GRACE, self.stop_timeout), name)
        self.sweep_work(name, replica)

    def sweep_work(self, name: str, replica: Replica) -> None:
        """Remove the exited `replica`'s sandboxed workers' folders (engine-work/<deployment>/<replica id>-<n>,
        services/engine/replica.py), in the background (_sweep_later). A replica that stops cleanly removes its own
        (SandboxedRuntime.stop); one killed with SIGKILL (hung, out of memory, past stop_timeout) or that crashed
        left them for ever, one set per restart of a crash loop. Replica ids are fresh per process, so only that
        process's folders match."""
        if self.engine_work_dir is None:
            return
        folder, prefix = self.engine_work_dir / name, f"{replica.replica_id}-"

        def sweep() -> None:
            try:
                paths = list(folder.iterdir())
            except FileNotFoundError:  # no folder: it ran no sandboxed worker
                return
            for path in paths:
                if path.name.startswith(prefix) and path.name[len(prefix):].isdigit():
                    _remove_tree(path)

        self._sweep_later(f"the work folders of engine replica {replica.replica_id} of {name}", sweep)

    def sweep_stale_work(self) -> None:
        """At the deployer's start: remove the sandboxed workers' folders that no live replica owns (a previous
        deployer process's replicas killed with it or crashed: each replica sweeps only its own on a clean stop, and
        this process's supervisor only its own replicas'), the engine-work folders of deployments none of whose
        replicas runs (_drop_if_idle), the folders an undeploy was removing when the deployer died (REMOVING: whole,
        but what a live replica or process uses, looked at again until it is gone: _remove_moved, _remove_later), and
        the sandbox cgroups that replicas killed with SIGKILL left (sweep_cgroups; a replica's own process removes
        them only at its first sandbox). A folder whose replica process still runs (a previous deployer's replica
        draining after its deployer died: it got SIGTERM, _die_with_parent; or another deployer's on this machine
        sharing the data directory) is kept: the live replicas are found by their command line (REPLICA_MODULE)
        after the folders are listed, so a replica started meanwhile (the restore's) is never missed: its folder is
        not in the list, or it runs at the look. deployments/<name>/ of a deployment not running is kept (a failed
        deploy's replica logs)."""
        top = self.engine_work_dir
        loop = asyncio.get_running_loop()

        def sweep() -> None:
            if self.sweep_cgroups is not None:
                self.sweep_cgroups()
            for moved in _listed(self.work_dir, REMOVING):  # an undeploy's removal cut short
                if _remove_moved(moved, workers=False):  # a live replica's log in it: looked at again
                    loop.call_soon_threadsafe(self._at_later, moved, RECHECK_EVERY, self._remove_later,
                                              f"the deployments folder {moved}", moved, False)
            if top is None:
                return
            for moved in _listed(top, REMOVING):  # a linked engine-work folder renamed: unlinked, not followed
                if moved.is_symlink():
                    _remove_tree(moved)
            try:
                deployments = [path for path in top.iterdir() if path.is_dir() and not path.is_symlink()]
            except FileNotFoundError:  # no replica ever ran a sandboxed worker here
                return
            folders: dict[Path, list[Path]] = {}
            for deployment in deployments:
                try:
                    folders[deployment] = list(deployment.iterdir())
                except OSError as exc:  # one unreadable folder does not keep the others
                    log.warning("could not list %s: %s", deployment, exc)
            live_ids, live_names = _live_replicas()
            removed = 0
            for deployment, paths in folders.items():
                if deployment.name.startswith(REMOVING):  # all of it but what a live replica uses, then the folder
                    if _remove_moved(deployment, workers=True):
                        loop.call_soon_threadsafe(self._at_later, deployment, RECHECK_EVERY, self._remove_later,
                                                  f"the engine-work folder {deployment}", deployment, True)
                    continue
                for path in paths:
                    replica_id, dash, number = path.name.rpartition("-")
                    if dash and number.isdigit() and replica_id not in live_ids:
                        _remove_tree(path)
                        removed += 1
                if deployment.name not in live_names:  # whether it runs now is the event loop's to say
                    loop.call_soon_threadsafe(self._drop_if_idle, deployment.name)
            if removed:
                log.info("removed %d sandboxed workers' folders of engine replicas no longer running in %s", removed,
                         top)

        self._sweep_later(f"the stale work folders in {top} and {self.work_dir}", sweep)

    def _drop_if_idle(self, name: str) -> None:
        """(sweep_stale_work, on the event loop) Remove engine-work/<name>/ when no set of `name` runs and none is
        starting, as an undeploy's removal (_release): the thread that found no replica of it running does not
        decide this, since a restore of it may start between its look and the removal. Its deployments/<name>/
        stays (the replicas' logs of a failed deploy or restore)."""
        if name in self.sets or self._users.get(name) or name in self._undeployed:
            return
        self._undeployed[name] = False
        self._release(name)

    def _sweep_later(self, what: str, sweep: Callable[[], None]) -> None:
        """Run `sweep` (file removals) in a thread in the background, after the sweeps queued before it, one at a
        time; its error is logged, and the next one runs. The supervisor's pass used to await each (in a thread, but
        awaited): removing a large unpacked package held the other replicas' replacements and probes meanwhile."""
        self._sweeps.append((what, sweep))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_all())

    async def _sweep_all(self) -> None:
        while self._sweeps:
            what, sweep = self._sweeps.popleft()
            try:
                await asyncio.to_thread(sweep)
            except Exception as exc:  # noqa: BLE001 - logged; the next sweep runs
                log.warning("removing %s failed: %r", what, exc)

    async def swept(self) -> None:
        """Once the sweeps queued so far (and any queued meanwhile) are done."""
        while self._sweeper is not None and not self._sweeper.done():
            await asyncio.wait({self._sweeper})  # neither cancels it nor raises its cancellation (close)

    async def _supervise(self) -> None:
        """Replace replicas that died or hung (the deployment reports the loss until the new one answers), probe the
        replicas for that (LIVENESS_PROBE_WAIT), and apply autoscaling."""
        while True:
            await asyncio.sleep(0.2)
            await self._supervise_pass()

    async def _supervise_pass(self) -> None:
        for replica_set in list(self.sets.values()):
            if replica_set.stopping or not replica_set.ready:  # a replica failing its start fails the start
                continue  # (start raises; a restore says so), not replaced behind _wait_ready's back
            await self._autoscale(replica_set)
            for replica in list(replica_set.replicas):
                if replica.process.returncode is not None:
                    if replica.respawn_at is None:  # its exit seen for the first time
                        self._back_off(replica_set, replica)
                        self.sweep_work(replica_set.name, replica)
                    if time.monotonic() < replica.respawn_at:  # crash-loop back-off: Error until then
                        continue
                    why = replica.gave_up or f"exited with {replica.process.returncode}"
                elif (why := self._hung(replica)) is not None:
                    log.warning("engine replica %s of %s (pid %s) is %s; killing and replacing it",
                                replica.replica_id, replica_set.name, replica.process.pid, why)
                    replica.crashes = 0  # it answered: it came up (crash_backoff)
                    self._retire(replica_set.name, self._kill_hung(replica, replica_set.name))
                else:
                    if self._start_overdue(replica):
                        self._check_start(replica_set, replica)
                    elif replica.gave_up is None:
                        self._probe_if_due(replica_set, replica)
                    continue
                fresh = await self._spawn(replica_set, uuid.uuid4().hex[:8])
                fresh.restarts = replica.restarts + 1
                fresh.last_exit = replica.process.returncode
                fresh.last_restart = why
                fresh.crashes = replica.crashes
                if fresh.crashes:  # in a crash loop: its Starting says why (_starting_in_a_loop)
                    fresh.crash_reason = self._exit_reason(replica_set, replica)
                if replica_set.stopping:  # stopped while it spawned: _stop_set did not see it
                    self._retire(replica_set.name, self._stop_replica(fresh, replica_set.name))
                    break
                at = next((i for i, r in enumerate(replica_set.replicas) if r is replica), None)
                if at is None:  # its slot went while the replacement started (a scale-down): not one replica more
                    log.info("engine replica %s of %s was removed while its replacement %s started; stopping that",
                             replica.replica_id, replica_set.name, fresh.replica_id)
                    self._retire(replica_set.name, self._stop_replica(fresh, replica_set.name))
                    continue
                replica_set.replicas[at] = fresh
                self._keep_logs(replica_set, replica.replica_id)

    def _keep_logs(self, replica_set: ReplicaSet, replaced: str) -> None:
        """Replica `replaced` of the set was replaced: its log is kept, the oldest beyond KEPT_LOGS removed."""
        replica_set.replaced.append(replaced)
        while len(replica_set.replaced) > KEPT_LOGS:
            path = self.work_dir / replica_set.name / f"replica-{replica_set.replaced.popleft()}.log"
            self._sweep_later(f"the log {path}", functools.partial(path.unlink, missing_ok=True))

    def _back_off(self, replica_set: ReplicaSet, replica: Replica) -> None:
        """When the exited `replica` is replaced (crash_backoff): at once if it came up, else after a delay doubling
        with each exit in a row."""
        now = time.monotonic()
        lived = now - replica.started_at
        if replica.answered is not None and lived >= self.crash_stable_after:
            replica.crashes, delay = 0, 0.0
        else:
            replica.crashes += 1
            delay = min(self.crash_backoff * 2 ** min(replica.crashes - 1, 64), self.crash_backoff_max)
        replica.respawn_at = now + delay
        went = f"exited with {replica.process.returncode}" if replica.gave_up is None else \
            f"was killed ({replica.gave_up})"
        if not delay:
            log.warning("engine replica %s of %s %s; replacing it", replica.replica_id, replica_set.name, went)
        else:
            log.warning("engine replica %s of %s %s %.1f s after its start (%d in a row before coming up); "
                        "replacing it in %g s (crash-loop back-off)", replica.replica_id, replica_set.name, went,
                        lived, replica.crashes, delay)

    def _start_overdue(self, replica: Replica) -> bool:
        """Whether `replica` (running) has not answered any status probe within ready_timeout of its start: a
        replacement or an added replica whose load hangs (a deploy's own replicas are the start's to bound)."""
        now = time.monotonic()
        return replica.answered is None and replica.gave_up is None and not replica.probing and \
            now - replica.started_at >= self.ready_timeout and now - replica.probed_at >= LIVENESS_PROBE_WAIT

    def _check_start(self, replica_set: ReplicaSet, replica: Replica) -> None:
        """A last status probe of an overdue replica (_start_overdue) in the background (LIVENESS_PROBE_WAIT, as
        the supervisor's own probes: a status read may never have asked it); still unanswered, with the deployer's
        bus up all along, it is killed (_give_up)."""
        replica.probing, replica.probed_at = True, time.monotonic()

        async def check() -> None:
            try:
                epoch = self.bus_epoch()
                await self._probe(replica_set, replica, LIVENESS_PROBE_WAIT, liveness=False)
                if replica.answered is not None or replica.process.returncode is not None or replica_set.stopping:
                    return
                if epoch is None or self.bus_epoch() != epoch:  # the deployer's bus was down: nothing known of it
                    return
                self._give_up(replica_set, replica)
            finally:
                replica.probing = False

        task = asyncio.create_task(check())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def _give_up(self, replica_set: ReplicaSet, replica: Replica) -> None:
        """Kill a replica that did not answer within ready_timeout of its start (SIGTERM, SIGKILL after
        LIVENESS_KILL_GRACE): `Error` with the reason meanwhile, then replaced as one that exited before it came up
        (crash_backoff). Before 2026-12-05 such a replica was `Starting` for ever: liveness counts only replicas that
        answered, and the supervisor replaced only those that exited or hung."""
        lived = time.monotonic() - replica.started_at
        replica.gave_up = f"it did not answer within {self.ready_timeout:g} s of its start (deployer.ready_timeout)"
        log.warning("engine replica %s of %s (pid %s) answered no status probe %.0f s after its start (its models "
                    "still loading, or hung); killing and replacing it", replica.replica_id, replica_set.name,
                    replica.process.pid, lived)
        self._retire(replica_set.name, self._kill_hung(replica, replica_set.name))

    def _retire(self, name: str, stopping: Awaitable[None]) -> None:
        """A replica's stop in the background; close() waits for it. Deployment `name`'s folders are in use until it
        is done (_release: a draining replica still writes its log)."""
        task = asyncio.ensure_future(stopping)
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        self._users[name] += 1
        task.add_done_callback(lambda _: self._leave(name))

    async def close(self) -> None:
        """Stop every replica set at once, and the scaled-down replicas still draining: at most stop_timeout however
        many deployments there are (the embedded stack gives the deployer that plus its own grace before it kills the
        deployer's process group, shared/embedded/stack.py). One set after another, each up to stop_timeout, a stack
        stop killed replicas still publishing the log rows of requests they had answered."""
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await _cancelled(self._supervisor)
        for probe in list(self._probes):
            probe.cancel()
        sets = list(self.sets.values())
        self.sets.clear()
        await asyncio.gather(*(self._stop_set(replica_set) for replica_set in sets), *list(self._retiring))
        self._closed = True
        for handle in self._later.values():  # a removal to look at again, a cgroup sweep to run again
            handle.cancel()
        self._later.clear()
        if self._sweeper is not None:  # what is left is the next start's (sweep_stale_work); a removal under way
            self._sweeper.cancel()  # runs on in its thread
            await _cancelled(self._sweeper)
        with self._stamp_lock:  # (a sweep's thread writing "running" has a file's write to finish)
            if self._run_stamped:  # (RUN_LINE) a folder written unmarked after now is another deployer's: adopted
                now = time.time()
                try:
                    _stamp(self.work_dir / DATA_DIR_MARKED, now, f"stopped at {_iso(now)}")
                except OSError as exc:
                    log.warning("could not write %s: %s", self.work_dir / DATA_DIR_MARKED, exc)


async def _cancelled(task: asyncio.Task) -> None:
    """Wait for `task`, just cancelled, without raising its cancellation; a cancellation of the waiter (close()
    cancelled meanwhile: a stack stop's timeout) is raised. `contextlib.suppress(CancelledError)` around `await task`
    swallowed both, so a cancelled close() returned as if it had finished and its caller went on. asyncio.wait, not
    `current_task().cancelling()`: a close() run in the `finally` of a task whose cancellation came before (shared/
    service.py's stop hooks) reads cancelling() 1 for good, and would stop at the supervisor with the sets running."""
    await asyncio.wait({task})
    if not task.cancelled():
        task.result()  # its error, as `await task` raised it


def _stop_mark(pid: int) -> tuple[int, int] | None:
    """When process `pid` is stopped (state T, by SIGSTOP or SIGTSTP; or t, held by a debugger or a sampler), its
    main thread's voluntary and involuntary context switches (a stop is one: the same at a later look, it did not
    run in between); None when it is not stopped, or gone (STOPPED_LOOK)."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                return None
            switches = process.num_ctx_switches()
            return switches.voluntary, switches.involuntary
    except psutil.Error:
        return None


def _remove_tree(path: Path) -> None:
    """Remove a worker's folder (a symbolic link in it is removed, not followed); what could not be removed is
    logged, once per folder. A worker's folder that is itself a symbolic link (whoever made it) is unlinked, never
    followed, and what it points at stays: shutil.rmtree refuses a link
    ('Cannot call rmtree on a symbolic link'), so it was never removed and its warning came again at every start."""
    if path.is_symlink():
        _unlink(path)
        return
    failed: list[str] = []

    def failure(function, name: str, exc_info) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):  # gone meanwhile (its replica's own clean stop)
            failed.append(f"{name}: {exc_info[1]}")

    shutil.rmtree(path, onerror=failure)
    if failed:
        log.warning("could not remove %s (%d entries failed; the first: %s)", path, len(failed), failed[0])


def _remove_moved(moved: Path, workers: bool,
                  live: Callable[[], tuple[set[str], set[str], set[Path]]] | None = None) -> bool:
    """Remove a folder renamed out of the way (REMOVING), all of it but what a replica still running uses (a previous
    deployer's, draining: found by its command line): in engine-work/<name>/ (`workers`) its workers' folders
    (<id>-<n>), in deployments/<name>/ its log (replica-<id>.log), in either an entry a live process has its working
    directory in; then the folder itself once empty. True when something was kept (the caller looks again later:
    LocalBackend._remove_later). Anything else in it goes too (before, a start's sweep removed only <id>-<n> folders
    and an entry of any other name kept the folder for ever). One that is a symbolic link is unlinked, never followed
    (_remove_tree), as is a link in it: what they point at stays, as sweep_stale_work leaves a linked deployment
    folder. An open file of a live process in an entry removed stays readable to it (unlinked, not gone). `live`: the
    live processes' listing (_live_replicas(cwds=True)) when the caller shares one (_remove_all_later)."""
    if moved.is_symlink():
        _remove_tree(moved)
        return False
    try:
        paths = list(moved.iterdir())
    except FileNotFoundError:
        return False
    except OSError as exc:  # not looked at again: the next start's
        log.warning("could not list %s: %s", moved, exc)
        return False
    kept = False
    if paths:
        live_ids, _, cwds = live() if live is not None else _live_replicas(cwds=True)
        for path in paths:
            if workers:
                replica_id, dash, number = path.name.rpartition("-")
                used = bool(dash) and number.isdigit() and replica_id in live_ids
            else:
                used = path.name.startswith("replica-") and path.name.endswith(".log") \
                    and path.name[len("replica-"):-len(".log")] in live_ids
            if used or any(cwd == path or path in cwd.parents for cwd in cwds):
                kept = True
            elif path.is_dir() and not path.is_symlink():
                _remove_tree(path)
            else:  # a file, or a link (unlinked, not followed)
                _unlink(path)
    _remove_if_empty(moved)
    return kept


def _iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="seconds")


def _stamp(stamp: Path, now: float, run: str) -> None:
    """Set DATA_DIR_MARKED's time to `now` and its RUN_LINE to `run` (the file written with its text if it is not
    there or cannot be trusted, or with its line rewritten if it says otherwise). Written whole or not at all
    (_replace_text): rewritten in place, a crash or a full disk mid-write left a part of it, whose time the next start
    took for its last sweep's. Raises OSError."""
    line = RUN_LINE + run
    lines = _marked_lines(stamp)
    if lines is None:  # not there, unreadable, or cut short: written again
        lines = [f"Since {_iso(now)} a deployment folder kept for the user here has {KEPT_MARKER} in it; an inactive "
                 "deployment's without one is removed by the deployer. This file's time: the deployer's last look at "
                 "them (or its stop)."]
    if line in lines:
        os.utime(stamp, (now, now))
    else:
        _replace_text(stamp, "\n".join([*(kept for kept in lines if not kept.startswith(RUN_LINE)), line]) + "\n", now)


def _marked_lines(stamp: Path) -> list[str] | None:
    """DATA_DIR_MARKED's lines; None when it is not there or cannot be trusted: unreadable, not UTF-8 text, or cut
    short (empty, or its last line unended: every write ends one; a deployer before session 37 rewrote the file in
    place, and a crash or a full disk in that write left a part of it)."""
    try:
        text = stamp.read_bytes().decode()
    except (OSError, ValueError):
        return None
    return text.splitlines() if text.endswith("\n") else None


def _replace_text(path: Path, text: str, mtime: float) -> None:
    """Write `path` whole or not at all: a new file beside it (its name ends in .tmp, never a deployment's), synced,
    its time set to `mtime`, then renamed over it, and the folder synced (the rename is the folder's change: without
    it a power cut could bring back the old file, or none). Leftovers of a write cut short are removed first (a minute
    old: not another deployer's on this data directory, writing now). Raises OSError (not for the folder's sync, which
    a filesystem may not offer: the file is in place by then)."""
    for left in _listed(path.parent, f"{path.name}."):
        with contextlib.suppress(OSError):
            if left.name.endswith(".tmp") and left.lstat().st_mtime < time.time() - 60:
                left.unlink()
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.utime(temporary, (mtime, mtime))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        log.debug("could not sync %s after writing %s: %s", path.parent, path.name, exc)


def _run_unstopped(stamp: Path) -> bool:
    """Whether DATA_DIR_MARKED's RUN_LINE says a deployer with the markers runs (one that did not stop: killed); not
    when it cannot be trusted (_marked_lines): its folders written since are adopted, not removed."""
    lines = _marked_lines(stamp)
    return lines is not None and RUN_LINE + "running" in lines


def _mark_kept(folder: Path, what: str, now: float | None = None) -> bool:
    """Write KEPT_MARKER in deployments/<name>/ (`folder`), its mtime `now` (default: the clock's); False (logged) when
    it could not be."""
    now = time.time() if now is None else now
    try:
        (folder / KEPT_MARKER).write_text(
            f"The replicas' logs and spec of {what} ({_iso(now)}), kept for inspection. The deployer removes this "
            f"folder {KEPT_FAILED_FOR / 86400:g} days after this file's time (touch it to keep it longer), once "
            f"{KEPT_FAILED_MAX} newer failed deploys' folders are kept, or at an undeploy of the deployment.\n")
        os.utime(folder / KEPT_MARKER, (now, now))
    except OSError as exc:
        log.warning("could not mark %s as kept: %s", folder, exc)
        return False
    return True


def _written_since(folder: Path, since: float) -> bool:
    """Whether `folder` or a file in it was written after `since` (a time.time()); True when it cannot be told."""
    if since == -math.inf:
        return True
    try:
        if folder.stat().st_mtime > since:
            return True
        with os.scandir(folder) as entries:
            return any(entry.stat(follow_symlinks=False).st_mtime > since for entry in entries)
    except OSError:
        return True


def _unlink(path: Path) -> None:
    """Remove a file or a symbolic link (not followed); gone meanwhile is fine, another failure logged."""
    try:
        path.unlink()
    except FileNotFoundError:  # gone meanwhile
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _listed(top: Path, prefix: str) -> list[Path]:
    """The entries of `top` whose names start with `prefix` (none when it is not there)."""
    try:
        return [path for path in top.iterdir() if path.name.startswith(prefix)]
    except OSError:
        return []


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (a replica's worker folder): kept; or gone already
        folder.rmdir()


@overload
def _live_replicas(cwds: Literal[False] = False) -> tuple[set[str], set[str]]: ...


@overload
def _live_replicas(cwds: Literal[True]) -> tuple[set[str], set[str], set[Path]]: ...


def _live_replicas(cwds: bool = False) -> tuple[set[str], set[str]] | tuple[set[str], set[str], set[Path]]:
    """(the replica ids, the deployment names) of the engine replicas running on this machine, by their command
    lines (`python -m services.engine.replica <deployments>/<name>/spec-<x>.json <replica id>`); `cwds`: and the
    working directories of the processes this one may read (a third item)."""
    ids: set[str] = set()
    names: set[str] = set()
    folders: set[Path] = set()
    for process in psutil.process_iter(["cmdline", "cwd"] if cwds else ["cmdline"]):
        if cwds and process.info.get("cwd"):
            folders.add(Path(process.info["cwd"]))
        cmdline = process.info.get("cmdline") or []
        try:
            at = cmdline.index(REPLICA_MODULE)
        except ValueError:
            continue
        if len(cmdline) > at + 2:
            names.add(Path(cmdline[at + 1]).parent.name)
            ids.add(cmdline[at + 2])
    return (ids, names, folders) if cwds else (ids, names)
