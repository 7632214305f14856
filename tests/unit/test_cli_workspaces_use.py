"""`railyard workspaces use` signed in by RAILYARD_CLIENT_* variables (no `railyard login`, as README's Client()
allows): it printed the workspace and wrote `{"workspace": id}` to the credentials file, but a session reads the
file's choice only for the server the file names, and that file named none, so every later command and Client()
went on in the first workspace. Now the choice is kept with the server's URL; a file signed in to another server is
left alone (its choice is that server's).

The choice was one per file (per server): a second user signing in to the same server from the same machine ran
their commands in the first user's workspace (or failed as not a member). Now it is kept per server and user."""

from __future__ import annotations

import base64
import json

import pytest
from railyard_client import cli
from railyard_client.session import Session, read_credentials, saved_choice, with_choice, write_credentials

URL = "http://127.0.0.1:28050"


def jwt(username: str) -> str:
    """An access token as auth issues them, as far as the client reads one (its payload's preferred_username)."""
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "1", "preferred_username": username}).encode())
    return f"e30.{payload.decode().rstrip('=')}.signature"


class Workspace:
    id, name = 2, "fraud"

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name}


class Client:
    url = URL
    username: str | None = None

    def workspace(self, ref: str) -> Workspace:
        assert ref == "fraud"
        return Workspace()


@pytest.fixture
def credentials(tmp_path, monkeypatch):
    path = tmp_path / "credentials.json"
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(path))
    for name in ("URL", "USERNAME", "PASSWORD", "SECRET", "ID", "TOKEN", "WORKSPACE"):
        monkeypatch.delenv(f"RAILYARD_CLIENT_{name}", raising=False)
    monkeypatch.setattr(cli, "_client", lambda workspace=None: Client())
    return path


def test_a_choice_made_without_railyard_login_is_the_next_sessions_workspace(credentials):
    assert cli.main(["workspaces", "use", "fraud", "--json"]) == 0
    # the next command's session, signed in by the variables (a token here: no server needed)
    session = Session(URL, token="from-the-environment", credentials_file=credentials)
    assert session.saved_workspace == 2  # the old code: None (the file named no server), the first workspace used
    session.close()


def test_a_file_signed_in_to_another_server_keeps_its_own_choice(credentials):
    """The old code refused (exit 3) rather than overwrite the other server's one choice; each server has its own
    now, so this server's is saved and the other's kept."""
    other = {"url": "http://10.0.0.9:18000", "username": "admin", "access_token": "t", "workspace": 7}
    write_credentials(other, credentials)
    assert cli.main(["workspaces", "use", "fraud"]) == 0  # the old code: 3
    saved = read_credentials(credentials)
    assert saved_choice(saved, "http://10.0.0.9:18000", "admin") == 7 and saved_choice(saved, URL, None) == 2
    assert {key: saved[key] for key in ("url", "username", "access_token")} == {
        "url": "http://10.0.0.9:18000", "username": "admin", "access_token": "t"}  # still signed in there


def test_two_users_of_one_server_each_keep_their_own_choice(credentials, monkeypatch):
    """alice chose workspace 7 (a file of the old form: one `workspace` for the file's server and user); bob signs in
    to the same server from the same machine (RAILYARD_CLIENT_* variables here; `railyard login` keeps the choices
    as well: test_cli_tables). The old code gave bob alice's 7: his commands ran in her workspace."""
    # signed in as "Alice" (auth matches names case-insensitively, and emails; her token names her "alice")
    write_credentials({"url": URL, "username": "Alice", "access_token": jwt("alice"), "workspace": 7}, credentials)

    def choice(user: str) -> object:
        session = Session(URL, token=jwt(user), credentials_file=credentials)
        assert session.user == user
        try:
            return session.saved_workspace
        finally:
            session.close()

    assert choice("bob") is None  # the old code: 7, alice's
    assert choice("alice") == 7  # the old file is read as hers
    monkeypatch.setattr(Client, "username", "bob")
    assert cli.main(["workspaces", "use", "fraud"]) == 0
    assert (choice("bob"), choice("alice")) == (2, 7)  # the old code: (2, 2), bob's choice became alice's
    assert "workspace" not in read_credentials(credentials)  # rewritten in the new form


def test_a_choice_behind_railyard_client_workspace_says_the_variable_comes_first(credentials, monkeypatch, capsys):
    """RAILYARD_CLIENT_WORKSPACE comes before the file's choice: `use` saved and printed the choice without a word,
    and the next command went on in the variable's workspace."""
    monkeypatch.setenv("RAILYARD_CLIENT_WORKSPACE", "ops")
    assert cli.main(["workspaces", "use", "fraud"]) == 0
    error = capsys.readouterr().err
    assert "RAILYARD_CLIENT_WORKSPACE=ops is set and comes before this choice" in error  # the old code: nothing
    assert saved_choice(read_credentials(credentials), URL, None) == 2  # still kept, for when the variable is unset
    monkeypatch.setenv("RAILYARD_CLIENT_WORKSPACE", "fraud")  # the same workspace: nothing to say
    assert cli.main(["workspaces", "use", "fraud"]) == 0
    assert "comes before" not in capsys.readouterr().err


