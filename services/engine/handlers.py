"""The engine's request path: one inference, from the request's bytes to the answer's. The transport around it
(the bus subscription, re-sent requests, publishing, logging the record) stays in replica.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from services.engine.runtimes import NonFiniteValues
from shared import errors
from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.errors import InvalidRequest, RailyardError, Unavailable
from shared.objectstore import BUCKET_TABLES
from shared.raw_bus import error_headers
from shared.table_transport import (
    INFERENCE_PREFIX,
    META_HEADER,
    SHADOWS_HEADER,
    SHADOWS_INLINE,
    TABLE_REF,
    above_bus_limit,
    put_table,
)

log = logging.getLogger("railyard.engine")
INLINE_ROWS = 256  # tables up to this many rows run on the event loop when no step awaits a worker and a run of
# few rows has been quick (until the replica has learnt its pipeline's time per row: runs_inline)
INLINE_NS = 1_000_000  # a run expected to take less than this (ns) runs on the event loop, not in a thread
HOP_NS = 190_000  # what a run's hop to a thread and back costs (ns of CPU): a slow call's memory is counted in hops
HELD_NS = 10 * INLINE_NS  # a call that held the loop this long by the wall clock was slow, not preempted (held_loop)
INLINE_MAX_ROWS = 4096  # a larger table takes the thread whatever the learnt time (batching's default batch_max_rows)
SHADOW_TIMEOUT = 10.0  # seconds a challenger may take (after that: its columns are left out)


class Pipeline(Protocol):
    """What a replica serves: its steps run in order on a table."""

    spec: dict[str, Any]
    store: Any
    workers: list

    def run(self, table: pa.Table) -> tuple[pa.Table, list[int], dict[str, Any] | None, list]: ...

    def narrow(self, table: pa.Table) -> pa.Table: ...


@dataclass
class Answer:
    """An inference's answer, and what its log record needs (`output` is None when it failed)."""

    body: bytes
    headers: dict[str, str]
    table: pa.Table | None = None
    output: pa.Table | None = None
    last_model: str = ""
    elapsed: tuple[int, int] = (0, 0)
    shadows: list = field(default_factory=list)
    shadow_outputs: dict[str, pa.Table] | None = None  # challengers already run (inline): their outputs by name


async def run_challengers(shadows: list, outputs: dict[str, pa.Table], deployment: str = "",
                          rows: int | None = None) -> dict[str, int]:
    """Run the challengers of one request, one after the other, each output going into `outputs` as soon as it is
    there (a run cancelled half-way keeps those done): the elapsed ns by challenger name. A failing or slow
    (SHADOW_TIMEOUT) challenger is logged and left out, and so is one that answered another number of rows than
    `rows` (the request's, which its columns are logged beside: a Python step's filter, which the champion's answer
    may not do either, `rows_changed`). Both paths use it: before the answer (inline, below) and
    after it (the replica's shadow queue). A cancel always ends it: bounded by asyncio.timeout, not wait_for, which on
    Python 3.11 returns the thread's result instead of raising CancelledError when the thread ends as the cancel
    comes (bpo-42130), and the next challengers ran (up to SHADOW_TIMEOUT each) in a stopping replica."""
    elapsed: dict[str, int] = {}
    for name, runtime, shadow_input in shadows:
        started = time.perf_counter_ns()
        try:
            async with asyncio.timeout(SHADOW_TIMEOUT):
                output = await asyncio.to_thread(runtime.predict, shadow_input)
            if rows is not None and output.num_rows != rows:  # its columns would not pair with the record's rows
                log.warning("challenger %s of %s answered %d rows for a request of %d: left out", name, deployment,
                            output.num_rows, rows)
                continue
            outputs[name] = output
            elapsed[name] = time.perf_counter_ns() - started
        except Exception as exc:
            log.warning("challenger %s of %s failed: %s", name, deployment, exc)
    return elapsed


def awaits_workers(pipeline: Pipeline) -> bool:
    """Whether every step runs one model (ModelInference, no challenger or split): then `run_awaiting_workers` runs
    the pipeline as `pipeline.run` does."""
    steps = getattr(pipeline, "steps", None)
    return bool(steps) and all(step.kind == "ModelInference" and len(step.runtimes) == 1 for step in steps)


