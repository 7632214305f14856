"""The logout endpoint (Keycloak's `/auth/realms/master/protocol/openid-connect/logout`): a client ends the session of a
refresh token it was issued, so that refresh token and every access token of the session are refused, and no other
session of the user is touched. `railyard logout` calls it (session 37's note: it only deleted the local file, and the
saved refresh token went on working until it expired)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from tests.integration.conftest import post
from tests.stack import REPO

pytestmark = pytest.mark.integration

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
LOGOUT_PATH = "/auth/realms/master/protocol/openid-connect/logout"


def _past_the_limit(send) -> httpx.Response:
    """As test_auth.py's: after a 429 from the token endpoints' per-address limit, wait and ask again."""
    for _ in range(10):
        response = send()
        if response.status_code != 429:
            return response
        time.sleep(1.0)
    return response


def _form(stack, path: str, data: dict, auth: tuple[str, str] | None = None) -> httpx.Response:
    secrets = stack.secrets()
    return _past_the_limit(lambda: httpx.post(f"{stack.base_url}{path}", data=data, timeout=30,
                                              auth=auth or (secrets["client_id"], secrets["client_secret"])))


def _sign_in(stack) -> dict:
    secrets = stack.secrets()
    response = _form(stack, TOKEN_PATH, {"grant_type": "password", "username": secrets["admin_username"],
                                         "password": secrets["admin_password"]})
    assert response.status_code == 200, response.text
    return response.json()


def test_logout_ends_that_session_and_no_other(stack):
    ended, other = _sign_in(stack), _sign_in(stack)
    response = _form(stack, LOGOUT_PATH, {"refresh_token": ended["refresh_token"]})
    assert response.status_code == 204, response.text  # before: 404, no such endpoint
    # answered once its event is out: the session's access token is refused at once
    refused = post(stack, "workspaces/list", ended["access_token"])
    assert refused.status_code == 401 and "revoked" in refused.text, refused.text
    again = _form(stack, TOKEN_PATH, {"grant_type": "refresh_token", "refresh_token": ended["refresh_token"]})
    assert again.status_code == 401 and again.json()["error"] == "invalid_grant", again.text
    assert post(stack, "workspaces/list", other["access_token"]).status_code == 200
    refreshed = _form(stack, TOKEN_PATH, {"grant_type": "refresh_token", "refresh_token": other["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    # a second logout of the ended session changes nothing and says so as the first did
    assert _form(stack, LOGOUT_PATH, {"refresh_token": ended["refresh_token"]}).status_code == 204


@pytest.mark.parametrize("data, auth, status, error", [
    ({"refresh_token": "not-a-token"}, None, 400, "invalid_grant"),
    ({}, None, 400, "invalid_request"),
    ({"refresh_token": "x"}, ("api-client", "wrong-secret"), 401, "invalid_client"),
])
def test_a_logout_that_ends_nothing_is_refused(stack, data, auth, status, error):
    response = _form(stack, LOGOUT_PATH, data, auth)
    assert response.status_code == status and response.json()["error"] == error, response.text


def test_an_access_token_is_not_a_refresh_token_here_either(stack):
    tokens = _sign_in(stack)
    response = _form(stack, LOGOUT_PATH, {"refresh_token": tokens["access_token"]})
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
    assert post(stack, "workspaces/list", tokens["access_token"]).status_code == 200


def test_another_client_cannot_end_the_session(stack):
    """The refresh token must be the client's own (its `azp`), as Keycloak checks: the web UI's public client, which
    proves nothing about itself, cannot end a session of the SDK's login client with that session's refresh token."""
    tokens = _sign_in(stack)
    response = _past_the_limit(lambda: httpx.post(f"{stack.base_url}{LOGOUT_PATH}", timeout=30, data={
        "client_id": "railyard-ui", "refresh_token": tokens["refresh_token"]}))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
    assert "another client" in response.json()["error_description"], response.text
    assert post(stack, "workspaces/list", tokens["access_token"]).status_code == 200  # nothing revoked
    refreshed = _form(stack, TOKEN_PATH, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text


def test_railyard_logout_ends_the_saved_session(stack, tmp_path):
    env = stack.env | {"XDG_CONFIG_HOME": str(tmp_path)}

    def railyard(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "railyard_client.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    login = railyard("login")
    assert login.returncode == 0, login.stderr
    saved = tmp_path / "railyard" / "credentials.json"
    refresh_token = json.loads(saved.read_text())["refresh_token"]
    logout = railyard("logout")
    assert logout.returncode == 0 and "warning" not in logout.stderr, logout.stderr
    assert not saved.exists()  # nothing else was in it
    spent = _form(stack, TOKEN_PATH, {"grant_type": "refresh_token", "refresh_token": refresh_token})
    assert spent.status_code == 401 and spent.json()["error"] == "invalid_grant", spent.text  # before: 200
