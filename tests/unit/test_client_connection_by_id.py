"""`Client.connection_by_id`: the SDK's read of connections/get_by_id. The registry's 409 for a name two of the
caller's workspaces each hold ("get the one you mean by its id") had no SDK method to follow it with (session 31's
noticed item). The server is a fake here answering connections/get and connections/get_by_id as
services/registry/connections.py does; tests/integration/test_connections.py runs it against the stack."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from railyard_client.client import Client
from railyard_client.errors import Conflict, NotFound

ALICES, BOBS = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


class Session:
    """Carol owns no connection; two of her workspaces each have another user's 'db' attached."""

    def __init__(self) -> None:
        self.connections = {ALICES: {"id": ALICES, "name": "db", "type": "PG", "details": {"password": "a"}},
                            BOBS: {"id": BOBS, "name": "db", "type": "PG", "details": {"password": "b"}}}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def post(self, route: str, body: dict[str, Any]) -> Any:
        self.calls.append((route, body))
        if route == "connections/get":
            raise Conflict(409, "conflict", "2 connections attached to your workspaces are named 'db' (in 'a', 'b'):"
                                            " get the one you mean by its id (connections/get_by_id; ...)")
        assert route == "connections/get_by_id", route
        uuid.UUID(body["id"])  # a name would be read as one by the server: the SDK sends ids only
        try:
            return dict(self.connections[body["id"]])
        except KeyError:
            raise NotFound(404, "not_found", "connection not found") from None


def _client(session: Session) -> Client:
    client = Client.__new__(Client)
    client._session = session
    return client


def test_a_name_two_workspaces_hold_is_read_by_id():
    session = Session()
    client = _client(session)
    with pytest.raises(Conflict, match="get the one you mean by its id"):
        client.connection("db")
    for wanted, password in ((ALICES, "a"), (BOBS, "b")):
        connection = client.connection_by_id(wanted)
        assert connection.id == wanted and connection.name == "db" and connection.details == {"password": password}
    assert session.calls[1:] == [("connections/get_by_id", {"id": ALICES}), ("connections/get_by_id", {"id": BOBS})]


def test_an_id_is_sent_in_its_plain_form_whatever_form_it_was_given_in():
    session = Session()
    client = _client(session)
    for given in (uuid.UUID(BOBS), BOBS.upper(), "{" + BOBS + "}", "urn:uuid:" + BOBS):
        assert client.connection_by_id(given).id == BOBS
    assert [body for _, body in session.calls] == [{"id": BOBS}] * 4


def test_an_id_not_seen_is_not_found():
    with pytest.raises(NotFound):
        _client(Session()).connection_by_id(str(uuid.uuid4()))


@pytest.mark.parametrize("given", ["db", "", "1234", ALICES + "0"])
def test_a_value_that_is_not_a_uuid_is_refused_before_anything_is_sent(given):
    """The API reads a get_by_id `id` that is not a UUID as a name (seed 001's example sends one), which would give
    the caller the name's answer (its Conflict again, or their own connection) from a method that says 'by id'."""
    session = Session()
    with pytest.raises(ValueError, match="a connection id is a UUID"):
        _client(session).connection_by_id(given)
    assert session.calls == []
