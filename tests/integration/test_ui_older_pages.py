"""The web UI's lists that showed the newest items and no more read older ones a page at a time through the API's
paging (docs/ui.md): a task's runs on the Orchestrations page (task/list_task_runs, order "created", the next cursor
in the x-next-cursor header) and an assay's scored windows on the Assays page (assays/get_results, `end` the oldest
window shown). In the real headless Chromium of test_ui.py against the real stack, with the pages' page sizes cut to
2 (RUN_PAGE, RESULT_PAGE; the UI's own are 50 and 500)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, post
from tests.integration.test_assays import config
from tests.integration.test_request_bounds_http import FUTURE, new_pipeline, static
from tests.integration.test_task_list_pages import task_rows
from tests.integration.test_task_runs_list_pages import run_rows
from tests.integration.test_ui_list_pages import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)



# records each task/list_task_runs request the page sends (its JSON body) and cuts the runs' page size to 2
RECORD_RUNS = """
window.runsAsked = [];
if (!window.unrecordedRunsFetch) {
  window.unrecordedRunsFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).endsWith('/v1/api/task/list_task_runs')) window.runsAsked.push(JSON.parse(init.body));
    return window.unrecordedRunsFetch.apply(this, arguments);
  };
}
RUN_PAGE = 2;
"""

LISTED = "[...document.querySelectorAll('section[id^=task-] tbody tr code')].map(c => c.title)"
RUN_IDS = f"return {LISTED}"


def runs_asked(driver) -> list:
    return driver.execute_script("const asked = window.runsAsked; window.runsAsked = []; return asked")


async def test_the_ui_shows_a_tasks_older_runs_page_by_page(stack, admin, browser):
    """The Orchestrations page listed a task's newest 50 runs and no more (a schedule every minute makes 1,440 a
    day): nothing said more existed, nothing showed them, and a run the lineage opened past them showed another
    run's logs. Now, with a page size of 2 and six runs: the newest two and "Show older runs", which reads the next
    page with the cursor task/list_task_runs answered (order "created") and adds it under them, until none is left;
    a run's Logs keeps the older runs listed; the lineage's Open task run finds a run three pages deep."""
    account = make_account(stack, admin, "uiruns")
    _, (task_id,) = await task_rows(stack, account, 1, 1)
    rows = await run_rows(stack, account, task_id)
    newest = [str(r["id"]) for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]
    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD_RUNS)
    first = {"task_id": task_id, "order": "created", "limit": 2}

    ui.open_page(browser, "tasks")
    assert browser.execute_script(RUN_IDS) == newest[:2], ui.shown(browser)
    assert "2 run(s), newest first; older runs not listed yet" in ui.page_text(browser)
    assert runs_asked(browser) == [first]
    ui.shot(browser, "07b-orchestration-runs-first-page")
    older = browser.find_element(ui.By.ID, "runs-older")
    cursors = []
    for shown in (4, 6):  # with the keyboard, as a person would; the rows already there and the focus stay
        older.send_keys(ui.Keys.ENTER)
        ui.wait_for(browser, f"return {LISTED}.length === {shown}", what=f"{shown} runs listed")
        asked = runs_asked(browser)
        assert len(asked) == 1 and asked[0] == {**first, "cursor": asked[0]["cursor"]}, asked
        cursors.append(asked[0]["cursor"])
    assert browser.execute_script(RUN_IDS) == newest  # each run once, newest first by creation
    assert cursors[0].endswith(uuid.UUID(newest[1]).hex) and cursors[1].endswith(uuid.UUID(newest[3]).hex), cursors
    assert not older.is_displayed()  # the last page: no more to show
    assert "6 run(s), newest first" in ui.page_text(browser) and "not listed yet" not in ui.page_text(browser)
    ui.shot(browser, "07c-orchestration-runs-every-page")

    # the oldest run's Logs: the page is drawn again with the three pages read, that run's logs shown
    browser.execute_script("document.querySelector('#page').dataset.page = ''")
    logs = browser.find_element(ui.By.CSS_SELECTOR, f'button[aria-label="Logs of run {newest[5][:8]}"]')
    logs.send_keys(ui.Keys.ENTER)
    ui.rendered(browser, "tasks")
    assert browser.execute_script(RUN_IDS) == newest, ui.shown(browser)
    ui.wait_text(browser, "#run-logs-state", "success")  # its status, from its logs' answer
    assert f"Logs of run {newest[5][:8]}" in ui.page_text(browser)
    assert [body.get("cursor") for body in runs_asked(browser)] == [None, *cursors]

    # the lineage's Open task run of the oldest run, from a page showing the newest two: read until it is listed
    ui.open_page(browser, "workspaces")
    browser.execute_script("Object.assign(state.tasks, {pages: 1, run: null})")
    ui.open_page(browser, "tasks")  # the newest two again
    assert len(browser.execute_script(RUN_IDS)) == 2, ui.shown(browser)
    browser.execute_script("Object.assign(state.tasks, {task: arguments[0], run: arguments[1]});"
                           "document.querySelector('#page').dataset.page = ''; show('tasks')", task_id, newest[5])
    ui.rendered(browser, "tasks")
    assert browser.execute_script(RUN_IDS) == newest and f"Logs of run {newest[5][:8]}" in ui.page_text(browser)


async def scored_windows(stack, account, assay_id: int, count: int) -> list[str]:
    """`count` scored hourly windows of the assay, as the assay runner stores them (a row each); their window_start
    as assays/get_results answers it, newest first."""
    base = datetime(2026, 6, 1, tzinfo=UTC)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        for index in range(count):
            start, end = base + timedelta(hours=index), base + timedelta(hours=index + 1)
            summary = {"count": 10, "aggregation": "Density", "aggregated_values": [0.5, 0.5],
                       "edge_names": ["left", "right"]}
            result = {"window_start": start.isoformat(), "window_end": end.isoformat(), "score": index / 10,
                      "status": "Alert" if index % 2 else "Ok", "alert_threshold": 0.25, "warning_threshold": None,
                      "scores": [0.0, index / 10], "baseline_summary": summary, "window_summary": summary,
                      "logs_complete": True}
            await conn.execute(
                "INSERT INTO assay_runner.results (assay_id, window_start, window_end, score, status, result)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)", assay_id, start, end, result["score"], result["status"],
                json.dumps(result))
    finally:
        await conn.close()
    return [r["window_start"] for r in post(stack, "assays/get_results", account.token, {"assay_id": assay_id}).json()]


WINDOWS = "return [...document.querySelectorAll('#assay-window option')].map(o => o.textContent.split(' · ')[0])"


async def test_the_ui_shows_an_assays_older_windows_page_by_page(stack, admin, browser):
    """The Assays page read an assay's newest 500 scored windows and no more (an hourly assay scores 500 in three
    weeks): its chart, window list and alerts silently stopped there. Now, with a page size of 2 and five windows: the
    newest two, a line saying older ones are not shown and "Show older windows", which reads the next page with `end`
    the oldest window shown, until every window is shown."""
    account = make_account(stack, admin, "uiwindows")
    pipeline = new_pipeline(stack, account)
    body = {**config(account, pipeline, "uiwindows", static([0.1, 0.5, 0.9]), FUTURE, "1 hours"), "active": False}
    created = post(stack, "assays/create", account.token, body)
    assert created.status_code == 200, created.text[:300]
    assay_id = created.json()["assay_id"]
    newest = await scored_windows(stack, account, assay_id, 5)
    sign_in_to(browser, stack, account)
    browser.execute_script("RESULT_PAGE = 2")

    ui.open_page(browser, "assays")
    assert browser.execute_script(WINDOWS) == newest[:2], ui.shown(browser)
    assert "The newest 2 windows; older ones not shown yet." in ui.page_text(browser)
    ui.shot(browser, "05b-assay-newest-windows")
    # with the keyboard; the page is drawn again with one more page, the button focused; after the last page the
    # button is gone and the focus is on the line saying every window is shown (before: on nothing, the body)
    for shown, focused in ((4, "assay-older"), (5, "assay-windows-shown")):
        browser.execute_script("document.querySelector('#page').dataset.page = ''")
        browser.find_element(ui.By.ID, "assay-older").send_keys(ui.Keys.ENTER)
        ui.rendered(browser, "assays")
        assert browser.execute_script(WINDOWS) == newest[:shown], ui.shown(browser)
        assert browser.execute_script("return document.activeElement.id") == focused
    assert "All 5 scored window(s) shown." in ui.page_text(browser)
    assert browser.switch_to.active_element.text == "All 5 scored window(s) shown."
    assert not browser.find_elements(ui.By.ID, "assay-older")
    scores = ui.chart_drawn(browser, "assay-scores")
    assert scores["datasets"][0]["data"] == [0.0, 0.1, 0.2, 0.3, 0.4], scores  # oldest first, every window
    alerts = ui.page_text(browser).split("Alerts")[-1]
    assert "2 window(s) above a threshold" in alerts, alerts
    ui.shot(browser, "05c-assay-every-window")


async def test_the_lineage_opens_a_run_older_than_the_pages_it_reads(stack, admin, browser):
    """The lineage's Open task run of a run past the pages read (RUN_SEEK_PAGES, 20 of 50 runs: 1,000 runs, 17 hours
    of a schedule every minute) showed the newest run's logs under the newest run's name without a word, as before
    the pages were read at all. Now that run is shown by itself (its logs and status, task/get_logs_for_run) with a
    line saying it is not listed, and its logs' heading gets the focus; a run that is not the task's (or gone) shows
    the newest run with a line saying the asked one was not found. Page size 2, looked for 2 pages deep.

    The search is done once: the pages it read past the one listed are not listed, and drawing the page again (a
    listed run's Logs, the page opened again) reads the pages listed only. Before, each redraw after a search that
    found nothing read RUN_SEEK_PAGES pages again (20 of 50 runs) and listed them all."""
    account = make_account(stack, admin, "uiseek")
    _, (task_id,) = await task_rows(stack, account, 1, 1)
    rows = await run_rows(stack, account, task_id)
    by_id = {str(r["id"]): r for r in rows}
    newest = [str(r["id"]) for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]
    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD_RUNS + "RUN_SEEK_PAGES = 2;")

    wanted = newest[4]  # the second oldest: page 3 of 2 runs a page
    assert by_id[wanted]["status"] == "failure"  # created a minute after the oldest (run_rows)
    browser.execute_script("openResource({kind: 'task_run', ref: arguments[1], data: {task_id: arguments[0]}})",
                           task_id, wanted)
    ui.rendered(browser, "tasks")
    asked = runs_asked(browser)
    assert len(asked) == 2 and asked[0].get("cursor") is None and asked[1]["cursor"], asked  # looked 2 pages deep
    assert browser.execute_script(RUN_IDS) == newest[:2], ui.shown(browser)  # the first page listed, as asked
    ui.wait_text(browser, "#run-unlisted", f"Run {wanted[:8]} is older than the 2 runs listed")
    assert f"Logs of run {wanted[:8]}" in ui.page_text(browser), ui.shown(browser)
    ui.wait_text(browser, "#run-logs-state", "failure")  # its own status, from its logs' answer
    assert browser.execute_script("return document.activeElement && document.activeElement.id") == f"run-{wanted}"
    assert browser.find_element(ui.By.ID, "run-logs").get_attribute("aria-label") == f"Logs of run {wanted}"
    assert browser.find_element(ui.By.ID, "runs-older").is_displayed()  # "Show older runs" goes on from page 1

    # drawn again (Orchestrations opened again, the run still the one shown): the first page only, no search
    ui.open_page(browser, "tasks")
    assert runs_asked(browser) == [{"task_id": task_id, "order": "created", "limit": 2}]
    assert browser.execute_script(RUN_IDS) == newest[:2], ui.shown(browser)
    ui.wait_text(browser, "#run-unlisted", f"Run {wanted[:8]} is older than the 2 runs listed")
    ui.wait_text(browser, "#run-logs-state", "failure")
    # a listed run's Logs: the first page again, that run's logs
    browser.execute_script("document.querySelector('#page').dataset.page = ''")
    browser.find_element(ui.By.CSS_SELECTOR, f'button[aria-label="Logs of run {newest[1][:8]}"]').send_keys(
        ui.Keys.ENTER)
    ui.rendered(browser, "tasks")
    assert runs_asked(browser) == [{"task_id": task_id, "order": "created", "limit": 2}]
    assert f"Logs of run {newest[1][:8]}" in ui.page_text(browser) and not browser.find_elements(
        ui.By.ID, "run-unlisted")

    # a run id that is no run of this task: the newest run, and a line saying the asked one was not found
    missing = str(uuid.uuid4())
    browser.execute_script("document.querySelector('#page').dataset.page = '';"
                           "openResource({kind: 'task_run', ref: arguments[1], data: {task_id: arguments[0]}})",
                           task_id, missing)
    ui.rendered(browser, "tasks")
    ui.wait_text(browser, "#run-unlisted", f"Run {missing[:8]} was not found among the runs of this task")
    assert f"Logs of run {newest[0][:8]}" in ui.page_text(browser), ui.shown(browser)
    assert browser.execute_script("return state.tasks.run") == newest[0]
