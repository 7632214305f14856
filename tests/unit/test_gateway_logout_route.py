"""The gateway's logout endpoint (73b2f544) before the bus: what it forwards to auth.token.logout, and what it refuses
itself in OAuth2's error shape. A refresh_token longer than EndSession takes (8192 characters) was a pydantic
ValidationError no handler caught: a 500 'internal error' (logged as unhandled) where Keycloak answers 400
invalid_grant. The session's end itself is tests/integration/test_auth_logout.py's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.gateway import handlers
from services.gateway.http import create_app
from shared.settings import Settings

LOGOUT = "/auth/realms/master/protocol/openid-connect/logout"


@pytest.fixture
def gateway(monkeypatch):
    sent = []

    async def end_session(broker, cmd, timeout):
        sent.append(cmd)

    monkeypatch.setattr(handlers, "end_session", end_session)
    app = create_app(SimpleNamespace(settings=Settings(), extras={}, broker=None, objects=None))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, sent


def test_a_logout_is_forwarded_with_the_clients_credentials(gateway):
    client, sent = gateway
    answer = client.post(LOGOUT, data={"refresh_token": "a.b.c"}, auth=("railyard-sdk", "s3cret"))
    assert answer.status_code == 204 and answer.headers["cache-control"] == "no-store", answer.text
    assert [(c.client_id, c.client_secret, c.refresh_token) for c in sent] == [("railyard-sdk", "s3cret", "a.b.c")]


@pytest.mark.parametrize("data, status, error", [
    ({"refresh_token": "x" * 8193}, 400, "invalid_grant"),  # before: 500 internal
    ({}, 400, "invalid_request"),
    ({"refresh_token": "a.b.c", "client_id": ""}, 401, "invalid_client"),
])
def test_a_logout_refused_at_the_gateway_answers_oauths_error(gateway, data, status, error):
    client, sent = gateway
    answer = client.post(LOGOUT, data=data, auth=("railyard-sdk", "s3cret") if data.get("client_id") is None else None)
    assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text
    assert sent == []
