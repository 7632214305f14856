"""Health check command and report, answered by every service on `<service>.health`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.messages.base import Command, Message


class CheckHealth(Command):
    """Ask a service how it is."""


class DependencyStatus(Message):
    """One dependency of a service and whether it answered."""

    name: str
    ok: bool
    detail: str = ""


class HealthReport(Message):
    """A service's health: name, version, uptime and the state of what it depends on."""

    name: str
    version: str
    status: Literal["ok", "degraded"]
    uptime_s: float = Field(description="Seconds since the process started serving.")
    pid: int
    dependencies: list[DependencyStatus]
