"""The web UI in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against the real
stack, through the public API only (one window's stored result is edited in PostgreSQL to stage a window scored
without every logged record): alice signs in and sees her workspace, model, deployment (with its inference URL and
inputs), logged inferences paged with the cursor and filtered by time, an assay's charts and alerts (a window
scored with incomplete logs marked), an orchestration's task run with its logs, the lineage graph (a click on the
model version's card leads to its deployment), her project's versions (restored from the page), two benchmark
reports compared as charts, a review queue of image predictions (boxes drawn over the image; accepted, corrected)
counted on the monitoring page; she uploads a model, builds, deploys and undeploys a pipeline from the pages; a wrong
password shows the API's own message; bob sees none of alice's things. One browser for the module; with
RAILYARD_TEST_UI_SCREENSHOTS=1, screenshots of each page go to build/ui-screenshots/ (not committed)."""

from __future__ import annotations

import pytest

from tests.integration.ui_browser import MISSING, REQUIRE_BROWSER

# Skipped without a browser before the imports below (numpy, pyarrow, asyncpg, the SDK, the other test modules it
# borrows from): the skip then costs collection ~0.4 s of CPU less (tests/unit/test_ui_browser_required.py runs it
# twice in every `make test`)
if MISSING and not REQUIRE_BROWSER:
    pytest.skip(MISSING, allow_module_level=True)

import asyncio
import base64
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import pyarrow as pa
from railyard_client import Client

from shared.arrow_codec import tensor_array, to_ipc_file
from tests.image_models import detector_image_config, detector_onnx, squares_png
from tests.integration import ui_browser
from tests.integration.conftest import PASSWORD, TOKEN_PATH, Account, make_account, post, undeploy_all
from tests.integration.test_lineage import ARROW_FILE, ok, upload_rows
from tests.integration.test_logs import marked, wait_rows
from tests.integration.test_orchestrations import ready_orchestration, run_once
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes, infer
from tests.integration.ui_browser import (  # noqa: F401 (sign_in: test_ui_*.py take it from here)
    WAIT,
    open_page,
    page_text,
    rendered,
    require_browser,
    shown,
    sign_in,
    sign_in_to,
    wait_for,
    wait_text,
    waiting,
)
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "ui-screenshots"
# Screenshots only when asked for: nothing checks them, and the whole-page ones cost Chromium ~0.3 s of CPU each (the
# page laid out again at its full height, drawn and PNG-encoded, then laid out back): 21 in test_ui.py and
# test_ui_older_pages.py, ~5.4 s of Chromium's 38 s for test_ui.py (session 39)
SCREENSHOTS_WANTED = os.environ.get("RAILYARD_TEST_UI_SCREENSHOTS", "") == "1"

if MISSING is None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select


@pytest.fixture(scope="session", autouse=True)
def browser_required():
    """Fails every test of this file before anything is started (the stack first of all) when there is no browser
    and RAILYARD_TEST_REQUIRE_BROWSER=1; the files that take `browser` from ui_browser.py fail in it."""
    require_browser()


browser = ui_browser.browser  # the module's headless Chromium


@pytest.fixture(scope="module")
def alice_ui(stack, admin):
    account = make_account(stack, admin, "alice")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def bob_ui(stack, admin):
    return make_account(stack, admin, "bob")


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


@pytest.fixture(scope="module")
def world(stack, alice_ui: Account):
    """Alice's things, made through the public API: a deployed model with 12 inferences in two batches (the second
    from the SDK), an assay over them, a finished task run, a project with a version, two benchmark reports."""
    alice = alice_ui
    sdk = Client(stack.base_url, token=alice.token, workspace=alice.workspace_id)
    # the two models are uploaded (each checked by the registry's sandboxed worker) and the benchmarks' project made
    # while the orchestration is packaged
    with ThreadPoolExecutor(3) as uploads:
        detector_upload = uploads.submit(sdk.upload_model, "uisquares", detector_onnx(), progress=False)
        model_upload = uploads.submit(_upload_bytes, stack, alice, "uimodel", ccfraud_onnx())
        project_made = uploads.submit(_benchmarked_project, stack, alice)
        # the task runs while the rest is made
        orch = ready_orchestration(stack, alice, {"main.py": "print('hello from the ui task')\nprint('second line')\n"})
        task_id = run_once(stack, alice, orch, name="uitask")
        detector = detector_upload.result()
        model_upload.result()
        project, version = project_made.result()
    # a square detector for the review queue, deployed while the other one is
    finder = sdk.build_pipeline("uisquares").add_model_step(detector, image=detector_image_config())
    finder.deploy(replicas=1, cpus=0.5, wait=False)
    definition = {"steps": [{"ModelInference": {"models": [{"name": "uimodel"}]}}]}
    deployment, url, pipeline = _deploy_definition(stack, alice, "uipipe", definition)
    squares = finder.deployment().wait_until_running(120)
    ok(post(stack, "deployments/update", alice.token, {"deployment": squares.name, "min_threshold": 0.1}))
    # the benchmarks first: their rows go through the engine and are logged too, older than the marked ones. The two
    # benchmarks and the square detector's two predictions are made at once (nothing of one reads the others')
    with ThreadPoolExecutor(3) as made:
        benchmarks = [made.submit(lambda name, size: ok(post(stack, "benchmarks/run_classification", alice.token, {
            "workspace_id": alice.workspace_id, "name": name, "version_id": version["id"], "dataset_name": "holdout",
            "label_column": "label", "output_column": "dense_1", "deployments": [deployment], "batch_size": size})),
            name, size) for name, size in (("bench small batches", 4), ("bench one batch", 20))]
        predictions = [squares.predict_bytes(f"squares{i}.png", squares_png(cells), tags=["ui"])
                       for i, cells in enumerate(({(0, 0): 255, (2, 3): 230}, {(1, 1): 255}))]
        reports = [benchmark.result() for benchmark in benchmarks]

    assert infer(url, alice.token, marked(range(6))).status_code == 200
    boundary = time.time()  # the assay's windows: [boundary - 1, boundary) has the first batch, later ones the second
    assert len(sdk.infer(deployment, "uipipe", marked(range(6, 12)))) == 6  # from the SDK
    # a baseline of values far above this model's outputs: every window is an alert
    assay = ok(post(stack, "assays/create", alice.token, {
        "name": "uidrift", "pipeline_id": pipeline["pipeline_pk_id"], "pipeline_name": "uipipe", "active": True,
        "status": "active", "iopath": "output dense_1 0",
        "baseline": {"Static": {"values": np.linspace(2.0, 3.0, 50).tolist()}},
        "window": {"pipeline": "uipipe", "model": "uimodel", "width": "1 seconds", "start": iso(boundary - 1),
                   "interval": None},
        "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                       "metric": "PSI", "num_bins": 4, "bin_weights": None, "bin_width": None,
                       "provided_edges": None, "add_outlier_edges": True},
        "warning_threshold": 0.5, "alert_threshold": 1.0, "run_until": None,
        "workspace_id": alice.workspace_id}))["assay_id"]
    wait_rows(stack, alice, "uipipe", 12 + 2 * 20)

    deadline = time.monotonic() + 60  # 30 s ran out once in a fresh clone's make test at load ~10
    while True:  # the task run has finished and the window of the last batch was scored (nothing comes after it)
        task_runs = ok(post(stack, "task/list_task_runs", alice.token, {"task_id": task_id}))
        results = ok(post(stack, "assays/get_results", alice.token, {"assay_id": assay}))
        newest = datetime.fromisoformat(results[0]["window_start"]).timestamp() if results else 0
        logged = task_runs and task_runs[0]["status"] == "success" and ok(post(
            stack, "task/get_logs_for_run", alice.token, {"id": task_runs[0]["run_id"]}))["logs"]
        if logged and len(results) >= 2 and newest >= boundary - 0.01:
            break
        assert time.monotonic() < deadline, (task_runs, results)
        time.sleep(0.3)
    return {"deployment": deployment, "url": url, "pipeline": pipeline, "assay": assay, "results": results,
            "task_id": task_id, "run_id": task_runs[0]["run_id"], "project": project, "version": version,
            "reports": reports, "squares": squares.name, "predictions": predictions}


def _benchmarked_project(stack, alice: Account) -> tuple[dict, dict]:
    """The world's project with its holdout dataset of 20 labelled rows, and a version of it to benchmark."""
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                              "name": "uiproject", "description": "card data"}))
    dataset = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "holdout"}))
    x = sample_rows(20, seed=5)
    ok(upload_rows(stack, alice, dataset["id"], to_ipc_file(pa.table({
        "tensor": tensor_array(x), "label": pa.array(["0"] * 15 + ["1"] * 5)})), ARROW_FILE))
    version = ok(post(stack, "projects/create_version", alice.token, {
        "project_id": project["id"], "version_title": "first cut"}))
    return project, version


def shot(driver, name: str) -> None:
    """The whole page as build/ui-screenshots/<name>.png, with RAILYARD_TEST_UI_SCREENSHOTS=1 (else nothing)."""
    if not SCREENSHOTS_WANTED:
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page, not just the viewport
        "width": 1280, "height": max(800, min(int(height), 3000)), "deviceScaleFactor": 1, "mobile": False})
    try:
        driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def choose(driver, select_id: str, value: str, page: str) -> None:
    """Pick a value of a select that re-renders its page, and wait for the new render."""
    select = Select(driver.find_element(By.ID, select_id))
    if select.first_selected_option.get_attribute("value") == value:
        return
    driver.execute_script("document.querySelector('#page').dataset.page = ''")
    select.select_by_value(value)
    rendered(driver, page)


