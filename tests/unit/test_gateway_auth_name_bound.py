"""The gateway's sign-in routes, in process, with a user name over NAME_CHARS (254): the token endpoint answers
OAuth2's 400 invalid_request and the sign-in page its own error (400), and neither asks the auth service. The
command's validation error was caught by neither route: a 500 'internal error', logged as unhandled (the bus's
400 in tests/unit/test_auth_name_bound.py came only for a command that reached auth some other way).
The sign-in page's 403 (another site's form, an expired one) shows the form again without the name it was sent."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.gateway import authorize, handlers
from services.gateway.http import create_app
from shared.messages.auth import NAME_CHARS
from shared.settings import Settings
from tests.integration.pkce import TOKEN_PATH, UiSignIn, error_code

LONG = "a" * (NAME_CHARS + 1 - len("@example.com")) + "@example.com"


@pytest.fixture
def gateway(monkeypatch):
    asked = []

    async def issue_token(broker, cmd, timeout):
        asked.append(cmd)
        return {"access_token": "t", "expires_in": 60, "token_type": "Bearer"}

    async def bus_request(broker, subject, cmd, **_):
        asked.append(cmd)
        return SimpleNamespace(code="the-code", expires_in=60)

    monkeypatch.setattr(handlers, "issue_token", issue_token)
    monkeypatch.setattr(authorize, "bus_request", bus_request)
    app = create_app(SimpleNamespace(settings=Settings(), extras={}, broker=None, objects=None))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, asked


def test_the_token_endpoint_answers_400_invalid_request_for_a_name_over_the_bound(gateway):
    client, asked = gateway

    def token(username: str):
        return client.post(TOKEN_PATH, auth=("api-client", "s3cret"),
                           data={"grant_type": "password", "username": username, "password": "p"})

    refused = token(LONG)
    assert refused.status_code == 400, refused.text  # was: 500 internal error
    body = refused.json()
    assert body["error"] == "invalid_request" and body["code"] == "invalid_request", body
    assert "username" in body["error_description"] and str(NAME_CHARS) in body["error_description"], body
    assert refused.headers["cache-control"] == "no-store" and asked == []
    assert token(LONG[1:]).status_code == 200 and len(asked) == 1  # at the bound: sent on


def test_the_sign_in_page_answers_its_400_for_a_name_over_the_bound(gateway):
    client, asked = gateway
    tab = UiSignIn(client, "http://testserver/")
    assert tab.open_form().status_code == 200 and tab.csrf
    refused = tab.submit(LONG, "p")
    assert refused.status_code == 400, refused.text  # was: 500 internal error
    assert refused.headers["content-type"].startswith("text/html") and error_code(refused) == "invalid_request"
    assert "username" in refused.text and str(NAME_CHARS) in refused.text
    assert LONG not in refused.text and 'id="signin"' in refused.text  # the form again, without the long name
    assert asked == []
    signed_in = tab.submit(LONG[1:], "p")
    assert signed_in.status_code == 303 and len(asked) == 1, signed_in.text  # at the bound: sent on


@pytest.mark.parametrize("how", ["another-sites-origin", "another-csrf-token"])
def test_the_sign_in_pages_403_does_not_show_the_name_it_was_sent(gateway, how):
    """The 403 for a form another site sent (its Origin, or a CSRF token that is not the cookie's) repeated the
    typed name into the gateway's page: any text another site chose, up to the 1 MiB a form field may be."""
    client, asked = gateway
    tab = UiSignIn(client, "http://testserver/")
    assert tab.open_form().status_code == 200
    headers = {}
    if how == "another-sites-origin":
        headers["Origin"] = "http://evil.example"
    else:
        tab.csrf = "x" * 43
    for typed in ("alice@example.com", "chosen-by-another-site " * 40_000):
        refused = tab.submit(typed, "p", headers=headers)
        assert refused.status_code == 403 and error_code(refused) == "forbidden", refused.text
        assert typed.strip() not in refused.text and len(refused.text) < 4096  # was: the name in the form again
        assert 'id="signin"' in refused.text and asked == []
