"""The contract: every message that crosses the bus, as pydantic models (exported to protos/)."""

from typing import TYPE_CHECKING

from shared.messages.base import Command, Event, Message, Reply
from shared.messages.health import CheckHealth, DependencyStatus, HealthReport
from shared.messages.system import ServiceStarted

if TYPE_CHECKING:
    from shared.messages.lineage import CountEvents, EventCount

# Names of the other modules, imported when first asked for: importing this package (every service does, through
# shared.service) then builds only the few models above, not the lineage service's 600 lines of models and what
# they import (~2 MiB of RSS per process; docs/performance.md, "Memory").
_LAZY = {"CountEvents": "lineage", "EventCount": "lineage"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
