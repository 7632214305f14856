"""How long a task scheduler sleeps after a pass (services/task_scheduler/scheduler.py, sleep_for)."""

from services.task_scheduler.scheduler import DUE_SLACK, MIN_SLEEP, sleep_for


def test_nothing_due_sleeps_the_whole_fallback_poll():
    assert sleep_for(None, 5.0, None) == 5.0


def test_a_due_point_before_the_poll_wakes_just_after_it():
    assert sleep_for(1.25, 5.0, None) == 1.25 + DUE_SLACK


def test_a_due_point_after_the_poll_is_looked_at_by_the_poll():
    assert sleep_for(3600.0, 5.0, None) == 5.0


def test_the_processs_own_heartbeat_comes_first_when_it_is_sooner():
    assert sleep_for(4.0, 5.0, 0.75) == 0.75


def test_a_point_still_due_after_a_pass_is_looked_at_again_soon_not_in_a_spin():
    """Still due right after a pass: another process holds that task's row, or more were due than a batch."""
    assert sleep_for(-2.0, 5.0, None) == MIN_SLEEP
    assert sleep_for(None, 5.0, -0.1) == MIN_SLEEP
    assert 0 < MIN_SLEEP < 0.5
