"""What the assay routes answer for a range the wrong way round and for logs found empty under a model filter:

- `assays/get_results` with `end` before `start` answered 200 [] (no result is both after one and before the
  other), as if the assay had none; now 400 saying so, before the assay is read.
- `assays/get_baseline` likewise answered the log store's words, "start_time is after end_time", fields the caller
  never sent; now 400 naming `start` and `end`.
- a Fixed baseline or an interactive run's windows with a `model` find only the rows that model answered: a model the
  pipeline never ran (or misspelt) found none, and the 400 named the pipeline, the range and the iopath but not the
  model, the one thing to fix; it now says "only rows model 'x' answered"."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from services.assay_runner import handlers
from shared.authz import Principal
from shared.errors import InvalidRequest
from shared.messages.assays import GetAssayResults, GetBaseline
from shared.settings import AssaySettings

PRINCIPAL = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="test", username="alice",
                      issued_at=0.0)
NOW = datetime.now(UTC)


async def nothing_logged(*args: Any) -> np.ndarray:
    return np.asarray([], dtype=np.float64)


async def never(*args: Any) -> Any:
    raise AssertionError("read although the request was refused")


def deps(read_field=nothing_logged) -> handlers.Deps:
    return handlers.Deps(pool=None, settings=AssaySettings(), membership=lambda token: None,  # type: ignore[arg-type]
                         read_field=read_field, pipeline_of=never, log_page=never, outbox=None)


async def test_results_with_end_before_start_are_a_400_not_an_empty_list(monkeypatch):
    monkeypatch.setattr(handlers, "_assay", never)
    cmd = GetAssayResults(assay_id=1, start=NOW, end=NOW - timedelta(hours=1))
    with pytest.raises(InvalidRequest, match="^end .* is before start "):
        await handlers.get_results(deps(), PRINCIPAL, "t", cmd)


async def test_baseline_rows_with_end_before_start_name_the_fields_sent(monkeypatch):
    async def member(*args: Any) -> None:
        return None

    monkeypatch.setattr(handlers, "require_member", member)
    cmd = GetBaseline(workspace_id=1, pipeline_name="p", start=NOW, end=NOW - timedelta(hours=1))
    with pytest.raises(InvalidRequest) as caught:
        await handlers.get_baseline(deps(), PRINCIPAL, "t", cmd)
    assert str(caught.value).startswith("end ") and "start_time" not in str(caught.value)


def config(model: str | None) -> handlers.AssayConfig:
    return handlers.AssayConfig.model_validate({
        "name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output dense_1 0", "workspace_id": 1,
        "baseline": {"Fixed": {"pipeline": "p", "model": model, "start_at": (NOW - timedelta(hours=2)).isoformat(),
                               "end_at": (NOW - timedelta(hours=1)).isoformat()}},
        "window": {"pipeline": "p", "model": model, "width": "1 hours"},
        "summarizer": {"num_bins": 2, "bin_mode": "Equal"}, "alert_threshold": 1.0})


async def test_an_empty_baseline_names_the_model_filter():
    with pytest.raises(InvalidRequest) as caught:
        await handlers._baseline(deps(), "t", handlers.plan(config("nomodel")))
    assert "(pipeline 'p', only rows model 'nomodel' answered, " in str(caught.value)
    with pytest.raises(InvalidRequest) as caught:  # without a model, as before
        await handlers._baseline(deps(), "t", handlers.plan(config(None)))
    assert "(pipeline 'p', 20" in str(caught.value) and "model" not in str(caught.value)


async def test_interactive_windows_found_empty_name_the_model_filter(monkeypatch):
    async def checked(*args: Any) -> None:
        return None

    async def baseline(deps_, token, p):
        return {"aggregated_values": [0.5, 0.5]}, np.asarray([0.0, 0.5, 1.0]), NOW - timedelta(hours=1)

    class Watermark:
        async def update(self, *args: Any) -> None:
            return None

    monkeypatch.setattr(handlers, "_check_pipeline", checked)
    monkeypatch.setattr(handlers, "_baseline", baseline)
    made = deps()
    made.watermark = Watermark()  # type: ignore[assignment]
    cfg = config("nomodel").model_copy(update={"window": config("nomodel").window.model_copy(
        update={"start": NOW - timedelta(hours=3)})})
    with pytest.raises(InvalidRequest, match=r"\(pipeline 'p', only rows model 'nomodel' answered\)$"):
        await handlers.run_interactive(made, PRINCIPAL, "t", cfg)