@pytest.fixture
def as_alice(stack, alice_ui: Account, browser):
    """The browser on a fresh page signed in as alice, her test workspace picked."""
    sign_in_to(browser, stack, alice_ui, keep=True)
    return browser


@pytest.fixture
def signed_out(stack, browser):
    """The browser with no session of the UI (the next visit of the page goes to the sign-in page)."""
    if browser.current_url.startswith(stack.base_url):
        browser.execute_script("sessionStorage.clear()")
    return browser


def chart_drawn(driver, canvas_id: str) -> dict:
    """The Chart.js chart on a canvas: its type and datasets (labels and values), as the library holds them."""
    wait_for(driver, "return !!(window.Chart && Chart.getChart(arguments[0]))", canvas_id, what=f"chart {canvas_id}")
    return driver.execute_script(
        "const c = Chart.getChart(arguments[0]); return {type: c.config.type, labels: c.data.labels, "
        "datasets: c.data.datasets.map(d => ({label: d.label, data: d.data})), "
        "width: c.width, height: c.height}", canvas_id)


def test_sign_in_workspaces_models_pipelines_logs(stack, alice_ui: Account, world, signed_out):
    browser = signed_out
    alice = alice_ui
    assert browser.execute_script("return 1") == 1
    # the vendored libraries come from the gateway itself (no CDN)
    for path in ("/static/vendor/chart.umd.min.js", "/static/vendor/cytoscape.min.js"):
        response = httpx.get(stack.base_url + path, timeout=30)
        assert response.status_code == 200 and len(response.content) > 100_000, path

    # a wrong password shows the auth service's own message (the one the token endpoint gives)
    secrets = stack.secrets()
    for _ in range(10):  # past the token endpoint's per-address limit, as a well-behaved client (conftest.login)
        wrong = httpx.post(f"{stack.base_url}{TOKEN_PATH}", data={
            "grant_type": "password", "username": alice.email, "password": "not-her-password"},
            auth=(secrets["client_id"], secrets["client_secret"]), timeout=30)
        if wrong.status_code != 429:
            break
        time.sleep(1.0)
    assert wrong.status_code in (400, 401), wrong.text
    api_message = wrong.json().get("error_description") or wrong.json().get("msg")
    sign_in(browser, stack, alice.email, "not-her-password")
    wait_text(browser, "#signin-error", api_message)
    assert not browser.find_element(By.ID, "signin-error").get_attribute("hidden")
    shot(browser, "01-sign-in-error")

    sign_in(browser, stack, alice.email, PASSWORD)
    wait_text(browser, "#who", alice.email)
    # back on the UI's page, the one-time code already gone from the address bar
    assert browser.current_url == stack.base_url + "/", browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('railyard.pkce')") is None  # the verifier spent
    stored = browser.execute_script("return sessionStorage.getItem('railyard.session')")
    assert stored and alice.token.split(".")[0] in stored  # kept in this tab's sessionStorage
    session = json.loads(stored)
    assert stack.secrets()["client_secret"] not in stored and "client_secret" not in session
    claims = json.loads(base64.urlsafe_b64decode(session["access_token"].split(".")[1] + "=="))
    assert claims["azp"] == "railyard-ui" and claims["railyard_kind"] == "user"  # her own token, public client
    assert browser.execute_script("return localStorage.length") == 0
    scripts = browser.execute_script("return [...document.scripts].map(s => s.src).filter(Boolean)")
    assert scripts and all(s.startswith(stack.base_url + "/static/") for s in scripts), scripts

    open_page(browser, "workspaces")
    listed = alice.client.post("workspaces/list", {})["workspaces"]
    workspace_name = next(w["name"] for w in listed if w["id"] == alice.workspace_id)
    assert all(w["name"] in page_text(browser) for w in listed)
    Select(browser.find_element(By.ID, "workspace")).select_by_value(str(alice.workspace_id))  # her test workspace
    open_page(browser, "workspaces")
    browser.find_element(By.CSS_SELECTOR, f'button[aria-label="Members of {workspace_name}"]').send_keys(Keys.ENTER)
    wait_text(browser, "#members", "OWNER")
    wait_text(browser, "#members", alice.email)  # members by email (users/query of the workspace)
    shot(browser, "02-workspaces")

    open_page(browser, "models")
    text = page_text(browser)
    assert "uimodel" in text and "ready" in text.lower(), text
    shot(browser, "03-models")

    open_page(browser, "pipelines")
    wait_text(browser, "#page", world["deployment"])
    text = page_text(browser)
    assert "uipipe" in text and world["url"] in text and "Running" in text, text
    assert f'client.infer("{world["deployment"]}", "uipipe"' in text  # the SDK's <deploy_id>-<id> and pipeline
    assert "tensor FP32 [-1,29]" in text and "dense_1 FP32 [-1,1]" in text  # its OIP metadata
    shot(browser, "04-pipelines")

    open_page(browser, "logs")
    choose(browser, "log-pipeline", "uipipe", "logs")
    Select(browser.find_element(By.ID, "log-size")).select_by_value("10")
    wait_text(browser, "#page", "10 row(s)")
    first = browser.find_elements(By.CSS_SELECTOR, "#log-rows tbody tr")
    assert len(first) == 10
    assert '"tensor":[11,' in first[0].text  # newest first: the last record marked 11
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#log-rows thead th")]
    assert headers[:4] == ["time", "model", "out", "in"], headers  # the answering model by the outputs
    assert first[0].find_elements(By.TAG_NAME, "td")[1].text == "uimodel"
    shot(browser, "05-logs")
    browser.find_element(By.ID, "log-older").send_keys(Keys.ENTER)  # the next page, through the cursor
    wait_for(browser, "return document.querySelector('#page').innerText.includes('page 2')", what="page 2")
    older = browser.find_elements(By.CSS_SELECTOR, "#log-rows tbody tr")
    assert '"tensor":[1,' in older[0].text and '"tensor":[0,' in older[1].text  # then the benchmarks' rows
    browser.find_element(By.ID, "log-newer").send_keys(Keys.ENTER)
    wait_text(browser, "#page", "10 row(s)")
    # a time range: one end alone is the API's own 400 message; a range before everything shows nothing
    browser.find_element(By.ID, "log-from").send_keys("2001-01-01T00:00:00Z", Keys.ENTER)
    wait_text(browser, "#error", "HTTP 400")
    assert "start_time" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "log-to").send_keys("2001-01-02T00:00:00Z", Keys.ENTER)
    wait_text(browser, "#page", "No logged inferences in this time range.")
    assert not browser.find_element(By.ID, "error").text


def test_assay_charts_and_alerts(world, as_alice):
    browser = as_alice
    open_page(browser, "assays")
    choose(browser, "assay-pipeline", str(world["pipeline"]["pipeline_pk_id"]), "assays")
    wait_text(browser, "#page", "uidrift")
    results = world["results"]
    scores = chart_drawn(browser, "assay-scores")
    assert scores["type"] == "line" and scores["width"] > 300 and scores["height"] > 100
    by_label = {d["label"]: d["data"] for d in scores["datasets"]}
    assert by_label["score"] == pytest.approx([r["score"] for r in reversed(results)])  # oldest first
    assert set(by_label["alert threshold"]) == {1.0} and set(by_label["warning threshold"]) == {0.5}
    bins = chart_drawn(browser, "assay-bins")
    newest = results[0]
    assert bins["type"] == "bar" and bins["labels"] == newest["baseline_summary"]["edge_names"]
    assert bins["datasets"][0]["data"] == pytest.approx(newest["baseline_summary"]["aggregated_values"])
    assert bins["datasets"][1]["data"] == pytest.approx(newest["window_summary"]["aggregated_values"])
    alerts = browser.find_element(By.ID, "page").text.split("Alerts", 1)[1]
    assert f"{len(results)} window(s) above a threshold" in alerts and "Alert" in alerts
    shot(browser, "06-assays")


async def _set_logs_complete(stack, result_id: int, complete: bool) -> None:
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await conn.execute("UPDATE assay_runner.results SET result = jsonb_set(result, '{logs_complete}', $2::jsonb) "
                           "WHERE id = $1", result_id, json.dumps(complete))
    finally:
        await conn.close()


MARKED = """return [...document.querySelectorAll('#page .badge.incomplete-logs')].map(b => ({
  title: b.title, where: b.closest('tr') ? b.closest('tr').cells[0].textContent : b.parentElement.className ||
  b.parentElement.tagName}))"""


