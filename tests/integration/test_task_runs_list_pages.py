"""task/list_task_runs pages (docs/api-paging.md): with `order` "created" and `limit` (1-1000) a page of the task's
runs newest first by creation (created_at, then id: a run's creation never changes, its update does while it is
queued, runs and ends), the next cursor (created_at and id) in the `x-next-cursor` header, `cursor` for the page after
it; without `order` the seed's answer, most recently updated first, unchanged: every run, or the `limit` most recently
updated (the seed's "number of task runs to display"; no cursor). The SDK (Orchestrations.runs, and so `railyard tasks
runs`) reads every run a page at a time. Before, `limit` answered the most recently updated runs and no more: a task's
runs past a bus reply (a schedule every minute makes tens of thousands) were the generic 422, and `cursor` was
refused. The runs are rows whose update order differs from their creation order (an old run updated last)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from railyard_client import cli
from railyard_client import session as sdk_session
from railyard_client.orchestrations import Orchestrations

from tests.integration.conftest import cli_env, post, requests_to, sdk_client
from tests.integration.test_task_list_pages import task_rows

pytestmark = pytest.mark.integration

BASE = datetime(2026, 1, 1, tzinfo=UTC)


async def run_rows(stack, account, task_id: str) -> list[asyncpg.Record]:
    """Six finished runs of the task: created a minute apart (the last two at the same moment, so the id orders
    them), updated in another order (the oldest last: a long run). Their rows."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        created = [0, 1, 2, 3, 4, 4]
        updated = [50, 10, 20, 40, 30, 35]
        return await conn.fetch(
            "INSERT INTO task_scheduler.runs (id, task_id, workspace_id, status, created_at, updated_at)"
            " SELECT gen_random_uuid(), $1, $2, s, c, u FROM unnest($3::text[], $4::timestamptz[], $5::timestamptz[])"
            " AS r(s, c, u) RETURNING *", uuid.UUID(task_id), account.workspace_id,
            ["success", "failure", "success", "success", "failure", "success"],
            [BASE + timedelta(minutes=m) for m in created], [BASE + timedelta(minutes=m) for m in updated])
    finally:
        await conn.close()


