"""A model's latest version is its newest upload (the seed's list is oldest first: `response[-1]` is the latest), and
models/list_versions answers it without reading every version: `order` "newest" lists the versions newest first
(whole, or a page with `limit` and `cursor`, keyset on the row id), so `limit` 1 is the latest. The SDK's
Model.latest_version / get_version("latest") ask for that one version, and get_version(-k), by UUID or by sha256 read
newest first up to the page that holds it. Before, `order` was refused (an extra field), and the SDK read every page
of the versions oldest first to take the last one: a model with 10,000 versions was 10 requests of 1000 versions to
find one, for every pipeline step and set_model that names "latest". The versions are rows (an upload each would take
minutes)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from railyard_client import session as sdk_session
from railyard_client.errors import NotFound

from tests.integration.conftest import post, requests_to, sdk_client

pytestmark = pytest.mark.integration


async def model_with_versions(stack, account, count: int) -> tuple[int, str, list[int], list[str], list[str]]:
    """A model of the account's workspace with `count` ready versions, as rows: its id and name, the versions' row ids,
    model_version UUIDs and sha256s, oldest first. The last two share a sha (the same bytes uploaded twice)."""
    name = f"ordered{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        model_id = await conn.fetchval("INSERT INTO registry.models (workspace_id, name, owner_id) VALUES ($1, $2, $3)"
                                       " RETURNING id", account.workspace_id, name, uuid.UUID(account.user_id))
        rows = await conn.fetch(
            "INSERT INTO registry.model_versions (model_id, model_version, owner_id, file_name, framework, runtime,"
            " status, sha, source_sha, size) SELECT $1, gen_random_uuid(), $2, 'm' || g || '.onnx', 'onnx', 'onnx',"
            " 'ready', md5(least(g, $3 - 1)::text), md5(g::text), 1 FROM generate_series(1, $3) g"
            " RETURNING id, model_version, sha", model_id, uuid.UUID(account.user_id), count)
    finally:
        await conn.close()
    rows = sorted(rows, key=lambda r: r["id"])
    return (model_id, name, [r["id"] for r in rows], [str(r["model_version"]) for r in rows],
            [r["sha"] for r in rows])


async def test_newest_first_pages_and_the_latest_version(stack, alice, monkeypatch):
    model_id, name, row_ids, versions, shas = await model_with_versions(stack, alice, 5)
    asked = {"models_pk_id": model_id}
    oldest = post(stack, "models/list_versions", alice.token, asked).json()
    assert [v["model_version"] for v in oldest] == versions  # the seed's order: the latest is the last
    newest = post(stack, "models/list_versions", alice.token, {**asked, "order": "newest"})
    assert newest.status_code == 200, newest.text[:300]
    assert newest.json() == oldest[::-1]
    latest = post(stack, "models/list_versions", alice.token, {**asked, "order": "newest", "limit": 1})
    assert [v["model_version"] for v in latest.json()] == [versions[-1]]
    assert latest.headers["x-next-cursor"] == str(row_ids[-1])
    seen, cursors, cursor = [], [], None
    while True:  # newest first, each once, 2 a page
        page = post(stack, "models/list_versions", alice.token,
                    {**asked, "order": "newest", "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text[:300]
        seen.append(page.json())
        if (cursor := page.headers.get("x-next-cursor")) is None:
            break
        cursors.append(cursor)
        assert len(seen) < 10, seen
    assert seen == [oldest[4:2:-1], oldest[2:0:-1], oldest[0:1]]
    assert cursors == [str(row_ids[3]), str(row_ids[1])]
    # oldest first pages as before
    first = post(stack, "models/list_versions", alice.token, {**asked, "order": "oldest", "limit": 2})
    assert first.json() == oldest[0:2] and first.headers["x-next-cursor"] == str(row_ids[1])
    bad = post(stack, "models/list_versions", alice.token, {**asked, "order": "updated"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request" and "order" in bad.json()["msg"]

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "models/list_versions")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        model = client.current_workspace().model(name)
        assert model.latest_version().version == versions[-1]
        assert model.get_version("latest").version == versions[-1]
        assert sent == [("models/list_versions", {"models_pk_id": model_id, "limit": 1, "order": "newest"})] * 2
        sent.clear()
        assert model.get_version(-1).version == versions[-1] and model.get_version(-3).version == versions[2]
        assert [body.get("cursor") for _, body in sent] == [None, None, str(row_ids[3])]  # -3: the second page
        assert all(body["order"] == "newest" for _, body in sent)
        sent.clear()
        assert model.get_version(1).version == versions[1]  # counted from the first upload: oldest first
        assert sent == [("models/list_versions", {"models_pk_id": model_id, "limit": 2})]
        assert model.get_version(versions[3]).version == versions[3]
        assert model.get_version(shas[-1]).version == versions[-1]  # the newest with that sha (as pipelines pin it)
        with pytest.raises(NotFound, match="has 5 versions"):
            model.get_version(5)
        with pytest.raises(NotFound, match="has 5 versions"):
            model.get_version(-6)
        assert [v.version for v in model.versions()] == versions  # oldest first, as documented
        sent.clear()
        assert model.get_version(versions[4]).refresh().version == versions[4]
        assert sent[-1] == ("models/list_versions", {"models_pk_id": model_id, "limit": 2, "order": "newest"})
    finally:
        client.close()


async def test_a_model_without_versions(stack, alice):
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        model_id = await conn.fetchval("INSERT INTO registry.models (workspace_id, name, owner_id) VALUES ($1, $2, $3)"
                                       " RETURNING id", alice.workspace_id, f"empty{uuid.uuid4().hex[:6]}",
                                       uuid.UUID(alice.user_id))
    finally:
        await conn.close()
    answer = post(stack, "models/list_versions", alice.token, {"models_pk_id": model_id, "order": "newest",
                                                               "limit": 1})
    assert answer.status_code == 200 and answer.json() == [] and "x-next-cursor" not in answer.headers