def test_a_window_scored_without_every_logged_record_is_marked(stack, world, alice_ui: Account, as_alice):
    """A stored result with `logs_complete: false` (scored after `max_log_wait` while the log store lagged) shows an
    "incomplete logs" badge, with a tooltip saying what it means and what to do, on its row of the score table, in
    the window picker, beside the chosen window's bins and in the alerts; a complete result shows none. Staged in
    PostgreSQL: through the API it takes the log store behind for `max_log_wait` (600 s), and the runner's side is
    tests/unit/test_assay_schedule.py's."""
    browser = as_alice
    results = ok(post(stack, "assays/get_results", alice_ui.token, {"assay_id": world["assay"]}))
    oldest, newest = results[-1], results[0]
    # the world's windows had every record
    assert len(results) >= 2 and all(r["logs_complete"] is True for r in results), results
    asyncio.run(_set_logs_complete(stack, oldest["id"], False))
    try:
        answered = ok(post(stack, "assays/get_results", alice_ui.token, {"assay_id": world["assay"]}))
        assert [r["logs_complete"] for r in answered] == [True] * (len(results) - 1) + [False]
        open_page(browser, "assays")
        choose(browser, "assay-pipeline", str(world["pipeline"]["pipeline_pk_id"]), "assays")
        wait_text(browser, "#page", "uidrift")
        badges = browser.execute_script(MARKED)
        where = [b["where"] for b in badges]
        # the note over the chart, the score table's row and the alerts' row of the oldest window; not the newest
        assert where.count(oldest["window_start"]) == 2 and "incomplete-logs-note" in where, badges
        assert newest["window_start"] not in where and len(badges) == 3, badges
        assert all("max_log_wait" in b["title"] and "log store" in b["title"] and "run_interactive" in b["title"]
                   for b in badges), badges
        note = browser.find_element(By.CSS_SELECTOR, "#page .incomplete-logs-note").text
        assert f"1 of {len(results)} window(s) were scored without every logged record" in note
        options = [o.text for o in Select(browser.find_element(By.ID, "assay-window")).options]
        assert [o.endswith("incomplete logs") for o in options] == [False] * (len(results) - 1) + [True], options
        chosen = browser.find_elements(By.CSS_SELECTOR, "#page .row:has(#assay-window) .badge.incomplete-logs")
        assert not chosen  # the newest window is shown first, and it had every record
        choose(browser, "assay-window", str(len(results) - 1), "assays")
        wait_for(browser, "return !!document.querySelector('#page .row:has(#assay-window) .badge.incomplete-logs')",
                 what="the chosen window's badge")
        shot(browser, "06b-assay-incomplete-logs")
    finally:
        asyncio.run(_set_logs_complete(stack, oldest["id"], True))
    open_page(browser, "assays")  # every window complete again: no mark anywhere
    wait_text(browser, "#page", "uidrift")
    assert browser.execute_script(MARKED) == []
    logs_column = browser.execute_script("return [...document.querySelectorAll('[data-chart=assay-scores] tbody tr')]"
                                         ".map(tr => tr.cells[3].textContent)")
    assert logs_column == ["complete"] * len(results)


def test_orchestration_task_run_and_its_logs(stack, world, alice_ui: Account, as_alice):
    """A run's logs: its last lines (RUN_LOG_LINES, 2,000; here 1), saying so when the run has more (before: not a
    word), and "Show all lines" for every line (task/get_logs_for_run without `lines`)."""
    browser = as_alice
    every = ok(post(stack, "task/get_logs_for_run", alice_ui.token, {"id": world["run_id"]}))["logs"]
    assert len(every) >= 2 and every[-1].endswith("stdout F second line"), every
    browser.execute_script("RUN_LOG_LINES = 1")
    open_page(browser, "tasks")
    wait_text(browser, "#page", "uitask")
    wait_text(browser, "#run-logs-state", "success")
    wait_text(browser, "#run-logs-cut", "Showing the last 1 lines: the run has more")
    assert browser.find_element(By.ID, "run-logs").text == every[-1]
    assert f"railyard tasks logs {world['run_id']}" in browser.find_element(By.ID, "run-logs-cut").text
    browser.find_element(By.ID, "run-logs-all").send_keys(Keys.ENTER)
    wait_text(browser, "#run-logs-cut", f"Every line shown ({len(every)}).")
    wait_text(browser, "#run-logs", "hello from the ui task")
    assert browser.find_element(By.ID, "run-logs").text == "\n".join(every)
    assert not browser.find_element(By.ID, "run-logs-all").is_displayed()
    assert browser.execute_script("return document.activeElement.id") == "run-logs"
    assert world["run_id"][:8] in page_text(browser)
    shot(browser, "07-orchestrations")
    # at the UI's own 2,000 lines the two are all there is: no note, no button
    browser.execute_script("RUN_LOG_LINES = 2000; state.tasks.allLines = null")
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs", "hello from the ui task")
    wait_text(browser, "#run-logs-state", f"{len(every)} line(s)")
    assert browser.find_element(By.ID, "run-logs-cut").text == ""
    assert not browser.find_element(By.ID, "run-logs-all").is_displayed()


# the run's reads of its last lines are answered as if it were still running (so the page follows it, reading again
# RUN_LOG_FOLLOW_MS after each read), and the second of them is held (its answer read, then kept) until
# releaseLogs(done), which hands it over and calls back 300 ms later with what the page then shows (before the next
# read could change it). The second read is asked for 0.1 s after the first; as it is sent, the page's next reads are
# put 1.5 s apart, the UI's own (these checks need the read after the held one that far off): the first 1.5 s of
# each test was only a wait for the second read
LIVE_LOGS_HELD = """
RUN_LOG_FOLLOW_MS = 100;
window.logsRead = 0;
window.logsAsked = 0;
window.releaseLogs = null;
if (!window.unheldLogsFetch) {
  window.unheldLogsFetch = window.fetch;
  window.fetch = function (url, init) {
    const real = window.unheldLogsFetch.apply(this, arguments);
    if (!String(url).endsWith('/v1/api/task/get_logs_for_run') || !('lines' in JSON.parse(init.body))) return real;
    if (++window.logsAsked === 2) RUN_LOG_FOLLOW_MS = 1500;
    return real.then(async r => {
      const answer = JSON.parse(await r.text());
      answer.status = 'running';
      // window.heldLogsFail: the held read answers an error instead (a 503)
      const response = window.heldLogsFail && window.logsRead === 1
        ? new Response(JSON.stringify({code: 'unavailable', msg: 'the held read of the last lines failed'}),
                       {status: 503, headers: {'Content-Type': 'application/json'}})
        : new Response(JSON.stringify(answer), {status: r.status, headers: r.headers});
      if (++window.logsRead !== 2) return response;
      return new Promise(resolve => {
        window.releaseLogs = (done) => {
          resolve(response);
          setTimeout(() => done({cut: document.querySelector('#run-logs-cut').textContent,
                                 logs: document.querySelector('#run-logs').textContent,
                                 button: !document.querySelector('#run-logs-all').hidden}), 300);
        };
      });
    });
  };
}
"""


def test_show_all_lines_is_not_undone_by_a_read_on_its_way(stack, world, alice_ui: Account, as_alice):
    """A live run's logs are read again every 1.5 s; Show all lines pressed while such a read of the last lines is on
    its way: that read, answered after every line was shown, is dropped. Before, it showed the cut lines, the note and
    the button again over every line (for good when the run had ended by then: no further read)."""
    browser = as_alice
    every = ok(post(stack, "task/get_logs_for_run", alice_ui.token, {"id": world["run_id"]}))["logs"]
    assert len(every) >= 2, every
    browser.execute_script("RUN_LOG_LINES = 1; state.tasks.allLines = null")
    browser.execute_script(LIVE_LOGS_HELD)
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-cut", "Showing the last 1 lines: the run has more")
    wait_for(browser, "return window.releaseLogs !== null", what="the second read of the last lines")
    browser.find_element(By.ID, "run-logs-all").send_keys(Keys.ENTER)
    wait_text(browser, "#run-logs-cut", f"Every line shown ({len(every)}).")
    shows = browser.execute_async_script("window.releaseLogs(arguments[arguments.length - 1])")
    assert shows == {"cut": f"Every line shown ({len(every)}).", "logs": "\n".join(every), "button": False}, shows
    wait_text(browser, "#run-logs-state", f"{len(every)} line(s)")  # the run's own status (success): not followed
    assert not browser.find_element(By.ID, "error").text


def test_a_read_on_its_way_failing_after_show_all_lines_shows_no_error(stack, world, alice_ui: Account, as_alice):
    """As above, but the read of the last lines on its way when Show all lines is pressed fails (a 503): its error is
    dropped with it, as its answer is (review of f2b49ee). Before, the page showing every line said "the held read
    of the last lines failed" in its error line."""
    browser = as_alice
    every = ok(post(stack, "task/get_logs_for_run", alice_ui.token, {"id": world["run_id"]}))["logs"]
    browser.execute_script("RUN_LOG_LINES = 1; state.tasks.allLines = null; window.heldLogsFail = true")
    browser.execute_script(LIVE_LOGS_HELD)
    try:
        open_page(browser, "tasks")
        wait_text(browser, "#run-logs-cut", "Showing the last 1 lines: the run has more")
        wait_for(browser, "return window.releaseLogs !== null", what="the second read of the last lines")
        browser.find_element(By.ID, "run-logs-all").send_keys(Keys.ENTER)
        wait_text(browser, "#run-logs-cut", f"Every line shown ({len(every)}).")
        shows = browser.execute_async_script("window.releaseLogs(arguments[arguments.length - 1])")
        assert shows == {"cut": f"Every line shown ({len(every)}).", "logs": "\n".join(every), "button": False}, shows
        assert not browser.find_element(By.ID, "error").text
    finally:
        browser.execute_script("window.heldLogsFail = false")


# records the body of every task/get_logs_for_run the page sends
RECORD_LOG_READS = """
window.logReads = [];
if (!window.unrecordedLogsFetch) {
  window.unrecordedLogsFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).endsWith('/v1/api/task/get_logs_for_run')) window.logReads.push(JSON.parse(init.body));
    return window.unrecordedLogsFetch.apply(this, arguments);
  };
}
"""


