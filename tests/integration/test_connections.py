"""Data connections as in the seed's section 10: create, attach, list, get by name and id, detach, delete;
details encrypted at rest and masked in lists; URL checks; isolation."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from shared.db import load_migrations, migrate
from tests.integration import conftest
from tests.integration.conftest import post

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "registry" / "migrations"


def details():
    return {"type": "service_account", "table": "housepricesaga_inputs", "dataset": "release_testing_2023_2",
            "private_key": "-----BEGIN PRIVATE KEY-----abc", "password": "hunter22"}


def create(stack, account, name=None, extra=None):
    name = name or f"bigqueryhouseapiinput-{uuid.uuid4().hex[:6]}"
    response = post(stack, "connections/create", account.token,
                    {"name": name, "type": "BIGQUERY", "details": {**details(), **(extra or {})}})
    return name, response


def test_connection_life_cycle_as_in_the_seed(stack, alice):
    name, response = create(stack, alice)
    assert response.status_code == 200, response.text
    connection_id = response.json()["id"]
    assert uuid.UUID(connection_id)
    attached = post(stack, "connections/add_to_workspace", alice.token,
                    {"workspace_id": alice.workspace_id, "connection_id": connection_id})
    assert attached.status_code == 200 and uuid.UUID(attached.json()["id"]) != uuid.UUID(connection_id)

    listed = post(stack, "connections/list", alice.token, {"workspace_id": alice.workspace_id}).json()
    record = next(c for c in listed["connections"] if c["id"] == connection_id)
    assert record["name"] == name and record["type"] == "BIGQUERY" and record["workspace_names"]
    assert record["details"]["table"] == "housepricesaga_inputs"
    assert record["details"]["password"] == "********" and record["details"]["private_key"] == "********"

    by_name = post(stack, "connections/get", alice.token, {"name": name}).json()
    by_id = post(stack, "connections/get_by_id", alice.token, {"id": connection_id}).json()
    assert by_name == by_id and by_name["details"] == details()

    refused = post(stack, "connections/delete", alice.token, {"name": name})
    assert refused.status_code == 409 and "remove it from them first" in refused.json()["msg"]
    removed = post(stack, "connections/remove_from_workspace", alice.token,
                   {"workspace_id": alice.workspace_id, "connection_id": connection_id})
    assert removed.status_code == 204 and removed.content == b""
    deleted = post(stack, "connections/delete", alice.token, {"name": name})
    assert deleted.status_code == 204
    assert post(stack, "connections/get", alice.token, {"name": name}).status_code == 404


async def test_details_are_encrypted_at_rest(stack, alice):
    name, response = create(stack, alice)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        stored = await conn.fetchval("SELECT details_encrypted FROM registry.connections WHERE name = $1", name)
    finally:
        await conn.close()
    assert b"hunter22" not in bytes(stored) and b"housepricesaga" not in bytes(stored)


def test_names_are_unique_per_owner_and_per_workspace_never_across_tenants(stack, admin, alice, bob, tmp_path):
    """A name conflicts with the caller's own connections (create) and with those attached to the workspace
    (add_to_workspace, whose caller may list them), and a name means what the caller sees. Until 2026-12-05 names
    were unique across the platform: bob's create of a name alice had used was 409, so anyone could ask whether a
    name existed anywhere."""
    name, first = create(stack, alice)
    assert first.status_code == 200, first.text
    again = create(stack, alice, name=name)[1]
    assert again.status_code == 409 and "you already have a connection named" in again.json()["msg"], again.text
    theirs = create(stack, bob, name=name)[1]
    assert theirs.status_code == 200, theirs.text  # says nothing of alice's
    alice_id, bob_id = first.json()["id"], theirs.json()["id"]
    for account, own in ((alice, alice_id), (bob, bob_id)):
        assert post(stack, "connections/get", account.token, {"name": name}).json()["id"] == own
        assert post(stack, "connections/get_by_id", account.token, {"id": name}).json()["id"] == own
        assert post(stack, "connections/add_to_workspace", account.token,
                    {"workspace_id": account.workspace_id, "connection_id": own}).status_code == 200

    # bob joins alice's workspace: his own is still what the name means to him, and a workspace holds one of a name
    alice.client.post("workspaces/add_user", {"email": bob.email, "workspace_id": alice.workspace_id})
    assert post(stack, "connections/get", bob.token, {"name": name}).json()["id"] == bob_id
    refused = post(stack, "connections/add_to_workspace", bob.token,
                   {"workspace_id": alice.workspace_id, "connection_id": bob_id})
    assert refused.status_code == 409 and "already has a connection named" in refused.json()["msg"], refused.text
    assert [c["id"] for c in post(stack, "connections/list", bob.token, {"workspace_id": alice.workspace_id})
            .json()["connections"]] == [alice_id]  # nothing attached by the refused request

    # carol, in both workspaces and owning none: the name is ambiguous to her (409 naming her workspaces), each
    # connection readable by its id
    carol = conftest.make_account(stack, admin, "carol")
    try:
        for account in (alice, bob):
            account.client.post("workspaces/add_user", {"email": carol.email, "workspace_id": account.workspace_id})
        ambiguous = post(stack, "connections/get", carol.token, {"name": name})
        assert ambiguous.status_code == 409 and "get_by_id" in ambiguous.json()["msg"], ambiguous.text
        assert "Client.connection_by_id" in ambiguous.json()["msg"], ambiguous.text  # the SDK's way, named too
        for own in (alice_id, bob_id):
            assert post(stack, "connections/get_by_id", carol.token, {"id": own}).json()["id"] == own
        # the SDK follows the 409's advice: Client.connection raises Conflict, connection_by_id reads each whole
        from railyard_client import Client
        from railyard_client.errors import Conflict

        with Client(stack.base_url, token=carol.token, credentials_file=tmp_path / "credentials.json") as sdk:
            with pytest.raises(Conflict, match="get_by_id"):
                sdk.connection(name)
            for own in (alice_id, bob_id):
                read = sdk.connection_by_id(own)
                assert (read.id, read.name, read.details) == (own, name, details())
        # a delete by name is of the caller's own: bob's, alice's stays (and is then all carol sees of the name)
        assert post(stack, "connections/delete", carol.token, {"name": name}).status_code == 404
        post(stack, "connections/remove_from_workspace", bob.token,
             {"workspace_id": bob.workspace_id, "connection_id": bob_id})
        assert post(stack, "connections/delete", bob.token, {"name": name}).status_code == 204
        assert post(stack, "connections/get", carol.token, {"name": name}).json()["id"] == alice_id
        assert post(stack, "connections/get", bob.token, {"name": name}).json()["id"] == alice_id
    finally:
        carol.client.close()


async def test_migration_005_scopes_names_on_a_database_with_rows(stack, monkeypatch):
    """Registry migration 005 on connections made before it (names unique across the platform): each link gets its
    connection's name, and from then on a name is unique per owner and per workspace, not across owners; a link
    written without the name (a registry of before 005 during a rolling update) gets it from the trigger."""
    directory = MIGRATIONS
    migrations = load_migrations(directory)
    assert [(m.version, m.name) for m in migrations if m.version >= 5][0] == (5, "connection_names_per_owner")
    monkeypatch.setattr(conftest, "load_migrations", lambda folder: [m for m in migrations if m.version < 5])
    owner_a, owner_b, links = uuid.uuid4(), uuid.uuid4(), {}
    async with conftest.service_schema(stack, "regnames", directory) as pool:
        ids = {}
        for name, owner in (("db", owner_a), ("lake", owner_b)):
            ids[name] = await pool.fetchval("INSERT INTO connections (id, name, type, details_encrypted, owner_id)"
                                            " VALUES ($1, $2, 'T', 'x', $3) RETURNING id", uuid.uuid4(), name, owner)
            links[name] = await pool.fetchval("INSERT INTO connection_workspaces (id, connection_id, workspace_id,"
                                              " workspace_name) VALUES ($1, $2, 7, 'w') RETURNING id",
                                              uuid.uuid4(), ids[name])
        schema = await pool.fetchval("SELECT current_schema()")
        monkeypatch.undo()
        await migrate(stack.settings().postgres, schema, migrations)
        named = {r["id"]: r["connection_name"] for r in await pool.fetch(
            "SELECT id, connection_name FROM connection_workspaces")}
        assert named == {links["db"]: "db", links["lake"]: "lake"}
        other = await pool.fetchval("INSERT INTO connections (id, name, type, details_encrypted, owner_id)"
                                    " VALUES ($1, 'db', 'T', 'x', $2) RETURNING id", uuid.uuid4(), owner_b)
        with pytest.raises(asyncpg.UniqueViolationError):  # owner_a's second 'db'
            await pool.execute("INSERT INTO connections (id, name, type, details_encrypted, owner_id)"
                               " VALUES ($1, 'db', 'T', 'x', $2)", uuid.uuid4(), owner_a)
        with pytest.raises(asyncpg.UniqueViolationError):  # workspace 7 has a 'db' already
            await pool.execute("INSERT INTO connection_workspaces (id, connection_id, workspace_id, workspace_name)"
                               " VALUES ($1, $2, 7, 'w')", uuid.uuid4(), other)
        await pool.execute("INSERT INTO connection_workspaces (id, connection_id, workspace_id, workspace_name)"
                           " VALUES ($1, $2, 8, 'v')", uuid.uuid4(), other)
        assert await pool.fetchval("SELECT connection_name FROM connection_workspaces WHERE workspace_id = 8") == "db"


@pytest.mark.parametrize("extra, message", [
    ({"dsn": "postgresql://u@169.254.169.254/x"}, "link-local"),  # any scheme, any key (was: "http or https")
    ({"url": "http://169.254.169.254/latest/meta-data"}, "link-local"),
    ({"endpoint": "http://metadata.google.internal/"}, "metadata"),
    ({"host": "169.254.169.254"}, "link-local"),
])
def test_unsafe_urls_are_refused(stack, alice, extra, message):
    _, response = create(stack, alice, extra=extra)
    assert response.status_code == 400 and message in response.json()["msg"], response.text


def test_a_connection_to_the_platforms_own_servers_is_refused(stack, alice):
    """Loopback is allowed in the development stack, but not the stack's own NATS, PostgreSQL and S3 ports, by URL
    of any scheme, DSN or host and port, at any depth; nothing is stored."""
    env = stack.env
    for extra in ({"url": f"http://127.0.0.1:{env['RAILYARD_STACK__NATS_PORT']}/"},
                  {"endpoint": f"http://localhost:{env['RAILYARD_STACK__S3_PORT']}/railyard-artifacts"},
                  {"host": "127.0.0.1", "port": int(env["RAILYARD_STACK__POSTGRES_PORT"])},
                  {"host": "localhost", "port": env["RAILYARD_STACK__NATS_PORT"]},
                  {"host": f"127.0.0.1:{env['RAILYARD_STACK__POSTGRES_PORT']}"},  # the port in the host
                  {"endpoint": f"localhost:{env['RAILYARD_STACK__S3_PORT']}"},  # no scheme
                  # any scheme, any key, any depth, key=value DSNs
                  {"dsn": f"postgresql://railyard@127.0.0.1:{env['RAILYARD_STACK__POSTGRES_PORT']}/railyard"},
                  {"options": {"servers": [f"nats://localhost:{env['RAILYARD_STACK__NATS_PORT']}"]}},
                  {"bucket": f"s3://127.0.0.1:{env['RAILYARD_STACK__S3_PORT']}/railyard-artifacts"},
                  {"connection_string": f"host=localhost port={env['RAILYARD_STACK__POSTGRES_PORT']} dbname=x"}):
        name, response = create(stack, alice, extra=extra)
        assert response.status_code == 400 and response.json()["code"] == "url_not_allowed", (extra, response.text)
        assert "own servers" in response.json()["msg"]
        assert post(stack, "connections/get", alice.token, {"name": name}).status_code == 404
    # a percent-encoded host (libpq decodes it) and SQL Server's Data Source
    for extra in ({"dsn": f"postgresql://%6c%6fcalhost:{env['RAILYARD_STACK__POSTGRES_PORT']}/x"},
                  {"conn": f"Data Source=127.0.0.1,{env['RAILYARD_STACK__NATS_PORT']};Initial Catalog=x"}):
        name, response = create(stack, alice, extra=extra)
        assert response.status_code == 400 and response.json()["code"] == "url_not_allowed", (extra, response.text)


def test_a_port_that_is_not_one_is_400_naming_the_key(stack, alice):
    """`port: 1.5e300` was a 500 (getaddrinfo overflowed); -1 and "abc" skipped the port check. (An integer beyond 64
    bits, 10**30, the gateway refuses first, also naming `details.port`.)"""
    for port in (1.5e300, -1, "abc", 10**30):
        name, response = create(stack, alice, extra={"host": "localhost", "port": port})
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", (port, response.text)
        assert response.json()["msg"].startswith("details.port: "), response.text
        assert port == 10**30 or "a port must be an integer from 1 to 65535" in response.json()["msg"]
        assert post(stack, "connections/get", alice.token, {"name": name}).status_code == 404


def test_a_customers_database_in_any_scheme_is_kept(stack, alice):
    extra = {"dsn": "postgresql://reader:pw@db.example.com:5432/sales", "replicas": ["nats://10.0.0.7:4222"],
             "url": "ftp://files.example.com/x"}
    name, response = create(stack, alice, extra=extra)
    assert response.status_code == 200, response.text
    assert post(stack, "connections/get", alice.token, {"name": name}).json()["details"]["dsn"] == extra["dsn"]


def test_get_by_id_with_the_name_as_the_seeds_example_sends_it(stack, alice, bob):
    # seed 001 lines 4779-4783: the get_by_id example sends {'id': bigquery_connection_input_name} and shows the
    # connection; a script copied from it got 404 "connection not found"
    name, response = create(stack, alice)
    connection_id = response.json()["id"]
    by_name_as_id = post(stack, "connections/get_by_id", alice.token, {"id": name})
    assert by_name_as_id.status_code == 200, by_name_as_id.text
    assert by_name_as_id.json() == post(stack, "connections/get_by_id", alice.token, {"id": connection_id}).json()
    # the same visibility as by id: an outsider is told nothing, a name nobody has is 404
    assert post(stack, "connections/get_by_id", bob.token, {"id": name}).status_code == 404
    assert post(stack, "connections/get_by_id", alice.token, {"id": name + "-none"}).status_code == 404


def test_outsiders_cannot_see_attach_or_delete(stack, alice, bob):
    name, response = create(stack, alice)
    connection_id = response.json()["id"]
    post(stack, "connections/add_to_workspace", alice.token,
         {"workspace_id": alice.workspace_id, "connection_id": connection_id})
    for path, body in (("connections/get", {"name": name}), ("connections/get_by_id", {"id": connection_id}),
                       ("connections/delete", {"name": name}),
                       ("connections/list", {"workspace_id": alice.workspace_id}),
                       ("connections/add_to_workspace", {"workspace_id": bob.workspace_id,
                                                         "connection_id": connection_id}),
                       ("connections/remove_from_workspace", {"workspace_id": alice.workspace_id,
                                                              "connection_id": connection_id})):
        response = post(stack, path, bob.token, body)
        assert response.status_code == 404, (path, response.text)
    assert post(stack, "connections/get", alice.token, {"name": name}).json()["workspace_names"]
    # a member of an attached workspace sees it
    alice.client.post("workspaces/add_user", {"email": bob.email, "workspace_id": alice.workspace_id})
    assert post(stack, "connections/get", bob.token, {"name": name}).status_code == 200


async def test_every_change_is_an_event(stack, alice):
    import asyncio

    from faststream.nats import NatsBroker

    from shared import subjects
    from shared.bus import request

    broker = NatsBroker(stack.settings().nats.url)
    await broker.connect()

    async def count() -> int:
        reply = await request(broker, subjects.LINEAGE_EVENTS_COUNT, {"subject": subjects.EVENT_CONNECTION_CHANGED})
        return reply["count"]

    try:
        before = await count()
        name, response = await asyncio.to_thread(create, stack, alice)
        connection_id = response.json()["id"]
        for path, body in (("connections/add_to_workspace", {"workspace_id": alice.workspace_id,
                                                             "connection_id": connection_id}),
                           ("connections/remove_from_workspace", {"workspace_id": alice.workspace_id,
                                                                  "connection_id": connection_id}),
                           ("connections/delete", {"name": name})):
            assert (await asyncio.to_thread(post, stack, path, alice.token, body)).status_code in (200, 204)
        for _ in range(50):
            if await count() >= before + 4:
                break
            await asyncio.sleep(0.2)
        assert await count() == before + 4
    finally:
        await broker.stop()


def test_workspace_names_list_only_the_callers_workspaces(stack, alice, bob):
    """A connection attached to A (alice's) and B (bob's, who is also in A): alice learns A's name only, never B's
    name or that B exists; bob, in both, sees both."""
    def workspace_name(account):
        listed = post(stack, "workspaces/list", account.token, {}).json()["workspaces"]
        return next(w["name"] for w in listed if w["id"] == account.workspace_id)

    name, response = create(stack, alice)
    connection_id = response.json()["id"]
    post(stack, "connections/add_to_workspace", alice.token,
         {"workspace_id": alice.workspace_id, "connection_id": connection_id})
    alice.client.post("workspaces/add_user", {"email": bob.email, "workspace_id": alice.workspace_id})
    attached = post(stack, "connections/add_to_workspace", bob.token,
                    {"workspace_id": bob.workspace_id, "connection_id": connection_id})
    assert attached.status_code == 200, attached.text
    a, b = workspace_name(alice), workspace_name(bob)

    listed = post(stack, "connections/list", alice.token, {"workspace_id": alice.workspace_id}).json()
    answers = [next(c for c in listed["connections"] if c["id"] == connection_id),
               post(stack, "connections/get", alice.token, {"name": name}).json(),
               post(stack, "connections/get_by_id", alice.token, {"id": connection_id}).json()]
    for answer in answers:
        assert answer["workspace_names"] == [a], answer
    listed = post(stack, "connections/list", bob.token, {"workspace_id": bob.workspace_id}).json()
    assert next(c for c in listed["connections"] if c["id"] == connection_id)["workspace_names"] == sorted([a, b])
    assert post(stack, "connections/get", bob.token, {"name": name}).json()["workspace_names"] == sorted([a, b])


def test_an_administrator_sees_every_workspace_name(stack, admin, alice):
    """Administrators may list any user's workspaces, so a connection tells them every workspace it is in."""
    admins = f"adm-{uuid.uuid4().hex[:10]}"
    workspace_id = admin.post("workspaces/create", {"workspace_name": admins})["workspace_id"]
    name, response = create(stack, alice)
    connection_id = response.json()["id"]
    post(stack, "connections/add_to_workspace", alice.token,
         {"workspace_id": alice.workspace_id, "connection_id": connection_id})
    admin.post("workspaces/add_user", {"email": alice.email, "workspace_id": workspace_id})
    post(stack, "connections/add_to_workspace", alice.token, {"workspace_id": workspace_id,
                                                               "connection_id": connection_id})
    admin.post("workspaces/remove_user", {"email": alice.email, "workspace_id": workspace_id})
    assert len(post(stack, "connections/get", admin.token, {"name": name}).json()["workspace_names"]) == 2
    assert admins not in post(stack, "connections/get", alice.token, {"name": name}).json()["workspace_names"]
