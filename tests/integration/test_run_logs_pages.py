"""task/get_logs_for_run reads a run's lines in pages (docs/api-paging.md, docs/orchestrations.md): `limit`, then
the answer's `next_cursor` as `cursor`, from the first line, a page also stopping at 4 MiB of JSON. Before, every line
was one reply: a run whose lines pass what the bus carries (8 MiB) was the 422 reply_too_large, and the UI's Show all
lines showed it. A run still going answers a `next_cursor` on its last page too (its next lines come after it); a
finished run's last page has none. The run and its lines are rows (a run printing 9 MB would take minutes)."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import pytest

from tests.integration.conftest import make_account, post

pytestmark = pytest.mark.integration

ROUTE = "task/get_logs_for_run"
WIDE = 15_000  # characters a line (MAX_LINE is 16 KiB)


async def run_with_lines(stack, account, count: int, status: str) -> uuid.UUID:
    """A run of a new task of the account's workspace, in `status`, with `count` lines `<index>:xxxx...` of WIDE
    characters each."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        orch = await conn.fetchval(
            "INSERT INTO task_scheduler.orchestrations (id, workspace_id, sha, name, file_name, entrypoint,"
            " packaging_id, owner_id, status) VALUES (gen_random_uuid(), $1, md5(random()::text), 'logs', 'o.zip',"
            " 'main.py', gen_random_uuid(), $2, 'ready') RETURNING id", account.workspace_id, account.user_id)
        task = await conn.fetchval(
            "INSERT INTO task_scheduler.tasks (id, workspace_id, orch_id, orch_sha, name, owner_id, args,"
            " timeout_seconds, killed) VALUES (gen_random_uuid(), $1, $2, 'sha', 'logs', $3, '{}'::json, 60, true)"
            " RETURNING id", account.workspace_id, orch, account.user_id)
        # a running run's heartbeat an hour ahead: the scheduler does not take it for lost while the test reads it
        run = await conn.fetchval(
            "INSERT INTO task_scheduler.runs (id, task_id, workspace_id, status, supervisor, heartbeat_at)"
            " VALUES (gen_random_uuid(), $1, $2, $3, 'test', now() + interval '1 hour') RETURNING id",
            task, account.workspace_id, status)
        await add_lines(conn, run, 0, count)
        return run
    finally:
        await conn.close()


async def add_lines(conn, run: uuid.UUID, first: int, count: int) -> None:
    await conn.execute(
        "INSERT INTO task_scheduler.run_logs (run_id, seq, at, stream, partial, line) SELECT $1, g, now(), 'stdout',"
        " false, g || ':' || repeat('x', $3 - length(g::text) - 1) FROM generate_series($2::int, $2::int + $4 - 1) g",
        run, first, WIDE, count)