def test_show_all_lines_reads_pages_and_says_what_it_does_not_show(stack, world, alice_ui: Account, as_alice):
    """Show all lines reads every line in pages (here of 1 line; the UI's own is 10,000 and a page stops at 4 MiB):
    `limit`, then each page's next_cursor, so a run whose lines pass a bus reply shows them all; before, one read of
    every line, which such a run answered 422 (tests/integration/test_run_logs_pages.py). Past RUN_LOG_MAX lines
    (here 1) the page says how many it shows and why."""
    browser = as_alice
    run = world["run_id"]
    every = ok(post(stack, "task/get_logs_for_run", alice_ui.token, {"id": run}))["logs"]
    browser.execute_script("RUN_LOG_LINES = 1; RUN_LOG_PAGE = 1; state.tasks.allLines = null")
    browser.execute_script(RECORD_LOG_READS)
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-cut", "Showing the last 1 lines: the run has more")
    browser.find_element(By.ID, "run-logs-all").send_keys(Keys.ENTER)
    wait_text(browser, "#run-logs-cut", f"Every line shown ({len(every)}).")
    assert browser.find_element(By.ID, "run-logs").text == "\n".join(every)
    paged = [body for body in browser.execute_script("return window.logReads") if "lines" not in body]
    assert paged == [{"id": run, "limit": 1}] + [{"id": run, "limit": 1, "cursor": str(k)}
                                                 for k in range(1, len(every))], paged
    # more lines than the page shows: the first RUN_LOG_MAX, and the note says so
    browser.execute_script("RUN_LOG_MAX = 1; RUN_LOG_PAGE = 10000; state.tasks.allLines = null")
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-cut", "Showing the last 1 lines: the run has more")
    browser.find_element(By.ID, "run-logs-all").send_keys(Keys.ENTER)
    wait_text(browser, "#run-logs-cut", "Showing the first 1 lines: the run has more, past what this page shows")
    assert browser.find_element(By.ID, "run-logs").text == every[0]
    assert f"railyard tasks logs {run}" in browser.find_element(By.ID, "run-logs-cut").text
    assert not browser.find_element(By.ID, "error").text


# a read of more than the last 2 lines answers the 422 a reply past the bus's 8 MiB gets (tests/integration/
# test_run_logs_pages.py makes a real one: 600 lines of 15,000 characters)
LAST_LINES_TOO_LARGE = """
if (!window.unboundedLogsFetch) {
  window.unboundedLogsFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).endsWith('/v1/api/task/get_logs_for_run') && JSON.parse(init.body).lines > 2) {
      return Promise.resolve(new Response(JSON.stringify({code: 'reply_too_large', msg: 'the answer would be 9.8 MiB'}),
                                          {status: 422, headers: {'Content-Type': 'application/json'}}));
    }
    return window.unboundedLogsFetch.apply(this, arguments);
  };
}
"""


def test_last_lines_past_a_reply_show_fewer_and_say_why(stack, world, alice_ui: Account, as_alice):
    """The last 2,000 lines of a run with long lines (up to 16 KiB each) pass what one reply carries: the page asks
    half as many until they fit and says so. Before, the read's 422 showed in place of the logs."""
    browser = as_alice
    every = ok(post(stack, "task/get_logs_for_run", alice_ui.token, {"id": world["run_id"]}))["logs"]
    browser.execute_script("RUN_LOG_LINES = 2000; state.tasks.allLines = null")
    browser.execute_script(LAST_LINES_TOO_LARGE)
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-cut", "Showing the last 1 lines (the last 2,000 pass what one reply of the API "
              "carries): the run has more")
    assert browser.find_element(By.ID, "run-logs").text == every[-1]
    assert browser.find_element(By.ID, "run-logs-all").is_displayed()
    assert not browser.find_element(By.ID, "error").text


# the run's reads of its last lines are answered as if it were still running (so the page follows it, reading again
# RUN_LOG_FOLLOW_MS after each read); the second of them answers a 503. The second read is asked for 0.1 s after the
# first; as it is sent, the page's next reads are put 1.5 s apart, the UI's own (the failed read's note must stay up
# until the wait sees it)
LIVE_LOGS_FAIL_ONCE = """
RUN_LOG_FOLLOW_MS = 100;
window.logsRead = 0;
window.logsAsked = 0;
if (!window.unfailedLogsFetch) {
  window.unfailedLogsFetch = window.fetch;
  window.fetch = function (url, init) {
    const real = window.unfailedLogsFetch.apply(this, arguments);
    if (!String(url).endsWith('/v1/api/task/get_logs_for_run') || !('lines' in JSON.parse(init.body))) return real;
    if (++window.logsAsked === 2) RUN_LOG_FOLLOW_MS = 1500;
    return real.then(async r => {
      const answer = JSON.parse(await r.text());
      answer.status = 'running';
      if (++window.logsRead === 2) {
        return new Response(JSON.stringify({code: 'unavailable', msg: 'the second read failed'}),
                            {status: 503, headers: {'Content-Type': 'application/json'}});
      }
      return new Response(JSON.stringify(answer), {status: r.status, headers: r.headers});
    });
  };
}
"""


