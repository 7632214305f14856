"""The contract: every message that crosses the bus, as pydantic models (exported to protos/)."""

from shared.messages.base import Command, Event, Message, Reply
from shared.messages.health import CheckHealth, DependencyStatus, HealthReport
from shared.messages.lineage import CountEvents, EventCount
from shared.messages.system import ServiceStarted

__all__ = [
    "CheckHealth",
    "CountEvents",
    "Command",
    "DependencyStatus",
    "Event",
    "EventCount",
    "HealthReport",
    "Message",
    "Reply",
    "ServiceStarted",
]
