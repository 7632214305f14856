"""`Connection.delete()` deletes that connection or nothing. connections/delete takes a name (seed 001, section 10),
and since registry migration 005 names are unique per owner and per workspace, not across the platform: a name means
the caller's own connection of that name first. So a Connection of another user's (read through a shared workspace)
whose name the caller also gave one of their own sent a delete of the caller's own, which went (204). The server is a
fake here, answering connections/get and connections/delete as services/registry/connections.py does."""

from __future__ import annotations

from typing import Any

import pytest
from railyard_client.connections import Connection
from railyard_client.errors import Conflict

OWN, THEIRS = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


class Session:
    """The caller owns `OWN` named 'db'; `THEIRS`, also 'db', is another user's, attached to the caller's workspace."""

    def __init__(self) -> None:
        self.connections = {OWN: {"id": OWN, "name": "db", "owner": "me"},
                            THEIRS: {"id": THEIRS, "name": "db", "owner": "them"}}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def meant(self, name: str) -> dict[str, Any]:
        named = [c for c in self.connections.values() if c["name"] == name]
        return next((c for c in named if c["owner"] == "me"), named[0])  # the caller's own wins

    def post(self, route: str, body: dict[str, Any]) -> Any:
        self.calls.append((route, body))
        if route == "connections/get":
            return dict(self.meant(body["name"]))
        assert route == "connections/delete", route
        del self.connections[self.meant(body["name"])["id"]]  # the server deletes the caller's own of the name
        return None


def test_deleting_another_users_connection_of_your_own_connections_name_deletes_nothing():
    session = Session()
    with pytest.raises(Conflict, match=f"'db' means another connection to you \\({OWN}\\), not this one"):
        Connection(session, {"id": THEIRS, "name": "db"}).delete()
    assert set(session.connections) == {OWN, THEIRS}
    assert [route for route, _ in session.calls] == ["connections/get"]


def test_deleting_your_own_connection_deletes_it():
    session = Session()
    Connection(session, {"id": OWN, "name": "db"}).delete()
    assert set(session.connections) == {THEIRS}
    assert session.calls == [("connections/get", {"name": "db"}), ("connections/delete", {"name": "db"})]