async def run_awaiting_workers(steps: list, table: pa.Table, pipeline: Any = None) -> tuple[pa.Table, list[int],
                                                                                          dict[str, Any], list]:
    """`pipeline.run` of a pipeline of one-model steps on the event loop: a sandboxed worker's step awaits its answer
    here (`predict_async`), where `pipeline.run` in a thread would hand each request to a thread and the thread back
    to this loop for the worker's pipes (four wake-ups of a thread or the loop per request); an in-process model runs
    here or in a thread by what the replica has measured of that model (`pipeline.step_inline` and
    `pipeline.run_step`, replica.Replica: the rule of `runs_inline` for the step's model alone; before 2026-12-06 by
    its rows alone, so a model of seconds a call beside a Python step held the loop at every request of up to
    INLINE_ROWS rows, docs/performance.md item 106). Without `pipeline` (tests) the rows decide. The exchange is
    shielded: a cancelled request leaves it to read its answer, as the thread's exchange did (an answer left unread
    would be the next request's)."""
    elapsed = []
    current = table
    changed_by = None  # the model of the last step that returned another number of rows than it was given
    for index, step in enumerate(steps):
        started = time.perf_counter_ns()
        runtime = step.runtimes[0]
        given = current.num_rows
        try:
            if hasattr(runtime, "predict_async"):
                current = await asyncio.shield(runtime.predict_async(current))
            elif pipeline is None:
                current = runtime.predict(current) if given <= INLINE_ROWS else \
                    await asyncio.to_thread(runtime.predict, current)
            elif pipeline.step_inline(step, given):
                current = pipeline.run_step(step, current)
            else:
                current = await asyncio.to_thread(pipeline.run_step, step, current)
        except NonFiniteValues as exc:  # rows of what the step before returned (as Replica.run says them)
            raise exc.for_request(steps[index - 1].model if index else None, current.num_rows,
                                  table.num_rows) from None
        if current.num_rows != given:
            changed_by = step.model
        elapsed.append(time.perf_counter_ns() - started)
    if current.num_rows != table.num_rows:
        raise rows_changed(changed_by, current.num_rows, table.num_rows)
    return current, elapsed, steps[-1].model, []


def rows_changed(step: dict[str, Any] | None, answered: int, requested: int) -> InvalidRequest:
    """The refusal of a pipeline whose answer has another number of rows than the request: a Python step (BYOP and
    ONNX models refuse it themselves, runtimes' "equal rows rule") filtered or expanded the rows and no later step
    gave back one row per request row. The records and Arrow answers pair each output row with its input row, and
    so does the inference log (one row per inferred row, shared/logrecords.py), so there is no answer to give: the
    seed's equal rows constraint, every format alike (OIP too, whose answer would not pair but whose log would).
    `step` is the model of the last step that changed the number of rows (None: unknown). Steps in between may
    change it: only the pipeline's answer is held to the request's rows (docs/inference.md, "Rows a step
    returns")."""
    return errors.rows_changed(str(step["name"]) if step else None, answered, requested)  # the gateway's words too


def runs_inline(pipeline: Pipeline, rows: int) -> bool:
    """Whether a table of `rows` rows runs through `pipeline.run` on the event loop rather than in a thread. A thread
    keeps the loop serving (other requests, the deployer's status and liveness probes) while a large or slow model
    runs, but the hop (the executor's queue, the thread's wake-up, the future handed back to the loop) costs ~190 us
    of CPU (HOP_NS), more than a small model's whole call (ccfraud, 1,000 rows: ~70 us inline). So a run expected to
    take under INLINE_NS runs inline, by what the replica has measured of each model it may run
    (replica.Replica.learn and ModelCost: a step's every A/B arm, a shadow deployment's champion, summed over the
    steps): `ns_per_call`, from runs of fewer than LEARN_ROWS rows (fixed costs: a model's call of one row taking 2 s
    takes as long for 100), and `ns_per_row`, from runs of more. A table of up to INLINE_MAX_ROWS rows runs inline
    when neither says it is slow: `rows * ns_per_row` under INLINE_NS once that is known, else up to INLINE_ROWS
    rows. Until every model the run may take has been measured (a replica's first request, an A/B arm not chosen
    yet, which is then measured once apart: replica.Replica.measure_arm) it runs in the thread: its cost is unknown,
    and one ~190 us hop costs less than a model of seconds holding the loop. A pipeline with a sandboxed worker
    runs in the thread (its answer is awaited on this loop; or run_awaiting_workers, which decides each in-process
    step by `inline`)."""
    if pipeline.workers or rows > INLINE_MAX_ROWS:
        return False
    call = getattr(pipeline, "ns_per_call", None)  # the rule written out, as `inline`: a call less per request
    learnt = getattr(pipeline, "ns_per_row", None)
    if learnt is None:
        return call is not None and call < INLINE_NS and rows <= INLINE_ROWS
    return (call is None or call < INLINE_NS) and rows * learnt < INLINE_NS


