"""Writing inference log segments: the Parquet layout both writers share, the log store (batches that came inline
on the bus) and an engine replica (its own batches, stored before it publishes their description: docs/logs.md,
"How records travel").

A segment's rows are sorted by (time, position), numeric tensor columns without nulls are stored packed (one
fixed-size binary value a row, `unpack_tensors` turns them back), and an engine-written
segment is described on the bus by `SegmentRef` (what the log store indexes without reading the object).
"""

from __future__ import annotations

import functools
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

from shared.lean_imports import lazy_module
from shared.logrecords import (
    META_DROPPED,
    META_VERSION,
    TIME,
    dropped_columns,
    schema_fingerprint,
    storage_order,
)
from shared.messages.logs import SegmentDescription

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
else:  # imported with the first log batch, not at start
    np = lazy_module("numpy")
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    pq = lazy_module("pyarrow.parquet")

POS = "_pos"  # a compacted segment's row positions (hidden from pages)
TENSOR = b"railyard.tensor"  # field metadata of a tensor column stored packed: "<numpy dtype>:<d1>,<d2>,..."
SEGMENT_HEADER = "Railyard-Segment"
"""On a log batch message: the body is a `SegmentRef` (JSON), not Arrow rows: the engine stored the segment."""
ENGINE_SUFFIX = ".e.parquet"
"""How the key of an engine-written segment ends: maintenance keeps such an object unindexed for as long as its
description may wait in the stream (`logs.stream_max_age`), not the hour it gives the log store's own."""


_ENGINE_TAIL = re.compile(r"\d{4}/\d{2}/\d{2}/[0-9a-f]{32}" + re.escape(ENGINE_SUFFIX))
"""What follows the pipeline's prefix in an engine-written segment's key (`segment_key`)."""


def segment_key(workspace_id: int, pipeline: str, suffix: str = ".parquet", now: float | None = None) -> str:
    """A new segment's object key: `ws-<id>/<pipeline>/<yyyy/mm/dd>/<name><suffix>`, the day in UTC and the name
    32 hex digits: the key's time in milliseconds (12, `key_time`) and 80 random bits. A day's keys sort by time, so
    maintenance's orphan sweep lists only the keys that passed its cutoff since its last pass (`list_keys_between`)
    instead of the whole bucket. Keys named before 2026-12-02 (a uuid4's 32 hex digits) have the same shape."""
    moment = time.time() if now is None else now
    return f"{key_prefix(workspace_id, pipeline)}{_day(moment)}/{key_time(moment)}{secrets.token_hex(10)}{suffix}"


_DAY: tuple[int, str] = (0, "1970/01/01")


def _day(moment: float) -> str:
    """The UTC day folder (`yyyy/mm/dd`) of `moment`, formatted once a day (strftime was ~5 us a key). The text is
    the day's own (formatted from its first second): `moment` itself can round up to the next day within half a
    microsecond of midnight (fromtimestamp rounds to microseconds), and kept for its day number that text would
    have named every later key of the day before (e.g. another thread's, taken a few ms earlier) after the next."""
    global _DAY
    number, text = _DAY  # one tuple: a thread sees a day and its text together
    day = moment // 86400
    if number != day:
        number, text = day, datetime.fromtimestamp(day * 86400, UTC).strftime("%Y/%m/%d")
        _DAY = number, text
    return text


def key_time(moment: float) -> str:
    """The first 12 hex digits of the name of a key made at `moment` (UNIX seconds): milliseconds, zero-padded."""
    return f"{max(int(moment * 1000), 0):012x}"


def key_moment(key: str) -> float | None:
    """The time (UNIX seconds) a segment key was named at (`segment_key`), read from its name; None when its name
    does not begin with a time of its own day folder (a uuid4 name of before 2026-12-02, or not a segment key)."""
    parts = key.rsplit("/", 4)
    if len(parts) < 5:
        return None
    try:
        moment = int(parts[4][:12], 16) / 1000
        day = datetime.fromtimestamp(moment, UTC).strftime("%Y/%m/%d")
    except (ValueError, OverflowError, OSError):
        return None
    return moment if day == "/".join(parts[1:4]) else None


