"""Assay arithmetic: the seed's worked example to 1e-9, bins, names, aggregations, metrics, bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from services.assay_runner import compute
from shared.errors import InvalidRequest

# the seed's run_interactive example (section 9): baseline and window aggregated_values, then its answer
SEED_BASELINE = [0.0, 0.19889502762430936, 0.19889502762430936, 0.20441988950276244, 0.19889502762430936,
                 0.19889502762430936, 0.0]
SEED_WINDOW = [0.0, 0.17032967032967034, 0.17582417582417584, 0.23626373626373623, 0.1978021978021978,
               0.1978021978021978, 0.02197802197802198]
SEED_SCORES = [0.0, 0.0044288126945783235, 0.00284446741288289, 0.004610114809454446, 6.021116179797982e-06,
               6.021116179797982e-06, 0.02513774491992636]
SEED_SCORE = 0.037033182069201614


def test_the_seeds_worked_example_to_1e_9():
    value, scores, index = compute.score(SEED_BASELINE, SEED_WINDOW, "PSI")
    assert index is None
    assert len(scores) == 7 and all(abs(a - b) < 1e-9 for a, b in zip(scores, SEED_SCORES, strict=True))
    assert abs(value - SEED_SCORE) < 1e-9
    assert compute.status(value, 0.0, 0.1) == "Warning"
    # the same baseline against itself: the seed's BaselineRun shows score 0 and zero scores
    same, zeros, _ = compute.score(SEED_BASELINE, SEED_BASELINE, "PSI")
    assert same == 0.0 and zeros == [0.0] * 7


def test_status_thresholds():
    assert compute.status(0.2, 0.05, 0.1) == "Alert"
    assert compute.status(0.07, 0.05, 0.1) == "Warning"
    assert compute.status(0.01, 0.05, 0.1) == "Ok"
    assert compute.status(0.07, None, 0.1) == "Ok"


def test_maxdiff_and_sumdiff_with_weights():
    base, win = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    value, scores, index = compute.score(base, win, "Maximum Difference of Bins")
    assert scores == pytest.approx([0.3, 0.0, 0.3]) and value == pytest.approx(0.3) and index == 0
    value, _, index = compute.score(base, win, "SumDiff")
    assert value == pytest.approx(0.6) and index is None
    value, scores, index = compute.score(base, win, "MaxDiff", weights=[1.0, 1.0, 2.0])
    assert value == pytest.approx(0.6) and index == 2 and scores == pytest.approx([0.3, 0.0, 0.3])
    assert compute.score(base, win, "SumDiff", weights=[0.0, 0.0, 1.0])[0] == pytest.approx(0.3)


def test_quantile_bins_names_and_outliers():
    values = np.arange(100, dtype=np.float64)
    summarizer = {"bin_mode": "Quantile", "num_bins": 4, "aggregation": "Density", "add_outlier_edges": True}
    bounds = compute.boundaries(values, summarizer)
    assert bounds.tolist() == pytest.approx([0.0, 24.75, 49.5, 74.25, 99.0])
    summary = compute.summarize(values, bounds, summarizer, True, None, None)
    assert summary["edge_names"] == ["left_outlier", "q_25", "q_50", "q_75", "q_100", "right_outlier"]
    assert summary["edges"][-1] is None and summary["edges"][0] == 0.0
    assert summary["aggregated_values"] == pytest.approx([0, 0.25, 0.25, 0.25, 0.25, 0])
    assert summary["count"] == 100 and summary["median"] == 49.5 and summary["std"] == pytest.approx(np.std(values))
    window = np.array([-5.0, 10.0, 99.0, 150.0])  # one below, one in the first bin, the max, one above
    window_summary = compute.summarize(window, bounds, summarizer, False, None, None)
    assert window_summary["aggregated_values"] == pytest.approx([0.25, 0.25, 0, 0, 0.25, 0.25])
    assert window_summary["edge_names"][1:5] == ["e_2.48e1", "e_4.95e1", "e_7.42e1", "e_9.90e1"]


def test_equal_and_provided_edges_without_outliers_and_cumulative():
    values = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0])
    equal = {"bin_mode": "Equal", "num_bins": 2, "aggregation": "Cumulative", "add_outlier_edges": False}
    bounds = compute.boundaries(values, equal)
    assert bounds.tolist() == [0.0, 5.0, 10.0]
    summary = compute.summarize(values, bounds, equal, False, None, None)
    assert summary["edges"] == [5.0, 10.0] and summary["edge_names"] == ["e_5.00e0", "e_1.00e1"]
    assert summary["aggregated_values"] == pytest.approx([0.5, 1.0])
    provided = {"provided_edges": [0.0, 2.0, 100.0], "aggregation": "Density", "add_outlier_edges": False}
    outside = compute.summarize(np.array([-1.0, 1.0, 3.0, 500.0]), compute.boundaries(values, provided), provided,
                                False, None, None)
    assert outside["aggregated_values"] == pytest.approx([0.5, 0.5])  # outliers counted in the end bins


def test_edges_aggregation_compares_the_windows_own_edges():
    summarizer = {"bin_mode": "Equal", "num_bins": 2, "aggregation": "Edges", "add_outlier_edges": True,
                  "metric": "MaxDiff"}
    base = np.array([0.0, 10.0])
    bounds = compute.boundaries(base, summarizer)
    window = compute.summarize(np.array([2.0, 14.0]), bounds, summarizer, False, None, None)
    assert window["aggregated_values"] == [2.0, 8.0, 14.0, None]
    baseline = compute.summarize(base, bounds, summarizer, False, None, None)
    value, scores, index = compute.score(baseline["aggregated_values"], window["aggregated_values"], "MaxDiff")
    assert scores == [2.0, 3.0, 4.0, 0.0] and value == 4.0 and index == 2


def test_iopath_and_durations():
    assert compute.parse_iopath("output dense_2 0") == ("out.dense_2", 0)
    assert compute.parse_iopath("input tensor 3") == ("in.tensor", 3)
    assert compute.parse_iopath("output variable") == ("out.variable", 0)
    for bad in ("", "output", "sideways x 0", "input tensor x", "input tensor -1"):
        with pytest.raises(InvalidRequest):
            compute.parse_iopath(bad)
    assert compute.parse_duration("24 hours") == 86400
    assert compute.parse_duration("1 minute") == 60 and compute.parse_duration("2 seconds") == 2
    for bad in ("soon", "5 fortnights", "0 hours", ""):
        with pytest.raises(InvalidRequest):
            compute.parse_duration(bad)
    assert compute.parse_duration("3650 days") == 3650 * 86400
    # longer overflowed the window plan's date arithmetic: a 500 (found by hand after `make fuzz-api`)
    for too_long in ("3651 days", "99999999999 days", "9" * 400 + " weeks"):
        with pytest.raises(InvalidRequest, match=r"^window.width: the duration .* is too long: at most 3650 days"):
            compute.parse_duration(too_long, "window.width")


@pytest.mark.parametrize(("summarizer", "words"), [
    ({"num_bins": 1}, "num_bins"),
    ({"metric": "KL"}, "unknown metric"),
    ({"type": "Multivariate"}, "summarizer type"),
    ({"bin_mode": "Fancy"}, "bin_mode"),
    ({"aggregation": "Sum"}, "aggregation"),
    ({"aggregation": "Edges", "metric": "PSI"}, "PSI"),
    ({"provided_edges": [3.0, 1.0]}, "provided_edges"),
    ({"num_bins": 5, "bin_weights": [1.0, 2.0]}, "bin_weights"),
])
def test_bad_summarizers(summarizer, words):
    with pytest.raises(InvalidRequest, match=words):
        compute.check_summarizer({"type": "UnivariateContinuous", "metric": "PSI", **summarizer})
