"""The Benchmarks page shows COCO's -1 ("nothing of that kind to score": map_large with no large ground-truth box) as
absent: no bar, "n/a" in the tables and no difference from it. A QA walk found -1.0 bars below the axis, and the
difference from a real value read as a number. In the real headless Chromium of test_ui.py against the real stack."""

from __future__ import annotations

import pytest

from tests.integration import test_ui as ui
from tests.integration.conftest import make_account, post
from tests.integration.test_lineage import ok, png, upload_file
from tests.integration.ui_browser import sign_in_to

pytestmark = pytest.mark.integration

browser = ui.browser  # the module's own headless Chromium (skipped as test_ui.py is when there is none)

SMALL = {"bbox": [1.0, 1.0, 4.0, 4.0], "category": "cat"}  # 3x3 pixels: COCO's small (< 32x32); none medium or large

# the quality chart's values per candidate for a metric, as Chart.js holds them (null: no bar)
BARS = ("const chart = Chart.getChart('bench-quality'); const at = chart.data.labels.indexOf(arguments[0]);"
        "return chart.data.datasets.map(d => d.data[at])")
# the cells of a metric's row in the comparison's tables (the chart's numbers, then every metric with its diffs)
CELLS = ("return [...document.querySelectorAll('#comparison tr')].filter(r => r.cells[0].textContent === arguments[0])"
         ".map(r => [...r.cells].slice(1).map(c => c.textContent))")


def test_cocos_minus_one_is_shown_absent_not_as_a_bar(stack, admin, browser):
    account = make_account(stack, admin, "uibenchna")
    project = ok(post(stack, "projects/create", account.token, {"workspace_id": account.workspace_id,
                                                                "name": "boxes"}))
    images = ok(post(stack, "datasets/create", account.token, {"project_id": project["id"], "name": "images",
                                                               "kind": "images"}))
    ok(upload_file(stack, account, images["id"], "a.png", png((200, 10, 10)), {"boxes": [SMALL]}))
    report = ok(post(stack, "benchmarks/evaluate_detections", account.token, {
        "workspace_id": account.workspace_id, "name": "sizes", "dataset_id": images["id"],
        "candidates": [{"name": "exact", "detections": {"a.png": [{**SMALL, "score": 0.9}]}},
                       {"name": "blind", "detections": {"a.png": []}}]}))
    compared = ok(post(stack, "benchmarks/compare", account.token, {"report_ids": [report["id"]]}))
    by_metric = {m["metric"]: m["values"] for m in compared["metrics"]}
    assert by_metric["map_large"] == [-1.0, -1.0] and by_metric["map_small"][0] > 0, by_metric  # the API's -1 stays

    sign_in_to(browser, stack, account)
    ui.open_page(browser, "benchmarks")
    ui.wait_text(browser, "#comparison h3", "Compared: sizes: exact")
    ui.wait_for(browser, "return !!(window.Chart && Chart.getChart('bench-quality'))", what="the quality chart")
    assert browser.execute_script(BARS, "map_large") == [None, None]
    assert browser.execute_script(BARS, "ar_medium") == [None, None]
    assert browser.execute_script(BARS, "map_small") == by_metric["map_small"]  # a real 0 or more is drawn
    # the chart's table: n/a, n/a; every metric with the difference of the second candidate from the first
    assert browser.execute_script(CELLS, "map_large") == [["n/a", "n/a"], ["n/a", "n/a", "n/a"]]
    [_, (exact, blind, diff)] = browser.execute_script(CELLS, "map_small")
    assert "n/a" not in (exact, blind, diff) and float(diff) == pytest.approx(by_metric["map_small"][1]
                                                                              - by_metric["map_small"][0], abs=1e-3)
