"""A lone small request to a one-model ONNX pipeline, answered with numpy alone.

At one connection a replica answers one request at a time, and its CPU per request (~700 us, issue 20) was mostly
the general path's fixed costs, each paid per request: a stream reader, the float64 -> float32 cast through
Arrow's compute kernels, the tensor checks' type walk, a stream writer, the meta header's `json.dumps`, tables
built for the log record. The lane does the same work for the common request with the per-shape decisions taken
once, the first time a request of that shape comes:
- the request: a stream's schema message and its record batch's metadata say where every buffer lies in the body
  (Arrow's IPC format), so the same bytes ahead of the body (`head`) mean the same layout. The first request of a
  head is read by Arrow, and the plan checks it as the model would (which column feeds which input, its element
  type once narrowed, its shape, no nulls) and where its values lie in the message; later ones are read with
  `np.frombuffer` at those offsets. Narrowing (runtimes.narrowing) is numpy's cast, the same rounding as Arrow's.
- the answer: a stream of one batch of the output tensors is the schema message and the batch's metadata, both
  fixed for a given output shape, then the tensors' bytes (each padded to 8 bytes) and the end marker. The first
  answer of a shape is written by Arrow, and the prefix is kept only if Arrow's bytes are exactly prefix + the
  tensors' bytes; later answers join the prefix and the tensors' bytes.
- the record for the log: an `ArrayRecord` (shared/logrecords.py) holding the numpy arrays; the log batch builds
  the columns of a run of them at once, the tables Arrow would have given.

It answers only what it can answer exactly as the general path would: one record batch without metadata or
dictionaries, the model's columns and no other, numeric tensors (one level of fixed-size lists, or scalars) of
the model's element type once narrowed, with the model's shape, no nulls, every value finite (and in the narrower
type's range), at most INLINE_ROWS rows, a head (schema and batch metadata, kept as a key) of at most
CACHED_SCHEMA_MAX_BYTES, numeric outputs, an answer under the bus limit. Anything else, and any failure, returns
None: the general path (batching.py, handlers.py) then runs the request and gives its answer or its error. The
answer body, the meta header's bytes and the record are the general path's (tests/unit/test_engine_fast_lane.py
compares them)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from services.engine.handlers import INLINE_NS, INLINE_ROWS, Answer, runs_inline
from services.engine.runtimes import OnnxRuntime
from shared.arrow_codec import (
    CACHED_SCHEMA_MAX_BYTES,
    CONTINUATION,
    batch_stream,
    narrow,
    narrows,
    read_batch,
    schema_message,
    tensor_array,
)
from shared.arrow_codec import IPC_EOS as END_OF_STREAM
from shared.logrecords import ArrayRecord, RecordLayout
from shared.table_transport import META_HEADER, above_bus_limit

MAX_SHAPES = 64  # request heads, plans and answer shapes remembered (a replica sees a handful)
NUMERIC_OUTPUTS = frozenset(f"tensor({kind})" for kind in (
    "float", "double", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"))


@dataclass(frozen=True)
class _Column:
    index: int  # in the request's batch
    name: str
    size: int | None  # the fixed-size list's length, None for a scalar column
    cast: Any  # the numpy type it is narrowed to, or None
    limit: float  # the largest magnitude that stays finite once narrowed


class _Plan:
    """What a request schema's columns become: model feeds, and the narrowed table's schema (the log's)."""

    def __init__(self, columns: tuple[_Column, ...], log_schema: pa.Schema) -> None:
        self.columns = columns  # in the request's column order
        self.log_schema = log_schema
        self.layouts: dict[tuple, RecordLayout] = {}  # output tensors' dtypes and shapes -> the records' layout


@dataclass(frozen=True)
class _Head:
    """Where a request's values lie, for every request with the same bytes ahead of the body."""

    plan: _Plan
    rows: int
    length: int  # the whole message's bytes
    values: tuple[tuple[int, int, np.dtype], ...]  # per plan column: offset in the message, count, dtype


@dataclass
class LaneAnswer(Answer):
    """An Answer of the fast lane: its record is made from the numpy arrays (`record`); `log_bytes` is the record's
    size in the log buffer (the bytes of its input and output columns, as `Table.nbytes` counts them)."""

    layout: RecordLayout | None = None
    input_values: list[np.ndarray] = field(default_factory=list)
    output_values: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    log_bytes: int = 0

    def record(self, at_ms: int, request_id: str | None) -> ArrayRecord:
        return ArrayRecord(at_ms, self.layout, self.input_values, self.output_values, self.rows, self.last_model,
                           self.elapsed, request_id)


def meta_prefix(last_model: str, version: Any) -> str:
    """The meta header up to its timings: `json.dumps` of {last_model, pipeline_version, elapsed} writes these
    bytes, then the two numbers and `]}`."""
    return f'{{"last_model": {json.dumps(last_model)}, "pipeline_version": {json.dumps(version)}, "elapsed": ['


def meta_header(prefix: str, timings: tuple[int, int]) -> str:
    return f"{prefix}{timings[0]}, {timings[1]}]}}"


def _head_length(data: bytes) -> int:
    """Bytes ahead of the body of a stream of a schema and one batch (the body then ends 8 bytes before the end,
    at the end marker), or -1."""
    if len(data) < 24 or data[:4] != CONTINUATION or data[-8:] != END_OF_STREAM:
        return -1
    end = 8 + int.from_bytes(data[4:8], "little", signed=True)
    if end <= 8 or end + 8 > len(data) or data[end:end + 4] != CONTINUATION:
        return -1
    head = end + 8 + int.from_bytes(data[end + 4:end + 8], "little", signed=True)
    return head if end + 8 < head <= len(data) - 8 else -1


def _padded(values: np.ndarray) -> bytes:
    raw = values.tobytes()
    return raw + bytes(-len(raw) % 8)


def _remember(cache: dict, key: Any, value: Any) -> Any:
    if len(cache) >= MAX_SHAPES:
        cache.clear()
    cache[key] = value
    return value


class FastLane:
    """Answers a lone request of a one-step, one-ONNX-model pipeline, or returns None (see the module docstring)."""

    def __init__(self, runtime: OnnxRuntime, narrowing: dict[str, pa.DataType], model: dict[str, Any],
                 version: Any, max_payload: int, pipeline: Any = None) -> None:
        self.runtime = runtime
        # the replica: the lane answers only what handlers.runs_inline would run on the loop, and a call of its that
        # held the loop INLINE_NS or more tells it (Replica.held_loop). None: every request it can answer (tests)
        self.pipeline = pipeline
        self.narrowing = narrowing
        self.last_model = json.dumps({"model_name": model["name"], "model_sha": model["sha"]})
        self.prefix = meta_prefix(self.last_model, version)
        self.max_payload = max_payload
        self.plans: dict[bytes, _Plan | None] = {}  # schema message -> plan
        self.heads: dict[bytes, _Head | None] = {}  # bytes ahead of the body -> where the values are
        self.answers: dict[tuple, bytes | None] = {}  # output tensors' dtypes and shapes -> the answer's prefix
        self.answered = 0  # requests the lane answered (the rest took the general path)
        self.refused = False  # the model gave a non-numeric output once: it will again, so the lane stays out

    @staticmethod
    def applies(pipeline: Any) -> bool:
        """A pipeline of one ModelInference step of one ONNX model with numeric tensor outputs only, served in this
        process. A bool, string, sequence or map output (a ZipMap classifier's probabilities) has no fixed layout in
        the answer: the lane could only run the model and give up, and the general path would run it again."""
        if pipeline.workers or len(pipeline.steps) != 1 or pipeline.steps[0].kind != "ModelInference" \
                or len(pipeline.steps[0].runtimes) != 1 or not isinstance(pipeline.steps[0].runtimes[0], OnnxRuntime):
            return False
        return all(o.type in NUMERIC_OUTPUTS for o in pipeline.steps[0].runtimes[0].session.get_outputs())

    def _plan(self, key: bytes, schema: pa.Schema) -> _Plan | None:
        if key in self.plans:
            return self.plans[key]
        return _remember(self.plans, key, self._make_plan(schema))

    def _make_plan(self, schema: pa.Schema) -> _Plan | None:
        names = schema.names
        inputs = self.runtime.inputs
        if schema.metadata or len(set(names)) != len(names) or set(names) != {name for name, _, _ in inputs} \
                or len(names) != len(inputs) or any(f.metadata for f in schema):
            return None
        columns = []
        for name, dims, dtype in inputs:
            if dtype is None or dtype is np.bool_:
                return None
            index = schema.get_field_index(name)
            kind = schema.field(index).type
            size = None
            if pa.types.is_fixed_size_list(kind):
                size, kind = kind.list_size, kind.value_type
                if len(dims) != 2 or (isinstance(dims[1], int) and dims[1] > 0 and dims[1] != size):
                    return None
            elif len(dims) != 1:
                return None
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                return None
            cast = None
            if name in self.narrowing and narrows(kind, self.narrowing[name]):
                cast = self.narrowing[name].to_pandas_dtype()  # float64, integers as wide: as arrow_codec.narrow
            if np.dtype(cast if cast is not None else kind.to_pandas_dtype()) != np.dtype(dtype):
                return None  # the model casts it (uint8 -> float32, float32 -> float64): the general path
            columns.append(_Column(index, name, size, cast, float(np.finfo(cast).max) if cast is not None else np.inf))
        return _Plan(tuple(sorted(columns, key=lambda c: c.index)), narrow(schema.empty_table(), self.narrowing).schema)

    def _learn(self, data: bytes, head: bytes) -> _Head | None:
        """The first request of a head: read by Arrow, checked, and where its values lie kept for the next ones."""
        read = read_batch(data)
        if read is None:
            return None  # not remembered: a malformed body says nothing of the next message
        schema_key, batch = read
        plan = self._plan(schema_key, batch.schema)
        rows = batch.num_rows
        if plan is None or rows == 0 or rows > INLINE_ROWS:
            return _remember(self.heads, head, None)
        start = pa.py_buffer(data).address
        found = []
        for column in plan.columns:
            array = batch.column(column.index)
            values = array.values if column.size is not None else array
            count = rows * (column.size or 1)
            buffers = values.buffers()
            if array.null_count or values.null_count or array.offset or values.offset or len(values) != count \
                    or buffers[0] is not None or buffers[1] is None:
                return _remember(self.heads, head, None)
            offset = buffers[1].address - start  # a buffer outside the message (compressed, swapped): no
            dtype = np.dtype(values.type.to_pandas_dtype())
            if offset < len(head) or offset + count * dtype.itemsize > len(data) - 8 or not np.array_equal(
                    np.frombuffer(data, dtype, count, offset).view(np.uint8), values.to_numpy().view(np.uint8)):
                return _remember(self.heads, head, None)
            found.append((offset, count, dtype))
        return _remember(self.heads, head, _Head(plan, rows, len(data), tuple(found)))

    def answer(self, data: bytes, received: int) -> LaneAnswer | None:
        """The request's answer and what its record needs, or None when the general path must run it."""
        if self.refused:
            return None
        try:
            length = _head_length(data)
            if length < 0 or length > CACHED_SCHEMA_MAX_BYTES:
                return None  # a head of megabytes (the client's names, metadata) is not kept: the general path
            head = data[:length]
            known = self.heads.get(head, False)
            if known is False:
                known = self._learn(data, head)
            if known is None or known.length != len(data):
                return None
            if self.pipeline is not None and not runs_inline(self.pipeline, known.rows):
                return None  # a slow model, or one not measured yet: the general path runs it in a thread
            return self._answer(known, data, received)
        except Exception:  # a model failing, anything unforeseen: the general path runs it and says what failed
            return None

    def _answer(self, head: _Head, data: bytes, received: int) -> LaneAnswer | None:
        started = time.perf_counter_ns()
        rows = head.rows
        feeds = {}
        inputs = []
        for column, (offset, count, dtype) in zip(head.plan.columns, head.values, strict=True):
            flat = np.frombuffer(data, dtype, count, offset)
            if column.cast is not None:
                if not (np.abs(flat) <= column.limit).all():  # NaN, inf, beyond float32: the general path's error
                    return None
                flat = flat.astype(column.cast)
            elif flat.dtype.kind == "f" and not np.isfinite(flat).all():
                return None
            feeds[column.name] = flat.reshape(rows, column.size) if column.size is not None else flat
            inputs.append(flat)
        runtime = self.runtime
        outputs = [np.asarray(o) for o in runtime.session.run(runtime.output_names, feeds)]
        if any(o.dtype.kind not in "iuf" for o in outputs):
            self.refused = True  # strings, objects (no fixed layout): so for every request; the general path alone
            return None
        if any(o.ndim == 0 or len(o) != rows for o in outputs):
            return None  # the model's wrong row count: the general path gives its error
        step_ns = time.perf_counter_ns() - started
        if step_ns >= INLINE_NS and self.pipeline is not None:  # the loop waited that long: the next run, the thread
            # (and a call of HELD_NS or more is measured again by its CPU, in a thread: Replica.held_loop)
            self.pipeline.held_loop(step_ns, rows, partial(runtime.session.run, runtime.output_names, feeds))
        shape = tuple((o.dtype.str, o.shape) for o in outputs)
        prefix = self.answers.get(shape, False)
        if prefix is False:
            prefix = self._learn_answer(shape, outputs)
        if prefix is None:
            return None
        signature = tuple((kind, dims[1:]) for kind, dims in shape)  # the records' layout: not the row count
        layout = head.plan.layouts.get(signature)
        if layout is None:
            layout = self._record_layout(head.plan, signature, outputs)
        timings = (step_ns, time.perf_counter_ns() - received)
        body = b"".join([prefix, *(_padded(o) for o in outputs), END_OF_STREAM])
        if above_bus_limit(body, self.max_payload):
            return None
        self.answered += 1
        return LaneAnswer(body, {META_HEADER: meta_header(self.prefix, timings)}, last_model=self.last_model,
                          elapsed=timings, layout=layout, input_values=inputs, output_values=outputs, rows=rows,
                          log_bytes=sum(a.nbytes for a in inputs) + sum(o.nbytes for o in outputs))

    def _arrow_answer(self, outputs: list[np.ndarray]) -> pa.RecordBatch:
        """The answer's batch as the general path builds it (OnnxRuntime.predict)."""
        return pa.RecordBatch.from_arrays([tensor_array(o) if o.ndim > 1 else pa.array(o) for o in outputs],
                                          names=self.runtime.output_names)

    def _learn_answer(self, shape: tuple, outputs: list[np.ndarray]) -> bytes | None:
        """The first answer of an output shape: written by Arrow; its prefix kept when the rest is the tensors'
        bytes, padded, and the end marker."""
        batch = self._arrow_answer(outputs)
        schema_bytes = schema_message(batch.schema)
        prefix = None
        if schema_bytes is not None:
            written = batch_stream(batch, schema_bytes)
            tail = b"".join([*(_padded(o) for o in outputs), END_OF_STREAM])
            if written.endswith(tail):
                prefix = written[:len(written) - len(tail)]
        return _remember(self.answers, shape, prefix)

    def _record_layout(self, plan: _Plan, signature: tuple, outputs: list[np.ndarray]) -> RecordLayout:
        layout = RecordLayout(plan.log_schema, tuple(c.size for c in plan.columns), self._arrow_answer(outputs).schema)
        return _remember(plan.layouts, signature, layout)
