"""Assay messages (assay_runner service), with the seed's field names (section 9)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from shared.messages.base import WITHOUT_CONTROLS, Command, Event, Message, omit_when_unset
from shared.paging import cursor_field, limit_field


class FixedBaseline(Message):
    pipeline: str
    model: str | None = None
    start_at: datetime
    end_at: datetime


class StaticBaseline(Message):
    """Railyard: a baseline of given values (e.g. the training data's), not of logs."""

    values: list[float] = Field(min_length=1)


class TrainingBaseline(Message):
    """Railyard: the training-data reference of a seed-003 deployment (monitoring service, set_training_data) as the
    baseline. The iopath then names one of its image features (`"input brightness_mean"`), and every window reads
    that feature of the deployment's own and monitored predictions instead of the pipeline's logs."""

    deployment: str = Field(min_length=1, max_length=200)
    deployment_id: int | None = Field(None, description="Set by the assay runner when the assay is created (the "
                                      "scheduler's windows read by it); a caller's value is replaced.")


class Baseline(Message):
    Fixed: FixedBaseline | None = None
    Static: StaticBaseline | None = None
    Training: TrainingBaseline | None = None

    @model_validator(mode="after")
    def _one(self) -> Baseline:
        if sum(kind is not None for kind in (self.Fixed, self.Static, self.Training)) != 1:
            raise ValueError("baseline needs exactly one of Fixed, Static or Training")
        return self


class AssayWindow(Message):
    pipeline: str
    model: str | None = None
    width: str = Field(description="e.g. '24 hours', '10 minutes'.")
    start: datetime | None = Field(None, description="When the first window starts (default: when the assay is "
                                   "created, or the end of a Fixed baseline for run_interactive).")
    interval: str | None = Field(None, description="Time between window starts (default: the width).")


MAX_BINS = 100
"""Regular bins of an assay's summary at most (the seed recommends 5 to 14). More were stored and summarized as
asked: a million bins made a reply bigger than the bus carries, so the caller waited for a 504 after the assay was
already created (found by hand after `make fuzz-api`)."""


class Summarizer(Message):
    model_config = ConfigDict(extra="forbid")

    type: str = "UnivariateContinuous"
    bin_mode: str = "Quantile"
    aggregation: str = "Density"
    metric: str = "PSI"
    num_bins: int = Field(5, le=MAX_BINS, description="The seed recommends 5 to 14; at least 2.")
    bin_weights: list[float] | None = Field(None, max_length=MAX_BINS + 2)
    bin_width: float | None = None
    provided_edges: list[float] | None = Field(None, max_length=MAX_BINS + 1)
    add_outlier_edges: bool = True


class AssayConfig(Command):
    """An assay's configuration as stored (the scheduler reads it back with this model); what callers send is
    NewAssayConfig, the same with bounds on its free text."""

    id: int | None = None
    name: str = Field(min_length=1)
    pipeline_id: int
    pipeline_name: str
    active: bool = True
    status: str = "created"
    iopath: str
    baseline: Baseline
    window: AssayWindow
    summarizer: Summarizer
    warning_threshold: float | None = None
    alert_threshold: float
    run_until: datetime | None = None
    workspace_id: int
    model_insights_url: str | None = None


MAX_ASSAY_NAME = 255
"""Characters of an assay's name (and of the pipeline and model names it repeats) at most, in a new configuration."""
MAX_IOPATH = 1024
"""Characters of a new assay's iopath at most ("output variable 0", "input brightness_mean")."""
MAX_WIDTH = 100
"""Characters of a window's width or interval at most ("24 hours")."""
MAX_URL = 2048
"""Characters of model_insights_url at most."""
MAX_STATIC_VALUES = 10_000
"""Values of a new Static baseline at most: ten times the 1000-level sample a Training baseline is summarized on, at
least 100 values a bin at the most bins a summary takes (MAX_BINS), and at most ~250 KB of JSON (a double takes up to
24 characters), so an assay stays a small part of its pipeline's assays/list answer (which repeats every assay's
configuration, values included) and of the 8 MiB a reply carries on the bus. A larger baseline is to be sampled by
the caller; the quantiles of 10,000 values are what the summary keeps anyway."""


class NewFixedBaseline(FixedBaseline):
    pipeline: str = Field(max_length=MAX_ASSAY_NAME)
    model: str | None = Field(None, max_length=MAX_ASSAY_NAME)


class NewStaticBaseline(StaticBaseline):
    values: list[float] = Field(min_length=1, max_length=MAX_STATIC_VALUES, description=f"At most "
                                f"{MAX_STATIC_VALUES} values (sample a larger baseline).")


class NewBaseline(Baseline):
    Fixed: NewFixedBaseline | None = None
    Static: NewStaticBaseline | None = None


class NewAssayWindow(AssayWindow):
    pipeline: str = Field(max_length=MAX_ASSAY_NAME)
    model: str | None = Field(None, max_length=MAX_ASSAY_NAME)
    width: str = Field(max_length=MAX_WIDTH, description="e.g. '24 hours', '10 minutes'.")
    interval: str | None = Field(None, max_length=MAX_WIDTH, description="Time between window starts (default: the "
                                 "width).")


class NewAssayConfig(AssayConfig):
    """The body of assays/create, run_interactive_baseline and run_interactive: an AssayConfig whose free text and
    Static baseline values are bounded. The name and iopath travel in every events.assay.* event and, with the rest
    of the configuration, in each assays/list answer: unbounded, one assay could be stored whose events no bus limit
    let through (they stayed in the outbox for good) and whose pipeline's assay list no longer fitted in a reply.
    Stored configurations are read with AssayConfig, without these bounds, so an assay stored before them still loads
    and runs."""

    name: str = Field(min_length=1, max_length=MAX_ASSAY_NAME, pattern=WITHOUT_CONTROLS)
    pipeline_name: str = Field(max_length=MAX_ASSAY_NAME)  # its pipeline's name as stored (checked equal to it)
    status: str = Field("created", max_length=MAX_ASSAY_NAME)
    iopath: str = Field(max_length=MAX_IOPATH)
    baseline: NewBaseline
    window: NewAssayWindow
    model_insights_url: str | None = Field(None, max_length=MAX_URL)


class AssayCreated(Message):
    assay_id: int


class ListAssays(Command):
    """assays/list: a pipeline's assays, newest first; all of them, or a page (`limit`, then `cursor`)."""

    pipeline_id: int
    limit: int | None = limit_field("assays")
    cursor: str | None = cursor_field("assays/list")


class Assays(Message):
    assays: list[dict[str, Any]]
    next_cursor: str | None = Field(None, description="Set when more assays follow this page: pass it as `cursor` "
                                    "(over HTTP, where the answer is the bare list, it is the x-next-cursor header).")

    _without_empty_cursor = omit_when_unset("next_cursor")  # the answer of a whole list stays as it was


class SetAssayActive(Command):
    id: int
    active: bool


class AssayActive(Message):
    id: int
    active: bool


class GetBaseline(Command):
    workspace_id: int
    pipeline_name: str
    start: datetime | None = None
    end: datetime | None = None
    model_name: str | None = None
    limit: int | None = Field(None, ge=1)


class BaselineRows(Message):
    rows: list[dict[str, Any]]


class AssayResults(Message):
    results: list[dict[str, Any]]


class GetAssayResults(Command):
    assay_id: int
    start: datetime | None = None
    end: datetime | None = None
    limit: int | None = Field(None, ge=1)
    pipeline_id: int | None = None


class AssayWasCreated(Event):
    """events.assay.created: an assay now watches a pipeline's logged field."""

    assay_id: int
    name: str
    workspace_id: int
    pipeline_id: int
    pipeline_name: str
    iopath: str


class AssayThresholdCrossed(Event):
    """events.assay.warning / events.assay.alert: a scheduled window scored above a threshold."""

    assay_id: int
    name: str
    workspace_id: int
    pipeline_id: int
    pipeline_name: str
    iopath: str
    status: str
    score: float
    warning_threshold: float | None
    alert_threshold: float
    window_start: str
    window_end: str