def day_folders(start: float, end: float) -> list[str]:
    """The `yyyy/mm/dd` folders (UTC) of keys made from `start` to `end` (UNIX seconds), in order."""
    first = datetime.fromtimestamp(start, UTC).date()
    last = datetime.fromtimestamp(end, UTC).date()
    return [(first + timedelta(days=n)).strftime("%Y/%m/%d") for n in range((last - first).days + 1)]


def key_prefix(workspace_id: int, pipeline: str) -> str:
    """The prefix of every segment key of a pipeline."""
    return f"ws-{workspace_id}/{quote(pipeline, safe='')}/"


def sort_by_time(table: pa.Table, positions: np.ndarray | None = None) -> pa.Table:
    """Rows in (time, position) order, a stable sort (positions default to the rows' order); a segment is
    written so, which lets a page find its first row from the footer and merge schemas by time."""
    times = _times(table)
    if positions is None:
        if len(times) < 2 or bool(np.all(times[1:] >= times[:-1])):
            return table
        order = np.argsort(times, kind="stable")
    else:
        order = np.lexsort((positions, times))
        if bool(np.all(order == np.arange(len(order)))):
            return table
    return table.take(pa.array(order))


def _times(table: pa.Table) -> np.ndarray:
    """The `time` column as numpy: a lone chunk without nulls (an engine's batch table) is read as it lies
    (ChunkedArray.to_numpy took ~13 us of a 500-row write, the chunk's 0.6)."""
    index = table.schema.get_field_index(TIME)
    column = table.column(TIME if index < 0 else index)
    if column.num_chunks == 1 and not column.null_count:
        return column.chunk(0).to_numpy(zero_copy_only=False)
    return column.to_numpy()


