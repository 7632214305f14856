"""assays/run_interactive before any window has ended (seed 001's own example: `window.start` None, so the windows
start where the Fixed baseline ends, here now) answers the results there are at this time, none: `[]`, as the seed
documents the answer ("returns all of the results for this assay at this time", read as `response[0]`), and as
get_results of a new assay answers. It was a 400 "no window has ended yet ..." (j2's contract journey, session 27).
Nothing is read from the log store for windows that have not ended, and nothing is stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from services.assay_runner import handlers
from shared.authz import Principal
from shared.errors import InvalidRequest
from shared.settings import AssaySettings

PRINCIPAL = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="test", username="alice",
                      issued_at=0.0)


async def never(*args: Any) -> Any:
    raise AssertionError("read or stored although no window has ended")


async def nothing_logged(*args: Any) -> np.ndarray:
    return np.asarray([], dtype=np.float64)


END = datetime.now(UTC) - timedelta(minutes=1)  # the baseline ended a minute ago: no 24-hour window has ended


class Watermark:
    async def update(self, *args: Any) -> None:
        return None


def config(start: datetime | None, width: str = "24 hours", run_until: datetime | None = None
           ) -> handlers.AssayConfig:
    """Seed 001's run_interactive body, its Fixed baseline ending at END."""
    return handlers.AssayConfig.model_validate({
        "id": 1, "name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output dense_2 0", "workspace_id": 1,
        "baseline": {"Fixed": {"pipeline": "p", "model": "m", "start_at": (END - timedelta(days=1)).isoformat(),
                               "end_at": END.isoformat()}},
        "window": {"pipeline": "p", "model": "m", "width": width, "start": start.isoformat() if start else None,
                   "interval": None},
        "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                       "metric": "PSI", "num_bins": 5, "add_outlier_edges": True},
        "warning_threshold": 0, "alert_threshold": 0.1, "run_until": run_until.isoformat() if run_until else None})


@pytest.fixture
def deps(monkeypatch) -> handlers.Deps:
    async def checked(*args: Any) -> None:
        return None

    async def baseline(deps_, token, p):  # its summary, bin edges and end (the Fixed baseline's)
        return {"aggregated_values": [0.2] * 5}, np.linspace(0.0, 1.0, 6), END

    async def assay_row(pool, assay_id):  # the assay the body's id names, of its pipeline and workspace
        return {"id": assay_id, "workspace_id": 1, "pipeline_id": 1}

    monkeypatch.setattr(handlers, "_check_pipeline", checked)
    monkeypatch.setattr(handlers.store, "get", assay_row)
    monkeypatch.setattr(handlers, "_baseline", baseline)
    made = handlers.Deps(pool=None, settings=AssaySettings(), membership=lambda token: None,  # type: ignore[arg-type]
                         read_field=never, pipeline_of=never, log_page=never, outbox=None)  # type: ignore[arg-type]
    made.watermark = Watermark()  # type: ignore[assignment]
    return made


async def test_the_seeds_example_with_no_window_ended_answers_no_results(deps):
    answer = await handlers.run_interactive(deps, PRINCIPAL, "t", config(None))
    assert answer.results == [] and answer.model_dump(mode="json") == {"results": []}


async def test_a_start_whose_first_window_ends_later_answers_no_results(deps):
    now = datetime.now(UTC)
    assert (await handlers.run_interactive(deps, PRINCIPAL, "t", config(now, "1 hours"))).results == []
    assert (await handlers.run_interactive(deps, PRINCIPAL, "t", config(now + timedelta(days=1)))).results == []
    # run_until before the first window's end: none ends within the run either
    assert (await handlers.run_interactive(deps, PRINCIPAL, "t", config(now - timedelta(hours=2), "1 hours",
                                                                         now - timedelta(hours=1, minutes=30)))
            ).results == []


async def test_windows_that_ended_empty_are_still_a_400(deps):
    """Not the same: windows ended, and none had the iopath's values (a wrong pipeline or model): a 400 saying so."""
    deps.read_field = nothing_logged
    with pytest.raises(InvalidRequest, match="^no window from "):
        await handlers.run_interactive(deps, PRINCIPAL, "t", config(END - timedelta(hours=3), "1 hours"))
