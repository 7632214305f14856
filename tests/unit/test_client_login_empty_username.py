"""`railyard login --username ""` is refused, nothing sent (exit 3; `python -m shared.cli login` 2, LOGIN_EXIT), as an
empty --password is: until session 43 it was read as no --username and signed in as RAILYARD_CLIENT_USERNAME's user
or the embedded stack's admin, saving their tokens, where `--username "$NAME"` with NAME unset meant someone else."""

from __future__ import annotations

import json

import httpx
import pytest
from railyard_client import cli, session

from shared import cli as server_cli

URL = "http://127.0.0.1:28052"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A variable's user and password, and an embedded stack's secrets whose admin a fallback would sign in as; every
    request the SDK makes is recorded (and answered with tokens)."""
    stack = tmp_path / "stack"
    stack.mkdir()
    (stack / "secrets.json").write_text(json.dumps({"admin_username": "admin", "admin_password": "adminpw",
                                                    "client_id": "api-client", "client_secret": "s"}))
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(stack))
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(tmp_path / "credentials.json"))
    monkeypatch.setenv("RAILYARD_CLIENT_USERNAME", "carol")
    monkeypatch.setenv("RAILYARD_CLIENT_PASSWORD", "carolpw")
    sent: list[dict] = []

    def grant(request: httpx.Request) -> httpx.Response:
        sent.append(dict(httpx.QueryParams(request.content.decode())))
        return httpx.Response(200, json={"access_token": "a", "refresh_token": "r", "expires_in": 300})

    real = httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(grant),
                                                                      **kwargs))
    return tmp_path / "credentials.json", sent


@pytest.mark.parametrize("main, code", [(cli.main, 3), (server_cli.main, 2)], ids=["railyard", "shared.cli"])
def test_an_empty_username_is_refused_not_read_as_the_variables_or_the_stacks_admin(env, capsys, main, code):
    saved, sent = env
    for password in (["--password", "pw"], []):  # the variable's password, or the stack's admin's
        assert main(["login", "--url", URL, "--username", "", *password]) == code  # was 0, signed in as carol/admin
        err = capsys.readouterr().err
        assert "--username is empty: give the user's name or email" in err and len(err.strip().splitlines()) == 1
        assert sent == [] and not saved.exists()  # nothing sent, nothing saved
    assert main(["login", "--url", URL]) == 0  # no --username: the variable's user, as before
    assert [s.get("username") for s in sent] == ["carol"] and json.loads(saved.read_text())["username"] == "carol"
