"""What the gateway's routes do, as plain async functions over the bus."""

from __future__ import annotations

import asyncio
from typing import Any

from faststream.nats import NatsBroker

from shared import subjects
from shared.bus import request
from shared.errors import RailyardError
from shared.messages import CheckHealth, HealthReport


async def aggregate_health(broker: NatsBroker, timeout: float = 2.0) -> dict[str, Any]:
    """Ask every service for its health at once; a silent one is reported down."""

    async def one(service: str) -> dict[str, Any]:
        try:
            report = await request(
                broker, subjects.health(service), CheckHealth(), timeout=timeout, reply_model=HealthReport
            )
        except RailyardError as exc:
            return {"name": service, "status": "down", "error": exc.msg}
        return report.model_dump(mode="json")

    reports = await asyncio.gather(*(one(s) for s in subjects.SERVICES))
    healthy = sum(r["status"] == "ok" for r in reports)
    return {
        "status": "ok" if healthy == len(reports) else "degraded",
        "healthy": healthy,
        "total": len(reports),
        "services": {r["name"]: r for r in reports},
    }
