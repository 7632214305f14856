"""Assay arithmetic (numpy only, no I/O): bins, summaries, scores and status.

Bins. `num_bins` regular bins between boundaries b0 < ... < bn: Quantile takes the baseline's quantiles at
0, 1/n, ..., 1 (numpy's linear interpolation), Equal splits [min, max] of the baseline evenly, provided edges
are used as given. A value v is in bin k when b(k-1) <= v < b(k); the last regular bin also holds v == bn.
With `add_outlier_edges`, v < b0 is `left_outlier` and v > bn `right_outlier`; without, such values count in
the first or last bin. `edges` lists each bin's right edge ([b0, b1, ..., bn, None] with outlier bins, None
standing for +infinity; [b1, ..., bn] without), as the seed's summaries show.

Scores, per bin then summed: PSI (w - b) * ln(w / b), where an empty bin counts as 0.005 on either side (this
reproduces the seed's worked example exactly); MaxDiff |w - b| with the largest as the score (and its bin as
`bin_index`); SumDiff |w - b| summed. `bin_weights`, one per bin, multiply the per-bin scores before they are
combined; `scores` are reported unweighted.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidRequest
from shared.lean_imports import lazy_module

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # imported by the first assay that runs, not at start (~10 MiB of RSS idle)

EMPTY_BIN = 0.005
METRICS = {"psi": "PSI", "maxdiff": "MaxDiff", "maximumdifferenceofbins": "MaxDiff", "sumdiff": "SumDiff",
           "sumofthedifferenceofbins": "SumDiff"}
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}


def metric_name(metric: str) -> str:
    key = re.sub(r"[^a-z]", "", metric.lower())
    if key not in METRICS:
        raise InvalidRequest(f"unknown metric {metric!r}: use PSI, MaxDiff (Maximum Difference of Bins) or SumDiff "
                             "(Sum of the Difference of Bins)")
    return METRICS[key]


MAX_DURATION_DAYS = 3650
"""A window's width or interval is at most this long (about ten years): a longer one overflowed the date
arithmetic of the window plan (`99999999999 days`: a 500, found by hand after `make fuzz-api`)."""


def parse_duration(text: str, what: str = "duration") -> float:
    """'24 hours', '1 minute', '30 seconds', '2 days' -> seconds; `what` names the field in the 400."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+?)s?\s*", text or "")
    if not match or match.group(2).lower() not in UNITS:
        raise InvalidRequest(f"{what}: cannot read the duration {text!r}: write e.g. '24 hours', '10 minutes', "
                             "'30 seconds'")
    seconds = float(match.group(1)) * UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise InvalidRequest(f"{what}: the duration {text!r} must be positive")
    if seconds > MAX_DURATION_DAYS * 86400:
        raise InvalidRequest(f"{what}: the duration {text!r} is too long: at most {MAX_DURATION_DAYS} days")
    return seconds


def parse_iopath(iopath: str) -> tuple[str, int]:
    """'output dense_2 0' -> ('out.dense_2', 0); 'input tensor 3' -> ('in.tensor', 3)."""
    parts = (iopath or "").split()
    if len(parts) not in (2, 3) or parts[0].lower() not in ("input", "output", "in", "out"):
        raise InvalidRequest(f"iopath {iopath!r} must read '<input|output> <field> <index>', e.g. 'output dense_1 0'")
    side = "in" if parts[0].lower() in ("input", "in") else "out"
    try:
        index = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise InvalidRequest(f"iopath {iopath!r}: the index must be a whole number") from None
    if index < 0:
        raise InvalidRequest(f"iopath {iopath!r}: the index must not be negative")
    return f"{side}.{parts[1]}", index


def check_summarizer(summarizer: dict[str, Any]) -> None:
    if summarizer.get("type", "UnivariateContinuous") != "UnivariateContinuous":
        raise InvalidRequest(f"unknown summarizer type {summarizer.get('type')!r}: use UnivariateContinuous")
    metric_name(summarizer.get("metric", "PSI"))
    if summarizer.get("aggregation", "Density") not in ("Density", "Cumulative", "Edges"):
        raise InvalidRequest("aggregation must be Density, Cumulative or Edges")
    if summarizer.get("aggregation") == "Edges" and metric_name(summarizer.get("metric", "PSI")) == "PSI":
        raise InvalidRequest("PSI compares bin densities: use Density aggregation, or MaxDiff/SumDiff with Edges")
    provided = summarizer.get("provided_edges")
    if provided is not None:
        if len(provided) < 2 or any(b <= a for a, b in zip(provided, provided[1:], strict=False)):
            raise InvalidRequest("provided_edges needs at least two values in increasing order")
    else:
        if summarizer.get("bin_mode", "Quantile") not in ("Quantile", "Equal"):
            raise InvalidRequest("bin_mode must be Quantile or Equal (or give provided_edges)")
        if int(summarizer.get("num_bins", 5)) < 2:
            raise InvalidRequest("num_bins must be at least 2")
    weights = summarizer.get("bin_weights")
    if weights is not None and len(weights) != bin_count(summarizer):
        raise InvalidRequest(f"bin_weights needs one weight per bin ({bin_count(summarizer)}, outlier bins included)")


