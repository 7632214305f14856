"""An assay's Training baseline: the baseline summary built from a training reference's deciles."""

import numpy as np
import pytest

from services.assay_runner import compute
from services.assay_runner.handlers import plan, training_baseline
from services.monitoring.stats import summarize_feature
from shared.errors import InvalidRequest
from shared.messages.assays import AssayConfig

SUMMARIZER = {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density", "metric": "PSI",
              "num_bins": 5, "add_outlier_edges": True}


def test_quantile_bins_are_the_reference_quantiles_with_equal_density():
    values = np.random.default_rng(3).normal(100.0, 15.0, 200)
    reference = summarize_feature(values.tolist())
    summary, bounds = training_baseline(reference, SUMMARIZER)
    np.testing.assert_allclose(bounds, np.quantile(values, np.linspace(0, 1, 6)))
    assert summary["aggregated_values"] == pytest.approx([0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.0])
    assert summary["edge_names"] == ["left_outlier", "q_20", "q_40", "q_60", "q_80", "q_100", "right_outlier"]
    assert summary["count"] == 200 and summary["mean"] == pytest.approx(values.mean())
    # a window of the same distribution scores near 0, a shifted one far above
    window = compute.summarize(values, bounds, SUMMARIZER, False, None, None)
    assert compute.score(summary["aggregated_values"], window["aggregated_values"], "PSI")[0] < 0.05
    shifted = compute.summarize(values + 20, bounds, SUMMARIZER, False, None, None)
    assert compute.score(summary["aggregated_values"], shifted["aggregated_values"], "PSI")[0] > 0.5


def test_equal_bins_split_the_reference_range():
    reference = summarize_feature([float(v) for v in range(101)])
    summary, bounds = training_baseline(reference, {**SUMMARIZER, "bin_mode": "Equal", "num_bins": 4})
    np.testing.assert_allclose(bounds, [0, 25, 50, 75, 100])
    assert summary["aggregated_values"] == pytest.approx([0.0, 0.25, 0.25, 0.25, 0.25, 0.0])


def test_training_baseline_needs_an_input_feature_iopath():
    body = {"name": "a", "pipeline_id": 1, "pipeline_name": "p", "workspace_id": 1, "iopath": "output dense 0",
            "baseline": {"Training": {"deployment": "d-1"}}, "window": {"pipeline": "p", "width": "1 hour"},
            "summarizer": SUMMARIZER, "alert_threshold": 0.25}
    with pytest.raises(InvalidRequest, match="image feature"):
        plan(AssayConfig.model_validate(body))
    assert plan(AssayConfig.model_validate({**body, "iopath": "input brightness_mean"})).column == "in.brightness_mean"
    with pytest.raises(ValueError, match="exactly one"):
        AssayConfig.model_validate({**body, "baseline": {"Training": {"deployment": "d"}, "Static": {"values": [1]}}})


def test_the_sdk_names_the_training_reference_baseline():
    from types import SimpleNamespace

    from railyard_client.assays import assay_config

    pipeline = SimpleNamespace(name="fb-digits", id=7, workspace_id=3)
    body = assay_config("b", pipeline, "input brightness_mean", start="2026-01-01T00:00:00Z",
                        training_reference=SimpleNamespace(name="fb-digits-12"))
    assert body["baseline"] == {"Training": {"deployment": "fb-digits-12"}}
    assert plan(AssayConfig.model_validate(body)).column == "in.brightness_mean"
    assert assay_config("b", pipeline, "input red_mean", training_reference="d-1")["baseline"]["Training"] == {
        "deployment": "d-1"}
