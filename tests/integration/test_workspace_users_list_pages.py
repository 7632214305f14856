"""workspaces/list_users pages as workspaces/list does (docs/api-paging.md): optional `limit` (1-1000) and `cursor`,
keyset in SQL on its order (added_at, then user_id: a UUID, so the cursor is both), `next_cursor` beside `users`, the
seed's answer unchanged without `limit`; the SDK (Workspace.users) and the UI's Members box read it a page at a time.
Before, a workspace's members past a bus reply were the generic 422 with no way to page, and `limit` was refused.
The members are rows (added in one statement: one added_at, so the user id orders them)."""

from __future__ import annotations

import uuid

import pytest
from railyard_client import session as sdk_session

from tests.integration import ui_browser as ui
from tests.integration.conftest import make_account, more_members, post, requests_to, sdk_client
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration


async def test_workspace_users_page_through_http_and_the_sdk(stack, alice, monkeypatch):
    members = await more_members(stack, alice, 5)
    asked = {"workspace_id": alice.workspace_id}
    whole = post(stack, "workspaces/list_users", alice.token, asked).json()
    assert list(whole) == ["users"] and [u["user_id"] for u in whole["users"]] == members  # the seed's answer
    assert len(members) == 6 and members[0] == alice.user_id and whole["users"][0]["user_type"] == "OWNER"
    seen, cursors, cursor = [], [], None
    while True:  # each member once, in order, 2 a page
        page = post(stack, "workspaces/list_users", alice.token,
                    {**asked, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text[:300]
        seen.append(page.json()["users"])
        if (cursor := page.json().get("next_cursor")) is None:
            break
        cursors.append(cursor)
        assert len(seen) < 10, seen
    assert seen == [whole["users"][0:2], whole["users"][2:4], whole["users"][4:]]
    assert [c.split(".")[1] for c in cursors] == [uuid.UUID(members[1]).hex, uuid.UUID(members[3]).hex]
    for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                       ({"limit": 1001}, "limit: Input should be less than or equal to 1000"),
                       ({"limit": 2, "cursor": "17"}, "cursor: not a next cursor of workspaces/list_users"),
                       ({"limit": 2, "cursor": "9" * 19 + "." + "0" * 32}, "cursor: not a next cursor")):
        refused = post(stack, "workspaces/list_users", alice.token, {**asked, **bad})
        assert refused.status_code == 400 and words in refused.json()["msg"], refused.text[:300]

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "workspaces/list_users")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        assert client.current_workspace().users() == whole["users"]
        assert [body.get("cursor") for _, body in sent] == [None, *cursors]
        assert all(body["limit"] == 2 for _, body in sent)
    finally:
        client.close()


browser = ui.browser  # the headless Chromium (without one, the UI tests skip, the API tests run)

# records each workspaces/list_users request the page sends (its JSON body) and cuts its page size to 2
RECORD_MEMBERS = """
window.memberPages = [];
if (!window.membersFetch) {
  window.membersFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).endsWith('/v1/api/workspaces/list_users')) window.memberPages.push(JSON.parse(init.body));
    return window.membersFetch.apply(this, arguments);
  };
}
LIST_PAGE = 2;
"""


async def test_the_ui_reads_workspace_members_page_by_page(stack, admin, browser):
    account = make_account(stack, admin, "uimembers")
    await more_members(stack, account, 5)
    name = next(w["name"] for w in post(stack, "workspaces/list", account.token, {}).json()["workspaces"]
                if w["id"] == account.workspace_id)
    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD_MEMBERS)
    ui.open_page(browser, "workspaces")
    browser.find_element(ui.By.CSS_SELECTOR, f'button[aria-label="Members of {name}"]').send_keys(ui.Keys.ENTER)
    ui.wait_text(browser, "#members", "6 member(s)")
    ui.wait_text(browser, "#members", account.email)
    sent = browser.execute_script("return window.memberPages")
    assert len(sent) == 3 and sent[0] == {"workspace_id": account.workspace_id, "limit": 2}, sent
    assert all(body["cursor"] for body in sent[1:]) and sent[1]["cursor"] != sent[2]["cursor"], sent
