"""A service's `<name>.health` answers only once every command of the service is subscribed (shared/service.py,
build_broker), so a stack whose gateway reports every service healthy serves a sign-in: the service runner, on a real
nats-server with JetStream (tests/local_nats.py), with one command's subscription held up as a durable subscriber's
JetStream round trip holds up the ones after it at load ~30. The health subscriber came first (FastStream starts the
broker's own subscribers before its routers'), and `auth.token.issue` met no responders after auth answered its health
(the first sign-in a 503 "auth is not running")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import nats.errors
from faststream.nats import NatsRouter
from nats.aio.client import Client

from shared import subjects
from shared.bus import CallContext, command
from shared.messages.base import Command
from shared.service import ServiceSpec, serve
from shared.settings import Settings
from tests.local_nats import local_nats_server

HELD = 1.0
"""Seconds the command's subscription is held up."""


class Ask(Command):
    """A test command."""


def _router(runtime) -> NatsRouter:  # runtime: shared.service.Runtime
    router = NatsRouter()

    @command(router, subjects.AUTH_TOKEN_ISSUE, service="auth")
    async def issue(cmd: Ask, ctx: CallContext) -> dict:
        return {"issued": True}

    return router


def test_health_answers_once_every_command_is_subscribed(tmp_path: Path, monkeypatch) -> None:
    real_subscribe = Client.subscribe

    async def held_up(self, subject: str, *args, **kwargs):  # nats-py's Client.subscribe
        if subject == subjects.AUTH_TOKEN_ISSUE:
            await asyncio.sleep(HELD)
        return await real_subscribe(self, subject, *args, **kwargs)

    monkeypatch.setattr(Client, "subscribe", held_up)

    async def scenario(url: str) -> None:
        stop = asyncio.Event()
        service = asyncio.create_task(serve(ServiceSpec(name="auth", build_router=_router),
                                            Settings(nats={"url": url}), stop))
        caller = await nats.connect(url, max_reconnect_attempts=0)
        try:
            async with asyncio.timeout(60):
                while True:  # as the gateway's aggregate asks, until the service answers its health
                    assert not service.done(), service
                    try:
                        health = await caller.request(subjects.health("auth"), b"{}", timeout=5)
                        break
                    except nats.errors.NoRespondersError:
                        await asyncio.sleep(0.01)
            assert json.loads(health.data)["data"]["status"] == "ok", health.data
            # at once: the command is subscribed (before, no responders for the HELD second after the health)
            answer = await caller.request(subjects.AUTH_TOKEN_ISSUE, b"{}", timeout=5)
            assert json.loads(answer.data)["data"] == {"issued": True}, answer.data
        finally:
            await caller.close()
            stop.set()
            await asyncio.wait_for(service, 30)

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