def inline(call: float | None, learnt: float | None, rows: int) -> bool:
    """The rule of `runs_inline` for a time per call and a time per row measured (None: not yet)."""
    if learnt is None:
        return call is not None and call < INLINE_NS and rows <= INLINE_ROWS
    return (call is None or call < INLINE_NS) and rows * learnt < INLINE_NS


TOO_LARGE_UNSTORED = ("the answer is too large for the bus and object storage could not take it; try again, or ask "
                      "for fewer rows")


async def infer(pipeline: Pipeline, data: bytes, headers: dict[str, str] | None, received: int,
                max_payload: int) -> Answer:
    """Run the request's table through the pipeline; failures become a typed error header, never a crash."""
    try:
        reference = (headers or {}).get(TABLE_REF)
        if reference:
            if not reference.startswith(INFERENCE_PREFIX):
                raise InvalidRequest("table reference outside the inference area")
            data = await pipeline.store.get_bytes(BUCKET_TABLES, reference)
        table = pipeline.narrow(from_ipc(data))
        if pipeline.workers and awaits_workers(pipeline):
            output, elapsed, last, shadows = await run_awaiting_workers(pipeline.steps, table, pipeline)
        else:  # a worker's answer is awaited on this loop, so a request with one runs in a thread
            output, elapsed, last, shadows = pipeline.run(table) if runs_inline(pipeline, table.num_rows) \
                else await asyncio.to_thread(pipeline.run, table)
    except RailyardError as exc:
        return Answer(b"", error_headers(exc))
    except Exception as exc:  # a model failing at run time is the deployment's error, not a crash
        log.exception("inference failed")
        return Answer(b"", error_headers(RailyardError(f"the model failed: {type(exc).__name__}",
                                                       code="inference_failed")))
    last_model = json.dumps({"model_name": last["name"], "model_sha": last["sha"]}) if last else ""
    shadow_outputs = None
    answered = output
    if shadows and (headers or {}).get(SHADOWS_HEADER) == SHADOWS_INLINE:
        # the caller wants the challengers' outputs in the answer (monitoring's predict keeps both)
        shadow_outputs = {}
        shadow_elapsed = await run_challengers(shadows, shadow_outputs, pipeline.spec["deployment"].get("name", ""),
                                               table.num_rows)
        shadows = []
        for name, shadow in shadow_outputs.items():  # not `table`: the request's, which the record's inputs are
            for column in shadow.column_names:
                answered = answered.append_column(f"out_{name}.{column}", shadow.column(column))
    timings = (elapsed[0] if elapsed else 0, time.perf_counter_ns() - received)
    meta = {"last_model": last_model, "pipeline_version": pipeline.spec["deployment"]["pipeline_version"],
            "elapsed": list(timings)}
    if shadow_outputs is not None:
        meta["shadow_elapsed"] = shadow_elapsed
    body = to_ipc_stream(answered)
    answer_headers = {META_HEADER: json.dumps(meta)}
    if above_bus_limit(body, max_payload):  # answer by reference
        try:
            answer_headers[TABLE_REF], body = await put_table(pipeline.store, INFERENCE_PREFIX, body), b""
        except Exception:  # the caller's answer, not a crash: 503 as a shared batch's request gets (batching.py)
            log.exception("an answer of %s could not be stored", pipeline.spec["deployment"].get("name"))
            return Answer(b"", error_headers(Unavailable(TOO_LARGE_UNSTORED)))
    return Answer(body, answer_headers, table, output, last_model, timings, shadows, shadow_outputs)
