"""Inference log messages (log_store service)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.messages.base import Command, Event, Message


def _utc_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a time without an offset is read as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class GetLogs(Command):
    """`pipelines/get_logs`: a page of a pipeline's inference log, newest first unless order is Asc."""

    pipeline_id: str = Field(min_length=1, description="The pipeline's name.")
    workspace_id: int
    cursor: str | None = Field(None, description="x-iteration-cursor of the previous page.")
    order: Literal["Asc", "Desc"] = "Desc"
    page_size: int = Field(1000, ge=1, description="Most records in the page.")
    start_time: datetime | None = Field(None, description="RFC 3339; must come with end_time.")
    end_time: datetime | None = Field(None, description="RFC 3339; must come with start_time.")
    dataset: list[str] = Field(default_factory=lambda: ["*"], description="Groups or columns to return: *, time, "
                               "in, out, metadata, out_<challenger>, or one column such as in.tensor.")
    dataset_exclude: list[str] = Field(default_factory=list, description="Groups or columns to leave out.")

    @field_validator("order", mode="before")
    @classmethod
    def _order(cls, value: object) -> object:
        return value.capitalize() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _times(self) -> GetLogs:
        if (self.start_time is None) != (self.end_time is None):
            raise ValueError("start_time and end_time go together: give both or neither")
        if self.start_time is not None and self.end_time is not None and self.start_ms > self.end_ms:
            raise ValueError("start_time is after end_time")
        if not self.dataset or any(not s.strip() for s in self.dataset + self.dataset_exclude):
            raise ValueError("dataset needs at least one non-empty name")
        return self

    @property
    def start_ms(self) -> int | None:
        return _utc_ms(self.start_time) if self.start_time is not None else None

    @property
    def end_ms(self) -> int | None:
        return _utc_ms(self.end_time) if self.end_time is not None else None


class LogPage(Message):
    """What comes with a page's Arrow table (in the `Railyard-Page` header)."""

    status: Literal["All", "RecordLimited", "ByteLimited", "SchemaChange"]
    cursor: str | None = None
    warning: str | None = None
    rows: int


MAX_RETENTION_DAYS = 36_525
"""A pipeline's log retention at most (100 years). A bigger one (1e308, or 1e12 days) was stored, then every log
maintenance pass failed computing its cut-off (OverflowError): retention, compaction and purging stopped for every
pipeline of every workspace (found by hand after `make fuzz-api`)."""


class SetLogRetention(Command):
    """`pipelines/set_log_retention` (Railyard): keep a pipeline's logs this many days."""

    pipeline_id: str = Field(min_length=1, description="The pipeline's name.")
    workspace_id: int
    retention_days: float = Field(gt=0, le=MAX_RETENTION_DAYS, description="Days to keep (at most 100 years); older "
                                  "segments are deleted.")


class LogRetention(Message):
    pipeline_id: str
    workspace_id: int
    retention_days: float


class RunLogMaintenance(Command):
    """Run a compaction / retention / purge pass now (the log store also runs one periodically)."""

    compact: bool = True
    retention: bool = True
    purge: bool = True


class LogMaintenanceReport(Message):
    compacted_segments: int = 0
    new_segments: int = 0
    expired_segments: int = 0
    purged_objects: int = 0
    orphans_deleted: int = 0
    batch_ids_pruned: int = 0


class ReadLogField(Command):
    """The values of one element of one logged column over a time range (for assays): `column` is a stored
    column (`out.dense_1`, `in.tensor`), `index` the element of its tensor (0 for scalars)."""

    workspace_id: int
    pipeline: str = Field(min_length=1, description="The pipeline's name.")
    column: str = Field(min_length=1)
    index: int = Field(0, ge=0)
    start_ms: int
    end_ms: int = Field(description="Exclusive.")
    model: str | None = Field(None, description="Only rows this model answered (by model name).")


class LogField(Message):
    """What comes with the values (in the `Railyard-Field` header)."""

    count: int
    segments: int


class ListQuarantinedLogs(Command):
    """`pipelines/list_quarantined_logs` (Railyard, administrators): inference log batches the log store could
    not store, newest first."""

    workspace_id: int | None = Field(None, description="Only this workspace's batches.")
    limit: int = Field(100, ge=1, le=1000, description="Most batches in the answer.")
    before_id: int | None = Field(None, description="Only batches quarantined before this id (the next page).")


class QuarantinedLog(Message):
    """One quarantined batch: kept whole in object storage with why it could not be stored."""

    id: int
    batch_id: str
    workspace_id: int | None
    pipeline: str | None
    subject: str
    reason: str
    rows: int | None
    bytes: int
    quarantined_at: datetime


class QuarantinedLogs(Message):
    batches: list[QuarantinedLog]
    total: int = Field(description="Batches in quarantine (for the filter given).")


class LogBatchQuarantined(Event):
    """`events.logs.batch_quarantined`: the log store set a batch aside that it could not store, and went on."""

    quarantine_id: int
    batch_id: str
    workspace_id: int | None
    pipeline: str | None
    reason: str
    rows: int | None


class SegmentDescription(Message):
    """The body of a `Railyard-Segment` message on `logs.inference.<deployment>`: a Parquet segment an engine replica
    wrote to the logs bucket, for the log store to index as it is (docs/logs.md, "How records travel";
    shared/log_segments.py checks the key against the pipeline's segments)."""

    key: str = Field(min_length=1, max_length=1024, description="The segment's object key in the logs bucket.")
    bytes: int = Field(gt=0, description="The object's size.")
    rows: int = Field(gt=0)
    min_time: int = Field(description="Earliest row time, milliseconds since the epoch.")
    max_time: int = Field(description="Latest row time, milliseconds since the epoch.")
    schema_fp: str = Field(description="The rows' schema fingerprint (shared/logrecords.py schema_fingerprint).")
    versions: list[str] = Field(description="The pipeline versions of its rows.")
    dropped: list[str] = Field(description="Columns dropped for size or as unwritable.")
