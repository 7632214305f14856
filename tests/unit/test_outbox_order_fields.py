"""An outbox whose events are about different things (the registry's: model versions, connections, registries) keeps
each thing's events in order: `order_field` names several payload fields, the first one a payload has is its order
key (shared/outbox.py `order_key`). With the registry's single field (model_version) a connection's events had no
key (each row its own), so a refused `created` let its `attached` go out first."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from nats.js import errors as js_errors

from services.registry import store
from shared import subjects
from shared.messages.registry import ConnectionChanged, RegistryChanged
from shared.outbox import Outbox, order_key


def test_the_first_field_a_payload_has_is_its_key():
    version, connection = uuid.uuid4(), uuid.uuid4()
    fields = store.ORDER_FIELDS
    assert order_key({"id": 1, "payload": {"model_version": str(version), "model_id": 3}}, fields) == (
        "model_version", str(version))
    assert order_key({"id": 2, "payload": f'{{"connection_id": "{connection}"}}'}, fields) == (
        "connection_id", str(connection))
    assert order_key({"id": 3, "payload": {"registry_id": None}}, fields) == ("row", 3)  # none: the row alone
    assert order_key({"id": 4, "payload": {"assay_id": 7}}, "assay_id") == ("assay_id", 7)  # one field, as before


class Rows:
    """The outbox table's functions over a list (store.unsent_events / event_sent / event_failed)."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.rows = {i: {"id": i, "event_id": e.event_id, "subject": s, "payload": e.model_dump_json()}
                     for i, (s, e) in enumerate(events, 1)}

    async def unsent_events(self, conn, limit: int, after: int = 0) -> list[dict[str, Any]]:
        return [self.rows[i] for i in sorted(self.rows) if i > after][:limit]

    async def event_sent(self, conn, outbox_id: int) -> None:
        del self.rows[outbox_id]

    async def event_failed(self, conn, outbox_id: int, error: str) -> None:
        pass


class Pool:
    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self

    @contextlib.asynccontextmanager
    async def transaction(self):
        yield


def test_a_refused_event_of_a_connection_holds_up_only_that_connections_later_ones():
    refused, other, registry = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    events = [(subjects.EVENT_CONNECTION_CHANGED, ConnectionChanged(connection_id=refused, action="created")),
              (subjects.EVENT_CONNECTION_CHANGED, ConnectionChanged(connection_id=other, action="created")),
              (subjects.EVENT_CONNECTION_CHANGED, ConnectionChanged(connection_id=refused, action="attached",
                                                                    workspace_id=1)),
              (subjects.EVENT_REGISTRY_CHANGED, RegistryChanged(registry_id=registry, action="created",
                                                                workspace_id=1))]
    rows = Rows(events)
    sent: list[tuple[str, str]] = []
    refusing = [True]

    async def publish(subject: str, event: Any) -> None:
        key = str(getattr(event, "connection_id", None) or event.registry_id)
        if refusing[0] and key == str(refused):
            refusing[0] = False  # the first try of `refused`'s created only
            raise js_errors.BadRequestError(description="message size exceeds maximum allowed")
        sent.append((key, getattr(event, "action", "")))

    outbox = Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                    what="registry events", rows=rows)
    asyncio.run(outbox.send())
    assert sent == [(str(other), "created"), (str(registry), "created")]  # refused's attached waits behind it
    asyncio.run(outbox.send())
    assert sent[2:] == [(str(refused), "created"), (str(refused), "attached")]
    assert rows.rows == {}
