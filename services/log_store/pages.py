"""get_logs pages: a pipeline's rows of every schema merged by time.

The order of a page is (time, position): `time` is the row's inference time, `position` the number the log store
gave it when it stored it (per pipeline, in storage order), which breaks ties and never changes. `Asc` walks that
order up, `Desc` down. A cursor is the (time, position) of the last row returned, so the next page starts
exactly after it whichever segments exist by then: compaction rewrites rows with the positions they had, and a
record stored later with an older time than the cursor is not slipped in behind a reader that has passed it (it
is found by a new read from the start).

Every segment written since this order exists holds its rows sorted by (time, position) and has per-row-group
statistics of both, so a page finds its first row from the Parquet footer and reads only the row groups it
returns. Segments of several schemas (or overlapping in time) are merged: each open segment has a *floor*, the
smallest key it can still yield (exact when a window of its rows is loaded, from the statistics of the row group
it resumes in otherwise); rows of the segment with the lowest floor are returned while they stay below every other
floor and below the first time of the next segment not yet opened. A page never mixes schemas: where the next row
in order has another schema the page ends with `SchemaChange`. Segments written before (unsorted) are read whole
and sorted in memory until compaction rewrites them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from services.log_store import store
from services.log_store.segments import POS, SegmentReader, empty_page
from shared.errors import InvalidRequest
from shared.lean_imports import lazy_module
from shared.logrecords import DROPPED_WARNING, META_DROPPED, TIME, display_order, dropped_columns, select_columns
from shared.messages.logs import GetLogs, LogPage

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
else:  # imported with the first log batch or read, not at start (~50 MiB of RSS idle)
    np = lazy_module("numpy")
    pa = lazy_module("pyarrow")

SEGMENTS_PER_QUERY = 16
MIN_WINDOW = 256  # fewest rows read from a segment at a time
KEY_LOW = -(2**62)
KEY_HIGH = 2**62

Key = tuple[int, int]


def encode_cursor(time_ms: int, position: int, order: str) -> str:
    """The cursor after the row (time_ms, position) in `order`."""
    raw = json.dumps({"t": int(time_ms), "p": int(position), "o": order}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> Key:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key, cursor_order = (int(data["t"]), int(data["p"])), data["o"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor is not one this API returned (pass x-iteration-cursor unchanged)") from None
    if cursor_order != order or key[1] < 0:
        raise InvalidRequest(f"cursor was made for order {cursor_order}; ask with the same order")
    return key


def _count_below(times: np.ndarray, positions: np.ndarray, key: Key, inclusive: bool) -> int:
    """Rows whose (time, position) is below key (or equal, when inclusive); any order of rows."""
    t, p = key
    same = times == t
    below = (positions <= p) if inclusive else (positions < p)
    return int(np.count_nonzero((times < t) | (same & below)))


def _below_in_sorted(kt: np.ndarray, kp: np.ndarray, key: Key) -> int:
    """How many leading rows of keys sorted ascending are strictly below key."""
    i = int(np.searchsorted(kt, key[0], "left"))
    j = int(np.searchsorted(kt, key[0], "right"))
    return i + int(np.searchsorted(kp[i:j], key[1], "left"))


class _Source:
    """One segment's rows still to come in page order (keys normalised so that page order is ascending:
    (time, position) for Asc, (-time, -position) for Desc), read a window at a time. Blocking: run in a thread."""

    def __init__(self, reader: SegmentReader, seg: Any, cmd: GetLogs, desc: bool) -> None:
        self.reader, self.seg, self.desc = reader, seg, desc
        self.sign = -1 if desc else 1
        key, size = seg["object_key"], seg["bytes"]
        names = reader.columns(key, size)
        # the schema the page reads, not the index's schema_fp: a segment merged before session 33 has its rows'
        # read-back fingerprint there, another one than the fresh segments' of the same columns (timestamp[s],
        # time32[s], date64), and pages ended with SchemaChange between them (SegmentReader.fingerprint)
        self.fp = reader.fingerprint(key, size)
        self.has_pos = POS in names
        columns = select_columns([n for n in names if n != POS], cmd.dataset, cmd.dataset_exclude)
        if META_DROPPED in names and META_DROPPED not in columns:
            columns.append(META_DROPPED)
        self.columns = columns + ([POS] if self.has_pos else [])
        self.lo, self.hi = 0, int(seg["row_count"])
        self.table: pa.Table | None = None
        self.kt = self.kp = np.zeros(0, np.int64)
        self.memory: pa.Table | None = None
        if seg["sorted"]:
            bounds = reader.group_bounds(key, size)
            self.group_rows = [b[0] for b in bounds]
            self.starts = np.concatenate([[0], np.cumsum(self.group_rows)]).astype(np.int64)
            self.bounds = []
            for g, (_, tmin, tmax, pmin, pmax) in enumerate(bounds):
                if not self.has_pos:  # a fresh segment numbers its rows from first_pos
                    pmin, pmax = seg["first_pos"] + int(self.starts[g]), seg["first_pos"] + int(self.starts[g + 1]) - 1
                self.bounds.append((tmin, tmax, pmin, pmax))
        else:  # written before rows were sorted: sort the whole segment in memory
            table = reader.read_all(key, size)
            times = table.column(TIME).to_numpy()
            positions = self._positions(table, 0)
            order = np.lexsort((positions, times))
            self.memory = table.select(columns).take(pa.array(order))
            self.mem_t, self.mem_p = times[order], positions[order]

    def _positions(self, table: pa.Table, first_row: int) -> np.ndarray:
        if self.has_pos:
            return table.column(POS).to_numpy().astype(np.int64)
        return np.arange(first_row, first_row + table.num_rows, dtype=np.int64) + int(self.seg["first_pos"])

    def count_below(self, key: Key, inclusive: bool) -> int:
        """Rows of the segment whose (time, position) is below key (or equal, when inclusive)."""
        if self.memory is not None:
            return _count_below(self.mem_t, self.mem_p, key, inclusive)
        t, p = key
        total = 0
        for g, (tmin, tmax, pmin, pmax) in enumerate(self.bounds):
            rows = self.group_rows[g]
            known = tmin is not None and pmin is not None
            if known and (tmax < t or (tmin == tmax == t and (pmax < p or (inclusive and pmax == p)))):
                total += rows
                continue
            if known and (tmin > t or (tmin == tmax == t and (pmin > p or (not inclusive and pmin == p)))):
                break  # sorted: no later group is below either
            lo, hi = int(self.starts[g]), int(self.starts[g + 1])
            part = self.reader.read(self.seg["object_key"], self.seg["bytes"], lo, hi,
                                    [TIME] + ([POS] if self.has_pos else []))
            total += _count_below(part.column(TIME).to_numpy(), self._positions(part, lo), key, inclusive)
        return total

    def restrict(self, cursor: Key | None, start: int | None, end: int | None) -> None:
        """Keep the rows after the cursor in page order and inside [start, end]."""
        if start is not None:
            self.lo = max(self.lo, self.count_below((start, KEY_LOW), False))
        if end is not None:
            self.hi = min(self.hi, self.count_below((end, KEY_HIGH), True))
        if cursor is not None:
            if self.desc:
                self.hi = min(self.hi, self.count_below(cursor, False))
            else:
                self.lo = max(self.lo, self.count_below(cursor, True))

    def more(self) -> bool:
        return len(self.kt) > 0 or self.lo < self.hi

    def loaded(self) -> bool:
        return len(self.kt) > 0

    def floor(self) -> Key:
        """The smallest key the segment can still yield (normalised); exact once loaded."""
        if len(self.kt):
            return int(self.kt[0]), int(self.kp[0])
        if self.memory is not None:
            row = self.hi - 1 if self.desc else self.lo
            return self.sign * int(self.mem_t[row]), self.sign * int(self.mem_p[row])
        row = self.hi - 1 if self.desc else self.lo
        g = int(np.searchsorted(self.starts, row, "right")) - 1
        tmin, tmax, pmin, pmax = self.bounds[g]
        if tmin is None or pmin is None:
            return KEY_LOW, KEY_LOW  # unknown: load it first
        return (-tmax, -pmax) if self.desc else (tmin, pmin)

    def load(self, rows: int) -> None:
        if self.desc:
            a, b = max(self.lo, self.hi - rows), self.hi
            self.hi = a
        else:
            a, b = self.lo, min(self.hi, self.lo + rows)
            self.lo = b
        if self.memory is not None:
            table, times, positions = self.memory.slice(a, b - a), self.mem_t[a:b], self.mem_p[a:b]
        else:
            table = self.reader.read(self.seg["object_key"], self.seg["bytes"], a, b, self.columns)
            times, positions = table.column(TIME).to_numpy(), self._positions(table, a)
            if self.has_pos:
                table = table.drop_columns([POS])
        if self.desc:
            reverse = np.arange(table.num_rows - 1, -1, -1)
            table, times, positions = table.take(pa.array(reverse)), times[reverse], positions[reverse]
        self.table = table
        self.kt, self.kp = self.sign * times.astype(np.int64), self.sign * positions

    def below(self, key: Key | None) -> int:
        """Loaded rows before key (all of them when key is None)."""
        return len(self.kt) if key is None else _below_in_sorted(self.kt, self.kp, key)

    def take(self, rows: int) -> tuple[pa.Table, Key]:
        """The next `rows` loaded rows and the (time, position) of the last one, as a cursor holds it."""
        piece = self.table.slice(0, rows)
        last = (self.sign * int(self.kt[rows - 1]), self.sign * int(self.kp[rows - 1]))
        self.table = self.table.slice(rows)
        self.kt, self.kp = self.kt[rows:], self.kp[rows:]
        return piece, last


def _open(reader: SegmentReader, seg: Any, cmd: GetLogs, desc: bool, cursor: Key | None) -> _Source:
    source = _Source(reader, seg, cmd, desc)
    source.restrict(cursor, cmd.start_ms, cmd.end_ms)
    return source


async def scan(pool: Any, reader: SegmentReader, pipeline_id: int, cmd: GetLogs, cursor: Key | None,
               page_max_bytes: int) -> tuple[pa.Table, LogPage]:
    """One page after `cursor` and what to say about it (status, cursor, warning)."""
    desc = cmd.order == "Desc"
    start, end = cmd.start_ms, cmd.end_ms
    bound = cursor  # segments wholly on the far side of the cursor are never listed
    queue: deque[Any] = deque()
    listed_all, after = False, None
    sources: list[_Source] = []
    pieces: list[pa.Table] = []
    fingerprint: str | None = None
    remaining, used = cmd.page_size, 0
    status: str | None = None
    last: Key | None = None
    while status is None:
        if not queue and not listed_all:
            rows = await store.segments_by_time(pool, pipeline_id, desc, bound, start, end, after, SEGMENTS_PER_QUERY)
            queue.extend(rows)
            listed_all = len(rows) < SEGMENTS_PER_QUERY
            if rows:
                after = (rows[-1]["max_time"], rows[-1]["last_pos"]) if desc else \
                    (rows[-1]["min_time"], rows[-1]["first_pos"])
        sources = [s for s in sources if s.more()]
        floors = sorted(((s.floor(), index) for index, s in enumerate(sources)))
        # the smallest key the next unopened segment can yield: a row's key is never below (min_time, first_pos)
        # (Asc) nor above (max_time, last_pos) (Desc)
        upcoming = ((-queue[0]["max_time"], -queue[0]["last_pos"]) if desc
                    else (queue[0]["min_time"], queue[0]["first_pos"])) if queue else None
        if upcoming is not None and (not floors or upcoming <= floors[0][0]):
            seg = queue.popleft()
            sources.append(await asyncio.to_thread(_open, reader, seg, cmd, desc, cursor))
            continue
        if not floors:
            status = "All"
            break
        best = sources[floors[0][1]]
        if not best.loaded():
            await asyncio.to_thread(best.load, max(remaining, MIN_WINDOW))
            continue
        if fingerprint is not None and best.fp != fingerprint:
            status = "SchemaChange"
            break
        fingerprint = best.fp
        limits = [f for f, _ in floors[1:]] + ([upcoming] if upcoming is not None else [])
        available = best.below(min(limits) if limits else None)
        take = min(available, remaining)
        per_row = max(1.0, best.table.nbytes / max(best.table.num_rows, 1))
        fits = int((page_max_bytes - used) // per_row)
        byte_limited = fits < take
        if byte_limited:
            take = max(fits, 0 if pieces else 1)
        if take == 0:
            status = "ByteLimited"
            break
        piece, last = best.take(take)
        pieces.append(piece)
        used += int(per_row * take)
        remaining -= take
        if byte_limited:
            status = "ByteLimited"
        elif remaining == 0:
            status = "RecordLimited"
    # one fingerprint, but a compacted segment's lists may name their items differently: cast to the first
    pieces = [p if p.schema.equals(pieces[0].schema) else p.cast(pieces[0].schema) for p in pieces]
    page = display_order(pa.concat_tables(pieces)) if pieces else empty_page()
    dropped = dropped_columns(page)
    warning = DROPPED_WARNING.format(columns=", ".join(dropped)) if dropped else None
    if META_DROPPED in page.column_names and \
            META_DROPPED not in select_columns([META_DROPPED], cmd.dataset, cmd.dataset_exclude):
        page = page.drop_columns([META_DROPPED])
    next_cursor = None if status == "All" or last is None else encode_cursor(last[0], last[1], cmd.order)
    if status != "All" and next_cursor is None:  # nothing returned yet the page stopped: cannot happen, be safe
        status = "All"
    return page, LogPage(status=status, cursor=next_cursor, warning=warning, rows=page.num_rows)
