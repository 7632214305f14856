"""The engine's side of inference logging: records gathered and published to INFERENCE_LOGS, with a bounded
buffer.

Records of many requests are gathered and published as one Arrow message per schema (shared/logrecords.py has
the layout), waiting for JetStream's ack: `engine_flush_ms` after the first record of a batch, or as soon as the
records gathered reach `engine_flush_bytes` (a busy replica publishes about every 20 ms at batch 1000, an idle one
every 100 ms; each message costs JetStream a store and an fsync, its ack another, whatever its size). A batch
keeps its id across retries, so a publish that did arrive but whose ack was lost is not stored twice.

What the buffer holds: records not yet published and batches not yet acknowledged, at most
`engine_max_pending_rows` rows and `engine_max_pending_bytes` bytes (Arrow sizes). While JetStream refuses
writes (the stream at its byte cap, the server unreachable), a batch is retried with the same id, backing off to
one try every 5 s, for as long as the replica runs; records of new requests are still gathered until the buffer
is full. Past that, a new request's record is not logged: it is counted (`lost_rows`, `lost_records`, in
`stats()`, which the replica's status carries as `logs`, and in the replica's log every 10 s while it happens),
never dropped silently; inference itself goes on.
On a graceful stop the batcher publishes what it holds for at most `close_timeout` seconds and reports what it
could not.

A record the log batch cannot be made of (`build_batch` or its encoding raises: a malformed record) does not hold
up the others: only when a group's batch fails are its records tried one by one, those that fail alone are set
aside (counted in `lost_rows` / `lost_records` and in `malformed_rows` / `malformed_records`, logged with what was
wrong, at most every 10 s after the first), and the others are published as before, in their order, each once.
Anything else a flush raises is logged and counted the same way and the batcher goes on with the next records: its
task ends only with the replica.

With an object store (`logs.engine_segments`, the default) a batch's rows do not travel through the stream: the
batcher writes them as a Parquet segment (the log store's layout, shared/log_segments.py) under a new key of the
pipeline's, then publishes the segment's description (`SegmentRef`, ~300 bytes) with the batch's id, which the
log store indexes without reading the rows; gathering is then `engine_segment_ms` / `engine_segment_bytes`. The
bytes cross JetStream and the log store no more (docs/logs.md, "How records travel"): what is published after
the object is stored is what was acknowledged. A batch holding rows of a re-sent request (the log store drops them
when the request was stored before), a column Parquet cannot store, or one object storage refuses goes through
the stream as rows, as without a store, and so does a flush that gathered more than four times
`engine_segment_bytes` while the previous segment was being written (object storage not keeping up: the stream
holds the burst on disk, the log store writes it, as without segments).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from shared.arrow_codec import to_ipc_stream
from shared.log_segments import (
    ENGINE_SUFFIX,
    SEGMENT_HEADER,
    SegmentRef,
    describe,
    encode_segment_buffer,
    layout,
    read_segment,
    segment_key,
    sort_by_time,
    storage_ordered,
)
from shared.logrecords import (
    BATCH_ID,
    LOG_HEADER,
    META_DROPPED,
    MSG_ID,
    REQUESTS_HEADER,
    InferenceRecord,
    build_batch,
    drop_oversized,
    encode_runs,
    group_records,
    holds_dictionary,
    log_header,
    log_subject,
    named_dictionaries,
)
from shared.objectstore import BUCKET_LOGS
from shared.settings import LogSettings

log = logging.getLogger("railyard.engine")
WRITES_AT_ONCE = 2  # segment flushes under way at once: one PUT's wait no longer holds up the next segment
SEGMENT_PUT_TIMEOUT = 2.0  # seconds a PUT may take a SEGMENT_PUT_SHARE of its bytes (at least), or its rows go
SEGMENT_PUT_SHARE = 4 * 1024 * 1024  # (4 MiB: 50-100 ms into the embedded SeaweedFS at load; a 16 MiB one gets 8 s)
SPILL_FACTOR = 4  # a flush holding more than this many times engine_segment_bytes goes through the stream as rows
SEGMENT_BACKOFF = 30.0  # after a failed or timed-out PUT, batches go as rows through the stream for this long
RETRY_MAX_DELAY = 5.0
REPORT_EVERY = 10.0


def put_timeout(size: int, stopping: bool = False) -> float:
    """Seconds a segment's PUT of `size` bytes may take before its rows go through the stream: SEGMENT_PUT_TIMEOUT a
    SEGMENT_PUT_SHARE, never less than SEGMENT_PUT_TIMEOUT. A fixed 2 s gave a busy replica's 16 MiB segments
    (logs.engine_segment_bytes since session 37) a quarter of the time a byte its 4 MiB ones had, so a loaded host's
    PUT was cut, and the next SEGMENT_BACKOFF of batches sent as rows, four times as soon. While `stopping`,
    SEGMENT_PUT_TIMEOUT whatever the size: a full segment's 8 s is a stopping replica's whole DRAIN_LOGS, which
    left its rows no time to go through the stream when object storage was down (`LogBatcher.close`)."""
    if stopping:
        return SEGMENT_PUT_TIMEOUT
    return SEGMENT_PUT_TIMEOUT * max(1.0, size / SEGMENT_PUT_SHARE)


def _at_ms(record: InferenceRecord) -> int:
    return record.at_ms


def _rows_of(record: InferenceRecord) -> int:
    """A record's rows, 0 when even that cannot be read (a malformed record being set aside)."""
    try:
        return int(record.rows)
    except Exception:
        return 0


