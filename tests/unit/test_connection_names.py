"""Which connection a name means (services/registry/connections.py `_named`): names are unique per owner and per
workspace, not across the platform (registry migration 005), so among what the caller sees their own wins, else the
one attached to their workspaces; two attached to different workspaces of theirs are a 409 naming those workspaces;
a delete by name is of the caller's own. Only the caller's own and their workspaces' rows are asked for: the query
gets the caller's id (none for a task run's token) and workspaces. The SQL and the constraints are checked on
PostgreSQL by tests/integration/test_connections.py."""

from __future__ import annotations

import datetime
import uuid

import pytest

from services.registry.connections import ConnectionService
from shared.authz import Principal
from shared.errors import Conflict, NotFound

ME, OTHER, THIRD = (str(uuid.uuid4()) for _ in range(3))


class Pool:
    """Stands in for asyncpg's pool: applies the query's filter (owner, or attached to one of the workspaces) to its
    rows and notes the arguments."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.asked = rows, []

    async def fetch(self, sql: str, name: str, owner: uuid.UUID | None, workspaces: list[int]) -> list[dict]:
        self.asked.append((owner, sorted(workspaces)))
        return [r for r in self.rows if r["name"] == name and (
            r["owner_id"] == owner or set(r["workspace_ids"]) & set(workspaces))]


def _row(owner: str, *workspaces: int, name: str = "db") -> dict:
    return {"id": uuid.uuid4(), "name": name, "type": "T", "details_encrypted": b"", "owner_id": uuid.UUID(owner),
            "created_at": datetime.datetime.now(datetime.UTC), "workspace_ids": list(workspaces),
            "workspace_names": [f"w{w}" for w in workspaces]}


def _service(rows: list[dict], mine: dict[int, str]) -> ConnectionService:
    async def my_workspaces(token):
        return mine

    def membership(token):
        async def lookup(user_id, workspace_id):
            return "user" if workspace_id in mine else None
        return lookup

    return ConnectionService(Pool(rows), None, membership, my_workspaces, None, lambda: None)


def _caller(user: str = ME, *, admin: bool = False, task: str | None = None, workspace: int | None = None):
    return Principal(subject=user, kind="user", admin=admin, client_id="c", username="u", issued_at=0.0,
                     workspace_id=workspace, scoped_task=task)


async def test_the_callers_own_wins_over_one_of_the_same_name_in_their_workspaces():
    own, shared = _row(ME), _row(OTHER, 1)
    service = _service([shared, own], {1: "w1"})
    row, _ = await service._named(_caller(), "t", "db")
    assert row is own
    assert service.pool.asked == [(uuid.UUID(ME), [1])]


async def test_one_in_the_callers_workspaces_is_found_and_two_are_a_409_naming_the_workspaces():
    first, second = _row(OTHER, 1), _row(THIRD, 2, 9)
    row, _ = await _service([first], {1: "w1", 2: "w2"})._named(_caller(), "t", "db")
    assert row is first
    with pytest.raises(Conflict, match=r"2 connections .* named 'db' \(in 'w1', 'w2'\): .*get_by_id, the SDK's "
                       r"Client\.connection_by_id;") as error:
        await _service([first, second], {1: "w1", 2: "w2"})._named(_caller(), "t", "db")
    assert "w9" not in str(error.value)  # a workspace the caller is not in is not named
    with pytest.raises(NotFound):
        await _service([first], {2: "w2"})._named(_caller(), "t", "db")  # not in w1: nobody else's is read


async def test_a_task_runs_token_asks_for_its_workspaces_connections_only():
    own, shared = _row(ME), _row(OTHER, 5)
    service = _service([own, shared], {5: "w5"})
    row, _ = await service._named(_caller(task="task-1", workspace=5), "t", "db")
    assert row is shared and service.pool.asked == [(None, [5])]  # not its owner's own, unattached connection


async def test_a_delete_by_name_is_of_the_callers_own_and_an_administrators_of_what_they_see():
    shared = _row(OTHER, 1)
    with pytest.raises(NotFound):
        await _service([shared], {1: "w1"})._named(_caller(), "t", "db", own_only=True)
    row, _ = await _service([shared], {1: "w1"})._named(_caller(admin=True), "t", "db", own_only=False)
    assert row is shared  # delete: own_only=not principal.admin
    service = _service([shared], {1: "w1"})
    service.pool.rows.append(_row(ME))
    row, _ = await service._named(_caller(), "t", "db", own_only=True)
    assert row["owner_id"] == uuid.UUID(ME)


def _attaching(failures: int):
    """A service whose `_attach` fails `failures` times on the name's key (asyncpg's UniqueViolationError), then links;
    the connection is the caller's own, in their workspace 1."""
    import asyncpg

    from shared.messages.registry import AddConnectionToWorkspace

    own = _row(ME)
    service = _service([own], {1: "w1"})
    calls: list[uuid.UUID] = []

    async def visible(principal, token, where, value):
        return own

    async def attach(connection_id, workspace_id, workspace_name):
        calls.append(connection_id)
        if len(calls) <= failures:
            raise asyncpg.UniqueViolationError("duplicate key value violates unique constraint")
        return uuid.UUID(int=7)

    service._visible, service._attach = visible, attach
    return service, AddConnectionToWorkspace(workspace_id=1, connection_id=str(own["id"])), calls


async def test_an_attach_that_lost_a_race_with_the_same_attach_answers_the_link():
    """Two attaches of one connection to one workspace at once: ON CONFLICT (connection_id, workspace_id) answers only
    for its own key, so the one whose insert overlapped the other's failed on UNIQUE (workspace_id, connection_name)
    instead (7 in 1,200 attaches of 4 at once on PostgreSQL 15) and was answered 409 'workspace already has a
    connection named ...' for the very connection it attached. Tried once more, it finds the link."""
    service, cmd, calls = _attaching(1)
    assert (await service.add_to_workspace(_caller(), "t", cmd)).id == str(uuid.UUID(int=7))
    assert len(calls) == 2
    service, cmd, calls = _attaching(2)  # another connection of the name is attached there: 409, not a loop
    with pytest.raises(Conflict, match="workspace 'w1' already has a connection named 'db'"):
        await service.add_to_workspace(_caller(), "t", cmd)
    assert len(calls) == 2