def test_an_old_files_choice_made_signed_in_by_the_variables_is_still_read(credentials):
    """The previous version's `use`, signed in by the RAILYARD_CLIENT_* variables, wrote the server and its choice
    alone (`{"url", "workspace"}`: no username, no token). 731c55e read that choice as the user "" (a sign-in that
    names none) and a sign-in by the variables, whose token names its user, never found it: after the upgrade every
    command went on in the first workspace. It is read as the choice of a user of that server who has none of their
    own (as that version did), until they choose."""
    write_credentials({"url": URL, "workspace": 7}, credentials)

    def choice(user: str) -> object:
        session = Session(URL, token=jwt(user), credentials_file=credentials)
        try:
            return session.saved_workspace
        finally:
            session.close()

    assert choice("alice") == 7  # 731c55e: None
    write_credentials(with_choice(read_credentials(credentials), URL, "alice", 2), credentials)
    assert (choice("alice"), choice("bob")) == (2, 7)  # her own choice first; the old one still the others'


def test_a_session_refreshed_after_another_user_signed_in_leaves_their_file_alone(credentials):
    """A command still running as alice (a session from the file: it writes its refreshed tokens back) refreshed its
    token after bob signed in with `railyard login` on the same machine: it wrote alice's tokens into bob's file, which
    then named bob and held alice's tokens, so bob's next commands ran as alice (in her workspace). The tokens are
    written back only over the ones this session read or wrote last; another sign-in's file is left as it is."""
    import httpx

    def signed_in(user: str, refresh: str) -> dict:
        return {"url": URL, "client_id": "api-client", "client_secret": "s", "username": user,
                "access_token": jwt(user), "refresh_token": refresh, "expires_at": 0}

    def refreshed(request: httpx.Request) -> httpx.Response:
        assert b"grant_type=refresh_token" in request.content
        return httpx.Response(200, json={"access_token": jwt("alice"), "refresh_token": "alice-2",
                                         "expires_in": 300})

    write_credentials(signed_in("alice", "alice-1"), credentials)
    alice = Session(URL, credentials_file=credentials)
    alice.http = httpx.Client(base_url=URL, transport=httpx.MockTransport(refreshed))
    try:
        assert alice.persist and alice.token == jwt("alice")  # refreshed (the saved token had expired)
        assert read_credentials(credentials)["refresh_token"] == "alice-2"  # her own file: written back
        bob = signed_in("bob", "bob-1")
        write_credentials(bob, credentials)  # `railyard login --username bob`
        alice.expires_at = 0
        assert alice.token == jwt("alice")
        assert read_credentials(credentials) == bob  # the old code: bob's username with alice's tokens
    finally:
        alice.close()


def test_a_choice_saved_while_another_process_refreshes_keeps_both(credentials, monkeypatch):
    """`railyard workspaces use` and a running command's token refresh each read the whole file, changed it and wrote
    it whole: the refresh landing between `use`'s read and its write was undone by it (the spent refresh token written
    back: "the session expired", the next time the access token did), and the other way round the choice was lost.
    Now each reads and writes the file under a lock of it: the refresh waits for `use` to have written (here: it is
    started inside `use`'s read and given a second, in which the old code wrote)."""
    import threading

    import httpx
    from railyard_client import session as session_module

    write_credentials({"url": URL, "client_id": "api-client", "client_secret": "s", "username": "alice",
                       "access_token": jwt("alice"), "refresh_token": "alice-1", "expires_at": 0}, credentials)
    alice = Session(URL, credentials_file=credentials)  # a command still running, in another process
    alice.http = httpx.Client(base_url=URL, transport=httpx.MockTransport(lambda request: httpx.Response(
        200, json={"access_token": jwt("alice"), "refresh_token": "alice-2", "expires_in": 300})))
    refreshing = threading.Thread(target=lambda: alice.token)
    read = session_module.read_credentials

    def read_while_refreshing(path=None):
        saved = read(path)
        if not refreshing.is_alive() and refreshing.ident is None:  # `use`'s read: the refresh starts now
            refreshing.start()
            refreshing.join(timeout=1.0)  # blocked by the lock until `use` has written (the old code: done by then)
        return saved

    monkeypatch.setattr(session_module, "read_credentials", read_while_refreshing)
    monkeypatch.setattr(Client, "username", "alice")
    try:
        assert cli.main(["workspaces", "use", "fraud"]) == 0
        refreshing.join(timeout=30)
        assert not refreshing.is_alive()
    finally:
        alice.close()
    saved = read(credentials)
    assert (saved["refresh_token"], saved_choice(saved, URL, "alice")) == ("alice-2", 2)  # old code: "alice-1"
