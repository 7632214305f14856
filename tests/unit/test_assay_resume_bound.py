"""Where an assay turned on again starts (`handlers.resumed_next_run`): the windows it owes end at next_run, next_run +
interval, ... up to now (or run_until); of more than `max_windows` only the newest `max_windows` are scored. Before,
`set_active(true)` left next_run where the pause had left it, and a 1-second assay paused for a day scored 86,400
windows before its first new one (tests/integration/test_assay_resume.py goes through the route)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.assay_runner.handlers import resumed_next_run

NOW = datetime(2026, 12, 5, 0, 0, 0, 250_000, tzinfo=UTC)
S = timedelta(seconds=1)


def owed(next_run: datetime, interval: float, run_until: datetime | None = None) -> int:
    """The windows [end - width, end) ending next_run + k·interval by now (or run_until), counted one by one."""
    until = min(NOW, run_until) if run_until else NOW
    count, end = 0, next_run
    while end <= until:
        count, end = count + 1, end + timedelta(seconds=interval)
    return count


def test_up_to_max_windows_owed_are_all_scored():
    for n in (0, 1, 999, 1000):  # the newest window owed ends exactly now: counted
        next_run = NOW - (n - 1) * S if n else NOW + S
        assert owed(next_run, 1.0) == n
        assert resumed_next_run(next_run, 1.0, None, NOW, 1000) == (next_run, 0)


def test_more_than_max_windows_owed_keep_the_newest_max_windows():
    for extra in (1, 2, 86_400 - 1000):
        next_run = NOW - (1000 + extra - 1) * S
        moved, skipped = resumed_next_run(next_run, 1.0, None, NOW, 1000)
        assert skipped == extra and moved == next_run + extra * S
        assert owed(moved, 1.0) == 1000  # the newest 1000: the last ends now
    # an interval that does not divide the pause, a fraction of a second: still exactly max_windows from the grid
    next_run = NOW - timedelta(hours=5, microseconds=123)
    moved, skipped = resumed_next_run(next_run, 7.5, None, NOW, 10)
    assert owed(moved, 7.5) == 10 and owed(next_run, 7.5) == 10 + skipped
    assert (moved - next_run) == skipped * timedelta(seconds=7.5)


def test_run_until_ends_what_is_owed():
    next_run = NOW - timedelta(days=1)
    until = next_run + timedelta(seconds=1500)  # 1501 windows end by run_until, long before now
    moved, skipped = resumed_next_run(next_run, 1.0, until, NOW, 1000)
    assert skipped == 501 and owed(moved, 1.0, until) == 1000
    # past run_until already (it turned itself off): nothing owed, nothing moved
    assert resumed_next_run(NOW - S, 1.0, NOW - 2 * S, NOW, 1000) == (NOW - S, 0)
