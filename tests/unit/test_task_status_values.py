"""A task record's `status` is one of the values the task scheduler answers, and the API's schema says which: it
described them as "... or the last run's outcome for one-shot tasks: success, failed", while a one-shot task whose
run succeeded reads `started` (the seed's pending, started and failed; docs/orchestrations.md), which a new user
reading /v1/api/docs then took for a task still running."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import get_args

from services.task_scheduler.handlers import _task_status
from shared.messages.tasks import TaskRecord, TaskStatus


def test_every_status_the_scheduler_answers_is_in_the_records_schema_and_no_other():
    answered = set()
    for killed, schedule, next_fire in itertools.product((False, True), (None, "* * * * *"), (None, datetime.now(UTC))):
        row = {"killed": killed, "schedule": schedule, "next_fire": next_fire}
        for last in (None, "queued", "running", "success", "failure"):
            runs = [] if last is None else [{"status": last, "running": last in ("queued", "running"),
                                             "started": last != "queued"}]
            answered.add(_task_status(row, runs))
    schema = TaskRecord.model_json_schema()["properties"]["status"]
    assert answered == set(get_args(TaskStatus)) == set(schema["enum"])
    assert "success" not in schema["description"]  # a run's status, never a task's
