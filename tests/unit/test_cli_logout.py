"""`railyard logout` ends the session at the server and removes only the sign-in from the credentials file. Session
37's note: it deleted the whole file, every user's and server's `workspaces use` choice with it, and told the server
nothing, so the saved refresh token (and any copy of it) went on working until it expired. Now it posts the refresh
token to the logout endpoint (Keycloak's `.../protocol/openid-connect/logout`, the client authenticated as for a
token) and keeps the choices; a server that cannot end the session gets a warning, and the tokens go all the same."""

from __future__ import annotations

import base64
import json
import os
import sys

import httpx
import pytest
from railyard_client import cli, session
from railyard_client.session import read_credentials, saved_choice, write_credentials

URL = "http://127.0.0.1:28051"
SIGNED_IN = {"url": URL, "client_id": "api-client", "client_secret": "s3cret", "username": "alice",
             "access_token": "a.b.c", "refresh_token": "r.e.f", "expires_at": 1.0}


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    path = tmp_path / "credentials.json"
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(path))
    return path


@pytest.fixture
def server(monkeypatch):
    """The logout endpoint: records each call, answers `answer` (a status, or an exception to raise)."""
    calls: list[dict] = []
    state = {"answer": 204}

    def post(url, *, data, timeout, auth):
        calls.append({"url": url, "data": data, "auth": auth})
        if isinstance(state["answer"], Exception):
            raise state["answer"]
        if state["answer"] == 204:
            return httpx.Response(204)
        return httpx.Response(state["answer"], json={"error": "invalid_grant",
                                                     "error_description": "invalid refresh token"})

    monkeypatch.setattr(session.httpx, "post", post)
    return calls, state


def test_logout_ends_the_session_at_the_server_and_keeps_every_workspace_choice(credentials, server, capsys):
    calls, _ = server
    choices = {URL: {"alice": 3, "bob": 5}, "http://10.0.0.9:18000": {"carol": 8}}
    write_credentials(SIGNED_IN | {"workspaces": choices}, credentials)
    assert cli.main(["logout"]) == 0
    assert calls == [{"url": f"{URL}/auth/realms/master/protocol/openid-connect/logout",
                      "data": {"refresh_token": "r.e.f"}, "auth": ("api-client", "s3cret")}]  # before: no call
    assert read_credentials(credentials) == {"workspaces": choices}  # before: the file was gone
    said = capsys.readouterr()
    assert f"logged out of {URL} as alice" in said.out and "warning" not in said.err


def test_an_old_files_single_choice_is_kept_as_its_users(credentials, server):
    write_credentials(SIGNED_IN | {"workspace": 7}, credentials)
    assert cli.main(["logout"]) == 0
    saved = read_credentials(credentials)
    assert saved_choice(saved, URL, "alice") == 7 and "refresh_token" not in saved and "url" not in saved


@pytest.mark.parametrize("answer, said", [(400, "answered 400: invalid refresh token"),
                                          (httpx.ConnectError("refused"), f"cannot reach {URL}: refused")])
def test_a_session_the_server_does_not_end_is_forgotten_with_a_warning(credentials, server, capsys, answer, said):
    _, state = server
    state["answer"] = answer
    write_credentials(SIGNED_IN, credentials)
    assert cli.main(["logout"]) == 0
    assert not credentials.exists()  # nothing else was in it
    err = capsys.readouterr().err
    assert "warning: the session was not ended at the server" in err and said in err, err


def test_a_public_clients_sign_in_sends_its_id_in_the_form(credentials, server):
    calls, _ = server
    write_credentials({k: v for k, v in SIGNED_IN.items() if k != "client_secret"} | {"client_id": "railyard-ui"},
                      credentials)
    assert cli.main(["logout"]) == 0
    assert calls[0]["data"] == {"refresh_token": "r.e.f", "client_id": "railyard-ui"} and calls[0]["auth"] is None


def test_nothing_to_end_asks_nothing(credentials, server, capsys):
    calls, _ = server
    write_credentials({"workspaces": {URL: {"alice": 3}}}, credentials)
    assert cli.main(["logout"]) == 0
    assert calls == [] and read_credentials(credentials) == {"workspaces": {URL: {"alice": 3}}}
    assert "not logged in" in capsys.readouterr().out


def test_a_sign_in_saved_while_the_server_is_asked_is_kept(credentials, server, monkeypatch, capsys):
    """`railyard logout` reads the file, then waits up to 10 s for the server: a `railyard login` as bob in that
    window wrote his tokens, and the logout then removed them with alice's (bob signed out without asking). Only the
    sign-in the logout read (its refresh token) is removed, checked under the file's lock."""
    choices = {URL: {"alice": 3}}
    write_credentials(SIGNED_IN | {"workspaces": choices}, credentials)
    bob = SIGNED_IN | {"username": "bob", "access_token": "b.o.b", "refresh_token": "r.b.o.b"}
    asked = session.end_saved_session

    def login_meanwhile(saved, *args, **kwargs):
        said = asked(saved, *args, **kwargs)
        session.update_credentials(lambda now: bob | {"workspaces": now["workspaces"]}, credentials)
        return said

    monkeypatch.setattr(cli, "end_saved_session", login_meanwhile)
    assert cli.main(["logout"]) == 0
    assert server[0][0]["data"] == {"refresh_token": "r.e.f"}  # alice's session was ended
    assert read_credentials(credentials) == bob | {"workspaces": choices}  # before: {"workspaces": choices}
    assert "holds another sign-in saved meanwhile" in capsys.readouterr().out