def pages(stack, account, body: dict, limit: int) -> tuple[list[list[str]], list[str]]:
    """The pages of task/list_task_runs read with `limit`: their run ids, and the cursors answered."""
    seen, cursors, cursor = [], [], None
    while True:
        response = post(stack, "task/list_task_runs", account.token,
                        {**body, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200 and isinstance(response.json(), list), response.text[:300]
        seen.append([run["run_id"] for run in response.json()])
        if (cursor := response.headers.get("x-next-cursor")) is None:
            return seen, cursors
        cursors.append(cursor)
        assert len(seen) < 50, len(seen)


async def test_task_runs_page_through_http_the_sdk_and_the_cli(stack, alice, tmp_path, monkeypatch, capsys):
    _, (task_id,) = await task_rows(stack, alice, 1, 1)
    rows = await run_rows(stack, alice, task_id)
    by_update = [str(r["id"]) for r in sorted(rows, key=lambda r: r["updated_at"], reverse=True)]
    newest = [str(r["id"]) for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]
    assert by_update != newest
    whole = post(stack, "task/list_task_runs", alice.token, {"task_id": task_id})
    assert "x-next-cursor" not in whole.headers and [r["run_id"] for r in whole.json()] == by_update  # the seed's
    for limit in (1, 2, 5):  # the seed's limit: the most recently updated runs, in the seed's order, not a page
        last = post(stack, "task/list_task_runs", alice.token, {"task_id": task_id, "limit": limit})
        assert "x-next-cursor" not in last.headers and [r["run_id"] for r in last.json()] == by_update[:limit]
    asked = {"task_id": task_id, "order": "created"}
    created = post(stack, "task/list_task_runs", alice.token, asked)
    assert "x-next-cursor" not in created.headers and [r["run_id"] for r in created.json()] == newest

    seen, cursors = pages(stack, alice, asked, 2)
    assert seen == [newest[0:2], newest[2:4], newest[4:6]]  # each run once, newest first by creation
    assert [c.split(".")[1] for c in cursors] == [uuid.UUID(newest[1]).hex, uuid.UUID(newest[3]).hex]
    seen, _ = pages(stack, alice, asked, 4)
    assert seen == [newest[0:4], newest[4:]]
    succeeded = [run for run in newest if next(r for r in rows if str(r["id"]) == run)["status"] == "success"]
    seen, _ = pages(stack, alice, {**asked, "status": "success"}, 1)
    assert seen == [[run] for run in succeeded]  # a status's runs page the same way
    for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                       ({"limit": 1001}, "limit: Input should be less than or equal to 1000"),
                       ({"limit": 2, "cursor": "17"}, "cursor: not a next cursor of task/list_task_runs"),
                       ({"limit": 2, "cursor": "9" * 19 + "." + "0" * 32}, "cursor: not a next cursor"),
                       ({"order": "updated", "limit": 2, "cursor": cursors[0]}, 'pages in order "created" only'),
                       ({"order": "newest"}, "order: Input should be 'updated' or 'created'")):
        refused = post(stack, "task/list_task_runs", alice.token, {**asked, **bad})
        assert refused.status_code == 400 and words in refused.json()["msg"], refused.text[:300]
    refused = post(stack, "task/list_task_runs", alice.token, {"task_id": task_id, "limit": 2, "cursor": cursors[0]})
    assert refused.status_code == 400, refused.text[:300]  # a cursor pages the order "created" only

    client = sdk_client(stack, alice)
    try:
        sent = requests_to(client, "task/list_task_runs")
        monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
        orchestrations = Orchestrations(client, alice.workspace_id)
        assert [r["run_id"] for r in orchestrations.runs(task_id)] == newest
        assert [body.get("cursor") for _, body in sent] == [None, *cursors]
        sent.clear()  # more than a page: the pages up to it
        assert [r["run_id"] for r in orchestrations.runs(task_id, limit=3)] == newest[:3]
        assert [(body["limit"], body.get("cursor")) for _, body in sent] == [(2, None), (2, cursors[0])]
        sent.clear()  # up to a page: one request for that many
        assert [r["run_id"] for r in orchestrations.runs(task_id, limit=1)] == newest[:1]
        assert [body for _, body in sent] == [{**asked, "status": "all", "limit": 1}]
    finally:
        client.close()

    cli_env(stack, alice, monkeypatch, tmp_path / "config")
    capsys.readouterr()
    assert cli.main(["tasks", "runs", task_id, "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == newest


async def test_runs_past_a_reply_are_answered_whole_and_a_limit_or_the_pages_as_before(stack, alice):
    """A task whose runs pass a bus reply (8 MiB): asked whole, every run, most recently updated first (the seed's
    answer; ties by the run id, as the scheduler's SQL): the gateway reads them a page at a time across bus replies
    (services/gateway/orchestrations.py, forward_runs; order "created" asked whole too: its unit test). Before, the
    422 reply_too_large telling to page. The seed's limit alone answers the most recently updated runs and no cursor;
    pages of order "created" read every run once."""
    _, (task_id,) = await task_rows(stack, alice, 1, 1)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        made = await conn.fetch(
            "INSERT INTO task_scheduler.runs (id, task_id, workspace_id, status, reason, created_at, updated_at)"
            " SELECT gen_random_uuid(), $1, $2, 'failure', repeat('r', 700), t, t + (g * 7919 % 4001) * interval '1s'"
            " FROM generate_series(1, 12000) g, LATERAL (SELECT $3::timestamptz + g * interval '1 second' AS t) at"
            " RETURNING id, created_at, updated_at", uuid.UUID(task_id), alice.workspace_id, BASE)
    finally:
        await conn.close()
    by_id = sorted(made, key=lambda r: uuid.UUID(str(r["id"])))  # PostgreSQL's uuid order
    by_update = [str(r["id"]) for r in sorted(by_id, key=lambda r: r["updated_at"], reverse=True)]
    whole = post(stack, "task/list_task_runs", alice.token, {"task_id": task_id})
    assert whole.status_code == 200 and len(whole.content) > 8 * 1024 * 1024, whole.text[:300]
    assert [run["run_id"] for run in whole.json()] == by_update
    last = post(stack, "task/list_task_runs", alice.token, {"task_id": task_id, "limit": 1000})
    assert last.status_code == 200 and len(last.json()) == 1000 and "x-next-cursor" not in last.headers
    assert [run["run_id"] for run in last.json()] == by_update[:1000]
    seen, _ = pages(stack, alice, {"task_id": task_id, "order": "created"}, 1000)
    assert sorted(run for page in seen for run in page) == sorted(str(r["id"]) for r in made)
