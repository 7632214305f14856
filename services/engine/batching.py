"""Adaptive batching: concurrent requests to one replica run as one model call.

The bus subscription's callback only queues a request (`submit`: a lone request the fast lane answers is answered
there at once); one task takes every request queued at that
moment (after waiting at most `batch_max_delay_ms` for more when only one is there, 0 by default: no wait) and
runs requests of one schema as one table through the pipeline, then splits the output by request: every request
gets its own answer and its own log record, as if it had run alone. Under load, requests arriving while a batch
runs make the next batch, so the model, the pipeline's Python around it and the answers' publishing are paid per
batch, not per request; an idle replica answers a lone request at once.

A request that cannot share a call runs alone, as before: a table sent by reference, challengers asked inline,
or a pipeline that is not served in this process alone (Python steps and BYOP models in sandboxed workers,
A/B splits, which choose per request, and shadow deployments). When a shared call fails (one request's bad tensor
fails the whole call), each of its requests runs alone, so the error reaches only the request that caused it.
Each request is answered on its own: one whose answer cannot be made or sent (object storage refusing an answer
above the bus limit, a publish failing) gets its own error answer, and the others of its batch are answered as usual.

Configured per deployment in `engine_config`: `batch_max_delay_ms` (0 by default; a negative value turns batching
off) and `batch_max_rows` (4096: a larger call is split).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa

from services.engine.fast_lane import FastLane, meta_header, meta_prefix
from services.engine.handlers import Answer, runs_inline
from shared.arrow_codec import from_ipc, schema_message, write_stream
from shared.errors import RailyardError, Unavailable
from shared.raw_bus import error_headers
from shared.table_transport import INFERENCE_PREFIX, META_HEADER, SHADOWS_HEADER, TABLE_REF, above_bus_limit, put_table

log = logging.getLogger("railyard.engine")
DEFAULT_MAX_ROWS = 4096


def batching_config(engine_config: dict[str, Any]) -> tuple[float, int] | None:
    """(max delay in seconds, max rows) from a deployment's engine_config, or None when batching is off."""
    delay = float(engine_config.get("batch_max_delay_ms", 0))
    if delay < 0:
        return None
    return delay / 1000, int(engine_config.get("batch_max_rows", DEFAULT_MAX_ROWS))


def can_batch(pipeline: Any) -> bool:
    """Every step is a plain ModelInference served in this process (see the module docstring)."""
    return not pipeline.workers and all(step.kind == "ModelInference" and len(step.runtimes) == 1
                                        for step in pipeline.steps)


def failure_error(exc: Exception) -> RailyardError:
    """What a request whose answering raised is answered with (the batcher's and the replica's lone path alike): the
    RailyardError it raised, else 500 `inference_failed` naming only the exception's type."""
    if isinstance(exc, RailyardError):
        return exc
    return RailyardError(f"the engine could not answer: {type(exc).__name__}", code="inference_failed")


