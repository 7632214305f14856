"""`python -m shared.cli login` and `token` keep their tokens in the client's credentials file by the client's rules
(railyard_client/session.py): RAILYARD_CLIENT_CREDENTIALS first, each change a read, change and atomic write (a
temporary file beside it, 0600, renamed over it) under the file's lock. Session 39's note: they ignored the variable
(only `logout` honoured it), and wrote the file in place without the lock: truncated first, so a crash mid-write
left it empty; `login` dropped every `workspaces use` choice; and another `railyard` process's write between
`token`'s read and its write was undone."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from urllib.parse import parse_qsl

import httpx
import pytest
from railyard_client import session
from railyard_client.session import read_credentials, saved_choice, with_choice, write_credentials

from shared import cli as server_cli
from shared.client import RailyardClient

URL = "http://127.0.0.1:28051"
SIGNED_IN = {"url": URL, "client_id": "api-client", "client_secret": "s3cret", "username": "alice",
             "access_token": "a.b.c", "refresh_token": "r.e.f", "expires_at": 1.0}
LOGIN = ["login", "--url", URL, "--username", "alice", "--password", "pw", "--client-id", "api-client",
         "--client-secret", "s3cret"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """The variable's file and the default one (which nothing may write while the variable is set)."""
    named = tmp_path / "named" / "credentials.json"
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(named))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(tmp_path / "no-stack"))  # no secrets read: the options only
    return named, tmp_path / "config" / "railyard" / "credentials.json"


@pytest.fixture
def default_file(tmp_path, monkeypatch):
    """The file without the variable: `$XDG_CONFIG_HOME/railyard/credentials.json`."""
    monkeypatch.delenv("RAILYARD_CLIENT_CREDENTIALS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(tmp_path / "no-stack"))
    return tmp_path / "config" / "railyard" / "credentials.json"


@pytest.fixture(autouse=True)
def no_client_variables(monkeypatch):
    """`token` is the client's command: RAILYARD_CLIENT_* variables of the shell running the tests would sign it in."""
    for name in ("RAILYARD_CLIENT_URL", "RAILYARD_CLIENT_TOKEN", "RAILYARD_CLIENT_ID", "RAILYARD_CLIENT_SECRET",
                 "RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD", "RAILYARD_CLIENT_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def grants(monkeypatch):
    """The token endpoint: each grant (password or refresh) hands out the next numbered tokens, to `login` (this
    module's, on shared.client) and to `token` (the client's command, on railyard_client.session, over HTTP)."""
    given: list[dict] = []

    def grant(self, data):
        given.append(data)
        self.access_token, self.refresh_token = f"access-{len(given)}", f"refresh-{len(given)}"
        self.expires_at = time.time() + 300
        return {}

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == session.TOKEN_PATH, request.url
        given.append(dict(parse_qsl(request.content.decode())))
        return httpx.Response(200, json={"access_token": f"access-{len(given)}",
                                         "refresh_token": f"refresh-{len(given)}", "expires_in": 300})

    monkeypatch.setattr(RailyardClient, "_grant", grant)
    real = httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(answer),
                                                                          **kwargs))
    return given


def test_login_and_token_use_the_file_railyard_client_credentials_names(files, grants, capsys):
    named, default = files
    assert server_cli.main(LOGIN) == 0
    assert read_credentials(named)["access_token"] == "access-1"
    assert not default.exists()  # before: written here, whatever the variable said
    assert named.stat().st_mode & 0o777 == 0o600
    assert str(named) in capsys.readouterr().out

    write_credentials(read_credentials(named) | {"expires_at": 0}, named)  # expired: `token` refreshes it
    assert server_cli.main(["token"]) == 0
    assert capsys.readouterr().out.strip() == "access-2"
    assert read_credentials(named)["refresh_token"] == "refresh-2" and not default.exists()


def test_login_keeps_every_workspace_choice(default_file, grants):
    named = default_file
    choices = {URL: {"alice": 3, "bob": 5}, "http://other:18000": {"alice": 7}}
    write_credentials(SIGNED_IN | {"workspaces": choices}, named)
    assert server_cli.main(LOGIN) == 0
    saved = read_credentials(named)
    assert saved["workspaces"] == choices  # before: the file rewritten with the sign-in alone
    assert saved["access_token"] == "access-1"


