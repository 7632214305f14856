"""models/list pages as pipelines/list does (docs/api-paging.md): optional `limit` (1-1000) and `cursor`, keyset by
id in SQL, newest first, `next_cursor` beside `models`, the seed's answer unchanged without `limit`; the SDK (and so
`railyard models list`) reads it a page at a time. Before, a workspace's models past a bus reply (tens of thousands)
were the generic 422 with no way to page, and the SDK asked the whole list. The models are rows (a model upload
each would take minutes for the lists a page needs)."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
from railyard_client import cli
from railyard_client import session as sdk_session

from tests.integration import ui_browser as ui
from tests.integration.conftest import cli_env, make_account, post, requests_to, sdk_client
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration


async def model_rows(stack, workspace_id: int, owner: str, count: int) -> list[int]:
    """`count` models of the workspace, as rows; their ids, oldest first."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch("INSERT INTO registry.models (workspace_id, name, owner_id) SELECT $1, $2 || g, $3"
                                " FROM generate_series(1, $4) g RETURNING id", workspace_id,
                                f"paged{uuid.uuid4().hex[:6]}-", uuid.UUID(owner), count)
    finally:
        await conn.close()
    return sorted(row["id"] for row in rows)


async def test_models_list_pages_through_http_the_sdk_and_the_cli(stack, alice, tmp_path, monkeypatch, capsys):
    ids = await model_rows(stack, alice.workspace_id, alice.user_id, 5)
    asked = {"workspace_id": alice.workspace_id}
    whole = post(stack, "models/list", alice.token, asked).json()
    assert list(whole) == ["models"] and [m["id"] for m in whole["models"]] == ids[::-1]  # the seed's answer
    newest = ids[::-1]
    first = post(stack, "models/list", alice.token, {**asked, "limit": 2}).json()
    assert first == {"models": whole["models"][:2], "next_cursor": str(newest[1])}
    second = post(stack, "models/list", alice.token, {**asked, "limit": 2, "cursor": first["next_cursor"]}).json()
    assert second == {"models": whole["models"][2:4], "next_cursor": str(newest[3])}
    last = post(stack, "models/list", alice.token, {**asked, "limit": 2, "cursor": second["next_cursor"]}).json()
    assert last == {"models": whole["models"][4:]}  # the last page: no next_cursor
    for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                       ({"limit": 1001}, "limit: Input should be less than or equal to 1000"),
                       ({"limit": 2, "cursor": "x"}, "cursor: not a next_cursor of models/list")):
        refused = post(stack, "models/list", alice.token, {**asked, **bad})
        assert refused.status_code == 400 and words in refused.json()["msg"], refused.text[:300]

    client = sdk_client(stack, alice)
    sent = requests_to(client, "models/list")
    monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
    workspace = client.current_workspace()
    assert [m.to_dict() for m in workspace.models()] == whole["models"]
    assert [body.get("cursor") for _, body in sent] == [None, str(newest[1]), str(newest[3])]
    sent.clear()  # by name: the pages up to the one that holds it
    assert workspace.model(whole["models"][2]["name"]).id == newest[2]
    assert [body.get("cursor") for _, body in sent] == [None, str(newest[1])]

    cli_env(stack, alice, monkeypatch, tmp_path / "config")
    capsys.readouterr()
    assert cli.main(["models", "list", "--json"]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == newest


browser = ui.browser  # the headless Chromium (without one, the UI tests skip, the API tests run)

# records each models/list request the page sends (its JSON body) and cuts its page size to 2
RECORD_MODELS = """
window.modelPages = [];
if (!window.modelsFetch) {
  window.modelsFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).endsWith('/v1/api/models/list')) window.modelPages.push(JSON.parse(init.body));
    return window.modelsFetch.apply(this, arguments);
  };
}
LIST_PAGE = 2;
"""


async def test_the_ui_reads_models_page_by_page(stack, admin, browser):
    account = make_account(stack, admin, "uimodels")
    ids = await model_rows(stack, account.workspace_id, account.user_id, 5)
    whole = post(stack, "models/list", account.token, {"workspace_id": account.workspace_id}).json()["models"]
    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD_MODELS)
    ui.open_page(browser, "models")
    text = ui.page_text(browser)
    assert all(model["name"] in text for model in whole), text
    newest = ids[::-1]
    ws = account.workspace_id
    assert browser.execute_script("return window.modelPages") == [
        {"workspace_id": ws, "limit": 2}, {"workspace_id": ws, "limit": 2, "cursor": str(newest[1])},
        {"workspace_id": ws, "limit": 2, "cursor": str(newest[3])}]
