"""The Benchmarks page when compare refuses the reports picked (more than the 10 it takes, or reports of two
tasks), in the real headless Chromium against the real stack. The page used to be replaced by the error alone: the
checkboxes were gone, and the page came back so each time it was opened while the choice lasted (until a reload).
Now the refusal is said under the picker, which stays, and a smaller choice compares."""

from __future__ import annotations

import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, post
from tests.integration.test_lineage import ok, png, upload_file
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)

BOX = {"bbox": [1.0, 1.0, 4.0, 4.0], "category": "cat"}


def test_a_choice_compare_refuses_is_said_and_the_picker_stays(stack, admin, browser):
    account = make_account(stack, admin, "uibenchcmp")
    project = ok(post(stack, "projects/create", account.token, {"workspace_id": account.workspace_id,
                                                                "name": "boxes"}))
    images = ok(post(stack, "datasets/create", account.token, {"project_id": project["id"], "name": "images",
                                                               "kind": "images"}))
    ok(upload_file(stack, account, images["id"], "a.png", png((200, 10, 10)), {"boxes": [BOX]}))
    reports = [ok(post(stack, "benchmarks/evaluate_detections", account.token, {
        "workspace_id": account.workspace_id, "name": f"run {i}", "dataset_id": images["id"],
        "candidates": [{"name": f"model {i}", "detections": {"a.png": [{**BOX, "score": 0.9}]}}]}))
        for i in range(11)]

    sign_in_to(browser, stack, account)
    ui.open_page(browser, "benchmarks")
    for report in reports:  # all eleven: compare takes at most ten
        box = browser.find_element(ui.By.ID, f"report-pick-{report['id']}")
        if not box.is_selected():
            box.click()
    browser.find_element(ui.By.ID, "compare").click()
    ui.wait_text(browser, "#compare-error", "Cannot compare these reports")
    assert "10" in browser.find_element(ui.By.ID, "compare-error").text
    # the picker is still there to change the choice, and the page-wide error is not used
    browser.find_element(ui.By.ID, f"report-pick-{reports[0]['id']}").click()
    assert browser.find_element(ui.By.ID, "error").text == ""
    browser.find_element(ui.By.ID, "compare").click()
    ui.wait_text(browser, "#comparison h3", "Compared: run 1: model 1")
    assert not browser.find_elements(ui.By.ID, "compare-error")


def test_the_newest_four_reports_of_the_newest_reports_task_are_compared_at_first(stack, admin, browser):
    """docs/ui.md: by default the newest four of the newest report's task are compared. benchmarks/list answers the
    oldest first, and the page took its first report for the newest: it compared the oldest four (of the oldest
    report's task), so a user's new report was not in the charts they opened the page for."""
    account = make_account(stack, admin, "uibenchnew")
    project = ok(post(stack, "projects/create", account.token, {"workspace_id": account.workspace_id,
                                                                "name": "boxes"}))
    images = ok(post(stack, "datasets/create", account.token, {"project_id": project["id"], "name": "images",
                                                               "kind": "images"}))
    ok(upload_file(stack, account, images["id"], "a.png", png((200, 10, 10)), {"boxes": [BOX]}))
    reports = [ok(post(stack, "benchmarks/evaluate_detections", account.token, {
        "workspace_id": account.workspace_id, "name": f"run {i}", "dataset_id": images["id"],
        "candidates": [{"name": f"model {i}", "detections": {"a.png": [{**BOX, "score": 0.9}]}}]}))
        for i in range(6)]

    sign_in_to(browser, stack, account)
    ui.open_page(browser, "benchmarks")
    ui.wait_text(browser, "#comparison h3", "Compared: run 2: model 2")
    picked = [r["id"] for r in reports if browser.find_element(ui.By.ID, f"report-pick-{r['id']}").is_selected()]
    assert picked == [r["id"] for r in reports[2:]]
