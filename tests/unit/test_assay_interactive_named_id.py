"""assays/run_interactive (and run_interactive_baseline) with an `id` (the seed's "numerical identifier for the
assay", echoed in each result as `assay_id`): the id must name an assay of the body's pipeline in its workspace,
else a 404 as get_results answers, before anything is read. Before, any id was echoed: `"id": 99999` answered 200
with results naming an assay that does not exist (the s34 new-user walk-through). No id (the SDK's run_assay, a
preview of an assay not created) is scored as before."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from services.assay_runner import handlers
from shared.authz import Principal
from shared.errors import NotFound
from shared.settings import AssaySettings

PRINCIPAL = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="test", username="alice",
                      issued_at=0.0)
END = datetime.now(UTC) - timedelta(minutes=1)  # no 24-hour window after it has ended: a run answers []
ASSAYS = {7: {"id": 7, "workspace_id": 1, "pipeline_id": 1}, 8: {"id": 8, "workspace_id": 1, "pipeline_id": 2},
          9: {"id": 9, "workspace_id": 2, "pipeline_id": 1}}


def config(assay_id: int | None) -> handlers.AssayConfig:
    return handlers.AssayConfig.model_validate({
        "id": assay_id, "name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output dense_2 0",
        "workspace_id": 1,
        "baseline": {"Fixed": {"pipeline": "p", "model": "m", "start_at": (END - timedelta(days=1)).isoformat(),
                               "end_at": END.isoformat()}},
        "window": {"pipeline": "p", "model": "m", "width": "24 hours", "start": None, "interval": None},
        "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                       "metric": "PSI", "num_bins": 5, "add_outlier_edges": True},
        "alert_threshold": 0.1})


class Watermark:
    async def update(self, *args: Any) -> None:
        return None


@pytest.fixture
def deps(monkeypatch) -> tuple[handlers.Deps, list[str]]:
    read: list[str] = []

    async def checked(*args: Any) -> None:
        return None

    async def baseline(deps_, token, p):
        read.append("baseline")
        return {"aggregated_values": [0.2] * 5, "count": 3}, np.linspace(0.0, 1.0, 6), END

    async def assay_row(pool, assay_id):
        return ASSAYS.get(assay_id)

    monkeypatch.setattr(handlers, "_check_pipeline", checked)
    monkeypatch.setattr(handlers, "_baseline", baseline)
    monkeypatch.setattr(handlers.store, "get", assay_row)
    made = handlers.Deps(pool=None, settings=AssaySettings(), membership=lambda token: None,  # type: ignore[arg-type]
                         read_field=None, pipeline_of=None, log_page=None, outbox=None)  # type: ignore[arg-type]
    made.watermark = Watermark()  # type: ignore[assignment]
    return made, read


@pytest.mark.parametrize("run", [handlers.run_interactive, handlers.run_baseline])
@pytest.mark.parametrize("assay_id", [99999, 8, 9])  # none; another pipeline's; another workspace's
async def test_an_id_that_is_no_assay_of_the_pipeline_is_a_404_before_anything_is_read(deps, run, assay_id):
    made, read = deps
    with pytest.raises(NotFound, match=f"^assay {assay_id} not found in pipeline 1 "):
        await run(made, PRINCIPAL, "t", config(assay_id))
    assert read == []


@pytest.mark.parametrize("assay_id", [7, None])
async def test_an_assay_of_the_pipeline_or_no_id_runs(deps, assay_id):
    made, read = deps
    assert (await handlers.run_interactive(made, PRINCIPAL, "t", config(assay_id))).results == []
    assert read == ["baseline"]  # went past the check, to the baseline and the windows (none ended: no results)
