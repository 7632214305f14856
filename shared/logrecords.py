"""Inference log records: one layout from the engine to the log store to `get_logs`.

A record table has one row per inferred row and flat, dotted column names:
`time` (int64 ms since the epoch), `in.<input>`, `out.<output>` (A/B splits add `out._model_split`),
`out_<challenger>.<output>` for shadow challengers, and `metadata.last_model`, `metadata.pipeline_version`,
`metadata.elapsed` (ns per step and in total) and `metadata.dropped` (columns left out for size).

The engine gathers the records of many requests into one table per schema and publishes it as one Arrow IPC
message on `logs.inference.<deployment>`. `Railyard-Batch-Id` is the batch's id, also sent as `Nats-Msg-Id`
(JetStream refuses a re-published copy inside its two-minute window; the log store refuses any copy whose id it
has committed), and `Railyard-Log` says whose records they are.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.lean_imports import lazy_module

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    import shared.arrow_codec as arrow_codec
else:  # imported by a process's first log record (the log store's idle start does without)
    np = lazy_module("numpy")
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    arrow_codec = lazy_module("shared.arrow_codec")

LOG_HEADER = "Railyard-Log"
REQUEST_ID = "Railyard-Request-Id"  # the gateway's id of one inference, the same on its re-sent attempt
ATTEMPT = "Railyard-Attempt"  # "2" on the gateway's re-sent attempt
TIME_HEADER = "Railyard-Time"
"""On an engine's inference answer: its log rows' `time` (ms since the epoch, when the replica took the request), which
the gateway's answer also says, so an answer and its logged rows carry one time (the gateway stamped its own before
session 35: up to a ms apart). An answer without it (an older engine) gets the gateway's own."""
REQUESTS_HEADER = "Railyard-Requests"  # on a log batch: {request id: [first row, rows]} of records to store once
MSG_ID = "Nats-Msg-Id"
BATCH_ID = "Railyard-Batch-Id"
TIME = "time"
META_LAST_MODEL = "metadata.last_model"
META_VERSION = "metadata.pipeline_version"
META_ELAPSED = "metadata.elapsed"
META_DROPPED = "metadata.dropped"
METADATA_COLUMNS = (META_LAST_MODEL, META_VERSION, META_ELAPSED, META_DROPPED)
DROPPED_WARNING = ("The inference log is above the allowable limit and the following columns may have been "
                   "suppressed for various rows in the logs: {columns}. To review the dropped columns for an "
                   "individual inferences suppressed data, include dataset=[\"metadata\"] in the log request.")


def log_subject(deployment: str) -> str:
    return f"logs.inference.{deployment}"


@dataclass
class InferenceRecord:
    """What one request leaves for the log: its rows in and out, challengers' outputs, and who answered."""

    at_ms: int
    inputs: pa.Table
    outputs: pa.Table
    last_model: str
    elapsed: tuple[int, int]
    shadows: dict[str, pa.Table] = field(default_factory=dict)
    request_id: str | None = None  # set when the log store must store this record once (a slow or re-sent request)
    held_bytes: int = 0  # what it counts for in the engine's log buffer

    @property
    def rows(self) -> int:
        return self.inputs.num_rows

    def key(self) -> tuple:
        return (self.inputs.schema, self.outputs.schema,
                tuple((name, table.schema) for name, table in self.shadows.items()))


class RecordKey(tuple):
    """A record's key (`InferenceRecord.key`) whose hash is computed once: hashing a schema walks its fields (~4 us
    each, twice per record per flush). Equal to, and hashing as, the plain tuple of the same schemas."""

    def __hash__(self) -> int:
        known = self.__dict__.get("hash")
        if known is None:
            known = self.__dict__["hash"] = tuple.__hash__(self)
        return known


class RecordLayout:
    """The schemas of records made from numpy arrays (`ArrayRecord`): the inputs' (each column a fixed-size list of
    `input_sizes[i]` values, or a scalar where it is None) and the outputs' (tensors as `arrow_codec.tensor_array`
    makes them). One layout object is shared by all the records of one request shape."""

    def __init__(self, inputs: pa.Schema, input_sizes: tuple[int | None, ...], outputs: pa.Schema) -> None:
        self.inputs = inputs
        self.input_sizes = input_sizes
        self.outputs = outputs
        self.key = RecordKey((inputs, outputs, ()))


def _numbers(values: np.ndarray) -> pa.Array:
    """`pa.array(values)` for a 1-D numpy array (over the same memory for numbers, without pa.array's checks)."""
    return arrow_codec.flat_array(values)


def _input_column(values: np.ndarray, size: int | None, kind: pa.DataType) -> pa.Array:
    flat = _numbers(values)
    return flat if size is None else pa.FixedSizeListArray.from_arrays(flat, type=kind)


def _output_column(values: np.ndarray) -> pa.Array:
    return arrow_codec.tensor_array(values) if values.ndim > 1 else _numbers(values)


