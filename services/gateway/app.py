"""gateway: transport only. The HTTP server runs in the same event loop as the bus connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket

import uvicorn
from faststream.nats import NatsRouter

from services.gateway.connections import ConnectionLimits, ensure_descriptors, limited_protocol
from services.gateway.http import create_app
from services.gateway.source_address import SourceAddress
from shared.authz import bus_verifier
from shared.errors import Unavailable
from shared.service import Runtime, ServiceSpec
from shared.settings import GatewaySettings

NAME = "gateway"


def build_router(runtime: Runtime) -> NatsRouter:
    """The gateway subscribes to nothing but its health (added by the runner)."""
    return NatsRouter()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise Unavailable(f"port {port} on {host} is already in use (gateway HTTP)") from None


def http_config(app, settings: GatewaySettings) -> uvicorn.Config:  # noqa: ANN001 - an ASGI callable
    """The gateway's uvicorn configuration: httptools with the connection limits (services/gateway/connections.py),
    the body and keep-alive settings."""
    limits = ConnectionLimits(settings.max_connections, settings.max_connections_per_source,
                              SourceAddress(settings.trusted_proxies, settings.trusted_proxy_header))
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="off",
        http=limited_protocol(limits),
        # no WebSocket: the gateway serves none, and an upgraded connection leaves limited_protocol (uvicorn hands
        # the transport to its ws protocol), so its count was never released: each upgrade request held a place of
        # its source and of the total until the process restarted (a trusted proxy's clients could fill the total)
        ws="none",
        loop="none",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting (one middleware less per request); see public_url
        h11_max_incomplete_event_size=settings.max_body_bytes,
        timeout_keep_alive=settings.keep_alive,  # longer than clients reuse idle connections for (settings.py)
    )


def forget_membership(runtime: Runtime, user_id: str, workspace_id: int) -> None:
    """`events.workspace.membership_changed` heard: the inference path caches a member's right to infer (MEMBER_TTL,
    30 s), and a removed member must lose it now, not while the deployment's route stays warm
    (tests/integration/test_tenant_removed_member.py). The user's entry in that workspace is dropped, and a check
    under way is not cached: it may have been read before the change's commit and be answered after the event
    (tests/unit/test_tenant_membership_race.py)."""
    inference = runtime.extras.get("inference")  # None until create_app: nothing is cached yet then
    if inference is not None:
        inference.cache.members.pop((user_id, workspace_id), None)
        inference.cache.membership_changes += 1


async def start_http(runtime: Runtime) -> None:
    settings = runtime.settings.gateway
    _check_port_free(settings.host, settings.port)
    verifier, feed = bus_verifier(runtime.broker, runtime.settings.auth, runtime.settings.nats.request_timeout)
    await feed.start(runtime.broker.config.connection_state.connection,
                     on_membership_changed=functools.partial(forget_membership, runtime))
    runtime.extras.update(verifier=verifier, verifier_feed=feed)
    ensure_descriptors(settings.max_connections)
    server = _Server(http_config(create_app(runtime), settings))
    runtime.extras["http_server"] = server
    runtime.extras["http_task"] = asyncio.create_task(server.serve())
    while not server.started:
        if runtime.extras["http_task"].done():
            runtime.extras["http_task"].result()
            raise Unavailable(f"gateway HTTP server did not start on {settings.host}:{settings.port}")
        await asyncio.sleep(0.02)


async def stop_http(runtime: Runtime) -> None:
    server = runtime.extras.get("http_server")
    if server is not None:
        server.should_exit = True
        await runtime.extras["http_task"]
    feed = runtime.extras.get("verifier_feed")
    if feed is not None:
        await feed.stop()


SPEC = ServiceSpec(name=NAME, build_router=build_router, uses_object_store=True, on_start=start_http,
                   on_stop=stop_http)