def _describe(record: InferenceRecord) -> str:
    """What a malformed record holds, for the log line saying it was set aside (never raises)."""
    parts = []
    for name in ("inputs", "outputs"):
        try:
            table = getattr(record, name)
            parts.append(f"{name} {table.num_rows} rows [{', '.join(table.column_names)[:200]}]")
        except Exception as exc:
            parts.append(f"{name} unreadable ({type(exc).__name__})")
    shadows = getattr(record, "shadows", None) or {}
    if shadows:
        parts.append(f"challengers {', '.join(shadows)[:100]}")
    return "; ".join(parts) + f"; last model {str(getattr(record, 'last_model', ''))[:120]}"


def _records_left(records: list[InferenceRecord], tables: list[tuple[pa.Table, list[int]]],
                  malformed: list[tuple[InferenceRecord, Exception]], unpublished: int) -> int:
    """The records a flush's last `unpublished` rows belong to, once its messages were made: the messages are
    published in order (the read-back tables' records, then each group's in `_encode`'s order), so those rows are
    the last ones of that order, and a record any of whose rows is among them was not logged whole. Worked out only
    when a flush ended with rows unpublished (a failure, a stop's timeout). Records set aside were counted apart; a
    row `_split` gave up on (counted apart too) is taken as published here."""
    bad = {id(record) for record, _ in malformed}
    order = [count for _, counts in tables for count in counts]
    order += [record.rows for group in group_records(records) for record in group if id(record) not in bad]
    lost = 0
    for count in reversed(order):
        if unpublished <= 0:
            break
        unpublished -= count
        lost += 1
    return lost


def _per_record(rows: list[int], counts: Iterable[int]) -> list[int]:
    """The rows `_split` gave up on (their positions in the table it cut) as the number each record lost, one entry
    per record (the table's records have `counts` rows each, in order): `lost_records` counts records, not rows."""
    if not rows:
        return []
    ends = list(itertools.accumulate(counts))
    return list(collections.Counter(bisect.bisect_right(ends, row) for row in rows).values())


def _record_bytes(record: InferenceRecord) -> int:
    return record.inputs.nbytes + record.outputs.nbytes + sum(t.nbytes for t in record.shadows.values())


