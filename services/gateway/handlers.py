"""What the gateway's routes do, as plain async functions over the bus."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream.nats import NatsBroker
from pydantic import BaseModel

from shared import subjects
from shared.bus import PublishRefused, publish_refusals, request
from shared.errors import RailyardError
from shared.messages import CheckHealth, HealthReport
from shared.messages.auth import EndSession, IssueToken, SigningKeys

log = logging.getLogger("railyard.gateway")


async def aggregate_health(broker: NatsBroker, timeout: float = 2.0) -> dict[str, Any]:
    """Ask every service for its health at once; a silent one is reported down."""

    async def one(service: str) -> dict[str, Any]:
        try:
            report = await request(
                broker, subjects.health(service), CheckHealth(), timeout=timeout, reply_model=HealthReport
            )
        except RailyardError as exc:
            return {"name": service, "status": "down", "error": exc.msg}
        return report.model_dump(mode="json", exclude={"pid"})

    reports = await asyncio.gather(*(one(s) for s in subjects.SERVICES))
    healthy = sum(r["status"] == "ok" for r in reports)
    return {
        "status": "ok" if healthy == len(reports) else "degraded",
        "healthy": healthy,
        "total": len(reports),
        "services": {r["name"]: r for r in reports},
    }


async def forward(broker: NatsBroker, subject: str, body: BaseModel, token: str, timeout: float) -> dict[str, Any]:
    """Send a command on the caller's behalf (their token rides along) and return the reply's data."""
    return await request(broker, subject, body, token=token, timeout=timeout)


async def issue_token(broker: NatsBroker, cmd: IssueToken, timeout: float) -> dict[str, Any]:
    return await request(broker, subjects.AUTH_TOKEN_ISSUE, cmd, timeout=timeout)


async def end_session(broker: NatsBroker, cmd: EndSession, timeout: float) -> None:
    """auth.token.logout asked. A NATS server still on the permissions of the release before it (a rolling update, a
    ConfigMap rolling, docker-compose not recreating NATS) drops the gateway's publish there and answers nothing:
    the logout then waited out the request timeout and was a 504. The server's permissions violation ends it at
    once (PublishRefusals.unless_refused, as the deployer's registry.models.exist does): a 503 saying the session
    was not ended, which the CLI warns of and the web UI asks again (docs/auth.md)."""
    asked = request(broker, subjects.AUTH_TOKEN_LOGOUT, cmd, timeout=timeout)
    refusals = publish_refusals(broker)
    try:
        await (refusals.unless_refused(asked, subjects.AUTH_TOKEN_LOGOUT) if refusals else asked)
    except PublishRefused as refused:
        log.warning("a logout could not be sent: %s", refused.msg)
        raise PublishRefused("the session was not ended: this gateway may not ask the auth service to end sessions"
                             " (its NATS server's permissions are of a release before the logout endpoint: a rolling"
                             " update under way?); try again later", violation=refused.violation) from None


async def signing_keys(broker: NatsBroker, timeout: float) -> list[dict[str, Any]]:
    keys = await request(broker, subjects.AUTH_KEYS_GET, {}, timeout=timeout, reply_model=SigningKeys)
    return keys.keys
