"""models/list_versions pages as task/list does (docs/api-paging.md): optional `limit` (1-1000) and `cursor`, keyset
on the version's row id in SQL, oldest first, the seed's bare list unchanged without `limit`, a page's next cursor in
the `x-next-cursor` header; the SDK (Model.versions, and so `railyard models versions`) and the UI's Models page read
it a page at a time. Before, a model's versions past a bus reply were the generic 422 with no way to page, and
`limit` was refused. The versions are rows (an upload each would take minutes)."""

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


async def model_with_versions(stack, account, count: int) -> tuple[int, str, list[int], list[str]]:
    """A model of the account's workspace with `count` ready versions, as rows: its id and name, the versions' row ids
    and model_version UUIDs, oldest first."""
    name = f"versioned{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        model_id = await conn.fetchval("INSERT INTO registry.models (workspace_id, name, owner_id) VALUES ($1, $2, $3)"
                                       " RETURNING id", account.workspace_id, name, uuid.UUID(account.user_id))
        rows = await conn.fetch(
            "INSERT INTO registry.model_versions (model_id, model_version, owner_id, file_name, framework, runtime,"
            " status, sha, source_sha, size) SELECT $1, gen_random_uuid(), $2, 'm' || g || '.onnx', 'onnx', 'onnx',"
            " 'ready', md5(g::text), md5(g::text), 1 FROM generate_series(1, $3) g RETURNING id, model_version",
            model_id, uuid.UUID(account.user_id), count)
    finally:
        await conn.close()
    rows = sorted(rows, key=lambda r: r["id"])
    return model_id, name, [r["id"] for r in rows], [str(r["model_version"]) for r in rows]


async def test_model_versions_page_through_http_the_sdk_and_the_cli(stack, alice, tmp_path, monkeypatch, capsys):
    model_id, name, row_ids, versions = await model_with_versions(stack, alice, 5)
    asked = {"models_pk_id": model_id}
    whole = post(stack, "models/list_versions", alice.token, asked)
    assert whole.status_code == 200 and "x-next-cursor" not in whole.headers, whole.text[:300]
    assert [v["model_version"] for v in whole.json()] == versions  # the seed's bare list, oldest first
    seen, cursors, cursor = [], [], None
    while True:  # each version once, in order, 2 a page
        page = post(stack, "models/list_versions", alice.token,
                    {**asked, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text[:300]
        seen.append(page.json())
        if (cursor := page.headers.get("x-next-cursor")) is None:
            break
        cursors.append(cursor)
        assert len(seen) < 10, seen
    assert seen == [whole.json()[0:2], whole.json()[2:4], whole.json()[4:]]
    assert cursors == [str(row_ids[1]), str(row_ids[3])]
    for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                       ({"limit": 1001}, "limit: Input should be less than or equal to 1000"),
                       ({"limit": 2, "cursor": "x"}, "cursor: not a next_cursor of models/list_versions"),
                       ({"limit": 2, "cursor": "-3"}, "cursor: not a next_cursor of models/list_versions")):
        refused = post(stack, "models/list_versions", alice.token, {**asked, **bad})
        assert refused.status_code == 400 and words in refused.json()["msg"], refused.text[:300]

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "models/list_versions")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        model = client.current_workspace().model(name)
        assert [v.version for v in model.versions()] == versions
        assert [body.get("cursor") for _, body in sent] == [None, str(row_ids[1]), str(row_ids[3])]
        assert all(body["limit"] == 2 for _, body in sent)
        assert model.get_version("latest").version == versions[-1]
    finally:
        client.close()

    cli_env(stack, alice, monkeypatch, tmp_path / "config")
    capsys.readouterr()
    assert cli.main(["models", "versions", name, "--json"]) == 0
    assert [v["model_version"] for v in json.loads(capsys.readouterr().out)] == versions


browser = ui.browser  # the headless Chromium (without one, the UI tests skip, the API tests run)

# records each models/list_versions request the page sends (its JSON body) and cuts its page size to 2
RECORD_VERSIONS = """
window.versionPages = [];
if (!window.versionsFetch) {
  window.versionsFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).endsWith('/v1/api/models/list_versions')) window.versionPages.push(JSON.parse(init.body));
    return window.versionsFetch.apply(this, arguments);
  };
}
LIST_PAGE = 2;
"""


async def test_the_ui_reads_model_versions_page_by_page(stack, admin, browser):
    account = make_account(stack, admin, "uiversions")
    model_id, _, row_ids, versions = await model_with_versions(stack, account, 5)
    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD_VERSIONS)
    ui.open_page(browser, "models")
    text = ui.page_text(browser)
    assert "5 version(s)" in text and all(v in text for v in versions), text
    assert browser.execute_script("return window.versionPages") == [
        {"models_pk_id": model_id, "limit": 2}, {"models_pk_id": model_id, "limit": 2, "cursor": str(row_ids[1])},
        {"models_pk_id": model_id, "limit": 2, "cursor": str(row_ids[3])}]
