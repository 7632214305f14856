"""The gateway's sign-in routes in process (the token and logout endpoints, the authorization endpoint's sign-in
page) with the auth service's answers stood in for: what each route sent to auth, in order. One helper for
tests/unit/test_gateway_auth_name_bound.py and test_gateway_logout_route.py (`duplicates`: their fixtures were one
code, copied)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.gateway import authorize, handlers
from services.gateway.http import create_app
from shared.settings import Settings


def gateway_app(settings: Settings | None = None) -> FastAPI:
    """The gateway's app with no bus, broker or object store (~0.3 s of CPU: its ~150 routes)."""
    return create_app(SimpleNamespace(settings=settings or Settings(), extras={}, broker=None, objects=None))


@contextmanager
def sign_in_routes(monkeypatch, app: FastAPI | None = None) -> Iterator[tuple[TestClient, list]]:
    """(a client of the gateway's app, the commands it sent to auth): a token request is answered with a token, the
    sign-in page's with a code, a logout with nothing (204); nothing else reaches a bus. The app is built anew unless
    one is given (a module's shared app: the stand-ins are the modules' functions, looked up at each request, and each
    call gets a client of its own, with its own cookies); what an app keeps between requests is its token endpoints'
    buckets."""
    sent: list = []

    async def issue_token(broker, cmd, timeout):
        sent.append(cmd)
        return {"access_token": "t", "expires_in": 60, "token_type": "Bearer"}

    async def end_session(broker, cmd, timeout):
        sent.append(cmd)

    async def bus_request(broker, subject, cmd, **_):  # the sign-in page's auth.authorize
        sent.append(cmd)
        return SimpleNamespace(code="the-code", expires_in=60)

    monkeypatch.setattr(handlers, "issue_token", issue_token)
    monkeypatch.setattr(handlers, "end_session", end_session)
    monkeypatch.setattr(authorize, "bus_request", bus_request)
    with TestClient(app or gateway_app(), raise_server_exceptions=False) as client:
        yield client, sent
