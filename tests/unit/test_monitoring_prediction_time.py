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
ANSWERED = RECEIVED + timedelta(seconds=1)  # when the answer arrived


def _ms(at: datetime) -> str:
    return str(int(at.timestamp()) * 1000 + at.microsecond // 1000)


def test_the_engines_time_is_read_from_its_answer_to_the_millisecond():
    said = datetime(2026, 12, 6, 12, 0, 0, 123_000, tzinfo=UTC)
    assert predictions._answered_at({TIME_HEADER: _ms(said)}, RECEIVED, ANSWERED) == said
    # a replica's clock a little off monitoring's (ENGINE_CLOCK_SKEW): still the inference's time
    for off in (RECEIVED - timedelta(seconds=30), ANSWERED + timedelta(seconds=30)):
        assert predictions._answered_at({TIME_HEADER: _ms(off)}, RECEIVED, ANSWERED) == off
    # no header (an older engine), not a whole number of ms: the time received
    for headers in ({}, {TIME_HEADER: ""}, {TIME_HEADER: "12.5"}, {TIME_HEADER: "-1"}, {TIME_HEADER: "x"},
                    {TIME_HEADER: "\u00b2"}, {TIME_HEADER: "9" * 19}, {TIME_HEADER: "1" * 5000},
                    {TIME_HEADER: "946684799999"}):
        assert predictions._answered_at(headers, RECEIVED, ANSWERED) is RECEIVED, headers


def test_a_time_the_replica_cannot_have_taken_the_request_at_is_not_kept():
    """The replica took the request after monitoring received it and before its answer arrived: a time further out
    than ENGINE_CLOCK_SKEW is a replica's clock gone wrong, or a header forged by a compromised replica (every
    replica is the `engine` identity), and was kept while monitor would take it (2000 to a day ahead): a prediction
    filed in 2001, or hours ahead, in another hour of the statistics than the one it was made in."""
    skew = timedelta(seconds=predictions.ENGINE_CLOCK_SKEW)
    for wrong in (datetime(2001, 1, 1, tzinfo=UTC), RECEIVED - timedelta(hours=1), RECEIVED - skew - timedelta(
            milliseconds=2), ANSWERED + skew + timedelta(milliseconds=1), ANSWERED + timedelta(hours=20)):
        assert predictions._answered_at({TIME_HEADER: _ms(wrong)}, RECEIVED, ANSWERED) is RECEIVED, wrong


def test_a_predict_keeps_the_time_its_inference_was_logged_at(monkeypatch):
    # received 100 ms before an hour's edge that is past on this clock (the answer arrives now), logged 40 ms after
    # it: the next hour, the engine took it 140 ms later
    edge = (datetime.now(UTC) - timedelta(seconds=2)).replace(minute=0, second=0, microsecond=0)
    received, logged_at = edge - timedelta(milliseconds=100), edge + timedelta(milliseconds=40)
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

    asyncio.run(predictions._predict_prepared(SimpleNamespace(pool=None), "t", cmd, view, b"png", [], received, image,
                                              owner=None))

    [row] = kept
    assert row.predicted_at == logged_at  # was `received`: 100 ms before the edge, another hour than its row's