class ArrayRecord(InferenceRecord):
    """A record whose inputs and outputs are numpy arrays (flat values per input column, the model's output tensors)
    until a table is asked for: the engine's fast lane makes one per request, and the log batch builds the columns
    of a run of them from their arrays at once (`build_batch`) instead of a table per request. `inputs` and
    `outputs` are the tables such a record stands for (built on first use); setting one (a log policy's
    selection) makes it an ordinary record."""

    def __init__(self, at_ms: int, layout: RecordLayout, input_values: list[np.ndarray],
                 output_values: list[np.ndarray], rows: int, last_model: str, elapsed: tuple[int, int],
                 request_id: str | None = None) -> None:
        self.at_ms = at_ms
        self.layout: RecordLayout | None = layout
        self.input_values = input_values
        self.output_values = output_values
        self._rows = rows
        self._inputs: pa.Table | None = None
        self._outputs: pa.Table | None = None
        self.last_model = last_model
        self.elapsed = elapsed
        self.shadows = {}
        self.request_id = request_id
        self.held_bytes = 0

    @property
    def inputs(self) -> pa.Table:
        if self._inputs is None:
            layout = self.layout_of_arrays
            self._inputs = pa.Table.from_arrays(
                [_input_column(values, size, field_.type) for values, size, field_ in
                 zip(self.input_values, layout.input_sizes, layout.inputs, strict=True)], schema=layout.inputs)
        return self._inputs

    @inputs.setter
    def inputs(self, table: pa.Table) -> None:
        self.outputs  # noqa: B018 - built while the arrays still describe it
        self._inputs, self.layout = table, None

    @property
    def outputs(self) -> pa.Table:
        if self._outputs is None:
            self._outputs = pa.Table.from_arrays([_output_column(values) for values in self.output_values],
                                                 schema=self.layout_of_arrays.outputs)
        return self._outputs

    @outputs.setter
    def outputs(self, table: pa.Table) -> None:
        self.inputs  # noqa: B018 - built while the arrays still describe it
        self._outputs, self.layout = table, None

    @property
    def layout_of_arrays(self) -> RecordLayout:
        return self._layout_of_arrays if self.layout is None else self.layout

    @property
    def layout(self) -> RecordLayout | None:
        """The arrays' layout while they are what the record holds; None once a table was set."""
        return self._layout

    @layout.setter
    def layout(self, layout: RecordLayout | None) -> None:
        if layout is not None:
            self._layout_of_arrays = layout
        self._layout = layout

    @property
    def rows(self) -> int:
        return self._rows if self.layout is not None else self.inputs.num_rows

    def key(self) -> tuple:
        return self.layout.key if self.layout is not None and not self.shadows else super().key()


