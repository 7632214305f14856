"""A click through from a lineage card to a resource deleted since the card was drawn (a card outlives what it
names): the page opened with no word of it, nothing focused, as if the click had missed. Now the page says the
resource is not there, in the real headless Chromium against the real stack."""

from __future__ import annotations

import time

import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, post
from tests.integration.test_lineage import ok
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)

VERSION_CARD = "railyardGraph.nodes().filter(n => n.data('card').kind === 'project_version')[0]"


def test_a_card_of_a_deleted_project_opens_its_page_saying_so(stack, admin, browser):
    account = make_account(stack, admin, "uiopendeleted")
    project = ok(post(stack, "projects/create", account.token, {"workspace_id": account.workspace_id,
                                                                "name": "gone-soon"}))
    ok(post(stack, "projects/create_version", account.token, {"project_id": project["id"]}))
    sign_in_to(browser, stack, account)
    deadline = time.monotonic() + 60
    while True:  # the version's card is drawn from its event
        ui.open_page(browser, "lineage")
        if browser.execute_script(f"return !!(window.railyardGraph && {VERSION_CARD})"):
            break
        assert time.monotonic() < deadline, "no project version card after 60 s"
        time.sleep(1)
    card_id = browser.execute_script(f"return {VERSION_CARD}.id()")
    browser.find_element(ui.By.CSS_SELECTOR, f'#card-list button[data-card="{card_id}"]').send_keys(ui.Keys.ENTER)
    ui.wait_text(browser, "#card-panel", "project version")

    # while its card is shown, the project goes (another tab, another member)
    ok(post(stack, "projects/delete", account.token, {"project_id": project["id"]}))
    browser.find_element(ui.By.ID, "card-open").send_keys(ui.Keys.ENTER)
    ui.rendered(browser, "datasets")
    ui.wait_text(browser, "#error", "This project is not here: it may have been deleted.")

    # a project that is there is focused, with no such word
    kept = ok(post(stack, "projects/create", account.token, {"workspace_id": account.workspace_id, "name": "kept"}))
    browser.execute_script("openAt('datasets', arguments[0], 'project')", f"project-{kept['id']}")
    ui.wait_for(browser, "return document.activeElement && document.activeElement.id === arguments[0]",
             f"project-{kept['id']}", what="the kept project focused")
    assert browser.find_element(ui.By.ID, "error").text == ""