class RequestBatcher:
    """Queues a replica's requests and runs them in shared calls.

    `run_alone(msg, received_ns, at_ms)` runs one request the ordinary way; `deliver(msg, answer, received_ns,
    at_ms)` answers a request and logs its record; `repeat(msg)` returns True when the message repeats a request
    and has been taken care of (the replica answers it from the first attempt)."""

    def __init__(self, pipeline: Any, delay: float, max_rows: int, max_payload: int,
                 run_alone: Callable[[Any, int, int], Awaitable[None]],
                 deliver: Callable[[Any, Answer, int, int], Awaitable[None]],
                 repeat: Callable[[Any], bool]) -> None:
        self.pipeline = pipeline
        self.delay = delay
        self.max_rows = max_rows
        self.max_payload = max_payload
        self.run_alone = run_alone
        self.deliver = deliver
        self.repeat = repeat
        self.pending: list[tuple[Any, int, int]] = []
        self.checked: list[tuple[Any, int, int]] = []  # queued by `submit` after the lane refused them (see there)
        self.wake = asyncio.Event()
        self.batches = 0
        self.batched_requests = 0
        self.busy = False
        self.subscription: Any = None  # the bus subscription feeding `submit` (its pending_msgs), set once subscribed
        self.lane: FastLane | None = None  # a one-ONNX-model pipeline's fast lane (fast_lane.py), set by the replica
        self._meta: dict[tuple[str, Any], str] = {}  # (last model, version) -> the meta header's constant start

    async def submit(self, msg: Any) -> None:
        """The subscription's callback: queue and return, so the bus client hands over the next message; a request
        the fast lane answers, with nothing queued or running, none behind it in the subscription and no configured
        delay, is answered at once (the queue's wake-up of the batch task is a turn of the event loop and its
        tasks' machinery per request)."""
        received, at_ms = time.perf_counter_ns(), time.time_ns() // 1_000_000
        subscription = self.subscription
        if self.lane is not None and subscription is not None and not (self.pending or self.busy or self.delay) \
                and not subscription.pending_msgs:
            # only the fast lane's answer runs here: nothing awaits in it (the answer's publish only queues its
            # bytes). Anything else (a table in object storage, a thread, a sandboxed worker) would hold the
            # subscription meanwhile, and the requests behind it would be stamped `received` only when handed over,
            # hiding their wait from the SLOW clock that keeps a re-sent request from running twice.
            self.busy = True
            try:
                if await self.run_lone(msg, received, at_ms):
                    return
            except Exception as exc:
                await self.answer_failed(msg, received, at_ms, exc)
                return
            finally:
                self.busy = False
            self.checked.append((msg, received, at_ms))  # looked up as a repeat already: run_queued(checked=True)
            self.wake.set()
            return
        self.pending.append((msg, received, at_ms))
        self.wake.set()

    async def run_lone(self, msg: Any, received: int, at_ms: int) -> bool:
        """One request with nothing else queued, answered by the fast lane: True when it was (or was a repeat),
        False when the lane cannot answer it (the caller queues it, already looked up as a repeat)."""
        if self.repeat(msg):
            return True
        headers = msg.headers or {}
        if not (headers.get(TABLE_REF) or headers.get(SHADOWS_HEADER)):
            answer = self.lane.answer(msg.data, received)  # type: ignore[union-attr]
            if answer is not None:
                await self.deliver(msg, answer, received, at_ms)
                return True
        return False

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            if self.delay and len(self.pending) == 1:
                await asyncio.sleep(self.delay)
            self.wake.clear()
            checked, self.checked = self.checked, []
            queued, self.pending = self.pending, []
            self.busy = True
            try:
                if checked:
                    await self.run_queued(checked, checked=True)
                await self.run_queued(queued)
            except Exception:
                log.exception("a batch of %d requests failed", len(queued))
            finally:
                self.busy = False

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until every queued request has been answered (a stopping replica, its subscription drained)."""
        deadline = time.monotonic() + timeout
        while (self.pending or self.checked or self.busy) and time.monotonic() < deadline:  # noqa: ASYNC110 - once, at stop
            await asyncio.sleep(0.01)

    async def run_queued(self, queued: list[tuple[Any, int, int]], checked: bool = False) -> None:
        """Run queued requests; `checked`: they were already looked up as repeats (`repeat` registers a request
        as running: asked twice, it would take the request for its own repeat)."""
        groups: dict[pa.Schema, list[tuple[Any, int, int, pa.Table]]] = {}
        alone: list[tuple[Any, int, int]] = []
        for item in queued:
            msg = item[0]
            if not checked and self.repeat(msg):
                continue
            headers = msg.headers or {}
            if headers.get(TABLE_REF) or headers.get(SHADOWS_HEADER):
                alone.append(item)
                continue
            try:
                table = self.pipeline.narrow(from_ipc(msg.data))
            except Exception:  # a bad body (RailyardError) or anything else: not shared
                alone.append(item)  # answered with its error by the ordinary path
                continue
            groups.setdefault(table.schema, []).append((*item, table))
        chunks: list[list[tuple[Any, int, int, pa.Table]]] = []
        for group in groups.values():
            chunk: list = []
            rows = 0
            for entry in group:
                if chunk and rows + entry[3].num_rows > self.max_rows:
                    chunks.append(chunk)
                    chunk, rows = [], 0
                chunk.append(entry)
                rows += entry[3].num_rows
            chunks.append(chunk)
        # one failing call (a closed connection, a bug) must not leave the others unanswered
        work = [(self.run_shared, (chunk,)) for chunk in chunks] + [(self.alone, item) for item in alone]
        for call, args in work:
            try:
                await call(*args)
            except Exception:
                log.exception("requests of %s failed in the engine", self.pipeline.spec["deployment"].get("name"))

    async def run_shared(self, chunk: list[tuple[Any, int, int, pa.Table]]) -> None:
        """Requests (one alone included: its table is decoded already) as one call; answers split per request."""
        tables = [entry[3] for entry in chunk]
        combined = pa.concat_tables(tables)
        pipeline = self.pipeline
        try:
            output, elapsed, last, _ = pipeline.run(combined) if runs_inline(pipeline, combined.num_rows) \
                else await asyncio.to_thread(pipeline.run, combined)
        except Exception:  # someone's bad input (or a model failure): each request alone gets its own answer
            for msg, received, at_ms, _ in chunk:
                await self.alone(msg, received, at_ms)
            return
        if len(chunk) > 1:
            self.batches += 1
            self.batched_requests += len(chunk)
        last_model = json.dumps({"model_name": last["name"], "model_sha": last["sha"]}) if last else ""
        version = pipeline.spec["deployment"]["pipeline_version"]
        prefix = self._meta.get((last_model, version))
        if prefix is None:
            if len(self._meta) > 64:
                self._meta.clear()
            prefix = self._meta[(last_model, version)] = meta_prefix(last_model, version)
        step_ns = elapsed[0] if elapsed else 0
        schema_bytes = schema_message(output.schema)  # once for every part
        offset = 0
        for msg, received, at_ms, table in chunk:
            part = output.slice(offset, table.num_rows)
            offset += table.num_rows
            try:  # one request's failure is its own: the others of the batch are answered all the same
                timings = (step_ns, time.perf_counter_ns() - received)
                body = write_stream(part, schema_bytes)
                headers = {META_HEADER: meta_header(prefix, timings)}
                if above_bus_limit(body, self.max_payload):  # answer by reference
                    try:
                        headers[TABLE_REF], body = await put_table(pipeline.store, INFERENCE_PREFIX, body), b""
                    except Exception as exc:
                        raise Unavailable("the answer is too large for the bus and object storage could not take "
                                          "it; try again, or ask for fewer rows") from exc
                await self.deliver(msg, Answer(body, headers, table, part, last_model, timings), received, at_ms)
            except Exception as exc:
                await self.answer_failed(msg, received, at_ms, exc)

    async def alone(self, msg: Any, received: int, at_ms: int) -> None:
        """`run_alone`, and an error answer when it raises (object storage or a publish failing)."""
        try:
            await self.run_alone(msg, received, at_ms)
        except Exception as exc:
            await self.answer_failed(msg, received, at_ms, exc)

    async def answer_failed(self, msg: Any, received: int, at_ms: int, exc: Exception) -> None:
        """A request whose answering raised gets a typed error answer at once (nothing logged for it: an answer
        without output has no record). Unanswered, it would wait for the gateway's re-send, and the replica would
        hold that re-send for an answer of the first attempt that never comes. Logged once, with the deployment."""
        error = failure_error(exc)
        try:
            await self.deliver(msg, Answer(b"", error_headers(error)), received, at_ms)
            outcome = f"answered {error.code} instead"
        except Exception as again:
            outcome = f"its error answer failed too: {type(again).__name__}: {again}"
        log.error("a request of %s could not be answered (%s)", self.pipeline.spec["deployment"].get("name"),
                  outcome, exc_info=exc)
