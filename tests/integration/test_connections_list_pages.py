"""connections/list pages as pipelines/list does (docs/api-paging.md): optional `limit` (1-1000) and `cursor`, keyset
in SQL on its order (created_at, then id: the ids are UUIDs, so the cursor is both; the order had no tie-break
before), `next_cursor` beside `connections`, the seed's answer unchanged without `limit`; the SDK's
Workspace.connections() reads it a page at a time."""

from __future__ import annotations

import pytest
from railyard_client import session as sdk_session

from tests.integration.conftest import post, requests_to, sdk_client
from tests.integration.test_connections import create

pytestmark = pytest.mark.integration


def test_connections_list_pages_through_http_and_the_sdk(stack, alice, monkeypatch):
    for _ in range(5):
        _, response = create(stack, alice)
        assert response.status_code == 200, response.text[:300]
        attached = post(stack, "connections/add_to_workspace", alice.token,
                        {"workspace_id": alice.workspace_id, "connection_id": response.json()["id"]})
        assert attached.status_code == 200, attached.text[:300]
    asked = {"workspace_id": alice.workspace_id}
    whole = post(stack, "connections/list", alice.token, asked).json()
    assert list(whole) == ["connections"] and len(whole["connections"]) >= 5  # the seed's answer
    seen, cursor, pages = [], None, 0
    while True:
        page = post(stack, "connections/list", alice.token, {**asked, "limit": 2, **({"cursor": cursor} if cursor
                                                                                      else {})}).json()
        assert 1 <= len(page["connections"]) <= 2, page
        seen += page["connections"]
        pages += 1
        if (cursor := page.get("next_cursor")) is None:
            break
    assert seen == whole["connections"] and pages == (len(seen) + 1) // 2  # each once, in order
    for bad in ("5", "1." + "0" * 31):
        refused = post(stack, "connections/list", alice.token, {**asked, "limit": 2, "cursor": bad})
        assert refused.status_code == 400 and "cursor: not a next cursor of connections/list" in refused.json()["msg"]

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "connections/list")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        assert [c.to_dict() for c in client.current_workspace().connections()] == whole["connections"]
        assert len(sent) == pages and sent[0][1] == {**asked, "limit": 2}
    finally:
        client.close()
