"""task/run_scheduled takes the macros a Kubernetes CronJob takes (`@hourly`, `@daily`, ...: docs/orchestrations.md,
Schedules) and refuses a time-zone prefix saying schedules are UTC. Before, '@hourly' was a 400 "has 1 fields; cron
needs 5" although the docs say cron is read as CronJobs read it, and 'CRON_TZ=Europe/Paris 0 6 * * *' got "not a
valid cron expression". Through the HTTP API on the real stack: the stored task keeps '@hourly' and its next point is
the next full hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.conftest import post, query
from tests.integration.test_orchestrations import ready_orchestration

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