def test_a_failed_read_of_a_live_run_keeps_following_it(stack, world, alice_ui: Account, as_alice):
    """A live run's logs read every 1.5 s: one read that fails is said beside the logs and the next is tried 1.5 s
    later. Before, the failed read's error went to the page's error line and the page stopped following the run
    (no further read: its new lines and its end were never shown)."""
    browser = as_alice
    browser.execute_script("RUN_LOG_LINES = 2000; state.tasks.allLines = null")
    browser.execute_script(LIVE_LOGS_FAIL_ONCE)
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-state", "reading the logs failed (the second read failed")
    assert "trying again" in browser.find_element(By.ID, "run-logs-state").text
    wait_for(browser, "return window.logsRead >= 3 && document.querySelector('#run-logs-state').textContent"
             ".includes('following the logs live')", what="the run followed again after the failed read")
    assert "hello from the ui task" in browser.find_element(By.ID, "run-logs").text
    assert not browser.find_element(By.ID, "error").text


# the run's reads of its logs answer it ended ("failure", as a run marked lost is) and, the first of them, without its
# last line: that line comes after the status, as a paused supervisor's late batch does. `lines`: the reads of the
# last lines (else: Show all lines' pages)
LATE_LINE_AFTER_THE_END = """
window.lateReads = 0;
window.lateLines = arguments[0];
if (!window.unlateLogsFetch) {
  window.unlateLogsFetch = window.fetch;
  window.fetch = function (url, init) {
    const real = window.unlateLogsFetch.apply(this, arguments);
    if (!String(url).endsWith('/v1/api/task/get_logs_for_run')) return real;
    if (('lines' in JSON.parse(init.body)) !== window.lateLines) return real;
    return real.then(async r => {
      const answer = JSON.parse(await r.text());
      answer.status = 'failure';
      if (++window.lateReads === 1) answer.logs = answer.logs.slice(0, -1);
      return new Response(JSON.stringify(answer), {status: r.status, headers: r.headers});
    });
  };
}
"""


def test_lines_written_after_a_run_ended_are_still_shown(stack, world, alice_ui: Account, as_alice):
    """A run marked failed as lost whose supervisor was only paused writes its last lines after that status (the
    scheduler stores them whatever the status). The page reads an ended run's logs again until SETTLE_QUIET reads in a
    row bring no new line (SETTLE_READS at most), the last lines and every line alike. Before, the first read that saw
    the ended status stopped following: the late line never showed (the page said 1 line fewer, for good).

    The reads are counted, not timed: they follow each other 0.1 s apart (RUN_LOG_FOLLOW_MS; the UI's own 1.5 s made
    this test wait ~9 s of its 11.6)."""
    browser = as_alice
    every = ok(post(stack, "task/get_logs_for_run", alice_ui.token, {"id": world["run_id"]}))["logs"]
    assert len(every) >= 2, every
    browser.execute_script("RUN_LOG_LINES = 2000; RUN_LOG_FOLLOW_MS = 100; state.tasks.allLines = null")
    browser.execute_script(LATE_LINE_AFTER_THE_END, True)
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-state", "failure")
    wait_for(browser, "return document.querySelector('#run-logs').textContent === arguments[0]", "\n".join(every),
             what="the line written after the run ended")
    wait_for(browser, "return document.querySelector('#run-logs-state').dataset.following === 'no'",
             what="the page stopping once no new line comes")
    # the short read, the one with the late line, then SETTLE_QUIET (2) reads bringing nothing new
    assert browser.execute_script("return window.lateReads") == 4
    assert browser.find_element(By.ID, "run-logs-state").text.endswith(f"{len(every)} line(s)")
    # Show all lines: its pages of an ended run are read again the same way (the last page, from where it began)
    browser.execute_script("RUN_LOG_LINES = 1; state.tasks.allLines = null")
    browser.execute_script(LATE_LINE_AFTER_THE_END, False)
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-cut", "Showing the last 1 lines: the run has more")
    browser.find_element(By.ID, "run-logs-all").send_keys(Keys.ENTER)
    wait_text(browser, "#run-logs-cut", f"Every line shown ({len(every)}).")  # the old code: {len(every) - 1}
    assert browser.find_element(By.ID, "run-logs").text == "\n".join(every)
    wait_for(browser, "return document.querySelector('#run-logs-state').dataset.following === 'no'",
             what="the page stopping once no new line comes")
    assert not browser.find_element(By.ID, "error").text


def test_a_run_that_succeeded_is_read_once(stack, world, alice_ui: Account, as_alice):
    """A run that succeeded has every line written before its end was recorded (its status is read before its lines),
    so its logs are read once, the last lines and every line alike. eb52b5c read every ended run's again until two
    reads brought nothing new: each finished run opened was read three times, 1.5 s apart (`railyard tasks logs -f`
    settles a failed run only)."""
    browser = as_alice
    run = world["run_id"]
    every = ok(post(stack, "task/get_logs_for_run", alice_ui.token, {"id": run}))
    assert every["status"] == "success" and len(every["logs"]) >= 2, every
    following = "return document.querySelector('#run-logs-state').dataset.following === 'no'"
    browser.execute_script("RUN_LOG_LINES = 1; state.tasks.allLines = null")
    browser.execute_script(RECORD_LOG_READS)
    open_page(browser, "tasks")
    wait_text(browser, "#run-logs-cut", "Showing the last 1 lines: the run has more")
    wait_for(browser, following, what="the page no longer following the run")
    assert browser.execute_script("return window.logReads") == [{"id": run, "lines": 2}]  # eb52b5c: 3 reads
    browser.execute_script("window.logReads = []")
    browser.find_element(By.ID, "run-logs-all").send_keys(Keys.ENTER)
    wait_text(browser, "#run-logs-cut", f"Every line shown ({len(every['logs'])}).")
    wait_for(browser, following, what="the page no longer following the run")
    assert browser.execute_script("return window.logReads") == [{"id": run, "limit": 10000}]  # eb52b5c: 3 reads
    assert not browser.find_element(By.ID, "error").text


UIMODEL_CARD = ("railyardGraph.nodes().filter(n => n.data('card').kind === 'model_version' && "
                "n.data('card').title.startsWith('uimodel'))[0]")


def test_lineage_graph_from_model_version_to_its_deployment(world, as_alice):
    browser = as_alice
    deadline = time.monotonic() + 60
    while True:  # the deployment's card can be drawn before the events that give the model version its arrow
        open_page(browser, "lineage")
        wait_for(browser, "return window.railyardGraph && railyardGraph.nodes().some(n => "
                 "n.data('card').kind === 'deployment') && railyardGraph.nodes().some(n => n.data('card').kind === "
                 "'benchmark')", what="deployment and benchmark cards drawn")
        if browser.execute_script(f"return {UIMODEL_CARD}.outgoers('node').length > 0"):
            break
        assert time.monotonic() < deadline, "the model version's card has no edge to its pipeline version after 60 s"
        time.sleep(1)
    kinds = browser.execute_script("return railyardGraph.nodes().map(n => n.data('card').kind)")
    assert {"model_version", "pipeline_version", "deployment", "assay", "task_run", "orchestration",
            "project_version", "benchmark"} <= set(kinds), kinds
    # a real click on the model version's card, where Cytoscape drew it
    assert browser.execute_script(f"return {UIMODEL_CARD}.hasClass('iconic') && "  # drawn with its icon's glyph
                                  f"{UIMODEL_CARD}.data('icon').startsWith('data:image/svg+xml')")
    x, y = browser.execute_script(f"const p = {UIMODEL_CARD}.renderedPosition(); return [p.x, p.y]")
    graph = browser.find_element(By.ID, "graph")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", graph)
    size = graph.size
    ActionChains(browser).move_to_element_with_offset(graph, int(x - size["width"] / 2),
                                                      int(y - size["height"] / 2)).click().perform()
    wait_text(browser, "#card-panel", "model version")
    assert "uimodel" in browser.find_element(By.ID, "card-title").text
    shot(browser, "08-lineage")
    downstream = browser.find_element(By.CSS_SELECTOR, "#card-panel").find_elements(
        By.XPATH, f".//button[contains(., '{world['deployment']} deployment')]")
    assert downstream, browser.find_element(By.ID, "card-panel").text
    downstream[-1].send_keys(Keys.ENTER)  # the keyboard works too
    wait_text(browser, "#card-title", f"{world['deployment']} deployment")
    browser.find_element(By.ID, "card-open").send_keys(Keys.ENTER)  # click through to the resource
    rendered(browser, "pipelines")
    card = f"pipeline-{world['pipeline']['pipeline_pk_id']}"
    wait_for(browser, "return document.activeElement && document.activeElement.id === arguments[0]", card,
             what="the deployment's card focused")
    focused = browser.find_element(By.ID, card)
    assert world["deployment"] in focused.text and "target" in focused.get_attribute("class")

    # collapse hides what flows out of the model version; expand brings it back
    open_page(browser, "lineage")
    wait_for(browser, "return window.railyardGraph && railyardGraph.nodes().length > 0", what="graph")
    card_id = browser.execute_script(f"return {UIMODEL_CARD}.id()")
    browser.find_element(By.CSS_SELECTOR, f'#card-list button[data-card="{card_id}"]').send_keys(Keys.ENTER)
    wait_text(browser, "#card-panel", "model version")
    visible = "return railyardGraph.nodes(':visible').length"
    before = browser.execute_script(visible)
    browser.find_element(By.ID, "card-collapse").send_keys(Keys.ENTER)
    wait_for(browser, f"{visible} < arguments[0]", before, what="collapsed")
    browser.find_element(By.ID, "card-expand").send_keys(Keys.ENTER)
    wait_for(browser, f"{visible} === arguments[0]", before, what="expanded")


def test_datasets_restore_and_benchmarks_compared(world, as_alice):
    browser = as_alice
    open_page(browser, "datasets")
    wait_text(browser, "#page", "uiproject")
    assert "first cut" in page_text(browser) and "holdout" in page_text(browser)
    browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Restore uiproject v1"]').send_keys(Keys.ENTER)
    wait_text(browser, "#restored", 'as the new project "uiproject (v1)"')
    wait_text(browser, "#page", "uiproject (v1)")
    shot(browser, "09-datasets")

    open_page(browser, "benchmarks")
    wait_text(browser, "#page", "bench one batch")
    quality = chart_drawn(browser, "bench-quality")
    assert len(quality["datasets"]) == 2 and "accuracy" in quality["labels"]
    accuracy = quality["labels"].index("accuracy")
    for report in world["reports"]:
        [drawn] = [d for d in quality["datasets"] if d["label"].endswith(f"(report {report['id']})")]
        assert drawn["data"][accuracy] == pytest.approx(report["candidates"][0]["metrics"]["accuracy"])
    latency = chart_drawn(browser, "bench-latency")
    assert latency["labels"] == ["speed.p50_ms", "speed.p99_ms"]
    shot(browser, "10-benchmarks")


REVIEW_LISTED = "return [...document.querySelectorAll('#review-list button')].map(b => b.dataset.prediction)"
# the next read of the review queue past its first page is held (its answer read, then kept) until
# releaseReviewPage(), which hands it over and calls back 300 ms later (the page has long handled it by then)
HOLD_REVIEW_PAGE = """
window.holdReviewPage = true;
window.releaseReviewPage = null;
if (!window.unheldReviewFetch) {
  window.unheldReviewFetch = window.fetch;
  window.fetch = function (url, init) {
    if (window.holdReviewPage && String(url).endsWith('/v1/api/deployments/list_predictions_to_review')
        && 'cursor' in JSON.parse(init.body)) {
      window.holdReviewPage = false;
      return window.unheldReviewFetch.apply(this, arguments).then(async r => {
        const body = await r.text();
        return new Promise(resolve => {
          window.releaseReviewPage = (done) => {
            resolve(new Response(body, {status: r.status, headers: r.headers}));
            setTimeout(done, 300);
          };
        });
      });
    }
    return window.unheldReviewFetch.apply(this, arguments);
  };
}
"""


def test_review_queue_then_counted_on_the_monitoring_page(stack, world, alice_ui: Account, as_alice):
    """The review queue, read a page at a time (here 1; the UI's own is 20): before, it read the oldest 50 and listed
    20 of them, with no way to the others but reviewing; now "Show newer predictions" reads the next page (the API's
    `cursor`, oldest first) under them, and the focus goes to the last one listed when no page is left."""
    browser = as_alice
    first, second = world["predictions"]
    queue = ok(post(stack, "deployments/list_predictions_to_review", alice_ui.token, {"deployment": world["squares"]}))
    oldest_first = [p["id"] for p in queue["predictions"]]
    assert len(oldest_first) == 2, queue
    browser.execute_script("REVIEW_PAGE = 1")
    open_page(browser, "review")
    choose(browser, "review-deployment", world["squares"], "review")
    wait_text(browser, "#review-pending", "2 prediction(s) waiting")
    assert browser.execute_script(REVIEW_LISTED) == oldest_first[:1], shown(browser)
    wait_text(browser, "#review-listed", "The oldest 1 listed; newer ones not listed yet.")
    # two quick clicks: Show newer predictions, then, while its read is on its way, the prediction listed (the page
    # drawn again, reading the one page it lists). The late answer changes nothing: before, it counted one more page
    # for the list drawn meanwhile, whose Show newer then asked offset 2, past the second prediction (never listed)
    browser.execute_script(HOLD_REVIEW_PAGE)
    browser.find_element(By.ID, "review-more").send_keys(Keys.ENTER)
    wait_for(browser, "return window.releaseReviewPage !== null", what="the next page asked")
    browser.execute_script("document.querySelector('#page').dataset.page = ''")
    browser.find_element(By.CSS_SELECTOR, "#review-list button").send_keys(Keys.ENTER)
    rendered(browser, "review")
    browser.execute_async_script("window.releaseReviewPage(arguments[arguments.length - 1])")
    assert browser.execute_script(REVIEW_LISTED) == oldest_first[:1], shown(browser)
    assert browser.execute_script("return state.review.pages") == 1
    wait_text(browser, "#review-listed", "The oldest 1 listed; newer ones not listed yet.")
    assert not browser.find_element(By.ID, "error").text
    newer = browser.find_element(By.ID, "review-more")
    newer.send_keys(Keys.ENTER)
    wait_for(browser, f"{REVIEW_LISTED}.length === 2", what="both predictions listed")
    assert browser.execute_script(REVIEW_LISTED) == oldest_first
    wait_text(browser, "#review-listed", "All 2 listed.")
    assert not newer.is_displayed()
    assert browser.execute_script("return document.activeElement.dataset.prediction") == oldest_first[1]
    wait_for(browser, "return document.querySelector('#review-image').dataset.loaded === 'true'", what="image drawn")
    canvas = browser.find_element(By.ID, "review-image")
    assert canvas.get_attribute("data-boxes") == str(len(first["prediction"]["detection_boxes"]))
    assert canvas.size["width"] >= 300  # the 64x64 image scaled up, the boxes over it
    assert browser.execute_script(  # the image and a box's colour are on the canvas
        "const g = arguments[0].getContext('2d'); return g.getImageData(0, 0, arguments[0].width, "
        "arguments[0].height).data.some((v, i) => i % 4 === 0 && v > 200)", canvas)
    shot(browser, "12-review-queue")
    browser.find_element(By.ID, "review-accept").send_keys(Keys.ENTER)
    wait_text(browser, "#review-status", "accepted (revision 1)")
    wait_text(browser, "#review-pending", "1 prediction(s) waiting")
    wait_for(browser, "return document.querySelector('#review-image').dataset.loaded === 'true'", what="image drawn")

    # the second: every predicted box removed, one drawn with the mouse, its class set from the keyboard
    for _ in second["prediction"]["detection_boxes"]:
        browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Remove box 1"]').send_keys(Keys.ENTER)
    canvas = browser.find_element(By.ID, "review-image")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)  # all of it in view
    size = canvas.size
    (ActionChains(browser).move_to_element_with_offset(canvas, int(-size["width"] / 4), int(-size["height"] / 4))
     .click_and_hold().move_by_offset(int(size["width"] / 4), int(size["height"] / 4)).release().perform())
    wait_for(browser, "return document.querySelectorAll('#review-boxes tbody tr').length === 1", what="a drawn box")
    Select(browser.find_element(By.ID, "box-0-class")).select_by_value("1")
    drawn = [int(browser.find_element(By.ID, f"box-0-{side}").get_attribute("value"))
             for side in ("top", "left", "bottom", "right")]
    assert 12 <= drawn[0] <= 20 and 12 <= drawn[1] <= 20 and 28 <= drawn[2] <= 36 and 28 <= drawn[3] <= 36, drawn
    browser.find_element(By.ID, "review-correct").send_keys(Keys.ENTER)
    wait_text(browser, "#review-status", "corrected (revision 1)")
    wait_text(browser, "#page", "Nothing to review.")
    stats = ok(post(stack, "deployments/get_stats", alice_ui.token, {
        "deployment": world["squares"], "service": "REVIEWS_LABEL_DISTRIBUTION_STATS"}))["stats"]
    predicted_white = sum(c == 1 for c in first["prediction"]["detection_classes"])
    assert stats["reviews"] == 2 and stats["ground_truth"]["counts"].get("1") == predicted_white + 1

    open_page(browser, "monitoring")
    choose(browser, "mon-deployment", world["squares"], "monitoring")
    assert browser.find_element(By.ID, "mon-predictions").text == "2"
    assert browser.find_element(By.ID, "mon-reviewed").text == "2"
    assert browser.find_element(By.ID, "mon-pending").text == "0"
    scores = chart_drawn(browser, "mon-review-scores")
    detection = ok(post(stack, "deployments/get_stats", alice_ui.token, {
        "deployment": world["squares"], "service": "REVIEWS_OBJECT_DETECTION_STATS"}))["stats"]
    assert scores["datasets"][0]["data"][0] == pytest.approx(detection["champion"]["map_50_95"])
    labels = chart_drawn(browser, "mon-labels")
    assert labels["labels"] == ["grey (0)", "white (1)"] or labels["labels"] == ["white (1)"], labels
    wait_text(browser, "#mon-view-json", '"service": "AGGREGATED_PREDICTIONS_DATA"')
    browser.find_element(By.ID, "mon-tags").send_keys("no-such-tag", Keys.ENTER)  # filters every view
    wait_for(browser, "const e = document.querySelector('#mon-predictions'); return e && e.textContent === '0'",
             what="no prediction has the tag")
    browser.find_element(By.ID, "mon-tags").clear()
    browser.find_element(By.ID, "mon-tags").send_keys("ui", Keys.ENTER)
    wait_for(browser, "const e = document.querySelector('#mon-tags'); return e && e.value === 'ui' && "
             "document.querySelector('#mon-predictions').textContent === '2'", what="both have the tag")
    assert "set_training_data" in browser.find_element(By.ID, "mon-drift").text  # the API says what is missing
    # retrieve_information's continuous training: none set up for this deployment (the states: the test below)
    assert "Not set up" in browser.find_element(By.ID, "mon-continuous").text
    shot(browser, "13-monitoring")