def bin_count(summarizer: dict[str, Any]) -> int:
    provided = summarizer.get("provided_edges")
    regular = len(provided) - 1 if provided is not None else int(summarizer.get("num_bins", 5))
    return regular + (2 if summarizer.get("add_outlier_edges", True) else 0)


def boundaries(values: np.ndarray, summarizer: dict[str, Any]) -> np.ndarray:
    """b0 .. bn for the values under the summarizer's bin mode."""
    provided = summarizer.get("provided_edges")
    if provided is not None:
        return np.asarray(provided, dtype=np.float64)
    bins = int(summarizer.get("num_bins", 5))
    if summarizer.get("bin_mode", "Quantile") == "Equal":
        return np.linspace(float(values.min()), float(values.max()), bins + 1)
    return np.quantile(values, np.linspace(0.0, 1.0, bins + 1))


def _edge_name(value: float) -> str:
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"e_{mantissa}e{int(exponent)}"


def edges_and_names(bounds: np.ndarray, summarizer: dict[str, Any], quantile_names: bool
                    ) -> tuple[list[float | None], list[str]]:
    bins = len(bounds) - 1
    if quantile_names:
        inner = [f"q_{round(100 * (k + 1) / bins)}" for k in range(bins)]
    else:
        inner = [_edge_name(float(b)) for b in bounds[1:]]
    if summarizer.get("add_outlier_edges", True):
        return [float(b) for b in bounds] + [None], ["left_outlier", *inner, "right_outlier"]
    return [float(b) for b in bounds[1:]], inner


def counts(values: np.ndarray, bounds: np.ndarray, outliers: bool) -> np.ndarray:
    bins = len(bounds) - 1
    inner = np.clip(np.searchsorted(bounds, values, side="right") - 1, 0, bins - 1)
    regular = np.bincount(inner, minlength=bins)
    if not outliers:
        return regular.astype(np.int64)
    left = int(np.count_nonzero(values < bounds[0]))
    right = int(np.count_nonzero(values > bounds[-1]))
    regular[0] -= left  # clipped into the first bin above: they belong to the outlier bins instead
    regular[-1] -= right
    return np.concatenate([[left], regular, [right]]).astype(np.int64)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def summarize(values: np.ndarray, bounds: np.ndarray, summarizer: dict[str, Any], quantile_names: bool,
              start: datetime | None, end: datetime | None) -> dict[str, Any]:
    """The seed's baseline_summary / window_summary for these values binned by `bounds`."""
    aggregation = summarizer.get("aggregation", "Density")
    outliers = bool(summarizer.get("add_outlier_edges", True))
    edges, names = edges_and_names(bounds, summarizer, quantile_names)
    if aggregation == "Edges":
        own, _ = edges_and_names(boundaries(values, summarizer), summarizer, False)
        aggregated: list[float | None] = own
    else:
        density = counts(values, bounds, outliers) / len(values)
        aggregated = [float(v) for v in (np.cumsum(density) if aggregation == "Cumulative" else density)]
    return {"count": int(len(values)), "min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean()), "median": float(np.median(values)), "std": float(values.std()),
            "edges": edges, "edge_names": names, "aggregated_values": aggregated, "aggregation": aggregation,
            "start": _iso(start), "end": _iso(end)}


def score(baseline: list[float | None], window: list[float | None], metric: str,
          weights: list[float] | None = None) -> tuple[float, list[float], int | None]:
    """(score, per-bin scores, bin_index for MaxDiff)."""
    name = metric_name(metric)
    per_bin: list[float] = []
    for b, w in zip(baseline, window, strict=True):
        if b is None or w is None:
            per_bin.append(0.0)
        elif name == "PSI":
            b, w = (b or EMPTY_BIN), (w or EMPTY_BIN)
            per_bin.append((w - b) * math.log(w / b))
        else:
            per_bin.append(abs(w - b))
    weighted = [s * wt for s, wt in zip(per_bin, weights, strict=True)] if weights else per_bin
    if name == "MaxDiff":
        index = int(np.argmax(weighted))
        return float(weighted[index]), per_bin, index
    return float(math.fsum(weighted)), per_bin, None


def status(value: float, warning: float | None, alert: float) -> str:
    """Alert above the alert threshold, Warning above the warning threshold, Ok otherwise."""
    if value > alert:
        return "Alert"
    if warning is not None and value > warning:
        return "Warning"
    return "Ok"
