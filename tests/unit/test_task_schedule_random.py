"""A schedule with croniter's random field (R) is refused (handlers.check_schedule). Each croniter built from it
draws another value, and the scheduler builds one at each pass (scheduler.due_point): "R * * * *" was stored with one
minute and fired at another, nearly always a point still to come, queued and run at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.task_scheduler import handlers
from services.task_scheduler.scheduler import due_point
from shared.errors import InvalidRequest


@pytest.mark.parametrize("schedule", ["R * * * *", "0 r * * *", "0 R(0-5) * * *", "R/15 * * * *", "0 0 * * * R",
                                      "0,R * * * *"])
def test_a_random_field_is_refused_saying_why(schedule):
    with pytest.raises(InvalidRequest, match="has a random field") as caught:
        handlers.check_schedule(schedule)
    assert caught.value.code == "invalid_schedule"


@pytest.mark.parametrize("schedule", ["0 0 * MAR FRI", "0 0 * * THU", "30 2 * * 1-5", "*/2 * * * * *"])
def test_names_with_an_r_are_taken(schedule):
    assert handlers.check_schedule(schedule) == schedule


def test_what_a_random_field_did_to_the_scheduler():
    """Why: the point due_point runs for a stored R schedule is not the stored one, and mostly still to come."""
    created = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    future = 0
    for _ in range(20):
        next_fire = handlers.next_point("R * * * *", created)  # what run_scheduled stored
        now = next_fire + timedelta(seconds=1)
        point, _, _ = due_point("R * * * *", next_fire, now, "fire_once", timedelta(seconds=30))
        future += point > now
    assert future > 0