def test_show_newer_predictions_misses_none_reviewed_meanwhile(stack, world, alice_ui: Account, as_alice):
    """Show newer predictions reads the next page by the API's cursor: a prediction of the first page reviewed by
    someone else before it is pressed neither hides the first one of the next page nor repeats one. Before, the next
    page was read at an offset (the count listed), which the review had moved down one: the prediction just past
    the first page was never listed."""
    browser = as_alice
    squares = Client(stack.base_url, token=alice_ui.token, workspace=alice_ui.workspace_id).get_deployment(
        world["squares"])
    for i, cells in enumerate(({(0, 1): 255}, {(2, 2): 240}, {(3, 0): 250})):
        squares.predict_bytes(f"newer{i}.png", squares_png(cells), tags=["ui"])
    queue = [p["id"] for p in ok(post(stack, "deployments/list_predictions_to_review", alice_ui.token,
                                      {"deployment": world["squares"], "limit": 500}))["predictions"]]
    assert len(queue) >= 3, queue
    browser.execute_script("REVIEW_PAGE = 2")
    open_page(browser, "review")
    choose(browser, "review-deployment", world["squares"], "review")
    wait_text(browser, "#review-listed", "The oldest 2 listed; newer ones not listed yet.")
    assert browser.execute_script(REVIEW_LISTED) == queue[:2], shown(browser)
    # someone else reviews the first one listed
    ok(post(stack, "deployments/review_prediction", alice_ui.token,
            {"deployment": world["squares"], "prediction_id": queue[0], "decision": "accepted"}))
    browser.find_element(By.ID, "review-more").send_keys(Keys.ENTER)
    wait_for(browser, f"{REVIEW_LISTED}.length > 2", what="the next page listed")
    assert browser.execute_script(REVIEW_LISTED) == queue[:4], shown(browser)
    wait_text(browser, "#review-pending", f"{len(queue) - 1} prediction(s) waiting")
    assert not browser.find_element(By.ID, "error").text


# the review queue's first page (no cursor) of more than one prediction answered 422 reply_too_large, as the API
# does for a page of `limit` predictions past a reply (large masks); removed by FIRST_REVIEW_PAGE_FITS
FIRST_REVIEW_PAGE_TOO_LARGE = """
if (!window.unboundedReviewFetch) {
  window.unboundedReviewFetch = window.fetch;
  window.fetch = function (url, init) {
    const body = String(url).endsWith('/v1/api/deployments/list_predictions_to_review') ? JSON.parse(init.body) : null;
    if (body && !body.cursor && body.limit > 1) {
      return Promise.resolve(new Response(JSON.stringify({code: 'reply_too_large', msg: 'the answer would be 9.8 MiB'}),
                                          {status: 422, headers: {'Content-Type': 'application/json'}}));
    }
    return window.unboundedReviewFetch.apply(this, arguments);
  };
}
"""
FIRST_REVIEW_PAGE_FITS = ("if (window.unboundedReviewFetch) { window.fetch = window.unboundedReviewFetch; "
                          "delete window.unboundedReviewFetch; }")


def test_a_first_review_page_past_a_reply_is_read_smaller(stack, world, alice_ui: Account, as_alice):
    """The review queue's first page is the seed's (`limit` predictions, never fewer by bytes: an offset reader's next
    page would skip those cut off), so one of large predictions can be the 422 reply_too_large: the page asks half as
    many until it fits, and goes on by cursor. Before, the 422 showed in place of the queue."""
    browser = as_alice
    squares = Client(stack.base_url, token=alice_ui.token, workspace=alice_ui.workspace_id).get_deployment(
        world["squares"])
    for i, cells in enumerate(({(1, 1): 255}, {(2, 3): 240}, {(0, 0): 250})):
        squares.predict_bytes(f"first{i}.png", squares_png(cells), tags=["ui"])
    queue = [p["id"] for p in ok(post(stack, "deployments/list_predictions_to_review", alice_ui.token,
                                      {"deployment": world["squares"], "limit": 500}))["predictions"]]
    browser.execute_script("REVIEW_PAGE = 2; state.review.pages = 1")
    browser.execute_script(FIRST_REVIEW_PAGE_TOO_LARGE)
    try:
        open_page(browser, "review")
        choose(browser, "review-deployment", world["squares"], "review")
        wait_text(browser, "#review-listed", "The oldest 1 listed; newer ones not listed yet.")
        assert browser.execute_script(REVIEW_LISTED) == queue[:1], shown(browser)
        browser.find_element(By.ID, "review-more").send_keys(Keys.ENTER)
        wait_for(browser, f"{REVIEW_LISTED}.length > 1", what="the next page listed")
        assert browser.execute_script(REVIEW_LISTED) == queue[:3], shown(browser)
        assert not browser.find_element(By.ID, "error").text
    finally:
        browser.execute_script(FIRST_REVIEW_PAGE_FITS)


