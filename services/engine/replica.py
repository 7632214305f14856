"""One engine replica: `python -m services.engine.replica <spec.json> <replica id>`.

Loads the deployment's model versions from object storage into a local cache (the sha256 of every artifact
is verified before it is loaded; a mismatch stops the replica), creates the runtimes, then serves
`engine.<deployment>.infer` in the deployment's queue group (replicas share the load) and answers its own
status subject for the deployer. Requests and replies are Arrow IPC streams; the reply's headers carry the
model identity and timings, or a typed error. Each request's record (inputs, outputs, model, timings) is
gathered with those of other requests and written as a Parquet segment to object storage every
`engine_segment_ms` (750 ms; sooner at `engine_segment_bytes`), only its description going through the
INFERENCE_LOGS stream (rows themselves for re-sent requests and whenever object storage fails;
services/engine/logbatcher.py, shared/logrecords.py has the layout): inference never waits for it, and a failed
publish is retried with the same batch id, then reported in the log, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # the replica's own process, not a test importing this module
    from shared.lean_imports import decline_unused

    decline_unused()  # before nats and faststream are imported (shared/lean_imports.py)

import nats  # noqa: E402
import pyarrow as pa  # noqa: E402

from services.engine import handlers  # noqa: E402
from services.engine.answers import RepeatedRequests  # noqa: E402
from services.engine.batching import RequestBatcher, batching_config, can_batch, failure_error  # noqa: E402
from services.engine.fast_lane import FastLane, LaneAnswer  # noqa: E402
from services.engine.logbatcher import LogBatcher  # noqa: E402
from services.engine.logpolicy import LogPolicy  # noqa: E402
from services.engine.runtimes import NonFiniteValues, OnnxRuntime, narrowing, tensor_inputs  # noqa: E402
from services.engine.sandboxed import SandboxedRuntime  # noqa: E402
from shared import subjects  # noqa: E402
from shared.arrow_codec import NARROWED_FOR, STALE_ROUTE, fixed_shapes, narrow  # noqa: E402
from shared.collector import settle_garbage_collector  # noqa: E402
from shared.errors import Conflict, InvalidRequest, RailyardError  # noqa: E402
from shared.logrecords import TIME_HEADER, InferenceRecord  # noqa: E402
from shared.messages.engine import ReplicaSpec  # noqa: E402
from shared.nats_direct import write_now  # noqa: E402
from shared.objectstore import BUCKET_ARTIFACTS, MinioObjectStore, content_key  # noqa: E402
from shared.probe_files import keep_probe_files  # noqa: E402
from shared.raw_bus import REPLY_INBOXES, connect_options, error_headers, log_refused_reply  # noqa: E402
from shared.sched_hint import request_path_slice  # noqa: E402
from shared.settings import Settings, load_settings  # noqa: E402

log = logging.getLogger("railyard.engine")
DRAIN_SHADOWS = 2.0  # seconds a stopping replica lets queued challengers run (then: logged without them)
DRAIN_LOGS = 8.0  # seconds a stopping replica has to publish the records it holds
TRIM_EVERY = 2.0  # seconds between looks at whether the heap's free pages can go back to the system
LEARN_ROWS = 64  # runs of at least this many rows teach a model its time per row, smaller ones its time per call
LEARN_RUNS = 8  # the learnt time per row (per call) is the largest of this many last runs of that kind
WARM_UP_WAIT = 0.5  # seconds load waits for the models' warm-up calls (OnnxRuntime.warm_up); slower ones go on alone
WARM_UPS_AT_ONCE = 4  # models' warm-up calls run at once (each in a thread of its own)
RENEW_RUNS = 1000  # runs of a pipeline after which an A/B arm no run took is measured apart again (measure_arm)
APART_TRIES = 3  # times an arm's slow time read beside a live run is measured again before it is learnt as read


class ModelCost:
    """What one model's runs measured, for handlers.runs_inline (Replica.learn): `per_call`, the largest time of its
    last LEARN_RUNS runs of fewer than LEARN_ROWS rows, and of the slowest call still `kept` beyond them; `per_row`,
    the largest time per row of its last LEARN_RUNS larger runs (None: no such run yet). A call of INLINE_NS or more
    is kept for as many of the model's runs as the thread's hops (HOP_NS each) it takes to cost that call's time, at
    least LEARN_RUNS (a call of 2 s: ~10,500 runs; of 2 ms: 10): a model slow for a few inputs then keeps its runs in
    the thread while a slow one comes often enough to cost more on the loop than the hops cost (before 2026-12-06, 8
    quick runs in a row sent the next slow one to the loop again, docs/performance.md item 106).

    Written by a run in a thread while the loop reads it, without a lock: each window is a list of fixed length whose
    items are replaced (a deque appended to in a thread while another thread takes its max() raises "mutated during
    iteration" once the GIL no longer keeps max() whole, as in free-threaded Python), its maximum taken by the writer,
    and the loop reads only the replica's two times, one attribute each. Two writers at once (a replica runs one
    request or batch at a time, but a call measured apart, Replica.measure_apart, may end beside a run of the same
    model) would lose a sample, never raise."""

    __slots__ = ("call_at", "calls", "kept", "kept_until", "per_call", "per_row", "row_at", "rows", "runs")

    def __init__(self) -> None:
        self.calls = [0] * LEARN_RUNS  # ns, in turn
        self.rows = [0.0] * LEARN_RUNS  # ns per row, in turn
        self.call_at = self.row_at = 0  # runs of each kind so far
        self.runs = 0  # this model's runs measured
        self.kept = 0  # a slow call's ns, counted until the model's run `kept_until`
        self.kept_until = 0
        self.per_call: int | None = None
        self.per_row: float | None = None

    def add(self, rows: int, ns: int) -> None:
        runs = self.runs = self.runs + 1
        if rows >= LEARN_ROWS:
            at = self.row_at
            self.rows[at % LEARN_RUNS] = ns / rows
            self.row_at = at + 1
            self.per_row = max(self.rows)
            if runs != self.kept_until:  # the time per call changes only as the call kept is forgotten
                return
        else:
            at = self.call_at
            self.calls[at % LEARN_RUNS] = ns
            self.call_at = at + 1
            if ns >= handlers.INLINE_NS:
                kept = self.kept if runs < self.kept_until else 0
                until = runs + max(LEARN_RUNS, ns // handlers.HOP_NS)
                self.kept, self.kept_until = max(kept, ns), max(self.kept_until, until)
        call = max(self.calls) if self.call_at else None
        if runs < self.kept_until:
            call = max(call or 0, self.kept)
        self.per_call = call

    def forget(self, rows: int) -> None:
        """Forget what runs of `rows`'s kind taught (under LEARN_ROWS rows: the time per call and a slow call kept;
        else the time per row): an A/B arm no request has taken, measured apart again (Replica.measure_arm), is
        known by its newest measurement, not the largest of them."""
        if rows >= LEARN_ROWS:
            self.rows = [0.0] * LEARN_RUNS
            self.row_at, self.per_row = 0, None
        else:
            self.calls = [0] * LEARN_RUNS
            self.call_at = self.kept = self.kept_until = 0
            self.per_call = None


class Apart:
    """What the calls measured apart (Replica.measure_apart) and the live runs beside them note: the wall time
    (perf_counter_ns) of the last call measured apart (`since`, `until`: 0 while under way) and, with `cpus` 2 or more,
    of the last live run's step (`live_from`, `live_to`: less than `live_from` while under way) (Replica._beside);
    a session pool's threads (`pool_size`); the arms' measurements apart (`samples`, by their model's id), their
    renewals (measure_arm: by measured_apart's key, the pipeline's run `sums` due, step index, step, model; the next
    due, `renew_due`), and the slow ones read beside a live run (`tries`, by key). One attribute of the replica for
    them all: its instance keeps its attributes' shared keys (30 at most), which the loop's reads of `ns_per_call`
    and `ns_per_row` (handlers.runs_inline) are quicker for (10 more attributes read ~0.02 us more a decision)."""

    __slots__ = ("live_from", "live_to", "pool_size", "renew_due", "renewals", "samples", "since", "sums", "tries",
                 "until")

    def __init__(self, pool_size: int) -> None:
        self.since = self.until = self.live_from = self.live_to = 0
        self.pool_size = pool_size
        self.samples: dict[int, int] = {}
        self.renewals: dict[tuple[int, bool], tuple[int, int, Any, dict[str, Any]]] = {}
        self.tries: dict[tuple[int, bool], int] = {}
        self.sums = self.renew_due = 0


class Step:
    """One pipeline step. `ModelInference` runs its model; `ShadowDeploy` answers with its champion and runs
    the challengers afterwards for the logs only (so they never fail or delay the answer); `RandomSplit`
    picks one model per request by weight, or by a hash of the `hash_key` column of the first row so the same
    key always reaches the same model, and adds the chosen model as `_model_split`."""

    def __init__(self, spec: dict[str, Any], runtimes: list[OnnxRuntime]) -> None:
        self.kind = spec["kind"]
        self.models = spec["models"]
        self.runtimes = runtimes
        self.weights = spec.get("weights")
        self.hash_key = spec.get("hash_key")
        # the columns some model of the step may take: ONNX models declare theirs, users' code (an ML backend,
        # a BYOP or Python step) does not, so with one of those in the step any column may be its
        self._undeclared = any(not isinstance(r, OnnxRuntime) for r in runtimes)
        self._declared = {name for r in runtimes if isinstance(r, OnnxRuntime) for name, _, _ in r.inputs}

    def _columns_for(self, runtime: Any, table: pa.Table) -> pa.Table:
        """What one model of a step of several (a champion, a challenger, an A/B arm) is given: an ONNX model only
        the columns it takes, when the others may be another model's of the step (an ONNX champion next to an ML
        backend challenger, which reads `task`, refused every request as an unexpected column). A column no model of
        the step takes is still refused (OnnxRuntime.check_columns); a step of one model is given the table."""
        if len(self.runtimes) < 2 or not isinstance(runtime, OnnxRuntime):
            return table
        own = {name for name, _, _ in runtime.inputs}
        others = [c for c in table.column_names if c not in own and (self._undeclared or c in self._declared)]
        return table.drop_columns(others) if others else table

    @property
    def model(self) -> dict[str, Any]:
        return self.models[0]

    def _choose(self, table: pa.Table) -> int:
        total = float(sum(self.weights))
        if self.hash_key:
            if self.hash_key not in table.column_names:
                raise InvalidRequest(f"the A/B split hashes column {self.hash_key!r}, which the request lacks")
            key = str(table.column(self.hash_key)[0].as_py()).encode()
            point = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64 * total
        else:
            point = random.random() * total
        for index, weight in enumerate(self.weights):
            point -= weight
            if point < 0:
                return index
        return len(self.weights) - 1

    def arm_input(self, chosen: int, table: pa.Table) -> pa.Table:
        """What an A/B split's arm `chosen` is given of the step's input: without the hash key unless the arm takes
        it, and only its columns (`_columns_for`)."""
        runtime = self.runtimes[chosen]
        inputs = table.drop_columns([self.hash_key]) if self.hash_key in table.column_names and \
            self.hash_key not in {n for n, _, _ in runtime.inputs} else table
        return self._columns_for(runtime, inputs)

    def run(self, table: pa.Table) -> tuple[pa.Table, dict[str, Any], list[tuple[str, OnnxRuntime, pa.Table]]]:
        """(output, the model that answered, shadow work to do after answering)."""
        if self.kind == "RandomSplit":
            chosen = self._choose(table)
            model = self.models[chosen]
            output = self.runtimes[chosen].predict(self.arm_input(chosen, table))
            split = json.dumps({"name": model["name"], "version": model["model_version"], "sha": model["sha"]})
            if "_model_split" in output.column_names:  # the engine's name for the arm: a user model's own is replaced
                # (by position: drop_columns cannot name a column an answer carries twice)
                output = output.select([i for i, n in enumerate(output.column_names) if n != "_model_split"])
            output = output.append_column("_model_split", pa.array([[split]] * output.num_rows,
                                                                   pa.list_(pa.string())))
            return output, model, []
        output = self.runtimes[0].predict(self._columns_for(self.runtimes[0], table))
        shadows = [(m["name"], r, self._columns_for(r, table)) for m, r in
                   zip(self.models[1:], self.runtimes[1:], strict=True)] if self.kind == "ShadowDeploy" else []
        return output, self.model, shadows


def thread_cpu_clock(tid: int) -> int:
    """The clock id of the CPU time of this process's thread of Linux id `tid` (glibc's pthread_getcpuclockid makes
    the same: the thread's id, inverted, shifted by 3, with CPUCLOCK_PERTHREAD_MASK and CPUCLOCK_SCHED)."""
    return ((~tid) << 3) | 6