class _Layout:
    """What a segment's write and description take from its table's schema, worked out once per schema (a replica
    writes one schema every `engine_segment_ms`: walking it per write was ~40 % of the write's Python, docs/
    performance.md item 82): the storage order of its columns, whether one cannot be stored, how each tensor column
    is packed, the string columns, the fingerprint, and the Parquet codecs by which packed columns are stored raw."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        names = storage_order(schema.empty_table()).column_names
        self.order = None if names == schema.names else [schema.get_field_index(name) for name in names]
        self.time, self.version, self.dropped = (_column_at(schema, name) for name in (TIME, META_VERSION,
                                                                                     META_DROPPED))
        self.unwritable = any(unwritable(f.type) for f in schema if f.name.startswith(("in.", "out.", "out_")))
        self.packs: list[tuple[int, pa.Field, int, pa.DataType, int, pa.Field]] = []
        for index, field in enumerate(schema):
            shape = _tensor_shape(field.type)
            if shape is not None and 0 not in shape[0]:  # a zero-size tensor packs to no bytes: relisted below
                dims, kind = shape
                width = int(np.prod(dims)) * kind.byte_width
                spec = f"{np.dtype(kind.to_pandas_dtype()).str}:{','.join(map(str, dims))}".encode()
                packed = pa.field(field.name, pa.binary(width), field.nullable,
                                  {**(field.metadata or {}), TENSOR: spec})
                self.packs.append((index, field, len(dims), kind, width, packed))
        self.relists = [(index, pa.field(field.name, kind, field.nullable, field.metadata)) for index, field, kind
                        in ((i, f, _relisted(f.type)) for i, f in enumerate(schema)) if kind is not None]
        self.strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                        or pa.types.is_dictionary(f.type)]
        self.statistics = [c for c in (TIME, POS) if c in schema.names]
        stored = schema  # the fingerprint is the stored schema's: a segment read back (compaction) keeps it
        for index, relisted in self.relists:
            stored = stored.set(index, relisted)
        self.fingerprint = schema_fingerprint(stored)
        self.codecs: dict[tuple[tuple[int, ...], tuple[str, ...]], dict[str, str]] = {}

    def compression(self, schema: pa.Schema, packed: list[int], stored_raw: list[str]) -> dict[str, str]:
        """The codec of each Parquet column path of `schema`, this schema with the columns at `packed` packed:
        none for the packed columns in `stored_raw`, snappy for the rest."""
        key = (tuple(packed), tuple(stored_raw))
        codecs = self.codecs.get(key)
        if codecs is None:
            codecs = {path: "none" if path in stored_raw else "snappy" for path in _leaf_paths(schema)}
            self.codecs[key] = codecs
        return codecs


def _column_at(schema: pa.Schema, name: str) -> int | str | None:
    """Where `table.column` finds the column `name` (its index: reading the table's column names took ~5-8 us a
    time), the name itself when several have it (`table.column` raises as it did), None when none."""
    index = schema.get_field_index(name)
    return index if index >= 0 else name if name in schema.names else None


_LAYOUTS: dict[tuple[str, ...], tuple[_Layout, ...]] = {}  # by column names, oldest first
_LAYOUTS_LOCK = threading.Lock()
LAYOUTS_KEPT = 256
"""Column-name lists whose layouts are kept (each list's last 8 schemas): a layout costs ~260 us to work out, a
log store writes segments of every pipeline's schemas."""


def layout(schema: pa.Schema) -> _Layout:
    """The schema's `_Layout`: kept by column names, each compared with its metadata (~0.1 us; hashing a schema
    walks its fields, ~10 us for a log table's)."""
    names = tuple(schema.names)
    for made in _LAYOUTS.get(names, ()):
        if made.schema.equals(schema, check_metadata=True):
            return made
    made = _Layout(schema)
    with _LAYOUTS_LOCK:  # the log store's writes run in threads
        known = _LAYOUTS.pop(names, ())
        while len(_LAYOUTS) >= LAYOUTS_KEPT:
            del _LAYOUTS[next(iter(_LAYOUTS))]
        _LAYOUTS[names] = (made, *known[:7])
    return made


def storage_ordered(table: pa.Table) -> pa.Table:
    """`logrecords.storage_order` of the table, the order worked out once per schema."""
    order = layout(table.schema).order
    return table if order is None else table.select(order)


def _relisted(kind: pa.DataType) -> pa.DataType | None:
    """The type with its fixed-size lists as lists when one of them has size 0 (a zero-size dimension), else None:
    Parquet has no zero-length FIXED_LEN_BYTE_ARRAY to pack such a tensor into, and pyarrow writes such a list
    unpacked but cannot read it back (a numeric or boolean one; strings end the process), while lists of no
    values go both ways (read back as lists)."""
    sizes, inner = [], kind
    while pa.types.is_fixed_size_list(inner) or pa.types.is_list(inner) or pa.types.is_large_list(inner):
        sizes.append(inner.list_size if pa.types.is_fixed_size_list(inner) else None)
        inner = inner.value_type
    if 0 not in sizes:
        return None
    for _ in sizes:
        inner = pa.list_(inner)
    return inner


def _tensor_shape(kind: pa.DataType) -> tuple[list[int], pa.DataType] | None:
    """(dims, value type) of a fixed-size list (of fixed-size lists ...) of integers or floats, else None."""
    dims = []
    while pa.types.is_fixed_size_list(kind):
        dims.append(kind.list_size)
        kind = kind.value_type
    if dims and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return dims, kind
    return None


def _pack(column: pa.ChunkedArray, depth: int, kind: pa.DataType, width: int) -> pa.Array | None:
    """A null-free numeric tensor column (`depth` nested fixed-size lists of `kind`, `width` bytes a row) as
    fixed-size binary (each row's values, bytes as they lie), or None."""
    # one chunk (an engine's batch table, a sorted one): used as it is; combine_chunks copies even a lone chunk
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    values = array
    for _ in range(depth):
        if values.null_count:
            return None
        # the rows' values: the child sliced as the list is (what flatten() gives a list without nulls, at
        # 1 us instead of its 17)
        size = values.type.list_size
        values = values.values.slice(values.offset * size, len(values) * size)
    if values.null_count:
        return None
    data = values.buffers()[1].slice(values.offset * kind.byte_width, len(values) * kind.byte_width)
    return pa.Array.from_buffers(pa.binary(width), len(array), [None, data])


SAMPLE_BYTES = 16 * 1024  # each of a packed column's three samples (start, middle, end) snappy is tried on
COMPRESS_BELOW = 0.98
"""A packed tensor column is compressed when snappy takes its samples under this share of their size: float
tensors of noisy values do not compress (snappy's output of the bench's normal float32 rows was 0.005 % larger
than its input) and compressing them cost ~12 % of the segment's write, while a byte less through SeaweedFS saves
~70x what snappy spends on a byte (docs/performance.md item 59): what shrinks by 2 % or more is compressed."""


def _compresses(packed: pa.Array) -> bool:
    """Whether snappy shrinks a packed column's samples below COMPRESS_BELOW of their size. Each sample is
    compressed on its own: rows repeated far apart in the column (a load generator's one request again and again)
    are not repeats snappy's 64 KiB window sees when it writes the pages."""
    data = packed.buffers()[1]
    width = packed.type.byte_width
    start, size = packed.offset * width, len(packed) * width
    if size <= 3 * SAMPLE_BYTES:
        samples = [data.slice(start, size)]
    else:
        samples = [data.slice(at, SAMPLE_BYTES) for at in
                   (start, start + (size - SAMPLE_BYTES) // 2, start + size - SAMPLE_BYTES)]
    taken = sum(sample.size for sample in samples)
    return taken == 0 or \
        sum(len(pa.compress(sample, "snappy", asbytes=True)) for sample in samples) < COMPRESS_BELOW * taken


@functools.lru_cache(maxsize=64)
def _leaf_paths(schema: pa.Schema) -> tuple[str, ...]:
    """The Parquet column paths of a table of this schema as `pq.write_table` lays it out (`metadata.elapsed`'s
    is `metadata.elapsed.list.element`): a per-column codec is given by these."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    parquet_schema = pq.read_metadata(sink.getvalue()).schema
    return tuple(parquet_schema.column(i).path for i in range(len(parquet_schema)))


SINK_SLACK = 256 * 1024
SINK_MAX = 64 * 1024 * 1024
"""A segment is written into one buffer of its table's Arrow size plus SINK_SLACK (Parquet's own bytes: page
headers, levels, the footer), allocated at once, instead of a stream that starts small and doubles: each doubling
copied what was written so far into fresh memory (~4 MiB more copying and the page faults of ~8 MiB of new memory
a 4 MiB segment; docs/performance.md item 68). Pages never written are never touched. Tables above SINK_MAX, and
a segment that does not fit (not met: Parquet's output of a log table is below its Arrow size but for the slack),
go to the growing stream."""


def encode_segment(table: pa.Table, row_group_rows: int) -> bytes:
    """`encode_segment_buffer` as `bytes` (the log store's writer)."""
    return encode_segment_buffer(table, row_group_rows).to_pybytes()


def encode_segment_buffer(table: pa.Table, row_group_rows: int) -> pa.Buffer:
    """The segment in the Arrow buffer Parquet wrote it to, not copied (an engine replica hands it to the PUT
    as it is: a `bytes` copy was one more segment, up to 4 MiB, per write in flight).

    Parquet with dictionaries for string columns only (model names and versions repeat; trying them on
    float tensors cost ten times the whole write) and statistics for `time` and `_pos` only (a page finds its
    first row from them). Numeric tensor columns without nulls are stored packed, one fixed-size binary value
    a row (writing them as nested lists took three times as long, reading them five times; `unpack_tensors`
    turns them back). Every column is snappy-compressed but a packed one whose samples snappy does not shrink
    (`COMPRESS_BELOW`): its pages are written as they are, which Parquet's readers read alike."""
    plan = layout(table.schema)
    stored_raw, packed_at = [], []
    for index, field, depth, kind, width, packed_field in plan.packs:
        packed = _pack(table.column(index), depth, kind, width)
        if packed is not None:
            table = table.set_column(index, packed_field, packed)
            packed_at.append(index)
            if not _compresses(packed):
                stored_raw.append(field.name)
    for index, relisted in plan.relists:
        table = table.set_column(index, relisted, table.column(index).cast(relisted.type))
    compression: str | dict[str, str] = "snappy"
    if stored_raw:  # a packed column is one Parquet column whose path is its name
        compression = plan.compression(table.schema, packed_at, stored_raw)
    options = {"row_group_size": row_group_rows, "compression": compression, "use_dictionary": plan.strings,
               "write_statistics": plan.statistics}
    room = table.nbytes + SINK_SLACK
    if room <= SINK_MAX:
        target = pa.allocate_buffer(room)
        sink = pa.FixedSizeBufferWriter(target)
        try:
            pq.write_table(table, sink, **options)
        except OSError:  # more than its Arrow size plus the slack ("Write out of bounds"): written again below,
            pass  # where any other error is raised again
        else:
            return target.slice(0, sink.tell())
    growing = pa.BufferOutputStream()
    pq.write_table(table, growing, **options)
    return growing.getvalue()


def _unpacked_field(field: pa.Field) -> tuple[pa.Field, np.dtype, list[int]] | None:
    """A packed tensor column's field (encode_segment) as `unpack_tensors` gives it back: nested fixed-size lists of
    its dtype, its other metadata kept; with the dtype and dims its values unpack by. None for any other field."""
    spec = (field.metadata or {}).get(TENSOR)
    if spec is None or not pa.types.is_fixed_size_binary(field.type):
        return None
    dtype_text, _, dims_text = spec.decode().partition(":")
    dtype, dims = np.dtype(dtype_text), [int(d) for d in dims_text.split(",")]
    kind = pa.from_numpy_dtype(dtype)
    for size in reversed(dims):
        kind = pa.list_(kind, size)
    metadata = {k: v for k, v in field.metadata.items() if k != TENSOR} or None
    return pa.field(field.name, kind, field.nullable, metadata), dtype, dims


def _unpack_chunk(chunk: pa.Array, dtype: np.dtype, dims: list[int]) -> pa.Array:
    width = chunk.type.byte_width
    raw = np.frombuffer(chunk.buffers()[1], np.uint8, len(chunk) * width, chunk.offset * width) if len(chunk) \
        else np.zeros(0, np.uint8)
    flat: pa.Array = pa.array(raw.view(dtype))
    for size in reversed(dims):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def unpack_tensors(table: pa.Table) -> pa.Table:
    """A segment's table with its packed tensor columns (encode_segment) as fixed-size lists again; segments
    written before packing pass as they are."""
    for index, field in enumerate(table.schema):
        found = _unpacked_field(field)
        if found is None:
            continue
        unpacked, dtype, dims = found
        column = pa.chunked_array([_unpack_chunk(c, dtype, dims) for c in table.column(index).chunks], unpacked.type)
        table = table.set_column(index, unpacked, column)
    return table


def unpack_schema(schema: pa.Schema) -> pa.Schema:
    """The schema `unpack_tensors` gives a segment's table of this schema, field by field (its packed tensors as
    fixed-size lists again). It built an empty table and unpacked it: ~170 us of the ~270 the first
    SegmentReader.fingerprint of each segment took, now ~10 us (tests/unit/test_log_segments_unpack_schema.py holds
    it equal to that table's schema)."""
    fields = []
    for field in schema:
        found = _unpacked_field(field)
        fields.append(field if found is None else found[0])
    return pa.schema(fields, metadata=schema.metadata)


def read_segment(data: pa.Buffer | bytes, schema: pa.Schema | list[str] | None = None) -> pa.Table:
    """The rows of a segment `encode_segment_buffer` wrote (its bytes), as the log table it was written from: tensor
    columns unpacked, the columns in the order of `schema` (or of a list of names) when given (a segment stores them
    in `storage_order`), the rows in the segment's (time) order. An engine replica reads back a segment whose PUT
    failed to send its rows through the stream, instead of holding the segment's table while the PUT is under way.

    Given the schema the segment was written from, the table comes back of that schema: Parquet has no
    timestamp[s], time32[s] nor date64, so they come back as timestamp[ms], time32[ms] and date32 (and a zero-size
    tensor column as lists, `_relisted`), whose fingerprint is another one's: the log store stored the read-back rows
    apart from the replica's segments, and pages saw a schema change. A table the cast refuses (a dictionary of
    timestamp[s]: read back as timestamp[ms], which Arrow does not cast to a dictionary) or whose columns are not
    the schema's (not met) comes back as read: its rows still go through the stream, where a raise here lost them
    (the caller counts a read that fails as a failed flush's)."""
    table = unpack_tensors(pq.read_table(pa.BufferReader(data), use_threads=False))
    names = schema.names if isinstance(schema, pa.Schema) else schema
    try:
        if names is not None and table.column_names != names:
            table = table.select(names)
        if isinstance(schema, pa.Schema) and not table.schema.equals(schema, check_metadata=True):
            table = table.cast(schema)
    except Exception:  # KeyError (a column missing), ValueError, any Arrow error of the cast: the rows as read
        pass
    return table


def unwritable(kind: pa.DataType, nested: bool = False) -> bool:
    """Types Parquet cannot hold: a struct with no fields (anywhere inside), unions, and a fixed-size list of size
    0 inside a struct or a map (`nested`), where `_relisted` (a column's own lists) does not reach: pyarrow writes
    it but cannot read it back (ArrowInvalid: a replica reading back a refused PUT's segment lost the whole flush)
    and a string one ends the process as it is written (the replica's, or the log store's again at each redelivery)."""
    if pa.types.is_struct(kind):
        return kind.num_fields == 0 or any(unwritable(kind.field(i).type, True) for i in range(kind.num_fields))
    if pa.types.is_union(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        if nested and pa.types.is_fixed_size_list(kind) and kind.list_size == 0:
            return True
        return unwritable(kind.value_type, nested)
    if pa.types.is_map(kind):
        return unwritable(kind.key_type, True) or unwritable(kind.item_type, True)
    if pa.types.is_dictionary(kind):
        return unwritable(kind.value_type, nested)
    return False


class SegmentRef(SegmentDescription):
    """What the log store indexes of a segment an engine stored: the `SegmentDescription` message (the body of a
    `Railyard-Segment` message), read and written here."""

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes, workspace_id: int, pipeline: str) -> SegmentRef:
        """Read and check a description (ValueError, pydantic's ValidationError included, when it is not one, or
        names an object outside the pipeline's segments)."""
        ref = cls.model_validate_json(data)
        prefix = key_prefix(workspace_id, pipeline)
        if not ref.key.startswith(prefix) or not _ENGINE_TAIL.fullmatch(ref.key[len(prefix):]):
            raise ValueError(f"the segment {ref.key[:200]!r} is not one of the pipeline's engine-written segments")
        if ref.rows <= 0 or ref.bytes <= 0 or ref.min_time > ref.max_time:
            raise ValueError("the segment description is inconsistent (rows, bytes or times)")
        return ref


def describe(table: pa.Table, key: str, size: int) -> SegmentRef:
    """A sorted table's description once stored as `key` (`size` bytes). An engine's batch table (one chunk a
    column, no null times, one pipeline version, no row that lost a column) is read without pyarrow.compute (each
    call ~20 us of Python around it, five a write); any other goes through it."""
    plan = layout(table.schema)
    times = table.column(TIME if plan.time is None else plan.time)
    if table.num_rows and times.num_chunks == 1 and not times.null_count and pa.types.is_integer(times.type):
        values = times.chunk(0).to_numpy()
        low, high = int(values.min()), int(values.max())
    else:
        low, high = int(pc.min(times).as_py()), int(pc.max(times).as_py())
    return SegmentRef(key=key, bytes=size, rows=table.num_rows, min_time=low, max_time=high,
                      schema_fp=plan.fingerprint, versions=_versions(table, plan.version),
                      dropped=_dropped(table, plan.dropped))


def _versions(table: pa.Table, index: int | str | None) -> list[str]:
    """The pipeline versions of the table's rows (pc.unique of its column at `index`, as text)."""
    if index is None:
        return []
    column = table.column(index)
    if column.num_chunks == 1 and table.num_rows and not column.null_count:
        chunk = column.chunk(0)
        if pa.types.is_dictionary(chunk.type) and len(chunk.dictionary) == 1:  # every row is its one value
            return [str(chunk.dictionary[0].as_py())]
    return [str(v) for v in pc.unique(column).to_pylist()]


def _dropped(table: pa.Table, index: int | str | None) -> list[str]:
    """`dropped_columns` (of the column at `index`): lists that hold no value at all (children empty) name
    nothing."""
    if isinstance(index, int):
        column = table.column(index)
        if pa.types.is_list(column.type) and all(len(chunk.values) == 0 for chunk in column.chunks):
            return []
    return dropped_columns(table)
