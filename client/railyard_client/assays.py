"""Drift assays on a pipeline's logged inputs and outputs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from railyard_client.errors import InvalidInput, boolean_input
from railyard_client.resource import Resource

if TYPE_CHECKING:
    from railyard_client.pipelines import Pipeline


RESULTS_PAGE = 200
"""Results an `Assay.results` request asks for: at 100 bins a result is ~20 KB of JSON, and a bus reply holds 8 MiB."""


def _time(moment: datetime | str | None) -> str | None:
    if moment is None or isinstance(moment, str):
        return moment
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def assay_config(name: str, pipeline: Pipeline, iopath: str, *, baseline_start: datetime | str | None = None,
                 baseline_end: datetime | str | None = None, baseline_values: list[float] | None = None,
                 width: str = "24 hours", interval: str | None = None, start: datetime | str | None = None,
                 metric: str = "PSI", num_bins: int = 5, bin_mode: str = "Quantile", alert_threshold: float = 0.25,
                 warning_threshold: float | None = None, model: str | None = None,
                 active: bool = True, training_reference: Any = None, run_until: datetime | str | None = None,
                 aggregation: str = "Density", provided_edges: list[float] | None = None,
                 bin_weights: list[float] | None = None) -> dict[str, Any]:
    """The seed's assay body from keyword arguments. `training_reference` (a seed-003 deployment or its name) makes
    the deployment's training-data reference the baseline; `iopath` then names an image feature
    (`"input brightness_mean"`) of the deployment's predictions. `run_until`: the last window ends by then (a
    scheduled assay then deactivates itself); `aggregation` Density, Cumulative or Edges; `provided_edges`: bin
    boundaries instead of `bin_mode`'s; `bin_weights`: one per bin, outlier bins included (docs/assays.md)."""
    if training_reference is not None:
        baseline: dict[str, Any] = {"Training": {"deployment": getattr(training_reference, "name",
                                                                       training_reference)}}
    elif baseline_values is not None:
        baseline = {"Static": {"values": list(baseline_values)}}
    elif baseline_start is not None and baseline_end is not None:
        baseline = {"Fixed": {"pipeline": pipeline.name, "model": model, "start_at": _time(baseline_start),
                              "end_at": _time(baseline_end)}}
    else:
        raise InvalidInput("an assay needs baseline_start and baseline_end, or "
                             "baseline_values")
    window = {"pipeline": pipeline.name, "model": model, "width": width, "interval": interval, "start": _time(start)}
    summarizer = {"type": "UnivariateContinuous", "bin_mode": bin_mode, "aggregation": aggregation, "metric": metric,
                  "num_bins": num_bins, "provided_edges": provided_edges, "bin_weights": bin_weights}
    body = {"name": name, "pipeline_id": pipeline.id, "pipeline_name": pipeline.name, "workspace_id":
            pipeline.workspace_id, "active": boolean_input(active, "active"), "iopath": iopath, "baseline": baseline,
            "window": {k: v for k, v in window.items() if v is not None},
            "summarizer": {k: v for k, v in summarizer.items() if v is not None},
            "warning_threshold": warning_threshold, "alert_threshold": alert_threshold}
    return body | ({"run_until": _time(run_until)} if run_until is not None else {})


class Assay(Resource):
    """A stored drift assay: scored on every closed window while active."""

    @property
    def id(self) -> int:
        """The assay's numeric id."""
        return int(self._record["id"])

    @property
    def name(self) -> str:
        """The assay's name."""
        return str(self._record.get("name", ""))

    def results(self, start: datetime | str | None = None, end: datetime | str | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """The scored windows (score, status, bins) between `start` and `end` (window starts, `end` excluded),
        newest first: all of them, or the newest `limit`. Read RESULTS_PAGE at a time, each page ending before the
        previous page's oldest window; the server answers at most 1000 a request, and without a limit that was all
        this returned, silently. A window whose `logs_complete` is False was scored after the assay runner stopped
        waiting for the log store (`max_log_wait`, 600 s): records logged before it was due may be missing from its
        score; see `incomplete_logs`."""
        if limit is not None and limit < 1:  # the loop below asked nothing and answered [] (the route: a 400)
            raise InvalidInput(f"limit must be at least 1, not {limit}: leave it out for every result")
        found: list[dict[str, Any]] = []
        until = _time(end)
        while limit is None or len(found) < limit:
            asked = RESULTS_PAGE if limit is None else min(RESULTS_PAGE, limit - len(found))
            body = {"assay_id": self.id, "start": _time(start), "end": until, "limit": asked}
            page = self._session.post("assays/get_results", {k: v for k, v in body.items() if v is not None})
            found += page
            if len(page) < asked:
                break
            until = page[-1]["window_start"]  # a window is unique per assay: the next page is the older ones
        return found

    @staticmethod
    def incomplete_logs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The results (of `results()` or `Pipeline.run_assay`) scored without every logged record
        (`logs_complete` False: the log store had not stored them all). Results stored before 2026-12-02 have no
        `logs_complete` and are not counted. Such a window is not scored again: once the log store has caught up,
        `Pipeline.run_assay` over the same window gives the score with every record."""
        return [r for r in results if r.get("logs_complete") is False]

    def set_active(self, active: bool) -> Assay:
        """Pause (False) or resume (True) the scheduled scoring. Resumed after a long pause, it scores at most the
        newest 1000 windows it owes (`MAX_WINDOWS`); older ones are not scored (docs/assays.md, Scheduling)."""
        active = boolean_input(active, "active")  # the API takes only JSON true or false
        self._session.post("assays/set_active", {"id": self.id, "active": active})
        self._record["active"] = active
        return self
