"""workspaces/list pages as pipelines/list does (docs/api-paging.md): optional `limit` (1-1000) and `cursor`, keyset
by id in SQL, oldest first, `next_cursor` beside `workspaces`, the seed's answer unchanged without `limit`; the SDK
(Client.workspaces / workspace(ref)) and the UI's workspace picker read it a page at a time. A workspace's record
lists the id of every model and pipeline in it, so a user's workspaces passed a bus reply well before tens of
thousands: the generic 422, with no way to page, and no UI or SDK call that needs a workspace worked."""

from __future__ import annotations

import uuid

import pytest
from railyard_client import session as sdk_session

from tests.integration import ui_browser as ui
from tests.integration.conftest import make_account, post, requests_to, sdk_client
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration


def more_workspaces(stack, account, count: int) -> list[int]:
    """`count` new workspaces of the account; the ids of all its workspaces, oldest first."""
    for _ in range(count):
        created = post(stack, "workspaces/create", account.token, {"workspace_name": f"pg{uuid.uuid4().hex[:10]}"})
        assert created.status_code == 200, created.text[:300]
    return [w["id"] for w in post(stack, "workspaces/list", account.token, {}).json()["workspaces"]]


def test_workspaces_list_pages_through_http_and_the_sdk(stack, admin, monkeypatch):
    account = make_account(stack, admin, "wspages")
    ids = more_workspaces(stack, account, 4)
    whole = post(stack, "workspaces/list", account.token, {}).json()
    assert list(whole) == ["workspaces"] and 4 < len(ids) <= 6 and ids == sorted(ids)  # the seed's answer; 3 pages
    first = post(stack, "workspaces/list", account.token, {"limit": 2}).json()
    assert first == {"workspaces": whole["workspaces"][:2], "next_cursor": str(ids[1])}
    second = post(stack, "workspaces/list", account.token, {"limit": 2, "cursor": first["next_cursor"]}).json()
    assert second == {"workspaces": whole["workspaces"][2:4], "next_cursor": str(ids[3])}
    last = post(stack, "workspaces/list", account.token, {"limit": 2, "cursor": second["next_cursor"]}).json()
    assert last == {"workspaces": whole["workspaces"][4:]}
    refused = post(stack, "workspaces/list", account.token, {"limit": 2, "cursor": "first"})
    assert refused.status_code == 400 and "cursor: not a next_cursor of workspaces/list" in refused.json()["msg"]

    client = sdk_client(stack, account)
    try:
        sent = requests_to(client, "workspaces/list")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        assert [w.id for w in client.workspaces()] == ids
        assert [body.get("cursor") for _, body in sent] == [None, str(ids[1]), str(ids[3])]
        sent.clear()  # by id or name: the pages up to the one that holds it
        assert client.workspace(ids[2]).name == whole["workspaces"][2]["name"]
        assert [body.get("cursor") for _, body in sent] == [None, str(ids[1])]
    finally:
        client.close()


browser = ui.browser  # the headless Chromium (without one, the UI tests skip, the API tests run)


# the picker's list read again with a page size of 2, recording the workspaces/list bodies the page sends
RELOAD = """
const done = arguments[arguments.length - 1];
const sent = [];
const original = window.fetch;
window.fetch = function (url, init) {
  if (String(url).endsWith('/v1/api/workspaces/list')) sent.push(JSON.parse(init.body));
  return original.apply(this, arguments);
};
LIST_PAGE = 2;
loadWorkspaces().then(() => { window.fetch = original; done(sent); },
                      (e) => { window.fetch = original; done(String(e)); });
"""


def test_the_ui_picks_from_every_workspace_page_by_page(stack, admin, browser):
    account = make_account(stack, admin, "uiwspages")
    ids = more_workspaces(stack, account, 4)
    sign_in_to(browser, stack, account)
    sent = browser.execute_async_script(RELOAD)
    options = ui.Select(browser.find_element(ui.By.ID, "workspace")).options
    assert [o.get_attribute("value") for o in options] == [str(i) for i in ids]
    assert sent == [{"limit": 2}, {"limit": 2, "cursor": str(ids[1])}, {"limit": 2, "cursor": str(ids[3])}]
