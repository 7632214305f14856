"""task/run_scheduled takes the macros a Kubernetes CronJob takes (`@hourly`, `@daily`, ...: docs/orchestrations.md,
Schedules) and refuses a time-zone prefix saying schedules are UTC. Before, '@hourly' was a 400 "has 1 fields; cron
needs 5" although the docs say cron is read as CronJobs read it, and 'CRON_TZ=Europe/Paris 0 6 * * *' got "not a
valid cron expression". Through the HTTP API on the real stack: the stored task keeps '@hourly' and its next point is
the next full hour."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.conftest import post, query
from tests.integration.test_orchestrations import ready_orchestration, runs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_an_hourly_task_is_stored_with_the_next_full_hour_and_a_time_zone_is_refused(stack, alice):
    orch = ready_orchestration(stack, alice, {"main.py": "print('hourly')"})
    body = {"workspace_id": alice.workspace_id, "orch_id": orch["id"], "json": {}}
    zoned = post(stack, "task/run_scheduled", alice.token, {**body, "schedule": "CRON_TZ=Europe/Paris 0 6 * * *"})
    assert zoned.status_code == 400 and zoned.json()["code"] == "invalid_schedule", zoned.text
    assert "time zones are not supported (CRON_TZ=): schedules are UTC" in zoned.json()["msg"]

    before = datetime.now(UTC)
    scheduled = post(stack, "task/run_scheduled", alice.token, {**body, "schedule": "@hourly"})
    after = datetime.now(UTC)
    assert scheduled.status_code == 200, scheduled.text
    task_id = scheduled.json()["id"]
    try:
        assert post(stack, "task/get_by_id", alice.token, {"id": task_id}).json()["schedule"] == "@hourly"
        [stored] = query(stack, "SELECT schedule, next_fire FROM task_scheduler.tasks WHERE id = $1::uuid", task_id)
        hours = {(moment + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0) for moment in (before, after)}
        assert stored["schedule"] == "@hourly" and stored["next_fire"] in hours, stored
    finally:
        post(stack, "task/kill", alice.token, {"id": task_id})


def test_a_stored_schedule_that_cannot_be_evaluated_fails_its_task_alone(stack, alice):
    """A task stored with croniter's random field (refused since 71adc2bc; one stored before keeps it) stops at its
    next point with a failed run saying why, and reads `failed`; another task due in the same pass still makes its
    runs (docs/orchestrations.md, "A schedule that cannot be evaluated"). Before, the exception failed every pass."""
    orch = ready_orchestration(stack, alice, {"main.py": "print('tick')"})
    body = {"workspace_id": alice.workspace_id, "orch_id": orch["id"], "json": {}}
    made = [post(stack, "task/run_scheduled", alice.token, {**body, "schedule": schedule})
            for schedule in ("0 0 1 1 *", "* * * * * */2")]
    assert all(r.status_code == 200 for r in made), [r.text for r in made]
    bad, good = (r.json()["id"] for r in made)
    try:
        # as stored before 71adc2bc, due first (the pass takes the oldest next_fire first); the notify wakes them
        query(stack, "WITH u AS (UPDATE task_scheduler.tasks SET schedule = 'R * * * *', next_fire = now() - "
                     "interval '1 s' WHERE id = $1::uuid RETURNING 1) SELECT pg_notify("
                     "'railyard_task_scheduler_work', '') FROM u", bad)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            failed = [r for r in runs(stack, alice, bad) if r["status"] == "failure"]
            fired = runs(stack, alice, good)
            if failed and fired:
                break
            time.sleep(0.3)
        assert failed and fired, (runs(stack, alice, bad), runs(stack, alice, good))
        [run] = runs(stack, alice, bad)
        assert run["reason"].startswith("schedule cannot be evaluated: schedule 'R * * * *' has a random field (R)")
        assert "kill it and schedule it again" in run["reason"], run
        assert post(stack, "task/get_by_id", alice.token, {"id": bad}).json()["status"] == "failed"
        [stored] = query(stack, "SELECT next_fire, killed FROM task_scheduler.tasks WHERE id = $1::uuid", bad)
        assert stored["next_fire"] is None and not stored["killed"]
    finally:
        for task_id in (bad, good):
            post(stack, "task/kill", alice.token, {"id": task_id})