def test_upload_build_deploy_and_undeploy_from_the_pages(world, alice_ui: Account, as_alice, tmp_path):
    browser = as_alice
    # a model uploaded from the page: a file that is not ONNX is the registry's own 400; an ONNX file is a model
    for name, content in (("notonnx.onnx", b"not a model"), ("uibuilt.onnx", ccfraud_onnx())):
        (tmp_path / name).write_bytes(content)
    open_page(browser, "models")
    browser.find_element(By.ID, "upload-name").send_keys("uibuilt")
    browser.find_element(By.ID, "upload-file").send_keys(str(tmp_path / "notonnx.onnx"))
    browser.find_element(By.CSS_SELECTOR, "#model-upload button[type=submit]").send_keys(Keys.ENTER)
    wait_text(browser, "#error", "HTTP 400")
    browser.find_element(By.ID, "upload-file").send_keys(str(tmp_path / "uibuilt.onnx"))  # replaces the file
    browser.find_element(By.CSS_SELECTOR, "#model-upload button[type=submit]").send_keys(Keys.ENTER)
    wait_text(browser, "#upload-state", "Uploaded uibuilt.onnx")
    assert "uibuilt" in page_text(browser) and not browser.find_element(By.ID, "error").text

    # a pipeline built of it and deployed from the page; its snippet's row infers
    open_page(browser, "pipelines")
    browser.find_element(By.ID, "build-name").send_keys("uibuilt")
    Select(browser.find_element(By.ID, "build-model")).select_by_value("uibuilt")
    browser.find_element(By.ID, "build-name").send_keys(Keys.ENTER)
    wait_for(browser, "return document.activeElement && document.activeElement.id.startsWith('pipeline-') && "
             "document.activeElement.textContent.includes('uibuilt')", what="the new pipeline's card focused")
    card_id = "#" + browser.execute_script("return document.activeElement.id")
    wait_text(browser, card_id, "Not deployed.")
    browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Deploy uibuilt"]').send_keys(Keys.ENTER)
    wait_text(browser, card_id, "Running")  # the button waits until the replicas serve
    card = browser.find_element(By.CSS_SELECTOR, card_id)
    url = card.find_element(By.CSS_SELECTOR, "code.url").text
    curl = next(p.text for p in card.find_elements(By.CSS_SELECTOR, "pre") if p.text.startswith("curl"))
    sample = json.loads(curl.rsplit("-d '", 1)[1].rstrip("'"))
    assert '-H "Authorization: Bearer $(railyard token)"' in curl, curl  # a token the CLI prints, not an unset variable
    assert len(sample[0]["tensor"]) == 29  # a row of the model's input shape
    assert infer(url, alice_ui.token, sample).status_code == 200

    # undeploy (pressed twice): the URL stops answering
    undeploy = browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Undeploy uibuilt"]')
    undeploy.send_keys(Keys.ENTER)  # the first press only asks again
    assert undeploy.text == "Press again to undeploy"
    undeploy.send_keys(Keys.ENTER)
    wait_text(browser, card_id, "Not deployed.")
    assert infer(url, alice_ui.token, sample).status_code in (404, 503)
    shot(browser, "14-pipelines-built")


BIG_DETAILS = {"rows": 2**63 - 1, "offset": -(2**53 + 1), "small": 7, "ratio": 0.5, "digits": "12345678901234567891"}
READ_BIG = r"""
const done = arguments[arguments.length - 1];
// the body api() posts in a browser without JSON.rawJSON (Chromium before 114, Firefox before 135): fetch caught
async function postedWithoutRawJSON(body) {
  const [rawJSON, realFetch] = [JSON.rawJSON, window.fetch];
  let posted = null;
  JSON.rawJSON = undefined;
  window.fetch = async (url, init) => { posted = init.body; return new Response('{}'); };
  try { await api('connections/get', body); } finally { [JSON.rawJSON, window.fetch] = [rawJSON, realFetch]; }
  return posted;
}
(async () => {
  const answer = await api('connections/get', {name: arguments[0]});
  const text = await (await api('connections/get', {name: arguments[0]}, {raw: true})).text();
  const tokens = parseJSON(text, {tokens: true});  // the path of browsers without JSON.parse source text access
  const d = answer.details, t = tokens.details;
  return {source: SOURCE_TEXT, rows: String(d.rows), offset: `${d.offset}`, small: d.small, ratio: d.ratio,
          digits: d.digits, cell: el('td', {}, d.rows).textContent, shown: showJSON(d),
          tokens: [String(t.rows), String(t.offset), t.small, t.ratio, t.digits, showJSON(t)],
          sent: JSON.stringify({rows: d.rows}), compares: d.rows > 2 ** 62 && d.offset < 0,
          posted: await postedWithoutRawJSON({rows: d.rows, offset: t.offset, small: d.small}),
          edges: ['[9007199254740991, 9007199254740992, -9007199254740993, 1e400, 12345678901234567890.5]',
                  '{"k\\"123456789012345678": "x 12345678901234567", "v": 100000000000000000000}']
            .map(x => [showJSON(parseJSON(x)), showJSON(parseJSON(x, {tokens: true}))])};
})().then(done, e => done({error: String(e)}));
"""


def test_integers_beyond_2_53_read_exactly(stack, alice_ui: Account, as_alice):
    """An API answer's integers beyond 2^53 (an int64 in a connection's details) are read exactly by the UI's api()
    (JSON.parse source text access in this Chromium; the tokenizer other browsers use gives the same), shown as
    their digits, and sent back as the same number; smaller numbers and strings of digits are untouched."""
    browser = as_alice
    name = f"uibig-{time.time_ns()}"
    ok(post(stack, "connections/create", alice_ui.token, {"name": name, "type": "HTTP", "details": BIG_DETAILS}))
    got = browser.execute_async_script(READ_BIG, name)
    assert "error" not in got, got
    assert got["source"] is True  # Chromium 114+: the reviver's source text path
    rows, offset = str(2**63 - 1), str(-(2**53 + 1))
    assert (got["rows"], got["offset"], got["small"], got["ratio"], got["digits"]) == (
        rows, offset, 7, 0.5, "12345678901234567891")
    assert got["cell"] == rows and got["compares"] is True
    assert json.loads(got["shown"]) == BIG_DETAILS and f'"rows":{rows}' in got["shown"]
    assert got["tokens"][:5] == [rows, offset, 7, 0.5, "12345678901234567891"] and got["tokens"][5] == got["shown"]
    assert got["sent"] == f'{{"rows":{rows}}}'  # JSON.rawJSON: the API gets the very integer back
    # and without it too: api() writes the digits bare (a numeric string is refused where the API has a number)
    assert got["posted"] == f'{{"rows":{rows},"offset":{offset},"small":7}}'
    assert got["edges"][0] == ["[9007199254740991,9007199254740992,-9007199254740993,null,12345678901234567000]"] * 2
    assert got["edges"][1] == ['{"k\\"123456789012345678":"x 12345678901234567","v":100000000000000000000}'] * 2


LOST = ("inference log: 3 rows not logged since this replica started: 1 malformed records (3 rows) set aside (the"
        " replica's log says more)")
REPLICA_ROWS = r"""
const LOST = arguments[0];
const rows = (status) => replicaRows(status).map(n => n.textContent);
return {
  looping: rows({status: 'Running', details: ['engine-d-1-1: x'], engines: [
    {name: 'engine-d-1-0', status: 'Running', reason: null, details: []},
    {name: 'engine-d-1-1', status: 'Error', details: [], crashes: 3, restart_in: 7.5,
     reason: 'CrashLoopBackOff: ValueError: bad weights (3 exits in a row soon after start); restarted in 8 s'},
    {name: 'engine-d-1-2', status: 'Error', details: [], restart_in: 4, reason: 'exited with 1'}]}),
  none: rows({status: 'Error', details: ['restore failed: the model store did not answer'], engines: []}),
  // a reason holds the last line the user's model logged: text, never markup
  markup: (() => {
    const nodes = replicaRows({status: 'Error', details: [], engines: [{name: 'engine-d-1-3',
      status: 'Error', details: [], reason: 'CrashLoopBackOff: <img src=x onerror="window.__xss=1">'}]});
    const none = replicaRows({status: 'Error', details: ['<img src=y onerror="window.__xss=2">'], engines: []});
    return {text: nodes[0].textContent, elements: [...nodes, ...none].map(n => n.querySelectorAll('img').length),
            none: none.map(n => n.textContent)};
  })(),
  // an engine's details (a replica whose inference log lost rows: Replica.status) are lines of text under its
  // reason, not the list's JSON
  details: (() => {
    const [t] = replicaRows({status: 'Running', details: [], engines: [{name: 'engine-d-1-4', status: 'Running',
      reason: 'exited with 1', restart_in: 4, details: [LOST, '<img src=z onerror="window.__xss=3">']},
      {name: 'engine-d-1-5', status: 'Running', reason: null, details: [LOST]}]});
    const cells = [...t.querySelectorAll('tbody tr')].map(tr => tr.children[2].firstElementChild);
    return {lines: cells.map(cell => [...cell.children].map(line => line.textContent)),
            elements: t.querySelectorAll('img').length, text: t.textContent};
  })(),
};
"""


