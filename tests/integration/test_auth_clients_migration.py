"""Auth migration 019 on a database with clients: `clients.service_account_id` (the `sub` of a client's tokens, and
the key the revocation list pages revoked clients by) becomes UNIQUE. Clients sharing one (rows copied or written by
hand: every client gets a fresh uuid4) are parted first: the id stays with the client revoked last, so its
revocation keeps refusing every token of that id issued before it (which covers the others' earlier ones); the
others get new ids, and the clients of their own id keep theirs. A later insert of a taken id is refused.

Runs on auth's migrations in a schema of this test's own, migrated to 018 first."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from services.auth import store
from shared.db import load_migrations, migrate
from tests.integration import conftest
from tests.integration.conftest import service_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "auth" / "migrations"


async def test_clients_sharing_a_service_account_are_parted_and_the_id_made_unique(stack, monkeypatch):
    migrations = load_migrations(MIGRATIONS)
    later = [(m.version, m.name) for m in migrations if m.version >= 19]
    assert later[0] == (19, "clients_service_account_unique")
    monkeypatch.setattr(conftest, "load_migrations", lambda directory: [m for m in migrations if m.version < 19])
    shared_id, own_id = uuid.uuid4(), uuid.uuid4()
    clients = {  # client_id: (service account, revoked_at, created seconds ago)
        "live-old": (shared_id, None, 300.0), "revoked-first": (shared_id, 100.0, 200.0),
        "revoked-last": (shared_id, 200.0, 100.0), "live-new": (shared_id, None, 50.0), "own": (own_id, 150.0, 400.0)}
    async with service_schema(stack, "authclients", MIGRATIONS) as pool:
        for client_id, (account, revoked_at, age) in clients.items():
            await pool.execute(
                "INSERT INTO clients (client_id, secret_hash, service_account_id, revoked_at, created_at)"
                " VALUES ($1, 'x', $2, $3, now() - make_interval(secs => $4))", client_id, account, revoked_at, age)
        schema = await pool.fetchval("SELECT current_schema()")
        monkeypatch.undo()
        assert await migrate(stack.settings().postgres, schema, migrations) == [v for v, _ in later]
        after = {r["client_id"]: r["service_account_id"] for r in await pool.fetch(
            "SELECT client_id, service_account_id FROM clients")}
        assert after["revoked-last"] == shared_id and after["own"] == own_id  # nothing else changed
        assert len(set(after.values())) == len(after)  # the other three parted, each a new id
        assert {after[c] for c in ("live-old", "revoked-first", "live-new")}.isdisjoint({shared_id, own_id})
        # the revocation list's part of clients: one entry per id, the shared id at its latest revocation
        listed = {r["key"]: r["at"] for r in await store.revocation_part(pool, 1, 0.0, "", None)}
        assert listed == {str(shared_id): 200.0, str(own_id): 150.0, str(after["revoked-first"]): 100.0}
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute("INSERT INTO clients (client_id, secret_hash, service_account_id)"
                               " VALUES ('dup', 'x', $1)", own_id)
