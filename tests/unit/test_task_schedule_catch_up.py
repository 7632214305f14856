"""A schedule's catch-up after a long time with no scheduler (scheduler.due_point): the latest missed point and the
next are found without walking every missed point. Before, each missed point was walked (croniter, ~60 us each) on
the event loop inside the pass's transaction: a per-second schedule missed for a day held the loop ~5 s per task, its
runs unbeaten and its commands unanswered meanwhile."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter

from services.task_scheduler import scheduler
from services.task_scheduler.scheduler import due_point

GRACE = timedelta(seconds=30)
T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
SCHEDULES = ["* * * * *", "*/5 * * * *", "0 6 * * 0", "30 2 * * 1-5", "* * * * * */2", "*/7 * * * * 13",
             "15 */3 * * *", "@daily", "@hourly", "0 0 1 * *", "* * * * * *", "0 12 * * 6,0"]


def walked(schedule: str, next_fire: datetime, now: datetime) -> tuple[datetime, datetime, int]:
    """Every point from next_fire to now walked: (the latest at or before now, the first after it, how many before
    the latest)."""
    points = croniter(schedule, next_fire - timedelta(microseconds=1))
    latest, missed = points.get_next(datetime), 0
    while (following := points.get_next(datetime)) <= now:
        latest, missed = following, missed + 1
    return latest, following, missed


@pytest.fixture
def counted(monkeypatch):
    """croniter's points as due_point reads them, counted; more than 2,000 is a walk over every missed point."""
    calls = {"points": 0}

    class Counted(croniter):
        def get_next(self, *args, **kwargs):
            calls["points"] += 1
            assert calls["points"] <= calls.get("limit", 2000), "due_point walked every missed point"
            return super().get_next(*args, **kwargs)

    monkeypatch.setattr(scheduler, "croniter", Counted)
    return calls


@pytest.mark.parametrize(("schedule", "down"), [("* * * * * *", timedelta(days=30)),
                                                ("* * * * *", timedelta(days=365)),
                                                ("* * * * * */2", timedelta(days=2, seconds=7))])
def test_a_long_outage_finds_the_latest_point_without_walking_every_one(counted, schedule, down):
    next_fire = croniter(schedule, T0).get_next(datetime)
    now = next_fire + down + timedelta(microseconds=250_000)
    point, following, missed = due_point(schedule, next_fire, now, "fire_once", GRACE)
    expected_latest = croniter(schedule, now).get_prev(datetime)
    assert point == expected_latest <= now < following == croniter(schedule, now).get_next(datetime)
    assert missed == scheduler.MISSED_COUNTED  # a lower bound: the log says "at least"
    assert counted["points"] <= scheduler.MISSED_COUNTED + 2
    counted["points"] = 0
    # skip runs the latest too: it is 0.25 s late, within the grace
    assert due_point(schedule, next_fire, now, "skip", GRACE) == (point, following, missed)
    assert counted["points"] <= scheduler.MISSED_COUNTED + 2


def test_the_outcome_is_the_walk_s_below_and_above_the_count():
    rng = random.Random(31)
    # on time or a few points late (many cases), and around MISSED_COUNTED points late (each walks them twice)
    count = scheduler.MISSED_COUNTED
    for late in [rng.choice([0, 1, 2, 5, rng.uniform(0, 10)]) for _ in range(150)] + [count - 1, count, count + 1,
                                                                                       3 * count] * 2:
        schedule = rng.choice(SCHEDULES)
        next_fire = croniter(schedule, T0 + timedelta(seconds=rng.uniform(0, 3e7))).get_next(datetime)
        step = croniter(schedule, next_fire).get_next(datetime) - next_fire
        # at a point, just after one, between two (in steps of the first gap: irregular schedules vary)
        now = next_fire + step * late + rng.choice([timedelta(0), timedelta(microseconds=1), step / 2])
        latest, following, missed = walked(schedule, next_fire, now)
        for policy in ("fire_once", "skip"):
            got = due_point(schedule, next_fire, now, policy, GRACE)
            ran = latest if policy == "fire_once" or now - latest <= GRACE else None
            assert got == (ran, following, min(missed, scheduler.MISSED_COUNTED)), (schedule, next_fire, now)


def test_a_pass_catching_up_a_whole_batch_walks_a_bounded_number_of_points(counted):
    """A pass catches up to FIRE_BATCH tasks one after the other on the event loop, and beats its runs only after
    (scheduler.Scheduler._forever): the croniter steps of a batch back after a long outage stay a few thousand (~60 us
    each, up to 0.4 ms at load), well under supervisor_lost_after. With MISSED_COUNTED at 1,000 (7d59f296) a batch of
    per-second tasks back after 17 minutes took 50,000 steps: 3 s quiet, 7-19 s at load 9."""
    counted["limit"] = 10 ** 6
    for n in range(scheduler.FIRE_BATCH):
        schedule = SCHEDULES[n % len(SCHEDULES)]
        next_fire = croniter(schedule, T0).get_next(datetime)
        due_point(schedule, next_fire, next_fire + timedelta(days=400), "fire_once", GRACE)
    assert counted["points"] <= 6000, counted
