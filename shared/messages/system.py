"""Platform-level events."""

from __future__ import annotations

from shared.messages.base import Event


class ServiceStarted(Event):
    """A service process finished starting and is serving its subjects."""

    name: str
    version: str
    pid: int
