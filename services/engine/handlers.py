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

from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.errors import InvalidRequest, RailyardError
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
INLINE_ROWS = 256  # tables up to this many rows run on the event loop when no step awaits a worker
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


async def run_challengers(shadows: list, outputs: dict[str, pa.Table], deployment: str = "") -> dict[str, int]:
    """Run the challengers of one request, one after the other, each output going into `outputs` as soon as it is
    there (a run cancelled half-way keeps those done): the elapsed ns by challenger name. A failing or slow
    (SHADOW_TIMEOUT) challenger is logged and left out. Both paths use it: before the answer (inline, below) and
    after it (the replica's shadow queue)."""
    elapsed: dict[str, int] = {}
    for name, runtime, shadow_input in shadows:
        started = time.perf_counter_ns()
        try:
            outputs[name] = await asyncio.wait_for(asyncio.to_thread(runtime.predict, shadow_input), SHADOW_TIMEOUT)
            elapsed[name] = time.perf_counter_ns() - started
        except Exception as exc:
            log.warning("challenger %s of %s failed: %s", name, deployment, exc)
    return elapsed


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
        # a worker's answer is awaited on this loop, so a request with one runs in a thread
        output, elapsed, last, shadows = await asyncio.to_thread(pipeline.run, table) \
            if table.num_rows > INLINE_ROWS or pipeline.workers else pipeline.run(table)
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
        shadow_elapsed = await run_challengers(shadows, shadow_outputs, pipeline.spec["deployment"].get("name", ""))
        shadows = []
        for name, table in shadow_outputs.items():
            for column in table.column_names:
                answered = answered.append_column(f"out_{name}.{column}", table.column(column))
    timings = (elapsed[0] if elapsed else 0, time.perf_counter_ns() - received)
    meta = {"last_model": last_model, "pipeline_version": pipeline.spec["deployment"]["pipeline_version"],
            "elapsed": list(timings)}
    if shadow_outputs is not None:
        meta["shadow_elapsed"] = shadow_elapsed
    body = to_ipc_stream(answered)
    answer_headers = {META_HEADER: json.dumps(meta)}
    if above_bus_limit(body, max_payload):  # answer by reference
        answer_headers[TABLE_REF], body = await put_table(pipeline.store, INFERENCE_PREFIX, body), b""
    return Answer(body, answer_headers, table, output, last_model, timings, shadows, shadow_outputs)
