"""`Pipeline.run_assay` and `create_assay` take the assay body's `run_until` and the summarizer's `aggregation`,
`provided_edges` and `bin_weights` (docs/assays.md, Configuration). The SDK wrote `aggregation: Density` always and
none of the others, so `create_assay(..., run_until=...)` was a TypeError and an assay that stops by itself, a
Cumulative or Edges aggregation, or edges of one's own needed the raw HTTP route. Checked against the request model
the gateway and the assay runner validate (`NewAssayConfig`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from railyard_client.pipelines import Pipeline

from shared.messages.assays import NewAssayConfig


class Session:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def post(self, route: str, body: dict[str, Any]) -> Any:
        self.sent.append((route, body))
        return {"assay_id": 3} if route == "assays/create" else []


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(Session(), 2, "fraud", {"id": 7, "name": "fraud", "workspace_id": 2})


def test_run_until_and_the_summarizer_options_reach_the_body(pipeline):
    until = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
    pipeline.run_assay("a", "output dense_1 0", baseline_values=[0.1, 0.5, 0.9], start="2026-12-04T00:00:00Z",
                       run_until=until, aggregation="Cumulative", metric="MaxDiff",
                       provided_edges=[0.0, 0.25, 0.5, 0.75, 1.0], bin_weights=[1, 1, 2, 2, 1, 1])
    route, body = pipeline._session.sent[-1]
    assert route == "assays/run_interactive"
    assert body["run_until"] == "2026-12-05T06:00:00+00:00"
    assert body["summarizer"] == {"type": "UnivariateContinuous", "bin_mode": "Quantile",
                                       "aggregation": "Cumulative", "metric": "MaxDiff", "num_bins": 5,
                                       "provided_edges": [0.0, 0.25, 0.5, 0.75, 1.0], "bin_weights": [1, 1, 2, 2, 1, 1]}
    checked = NewAssayConfig.model_validate(body)  # what the gateway takes
    assert checked.run_until == until and checked.summarizer.aggregation == "Cumulative"


def test_create_assay_takes_them_too_and_the_defaults_are_unchanged(pipeline):
    assay = pipeline.create_assay("a", "output dense_1 0", baseline_values=[0.1, 0.5], run_until="2027-01-01T00:00:00Z")
    assert assay.id == 3
    route, body = pipeline._session.sent[-1]
    assert route == "assays/create" and body["run_until"] == "2027-01-01T00:00:00Z"
    pipeline.create_assay("b", "output dense_1 0", baseline_values=[0.1, 0.5])
    _, body = pipeline._session.sent[-1]
    assert "run_until" not in body
    assert body["summarizer"] == {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                                  "metric": "PSI", "num_bins": 5}
    NewAssayConfig.model_validate(body)
