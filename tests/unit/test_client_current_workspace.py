"""`Client.current_workspace()` answers the workspace as it is now, not the record read at its first call (the
client kept it for its whole life): a `railyard workspaces use` run elsewhere since (the credentials file's choice),
a rename, or the caller's removal from it (NotFound, not a workspace the shortcuts then act on in vain). What was
chosen in this process (`set_current_workspace`, `workspace=`, RAILYARD_CLIENT_WORKSPACE) stays the choice; it is
looked up again at each call. The server is a fake here: the workspaces/list answers, in id order as auth's."""

from __future__ import annotations

from typing import Any

import pytest
from railyard_client import Client
from railyard_client.errors import ConfigurationError, NotFound
from railyard_client.session import Session, with_choice, write_credentials
from railyard_client.workspaces import Workspace

URL = "http://127.0.0.1:28051"


class Server:
    """workspaces/list of the caller: their workspaces, id order; and a saved choice (the credentials file's)."""

    def __init__(self) -> None:
        self.member_of = {3: "alpha", 5: "beta", 8: "gamma"}
        self.saved_workspace: Any = None
        self.calls: list[str] = []

    def records(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n} for i, n in sorted(self.member_of.items())]

    def post(self, route: str, body: dict[str, Any]) -> Any:
        assert route == "workspaces/list", route
        self.calls.append(route)
        return {"workspaces": self.records()[:body.get("limit")], "next_cursor": None}

    def post_pages(self, route: str, body: dict[str, Any], key: str | None = None) -> Any:
        assert (route, key) == ("workspaces/list", "workspaces")
        self.calls.append(route)
        return iter(self.records())


def client_of(server: Server, ref: Any = None) -> Client:
    client = Client.__new__(Client)
    client._session = server
    client._workspace_ref = ref
    client._workspace = None  # the cache of the version before (unused now)
    return client


def test_removed_from_the_current_workspace_is_not_found_not_the_old_record():
    server = Server()
    client = client_of(server)
    client.set_current_workspace("beta")
    assert client.current_workspace().id == 5
    del server.member_of[5]  # an owner removed the caller
    with pytest.raises(NotFound, match="5"):  # was the cached beta, id 5
        client.current_workspace()


def test_a_rename_shows_and_the_choice_is_kept_by_id():
    server = Server()
    client = client_of(server)
    client.set_current_workspace(Workspace(server, {"id": 8, "name": "gamma"}))
    server.member_of[8] = "gamma-renamed"
    assert (client.current_workspace().id, client.current_workspace().name) == (8, "gamma-renamed")


def test_a_choice_saved_elsewhere_since_is_the_next_calls_workspace():
    server = Server()
    client = client_of(server)
    assert client.current_workspace().id == 3  # no choice: the first
    server.saved_workspace = 8  # `railyard workspaces use gamma` in another terminal
    assert client.current_workspace().id == 8  # was 3 for the client's life
    server.saved_workspace = None
    del server.member_of[3]
    assert client.current_workspace().id == 5  # the first now


def test_a_workspace_named_here_comes_before_the_saved_one():
    server = Server()
    server.saved_workspace = 8
    assert client_of(server, "alpha").current_workspace().id == 3


def test_no_workspace_at_all_is_a_configuration_error():
    server = Server()
    server.member_of.clear()
    with pytest.raises(ConfigurationError, match="no workspace"):
        client_of(server).current_workspace()


def test_the_session_reads_the_saved_choice_from_the_file_as_it_is_now(tmp_path):
    path = tmp_path / "credentials.json"
    write_credentials(with_choice({}, URL, None, 3), path)
    session = Session(URL, token="a-token", credentials_file=path)  # a token: no server needed
    try:
        assert session.saved_workspace == 3
        write_credentials(with_choice({}, URL, None, 5), path)  # `railyard workspaces use` since
        assert session.saved_workspace == 5  # was 3: the file as the session started
    finally:
        session.close()


def test_a_choice_kept_by_id_is_not_a_workspace_named_as_that_id():
    """Names may be digits: set_current_workspace keeps its choice by id (and `railyard workspaces use` saves the
    id), so workspace 3 named "8" must not stand for workspace 8 (it comes first in id order, and matched by its
    name the shortcuts went on in workspace 3)."""
    server = Server()
    server.member_of[3] = "8"
    client = client_of(server)
    client.set_current_workspace("gamma")
    assert client.current_workspace().id == 8
    server.saved_workspace = 8  # the file's choice, an id as `railyard workspaces use` writes it
    assert client_of(server).current_workspace().id == 8
    assert client_of(server).workspace("8").id == 3  # a name given as text is still found by its name
