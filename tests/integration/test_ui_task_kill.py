"""The Orchestrations page offers Kill only on a task task/kill would stop something of (docs/ui.md): a schedule, or
a run queued or running. A QA walk found Kill on a one-shot task whose run had ended: the page offered it on every task
not killed, and task/kill takes such a task all the same (it then reads `killed` instead of its run's outcome). In the
real headless Chromium of test_ui.py against the real stack; the tasks are rows (no run is started)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, post
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)


async def tasks_of(stack, account) -> dict[str, str]:
    """An orchestration and three tasks of it, as rows: one-shot ones whose run succeeded / failed, and a scheduled
    one whose next point is a year away (no run). Their ids by name."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        orch = await conn.fetchval(
            "INSERT INTO task_scheduler.orchestrations (id, workspace_id, sha, name, file_name, entrypoint,"
            " packaging_id, owner_id, status) VALUES (gen_random_uuid(), $1, md5('kill'), 'kill', 'o.zip', 'main.py',"
            " gen_random_uuid(), $2, 'ready') RETURNING id", account.workspace_id, account.user_id)
        ids = {}
        for name, schedule in (("succeeded", None), ("failed", None), ("yearly", "0 0 1 1 *")):
            ids[name] = await conn.fetchval(
                "INSERT INTO task_scheduler.tasks (id, workspace_id, orch_id, orch_sha, name, owner_id, args,"
                " timeout_seconds, schedule, missed_run_policy, next_fire) VALUES (gen_random_uuid(), $1, $2, 'sha',"
                " $3, $4, '{}'::jsonb, 60, $5, $6, $7) RETURNING id", account.workspace_id, orch, name,
                account.user_id, schedule, "fire_once" if schedule else None,
                datetime.now(UTC) + timedelta(days=365) if schedule else None)
        for name, status in (("succeeded", "success"), ("failed", "failure")):
            await conn.execute(
                "INSERT INTO task_scheduler.runs (id, task_id, workspace_id, status, exit_code, finished_at)"
                " VALUES ($1, $2, $3, $4, $5, now())", uuid.uuid4(), ids[name], account.workspace_id, status,
                0 if status == "success" else 1)
    finally:
        await conn.close()
    return {name: str(task_id) for name, task_id in ids.items()}


OFFERED = "[...document.querySelectorAll('button[aria-label^=\"Kill task \"]')].map(b => b.getAttribute('aria-label'))"
KILLS = f"return {OFFERED}"


async def test_kill_is_offered_only_where_the_kill_stops_something(stack, admin, browser):
    account = make_account(stack, admin, "uikill")
    ids = await tasks_of(stack, account)
    statuses = {t["name"]: t["status"] for t in post(stack, "task/list", account.token,
                                                      {"workspace_id": account.workspace_id}).json()}
    assert statuses == {"succeeded": "started", "failed": "failed", "yearly": "pending"}, statuses

    sign_in_to(browser, stack, account)
    ui.open_page(browser, "tasks")
    assert browser.execute_script(KILLS) == ["Kill task yearly"], ui.shown(browser)
    # a one-shot task's run still to stop (queued, running) or still to come keeps it; a killed task has none
    offered = browser.execute_script(
        "return [[], [{status: 'queued'}], [{status: 'running'}], [{status: 'success'}], [{status: 'failure'}]]"
        ".map(runs => killable({exec_type: 'job', killed: false, last_runs: runs}))"
        ".concat(killable({exec_type: 'cron_job', killed: true, last_runs: []}))")
    assert offered == [True, True, True, False, False, False]

    # the schedule's Kill ends it: the task reads killed and Kill is gone from the page
    browser.find_element(ui.By.CSS_SELECTOR, 'button[aria-label="Kill task yearly"]').click()
    ui.wait_for(browser, f"return !{OFFERED}.length", what="no Kill left")
    assert post(stack, "task/get_by_id", account.token, {"id": ids["yearly"]}).json()["killed"] is True