def live_pool_threads(runtime: Any) -> tuple[int, ...] | None:
    """`runtime`'s pool threads (OnnxRuntime.pool_threads) that still live, noted on it again when some have gone;
    None: not known (not Linux; or every thread noted as its session was created has gone, so none was the pool's:
    the pool's threads live as long as the session). A runtime without a pool of its own has none."""
    threads = getattr(runtime, "pool_threads", ())
    if not threads:
        return threads
    live = []
    for tid in threads:
        try:
            time.clock_gettime_ns(thread_cpu_clock(tid))
        except OSError:  # ended: another thread started while the session was created (a warm-up, an executor's)
            continue
        live.append(tid)
    if len(live) != len(threads):
        runtime.pool_threads = tuple(live) or None
    return runtime.pool_threads


def first_step_narrowing(steps: list[Step]) -> dict[str, pa.DataType]:
    """What a request's table is narrowed to on arrival: the first step's models' common float types, but for an
    A/B split's hash key (runtimes.narrowing)."""
    if not steps:
        return {}
    first = steps[0]
    return narrowing(first.runtimes, frozenset([first.hash_key] if first.hash_key else []))


def first_step_tensors(steps: list[Step]) -> frozenset[str]:
    """The request's columns made fixed-size lists on arrival when they are lists of one shape: the first step's
    models' tensor inputs, but for an A/B split's hash key (runtimes.tensor_inputs)."""
    if not steps:
        return frozenset()
    first = steps[0]
    return tensor_inputs(first.runtimes, frozenset([first.hash_key] if first.hash_key else []))


def logs_detail(counts: dict[str, int]) -> str | None:
    """A replica's status `details` line when its inference log lost rows (LogBatcher.stats' counts), else None."""
    if not counts["lost_rows"] and not counts["lost_records"] and not counts["failed_flushes"]:
        return None
    why = []
    if counts["malformed_records"]:
        why.append(f"{counts['malformed_records']} malformed records ({counts['malformed_rows']} rows) set aside")
    failed = counts["failed_records"]
    if counts["failed_flushes"]:
        why.append(f"{counts['failed_flushes']} log flushes failed" + (f" ({failed} records)" if failed else ""))
    # lost_records also holds the malformed records and, since e6f0e66a, the failed flushes' records: neither is
    # one the buffer could not take
    others = counts["lost_records"] - counts["malformed_records"] - failed
    if others > 0:
        why.append(f"{others} records the log buffer could not take (full: the stream refused "
                   f"{counts['refused_publishes']} publishes; or a row above the bus limit)")
    return (f"inference log: {counts['lost_rows']} rows not logged since this replica started: {'; '.join(why)}"
            f" (the replica's log says more)")


