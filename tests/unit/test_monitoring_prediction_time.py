"""A prediction's time is its inference's: monitoring's predict kept `predicted_at` as the moment it received the
request, before the deployment's look-up, the ML backend's labeling, the wait for an image slot, the decode and the
engine's queue, while the engine logs the inference's rows (the pipeline's log, pipelines/get_logs) at the moment its
replica took the request and says that time in its answer (shared.logrecords.TIME_HEADER, which the gateway's answer
has said since session 35). The two differed by all that work: a prediction next to an hour's edge was in one hour of
monitoring's statistics and its row in the next of the log, and a prediction's row could not be found in the log by
its time. Now the prediction keeps the engine's time (its own only when the answer has none)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pyarrow as pa

from services.monitoring import predictions
from shared.logrecords import TIME_HEADER

RECEIVED = datetime(2026, 12, 6, 11, 59, 59, 900_000, tzinfo=UTC)


def test_the_engines_time_is_read_from_its_answer_to_the_millisecond():
    said = int(datetime(2026, 12, 6, 12, 0, 0, 123_000, tzinfo=UTC).timestamp() * 1000)
    assert predictions._answered_at({TIME_HEADER: str(said)}, RECEIVED) == datetime(2026, 12, 6, 12, 0, 0, 123_000,
                                                                                      tzinfo=UTC)
    # no header (an older engine), not a whole number of ms, or outside monitor's sane range: the time received
    late = int((datetime.now(UTC) + timedelta(days=2)).timestamp() * 1000)
    for headers in ({}, {TIME_HEADER: ""}, {TIME_HEADER: "12.5"}, {TIME_HEADER: "-1"}, {TIME_HEADER: "x"},
                    {TIME_HEADER: "\u00b2"}, {TIME_HEADER: "9" * 19}, {TIME_HEADER: "1" * 5000},
                    {TIME_HEADER: "946684799999"}, {TIME_HEADER: str(late)}):
        assert predictions._answered_at(headers, RECEIVED) is RECEIVED, headers


def test_a_predict_keeps_the_time_its_inference_was_logged_at(monkeypatch):
    logged_at = datetime(2026, 12, 6, 12, 0, 0, 40_000, tzinfo=UTC)  # the next hour: the engine took it 140 ms later
    kept = []

    async def ask_engine(deps, deployment, table, by_reference=False, *, token=None):
        return pa.table({"out": [1.0]}), {"elapsed": [5_000_000]}, {
            TIME_HEADER: str(int(logged_at.timestamp() * 1000))}

    async def served(deps, token, view, meta):
        return view.definition

    async def settings(pool, deployment_id):
        return None

    async def keep(deps, token, row, data, deployment, labels, lake, *, owner):
        kept.append(row)
        return row

    monkeypatch.setattr(predictions, "_ask_engine", ask_engine)
    monkeypatch.setattr(predictions, "_served", served)
    monkeypatch.setattr(predictions.store, "settings", settings)
    monkeypatch.setattr(predictions, "_keep", keep)
    view = SimpleNamespace(route=SimpleNamespace(name="digits", deployment_id=1, workspace_id=1, pipeline_version="v1"),
                           definition={"steps": [{"ModelInference": {"models": [{"name": "m"}]}}]})
    image = predictions._PreparedImage(
        table=pa.table({"x": [1.0]}), convert=lambda answer, prefix, threshold, *reading: {"classification": [1]},
        kind="classification", labels=None, height=8, width=8, content_type="image/png", features={},
        by_reference=False)
    cmd = SimpleNamespace(source=None, filename=None, deployment="digits")

    asyncio.run(predictions._predict_prepared(SimpleNamespace(pool=None), "t", cmd, view, b"png", [], RECEIVED, image,
                                              owner=None))

    [row] = kept
    assert row.predicted_at == logged_at  # was RECEIVED: 11:59:59.900, another hour than its logged row's