def _list_of(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.Array:
    offsets = _numbers(np.arange(0, len(values) + 1, width, dtype=np.int32))
    flat = _numbers(values)
    return pa.ListArray.from_arrays(offsets, flat if flat.type == value_type else pa.array(values, value_type))


def _lane_of(records: list[InferenceRecord]) -> RecordLayout | None:
    """The layout all these records' arrays share when they are the fast lane's (`ArrayRecord`s of one layout, no
    shadows, no table set), else None. `_layout` directly: the property costs ~0.1 us a record."""
    layout = getattr(records[0], "_layout", None)
    if layout is None:
        return None
    for record in records:
        if getattr(record, "_layout", None) is not layout or record.shadows:
            return None
    return layout


def _pairs(records: list[InferenceRecord]) -> np.ndarray:
    """The records' `elapsed` pairs as an (n, 2) array: np.fromiter over them, ~2x faster than np.array of the
    tuples, which still takes anything else (and refuses what it always refused)."""
    pairs = [r.elapsed for r in records]
    if set(map(len, pairs)) == {2}:
        return np.fromiter(itertools.chain.from_iterable(pairs), np.int64, 2 * len(pairs)).reshape(-1, 2)
    return np.array(pairs, dtype=np.int64)


def build_batch(records: list[InferenceRecord], pipeline_version: str) -> pa.Table:
    """The records of requests with one schema (see `InferenceRecord.key`) as one log table. The replica builds it
    on its event loop (~600 one-row records every 500 ms at batch 1: docs/performance.md items 77 and 79), so the
    fast lane's records are read once, as plain attributes."""
    count = len(records)
    layout = _lane_of(records)
    counts = np.fromiter([r._rows for r in records] if layout is not None else [r.rows for r in records],
                         np.int64, count)
    rows = int(counts.sum())
    columns: dict[str, Any] = {TIME: _numbers(np.repeat(np.fromiter([r.at_ms for r in records], np.int64, count),
                                                        counts))}
    if layout is not None:
        # records of the fast lane: each column from their arrays at once (the same column the tables would give)
        for index, (field_, size) in enumerate(zip(layout.inputs, layout.input_sizes, strict=True)):
            values = np.concatenate([r.input_values[index] for r in records])
            columns[f"in.{field_.name}"] = _input_column(values, size, field_.type)
        for index, field_ in enumerate(layout.outputs):
            columns[f"out.{field_.name}"] = _output_column(np.concatenate([r.output_values[index] for r in records]))
    else:
        inputs = pa.concat_tables([r.inputs for r in records]).combine_chunks() if count > 1 \
            else records[0].inputs
        outputs = pa.concat_tables([r.outputs for r in records]).combine_chunks() if count > 1 \
            else records[0].outputs
        columns |= {f"in.{name}": inputs.column(name) for name in inputs.column_names}
        columns |= {f"out.{name}": outputs.column(name) for name in outputs.column_names}
    for challenger in records[0].shadows:
        shadow = pa.concat_tables([r.shadows[challenger] for r in records]).combine_chunks()
        columns |= {f"out_{challenger}.{name}": shadow.column(name) for name in shadow.column_names}
    # model and version repeat across rows: dictionary-encoded they cost 4 bytes a row, not their length
    models = [r.last_model for r in records]
    names = sorted(set(models))
    if len(names) == 1:
        codes = np.zeros(rows, np.int32)
    else:
        code = {name: index for index, name in enumerate(names)}
        codes = np.repeat(np.fromiter([code[m] for m in models], np.int32, count), counts)
    columns[META_LAST_MODEL] = pa.DictionaryArray.from_arrays(_numbers(codes), _strings(tuple(names)))
    columns[META_VERSION] = pa.DictionaryArray.from_arrays(_numbers(np.zeros(rows, np.int32)),
                                                           _strings((pipeline_version,)))
    elapsed = np.repeat(_pairs(records), counts, axis=0).reshape(-1)
    columns[META_ELAPSED] = _list_of(elapsed, 2, pa.int64())
    columns[META_DROPPED] = pa.ListArray.from_arrays(_numbers(np.zeros(rows + 1, np.int32)), _strings(()))
    return pa.table(columns)


@functools.lru_cache(maxsize=64)
def _strings(values: tuple[str, ...]) -> pa.Array:
    """A string array of these values: the dictionaries a deployment's log batches repeat, built once (Arrow
    arrays do not change)."""
    return pa.array(list(values), pa.string())


RUN_COLUMNS = (TIME, META_LAST_MODEL, META_VERSION, META_ELAPSED)  # one value for all the rows of a record
MIN_RUN_ROWS = 64


def encode_runs(table: pa.Table, counts: Iterable[int]) -> pa.Table:
    """The bus form of a log table whose consecutive records had `counts` rows each: the columns that hold one
    value per record (RUN_COLUMNS) as run-end encoded arrays, a value per record instead of one per row, and
    `metadata.dropped` as one run when no row lost a column. For ccfraud's log rows that is 40 of a row's 160
    bytes (time, the two dictionary indices, the elapsed list and the two lists' offsets), which nats-server
    would otherwise read, copy, checksum, write to its file store and deliver for every row (docs/performance.md,
    item 19). Records shorter than MIN_RUN_ROWS rows on average (batch-1 traffic) stay as they are: there the
    runs' own buffers cost about what they save. `expand_runs` turns them back."""
    lengths = np.fromiter(counts, np.int64)
    lengths = lengths[lengths > 0]
    if len(lengths) == 0 or int(lengths.sum()) != table.num_rows or table.num_rows < MIN_RUN_ROWS * len(lengths):
        return table
    ends = np.cumsum(lengths)
    run_ends, starts = pa.array(ends.astype(np.int32)), pa.array(ends - lengths)
    for name in RUN_COLUMNS:
        index = table.schema.get_field_index(name)
        if index >= 0:
            encoded = pa.RunEndEncodedArray.from_arrays(run_ends, table.column(index).combine_chunks().take(starts))
            table = _set_encoded(table, index, encoded)
    index = table.schema.get_field_index(META_DROPPED)
    if index >= 0:  # no row lost a column (the usual case): one run of the empty list
        dropped = table.column(index).combine_chunks()
        if not dropped.null_count and len(dropped.flatten()) == 0:
            table = _set_encoded(table, index, pa.RunEndEncodedArray.from_arrays(
                pa.array([table.num_rows], pa.int32()), dropped.slice(0, 1)))
    return table


def _set_encoded(table: pa.Table, index: int, column: pa.Array) -> pa.Table:
    field_ = table.schema.field(index)
    return table.set_column(index, pa.field(field_.name, column.type, field_.nullable, field_.metadata), column)


def expand_runs(table: pa.Table) -> pa.Table:
    """A log table as it came off the bus with every run-end encoded column (`encode_runs`) dense again, of its
    values' type; a table without any passes as it is."""
    decoded: dict[int, tuple[tuple[int, int], pa.Array, pa.Array]] = {}  # chunk -> (slice, run ends, positions)
    for index, field_ in enumerate(table.schema):
        if not pa.types.is_run_end_encoded(field_.type):
            continue
        chunks = []
        for number, chunk in enumerate(table.column(index).chunks):
            known = decoded.get(number)
            if known is not None and known[0] == (chunk.offset, len(chunk)) and known[1].equals(chunk.run_ends):
                rows = known[2]  # the columns of one record batch share their runs: decoded once
            else:
                # which value each row takes, by decoding runs of value positions (any value type, dictionaries
                # included, and a sliced array)
                runs = pa.RunEndEncodedArray.from_arrays(chunk.run_ends, pa.array(np.arange(len(chunk.values),
                                                                                           dtype=np.int32)))
                rows = pc.run_end_decode(runs.slice(chunk.offset, len(chunk)))
                decoded[number] = ((chunk.offset, len(chunk)), chunk.run_ends, rows)
            chunks.append(chunk.values.take(rows))
        kind = field_.type.value_type
        table = _set_encoded(table, index, pa.chunked_array(chunks, kind))
    return table


def group_records(records: Iterable[InferenceRecord]) -> list[list[InferenceRecord]]:
    """Records split into runs of one schema, keeping their order within each run."""
    groups: dict[tuple, list[InferenceRecord]] = {}
    for record in records:
        groups.setdefault(record.key(), []).append(record)
    return list(groups.values())


def _fixed_width(kind: pa.DataType) -> int | None:
    """Bytes every row of this type takes when that is the same for all rows (numbers, booleans counted as a
    byte, fixed-size binary, and fixed-size lists and structs of those), else None."""
    if pa.types.is_boolean(kind):
        return 1
    if isinstance(kind, pa.BaseExtensionType):  # a fixed-shape tensor: its storage's rows
        return _fixed_width(kind.storage_type)
    if pa.types.is_fixed_size_list(kind):
        inner = _fixed_width(kind.value_type)
        return None if inner is None else inner * kind.list_size
    if pa.types.is_struct(kind):
        widths = [_fixed_width(kind.field(i).type) for i in range(kind.num_fields)]
        return None if any(w is None for w in widths) else sum(widths)  # type: ignore[arg-type]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_fixed_size_binary(kind) \
            or pa.types.is_temporal(kind):
        try:
            return kind.bit_width // 8
        except ValueError:
            return None
    return None


def row_sizes(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Bytes each row of a column takes (values only; validity bits and offsets are not counted). A dictionary's
    row counts its index and the bytes of the value it names (a value many rows name counts in each: a row alone
    carries it), a run-end encoded row its run's value, an extension type's row its storage's."""
    n = len(array)
    kind = array.type
    width = _fixed_width(kind)
    if width is not None:  # a tensor of 29 floats is 116 bytes a row: no need to size its values one by one
        return np.full(n, width, np.int64)
    if isinstance(array, pa.ChunkedArray):
        if pa.types.is_dictionary(kind) and array.num_chunks > 1:  # each chunk its own dictionary: not unified
            return np.concatenate([row_sizes(chunk) for chunk in array.chunks])
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_boolean(kind):
        return np.ones(n, np.int64)
    if pa.types.is_dictionary(kind):
        return _dictionary_rows(array)
    if isinstance(kind, pa.BaseExtensionType):
        return row_sizes(array.storage)
    if pa.types.is_run_end_encoded(kind):
        values = row_sizes(array.values)
        if not len(values):
            return np.zeros(n, np.int64)
        # run_ends are logical positions of the whole array: a slice's rows are at offset..offset+n
        runs = np.searchsorted(array.run_ends.to_numpy(), np.arange(array.offset, array.offset + n), side="right")
        return values[np.minimum(runs, len(values) - 1)]
    if pa.types.is_fixed_size_list(kind):
        child = row_sizes(array.flatten())
        return child.reshape(n, kind.list_size).sum(axis=1) if n else np.zeros(0, np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets = array.offsets.to_numpy()
        child = np.concatenate([[0], np.cumsum(row_sizes(array.values))])
        return child[offsets[1:]] - child[offsets[:-1]]
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        child = np.concatenate([[0], np.cumsum(row_sizes(array.values))])
        starts = pc.fill_null(array.offsets, 0).to_numpy()
        return child[starts + pc.fill_null(array.sizes, 0).to_numpy()] - child[starts]
    if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind) \
            or pa.types.is_large_binary(kind):
        return _string_rows(array)
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
        # binary_length has no view kernel: each row's 16-byte view starts with its length
        views = np.frombuffer(array.buffers()[1], np.int32, 4 * (array.offset + n))[4 * array.offset::4]
        return np.where(array.is_valid().to_numpy(zero_copy_only=False), views, 0).astype(np.int64) \
            if array.null_count else views.astype(np.int64)
    if pa.types.is_struct(kind):
        total = np.zeros(n, np.int64)
        for index in range(kind.num_fields):
            total += row_sizes(array.field(index))
        return total
    try:
        return np.full(n, kind.bit_width // 8, np.int64)
    except ValueError:
        return np.full(n, array.nbytes // max(n, 1), np.int64)


def _string_rows(array: pa.Array) -> np.ndarray:
    """`row_sizes` of a string or binary array: its offsets' steps (a null row 0), read from the offsets buffer
    (pc.binary_length, fill_null and to_numpy cost ~16 us a call, more than the sizes of a 1,000-row column)."""
    n = len(array)
    if not n:
        return np.zeros(0, np.int64)
    step = np.int64 if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type) else np.int32
    sizes = np.diff(np.frombuffer(array.buffers()[1], step, n + 1, array.offset * step(0).itemsize)).astype(np.int64)
    if array.null_count:
        sizes[~array.is_valid().to_numpy(zero_copy_only=False)] = 0  # a null's offsets may span bytes
    return sizes


def _dictionary_rows(array: pa.DictionaryArray) -> np.ndarray:
    """`row_sizes` of a dictionary array: each row's index and the bytes of the value it names (a null row its
    index), one lookup of the dictionary's sizes, not a row at a time. Counted as the index alone, a row naming a
    value above max_row_bytes was never dropped and every payload of its batch carried that value (the dictionary
    goes whole with each slice): the stream refused them all, the batch's rows were lost."""
    width = array.type.index_type.bit_width // 8
    values = row_sizes(array.dictionary)
    n = len(array)
    if not n or not len(values):
        return np.full(n, width, np.int64)
    values += width
    indices = array.indices
    if not indices.null_count:
        if len(values) == 1:  # one value (one model's name, the pipeline's version)
            return np.full(n, values[0], np.int64)
        return np.take(values, indices.to_numpy())
    sizes = np.take(values, pc.fill_null(indices, 0).to_numpy())  # a null's index slot may hold anything
    sizes[~indices.is_valid().to_numpy(zero_copy_only=False)] = width
    return sizes


def _row_bound(column: pa.ChunkedArray) -> int:
    """Bytes no row of the column can exceed (as `row_sizes` counts them: values, not offsets nor validity), found
    without sizing each row's values: a fixed width; a dictionary's values plus an index; a string's or binary's
    longest value (its offsets' largest step); a list of fixed-width items' longest list; a list of anything else's
    values (those its rows reference), nothing when every list is empty; else the column's bytes. Not the whole
    column's bytes for strings and lists: their offsets are 4 bytes a row, so above ~262,000 rows
    (`logs.max_row_bytes`' 1 MiB / 4) the empty `metadata.dropped` lists alone were over the limit, and every flush
    of that size was sized row by row (~17-40 ms of a 300,000-row overflow flush instead of ~1-3)."""
    kind = column.type
    width = _fixed_width(kind)
    if width is not None:
        return width
    if pa.types.is_dictionary(kind):
        return sum(chunk.dictionary.nbytes for chunk in column.chunks) + kind.index_type.bit_width // 8
    if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind) \
            or pa.types.is_large_binary(kind):
        step = np.int64 if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) else np.int32
        return max((int(np.diff(np.frombuffer(chunk.buffers()[1], step, len(chunk) + 1, chunk.offset * step(0).itemsize)
                                ).max()) for chunk in column.chunks if len(chunk)), default=0)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _fixed_width(kind.value_type)
        bound = 0
        for chunk in column.chunks:
            if not len(chunk):
                continue
            offsets = chunk.offsets.to_numpy()  # the chunk's own (a sliced list's offsets are sliced with it)
            first, last = int(offsets[0]), int(offsets[-1])
            if first == last:  # every list empty (metadata.dropped when no row lost a column)
                continue
            longest = int(np.diff(offsets).max())
            # a row holds at most every value the chunk's rows reference (their Arrow bytes bound their values')
            bound = max(bound, inner * longest if inner is not None else chunk.values.slice(first, last - first).nbytes)
        return bound
    return column.nbytes


def _named_values(array: pa.DictionaryArray) -> pa.DictionaryArray:
    """The dictionary array with only the dictionary values its rows name (indices renumbered, the same values).
    A dictionary goes whole with every IPC payload of its batch, so a value above the bus limit that a dropped row
    named made every payload too big; numpy over the indices, not if_else's per-row hashing of the values (~1 s
    for 10,000 rows naming a 1 MB value)."""
    dictionary = array.dictionary
    indices = array.indices
    if not len(dictionary):
        return array
    codes = (pc.fill_null(indices, 0) if indices.null_count else indices).to_numpy()
    named = np.zeros(len(dictionary), bool)
    if indices.null_count:
        valid = indices.is_valid().to_numpy(zero_copy_only=False)
        named[codes[valid]] = True
    else:
        valid = None
        named[codes] = True
    if named.all():
        return array
    renumbered = (np.cumsum(named) - 1).astype(codes.dtype)[codes]
    return pa.DictionaryArray.from_arrays(
        pa.array(renumbered, indices.type, mask=None if valid is None else ~valid),
        dictionary.filter(pa.array(named)), ordered=array.type.ordered)


def holds_dictionary(kind: pa.DataType) -> bool:
    """A dictionary anywhere in the type: itself, or a struct's field, a list's or map's values, an extension's
    storage (types only: nothing is read)."""
    if pa.types.is_dictionary(kind):
        return True
    if isinstance(kind, pa.BaseExtensionType):
        return holds_dictionary(kind.storage_type)
    return any(holds_dictionary(kind.field(i).type) for i in range(kind.num_fields))


def _named_nested(array: pa.Array) -> pa.Array | None:
    """`_named_values` for a dictionary anywhere in the array (a struct's field, a list's, fixed-size list's or map's
    values, an extension's storage), the rest as it was; None when nothing was left out. A list keeps the values its
    rows reference (a slice's), renumbered from 0. Sized row by row by `row_sizes` (a row counts the value it names),
    a nested dictionary still went whole with every slice and every row that lost its column, so a struct naming
    many large values made every payload of its batch too big, as a top-level one did before fca72e95. Run-end
    encoded and list-view values are left as they are."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        named = _named_values(array)
        return None if named is array else named
    if not holds_dictionary(kind):
        return None
    mask = array.is_null() if array.null_count else None
    if isinstance(kind, pa.BaseExtensionType):
        storage = _named_nested(array.storage)
        return None if storage is None else pa.ExtensionArray.from_storage(kind, storage)
    if pa.types.is_struct(kind):
        children = [array.field(i) for i in range(kind.num_fields)]  # (each the struct's rows: sliced with it)
        named = [_named_nested(child) for child in children]
        if all(child is None for child in named):
            return None
        return pa.StructArray.from_arrays([child if new is None else new for child, new in zip(children, named,
                                                                                                strict=True)],
                                          fields=list(kind), mask=mask)
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
        values = _named_nested(array.values.slice(array.offset * size, len(array) * size))
        return None if values is None else pa.FixedSizeListArray.from_arrays(values, type=kind, mask=mask)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets = array.offsets  # (a slice's: its first need not be 0, and .values is the whole child)
        first = offsets[0].as_py() if len(offsets) else 0
        values = array.values.slice(first, offsets[-1].as_py() - first if len(offsets) else 0)
        named = _named_nested(values)
        if named is None:
            return None
        offsets = pc.subtract(offsets, pa.scalar(first, offsets.type))
        if pa.types.is_map(kind):
            return pa.MapArray.from_arrays(offsets, named.field(0), named.field(1), type=kind, mask=mask)
        return type(array).from_arrays(offsets, named, type=kind, mask=mask)
    return None


def named_dictionaries(table: pa.Table) -> pa.Table:
    """The table with each dictionary keeping only the values its rows name (`_named_values` per chunk, also for a
    dictionary inside a struct, list or map column: `_named_nested`; the same schema), or the table itself when every
    value is named. A slice of a table carries its columns' whole dictionaries into its IPC message: the log
    batcher's slices of a batch whose dictionary alone is above the bus limit (1,000 rows naming 1,000 distinct 2 KB
    values) were each too big, down to one row, and every row was lost."""
    for index, named_field in enumerate(table.schema):
        if holds_dictionary(named_field.type):
            chunks = table.column(index).chunks
            named = [_named_nested(chunk) for chunk in chunks]
            if any(after is not None for after in named):
                table = table.set_column(index, named_field, pa.chunked_array(
                    [before if after is None else after for after, before in zip(named, chunks, strict=True)],
                    named_field.type))
    return table


def _droppable(name: str) -> int | None:
    """0 for inputs (dropped first), 1 for outputs, None for what is always kept."""
    if name.startswith("in."):
        return 0
    if name.startswith(("out.", "out_")):
        return 1
    return None


def drop_oversized(table: pa.Table, max_row_bytes: int) -> pa.Table:
    """Rows above `max_row_bytes` lose columns, largest input first, then outputs by size, until they fit;
    `time` and metadata always stay, and each row's `metadata.dropped` lists what it lost."""
    # each column's buffers' whole size bounds the bytes any of its rows references (Table.nbytes, ~30x its cost):
    # summed per column, checked first. Not Table.get_total_buffer_size(): it counts a buffer shared by several
    # columns once (a step echoing its input tensor as an output), while a row's size counts it in each column
    if table.num_rows == 0 or sum(column.get_total_buffer_size() for column in table.columns) <= max_row_bytes \
            or table.nbytes <= max_row_bytes:
        return table
    # no row can be above the fixed-width columns' row size plus all of the other columns' bytes: a batch of
    # small rows is not sized row by row (its list and dictionary columns were 3 % of a replica's samples)
    if sum(_row_bound(column) for column in table.columns) <= max_row_bytes:
        return table
    sizes = {name: row_sizes(table.column(name)) for name in table.column_names}
    total = sum(sizes.values())
    over = np.nonzero(total > max_row_bytes)[0]
    if not len(over):
        return table
    candidates = [name for name in table.column_names if _droppable(name) is not None]
    masks = {name: np.zeros(table.num_rows, bool) for name in candidates}
    dropped: list[list[str]] = [[] for _ in range(table.num_rows)]
    for row in over:
        left = int(total[row])
        for name in sorted(candidates, key=lambda c: (_droppable(c), -int(sizes[c][row]), c)):
            if left <= max_row_bytes:
                break
            masks[name][row] = True
            left -= int(sizes[name][row])
            dropped[row].append(name)
    for name, mask in masks.items():
        if mask.any():
            column = table.column(name)
            # take() with the dropped rows' indices null: it copies only the values kept (if_else kept the value
            # buffer whole: a nulled 10 MB string still serialized as 10 MB, so the record never fit the stream and
            # was retried until the replica stopped), and takes extension types, which if_else has no kernel for
            indices = pa.array(np.arange(len(column)), mask=mask)
            if pa.types.is_run_end_encoded(column.type):  # take() has no run-end encoded kernel: it raised, and the
                # flush set the group's records aside one by one, the oversized one lost whole (taken decoded)
                kept = pc.run_end_encode(pc.run_end_decode(column).take(indices),
                                         run_end_type=column.type.run_end_type)
            else:
                kept = column.take(indices)
            if holds_dictionary(column.type):  # take() keeps the whole dictionary (a struct's or list's too): the
                # dropped values go
                kept = pa.chunked_array([chunk if named is None else named
                                         for chunk, named in ((c, _named_nested(c)) for c in kept.chunks)],
                                        column.type)
            # the field as it was (its metadata), nullable now that rows of it are null: set by name alone it lost
            # its metadata, and a non-nullable one kept over nulls would be refused by the segment's Parquet writer
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(index).with_nullable(True), kept)
    index = table.schema.get_field_index(META_DROPPED)
    existing = table.column(META_DROPPED).to_pylist() if index >= 0 else [[] for _ in dropped]
    merged = pa.array([old + new for old, new in zip(existing, dropped, strict=True)], pa.list_(pa.string()))
    if index >= 0:
        return table.set_column(index, META_DROPPED, merged)
    return table.append_column(META_DROPPED, merged)