def jwt(claims: dict) -> str:
    return "h." + base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=") + ".s"


def test_the_same_sign_in_refreshed_while_the_server_is_asked_is_still_removed(credentials, server, monkeypatch,
                                                                                capsys):
    """Another `railyard` process refreshing alice's tokens while logout asks the server writes a new refresh token
    of the same session: that is the sign-in logged out of, not one saved meanwhile. Before, it was kept (compared by
    the token alone), the file held the session's tokens on (working ones had the server not been reached), and
    logout said it kept tokens saved meanwhile."""
    choices = {URL: {"alice": 3}}
    read = jwt({"typ": "Refresh", "jti": "1", "session_state": "s-1"})
    write_credentials(SIGNED_IN | {"refresh_token": read, "workspaces": choices}, credentials)
    refreshed = SIGNED_IN | {"access_token": "a.n.ew", "refresh_token": jwt({"typ": "Refresh", "jti": "2",
                                                                              "session_state": "s-1"})}
    asked = session.end_saved_session

    def refreshed_meanwhile(saved, *args, **kwargs):
        said = asked(saved, *args, **kwargs)
        session.update_credentials(lambda now: refreshed | {"workspaces": now["workspaces"]}, credentials)
        return said

    monkeypatch.setattr(cli, "end_saved_session", refreshed_meanwhile)
    assert cli.main(["logout"]) == 0
    assert server[0][0]["data"] == {"refresh_token": read}
    assert read_credentials(credentials) == {"workspaces": choices}  # before: alice's refreshed tokens kept
    assert "tokens removed" in capsys.readouterr().out


def test_another_session_of_the_same_user_saved_meanwhile_is_kept(credentials, server, monkeypatch):
    """A `railyard login` while logout asks the server is a new session (another session_state), even as the same
    user: kept."""
    write_credentials(SIGNED_IN | {"refresh_token": jwt({"session_state": "s-1"})}, credentials)
    again = SIGNED_IN | {"refresh_token": jwt({"session_state": "s-2"})}
    asked = session.end_saved_session

    def login_meanwhile(saved, *args, **kwargs):
        said = asked(saved, *args, **kwargs)
        session.update_credentials(lambda now: again, credentials)
        return said

    monkeypatch.setattr(cli, "end_saved_session", login_meanwhile)
    assert cli.main(["logout"]) == 0
    assert read_credentials(credentials) == again


def test_the_server_modules_command_line_signs_out_as_railyard_logout(tmp_path, server, monkeypatch, capsys):
    """`python -m shared.cli` had `login` and `token` but no `logout` (closing38): its `logout` is the client's
    `railyard logout` itself, on the file its `login` writes (the session ended at the server, the sign-in removed,
    the choices kept). Without the client installed it says where the command is, exit 2."""
    from shared import cli as server_cli

    calls, _ = server
    monkeypatch.delenv("RAILYARD_CLIENT_CREDENTIALS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    write_credentials(SIGNED_IN | {"workspaces": {URL: {"alice": 3}}}, tmp_path / "railyard" / "credentials.json")
    assert server_cli.main(["logout"]) == 0  # before: SystemExit(2), argparse's "invalid choice: 'logout'"
    assert calls[0]["data"] == {"refresh_token": "r.e.f"} and calls[0]["auth"] == ("api-client", "s3cret")
    assert read_credentials(tmp_path / "railyard" / "credentials.json") == {"workspaces": {URL: {"alice": 3}}}
    assert f"logged out of {URL} as alice" in capsys.readouterr().out

    monkeypatch.setitem(sys.modules, "railyard_client.cli", None)  # a server-only install
    assert server_cli.main(["logout"]) == 2
    assert "install railyard-client" in capsys.readouterr().err


def test_the_server_modules_logout_signs_out_of_the_file_its_login_wrote(tmp_path, server, monkeypatch):
    """`python -m shared.cli login` and `token` use the client's credentials file, RAILYARD_CLIENT_CREDENTIALS first
    (session 40; before, they wrote ~/.config/railyard/credentials.json whatever it said, and session 39's logout
    followed them there): with the variable set, the server module's logout signs out of the variable's file, the
    one its `login` writes, and leaves the default path alone."""
    from shared import cli as server_cli

    calls, _ = server
    named, default = tmp_path / "elsewhere.json", tmp_path / "railyard" / "credentials.json"
    bob = SIGNED_IN | {"username": "bob", "refresh_token": "b.o.b"}
    write_credentials(SIGNED_IN, named)
    write_credentials(bob, default)
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(named))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert server_cli.main(["logout"]) == 0
    assert [call["data"] for call in calls] == [{"refresh_token": "r.e.f"}]
    assert not named.exists() and read_credentials(default) == bob
    assert os.environ["RAILYARD_CLIENT_CREDENTIALS"] == str(named)
