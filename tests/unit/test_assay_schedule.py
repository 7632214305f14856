"""The assay scheduler's hold: a due window is scored once the log store has stored every record published until it
was due (the log store consumer's ack floor past the stream's last sequence noted then), later windows wait behind
it, and after `max_log_wait` it is scored anyway, marked `logs_complete: false`. Handlers with fakes, no servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from services.assay_runner import handlers, store
from shared.settings import AssaySettings

T0 = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
SETTINGS = AssaySettings(close_delay=1.0, max_log_wait=600.0)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_progress_is_the_ack_floor_or_everything_when_nothing_is_pending():
    assert handlers.log_progress(50, 40, 10, 0) == handlers.LogProgress(last_seq=50, stored_seq=40)
    assert handlers.log_progress(50, 40, 0, 3).stored_seq == 40  # delivered, not yet acknowledged (being stored)
    # nothing undelivered, nothing unacknowledged: all the stream had is stored, whatever the floor says
    assert handlers.log_progress(50, 40, 0, 0).stored_seq == 50
    assert handlers.log_progress(50, 60, 0, 0).stored_seq == 60


def test_the_watermark_moves_to_the_newest_mark_the_log_store_has_stored_past():
    mark = handlers.LogWatermark()
    mark.note(s(0), handlers.LogProgress(last_seq=10, stored_seq=4), keep=600)
    assert mark.through is None and not mark.covers(s(0))
    mark.note(s(1), handlers.LogProgress(last_seq=12, stored_seq=9), keep=600)
    assert mark.through is None  # 10 was the last sequence at s(0): 9 is not enough
    mark.note(s(2), handlers.LogProgress(last_seq=15, stored_seq=12), keep=600)
    assert mark.through == s(1) and mark.covers(s(0.5)) and mark.covers(s(1)) and not mark.covers(s(1.5))
    mark.note(s(3), handlers.LogProgress(last_seq=15, stored_seq=14), keep=600)
    assert mark.through == s(1) and list(mark.marks) == [(s(3), 15)]  # nothing new since s(2): one mark, later
    mark.note(s(4), handlers.LogProgress(last_seq=15, stored_seq=15), keep=600)
    assert mark.through == s(4) and not mark.marks


def test_the_watermark_starts_over_with_a_new_stream_and_forgets_old_marks():
    mark = handlers.LogWatermark()
    mark.note(s(0), handlers.LogProgress(last_seq=1000, stored_seq=10), keep=600)
    mark.note(s(1), handlers.LogProgress(last_seq=5, stored_seq=5), keep=600)  # the stream was made again
    assert mark.through == s(1) and not mark.marks
    mark.note(s(2), handlers.LogProgress(last_seq=9, stored_seq=5), keep=60)
    mark.note(s(100), handlers.LogProgress(last_seq=20, stored_seq=5), keep=60)
    assert list(mark.marks) == [(s(100), 20)]  # s(2)'s is older than keep: a window due then is scored by now


def test_a_moment_older_than_the_newest_mark_adds_none():
    """run_interactive and the scheduler ask in turn: one whose moment was taken before the other's asked later,
    so its answer says nothing about its own (earlier) moment that the newer mark does not say already."""
    mark = handlers.LogWatermark()
    mark.note(s(2), handlers.LogProgress(last_seq=10, stored_seq=4), keep=600)
    mark.note(s(1), handlers.LogProgress(last_seq=12, stored_seq=10), keep=600)
    assert list(mark.marks) == [] and mark.through == s(2)  # 10 stored: s(2)'s mark passed; s(1) added none


def _deps(progress: list[handlers.LogProgress] | None, values: dict[datetime, list[float]],
          settings: AssaySettings = SETTINGS) -> handlers.Deps:
    """Deps whose read_field answers the values logged in [start, end) and whose log_progress answers the next
    item of `progress` (the last one again when they run out); None: no log_progress at all."""

    async def read_field(token, workspace_id, pipeline, model, column, index, start_ms, end_ms) -> np.ndarray:
        return np.asarray([v for moment, vs in values.items() if start_ms <= handlers._ms(moment) < end_ms
                           for v in vs], dtype=np.float64)

    answers = list(progress or [])

    async def log_progress() -> handlers.LogProgress:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return handlers.Deps(pool=None, settings=settings, membership=None, read_field=read_field, pipeline_of=None,
                         log_page=None, log_progress=log_progress if progress is not None else None)


def _row(next_run: datetime, run_until: datetime | None = None) -> dict[str, Any]:
    config = {"name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output dense_1 0",
              "baseline": {"Static": {"values": [0.0, 1.0, 2.0, 3.0]}},
              "window": {"pipeline": "p", "width": "1 seconds"},
              "summarizer": {"num_bins": 2, "bin_mode": "Equal"}, "alert_threshold": 100.0, "workspace_id": 1}
    cfg = handlers.AssayConfig.model_validate(config)
    p = handlers.plan(cfg)
    bounds = handlers.compute.boundaries(np.asarray([0.0, 1.0, 2.0, 3.0]), p.summarizer)
    baseline = handlers.compute.summarize(np.asarray([0.0, 1.0, 2.0, 3.0]), bounds, p.summarizer, False, None, None)
    return {"id": 7, "name": "a", "workspace_id": 1, "pipeline_id": 1, "pipeline_name": "p", "status": "created",
            "config": json.dumps(config), "baseline_summary": json.dumps({**baseline, "_bounds": bounds.tolist()}),
            "width_seconds": 1.0, "interval_seconds": 1.0, "run_until": run_until, "next_run": next_run}


@pytest.fixture
def recorded(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    async def record_results(pool, assay_id, results, last_run, next_run, still_active, status,
                             read_next_run) -> bool:
        calls.append({"results": results, "next_run": next_run, "still_active": still_active})
        return True

    monkeypatch.setattr(store, "record_results", record_results)
    return calls


def _run(deps: handlers.Deps, row: dict[str, Any], now: datetime) -> int:
    async def go() -> int:
        await deps.watermark.update(now, deps)
        return await handlers._run_assay(deps, row, handlers.AssayConfig.model_validate_json(row["config"]), now)

    return asyncio.run(go())


def test_a_due_window_waits_for_the_log_store_and_is_scored_with_every_row(recorded):
    # windows [0, 1) and [1, 2); the rows of the first reach the log store late
    values = {s(0.5): [1.0, 2.0, 2.5]}
    deps = _deps([handlers.LogProgress(last_seq=8, stored_seq=5)], values)
    row = _row(next_run=s(1))
    assert _run(deps, row, s(2.5)) == 0  # [0, 1) was due at s(2): 8 published by then, 5 stored
    assert recorded == []  # nothing stored, next_run not moved (no write at all)
    deps.log_progress = _deps([handlers.LogProgress(last_seq=9, stored_seq=8)], values).log_progress
    assert _run(deps, row, s(3.5)) == 1  # the mark of s(2.5) (seq 8) is stored: [0, 1) scored; [1, 2) waits
    [call] = recorded
    [result] = call["results"]
    assert result["window_summary"]["count"] == 3 and result["logs_complete"] is True
    assert call["next_run"] == s(2) and result["_start"] == s(0)


def test_later_windows_wait_behind_the_first_and_go_together_once_stored(recorded):
    values = {s(0.2): [1.0], s(1.2): [2.0, 2.0], s(2.2): [3.0]}
    deps = _deps([handlers.LogProgress(last_seq=30, stored_seq=10)], values)
    row = _row(next_run=s(1))
    assert _run(deps, row, s(4.5)) == 0 and recorded == []  # three windows due, none stored
    deps.log_progress = _deps([handlers.LogProgress(last_seq=31, stored_seq=31)], values).log_progress
    assert _run(deps, row, s(5.5)) == 3  # and [3, 4), due at s(5), has no rows: passed, nothing stored
    [call] = recorded
    assert [r["window_summary"]["count"] for r in call["results"]] == [1, 2, 1] and call["next_run"] == s(5)


def test_a_window_the_log_store_does_not_reach_is_scored_after_max_log_wait(recorded, caplog):
    settings = AssaySettings(close_delay=1.0, max_log_wait=30.0)
    deps = _deps([handlers.LogProgress(last_seq=8, stored_seq=2)], {s(0.5): [1.0]}, settings)
    row = _row(next_run=s(1))
    assert _run(deps, row, s(2)) == 0  # due: the runner has asked since then
    assert _run(deps, row, s(2 + 29)) == 0 and recorded == []
    assert _run(deps, row, s(2 + 30)) == 1
    [result] = recorded[0]["results"]
    assert result["logs_complete"] is False and result["window_summary"]["count"] == 1
    assert "after waiting 30 s for the log store" in caplog.text


def test_windows_that_fell_due_while_the_runner_was_stopped_wait_for_the_log_store_after_its_start(recorded,
                                                                                                  caplog):
    """A restarted assay runner catches up windows due long ago (more than max_log_wait): it knows nothing of the
    log store before its first question, so they wait until the log store has stored past its first mark (at most
    max_log_wait from then), instead of being scored at the first tick as given up on (logs_complete false, a
    warning each, and whatever rows a log store with a backlog had then)."""
    values = {s(0.5): [1.0, 2.0]}
    deps = _deps([handlers.LogProgress(last_seq=8, stored_seq=5)], values)  # a second or so behind, as under load
    row = _row(next_run=s(1))  # [0, 1), due at s(2); the runner starts an hour later
    assert _run(deps, row, s(3602)) == 0 and recorded == []
    assert "after waiting" not in caplog.text
    deps.log_progress = _deps([handlers.LogProgress(last_seq=9, stored_seq=8)], values).log_progress
    assert _run(deps, row, s(3603)) == 1
    [result] = recorded[0]["results"]
    assert result["logs_complete"] is True and result["window_summary"]["count"] == 2
    # a log store that does not catch up: the same bound, counted from the runner's first question
    recorded.clear()
    deps = _deps([handlers.LogProgress(last_seq=8, stored_seq=5)], values)
    assert _run(deps, row, s(3602)) == 0 and _run(deps, row, s(3602 + 599)) == 0 and recorded == []
    assert _run(deps, row, s(3602 + 600)) == 1 and recorded[0]["results"][0]["logs_complete"] is False


def test_without_the_hold_the_window_would_have_been_skipped(recorded):
    """What the scheduler did before: scored once due with the rows there were (none yet), moving past it."""
    deps = _deps(None, {})  # no log_progress: the old behaviour, nothing stored yet
    assert _run(deps, _row(next_run=s(1)), s(2.5)) == 0
    assert recorded[0]["results"] == [] and recorded[0]["next_run"] == s(2)  # skipped for good


def test_an_assay_past_run_until_is_deactivated_even_while_the_log_store_is_behind(recorded):
    deps = _deps([handlers.LogProgress(last_seq=8, stored_seq=2)], {})
    assert _run(deps, _row(next_run=s(1), run_until=s(0.5)), s(2.5)) == 0
    assert recorded == [{"results": [], "next_run": s(1), "still_active": False}]


def test_the_log_store_unreachable_holds_windows_and_is_reported_once(recorded, caplog):
    deps = _deps([handlers.LogProgress(last_seq=1, stored_seq=1)], {s(0.5): [1.0]})

    async def failing() -> handlers.LogProgress:
        raise TimeoutError("no answer")

    deps.log_progress = failing
    row = _row(next_run=s(1))
    assert _run(deps, row, s(2.5)) == 0 and _run(deps, row, s(3.5)) == 0 and recorded == []
    assert caplog.text.count("could not ask how far the log store") == 1


def test_an_assay_whose_stored_config_no_longer_reads_holds_up_no_other(recorded, monkeypatch, caplog):
    """A stored config the current AssayConfig refuses (a rule added since it was stored, a hand edit) failed the
    whole pass before its try: every assay due after it in next_run order was never scored again."""
    now = datetime.now(UTC)
    bad = _row(next_run=now - timedelta(seconds=30)) | {"id": 6}
    bad["config"] = json.dumps({k: v for k, v in json.loads(bad["config"]).items() if k != "iopath"})
    good = _row(next_run=now - timedelta(seconds=20))

    async def due(pool, moment):
        return [bad, good]

    @contextlib.asynccontextmanager
    async def claim(pool, assay_id, due_before):
        yield None, {6: bad, 7: good}[assay_id]

    monkeypatch.setattr(store, "due", due)
    monkeypatch.setattr(store, "claim", claim)
    deps = _deps([handlers.LogProgress(last_seq=1, stored_seq=1)], {})
    asyncio.run(handlers.run_due(deps))
    assert len(recorded) == 1 and recorded[0]["next_run"] > good["next_run"]  # the good one moved on
    assert "assay 6 could not run" in caplog.text


def test_window_ready():
    deps = _deps([handlers.LogProgress(last_seq=1, stored_seq=1)], {})
    assert handlers.window_ready(deps, s(1), s(1.5)) is None  # closed, not due yet
    assert handlers.window_ready(deps, s(1), s(2)) is None  # due, the log store's state not known yet
    deps.watermark.note(s(2), handlers.LogProgress(last_seq=1, stored_seq=1), keep=600)
    assert handlers.window_ready(deps, s(1), s(2)) is True
    assert handlers.window_ready(deps, s(2), s(3)) is None  # due at s(3), known up to s(2) only
    assert handlers.window_ready(deps, s(2), s(3 + 600)) is False
    assert handlers.window_ready(_deps(None, {}), s(1), s(2)) is True
    # a Training baseline's windows read the monitoring service's predictions, not the log store: no hold
    assert handlers.window_ready(deps, s(2), s(3), reads_logs=False) is True
    assert handlers.window_ready(deps, s(2), s(2.5), reads_logs=False) is None


def test_a_pass_whose_windows_another_runner_stored_meanwhile_sends_nothing(monkeypatch):
    """The conditional commit: when next_run is no longer the one the pass started from (another assay runner
    stored these windows while this one's lock had gone with its connection), nothing is written, so no event is
    added and the outbox is not woken."""
    asked: list[datetime] = []

    async def record_results(pool, assay_id, results, last_run, next_run, still_active, status,
                             read_next_run) -> bool:
        asked.append(read_next_run)
        return False

    class Outbox:
        woken = 0

        def wake(self) -> None:
            self.woken += 1

    monkeypatch.setattr(store, "record_results", record_results)
    deps = _deps(None, {s(0.5): [9.0, 9.5]})  # far above the baseline: an Alert with its event
    deps.outbox = Outbox()
    row = _row(next_run=s(1)) | {"config": json.dumps(json.loads(_row(s(1))["config"]) | {"alert_threshold": 0.1})}
    assert _run(deps, row, s(2.5)) == 0
    assert asked == [s(1)] and deps.outbox.woken == 0


def test_an_assay_another_runner_is_scoring_is_skipped(recorded, monkeypatch):
    """store.claim answers None while another assay runner holds the assay's lock: this one reads nothing."""
    now = datetime.now(UTC)
    row = _row(next_run=now - timedelta(seconds=30))

    async def due(pool, moment):
        return [row]

    @contextlib.asynccontextmanager
    async def claim(pool, assay_id, due_before):
        yield None

    monkeypatch.setattr(store, "due", due)
    monkeypatch.setattr(store, "claim", claim)
    deps = _deps([handlers.LogProgress(last_seq=1, stored_seq=1)], {now - timedelta(seconds=30.5): [1.0]})
    reads = []
    reader = deps.read_field

    async def read_field(*args):
        reads.append(args)
        return await reader(*args)

    deps.read_field = read_field
    assert asyncio.run(handlers.run_due(deps)) == 0 and reads == [] and recorded == []
