"""A send called outside the outbox's loop (assays/create sends its events.assay.created before it answers; a stop's
last send) that finds another process sending (shared/outbox.py `SendingElsewhere`, d9c019e) leaves its rows to be
tried again at the RETRY pace, as the loop's own round does. Before, only the loop's next wait knew of it: the loop
was waiting its IDLE round (60 s), so the new row stayed unsent for up to a minute although the other process had
long finished (its round had read its batch before the row was committed)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from services.registry import store
from shared import outbox as outbox_module
from shared import subjects
from shared.messages.registry import ConnectionChanged
from shared.outbox import Outbox, SendingElsewhere
from tests.unit.test_outbox_order_fields import Pool, Rows


class SharedRows(Rows):
    """The table, and whether another process holds the sender's lock now."""

    def __init__(self) -> None:
        super().__init__([])
        self.elsewhere = False

    def add(self, action: str) -> None:
        event = ConnectionChanged(connection_id=uuid.uuid4(), action=action)
        row_id = max(self.rows, default=0) + 1
        self.rows[row_id] = {"id": row_id, "event_id": event.event_id, "subject": subjects.EVENT_CONNECTION_CHANGED,
                             "payload": event.model_dump_json()}

    async def unsent_events(self, conn, limit: int, after: int = 0) -> list[dict[str, Any]]:
        if self.elsewhere:
            raise SendingElsewhere
        return await super().unsent_events(conn, limit, after)


def test_a_send_that_found_another_process_sending_is_tried_again_soon(monkeypatch):
    monkeypatch.setattr(outbox_module, "IDLE", 60.0)  # its value today; a test must not depend on it
    rows = SharedRows()
    sent: list[str] = []

    async def publish(subject: str, event: Any) -> None:
        sent.append(event.action)

    async def scenario() -> float:
        box = Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                     what="registry events", retry=0.05, rows=rows)
        task = asyncio.create_task(box.run())
        try:
            await asyncio.sleep(0.2)  # its round at start found nothing: it waits its IDLE round now
            rows.add("created")  # committed by a route, while another process sends
            rows.elsewhere = True
            assert await box.send() == 0  # the route's own send: not now
            rows.elsewhere = False  # the other process's round is over (it had read its batch before the row)
            started = time.monotonic()
            for _ in range(200):  # 2 s at most (the IDLE round would come after 60 s)
                if sent:
                    break
                await asyncio.sleep(0.01)
            return time.monotonic() - started
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    waited = asyncio.run(scenario())
    assert sent == ["created"], f"still unsent after {waited:.1f} s"
    assert rows.rows == {}
