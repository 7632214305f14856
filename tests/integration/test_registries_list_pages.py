"""models/list_registries pages as task/list does (docs/api-paging.md): optional `limit` (1-1000) and `cursor`, keyset
in SQL on its order (created_at, then id: a UUID, so the cursor is both), the seed's bare list unchanged without
`limit`, a page's next cursor in the `x-next-cursor` header; the SDK (Workspace.registries) reads it a page at a time.
Before, `limit` was refused and the list was answered whole. The registries are rows (no token, so nothing to
decrypt), attached to the workspace; one of another workspace is never listed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from railyard_client import session as sdk_session

from tests.integration.conftest import post, requests_to, sdk_client

pytestmark = pytest.mark.integration


async def registry_rows(stack, account, count: int) -> list[str]:
    """`count` registries attached to the account's workspace (the last two created at the same moment, so the id
    orders them) and one of no workspace of the account's; the ids of the workspace's, oldest first."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    created = [base + timedelta(minutes=min(n, count - 2)) for n in range(count)]
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch(
            "INSERT INTO registry.registries (id, name, url, owner_id, created_at) SELECT gen_random_uuid(),"
            " 'paged' || n, 'https://mlflow.example.com', $1, c FROM unnest($2::timestamptz[]) WITH ORDINALITY"
            " AS t(c, n) RETURNING id, created_at", uuid.UUID(account.user_id), created)
        await conn.execute("INSERT INTO registry.registry_workspaces (registry_id, workspace_id)"
                           " SELECT unnest($1::uuid[]), $2", [r["id"] for r in rows], account.workspace_id)
        await conn.execute("INSERT INTO registry.registries (id, name, url, owner_id) VALUES ($1, 'elsewhere',"
                           " 'https://mlflow.example.com', $2)", uuid.uuid4(), uuid.UUID(account.user_id))
    finally:
        await conn.close()
    return [str(r["id"]) for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]


async def test_registries_page_through_http_and_the_sdk(stack, alice, monkeypatch):
    ids = await registry_rows(stack, alice, 5)
    asked = {"workspace_id": alice.workspace_id}
    whole = post(stack, "models/list_registries", alice.token, asked)
    assert "x-next-cursor" not in whole.headers and [r["id"] for r in whole.json()] == ids  # the seed's bare list
    seen, cursors, cursor = [], [], None
    while True:  # each registry once, in order, 2 a page
        page = post(stack, "models/list_registries", alice.token,
                    {**asked, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200 and isinstance(page.json(), list), page.text[:300]
        seen.append(page.json())
        if (cursor := page.headers.get("x-next-cursor")) is None:
            break
        cursors.append(cursor)
        assert len(seen) < 10, seen
    assert seen == [whole.json()[0:2], whole.json()[2:4], whole.json()[4:]]
    assert [c.split(".")[1] for c in cursors] == [uuid.UUID(ids[1]).hex, uuid.UUID(ids[3]).hex]
    for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                       ({"limit": 1001}, "limit: Input should be less than or equal to 1000"),
                       ({"limit": 2, "cursor": "17"}, "cursor: not a next cursor of models/list_registries"),
                       ({"limit": 2, "cursor": "9" * 19 + "." + "0" * 32}, "cursor: not a next cursor")):
        refused = post(stack, "models/list_registries", alice.token, {**asked, **bad})
        assert refused.status_code == 400 and words in refused.json()["msg"], refused.text[:300]

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "models/list_registries")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        assert [r.id for r in client.current_workspace().registries()] == ids
        assert [body.get("cursor") for _, body in sent] == [None, *cursors]
        assert all(body["limit"] == 2 for _, body in sent)
    finally:
        client.close()
