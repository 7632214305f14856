"""Parquet segments in object storage: writing one, and reading a range of its rows without downloading
the whole object (the footer is cached per segment; row groups are fetched with ranged GETs, and the row groups a
page of a large segment read are kept for the pages after it)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from shared.lean_imports import lazy_module
from shared.log_segments import (  # noqa: F401 - the layout both writers share
    POS,
    TENSOR,
    encode_segment,
    unpack_schema,
    unpack_tensors,
)
from shared.log_segments import unwritable as _unwritable
from shared.logrecords import META_DROPPED, schema_fingerprint
from shared.objectstore import BUCKET_LOGS, MinioObjectStore, RangedFile

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
else:  # imported with the first log batch or read, not at start (~50 MiB of RSS idle)
    np = lazy_module("numpy")
    pa = lazy_module("pyarrow")
    pq = lazy_module("pyarrow.parquet")

SMALL_OBJECT = 4 * 1024 * 1024  # segments up to this size are fetched whole and kept in memory
TAIL_PREFETCH = 64 * 1024
COALESCE_GAP = 64 * 1024  # byte ranges closer than this are fetched as one
PARALLEL_GETS = 8
GROUP_CACHE_BYTES = 64 * 1024 * 1024  # decoded row groups of large segments kept for the next pages
GROUP_CACHE_SHARE = 2  # a row group above half of that is read for its page and not kept (a quarter, 16 MiB,
# left out a full 16 MiB engine segment of rows above ~2 KB: one row group, fetched again for every page)

GroupKey = tuple[str, int, tuple[str, ...] | None]  # (object key, row group, columns read; None: all of them)


def _coalesce(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _fetch_ranges(objects: MinioObjectStore, key: str, ranges: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    from concurrent.futures import ThreadPoolExecutor

    def one(span: tuple[int, int]) -> tuple[int, bytes]:
        return span[0], objects.read_range_sync(BUCKET_LOGS, key, span[0], span[1] - span[0])

    with ThreadPoolExecutor(PARALLEL_GETS) as pool:
        return list(pool.map(one, ranges))


def _encodes(column: pa.ChunkedArray, name: str) -> bool:
    try:
        pq.write_table(pa.table({name: column.slice(0, 1)}), pa.BufferOutputStream())
        return True
    except (pa.ArrowException, ValueError, TypeError):
        return False


def drop_unwritable(table: pa.Table, probe: bool = False) -> tuple[pa.Table, list[str]]:
    """The table without the input/output columns Parquet cannot store (an empty struct, a union; with `probe`,
    any column that fails to encode on its own), each row's `metadata.dropped` listing them, and their names.
    `time` and metadata are never dropped: a batch whose own columns cannot be stored is quarantined instead."""
    bad = [name for name in table.column_names if name.startswith(("in.", "out.", "out_"))
           and (_unwritable(table.schema.field(name).type) or (probe and not _encodes(table.column(name), name)))]
    if not bad:
        return table, []
    table = table.drop_columns(bad)
    existing = table.column(META_DROPPED).to_pylist() if META_DROPPED in table.column_names else \
        [[] for _ in range(table.num_rows)]
    merged = pa.array([(old or []) + bad for old in existing], pa.list_(pa.string()))
    if META_DROPPED in table.column_names:
        return table.set_column(table.schema.get_field_index(META_DROPPED), META_DROPPED, merged), bad
    return table.append_column(META_DROPPED, merged), bad


def range_file(objects: MinioObjectStore, key: str, size: int, prefetch_tail: bool) -> RangedFile:
    """A log segment as a file whose reads are ranged GETs (its last TAIL_PREFETCH bytes fetched at once when the
    footer is not known yet)."""
    return RangedFile(lambda offset, length: objects.read_range_sync(BUCKET_LOGS, key, offset, length), size,
                      TAIL_PREFETCH if prefetch_tail else 0)


class SegmentReader:
    """Reads rows of segments; thread-safe (called from worker threads)."""

    def __init__(self, objects: MinioObjectStore, cache_bytes: int = 256 * 1024 * 1024,
                 group_cache_bytes: int = GROUP_CACHE_BYTES) -> None:
        self.objects = objects
        self.cache_bytes = cache_bytes
        self.group_cache_bytes = group_cache_bytes
        # a segment's object is never rewritten (a new one gets a new key), so its key names its row groups' bytes
        self.groups: OrderedDict[GroupKey, pa.Table] = OrderedDict()
        self.groups_bytes = 0
        self.lock = threading.Lock()
        self.footers: OrderedDict[str, pq.FileMetaData] = OrderedDict()
        self.small: OrderedDict[str, bytes] = OrderedDict()
        self.small_bytes = 0
        self.bounds: OrderedDict[str, list] = OrderedDict()  # group_bounds per segment
        self.names: OrderedDict[str, list[str]] = OrderedDict()  # column names per segment
        self.fingerprints: OrderedDict[str, str] = OrderedDict()  # the schema a page reads per segment

    def remember(self, key: str, data: bytes) -> None:
        """Keep a just-written segment (small ones whole, large ones' footer)."""
        if len(data) <= SMALL_OBJECT:
            self._keep_small(key, data)
        else:
            self._keep_footer(key, pq.read_metadata(pa.BufferReader(data)))

    def forget(self, key: str) -> None:
        with self.lock:
            self.footers.pop(key, None)
            self.bounds.pop(key, None)
            self.names.pop(key, None)
            self.fingerprints.pop(key, None)
            data = self.small.pop(key, None)
            if data is not None:
                self.small_bytes -= len(data)
            for entry in [k for k in self.groups if k[0] == key]:
                self.groups_bytes -= self.groups.pop(entry).nbytes

    def _keep_small(self, key: str, data: bytes) -> None:
        with self.lock:
            if key in self.small:
                self.small.move_to_end(key)
                return
            self.small[key] = data
            self.small_bytes += len(data)
            while self.small_bytes > self.cache_bytes and self.small:
                _, dropped = self.small.popitem(last=False)
                self.small_bytes -= len(dropped)

    def _keep_footer(self, key: str, metadata: pq.FileMetaData) -> None:
        with self.lock:
            self.footers[key] = metadata
            self.footers.move_to_end(key)
            while len(self.footers) > 4096:
                self.footers.popitem(last=False)

    def _open(self, key: str, size: int) -> pq.ParquetFile:
        if size <= SMALL_OBJECT:
            with self.lock:
                data = self.small.get(key)
                if data is not None:
                    self.small.move_to_end(key)
            if data is None:
                data = self.objects.read_range_sync(BUCKET_LOGS, key, 0, size)
                self._keep_small(key, data)
            with self.lock:
                metadata = self.footers.get(key)
            parquet = pq.ParquetFile(pa.BufferReader(data), metadata=metadata)
            if metadata is None:  # a page opens a segment twice or more: parse its footer once
                self._keep_footer(key, parquet.metadata)
            return parquet
        with self.lock:
            metadata = self.footers.get(key)
        source = range_file(self.objects, key, size, prefetch_tail=metadata is None)
        parquet = pq.ParquetFile(source, metadata=metadata, pre_buffer=True)
        if metadata is None:
            self._keep_footer(key, parquet.metadata)
        return parquet

    def group_bounds(self, key: str, size: int) -> list[tuple[int, int | None, int | None, int | None, int | None]]:
        """Per row group: (rows, min time, max time, min _pos, max _pos), None where there is no statistic
        (a segment never changes: computed once and kept with its footer)."""
        with self.lock:
            cached = self.bounds.get(key)
        if cached is not None:
            return cached
        metadata = self._open(key, size).metadata
        names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
        t_index = names.index("time")
        p_index = names.index(POS) if POS in names else None
        out = []
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            t_stats = group.column(t_index).statistics
            tmin, tmax = (t_stats.min, t_stats.max) if t_stats is not None and t_stats.has_min_max else (None, None)
            pmin = pmax = None
            if p_index is not None:
                p_stats = group.column(p_index).statistics
                if p_stats is not None and p_stats.has_min_max:
                    pmin, pmax = p_stats.min, p_stats.max
            out.append((group.num_rows, tmin, tmax, pmin, pmax))
        with self.lock:
            self.bounds[key] = out
            while len(self.bounds) > 4096:
                self.bounds.popitem(last=False)
        return out

    def columns(self, key: str, size: int) -> list[str]:
        with self.lock:
            names = self.names.get(key)
        if names is None:
            names = self._open(key, size).schema_arrow.names
            with self.lock:
                self.names[key] = names
                while len(self.names) > 4096:
                    self.names.popitem(last=False)
        return list(names)

    def fingerprint(self, key: str, size: int) -> str:
        """The schema fingerprint of the segment's rows as a page reads them (tensors unpacked, without `_pos`):
        equal for segments whose rows concatenate as read. Not its index row's `schema_fp` (the batch it was written
        from): a merge before session 33 took the fingerprint of its rows read back, where Parquet gives
        timestamp[s], time32[s] and date64 as timestamp[ms], time32[ms] and date32, so such a merged segment and the
        fresh ones after it differ there though a page reads both alike."""
        with self.lock:
            found = self.fingerprints.get(key)
        if found is None:
            schema = unpack_schema(self._open(key, size).schema_arrow)
            found = schema_fingerprint(pa.schema([field for field in schema if field.name != POS]))
            with self.lock:
                self.fingerprints[key] = found
                while len(self.fingerprints) > 4096:
                    self.fingerprints.popitem(last=False)
        return found

    def read(self, key: str, size: int, lo: int, hi: int, columns: list[str] | None) -> pa.Table:
        """Rows lo .. hi-1 of the segment (positions relative to its first row)."""
        parquet = self._open(key, size)
        metadata = parquet.metadata
        starts = np.concatenate([[0], np.cumsum([metadata.row_group(i).num_rows
                                                 for i in range(metadata.num_row_groups)])])
        groups = [i for i in range(metadata.num_row_groups) if starts[i] < hi and starts[i + 1] > lo]
        if not groups:
            empty = unpack_schema(parquet.schema_arrow).empty_table()
            return empty.select(columns) if columns else empty
        if size <= SMALL_OBJECT:  # the whole object is in memory already
            table = unpack_tensors(parquet.read_row_groups(groups, columns=columns))
        else:
            table = pa.concat_tables(self._row_groups(parquet, key, groups, columns))
        first = int(starts[groups[0]])
        return table.slice(lo - first, hi - lo)

    def _cached_group(self, key: str, group: int, columns: list[str] | None) -> pa.Table | None:
        """A kept row group holding `columns` (a read of more columns of it serves a read of fewer)."""
        wanted = None if columns is None else tuple(columns)  # [] (no column) is not None (every column)
        with self.lock:
            for (k, g, kept), table in self.groups.items():
                if k != key or g != group or not (kept is None or (wanted is not None and set(wanted) <= set(kept))):
                    continue
                self.groups.move_to_end((k, g, kept))
                return table if wanted is None or kept == wanted else table.select(list(wanted))
        return None

    def _row_groups(self, parquet: pq.ParquetFile, key: str, groups: list[int],
                    columns: list[str] | None) -> list[pa.Table]:
        """Row groups of a large segment, each read once while kept: a client following the cursor with pages
        smaller than a row group (8,192 rows) read the same group again, by a ranged GET, for every page."""
        out = []
        for g in groups:
            table = self._cached_group(key, g, columns)
            if table is None:  # one read per group: a kept group holds its own buffers, not a slice of others'
                table = unpack_tensors(parquet.read_row_groups([g], columns=columns))
                self._keep_group((key, g, None if columns is None else tuple(columns)), table)
            out.append(table)
        return out

    def _keep_group(self, entry: GroupKey, table: pa.Table) -> None:
        size = table.nbytes
        if size > self.group_cache_bytes // GROUP_CACHE_SHARE:
            return
        with self.lock:
            if entry in self.groups:
                return
            self.groups[entry] = table
            self.groups_bytes += size
            while self.groups_bytes > self.group_cache_bytes and self.groups:
                _, dropped = self.groups.popitem(last=False)
                self.groups_bytes -= dropped.nbytes

    def read_columns(self, key: str, size: int, columns: list[str], groups: list[int] | None = None) -> pa.Table:
        """Some columns of (some row groups of) a segment. For a large segment the byte ranges of exactly those
        column chunks are fetched first, several at a time, so the read costs a few parallel GETs, not one per
        chunk in turn."""
        if size <= SMALL_OBJECT:
            parquet = self._open(key, size)
            groups = list(range(parquet.metadata.num_row_groups)) if groups is None else groups
            return unpack_tensors(parquet.read_row_groups(groups, columns=columns))
        with self.lock:
            metadata = self.footers.get(key)
        source = range_file(self.objects, key, size, prefetch_tail=metadata is None)
        if metadata is None:
            metadata = pq.ParquetFile(source).metadata
            self._keep_footer(key, metadata)
        groups = list(range(metadata.num_row_groups)) if groups is None else groups
        wanted = set(columns)
        ranges = []
        for index in groups:
            group = metadata.row_group(index)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema.split(".list.")[0] in wanted or chunk.path_in_schema in wanted:
                    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
                    ranges.append((start, start + chunk.total_compressed_size))
        source.blocks += _fetch_ranges(self.objects, key, _coalesce(sorted(ranges), COALESCE_GAP))
        return unpack_tensors(pq.ParquetFile(source, metadata=metadata).read_row_groups(groups, columns=columns))

    def read_all(self, key: str, size: int) -> pa.Table:
        parquet = self._open(key, size)
        return unpack_tensors(parquet.read())


def empty_page() -> pa.Table:
    return pa.table({"time": pa.array([], pa.int64())})
