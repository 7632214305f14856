"""A rolling update of the task scheduler (docs/orchestrations.md, Outcome; docs/deployment.md, "Rolling updates and
new event kinds"): a process of before session 34 has no model for `events.task_run.queued` (a put-back's event,
written by a newer process). Decided (session 35): its outbox holds that run's later events (late, never out of
order), goes on with every other run's, and a newer process then sends the held ones in their order. The outbox's
own code (shared/outbox.py) with the scheduler's subjects and order field; the table a list
(test_outbox_order_fields)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from services.task_scheduler import store
from shared import subjects
from shared.messages.tasks import TaskRunFailed, TaskRunQueued, TaskRunStarted
from shared.outbox import Outbox
from tests.unit.test_outbox_order_fields import Pool, Rows


def _event(kind: type, run: uuid.UUID, status: str) -> Any:
    return kind(run_id=run, task_id=uuid.UUID(int=1), orch_id=uuid.UUID(int=2), orch_sha="0" * 64, workspace_id=1,
                owner_id="u", status=status)


def test_an_older_process_holds_a_put_back_runs_later_events_and_a_newer_one_sends_them_in_order():
    put_back, other = uuid.uuid4(), uuid.uuid4()
    rows = Rows([(subjects.EVENT_TASK_RUN_STARTED, _event(TaskRunStarted, put_back, "running")),
                 (subjects.EVENT_TASK_RUN_QUEUED, _event(TaskRunQueued, put_back, "queued")),
                 (subjects.EVENT_TASK_RUN_STARTED, _event(TaskRunStarted, other, "running")),
                 (subjects.EVENT_TASK_RUN_STARTED, _event(TaskRunStarted, put_back, "running")),
                 (subjects.EVENT_TASK_RUN_FAILED, _event(TaskRunFailed, put_back, "failure"))])
    sent: list[tuple[uuid.UUID, str]] = []

    async def publish(subject: str, event: Any) -> None:
        sent.append((event.run_id, subject.rsplit(".", 1)[1]))

    older = {subject: kind for subject, kind in store.EVENT_TYPES.items() if subject != subjects.EVENT_TASK_RUN_QUEUED}
    for event_types in (older, store.EVENT_TYPES):
        asyncio.run(Outbox(Pool(), publish, event_types=event_types, order_field="run_id", what="task run events",
                           rows=rows).send())
        if event_types is older:  # the put-back run's first event, then nothing of it past the row it cannot read
            assert sent == [(put_back, "started"), (other, "started")], sent
            assert len(rows.rows) == 3, rows.rows
    assert sent == [(put_back, "started"), (other, "started"), (put_back, "queued"), (put_back, "started"),
                    (put_back, "failed")], sent
    assert rows.rows == {}
