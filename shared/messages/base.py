"""Base message models: commands are imperative, events past tense, replies carry data or an error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ErrorBody


class Message(BaseModel):
    """Base of every bus message: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class Command(Message):
    """A request to a service to do something; answered with a Reply."""


class Event(Message):
    """Something that happened; published to JetStream, never answered."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique id, used for de-duplication.")
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Reply(Message):
    """The envelope of every command reply: `data` when ok, `error` otherwise."""

    ok: bool
    data: dict[str, Any] | None = None
    error: ErrorBody | None = None
    status: int = Field(200, description="HTTP status the gateway answers with.")