def test_a_write_between_tokens_read_and_its_write_is_kept(default_file, grants, monkeypatch):
    """`railyard workspaces use` (another process) saves a choice while `token` refreshes: `token` wrote back the
    file it had read, the choice gone. Now its write is a read, change and write under the lock."""
    named = default_file
    write_credentials(SIGNED_IN, named)  # expired: `token` refreshes
    refresh = session.Session._grant  # `token` is the client's command: its session refreshes, after reading the file

    def refresh_while_a_choice_is_saved(self, data):
        chooser = threading.Thread(target=session.update_credentials,
                                   args=(lambda saved: with_choice(saved, URL, "alice", 9), named))
        chooser.start()
        chooser.join(timeout=30)
        return refresh(self, data)

    monkeypatch.setattr(session.Session, "_grant", refresh_while_a_choice_is_saved)
    assert server_cli.main(["token"]) == 0
    saved = read_credentials(named)
    assert saved["refresh_token"] == "refresh-1"
    assert saved_choice(saved, URL, "alice") == 9  # before: None, undone by token's write


def test_concurrent_logins_and_choices_keep_every_key(default_file, grants):
    """Two writers at once, 10 writes each: `login` (the server module's) and `workspaces use` (the client's). Every
    choice and the sign-in are in the file at the end, and the file is never read half-written."""
    named = default_file
    errors: list[BaseException] = []

    def logins():
        try:
            for _ in range(10):
                assert server_cli.main(LOGIN) == 0
        except BaseException as exc:  # noqa: BLE001 (raised in the test's thread below)
            errors.append(exc)

    def choices():
        try:
            for number in range(10):
                session.update_credentials(lambda saved, n=number: with_choice(saved, URL, f"user-{n}", n), named)
                assert read_credentials(named)  # never empty nor half-written
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=logins), threading.Thread(target=choices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    saved = read_credentials(named)
    assert {n: saved_choice(saved, URL, f"user-{n}") for n in range(10)} == {n: n for n in range(10)}
    assert saved["username"] == "alice" and saved["access_token"].startswith("access-")


def test_a_login_that_fails_mid_write_leaves_the_old_file(default_file, grants, monkeypatch, capsys):
    """A full disk half-way through the JSON, then a failure after the temporary file is written (at its rename): the
    file keeps the sign-in it held, and no temporary file is left. Before: opened with O_TRUNC and written in place,
    the file was left holding half a JSON document (read as no sign-in at all), and a write that completed was in
    the file before anything could fail."""
    named = default_file
    old = SIGNED_IN | {"workspaces": {URL: {"alice": 3}}}
    write_credentials(old, named)
    dump = json.dump

    def disk_full(data, handle, **kwargs):
        handle.write(json.dumps(data)[:20])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", disk_full)
    assert server_cli.main(LOGIN) == 1
    assert "could not be saved" in capsys.readouterr().err
    monkeypatch.setattr(json, "dump", dump)
    assert read_credentials(named) == old

    replace = os.replace

    def crash_at_the_rename(source, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash_at_the_rename)
    assert server_cli.main(LOGIN) == 1
    monkeypatch.setattr(os, "replace", replace)
    assert read_credentials(named) == old
    assert sorted(os.listdir(named.parent)) == ["credentials.json", "credentials.json.lock"]  # no temporary left


def test_token_after_logout_says_not_logged_in(default_file, capsys):
    """`railyard logout` keeps the workspace choices in the file: `token` then raised KeyError('url')."""
    named = default_file
    write_credentials({"workspaces": {URL: {"alice": 3}}}, named)
    assert server_cli.main(["token"]) == 1
    assert "not logged in" in capsys.readouterr().err


def test_without_the_client_login_and_token_say_where_the_file_is(files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "railyard_client", None)  # a server-only install
    for command in (LOGIN, ["token"]):
        assert server_cli.main(command) == 2
        assert "install railyard-client" in capsys.readouterr().err


def test_a_refreshed_token_that_cannot_be_saved_is_printed_all_the_same(default_file, grants, monkeypatch, capsys):
    """The refresh spent the file's refresh token and gave a valid access token, then the file could not be written
    (a full disk at the rename): `token` printed nothing and exited 1, that token lost. Now it is printed on stdout,
    the failure on stderr, exit 0 (shared/cli.py TOKEN_EXIT); the file keeps what it held."""
    named = default_file
    write_credentials(SIGNED_IN, named)  # expired: `token` refreshes

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", disk_full)
        assert server_cli.main(["token"]) == 0
    said = capsys.readouterr()
    assert said.out == "access-1\n"
    assert "could not be saved" in said.err and "No space left on device" in said.err
    assert "railyard login" in said.err and "access-1" not in said.err
    assert read_credentials(named)["access_token"] == SIGNED_IN["access_token"]


def test_token_is_the_clients_command_with_its_own_exit_codes(default_file, monkeypatch, capsys):
    """`python -m shared.cli token` was a second implementation (shared.client's RailyardClient on the file alone),
    kept in step with the client's `railyard token` by hand. It is the client's command now, with TOKEN_EXIT's codes:
    a token the client's variables give is printed (before: 'not logged in', exit 1), and a server that cannot be
    reached is one line and exit 1 (before: httpx.ConnectError's traceback)."""
    named = default_file
    monkeypatch.setenv("RAILYARD_CLIENT_URL", URL)
    monkeypatch.setenv("RAILYARD_CLIENT_TOKEN", "given.by.variable")
    assert server_cli.main(["token"]) == 0
    assert capsys.readouterr().out == "given.by.variable\n"
    monkeypatch.delenv("RAILYARD_CLIENT_URL")
    monkeypatch.delenv("RAILYARD_CLIENT_TOKEN")

    write_credentials(SIGNED_IN, named)  # expired: `token` refreshes, and the server is not there

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    real = httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(unreachable),
                                                                          **kwargs))
    monkeypatch.setattr(RailyardClient, "_grant", lambda self, data: unreachable(httpx.Request("POST", URL)))
    assert server_cli.main(["token"]) == 1  # the client's own command says 5
    said = capsys.readouterr()
    assert said.out == "" and said.err.count("\n") == 1 and "cannot reach" in said.err, said.err
    assert read_credentials(named) == SIGNED_IN


