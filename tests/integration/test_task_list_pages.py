"""task/list and orchestration/list page as assays/list does (docs/api-paging.md): optional `limit` (1-1000) and
`cursor`, keyset in SQL on their order (created_at, then id: their ids are UUIDs, so the cursor is both), the seed's
bare list unchanged without `limit`, a page's next cursor in the `x-next-cursor` header; the SDK (and so
`railyard tasks list` / `orchestrations list`) and the UI's Orchestrations page read them a page at a time. Before, a
workspace's tasks past a bus reply (a task record carries its args and last runs) were the generic 422 with no way to
page. The orchestrations and tasks are rows (created in one statement: one created_at, so the id orders them)."""

from __future__ import annotations

import asyncpg
import pytest
from railyard_client import session as sdk_session
from railyard_client.orchestrations import Orchestrations

from tests.integration import ui_browser as ui
from tests.integration.conftest import make_account, post, requests_to, sdk_client
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration


async def task_rows(stack, account, orchestrations: int, tasks: int) -> tuple[list[str], list[str]]:
    """`orchestrations` ready orchestrations and `tasks` killed one-shot tasks of the first (never run), as rows; their
    ids in the lists' order (created_at, then id)."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        orchs = await conn.fetch(
            "INSERT INTO task_scheduler.orchestrations (id, workspace_id, sha, name, file_name, entrypoint,"
            " packaging_id, owner_id, status) SELECT gen_random_uuid(), $1, md5(g::text), 'paged' || g, 'o.zip',"
            " 'main.py', gen_random_uuid(), $2, 'ready' FROM generate_series(1, $3) g RETURNING id, created_at",
            account.workspace_id, account.user_id, orchestrations)
        first = orchs[0]["id"]
        made = await conn.fetch(
            "INSERT INTO task_scheduler.tasks (id, workspace_id, orch_id, orch_sha, name, owner_id, args,"
            " timeout_seconds, killed) SELECT gen_random_uuid(), $1, $2, 'sha', 'paged' || g, $3, '{}'::json, 60,"
            " true FROM generate_series(1, $4) g RETURNING id, created_at", account.workspace_id, first,
            account.user_id, tasks)
    finally:
        await conn.close()

    def order(rows):
        return [str(r["id"]) for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]

    return order(orchs), order(made)


def pages(stack, account, route: str, limit: int) -> tuple[list[list[str]], list[dict]]:
    """The pages of a bare list route read with `limit`: their ids, and the bodies sent."""
    seen, sent, cursor = [], [], None
    while True:
        body = {"workspace_id": account.workspace_id, "limit": limit, **({"cursor": cursor} if cursor else {})}
        sent.append(body)
        response = post(stack, route, account.token, body)
        assert response.status_code == 200 and isinstance(response.json(), list), response.text[:300]
        seen.append([item["id"] for item in response.json()])
        if (cursor := response.headers.get("x-next-cursor")) is None:
            return seen, sent
        assert len(seen) < 10, seen


async def test_task_and_orchestration_lists_page_through_http_and_the_sdk(stack, alice, monkeypatch):
    orch_ids, task_ids = await task_rows(stack, alice, 3, 5)
    asked = {"workspace_id": alice.workspace_id}
    for route, ids in (("task/list", task_ids), ("orchestration/list", orch_ids)):
        whole = post(stack, route, alice.token, asked)
        assert "x-next-cursor" not in whole.headers and [i["id"] for i in whole.json()] == ids  # the seed's answer
        seen, _ = pages(stack, alice, route, 2)
        assert seen == [ids[i:i + 2] for i in range(0, len(ids), 2)], (route, seen)  # each once, in order
        for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                           ({"limit": 2, "cursor": "17"}, f"cursor: not a next cursor of {route}"),
                           ({"limit": 2, "cursor": "9" * 19 + "." + "0" * 32}, "cursor: not a next cursor")):
            refused = post(stack, route, alice.token, {**asked, **bad})
            assert refused.status_code == 400 and words in refused.json()["msg"], refused.text[:300]

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "task/list")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        orchestrations = Orchestrations(client, alice.workspace_id)
        assert [t["id"] for t in orchestrations.tasks()] == task_ids
        assert len(sent) == 3 and sent[0][1] == {**asked, "limit": 2} and all("cursor" in b for _, b in sent[1:])
        assert [o["id"] for o in orchestrations.list()] == orch_ids
        assert orchestrations.get(orch_ids[2])["name"] is not None
    finally:
        client.close()


browser = ui.browser  # the headless Chromium (without one, the UI tests skip, the API tests run)

RECORD_TASKS = """
window.taskPages = [];
if (!window.tasksFetch) {
  window.tasksFetch = window.fetch;
  window.fetch = function (url, init) {
    const route = String(url).replace(/^.*\\/v1\\/api\\//, '');
    if (route === 'task/list' || route === 'orchestration/list') window.taskPages.push([route, JSON.parse(init.body)]);
    return window.tasksFetch.apply(this, arguments);
  };
}
LIST_PAGE = 2;
"""


async def test_the_ui_reads_tasks_and_orchestrations_page_by_page(stack, admin, browser):
    account = make_account(stack, admin, "uitasks")
    orch_ids, task_ids = await task_rows(stack, account, 3, 5)
    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD_TASKS)
    ui.open_page(browser, "tasks")
    text = ui.page_text(browser)
    assert "3 orchestration(s)" in text and "5 task(s)" in text, text
    sent = browser.execute_script("return window.taskPages")
    for route, count in (("orchestration/list", 2), ("task/list", 3)):
        bodies = [body for name, body in sent if name == route]
        assert len(bodies) == count and bodies[0] == {"workspace_id": account.workspace_id, "limit": 2}, sent
        assert all(body["cursor"] for body in bodies[1:]), sent