def read_pages(stack, account, run, limit: int, cursor: str | None = None) -> tuple[list[str], list[dict]]:
    """Every page from `cursor` until one answers no lines or no next_cursor: the lines, and each answer without its
    lines."""
    lines, answers = [], []
    while True:
        response = post(stack, ROUTE, account.token, {"id": str(run), "limit": limit,
                                                      **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text[:300]
        answer = response.json()
        lines += answer.pop("logs")
        answers.append(answer)
        if not answer.get("next_cursor") or answer["next_cursor"] == cursor:
            return lines, answers
        cursor = answer["next_cursor"]
        assert len(answers) < 20, answers


def numbers(lines: list[str]) -> list[int]:
    return [int(line.split(" ", 3)[3].split(":", 1)[0]) for line in lines]


async def test_a_run_past_a_reply_reads_every_line_in_pages(stack, admin):
    account = make_account(stack, admin, "logpages")
    run = await run_with_lines(stack, account, 600, "success")  # 600 x 15,000 characters: 9 MB of JSON
    whole = post(stack, ROUTE, account.token, {"id": str(run)})
    assert whole.status_code == 422 and whole.json()["code"] == "reply_too_large", whole.text[:300]
    lines, answers = read_pages(stack, account, run, 1000)
    assert numbers(lines) == list(range(600))  # each line once, in order
    assert all(len(line.split(" ", 3)[3]) == WIDE for line in lines)
    assert len(answers) >= 3  # 4 MiB a page at most: ~279 of these lines
    assert "next_cursor" not in answers[-1] and {a["status"] for a in answers} == {"success"}
    # a page of `limit` lines, the cursor where the next starts; the last lines, as the seed asks them, unchanged
    first = post(stack, ROUTE, account.token, {"id": str(run), "limit": 2}).json()
    assert numbers(first["logs"]) == [0, 1] and first["next_cursor"] == "2"
    # a next_cursor passed back without `limit` is a page too (before: every line from it at once, the 422)
    alone = post(stack, ROUTE, account.token, {"id": str(run), "cursor": "2"})
    assert alone.status_code == 200, alone.text[:300]
    assert numbers(alone.json()["logs"]) == list(range(2, 2 + len(alone.json()["logs"])))
    assert 1 <= len(alone.json()["logs"]) < 598 and alone.json()["next_cursor"] == str(2 + len(alone.json()["logs"]))
    last = post(stack, ROUTE, account.token, {"id": str(run), "lines": 3}).json()
    assert numbers(last["logs"]) == [597, 598, 599] and "next_cursor" not in last


async def test_a_live_run_is_followed_by_cursor(stack, admin):
    account = make_account(stack, admin, "logfollow")
    run = await run_with_lines(stack, account, 5, "running")
    lines, answers = read_pages(stack, account, run, 2)
    assert numbers(lines) == list(range(5))
    assert answers[-1]["next_cursor"] == "5"  # read up to now: where its next lines will start
    empty = post(stack, ROUTE, account.token, {"id": str(run), "limit": 2, "cursor": "5"}).json()
    assert empty["logs"] == [] and empty["next_cursor"] == "5" and empty["status"] == "running"
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await add_lines(conn, run, 5, 3)
        more, _ = read_pages(stack, account, run, 2, "5")
        assert numbers(more) == [5, 6, 7]
        await conn.execute("UPDATE task_scheduler.runs SET status = 'success', heartbeat_at = NULL WHERE id = $1",
                           run)
    finally:
        await conn.close()
    end = post(stack, ROUTE, account.token, {"id": str(run), "limit": 2, "cursor": "8"}).json()
    assert end["logs"] == [] and "next_cursor" not in end and end["status"] == "success"


async def test_bad_paging_requests_are_typed_400s(stack, admin):
    account = make_account(stack, admin, "logbad")
    run = await run_with_lines(stack, account, 2, "success")
    for body in ({"limit": 2, "cursor": "x1"}, {"limit": 2, "cursor": "-1"}, {"lines": 1, "limit": 2},
                 {"lines": 1, "cursor": "1"}):
        response = post(stack, ROUTE, account.token, {"id": str(run), **body})
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", (body, response.text)
    # a cursor past every line (even past what the column holds) is an empty last page
    far = post(stack, ROUTE, account.token, {"id": str(run), "limit": 2, "cursor": "9" * 19}).json()
    assert far["logs"] == [] and "next_cursor" not in far
    # another workspace's run stays not found, paged or not
    other = make_account(stack, admin, "logother")
    assert post(stack, ROUTE, other.token, {"id": str(run), "limit": 2}).status_code == 404


async def test_the_sdk_and_the_cli_read_every_line_of_a_run_past_a_reply(stack, admin, tmp_path):
    """The SDK's Orchestrations.logs / run_logs and `railyard tasks logs` asked every line in one request: a run
    past a reply was their 422 (the UI pages since 3dbe033). Now they read by `limit`/`cursor`; `lines` (the last N)
    is one request as before."""
    import subprocess
    import sys
    from pathlib import Path

    from railyard_client.orchestrations import Orchestrations

    from tests.integration.conftest import PASSWORD, sdk_client

    account = make_account(stack, admin, "sdklogs")
    run = await run_with_lines(stack, account, 600, "success")
    client = sdk_client(stack, account)
    try:
        orchestrations = Orchestrations(client, account.workspace_id)
        answer = orchestrations.run_logs(str(run))
        assert numbers(answer["logs"]) == list(range(600)) and answer["status"] == "success"
        assert answer["next_cursor"] is None
        assert numbers(orchestrations.logs(str(run), lines=3)) == [597, 598, 599]
    finally:
        client.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAILYARD_", "TASK_", "ORCH_"))}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "RAILYARD_CLIENT_URL": stack.base_url,
            "RAILYARD_CLIENT_USERNAME": account.email, "RAILYARD_CLIENT_PASSWORD": PASSWORD,
            "RAILYARD_CLIENT_SECRET": stack.secrets()["client_secret"],
            "RAILYARD_CLIENT_WORKSPACE": str(account.workspace_id)}
    railyard = str(Path(sys.executable).parent / "railyard")
    for follow in ([], ["--follow"]):
        printed = await asyncio.to_thread(subprocess.run, [railyard, "tasks", "logs", str(run), *follow], env=env,
                                          capture_output=True, timeout=120)
        assert printed.returncode == 0, printed.stderr.decode()[-500:]
        assert numbers(printed.stdout.decode().splitlines()) == list(range(600)), follow


async def test_the_sdk_follows_a_live_run_from_a_cursor(stack, admin):
    """Orchestrations.run_logs_from: the lines written so far and where the next start (`railyard tasks logs -f`
    reads each poll from there; it read every line again each second before); None once the run finished."""
    from railyard_client.orchestrations import Orchestrations

    from tests.integration.conftest import sdk_client

    account = make_account(stack, admin, "sdkfollow")
    run = await run_with_lines(stack, account, 5, "running")
    client = sdk_client(stack, account)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        orchestrations = Orchestrations(client, account.workspace_id)
        first = orchestrations.run_logs_from(str(run))
        assert numbers(first["logs"]) == list(range(5)) and first["next_cursor"] is not None
        assert orchestrations.run_logs_from(str(run), first["next_cursor"])["logs"] == []  # nothing new yet
        await add_lines(conn, run, 5, 3)
        await conn.execute("UPDATE task_scheduler.runs SET status = 'success' WHERE id = $1", run)
        rest = orchestrations.run_logs_from(str(run), first["next_cursor"])
        assert numbers(rest["logs"]) == [5, 6, 7] and rest["next_cursor"] is None and rest["status"] == "success"
    finally:
        await conn.close()
        client.close()