def _sha256_of(path: Path) -> str | None:
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


async def fetch_artifact(store: MinioObjectStore, sha: str, cache: Path) -> Path:
    """The artifact's local path, downloaded once and verified by sha256 every time it is loaded."""
    path = cache / sha
    cached = await asyncio.to_thread(_sha256_of, path)
    if cached is None:
        await asyncio.to_thread(cache.mkdir, parents=True, exist_ok=True)
        partial = cache / f"{sha}.{os.getpid()}.part"
        digest, _ = await store.download_to(BUCKET_ARTIFACTS, content_key(sha), partial)
        if digest != sha:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise RailyardError(f"artifact {sha[:12]} does not match its sha256; refusing to load it")
        await asyncio.to_thread(partial.replace, path)
    elif cached != sha:
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise RailyardError(f"cached artifact {sha[:12]} does not match its sha256; refusing to load it")
    return path


class Replica:
    def __init__(self, spec: dict[str, Any], replica_id: str, settings: Settings) -> None:
        self.spec = spec
        self.replica_id = replica_id
        self.settings = settings
        self.name = spec["deployment"]["name"]
        self.steps: list[Step] = []
        self.shadow_queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        self.shadow_current: tuple[InferenceRecord, list] | None = None
        self.shadows_stopped = False  # set by drain_shadows: the shadow worker takes no other record
        self.stop = asyncio.Event()
        self.cache_dir = settings.stack.data_dir.expanduser().resolve() / "engine-cache"
        self.work_dir = settings.stack.data_dir.expanduser().resolve() / "engine-work" / self.name
        self.workers: list[SandboxedRuntime] = []  # users' code: each in a sandboxed worker process
        self.log_policy = LogPolicy.from_config(spec.get("engine_config", {}))
        self.served = 0  # requests answered
        self.narrowing: dict[str, pa.DataType] = {}
        self.tensors: frozenset[str] = frozenset()  # list columns made fixed-size on arrival (first_step_tensors)
        # what handlers.runs_inline reads: the pipeline's learnt run time per row, and a run's of fewer than
        # LEARN_ROWS rows, summed from its models' (learn), None while a model it may run is not measured
        self.ns_per_row: float | None = None
        self.ns_per_call: float | None = None
        self.costs: dict[int, ModelCost] = {}  # by the id of a step's model (its spec's dict, Step.models)
        # the steps (and their count) learnt for, and a pipeline of one model's ModelCost and its model's id
        self._plan: tuple[Any, int, ModelCost | None, int] | None = None
        # a model's session of more than one thread (cpus >= 2): its runs are timed by the CPU clocks of the calling
        # thread and of the sessions' pools (`_pool`: the steps, their count, the pool threads' clock ids, the clock
        # reading them; cpu_clock),
        # or where a pool is not known by the process's clock, less the loop's thread's (`loop_clock`, set by serve)
        self.pooled = int(float(spec.get("engine_config", {}).get("cpus", 1))) > 1
        self._pool: tuple[Any, int, tuple[int, ...] | None, Callable[[], int] | None] | None = None
        self.loop_thread: int | None = None
        self.loop_clock: int | None = None
        # calls measured off the request path (measure_apart): the A/B arms tried, by their model's id and
        # whether on LEARN_ROWS rows or more, the thread they run in and the last one (one at a time)
        self.measured_apart: set[tuple[int, bool]] = set()
        self.measurer: ThreadPoolExecutor | None = None
        self.measurement: Future | None = None
        self.apart = Apart(max(0, int(float(spec.get("engine_config", {}).get("cpus", 1))) - 1))
        self.warm_ups: list[Future] = []  # the models' warm-up calls (load, warm_up)

    async def load(self) -> None:
        store = self.store = MinioObjectStore(self.settings.s3)
        cache = self.cache_dir
        threads = max(1, int(float(self.spec.get("engine_config", {}).get("cpus", 1))))
        warming = threading.BoundedSemaphore(WARM_UPS_AT_ONCE)
        for step in self.spec["steps"]:
            runtimes = []
            for model in step["models"]:
                path = await fetch_artifact(store, model["sha"], cache)
                if model["runtime"] == "onnx":  # data, not code: served in this process
                    # the first step's inputs are the request's; a later step's, what earlier steps made
                    runtime = OnnxRuntime(path, threads=threads, refuse_booleans=not self.steps)
                    await asyncio.to_thread(runtime.load)
                    # its first call's one-time set-up, here rather than in the first request's measured run, in a
                    # thread of its own while the next models load (warm_up)
                    self.warm_ups.append(self.warm_up(runtime, warming))
                elif model["runtime"] in ("python", "custom"):
                    runtime = SandboxedRuntime(model["runtime"], path, self.work_dir /
                                               f"{self.replica_id}-{len(self.workers)}", self.settings,
                                               model["name"])
                    self.workers.append(runtime)
                else:
                    raise RailyardError(f"model {model['name']}: the {model['runtime']} runtime is not served yet")
                runtimes.append(runtime)
            self.steps.append(Step(step, runtimes))
        # the workers start side by side (each imports its libraries and loads its model in its own sandbox)
        started = await asyncio.gather(*(worker.start() for worker in self.workers), return_exceptions=True)
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure
        if self.warm_ups:  # slower ones go on in their threads while the replica serves
            await asyncio.to_thread(futures.wait, self.warm_ups, WARM_UP_WAIT)
        self.narrowing = first_step_narrowing(self.steps)
        self.tensors = first_step_tensors(self.steps)

    def warm_up(self, runtime: OnnxRuntime, warming: threading.BoundedSemaphore) -> Future:
        """Start `runtime`'s warm-up call (OnnxRuntime.warm_up) in a daemon thread of its own, WARM_UPS_AT_ONCE at
        a time (`warming`), and return what says it ended; load waits up to WARM_UP_WAIT for them all, once the
        last model has loaded, and the replica serves its models meanwhile and after (a model not warmed yet does
        its set-up in its first request's call, as before 2026-12-06). Before 2026-12-07 load waited up to
        WARM_UP_WAIT for each model's, one after another, in the loop's default executor: a warm-up that never
        ended held one of its threads for good, which the requests run in (asyncio.to_thread), and the replica's
        exit waited for it (the executor's shutdown) until the deployer killed it (review of cf1622aa, item 111).
        Started before the next model's session is created, so not taken for its pool (OnnxRuntime.load)."""
        done: Future = Future()

        def warm() -> None:
            try:
                with warming:
                    runtime.warm_up()
            finally:
                done.set_result(None)

        threading.Thread(target=warm, name="railyard-warm-up", daemon=True).start()
        return done

    def narrow(self, table: pa.Table) -> pa.Table:
        """A request's table with its float64 and integer columns (not an integer narrower than the type: a uint8
        image stays as sent) in the float types the first step's models all take (arrow_codec.narrow; a model's
        int64 input is not narrowed, runtimes.narrowing): what the model call, the answer's bus message and the
        inference log then carry. The gateway narrows a plain ONNX pipeline's requests itself, for the version its
        route names (NARROWED_FOR): a replica of another version refuses them (`stale_route`, a model swap under
        way) and the gateway resends them as they were sent. A list column of one shape for a tensor input becomes
        fixed-size lists over the same buffers (arrow_codec.fixed_shapes), the type a JSON or OIP request of the
        same rows has: the log keeps one schema per input (a page ends at each schema change)."""
        metadata = table.schema.metadata
        if metadata and NARROWED_FOR in metadata:
            if metadata[NARROWED_FOR].decode(errors="replace") != str(self.spec["deployment"]["pipeline_version"]):
                raise Conflict("the request was typed for another version of this pipeline; resend it",
                               code=STALE_ROUTE)
            table = table.replace_schema_metadata({k: v for k, v in metadata.items() if k != NARROWED_FOR} or None)
        if self.tensors:
            table = fixed_shapes(table, self.tensors, self.narrowing)
        return narrow(table, self.narrowing) if self.narrowing else table

    def run(self, table: pa.Table) -> tuple[pa.Table, list[int], dict[str, Any] | None, list]:
        """(output, elapsed ns per step, the last model that answered, shadow work), each step's CPU learnt (learn,
        cpu_clock: the calling thread's, and its models' sessions' pools' with `cpus` 2 or more). A run on the loop
        is not also judged by its wall clock as the fast lane's calls are (held_loop): its CPU is read anyway and
        says what the loop waited for, where the wall clock would add the host's preemptions (one a few hundred
        calls at load 5-6, docs/performance.md item 103)."""
        elapsed = []
        current = table
        last = None
        shadows: list = []
        changed_by = None  # the model of the last step that returned another number of rows than it was given
        # its sessions' pools may work on a call measured apart meanwhile (measure_apart): each step's wall time is
        # noted for the measurement (Apart), and a slow time read beside one is learnt less the other's (`_own`)
        pooled = self.pooled
        clock = self.cpu_clock() if pooled else time.thread_time_ns
        several = len(self.steps) > 1
        measured = []  # (model, rows given, CPU ns, the calling thread's, wall from, to) of each step of several
        inputs = [table] if several else None  # ... and each one's input, then the last one's output
        # beside a call measured apart under way, the calling thread's own CPU (a part of the pooled clock's, no other
        # call's): the least a slow run is learnt as (`_own`); -1 not read (one more clock read, ~0.7 us on this VM)
        apart = self.apart
        mine = mine_started = time.thread_time_ns() if pooled and apart.since and not apart.until else -1
        cpu = cpu_started = clock()
        try:
            for step in self.steps:
                started = time.perf_counter_ns()
                if pooled:
                    apart.live_from = started
                given = current.num_rows
                try:
                    current, last, step_shadows = step.run(current)
                except NonFiniteValues as exc:  # rows of what an earlier step returned: the request's while it kept
                    raise exc.for_request(last, current.num_rows, table.num_rows) from None
                if current.num_rows != given:
                    changed_by = last
                shadows += step_shadows
                ended = time.perf_counter_ns()
                if pooled:
                    apart.live_to = ended
                elapsed.append(ended - started)
                if several:
                    now = clock()
                    thread = time.thread_time_ns() if mine >= 0 else -1
                    measured.append((last, given, now - cpu, thread - mine if mine >= 0 else -1, started, ended))
                    inputs.append(current)
                    cpu, mine = now, thread
        except BaseException:
            if pooled:  # ended by a failure
                apart.live_to = time.perf_counter_ns()
            raise
        rows = table.num_rows
        if current.num_rows != rows:  # a Python step's filter or expansion that no later step undid
            raise handlers.rows_changed(changed_by, current.num_rows, rows)
        if several:
            for model, given, ns, thread, started, ended in measured:
                if pooled and ns >= handlers.INLINE_NS:
                    ns = self._own(ns, self._beside(started, ended), thread)
                if ns is not None:
                    self._cost(model).add(given, ns)
            self._sum(inputs)
        else:
            ns = clock() - cpu_started
            if not pooled or ns < handlers.INLINE_NS:
                self.learn(rows, ns, last, table)
            elif (ns := self._own(ns, self._beside(started, ended),
                                  time.thread_time_ns() - mine_started if mine_started >= 0 else -1)) is not None:
                self.learn(rows, ns, last, table)
        return current, elapsed, last, shadows

    def _beside(self, begun: int, ended: int) -> int:
        """How long (perf_counter_ns) a call measured apart (measure_apart) ran while a run of a pooled pipeline did,
        from `begun` to `ended`: its session's pool's threads, which the run's clock reads (cpu_clock), then worked
        for it too."""
        apart = self.apart
        since, until = apart.since, apart.until
        if since == 0 or since >= ended or (until and until <= begun):
            return 0
        return min(until or ended, ended) - max(since, begun)

    def _own(self, ns: int, beside: int, thread: int) -> int | None:
        """What a slow time `ns` read by the pools' clocks is learnt as when another call shared a pool for `beside`
        ns of wall time (a live run and a call measured apart, both ways): each read the other's pool work as its own,
        at most its `pool_size` threads that long, so at least `ns` less that was its own, and never less than
        `thread`, the calling thread's own CPU in it (no other call's; -1 not read: a live run that began before the
        measurement did, nothing learnt). Still INLINE_NS or more: slow whatever the other did, learnt as that; less:
        nothing learnt (a lost sample), the other's work may have made it slow.
        Before 2026-12-07 it was learnt as read: a quick model read slow beside a call measured apart on its session
        (or an arm beside the chosen arm's runs, whose pools the measurement read too) and took the thread for its
        kept runs, or an arm not chosen for good (review of 0d717a95); and, until the floor `thread` (review of
        f5e88351), a model of seconds in its calling thread (a single-threaded step) beside a long measurement was
        learnt as the few ms left after the subtraction, and a later request of a few hundred rows ran on the loop."""
        if not beside:
            return ns
        if thread < 0:
            return None
        own = max(ns - self.apart.pool_size * beside, thread)
        return own if own >= handlers.INLINE_NS else None

    def run_step(self, step: Step, table: pa.Table) -> pa.Table:
        """One in-process model's step of handlers.run_awaiting_workers (a pipeline with a sandboxed worker), measured
        as `run` measures a step."""
        clock = self.cpu_clock()
        started = clock()
        output = step.runtimes[0].predict(table)
        self._cost(step.model).add(table.num_rows, clock() - started)
        return output

    def step_inline(self, step: Step, rows: int) -> bool:
        """Whether run_awaiting_workers runs that step of `rows` rows on the loop: runs_inline's rule for its model."""
        cost = self.costs.get(id(step.model))
        return rows <= handlers.INLINE_MAX_ROWS and cost is not None and \
            handlers.inline(cost.per_call, cost.per_row, rows)

    def cpu_clock(self) -> Callable[[], int]:
        """What a run is timed by: the CPU time of the threads that work on it, not the wall clock (in a thread the
        run also waits for the loop's turns of the GIL, and a host under load preempts it: calls of 46-83 ms of CPU
        read 0.4-1.6 s of wall time, niced at load 5-6). The calling thread's; and when the models' sessions have
        threads of their own (`pooled`, `cpus` 2 or more), theirs too: the pools of the sessions of the models a run
        may take (OnnxRuntime.pool_threads, `_pool_clocks`), one clock read each, and no other thread's (the log's
        encoding, a shadow deployment's challengers, malloc_trim, the loop while the run is in a thread). A run of a
        session of N threads so counts up to N times its wall time: a model near INLINE_NS takes the thread sooner,
        never later. Where a pool is not known (not Linux) the process's clock (on the loop, whose thread is the
        caller), less the loop's thread's in a thread (one not `loop_thread`), which also counts other threads' work
        meanwhile, as every pooled run did before 2026-12-06 (a quick model read slow beside the log's encoding and
        took the thread for its kept runs, docs/performance.md item 108)."""
        if not self.pooled:
            return time.thread_time_ns
        steps = self.steps
        pool = self._pool
        if pool is None or pool[0] is not steps or pool[1] != len(steps):
            clocks = self._pool_clocks(steps)
            pool = self._pool = (steps, len(steps), clocks, self._pooled_clock(clocks) if clocks else None)
        if pool[3] is not None:
            return pool[3]
        if pool[2] is not None:  # no pool: the calling thread's clock
            return time.thread_time_ns
        loop_clock = self.loop_clock
        if loop_clock is None or threading.get_ident() == self.loop_thread:
            return time.process_time_ns
        return lambda: time.process_time_ns() - time.clock_gettime_ns(loop_clock)

    def _pooled_clock(self, clocks: tuple[int, ...]) -> Callable[[], int]:
        """The calling thread's CPU time plus that of the pool threads of clock ids `clocks` (cpu_clock). A thread
        that has gone (a thread taken for a pool's as a session was created, that ended since) makes its clock's
        read fail (EINVAL): its CPU then counts as at its last read, for a run under way, and the pools are noted
        again at the next cpu_clock (`_pool_clocks` keeps the threads that live). Before 2026-12-07 the OSError
        reached the run: every request of the replica failed from then on (review of be445b60)."""
        seen = [0] * len(clocks)  # each thread's CPU at its last read: a gone thread's spent no more since
        thread_time, read = time.thread_time_ns, time.clock_gettime_ns

        def gone(at: int) -> int:
            self._pool = None  # noted again at the next run's cpu_clock
            return seen[at]

        if len(clocks) == 1:
            one = clocks[0]

            def clock() -> int:
                try:
                    seen[0] = pool = read(one)
                except OSError:
                    pool = gone(0)
                return thread_time() + pool
            return clock

        def clock_of_several() -> int:
            total = thread_time()
            for at, pool in enumerate(clocks):
                try:
                    seen[at] = ns = read(pool)
                except OSError:
                    ns = gone(at)
                total += ns
            return total
        return clock_of_several

    def _pool_clocks(self, steps: list[Step]) -> tuple[int, ...] | None:
        """The CPU clock ids of the pool threads of the sessions of every model the steps may run (`_may_run`), None
        when one of them is not known (OnnxRuntime.pool_threads)."""
        clocks: list[int] = []
        for step in steps:
            may_run = {id(model) for model in self._may_run(step)}
            for model, runtime in zip(step.models, step.runtimes, strict=False):
                if id(model) not in may_run:
                    continue
                threads = live_pool_threads(runtime)
                if threads is None:
                    return None
                clocks += [thread_cpu_clock(tid) for tid in threads]
        return tuple(clocks)

    def _cost(self, model: dict[str, Any] | None) -> ModelCost:
        cost = self.costs.get(id(model))
        if cost is None:
            cost = self.costs[id(model)] = ModelCost()
        return cost

    def learn(self, rows: int, ns: int, model: dict[str, Any] | None = None, table: pa.Table | None = None) -> None:
        """What handlers.runs_inline decides by, from a run of `rows` rows that took `ns` (cpu_clock) of `model`
        (None: the first step's), the one model a one-step pipeline's run took: a run of LEARN_ROWS rows or more
        teaches the model's time per row, a smaller one its time per call (fixed costs, which a lone one-row request
        meets), each the largest of its last LEARN_RUNS runs of that kind, and a slow call is kept longer
        (ModelCost). The pipeline's times (`ns_per_call`, `ns_per_row`) are then summed from its models' (`_sum`,
        which measures an A/B arm not measured yet on `table`, the run's input, off the request path). Any run ends
        the doubt `held_loop` cast."""
        steps = self.steps
        plan = self._plan
        if plan is None or plan[0] is not steps or plan[1] != len(steps):
            plan = self._plan = self._one_model(steps)
        one = plan[2]
        if one is not None and (model is None or id(model) == plan[3]):  # one model (most pipelines): its times
            one.add(rows, ns)
            self.ns_per_call, self.ns_per_row = one.per_call, one.per_row
            return
        self._cost(model if model is not None else steps[0].model).add(rows, ns)
        self._sum(None if table is None else [table])

    def _one_model(self, steps: list[Step]) -> tuple[Any, int, ModelCost | None, int]:
        """`_plan`: the ModelCost of the one model a pipeline of one step may run, else None."""
        models = self._may_run(steps[0]) if len(steps) == 1 else []
        if len(models) != 1:
            return steps, len(steps), None, 0
        return steps, 1, self._cost(models[0]), id(models[0])

    def _sum(self, tables: list[pa.Table] | None = None) -> None:
        """`ns_per_call` and `ns_per_row`: over the steps, the sum of the largest time of the models a step may run
        (every arm of an A/B split given a weight; a shadow deployment's champion: its challengers run in threads
        after the answer, handlers.run_challengers); None while one of them has none measured. Before 2026-12-06 a
        pipeline learnt one time for all its runs, its arms' alike: a slow arm measured once left the window after 8
        runs of the others and ran on the loop again (an arm not chosen yet ran there at once), and an A/B split or
        shadow deployment learnt no time per row (docs/performance.md item 106). An arm not measured yet is measured
        once on `tables` (each step's input in the run just done; and once more on a run of the other kind, under
        or from LEARN_ROWS rows, whose time it lacks) in the replica's measuring thread, off the request
        path (`measure_arm`): until then, and if that call fails, the runs take the thread (a split by a hash key whose
        traffic never reached an arm took it for ever before 2026-12-06, item 108)."""
        if tables is not None and (apart := self.apart).renewals:
            apart.sums = sums = apart.sums + 1
            if sums >= apart.renew_due:
                self._renew(tables)
        call: float | None = 0
        row: float | None = 0
        costs = self.costs
        for at, step in enumerate(self.steps):
            step_call = step_row = 0.0
            for model in self._may_run(step):
                cost = costs.get(id(model))
                if cost is None:
                    self.ns_per_call = self.ns_per_row = None
                    if tables is not None and at < len(tables):
                        self.measure_arm(step, model, tables[at])
                    return
                model_call, model_row = cost.per_call, cost.per_row
                if (model_call is None or model_row is None) and tables is not None and at < len(tables) and \
                        step.kind == "RandomSplit":  # an arm measured apart on a run of the other kind only
                    given = tables[at]
                    if (model_row if given.num_rows >= LEARN_ROWS else model_call) is None:
                        self.measure_arm(step, model, given)
                if model_call is None:
                    call = None
                elif call is not None:
                    step_call = max(step_call, model_call)
                if model_row is None:
                    row = None
                elif row is not None:
                    step_row = max(step_row, model_row)
            if call is not None:
                call += step_call
            if row is not None:
                row += step_row
        self.ns_per_call, self.ns_per_row = call, row

    @staticmethod
    def _may_run(step: Step) -> list[dict[str, Any]]:
        """The models a step's run may take: every weighted arm of an A/B split, else its first (a shadow
        deployment's champion)."""
        if step.kind != "RandomSplit":
            return step.models[:1]
        weights = step.weights or [1] * len(step.models)
        return [model for model, weight in zip(step.models, weights, strict=False) if weight > 0]

    def held_loop(self, ns: int, rows: int, again: Callable[[], Any]) -> None:
        """The fast lane's call held the event loop `ns` by its wall clock, INLINE_NS or more (the lane reads no CPU
        clock: ~0.9-2.7 us a read on the test VM, against ~0.13-0.4 us for the wall clock's): the next run takes the
        thread, where `run` measures its CPU (learn). A call the host or another process preempted (the wall clock's
        time, not the model's) so costs one request the thread's hop, and a model that is slow stays in the thread
        while its calls are. The lane's quick calls teach nothing (it runs only while calls are quick), so it pays
        no more than the perf_counter pair it reads anyway. A call of HELD_NS or more is measured again: `again`
        (the same call on the same input) runs in the replica's measuring thread, off the request path, timed by
        the CPU of that thread and of the model's session's pool (`measure_apart`), and enters the model's window
        (learn), so a model slow for some inputs stays in the thread after one as after a call measured slow
        (ModelCost), where before 2026-12-06 the next quick run measured sent the next slow one to the loop
        (docs/performance.md item 106), and a quick call preempted that long (at load ~10) is not taken for slow:
        entered by its wall clock, as from item 106 on, it kept the model's next 52-105 runs in the thread (item
        108). While another call is measured apart, only the next run takes the thread. (Until 2026-12-07 a caller
        without `again` had the wall clock's `ns` learnt: no caller was one, item 111.)"""
        self.ns_per_call = max(self.ns_per_call or 0, ns)
        if ns >= handlers.HELD_NS:
            self.measure_apart(None, rows, again, self.steps[0].runtimes[0] if self.steps else None)

    def measure_arm(self, step: Step, model: dict[str, Any], table: pa.Table, renew: bool = False) -> None:
        """Measure an A/B split's arm `model`, which no run has taken yet (or none of `table`'s kind: under
        LEARN_ROWS rows, its time per call; more, its time per row), once for each kind, on `table` (the step's
        input of a run of another arm), in a thread off the request path (`measure_apart`): a call of seconds costs
        a core that long once, never the loop. An arm whose call fails there (an input it cannot take) is not measured,
        and its split's runs keep the thread until it is chosen. Not in a pipeline with a sandboxed worker: it never
        runs on the loop (handlers.runs_inline), and a user's code would be given a request its arm was not chosen
        for. While no run takes the arm, its measurement is renewed (`renew`: it replaces the one before) after
        RENEW_RUNS runs of the pipeline, or as many as thread hops cost its time (a 2 s arm: ~10,500), so that a
        core spent on it costs no more than a hop a run; before 2026-12-07 one measurement, maybe read beside
        other work, was the arm's until a request chose it (review of 0d717a95)."""
        key = (id(model), table.num_rows >= LEARN_ROWS)  # once for its time per call, once for its time per row
        arm_input = getattr(step, "arm_input", None)
        if self.workers or key in self.measured_apart or arm_input is None or self.measuring():
            return
        chosen = next((index for index, arm in enumerate(step.models) if arm is model), None)
        at = next((index for index, one in enumerate(self.steps) if one is step), None)
        if chosen is None or chosen >= len(step.runtimes) or at is None:
            return
        self.measured_apart.add(key)
        runtime = step.runtimes[chosen]
        self.measure_apart(model, table.num_rows, lambda: runtime.predict(arm_input(chosen, table)), runtime,
                           (key, at, step, model, renew))

    def _renew(self, tables: list[pa.Table]) -> None:
        """Measure again (measure_arm) the arms whose measurement apart is due for renewal (`renewals`) and which
        no run has taken since, on this run's input of their step when it is of their kind of run; the others
        later. Only while nothing is measured apart (`renewals` then has one writer at a time)."""
        if self.measuring():
            return
        apart = self.apart
        due_next = None
        for key, (due, at, step, model) in list(apart.renewals.items()):
            cost = self.costs.get(key[0])
            if cost is None or cost.runs > apart.samples.get(key[0], 0):  # a run took it: its own runs teach
                del apart.renewals[key]
                continue
            if due <= apart.sums:
                if at < len(tables) and (tables[at].num_rows >= LEARN_ROWS) == key[1]:
                    del apart.renewals[key]
                    self.measured_apart.discard(key)
                    self.measure_arm(step, model, tables[at], renew=True)
                    apart.renew_due = apart.sums + 1  # any other, at a run once this one is measured
                    return
                due = apart.sums + LEARN_RUNS  # this run is not of its kind: looked at again later
                apart.renewals[key] = (due, at, step, model)
            due_next = due if due_next is None else min(due_next, due)
        apart.renew_due = apart.sums + RENEW_RUNS if due_next is None else due_next

    def measuring(self) -> bool:
        """Whether a call is being measured apart (`measure_apart`)."""
        return self.measurement is not None and not self.measurement.done()

    def measure_apart(self, model: dict[str, Any] | None, rows: int, call: Callable[[], Any], runtime: Any = None,
                      arm: tuple | None = None) -> None:
        """Run `call` (a call of `runtime`'s model on `rows` rows) in the replica's measuring thread, one at a time,
        timed by the CPU of that thread and of `runtime`'s session's pool (`session_clock`; not the pools of the
        pipeline's other models, which a live run may use meanwhile), and learn its time as the model's (`learn`):
        not while another is under way (then nothing). With `cpus` 2 or more, a live run of the replica (or a fast
        lane's call) beside it shares the session's pool, so a slow time read beside one is learnt less what the pool
        could have done for them meanwhile (`_own`: all along the measurement), or as this thread's own part when
        that is more; when neither is slow, not at all: an A/B arm's (`arm`: its measured_apart key, step index,
        step, model and whether it renews an earlier measurement) is measured again at a later run, up to
        APART_TRIES times, then learnt as read (the thread, a cost); a lane call's is dropped (the next run takes the
        thread and is measured). One thread kept for them all: a call in
        a new thread read ~100-150 us more of CPU than in one that had made calls before (ccfraud: ~20 us). Not a
        daemon: a replica stopping meanwhile ends once the call has (a model's session is not torn down under it)."""
        if self.measuring():
            return
        lane = getattr(getattr(self, "request_batcher", None), "lane", None)
        apart = self.apart

        def measure() -> None:
            try:
                clock = self.session_clock(runtime)
                answered = getattr(lane, "answered", 0)
                apart.since, apart.until = (since := time.perf_counter_ns()), 0
                own = time.thread_time_ns()
                started = clock()
                call()
                ns = clock() - started
                own = time.thread_time_ns() - own  # this thread's part: no other call's
            except Exception as exc:  # noqa: BLE001 - its runs stay in the thread: nothing measured
                log.info("a call of %s measured apart failed: %s: %s", self.name, type(exc).__name__, exc)
                return
            finally:
                apart.until = time.perf_counter_ns()
            if self.pooled and ns >= handlers.INLINE_NS:
                until = apart.until
                begun, ended = apart.live_from, apart.live_to  # ended < begun: a run under way
                # a lane's call or a live run (the last, maybe not the only one) beside it: the pool may have worked
                # for them all along (runs and lane calls come one at a time)
                beside = getattr(lane, "answered", 0) != answered or \
                    (begun and begun < until and (ended < begun or ended > since))
                learnt = self._own(ns, until - since if beside else 0, own)
                if learnt is None:
                    key = arm[0] if arm is not None else None
                    tries = 0 if key is None else apart.tries.get(key, 0) + 1
                    if key is None or tries < APART_TRIES:
                        if key is not None:  # measured again at a later run (`_sum`; `_renew` for a renewal)
                            apart.tries[key] = tries
                            self.measured_apart.discard(key)
                            if arm[4]:
                                apart.renewals[key] = (apart.sums + LEARN_RUNS, *arm[1:4])
                                apart.renew_due = min(apart.renew_due, apart.sums + LEARN_RUNS)
                        log.info("a call of %s measured apart read %.1f ms beside a live run: not learnt", self.name,
                                 ns / 1e6)
                        return
                else:
                    ns = learnt
            if arm is not None:
                key, at, step, arm_model, renew = arm
                if renew:
                    self._cost(arm_model).forget(rows)
                apart.samples[key[0]] = apart.samples.get(key[0], 0) + 1
                apart.tries.pop(key, None)
                apart.renewals[key] = (apart.sums + max(RENEW_RUNS, ns // handlers.HOP_NS), at, step, arm_model)
                apart.renew_due = min(apart.renew_due, apart.renewals[key][0])
            self.learn(rows, ns, model)

        if self.measurer is None:
            self.measurer = ThreadPoolExecutor(1, thread_name_prefix="railyard-measure")
        self.measurement = self.measurer.submit(measure)

    def session_clock(self, runtime: Any) -> Callable[[], int]:
        """What a call of `runtime`'s model measured apart is timed by: the calling thread's CPU, and with `cpus` 2
        or more that of its session's pool (live_pool_threads); a pool not known, as a run is (cpu_clock)."""
        if not self.pooled:
            return time.thread_time_ns
        threads = live_pool_threads(runtime) if runtime is not None else None
        if threads is None:
            return self.cpu_clock()
        return self._pooled_clock(tuple(thread_cpu_clock(tid) for tid in threads)) if threads else time.thread_time_ns

    def status(self) -> dict[str, Any]:
        """The status probe's answer: seed 001's engine fields (status, pipeline_statuses, model_statuses; the
        deployer adds name, ip, reason, details, ...) and `logs`, the inference log buffer's counts since this replica
        started (LogBatcher.stats: held_rows / held_bytes, lost_rows / lost_records, refused_publishes,
        malformed_rows / malformed_records, failed_flushes / failed_records, refused_segments: segments object
        storage refused or did not store in time, their rows sent through the stream, nothing lost). Rows it could
        not log also give a `details` line, which status/get_deployment and the UI's replica table show: before, they
        were only in the replica's log."""
        answer: dict[str, Any] = {
            "status": "Running",
            "pipeline_statuses": {"pipelines": [{"id": self.spec["deployment"]["pipeline"], "status": "Running"}]},
            "model_statuses": {"models": [{"name": m["name"], "version": m["model_version"], "sha": m["sha"],
                                           "status": "Running"} for s in self.steps for m in s.models]},
        }
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            counts = answer["logs"] = batcher.stats()
            said = logs_detail(counts)
            if said:
                answer["details"] = [said]
        return answer

    async def serve(self) -> None:  # noqa: C901 - the request path is kept in one place on purpose
        if self.pooled:  # a run in a thread is timed less this thread's CPU (cpu_clock)
            self.loop_thread = threading.get_ident()
            self.loop_clock = time.pthread_getcpuclockid(self.loop_thread)
        identity = connect_options(self.settings.nats)  # the `engine` identity, from the deployer
        nc = await nats.connect(self.settings.nats.url, name=f"railyard-engine-{self.name}-{self.replica_id}",
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5, **identity)
        logs_nc = await nats.connect(self.settings.nats.url, name=f"railyard-engine-{self.name}-logs",
                                     max_reconnect_attempts=-1, reconnect_time_wait=0.5, **identity)
        self.batcher = LogBatcher(logs_nc.jetstream(), self.spec["deployment"], self.settings.logs, nc.max_payload,
                                  objects=getattr(self, "store", None))  # segments written here (logbatcher.py)

        answers = RepeatedRequests()

        # Each callback below (infer, the batcher's submit, status) first drops a request whose reply subject is not a
        # caller's inbox, or that has none: nothing is run and nothing published (shared/raw_bus.py,
        # answers_elsewhere). The engine keeps NATS's allow_responses (shared/bus_identities.py), which would let
        # this replica's answer out on any subject a request names (`events.>`, `logs.inference.>`, a command).
        # reply() and resend() publish only on the reply subject of a request those callbacks let through.
        def refuse(msg) -> None:
            log_refused_reply(log, msg.subject, msg.reply)

        async def reply(msg, body: bytes, headers: dict[str, str], received: int) -> None:
            answers.answered(msg, body, headers, (time.perf_counter_ns() - received) / 1e9)
            if not write_now(nc, msg.reply, body, headers):  # at once, not on the flusher's next turn
                await nc.publish(msg.reply, body, headers=headers)

        async def resend(msg, earlier) -> None:  # re-sent by the gateway while this replica runs it or just ran it
            body, headers = await earlier if isinstance(earlier, asyncio.Future) else earlier
            await nc.publish(msg.reply, body, headers=headers)

        def repeat(msg) -> bool:
            earlier = answers.earlier(msg)
            if earlier is None:
                return False
            asyncio.create_task(resend(msg, earlier))  # noqa: RUF006 - it ends with the answer it waits for
            return True

        async def infer(msg) -> None:
            received = time.perf_counter_ns()
            if not msg.reply.startswith(REPLY_INBOXES):  # msg.reply: a str, "" without one
                refuse(msg)
                return
            earlier = answers.earlier(msg)
            if earlier is not None:
                await resend(msg, earlier)
                return
            at_ms = time.time_ns() // 1_000_000
            try:
                await run_alone(msg, received, at_ms)
            except Exception as exc:  # every request let through gets one answer (the batcher's alone() does so too)
                await answer_failed(msg, received, at_ms, exc)
            except BaseException:  # cancelled (the replica stopping): a re-send is not held for an answer never sent
                answers.forget(msg)
                raise

        async def answer_failed(msg, received: int, at_ms: int, exc: Exception) -> None:
            """A typed error answer at once (an answer without output leaves no record), which also answers a re-send
            waiting for this attempt; unanswered, the re-send would be held until the gateway gives up. Logged once."""
            error = failure_error(exc)
            try:
                await deliver(msg, handlers.Answer(b"", error_headers(error)), received, at_ms)
                outcome = f"answered {error.code} instead"
            except Exception as again:
                outcome = f"its error answer failed too: {type(again).__name__}: {again}"
            finally:
                answers.forget(msg)  # a no-op once answered; else a later re-send of the id runs again
            log.error("a request of %s could not be answered (%s)", self.name, outcome, exc_info=exc)

        async def run_alone(msg, received: int, at_ms: int) -> None:
            answer = await handlers.infer(self, msg.data, msg.headers, received, nc.max_payload)
            await deliver(msg, answer, received, at_ms)

        async def deliver(msg, answer: handlers.Answer, received: int, at_ms: int) -> None:
            """Answer, then leave the request's record for the log (as the deployment's log policy says); the
            answer says the record's time (TIME_HEADER), which the gateway's answer then says too."""
            lane = isinstance(answer, LaneAnswer)  # its record holds numpy arrays (fast_lane.py)
            if answer.output is None and not lane:  # failed: nothing to log
                await reply(msg, answer.body, answer.headers, received)
                self.served += 1
                return
            answer.headers[TIME_HEADER] = str(at_ms)  # each answer's own dict (fast_lane, batching, handlers)
            await reply(msg, answer.body, answer.headers, received)
            self.served += 1
            request_id = answers.store_once(msg, (time.perf_counter_ns() - received) / 1e9)
            record = answer.record(at_ms, request_id) if lane else \
                InferenceRecord(at_ms, answer.table, answer.output, answer.last_model, answer.elapsed,
                                request_id=request_id)
            if answer.shadow_outputs:  # the challengers ran before the answer (inline): logged with it
                record.shadows.update(answer.shadow_outputs)
            shadows = answer.shadows
            if not shadows:
                self.log_record(record, getattr(answer, "log_bytes", 0))
                return
            try:
                self.shadow_queue.put_nowait((record, shadows))
            except asyncio.QueueFull:  # challengers cannot keep up: log the champion's part alone
                log.warning("challengers of %s are behind: a record is logged without them", self.name)
                self.log_record(record)

        async def status(msg) -> None:
            if not msg.reply.startswith(REPLY_INBOXES):
                refuse(msg)
                return
            await msg.respond(json.dumps(self.status()).encode())

        batching = batching_config(self.spec.get("engine_config", {}))
        requests = None
        if batching is not None and can_batch(self):  # concurrent requests share a model call (batching.py)
            requests = RequestBatcher(self, *batching, nc.max_payload, run_alone, deliver, repeat)
            self.request_batcher = requests
            queue = requests.submit

            async def submit(msg) -> None:
                if not msg.reply.startswith(REPLY_INBOXES):
                    refuse(msg)
                    return
                await queue(msg)

        subscription = await nc.subscribe(subjects.engine_infer(self.name), queue=f"engine-{self.name}",
                                          cb=submit if requests else infer)
        if requests is not None:
            requests.subscription = subscription
            if FastLane.applies(self):
                requests.lane = FastLane(self.steps[0].runtimes[0], self.narrowing, self.steps[0].model,
                                         self.spec["deployment"]["pipeline_version"], nc.max_payload, self)
        status_subscription = await nc.subscribe(subjects.engine_replica_status(self.name, self.replica_id),
                                                 cb=status)
        publisher = asyncio.create_task(self.batcher.run())
        shadow_worker = asyncio.create_task(self.run_shadows())
        batch_worker = asyncio.create_task(requests.run()) if requests else None
        trimmer = asyncio.create_task(self.trim_memory())
        log.info("replica %s of %s serving", self.replica_id, self.name)
        await self.stop.wait()
        # a stopping replica is no longer Running: a deployer restarted meanwhile (the old one killed: this is its
        # parent-death signal) asks the same replica id's status and would take the draining replica for its own
        with contextlib.suppress(Exception):
            await status_subscription.unsubscribe()
        trimmer.cancel()
        if requests is not None:  # queued requests are answered before the connection closes
            await subscription.drain()
            await requests.idle()
            batch_worker.cancel()
        await nc.drain()  # finishes in-flight requests before closing
        # every answered request is logged before the replica goes: queued challengers run (for a while), then
        # the batcher publishes what it holds (docs/logs.md, "Graceful stop")
        await self.drain_shadows(shadow_worker, DRAIN_SHADOWS)
        await self.batcher.close(publisher, DRAIN_LOGS)
        await logs_nc.drain()
        await self.stop_workers()

    async def trim_memory(self, every: float = TRIM_EVERY) -> None:
        """Give the heap's free pages back to the system once the log buffer is empty again. Request and answer
        bytes and the records held for the log are many blocks of ~100 KB from the C heap: freed, they stayed in
        the process (a replica measured 300-430 MiB after batch-1000 load, 190 MiB after a trim)."""
        try:
            libc = ctypes.CDLL("libc.so.6")
            trim = libc.malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to do
            return
        trimmed_at = -1
        while True:
            await asyncio.sleep(every)
            if self.served != trimmed_at and self.batcher.held_rows == 0:  # served since, and nothing held
                trimmed_at = self.served
                await asyncio.to_thread(trim, 0)

    def log_record(self, record: InferenceRecord, size: int = 0) -> None:
        """Hand a request's record to the log batcher, as the deployment's log policy says (logpolicy.py); `size`:
        its bytes when known (the fast lane's), which hold while the policy keeps every row and column. A record
        the policy or the buffer cannot take (malformed) is counted as such (`LogBatcher.set_aside`): its answer is
        out, and raising here would have answered it a second time (deliver's callers) or ended the shadow worker."""
        try:
            logged = self.log_policy.apply(record)
            if logged is not None:
                self.batcher.add(logged, size if self.log_policy.mode == "all" else 0)
        except Exception as exc:  # the answer is out: a record that cannot be held is counted, not answered again
            self.batcher.set_aside([(record, exc)])

    async def stop_workers(self) -> None:
        for worker in self.workers:
            await worker.stop()

    async def run_shadows(self) -> None:
        """Challengers run after the champion answered, one request at a time (handlers.run_challengers, as on
        the inline path); a failing or slow challenger only loses its own columns in that request's record."""
        while not self.shadows_stopped:
            record, shadows = self.shadow_current = await self.shadow_queue.get()
            await handlers.run_challengers(shadows, record.shadows, self.name, record.rows)
            self.shadow_current = None
            self.log_record(record)
            self.shadow_queue.task_done()

    async def drain_shadows(self, worker: asyncio.Task, timeout: float) -> None:
        """Let queued challengers run for up to `timeout` seconds; records still queued then are logged without
        their challengers' columns (never dropped)."""
        try:
            await asyncio.wait_for(self.shadow_queue.join(), timeout)
        except TimeoutError:
            log.warning("stopping: %d records of %s are logged without their challengers", self.shadow_queue.qsize()
                        + (self.shadow_current is not None), self.name)
        # the worker takes no other record even when the cancel does not reach it: a challenger whose thread ends as
        # the cancel comes makes Python 3.11's wait_for (run_challengers) return its result, not raise (bpo-42130),
        # and the worker went on through the queue, this wait with it, until the deployer killed the replica (20 s)
        # with every record not yet published
        self.shadows_stopped = True
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        if self.shadow_current is not None:
            self.log_record(self.shadow_current[0])
        while not self.shadow_queue.empty():
            self.log_record(self.shadow_queue.get_nowait()[0])


async def main_async(spec_path: Path, replica_id: str, settings: Settings) -> int:
    request_path_slice(settings.request_path_slice_us)  # a pod's replica too (shared/sched_hint.py; no-op when set)
    # typed at the boundary (the deployer wrote it); the request path reads the validated fields as a dict
    spec = ReplicaSpec.model_validate_json(await asyncio.to_thread(spec_path.read_text))
    replica = Replica(spec.model_dump(), replica_id, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, replica.stop.set)
    try:
        await replica.load()
        settle_garbage_collector()
    except (RailyardError, InvalidRequest) as exc:
        print(f"railyard-engine: {exc.msg}", file=sys.stderr, flush=True)
        await replica.stop_workers()
        return 2
    probes = None
    if settings.probe_dir is not None:  # a replica pod's probes (services/deployer/kubernetes.py): ready once it
        # has its models and its bus connections (serve() subscribes right after), not ready from the stop on
        probes = asyncio.create_task(keep_probe_files(settings.probe_dir, lambda: _serving(replica)))
    try:
        await replica.serve()
    finally:
        if probes is not None:
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
    return 0


async def _serving(replica: Replica) -> bool:
    return getattr(replica, "batcher", None) is not None and not replica.stop.is_set()


READ_PIECE = 1 << 20
"""Bytes a replica's bus connections read from their socket at a time (nats-py's `DEFAULT_BUFFER_SIZE`, 32 KiB,
which is also its stream reader's limit). At 32 KiB a 1,000-row request (~120 KB, more when the gateway sends
concurrent ones as one table) took four or more reads and parser passes, and the reader stopped and restarted
reading the socket each time more than 64 KiB waited; read up to 1 MiB at once, the replica's CPU a 1,000-row
request fell ~5 % (Arrow) and ~7 % (OIP v2) (docs/performance.md item 95). A connection may hold up to 2 MiB read
and not yet parsed (twice the limit) before it stops reading."""


def read_in_large_pieces() -> None:
    """READ_PIECE for every bus connection this process opens from now on (nats-py reads the module's value when it
    connects and at each read)."""
    import nats.aio.client

    nats.aio.client.DEFAULT_BUFFER_SIZE = READ_PIECE


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # as a service's start (shared/service.py): every bad setting named, one line each, exit 2, no traceback and no
    # value (pydantic's traceback printed the inputs, the engine's bus password among them)
    settings = load_settings("railyard-engine")
    read_in_large_pieces()
    import uvloop  # as every service: its loop and transports cost less per message than asyncio's own

    sys.exit(uvloop.run(main_async(Path(sys.argv[1]), sys.argv[2], settings)))


if __name__ == "__main__":
    main()