def _rank(name: str, display: bool) -> int:
    if name == TIME:
        return 0
    if name.startswith("in."):
        return 1 if display else 4
    if name.startswith("out."):
        return 2
    if name.startswith("out_"):
        return 3 if display else 2
    return 5 if display else 3


def storage_order(table: pa.Table) -> pa.Table:
    """Columns as segments store them: time, outputs, metadata, then inputs (usually the largest), so reading
    time and an output (as assays do) fetches adjacent bytes."""
    names = sorted(table.column_names, key=lambda n: (_rank(n, False), table.column_names.index(n)))
    return table if names == table.column_names else table.select(names)


def display_order(table: pa.Table) -> pa.Table:
    """Columns as the seed shows them: time, in, out, out_<challenger>, metadata."""
    names = sorted(table.column_names, key=lambda n: (_rank(n, True), table.column_names.index(n)))
    return table if names == table.column_names else table.select(names)


def _type_key(kind: pa.DataType) -> str:
    """A type as text, without the names of list items (Parquet reads `item` back as `element`)."""
    if pa.types.is_fixed_size_list(kind):
        return f"fixed_size_list<{_type_key(kind.value_type)}>[{kind.list_size}]"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"{'large_' if pa.types.is_large_list(kind) else ''}list<{_type_key(kind.value_type)}>"
    if pa.types.is_struct(kind):
        return "struct<" + ",".join(f"{kind.field(i).name}:{_type_key(kind.field(i).type)}"
                                    for i in range(kind.num_fields)) + ">"
    return str(kind)