def test_login_is_the_clients_command_with_its_own_exit_codes(default_file, grants, monkeypatch, capsys):
    """`python -m shared.cli login` was a second implementation (shared.client's RailyardClient), its defaults not the
    client's `railyard login`'s: it read no RAILYARD_CLIENT_* variable and required a client id (exit 2 with the
    client's variables set, where `railyard login` signs in). It is the client's command now, with LOGIN_EXIT's codes:
    0 signed in; 1 refused or unreachable (one line, 'login failed' with the server's words); 2 nothing to sign in
    with."""
    named = default_file
    monkeypatch.setenv("RAILYARD_CLIENT_USERNAME", "carol")
    monkeypatch.setenv("RAILYARD_CLIENT_PASSWORD", "pw")
    monkeypatch.setenv("RAILYARD_CLIENT_SECRET", "s3cret")
    assert server_cli.main(["login", "--url", URL]) == 0  # before: 2, 'give --client-id, --client-secret, ...'
    saved = read_credentials(named)
    assert (saved["username"], saved["client_id"], saved["access_token"]) == ("carol", "api-client", "access-1")
    assert grants == [{"grant_type": "password", "username": "carol", "password": "pw"}]
    capsys.readouterr()

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_grant", "error_description": "invalid user credentials"})

    real = httpx._client.Client  # `grants` replaced httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(refused),
                                                                          **kwargs))
    assert server_cli.main(LOGIN) == 1  # the client's own command says 3
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "login failed: invalid user credentials" in said, said
    assert read_credentials(named) == saved  # the file as it was

    for name in ("RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD", "RAILYARD_CLIENT_SECRET"):
        monkeypatch.delenv(name)
    assert server_cli.main(["login", "--url", URL]) == 2  # nothing to sign in with (the client's 3)
    assert "no embedded stack secrets" in capsys.readouterr().err
    # an empty password is none (no user has one), nothing sent: 2 as well, saying so (LOGIN_EXIT)
    assert server_cli.main(["login", "--url", URL, "--username", "u", "--password", ""]) == 2
    assert "--password is empty: no user has an empty password" in capsys.readouterr().err


def test_the_help_of_login_and_token_says_their_exit_codes_and_token_takes_no_data_dir(capsys):
    """`token --help` omitted exit 130 and the RAILYARD_CLIENT_* variables the command reads; `token --data-dir` was
    accepted and ignored (the token is the credentials file's or the variables', no stack's): now refused."""
    for command in ("login", "token"):
        with pytest.raises(SystemExit):
            server_cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "130 interrupted" in text and "bad usage" in text, text
    assert "RAILYARD_CLIENT_TOKEN" in text and "RAILYARD_CLIENT_CREDENTIALS" in text
    with pytest.raises(SystemExit) as refused:
        server_cli.main(["token", "--data-dir", "somewhere"])
    assert refused.value.code == 2 and "--data-dir" in capsys.readouterr().err