class LogBatcher:
    """Gathers records and publishes them (see the module docstring for the bounds)."""

    def __init__(self, js, deployment: dict[str, Any], settings: LogSettings, max_payload: int,
                 objects: Any = None) -> None:
        self.js = js
        self.objects = objects if settings.engine_segments else None  # an ObjectStore: segments written here
        self.workspace_id = int(deployment.get("workspace_id") or 0)
        self.pipeline = deployment["pipeline"]
        if self.objects is not None:
            self.flush_ms, self.flush_bytes = settings.engine_segment_ms, settings.engine_segment_bytes
        else:
            self.flush_ms, self.flush_bytes = settings.engine_flush_ms, settings.engine_flush_bytes
        self.segment_failures = 0
        self.segments_after = 0.0  # monotonic time before which batches go as rows (object storage just failed)
        self.thread: ThreadPoolExecutor | None = None
        self.writes: set[asyncio.Task] = set()  # segment flushes under way (at most WRITES_AT_ONCE)
        # the timeouts of segment PUTs under way and the loop time each began: a stop, and half the buffer held,
        # shorten them (_cut_puts)
        self.puts: dict[asyncio.Timeout, float] = {}
        self.subject = log_subject(deployment["name"])
        self.header = log_header(int(deployment.get("workspace_id") or 0), deployment["pipeline"],
                                 deployment["name"], deployment["pipeline_version"])
        self.version = deployment["pipeline_version"]
        self.settings = settings
        self.max_bytes = max_payload - 64 * 1024
        self.pending: list[InferenceRecord] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.held_rows = 0  # pending plus published but not yet acknowledged
        self.held_bytes = 0
        self.held_records = 0  # the records of held_rows (lost_records when a stop's timeout loses them)
        self.abandoned_rows = 0  # rows of flushes that ended before the stream acknowledged them
        self.abandoned_records = 0  # records of those flushes some of whose rows were not acknowledged
        self.lost_rows = 0
        self.lost_records = 0
        self.refused_publishes = 0
        self.last_report = 0.0
        self.malformed_rows = 0  # records set aside: no log batch could be made of them (also in lost_*)
        self.malformed_records = 0
        self.last_malformed_report = 0.0
        self.failed_flushes = 0
        self.failed_records = 0  # records of failed flushes (also in lost_records): `logs_detail` tells them apart
        self.last_failed_report = 0.0  # _flush_failed's own: sharing set_aside's, either's reports hid the other's
        self.closing = False
        self.wake = asyncio.Event()
        self.full = asyncio.Event()  # the records gathered reached engine_flush_bytes: publish now

    def stats(self) -> dict[str, int]:
        """The log buffer's counts (what it holds, what it could not log and why); the replica's log says them too."""
        return {"held_rows": self.held_rows, "held_bytes": self.held_bytes, "lost_rows": self.lost_rows,
                "lost_records": self.lost_records, "refused_publishes": self.refused_publishes,
                "malformed_rows": self.malformed_rows, "malformed_records": self.malformed_records,
                "failed_flushes": self.failed_flushes, "failed_records": self.failed_records,
                "refused_segments": self.segment_failures}

    def add(self, record: InferenceRecord, size: int = 0) -> None:
        """Hold a record for the next publish; `size`, when known, is its bytes as `_record_bytes` counts them
        (measuring the tables is a few calls into Arrow per request)."""
        rows, size = record.rows, size or _record_bytes(record)
        if self.held_rows + rows > self.settings.engine_max_pending_rows or \
                self.held_bytes + size > self.settings.engine_max_pending_bytes:
            self.lost_rows += rows
            self.lost_records += 1
            self._report()
            return
        record.held_bytes = size
        self.pending.append(record)
        self.pending_rows += rows
        self.pending_bytes += size
        self.held_rows += rows
        self.held_records += 1
        self.held_bytes += size
        self.wake.set()
        if self.pending_bytes >= self.flush_bytes:
            self.full.set()
        if self.puts and self.held_bytes * 2 > self.settings.engine_max_pending_bytes:
            self._cut_puts(from_start=True)

    def _cut_puts(self, from_start: bool) -> None:
        """Segment PUTs under way get at most SEGMENT_PUT_TIMEOUT, from when each began (`from_start`: half the
        buffer is held, the run loop waiting for them while records pile up, as a fixed 2 s did before large
        segments got more) or from now (a stop: a full segment's 8 s was all of DRAIN_LOGS, leaving its rows no
        time to go through the stream). With object storage down, a 16 MiB segment's 8 s let a busy replica's
        records fill `engine_max_pending_bytes` and be lost; its rows now go through the stream instead."""
        now = asyncio.get_running_loop().time()
        for cut, began in self.puts.items():
            soon = max(now, began + SEGMENT_PUT_TIMEOUT) if from_start else now + SEGMENT_PUT_TIMEOUT
            if (when := cut.when()) is None or when > soon:
                cut.reschedule(soon)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_report >= REPORT_EVERY:
            self.last_report = now
            log.error("inference log buffer of %s full (%d rows, %d bytes held; the stream refused %d publishes): "
                      "%d rows of %d requests could not be logged so far", self.subject, self.held_rows,
                      self.held_bytes, self.refused_publishes, self.lost_rows, self.lost_records)

    async def run(self) -> None:
        """Sleeps until a record arrives (an idle replica does not wake up), then gathers for the interval or until
        the flush bytes are gathered; segments are written up to WRITES_AT_ONCE at a time."""
        interval = self.flush_ms / 1000
        while not self.closing:
            await self.wake.wait()
            if self.closing:
                break
            try:
                async with asyncio.timeout(interval):
                    await self.full.wait()
            except TimeoutError:
                pass
            self.wake.clear()
            self.full.clear()
            if self.pending and self.objects is None:
                try:
                    await self.flush()
                except Exception as exc:  # last resort: the next records are still published (flush counted)
                    self._flush_failed(exc)
            elif self.pending:  # segments: the next one is written while the last one's PUT is under way
                await self._writing(WRITES_AT_ONCE - 1)
                self.writes.add(asyncio.create_task(self.flush()))
        await self._writing(0)

    async def _writing(self, at_most: int) -> None:
        """Wait until at most `at_most` segment flushes are under way (a failed one raises here, as a flush did in
        `run`); cancelled, it cancels them (their rows count as abandoned, as a cancelled flush's)."""
        try:
            while len(self.writes) > at_most:
                done, _ = await asyncio.wait(self.writes, return_when=asyncio.FIRST_COMPLETED)
                self.writes -= done
                for task in done:
                    try:
                        task.result()
                    except Exception as exc:  # last resort, as in `run`: the batcher goes on
                        self._flush_failed(exc)
        except asyncio.CancelledError:
            for task in self.writes:
                task.cancel()
            raise

    def _flush_failed(self, exc: Exception, lost: int | None = None, records: int = 0) -> None:
        """A flush raised something its own handling did not expect (a malformed record is set aside in `_encode`):
        its rows not published (the flush's `abandoned_rows`) are lost, and its records some of whose rows were not
        (`abandoned_records`), counted and logged (with the traceback at most every REPORT_EVERY), and the batcher
        goes on: it waits for the next records as before, so a flush that keeps failing runs once per gathering,
        not in a loop. `lost` rows of `records` records instead: one group of a flush that failed alone
        (`_store_segment`), the flush's others going on. A segment object storage refused is not lost (its rows
        go through the stream) and counts nowhere here."""
        self.failed_flushes += 1
        if lost is None:
            lost, self.abandoned_rows = self.abandoned_rows, 0
            records, self.abandoned_records = self.abandoned_records, 0
        self.lost_rows += lost
        self.lost_records += records
        self.failed_records += records
        now = time.monotonic()
        if self.failed_flushes == 1 or now - self.last_failed_report >= REPORT_EVERY:
            self.last_failed_report = now
            log.error("a log flush of %s failed (%d so far): %d rows not logged (%d rows lost so far); going on "
                      "with the next records", self.subject, self.failed_flushes, lost, self.lost_rows, exc_info=exc)

    def set_aside(self, bad: list[tuple[InferenceRecord, Exception]]) -> None:
        """Records no log batch can be made of: counted as lost (and as malformed), never published; logged with
        what was wrong (the first with its traceback), at most every REPORT_EVERY."""
        rows = sum(_rows_of(record) for record, _ in bad)
        self.malformed_records += len(bad)
        self.malformed_rows += rows
        self.lost_records += len(bad)
        self.lost_rows += rows
        now = time.monotonic()
        if self.malformed_records == len(bad) or now - self.last_malformed_report >= REPORT_EVERY:
            self.last_malformed_report = now
            record, exc = bad[-1]
            log.error("%d inference log records of %s (%d rows) could not be made into a log batch and are not "
                      "logged (%d records, %d rows so far); the other records are. Last: %s (%s: %s)", len(bad),
                      self.subject, rows, self.malformed_records, self.malformed_rows, _describe(record),
                      type(exc).__name__, str(exc)[:300], exc_info=exc if self.malformed_records == len(bad) else None)

    async def close(self, task: asyncio.Task | None, timeout: float) -> None:
        """Graceful stop: let a flush under way finish, publish what is left, within `timeout` seconds."""
        self.closing = True
        self.wake.set()
        self.full.set()  # a gathering under way publishes now, not at the end of its interval
        # a segment PUT under way may have a large segment's time (put_timeout), up to all of `timeout`: it is cut
        # at SEGMENT_PUT_TIMEOUT from now, so with object storage down its rows still go through the stream
        self._cut_puts(from_start=False)
        deadline = time.monotonic() + timeout
        try:
            if task is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(task), max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    raise
                except Exception:  # the batcher's task failed: what it held is counted below, the rest published
                    log.exception("the inference log batcher of %s failed", self.subject)
            if self.pending:
                await asyncio.wait_for(self.flush(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # TimeoutError: the stream did not acknowledge in time
            if task is not None:
                task.cancel()
            for write in self.writes:  # segment flushes under way: cancelled, their rows counted below
                write.cancel()
            # rows still held (a flush of the task not yet cancelled, records never flushed) and rows of flushes
            # that ended unacknowledged (this close's own, cancelled by its timeout) are lost: counted, never silent
            lost = self.held_rows + self.abandoned_rows
            self.lost_records += self.held_records + self.abandoned_records
            self.abandoned_rows = self.abandoned_records = 0
            self.lost_rows += lost
            self._report(force=True)
            log.error("stopping: %d rows of %s were not acknowledged by the stream in %.0f s and are not logged (%s)",
                      lost, self.subject, timeout, type(exc).__name__)
        else:
            if self.abandoned_rows:
                self.lost_rows += self.abandoned_rows
                self.lost_records += self.abandoned_records
                self.abandoned_records = 0
                self._report(force=True)
                log.error("stopping: %d rows of %s were not logged (the batcher failed)", self.abandoned_rows,
                          self.subject)
                self.abandoned_rows = 0

    async def flush(self) -> None:
        records = self.pending
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        rows = sum(r.rows for r in records)
        size = sum(getattr(r, "held_bytes", 0) for r in records)
        unpublished = rows
        members = left = len(records)  # records not all of whose rows are published or counted (lost, set aside)
        payloads: list[tuple[bytes, dict[str, list[int]], int]] | None = None
        malformed: list[tuple[InferenceRecord, Exception]] = []  # records _encode set aside
        try:
            # records that piled up beyond 4x the threshold while the last segment was written: object storage
            # does not keep up (a PUT of 4 MiB took 50-100 ms into the embedded SeaweedFS at load), so these go
            # through the stream, which holds a burst on disk as before, instead of growing the replica's memory
            # towards engine_max_pending_bytes and then losing records
            # also as rows: while stopping (the stream is the quicker way to have them acknowledged) and for a
            # while after object storage failed or was slow (SEGMENT_BACKOFF: a refused or hanging PUT must not
            # hold the rows, whose answers are out, until a stop's timeout loses them)
            tables: list[tuple[pa.Table, list[int]]] = []  # segments' tables whose PUT failed: rows after all
            if self.objects is not None and size <= SPILL_FACTOR * self.flush_bytes and not self.closing \
                    and time.monotonic() >= self.segments_after:
                groups, records = group_records(records), []
                while groups:  # a group's records go once its table is built (_store_segment), not with the flush
                    group = groups.pop(0)
                    count, many = sum(r.rows for r in group), len(group)
                    stored = False if any(r.request_id for r in group) else await self._store_segment(group, count)
                    if stored is True or stored is None:  # None: its rows are lost, counted (_store_segment)
                        unpublished -= count
                        left -= many
                    elif stored is False:
                        records += group
                    else:
                        tables.append(stored)
            if records or tables:
                count = sum(r.rows for r in records) + sum(t.num_rows for t, _ in tables)
                # on the event loop up to 2000 rows: in a thread, the GIL it holds stalled the loop more than doing
                # it here (bench/log_flush_lag.py measured both, issue 20)
                dropped: list[int] = []  # rows _split gave up on (too big for the bus alone), one count a record
                payloads = await self._in_thread(self._encode, records, tables, malformed, dropped) \
                    if count > 2000 else self._encode(records, tables, malformed, dropped)
                if malformed:  # counted here, on the loop (not in the thread, beside add's counting)
                    self.set_aside(malformed)
                    left -= len(malformed)
                if dropped:  # before session 34 each row counted as a record: "1000 rows of 1000 requests" for one
                    self.lost_rows += sum(dropped)
                    self.lost_records += len(dropped)
                    self._report(force=True)
                unpublished -= count - sum(c for _, _, c in payloads)  # malformed and dropped: counted above
                for payload, requests, c in payloads:
                    await self._publish(payload, requests)
                    unpublished -= c
        finally:
            self.held_rows -= rows
            self.held_bytes -= size
            self.held_records -= members
            self.abandoned_rows += unpublished  # a flush cancelled (a stop's timeout) or failed
            if unpublished > 0:
                try:
                    left = left if payloads is None else _records_left(records, tables, malformed, unpublished)
                except Exception:  # a record whose rows or key cannot be read (not met): every record left counts
                    pass
                self.abandoned_records += left

    async def _in_thread(self, work: Any, *args: Any) -> Any:
        """`work(*args)` in the batcher's own thread (one thread, so one glibc arena for what the batch tables and
        Parquet writes allocate and free, not one per thread of the loop's default executor)."""
        if self.thread is None:
            self.thread = ThreadPoolExecutor(1, thread_name_prefix="log-batcher")
        return await asyncio.get_running_loop().run_in_executor(self.thread, work, *args)

    def _table(self, group: list[InferenceRecord]) -> pa.Table:
        return drop_oversized(build_batch(group, self.version), self.settings.max_row_bytes)

    def _segment(self, table: pa.Table) -> tuple[pa.Buffer, SegmentRef] | None:
        """The table as a segment (its bytes, in the Arrow buffer Parquet wrote them to: the PUT sends them from
        there, no `bytes` copy) and description, or None when a column cannot be stored."""
        if layout(table.schema).unwritable:  # the schema's checks and column order are worked out once
            return None
        table = sort_by_time(storage_ordered(table))
        key = segment_key(self.workspace_id, self.pipeline, ENGINE_SUFFIX)
        data = encode_segment_buffer(table, self.settings.row_group_rows)
        return data, describe(table, key, len(data))

    async def _store_segment(self, group: list[InferenceRecord], rows: int
                             ) -> bool | tuple[pa.Table, list[int]] | None:
        """Write a group's rows as a segment and publish its description: True; False when the records must go as
        rows; (the group's table, its records' rows) when the PUT failed, the table (read back from the segment's
        bytes) then going as rows; None when that read failed too: the group's rows are lost, counted here as a
        failed flush's (`_flush_failed`), and the flush's other groups still go. The records are in time order (a
        stable sort: the segment's own sort then has nothing to copy) and leave `group` once the table is built:
        from there on their request bytes are not held for the Parquet write and the PUT, only the table (memory:
        docs/performance.md item 31), and during the PUT only the segment's bytes (item 90)."""
        group.sort(key=_at_ms)
        try:
            # the table on the loop up to 2000 rows (as _encode), the Parquet write in a thread (it leaves the GIL)
            table = await self._in_thread(self._table, group) if rows > 2000 else self._table(group)
            made = await self._in_thread(self._segment, table)
        except Exception as exc:  # a column Parquet refuses: the log store sets it aside (drop_unwritable)
            log.warning("the inference log batch of %s cannot be written as a segment (%s); sending its rows",
                        self.subject, exc)
            return False
        if made is None:
            return False
        counts = [record.rows for record in group]
        group.clear()
        data, ref = made
        # the PUT holds the segment's bytes only, not also its table (~1.3x their size): two writes under way held
        # both while their PUTs waited for SeaweedFS (docs/performance.md item 90); a refused PUT's rows are read
        # back from the bytes
        schema = table.schema  # the read-back's types: Parquet gives timestamp[s] back as timestamp[ms] (read_segment)
        del table
        try:
            # the client's own retries take ~13 s when it is down; while stopping, one share's time (close)
            async with asyncio.timeout(put_timeout(len(data), self.closing)) as cut:
                self.puts[cut] = asyncio.get_running_loop().time()
                try:
                    await self.objects.put_bytes(BUCKET_LOGS, ref.key, data)
                finally:
                    self.puts.pop(cut, None)
        except Exception as exc:  # object storage unreachable or slow: the stream holds the rows meanwhile
            # (a PUT that completes after its timeout leaves an object no description names: maintenance removes it)
            self.segments_after = time.monotonic() + SEGMENT_BACKOFF
            self.segment_failures += 1
            if self.segment_failures % 10 == 1:
                log.warning("object storage refused an inference log segment of %s (%d so far): %s; sending the "
                            "rows through the stream", self.subject, self.segment_failures, exc)
            try:
                return await self._in_thread(read_segment, data, schema), counts
            except Exception as unreadable:  # no known type does (df147863 sends those as rows), a future one may
                self._flush_failed(unreadable, sum(counts), len(counts))
                return None
        await self._publish(ref.to_json(), {}, segment=True)
        return True

    def _encode(self, records: list[InferenceRecord], tables: list[tuple[pa.Table, list[int]]] = (),
                malformed: list[tuple[InferenceRecord, Exception]] | None = None, dropped: list[int] | None = None
                ) -> list[tuple[bytes, dict[str, list[int]], int]]:
        """(payload, the rows of requests to store once, rows) for each message the records make, and the batch
        tables (with their records' rows) of segments that could not be stored. Records no message can be made of
        go to `malformed` (`_salvage`), a row too big for the bus alone to `dropped` (`_split`): the caller counts
        both, once the messages are made (a group built again by `_salvage` would count its dropped rows twice; and
        this may run in the batcher's thread, where `lost_rows +=` raced add's on the loop)."""
        dropped = [] if dropped is None else dropped
        payloads: list[tuple[bytes, dict[str, list[int]], int]] = []
        for table, counts in tables:
            rows: list[int] = []
            payloads += self._split(encode_runs(table, counts), 0, {}, rows)
            dropped += _per_record(rows, counts)
        for group in group_records(records):
            try:
                payloads += self._payloads(group, dropped)
            except Exception:  # a malformed record: the others still go (only now tried one by one)
                payloads += self._salvage(group, [] if malformed is None else malformed, dropped)
        return payloads

    def _payloads(self, group: list[InferenceRecord], dropped: list[int]
                  ) -> list[tuple[bytes, dict[str, list[int]], int]]:
        """The messages of one group's records (one schema), in their order; rows `_split` gave up on go to
        `dropped` only when all the messages were made."""
        once: dict[str, list[int]] = {}
        row = 0
        for record in group:  # rows of records to be stored once (slow or re-sent requests)
            if record.request_id:
                once[record.request_id] = [row, record.rows]
            row += record.rows
        table = self._table(group)
        table = encode_runs(table, (record.rows for record in group))  # a value per record
        mine: list[int] = []
        payloads = self._split(table, 0, once, mine)
        dropped += _per_record(mine, (record.rows for record in group))
        return payloads

    def _salvage(self, group: list[InferenceRecord], malformed: list[tuple[InferenceRecord, Exception]],
                 dropped: list[int]) -> list[tuple[bytes, dict[str, list[int]], int]]:
        """A group whose messages could not be made: each record's batch is built alone, those that fail are set
        aside (in `malformed`, counted by the flush), the others go as one group again in their order, or, if
        that still fails (or none failed alone: only the records together did), each alone, any that fails then set
        aside too. Only run once a group failed: the usual flush builds each group once, as before."""
        good: list[InferenceRecord] = []
        bad: list[tuple[InferenceRecord, Exception]] = []
        for record in group:
            try:
                self._table([record])
            except Exception as alone:
                bad.append((record, alone))
            else:
                good.append(record)
        payloads: list[tuple[bytes, dict[str, list[int]], int]] = []
        if good and bad:
            try:
                payloads, good = self._payloads(good, dropped), []
            except Exception:  # the rest fail together too: each alone below
                pass
        for record in good:
            try:
                payloads += self._payloads([record], dropped)
            except Exception as alone:
                bad.append((record, alone))
        malformed += bad  # none when only records together failed (each then went alone)
        return payloads

    def _split(self, table: pa.Table, offset: int, once: dict[str, list[int]], dropped: list[int]
               ) -> list[tuple[bytes, dict[str, list[int]], int]]:
        payload = to_ipc_stream(table)
        if len(payload) > self.max_bytes and any(holds_dictionary(kind) for kind in table.schema.types):
            # a slice carries its table's whole dictionaries (Arrow sends them with each message): rows small each
            # but naming many distinct values (1,000 of 2 KB: a 2 MB dictionary) made every slice, down to one row,
            # too big, and all of them were lost. A slice too big keeps the values its rows name, then is cut (a
            # dictionary in a struct, list or map column too: until session 35 only top-level ones)
            named = named_dictionaries(table)
            if named is not table:
                table, payload = named, to_ipc_stream(named)
        if len(payload) > self.max_bytes and table.num_rows == 1 and META_DROPPED in table.column_names:
            # a fixed-width tensor keeps its value slots when drop_oversized nulls it: a row whose tensor alone is
            # above the bus limit stayed above it, the stream refused it, and the retries held up every later
            # batch of the deployment. Alone, the row goes without the columns it lost (metadata.dropped names them)
            lost = set(table.column(META_DROPPED)[0].as_py() or [])
            table = table.drop_columns([name for name in table.column_names if name in lost])
            payload = to_ipc_stream(table)
            if len(payload) > self.max_bytes:  # what must stay (time, metadata) is itself too big: lost (counted
                dropped.append(offset)  # by flush, per record: _per_record)
                return []
        if len(payload) <= self.max_bytes or table.num_rows == 1:
            mine: dict[str, list[int]] = {}
            for request_id, (start, count) in once.items():
                lo, hi = max(start, offset), min(start + count, offset + table.num_rows)
                if lo < hi:  # a request cut in two is stored once per part
                    key = request_id if (lo, hi) == (start, start + count) else f"{request_id}/{lo - start}"
                    mine[key] = [lo - offset, hi - lo]
            return [(payload, mine, table.num_rows)]
        half = table.num_rows // 2
        return self._split(table.slice(0, half), offset, once, dropped) + \
            self._split(table.slice(half), offset + half, once, dropped)

    async def _publish(self, payload: bytes, requests: dict[str, list[int]], segment: bool = False) -> None:
        batch_id = str(uuid.uuid4())
        headers = {MSG_ID: batch_id, BATCH_ID: batch_id, LOG_HEADER: self.header}
        if segment:
            headers[SEGMENT_HEADER] = "1"
        if requests:
            headers[REQUESTS_HEADER] = json.dumps(requests, separators=(",", ":"))
        delay = 0.1
        while True:
            try:
                await self.js.publish(self.subject, payload, headers=headers)
                return
            except Exception as exc:  # refused (stream full) or unreachable: retry with the same id
                self.refused_publishes += 1
                if self.refused_publishes % 10 == 1:
                    log.error("the stream refused a log batch of %s (%d so far; retrying, %d rows held): %s",
                              self.subject, self.refused_publishes, self.held_rows, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