def test_replicas_show_why_they_do_not_run(as_alice):
    """The pipelines page's replica table (replicaRows, from a status/get_deployment answer) shows each replica's
    reason: a Running deployment's crash-looping replica its CrashLoopBackOff with the last exit's line and when it
    restarts; a deployment with no replicas listed its own details. (The engines' `details` it showed are always
    empty: a crash loop read as a bare Error.)"""
    got = as_alice.execute_script(REPLICA_ROWS, LOST)
    table = got["looping"][0]
    assert "reason" in table and "engine-d-1-0Running" in table
    assert "CrashLoopBackOff: ValueError: bad weights (3 exits in a row soon after start); restarted in 8 s" in table
    assert "exited with 1; restarts in 4 s" in table
    assert got["none"] == ["restore failed: the model store did not answer"]
    # the user's log line in a reason (and a deployment's details) shown as text, not made into elements
    assert 'CrashLoopBackOff: <img src=x onerror="window.__xss=1">' in got["markup"]["text"]
    assert got["markup"]["none"] == ['<img src=y onerror="window.__xss=2">']
    assert got["markup"]["elements"] == [0, 0]
    # an engine's details: one line of text each under its reason (before, the list's JSON text, ["inference log: ..."])
    assert got["details"]["lines"] == [["exited with 1; restarts in 4 s", LOST, '<img src=z onerror="window.__xss=3">'],
                                       [LOST]]
    assert got["details"]["elements"] == 0 and '["' not in got["details"]["text"]


CONTINUOUS = r"""
const HELD = arguments[0];
const shown = (continuous) => {
  const box = continuousDetails(continuous);
  const why = box.querySelector('#mon-continuous-why');
  return {why: why ? [...why.querySelectorAll('li')].map(li => [li.id, li.textContent]) : [],
          rows: [...box.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(td => td.textContent)),
          text: box.textContent, elements: box.querySelectorAll('img').length};
};
const training = {active: true, project_id: 1, orchestration_id: 'o-1', kind: 'orchestration',
  trigger: 'FEEDBACK_LOOP', threshold: 5, experiment_parameters: {}, scan_config: null, model_name: 'squares',
  datasets: {}, reviews: 12, reviews_at_last_training: 10, alerts: 0, alerts_at_last_training: 0,
  suspended_reason: null};
const policy = (name, more) => ({active: true, policy: name, alpha: 0.05, min_sample: 30, suspended_reason: null,
  ...more});
const v = (version) => ({name: 'squares', version, sha: null});
const last = {id: 't-1', state: 'done', reviews: 10, trigger: 'FEEDBACK_LOOP', alerts: null, task_id: 'k-1',
  run_id: 'r-1', model_version: v('v2'), outcome: null, reason: null, created_at: '2026-12-05T19:00:00Z',
  updated_at: '2026-12-05T19:05:00Z'};
const evidence = {decision: 'promote', pairs: 41, n11: 20, n10: 3, n01: 12, n00: 6, champion_accuracy: 0.5609,
  challenger_accuracy: 0.7804, log_evidence: 3.4, threshold: 2.9957, p_lower: 0.6, p_upper: 0.9, alpha: 0.05,
  min_sample: 30, metric: 'top1', champion_score: null, challenger_score: null};
const challenge = (state, more) => ({id: 'c-1', champion: v('v1'), challenger: v('v2'), state, evidence,
  started_at: '2026-12-05T19:06:00Z', decided_at: state === 'running' ? null : '2026-12-05T19:20:00Z',
  reason: null, ...more});
const shadow = {training, deployment: policy('DEPLOY_SHADOW'), pending_model_version: null,
  last_training: {...last, outcome: 'shadow'}};
return {
  delivery: shown({training, deployment: policy('DEPLOY_AUTO'), pending_model_version: null, challenge: null,
                   last_training: {...last, state: 'succeeded', delivery_held_up: HELD}}),
  swap: shown({...shadow, challenge: challenge('promoting',
    {swap_held_up: '504 timeout: deployer.deploy was not answered in 5 s'})}),
  testing: shown({...shadow,
    challenge: challenge('running', {evidence: {...evidence, decision: 'continue', pairs: 7}})}),
  suspended: shown({training: {...training, active: false, suspended_reason: "its owner's token was refused (401)"},
                    deployment: policy('DEPLOY_MANUAL',
                                       {active: false, suspended_reason: 'the owner left the workspace'}),
                    pending_model_version: v('v3'), challenge: null,
                    last_training: {...last, outcome: 'pending', model_version: v('v3')}}),
  failed: shown({training, deployment: null, pending_model_version: null, challenge: null,
                 last_training: {...last, state: 'failed', model_version: null, reason: 'the run failed: exit 1'}}),
  none: shown(null), error: shown({error: 'deployment d-9 not found'}),
};
"""


def test_the_monitoring_page_says_why_a_trained_model_is_not_served(as_alice):
    """The monitoring page's continuous section (continuousDetails, from retrieve_information's `continuous`) shows
    the training's state and trigger, the deployment policy, the last training and the challenge with its evidence,
    and first why a trained model version is not served yet: a delivery or swap held up (the cause monitoring keeps:
    '<status> <code>: <message>'), training or deployment turned off by the service and why, a version waiting for a
    person, the challenger still under test, the training failed. Before, none of it was on the page: a user could
    not tell why continuous delivery was held up. Every value is text, never markup."""
    held = '503 unavailable: deployer.deploy: <img src=x onerror="window.__xss=4"> (held up behind another)'
    got = as_alice.execute_script(CONTINUOUS, held)
    assert got["delivery"]["why"] == [["mon-delivery-held-up", "The delivery of squares v2 (training t-1) is held up; "
                                       f"its last try met: {held}"]]
    assert got["delivery"]["elements"] == 0
    rows = {row[0]: row[1:] for row in got["delivery"]["rows"]}
    assert rows["training"] == ["active", "FEEDBACK_LOOP: 2 of 5 review(s) since the last training; trains squares "
                                          "(orchestration o-1)"]
    assert rows["deployment"][0] == "active"
    assert rows["deployment"][1].startswith("DEPLOY_AUTO; sequential test alpha 0.05")
    assert rows["last training"][0] == "succeeded" and "model squares v2" in rows["last training"][1]
    assert got["swap"]["why"] == [["mon-swap-held-up", "The promotion of squares v2 is held up; its last try met: 504 "
                                   "timeout: deployer.deploy was not answered in 5 s"]]
    challenge = {row[0]: row[1:] for row in got["swap"]["rows"]}["challenge"]
    assert challenge[0] == "promoting"
    assert challenge[1].startswith("squares v2 against squares v1: accuracy: champion 0.561, challenger 0.78; 41 "
                                   "pair(s); evidence 3.4 of 2.996; decision promote"), challenge
    assert got["testing"]["why"] == [["mon-challenge-running", "squares v2 runs as the shadow challenger under the "
                                      "sequential test: 7 reviewed pair(s) of at least 30 before any decision."]]
    assert [i for i, _ in got["suspended"]["why"]] == ["mon-cd-suspended", "mon-ct-suspended", "mon-pending-version"]
    assert "Continuous deployment was turned off: the owner left the workspace" in got["suspended"]["text"]
    assert "Continuous training was turned off: its owner's token was refused (401)" in got["suspended"]["text"]
    assert "squares v3 waits for a person" in got["suspended"]["text"]
    assert got["failed"]["why"] == [["mon-training-failed", "The last training failed: the run failed: exit 1"],
                                    ["mon-cd-none", "No continuous deployment is set up: trained model versions wait "
                                     "for a person (setup_continuous_deployment)."]]
    assert "Not set up" in got["none"]["text"] and got["none"]["rows"] == []
    assert "deployment d-9 not found" in got["error"]["text"]


def test_bob_sees_none_of_it(stack, world, alice_ui: Account, bob_ui: Account, as_alice):
    browser = as_alice
    browser.find_element(By.ID, "signout").send_keys(Keys.ENTER)
    waiting(browser).until(ec.visibility_of_element_located((By.ID, "username")))
    assert browser.execute_script("return sessionStorage.getItem('railyard.session')") is None
    sign_in(browser, stack, bob_ui.email, PASSWORD)
    wait_text(browser, "#who", bob_ui.email)
    open_page(browser, "workspaces")
    options = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "workspace")).options]
    assert str(bob_ui.workspace_id) in options and str(alice_ui.workspace_id) not in options
    # the picker offers bob's workspaces only, and every page asks the API about the picked one
    hers = ("uimodel", "uipipe", world["url"], "uidrift", "uitask", "uiproject", "bench one batch", "uisquares",
            "uibuilt")
    Select(browser.find_element(By.ID, "workspace")).select_by_value(str(bob_ui.workspace_id))
    # one page per kind of API call: logs, assays, monitoring and the review queue start from pipelines/list too
    for page in ("workspaces", "models", "pipelines", "logs", "tasks", "lineage", "datasets", "benchmarks"):
        open_page(browser, page)
        text = page_text(browser)
        assert not [h for h in hers if h in text], (page, text)
        if page == "logs":
            assert "No pipelines in this workspace." in text
            shot(browser, "11-bob-logs")
