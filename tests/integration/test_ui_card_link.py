"""The lineage page's card link (a card's `url`, which the API keeps relative to the instance: one '/' first, never
'//' or a scheme; set with a card's meta) in the real headless Chromium of test_ui.py against the real stack. A
browser reads '/\\host' (and '/<tab>/host') as '//host', another site, so the API's check let such a link through and
the page made it a link to that site; the page now makes a link only of an address on its own origin and shows any
other as text. The API refuses both since 21567cd (checked here); the page's guard is tested with them set in the
page's card data, as a url from before that check or another server would come."""

from __future__ import annotations

import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, post
from tests.integration.test_ui_list_pages import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)

LINKS = {"job-here": "/jobs/7?tab=a#b", "job-backslash": "/\\evil.example/x", "job-tab": "/\t/evil.example/y"}


def test_a_cards_link_leaves_the_instance_only_as_text(stack, admin, browser):
    account = make_account(stack, admin, "uicardlink")
    for job, url in LINKS.items():
        response = post(stack, "workflow/add_input_job", account.token,
                        {"workspace_id": account.workspace_id, "task_id": "run-links", "id": job,
                         "meta": {"relation_settings": {"url": url, "url_title": f"open {job}"}}})
        if job == "job-here":
            assert response.status_code == 200, response.text[:300]
            continue
        # the API refuses the two tricks since 21567cd: the page's own guard is tested with them set in the page
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", response.text[:300]
        assert "backslash, whitespace or control character" in response.json()["msg"], response.text[:300]
        response = post(stack, "workflow/add_input_job", account.token,
                        {"workspace_id": account.workspace_id, "task_id": "run-links", "id": job,
                         "meta": {"relation_settings": {"url": f"/jobs/{job}", "url_title": f"open {job}"}}})
        assert response.status_code == 200, response.text[:300]
    sign_in_to(browser, stack, account)
    # what the browser makes of each as a link's address: the two tricks leave the instance
    resolved = browser.execute_script(
        "return Object.fromEntries(Object.entries(arguments[0])"
        ".map(([k, u]) => [k, new URL(u, location.origin).host]))", LINKS)
    assert resolved == {"job-here": stack.base_url.split("//")[1], "job-backslash": "evil.example",
                        "job-tab": "evil.example"}, resolved

    ui.open_page(browser, "lineage")
    ui.wait_for(browser, "return window.railyardGraph && railyardGraph.nodes().filter(n => "
                "n.data('card').kind === 'labeling_job').length === 3", what="the three labeling job cards")
    # a card as another server (or one from before the API's check) could send it: the trick in its settings
    browser.execute_script(
        "for (const [ref, url] of Object.entries(arguments[0])) { const card = railyardGraph.nodes()"
        ".filter(n => n.data('card').ref === ref)[0].data('card'); card.settings = {...card.settings, url}; }",
        {job: url for job, url in LINKS.items() if job != "job-here"})
    for job, url in LINKS.items():
        card = browser.execute_script("return railyardGraph.nodes().filter(n => n.data('card').ref === arguments[0])"
                                      "[0].id()", job)
        browser.find_element(ui.By.CSS_SELECTOR, f'#card-list button[data-card="{card}"]').send_keys(ui.Keys.ENTER)
        ui.wait_text(browser, "#card-title", f"Labeling job {job}")
        panel = browser.find_element(ui.By.ID, "card-panel")
        hrefs = [a.get_attribute("href") for a in panel.find_elements(ui.By.TAG_NAME, "a")]
        if job == "job-here":
            assert hrefs == [stack.base_url + url], hrefs
        else:
            assert hrefs == [], (job, hrefs)  # no link at all, to that site or anywhere
            assert "not on this instance" in browser.find_element(ui.By.ID, "card-offsite").text
