"""`railyard workspaces use` signed in by RAILYARD_CLIENT_* variables (no `railyard login`, as README's Client()
allows): it printed the workspace and wrote `{"workspace": id}` to the credentials file, but a session reads the
file's choice only for the server the file names, and that file named none, so every later command and Client()
went on in the first workspace. Now the choice is kept with the server's URL; a file signed in to another server is
left alone (its choice is that server's) and the command says how to choose instead."""

from __future__ import annotations

import pytest
from railyard_client import cli
from railyard_client.session import Session, read_credentials, write_credentials

URL = "http://127.0.0.1:28050"


class Workspace:
    id, name = 2, "fraud"

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name}


class Client:
    url = URL

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


def test_a_file_signed_in_to_another_server_keeps_its_own_choice(credentials, capsys):
    other = {"url": "http://10.0.0.9:18000", "username": "admin", "access_token": "t", "workspace": 7}
    write_credentials(other, credentials)
    assert cli.main(["workspaces", "use", "fraud"]) == 3
    error = capsys.readouterr().err
    assert "is for http://10.0.0.9:18000" in error and "RAILYARD_CLIENT_WORKSPACE=fraud" in error
    assert read_credentials(credentials) == other  # the old code: that server's workspace became 2


def test_a_choice_behind_railyard_client_workspace_says_the_variable_comes_first(credentials, monkeypatch, capsys):
    """RAILYARD_CLIENT_WORKSPACE comes before the file's choice: `use` saved and printed the choice without a word,
    and the next command went on in the variable's workspace."""
    monkeypatch.setenv("RAILYARD_CLIENT_WORKSPACE", "ops")
    assert cli.main(["workspaces", "use", "fraud"]) == 0
    error = capsys.readouterr().err
    assert "RAILYARD_CLIENT_WORKSPACE=ops is set and comes before this choice" in error  # the old code: nothing
    assert read_credentials(credentials)["workspace"] == 2  # still kept, for when the variable is unset
    monkeypatch.setenv("RAILYARD_CLIENT_WORKSPACE", "fraud")  # the same workspace: nothing to say
    assert cli.main(["workspaces", "use", "fraud"]) == 0
    assert "comes before" not in capsys.readouterr().err
