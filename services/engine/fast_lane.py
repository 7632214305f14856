"""A lone small request to a one-model ONNX pipeline, answered with the fewest Arrow calls.

At one connection a replica answers one request at a time, and its CPU per request (~700 us, issue 20) was mostly
the general path's fixed costs, each paid per request: a stream reader, the float64 -> float32 cast through
Arrow's compute kernels, the tensor checks' type walk, a stream writer, the meta header's `json.dumps`. The lane
does the same work for the common request with numpy on the flat values and the per-schema decisions taken once:
the request's schema message (`arrow_stream`) selects a plan made the first time that schema came: which column
feeds which model input, whether it is narrowed (runtimes.narrowing, the same rounding as Arrow's cast) and the
narrowed table's schema for the log.

It answers only what it can answer exactly as the general path would: one record batch without metadata or
dictionaries, the model's columns and no other, numeric tensors (one level of fixed-size lists, or scalars) of
the model's element type once narrowed, with the model's shape, no nulls, every value finite (and in the narrower
type's range), at most INLINE_ROWS rows, an answer under the bus limit. Anything else, and any failure, returns
None: the general path (batching.py, handlers.py) then runs the request and gives its answer or its error. The
answer body, the meta header's bytes and the record for the log are the general path's
(tests/unit/test_engine_fast_lane.py compares them)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from services.engine.arrow_stream import batch_stream, read_batch, schema_message
from services.engine.handlers import INLINE_ROWS, Answer
from services.engine.runtimes import OnnxRuntime
from shared.arrow_codec import narrow, tensor_array
from shared.table_transport import META_HEADER, above_bus_limit

MAX_PLANS = 64


@dataclass
class LaneAnswer(Answer):
    """An Answer whose record's size in the log buffer is known already (`log_bytes`: the bytes of its input and
    output columns, as `Table.nbytes` counts them; 0 when not known)."""

    log_bytes: int = 0


@dataclass(frozen=True)
class _Column:
    index: int  # in the request's batch
    name: str
    size: int | None  # the fixed-size list's length, None for a scalar column
    cast: Any  # the numpy type it is narrowed to, or None
    limit: float  # the largest magnitude that stays finite once narrowed
    log_type: pa.DataType  # the column's type in the narrowed table (what the log holds)


@dataclass(frozen=True)
class _Plan:
    columns: tuple[_Column, ...]
    log_schema: pa.Schema


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def meta_prefix(last_model: str, version: Any) -> str:
    """The meta header up to its timings: `json.dumps` of {last_model, pipeline_version, elapsed} writes these
    bytes, then the two numbers and `]}`."""
    return f'{{"last_model": {json.dumps(last_model)}, "pipeline_version": {json.dumps(version)}, "elapsed": ['


def meta_header(prefix: str, timings: tuple[int, int]) -> str:
    return f"{prefix}{timings[0]}, {timings[1]}]}}"


class FastLane:
    """Answers a lone request of a one-step, one-ONNX-model pipeline, or returns None (see the module docstring)."""

    def __init__(self, runtime: OnnxRuntime, narrowing: dict[str, pa.DataType], model: dict[str, Any],
                 version: Any, max_payload: int) -> None:
        self.runtime = runtime
        self.narrowing = narrowing
        self.last_model = json.dumps({"model_name": model["name"], "model_sha": model["sha"]})
        self.prefix = meta_prefix(self.last_model, version)
        self.max_payload = max_payload
        self.plans: dict[bytes, _Plan | None] = {}
        self.outputs: dict[tuple, bytes | None] = {}  # output tensors' dtypes and shapes -> schema message
        self.answered = 0  # requests the lane answered (the rest took the general path)

    @staticmethod
    def applies(pipeline: Any) -> bool:
        """A pipeline of one ModelInference step of one ONNX model, served in this process."""
        return not pipeline.workers and len(pipeline.steps) == 1 and pipeline.steps[0].kind == "ModelInference" \
            and len(pipeline.steps[0].runtimes) == 1 and isinstance(pipeline.steps[0].runtimes[0], OnnxRuntime)

    def _plan(self, key: bytes, schema: pa.Schema) -> _Plan | None:
        if key in self.plans:
            return self.plans[key]
        plan = self._make_plan(schema)
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()
        self.plans[key] = plan
        return plan

    def _make_plan(self, schema: pa.Schema) -> _Plan | None:
        names = schema.names
        inputs = self.runtime.inputs
        if schema.metadata or len(set(names)) != len(names) or set(names) != {name for name, _, _ in inputs} \
                or len(names) != len(inputs) or any(field.metadata for field in schema):
            return None
        log_schema = narrow(schema.empty_table(), self.narrowing).schema
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
            if not _numeric(kind):
                return None
            cast = None
            if pa.types.is_float64(kind) and name in self.narrowing:
                cast = self.narrowing[name].to_pandas_dtype()
            element = np.dtype(cast if cast is not None else kind.to_pandas_dtype())
            if element != np.dtype(dtype):
                return None  # the model casts it (int -> float, float32 -> float64): the general path
            limit = float(np.finfo(cast).max) if cast is not None else np.inf
            columns.append(_Column(index, name, size, cast, limit, log_schema.field(index).type))
        return _Plan(tuple(columns), log_schema)

    def answer(self, data: bytes, received: int) -> Answer | None:
        """The request's answer and record, or None when the general path must run it."""
        read = read_batch(data)
        if read is None:
            return None
        key, batch = read
        plan = self._plan(key, batch.schema)
        rows = batch.num_rows
        if plan is None or rows == 0 or rows > INLINE_ROWS:
            return None
        try:
            return self._answer(plan, batch, rows, received)
        except Exception:  # a model failing, anything unforeseen: the general path runs it and says what failed
            return None

    def _answer(self, plan: _Plan, batch: pa.RecordBatch, rows: int, received: int) -> Answer | None:
        started = time.perf_counter_ns()
        feeds = {}
        logged = []
        size = 0  # the record's bytes: numbers without nulls take what their numpy arrays take
        for column in plan.columns:
            array = batch.column(column.index)
            if array.null_count:
                return None
            if column.size is not None:
                values = array.values
                if array.offset or values.offset or values.null_count or len(values) != rows * column.size:
                    return None
            else:
                values = array
            flat = values.to_numpy()
            if column.cast is not None:
                if not (np.abs(flat) <= column.limit).all():  # NaN, inf, beyond float32: the general path's error
                    return None
                flat = flat.astype(column.cast)
                narrowed = pa.array(flat)
                array = pa.FixedSizeListArray.from_arrays(narrowed, type=column.log_type) \
                    if column.size is not None else narrowed
            elif flat.dtype.kind == "f" and not np.isfinite(flat).all():
                return None
            feeds[column.name] = flat.reshape(rows, column.size) if column.size is not None else flat
            logged.append(array)
            size += flat.nbytes
        runtime = self.runtime
        outputs = [np.asarray(o) for o in runtime.session.run(runtime.output_names, feeds)]
        if any(o.ndim == 0 or len(o) != rows for o in outputs):
            return None
        arrays = [tensor_array(o) if o.ndim > 1 else pa.array(o) for o in outputs]
        answer = pa.RecordBatch.from_arrays(arrays, names=runtime.output_names)
        timings = (time.perf_counter_ns() - started, 0)
        shape = tuple((o.dtype.str, o.shape[1:]) for o in outputs)
        schema_bytes = self.outputs.get(shape, False)
        if schema_bytes is False:
            if len(self.outputs) >= MAX_PLANS:
                self.outputs.clear()
            schema_bytes = self.outputs[shape] = schema_message(answer.schema)
        if schema_bytes is None:
            return None
        output = pa.Table.from_batches([answer])
        timings = (timings[0], time.perf_counter_ns() - received)
        body = batch_stream(answer, schema_bytes)
        if above_bus_limit(body, self.max_payload):
            return None
        self.answered += 1
        numeric = all(o.dtype.kind in "iuf" for o in outputs)
        return LaneAnswer(body, {META_HEADER: meta_header(self.prefix, timings)},
                          pa.Table.from_arrays(logged, schema=plan.log_schema), output, self.last_model, timings,
                          log_bytes=size + sum(o.nbytes for o in outputs) if numeric else 0)
