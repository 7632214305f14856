"""The web UI reads pipelines/list and assays/list a page at a time (docs/api-paging.md, docs/ui.md): asked whole,
a workspace's pipelines or a pipeline's assays past the 8 MiB a bus reply carries were the 422 reply_too_large on
the Pipelines, Inference logs, Assays, Monitoring and Review queue pages. In the real headless Chromium of
test_ui.py against the real stack, with the page's page size cut to 2 (LIST_PAGE; the UI's own is 1000, the routes'
most): `apiPages` returns every item once, in the list's order, the same as the whole list, having sent limit and
each page's cursor (`next_cursor` of pipelines/list, the `x-next-cursor` header of assays/list) until none; the
pages show every pipeline and assay as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, post
from tests.integration.test_request_bounds_http import (
    big_pipelines,
    many_versions,
    new_pipeline,
    paged_lists,
    static_assays,
)
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)

# records each pipelines/list and assays/list request the page sends (route, JSON body) and cuts its page size to 2
RECORD = """
window.listed = [];
if (!window.unrecordedFetch) {
  window.unrecordedFetch = window.fetch;
  window.fetch = function (url, init) {
    const route = String(url).replace(/^.*\\/v1\\/api\\//, '');
    if (route === 'pipelines/list' || route === 'assays/list') window.listed.push([route, JSON.parse(init.body)]);
    return window.unrecordedFetch.apply(this, arguments);
  };
}
LIST_PAGE = 2;
"""

READ = """
const done = arguments[arguments.length - 1];
(async () => {
  const pipelines = await apiPages('pipelines/list', {workspace_id: arguments[0]}, 'pipelines');
  const assays = await apiPages('assays/list', {pipeline_id: arguments[1]});
  return {pipelines: showJSON(pipelines), assays: showJSON(assays), sent: window.listed};
})().then(done, (e) => done({error: String(e)}));
"""


def taken(driver) -> list:
    sent = driver.execute_script("const sent = window.listed; window.listed = []; return sent")
    return [(route, body) for route, body in sent]


def test_the_ui_reads_pipelines_and_assays_page_by_page(stack, admin, browser):
    account = make_account(stack, admin, "uipages")
    pipelines, assay_ids, whole_pipelines, whole_assays = paged_lists(stack, account, "paged{}")
    ids = [p["pipeline_pk_id"] for p in pipelines]
    newest = sorted(assay_ids, reverse=True)
    ws = account.workspace_id
    pipeline_pages = [("pipelines/list", {"workspace_id": ws, "limit": 2}),
                      ("pipelines/list", {"workspace_id": ws, "limit": 2, "cursor": str(ids[1])}),
                      ("pipelines/list", {"workspace_id": ws, "limit": 2, "cursor": str(ids[3])})]
    assay_pages = [("assays/list", {"pipeline_id": ids[0], "limit": 2}),
                   ("assays/list", {"pipeline_id": ids[0], "limit": 2, "cursor": str(newest[1])}),
                   ("assays/list", {"pipeline_id": ids[0], "limit": 2, "cursor": str(newest[3])})]

    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD)

    # the function: the whole lists, each item once and in order, read two at a time
    got = browser.execute_async_script(READ, ws, ids[0])
    assert "error" not in got, got
    assert json.loads(got["pipelines"]) == whole_pipelines["pipelines"]
    assert [p["id"] for p in json.loads(got["pipelines"])] == ids  # oldest first
    assert json.loads(got["assays"]) == whole_assays
    assert [a["id"] for a in json.loads(got["assays"])] == newest  # newest first
    assert taken(browser) == pipeline_pages + assay_pages

    # the pages: every pipeline and assay shown, as the whole lists showed them
    ui.open_page(browser, "assays")
    options = ui.Select(browser.find_element(ui.By.ID, "assay-pipeline")).options
    assert [o.get_attribute("value") for o in options] == [str(i) for i in ids], ui.shown(browser)
    text = ui.page_text(browser)
    assert "5 assay(s)" in text and all(f"paged{index}" in text for index in range(5)), text
    assert taken(browser) == pipeline_pages + assay_pages

    ui.open_page(browser, "pipelines")
    text = ui.page_text(browser)
    assert all(p["name"] in text for p in pipelines), text
    assert taken(browser) == pipeline_pages

    ui.open_page(browser, "logs")
    options = ui.Select(browser.find_element(ui.By.ID, "log-pipeline")).options
    assert [o.get_attribute("value") for o in options] == [p["name"] for p in pipelines], ui.shown(browser)
    assert taken(browser) == pipeline_pages

    ui.open_page(browser, "monitoring")
    assert "No deployments in this workspace." in ui.page_text(browser)
    assert taken(browser) == pipeline_pages


# a list whose cursors cycle (a, b, a, ...): the page's fetch answered here, not by the stack
CYCLE = """
const done = arguments[arguments.length - 1];
const answered = {'': 'a', a: 'b', b: 'a'}, asked = [];
const realFetch = window.fetch;
window.fetch = async (url, init) => {
  const cursor = JSON.parse(init.body).cursor || '';
  asked.push(cursor);
  if (asked.length > 10) throw new Error('still paging after 10 requests');
  return new Response(JSON.stringify({items: [asked.length], next_cursor: answered[cursor]}), {status: 200});
};
apiPages('cycle/list', {}, 'items').then(() => 'no error', (e) => String(e))
  .then((error) => { window.fetch = realFetch; done({error, asked}); });
"""


def test_the_ui_stops_at_a_cursor_answered_again(stack, admin, browser):
    """apiPages remembers every cursor a list answered: one answered again, the last or an earlier one (a cycle: a
    deployer bug, a caching proxy), is an error rather than pages asked for ever (the SDK's repeated_cursor)."""
    sign_in_to(browser, stack, make_account(stack, admin, "uicycle"))
    got = browser.execute_async_script(CYCLE)
    assert "answered again" in got["error"] and got["asked"] == ["", "a", "b"], got


def test_the_ui_shows_lists_larger_than_a_reply(stack, admin, browser):
    """The lists of test_request_bounds_http past 8 MiB (each whole list a 422 reply_too_large, which the pages showed
    instead of their content): 50 assays of 10,000 values and 140 more pipelines of a ~62 KiB definition, shown by
    the Assays and Inference logs pages at the UI's own page size, in pages the services cut short at 4 MiB."""
    account = make_account(stack, admin, "uibig")
    first = new_pipeline(stack, account, "biglist")
    static_assays(stack, account, first, np.random.default_rng(17), "static{}")
    names = [first["name"]] + big_pipelines(stack, account)
    for route, body in (("assays/list", {"pipeline_id": first["pipeline_pk_id"]}),
                        ("pipelines/list", {"workspace_id": account.workspace_id})):
        whole = post(stack, route, account.token, body)
        assert whole.status_code == 422 and whole.json()["code"] == "reply_too_large", (route, whole.text[:300])

    sign_in_to(browser, stack, account)
    browser.execute_script(RECORD.replace("LIST_PAGE = 2;", ""))

    ui.open_page(browser, "assays")
    assert not browser.find_element(ui.By.ID, "error").text, ui.shown(browser)  # was the whole list's 422
    options = ui.Select(browser.find_element(ui.By.ID, "assay-pipeline")).options
    assert [o.text for o in options] == names, ui.shown(browser)
    text = ui.page_text(browser)
    assert "50 assay(s)" in text and all(f"static{index}" in text for index in range(50)), ui.shown(browser)
    sent = taken(browser)
    pages = {route: [body for sent_route, body in sent if sent_route == route]
             for route in ("pipelines/list", "assays/list")}
    for route, bodies in pages.items():  # fewer than asked a page (4 MiB), each page's cursor sent as the next
        assert len(bodies) >= 3 and all(body["limit"] == 1000 for body in bodies), (route, bodies)
        assert "cursor" not in bodies[0] and all("cursor" in body for body in bodies[1:]), (route, bodies)

    ui.open_page(browser, "logs")
    options = ui.Select(browser.find_element(ui.By.ID, "log-pipeline")).options
    assert [o.get_attribute("value") for o in options] == names, ui.shown(browser)


async def test_the_ui_says_how_many_versions_a_pipeline_record_leaves_out(stack, admin, browser):
    """A pipeline whose versions pass 4 MiB lists the newest (docs/api-paging.md, versions_cursor): the Pipelines
    page counted only those listed as the pipeline's versions."""
    account = make_account(stack, admin, "uiversions")
    big = new_pipeline(stack, account, definition={"steps": []})
    ids = await many_versions(stack, big["pipeline_pk_id"])
    record = post(stack, "pipelines/get", account.token, {"pipeline_id": big["pipeline_pk_id"]}).json()
    omitted = record["versions_omitted"]
    sign_in_to(browser, stack, account)
    ui.open_page(browser, "pipelines")
    assert f"{len(ids)} version(s); {omitted} older not listed here" in ui.page_text(browser)