def schema_fingerprint(schema: pa.Schema) -> str:
    """Names and types of the columns, without metadata or list item names: tables with one fingerprint
    concatenate once cast to one of them (a compacted segment read back from Parquet has the fingerprint of the
    fresh ones it came from)."""
    text = ";".join(f"{f.name}:{_type_key(f.type)}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


DATASET_GROUPS = ("time", "in", "out", "metadata")
METADATA_FIELDS = tuple(column.removeprefix("metadata.") for column in METADATA_COLUMNS)
UNKNOWN_LOG_DATASET = "unknown_log_dataset"


def unknown_dataset_names(selectors: Iterable[str]) -> list[str]:
    """The get_logs `dataset` / `dataset_exclude` names that can name nothing a log holds: not `*`, a group
    (`time`, `in`, `out`, `metadata`, `out_<challenger>`) or a column of one (`in.<input>`, `out.<output>`,
    `out_<challenger>.<output>`, `metadata.<one of METADATA_FIELDS>`). Inputs and outputs are the model's own, so any
    name of theirs may be logged by some version and is not refused."""
    unknown = []
    for selector in selectors:
        group, dot, column = selector.partition(".")
        if selector in ("*", *DATASET_GROUPS):
            continue
        if (group in ("in", "out") or (group.startswith("out_") and len(group) > len("out_"))) and (not dot or column):
            continue
        if group == "metadata" and column in METADATA_FIELDS:
            continue
        unknown.append(selector)
    return unknown


def check_dataset_names(dataset: list[str], exclude: list[str]) -> None:
    """InvalidRequest (`unknown_log_dataset`) naming the names that select nothing, and the valid ones: such a name
    used to answer only `time`, as if the logs were empty."""
    from shared.errors import InvalidRequest

    wrong = {field: unknown_dataset_names(names) for field, names in (("dataset", dataset),
                                                                       ("dataset_exclude", exclude))}
    if any(wrong.values()):
        named = "; ".join(f"{field} {names}" for field, names in wrong.items() if names)
        raise InvalidRequest(
            f"unknown log dataset names: {named}. Valid: '*', the groups {list(DATASET_GROUPS)} and "
            "'out_<challenger>' (a shadow challenger's outputs), or one column of a group: 'in.<input>', "
            f"'out.<output>', 'out_<challenger>.<output>' or one of {['metadata.' + f for f in METADATA_FIELDS]}",
            code=UNKNOWN_LOG_DATASET)


def select_columns(names: list[str], dataset: list[str], exclude: list[str]) -> list[str]:
    """The columns a get_logs `dataset` selector keeps: `*` (everything), a group (`in`, `out`, `metadata`,
    `out_<challenger>`) or a column (`in.tensor`, `metadata.elapsed`); `time` is always kept."""

    def matches(name: str, selector: str) -> bool:
        return selector == "*" or name == selector or name.startswith(selector + ".")

    kept = [n for n in names if n == TIME or any(matches(n, s) for s in dataset)]
    return [n for n in kept if n == TIME or not any(matches(n, s) for s in exclude)]


def _narrow_scalars(value: Any, dtype: np.dtype) -> Any:
    """A to_pylist value (nested lists, None) with its floats as numpy scalars of `dtype`."""
    if isinstance(value, list):
        return [_narrow_scalars(item, dtype) for item in value]
    return dtype.type(value) if isinstance(value, float) else value


# the type ids page_values looks into: the nested types (pyarrow.types.is_nested's, but unions and run-end encoded ones,
# which it leaves to to_pylist as before) and dictionary-encoded columns; one set lookup, as is_nested's own, so a
# plain column (the common case) pays nothing for the kinds it is not. Built at the first call, not at import: pyarrow
# (and numpy) stay unimported in a process that never pages a log (the assay runner's and the log store's idle start,
# tests/unit/test_lean_imports.py)
@functools.cache
def _walked() -> frozenset[int]:
    return _lists() | frozenset(data_type.id for data_type in (
        pa.struct([]), pa.map_(pa.int8(), pa.int8()), pa.dictionary(pa.int8(), pa.int8())))


@functools.cache
def _lists() -> frozenset[int]:
    return frozenset(data_type.id for data_type in (
        pa.list_(pa.int8()), pa.large_list(pa.int8()), pa.list_(pa.int8(), 1), pa.list_view(pa.int8()),
        pa.large_list_view(pa.int8())))


def _narrow_floats(data_type: pa.DataType) -> np.dtype | bool:
    """Where a float32 or float16 is in the type, in one walk: its numpy dtype when the type is one or lists (of
    lists ...) of one, whose values `_narrow_scalars` narrows; True when one is elsewhere in it (a struct's field, a
    map's key or item, a dictionary's values, at any depth: `_narrow_typed` narrows by the type); False when none
    is (union, run-end encoded and extension types are not looked into: they print as to_pylist does)."""
    lists = _lists()
    while data_type.id in lists:
        data_type = data_type.value_type
    if pa.types.is_float32(data_type) or pa.types.is_float16(data_type):
        return np.dtype(data_type.to_pandas_dtype())
    if pa.types.is_dictionary(data_type):
        return _narrow_floats(data_type.value_type) is not False
    if pa.types.is_struct(data_type):
        return any(_narrow_floats(field.type) is not False for field in data_type)
    if pa.types.is_map(data_type):
        return _narrow_floats(data_type.key_type) is not False or _narrow_floats(data_type.item_type) is not False
    return False


def _narrow_typed(value: Any, data_type: pa.DataType) -> Any:
    """A to_pylist value of `data_type` with the floats its type says are float32 or float16 as numpy scalars of that
    type (a struct's float64 field stays a float): a struct's dict, a map's (key, item) pairs, a list's items."""
    if value is None:
        return None
    if pa.types.is_float32(data_type) or pa.types.is_float16(data_type):
        return np.dtype(data_type.to_pandas_dtype()).type(value)
    if data_type.id in _lists():
        return [_narrow_typed(item, data_type.value_type) for item in value]
    if pa.types.is_dictionary(data_type):
        return _narrow_typed(value, data_type.value_type)
    if pa.types.is_struct(data_type):
        types = {field.name: field.type for field in data_type}
        return {name: _narrow_typed(item, types[name]) for name, item in value.items()}
    if pa.types.is_map(data_type):
        return [(_narrow_typed(key, data_type.key_type), _narrow_typed(item, data_type.item_type))
                for key, item in value]
    return value


def page_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column as a JSON log page's values: `arrow_codec.column_values`, except that float32 and float16 values
    stay numpy (a row's tensor an ndarray view, a scalar a numpy scalar, also within a struct, a map or a dictionary
    column since session 35: they printed as exact doubles), which orjson's OPT_SERIALIZE_NUMPY prints
    in the type's own shortest form: a logged float32 `0.1` reads `0.1`, not float64's exact
    `0.10000000149011612` (docs/logs.md "Types"). Inference answers' records print them so too (since session 35,
    services/gateway/inference.py: seed_records), which take this at batch 1: one pass over the column's types."""
    if isinstance(column, pa.ChunkedArray):
        if not column.num_chunks:
            return []
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # combine copies even one
    else:
        array = column
    shape = []
    values = array
    while pa.types.is_fixed_size_list(values.type) and not values.null_count:
        shape.append(values.type.list_size)
        values = arrow_codec.flat_values(values)  # flatten() without its compute function's call
    kind = values.type
    if pa.types.is_float32(kind) or pa.types.is_float16(kind):
        if not values.null_count:
            flat = values.to_numpy()
            return list(flat.reshape([len(array), *shape]) if shape else flat)
        return _narrow_scalars(array.to_pylist(), np.dtype(kind.to_pandas_dtype()))  # nulls: rare
    if kind.id in _walked():  # variable-size lists (of float32: narrowed), structs, maps, dictionary-encoded columns
        narrow = _narrow_floats(kind)
        if narrow is True:  # a float32 in a struct, a map or a dictionary, at any depth
            return [_narrow_typed(value, array.type) for value in array.to_pylist()]
        if narrow is not False:  # lists of float32
            return _narrow_scalars(array.to_pylist(), narrow)
    elif shape and not values.null_count and (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        return values.to_numpy().reshape([len(array), *shape]).tolist()  # column_values' numpy path
    return array.to_pylist()


def seed_rows(table: pa.Table, check_failures: bool = True) -> list[dict[str, Any]]:
    """Log rows in the seed's pandas-records shape: `time`, then `in`, `out`, `out_<challenger>` and
    `metadata` as objects of their columns (a value dropped for size is left out of its object). float32 and
    float16 values are numpy's (`page_values`): serialize with orjson's OPT_SERIALIZE_NUMPY."""
    groups: dict[str, list[tuple[str, list[Any]]]] = {}
    times = None
    for name in table.column_names:
        values = page_values(table.column(name))
        if name == TIME:
            times = values
            continue
        group, _, inner = name.partition(".")
        groups.setdefault(group, []).append((inner, values))
    rows: list[dict[str, Any]] = []
    for index in range(table.num_rows):
        row: dict[str, Any] = {TIME: times[index]} if times is not None else {}
        for group, columns in groups.items():
            row[group] = {inner: values[index] for inner, values in columns if values[index] is not None}
        if check_failures and "in" in groups:
            row["check_failures"] = []
        rows.append(row)
    return rows


def dropped_columns(table: pa.Table) -> list[str]:
    """Every column some row of the table lost for size."""
    if META_DROPPED not in table.column_names or table.num_rows == 0:
        return []
    flat = pc.list_flatten(table.column(META_DROPPED))
    return sorted(set(flat.to_pylist())) if len(flat) else []


def model_name_of(last_model: str | None) -> str | None:
    """The model name inside a `metadata.last_model` value ('{"model_name": ..., "model_sha": ...}')."""
    try:
        return json.loads(last_model).get("model_name") if last_model else None
    except (ValueError, AttributeError):
        return None


def log_header(workspace_id: int, pipeline: str, deployment: str, pipeline_version: str) -> str:
    return json.dumps({"workspace_id": workspace_id, "pipeline": pipeline, "deployment": deployment,
                       "pipeline_version": pipeline_version}, separators=(",", ":"))
