"""Messages of the workflow-lineage service."""

from __future__ import annotations

from shared.messages.base import Command, Message


class CountEvents(Command):
    """How many domain events the lineage service has recorded (optionally for one subject)."""

    subject: str | None = None


class EventCount(Message):
    """The number of recorded events."""

    count: int
