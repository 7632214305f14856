"""The always-valid sequential test that decides whether a shadow challenger replaces its champion.

Data: one pair per reviewed prediction that both models answered, (champion correct?, challenger correct?). Only
the *discordant* pairs say anything about which model is more accurate: with n01 pairs where only the challenger
was right and n10 where only the champion was, the difference of accuracies is P(01) - P(10), and it is positive
exactly when p = P(01) / (P(01) + P(10)) > 1/2 (the sequential form of McNemar's test).

The test is Robbins' mixture sequential probability ratio test on the discordant pairs, read as a confidence
sequence for p (Robbins 1970, "Statistical methods related to the law of the iterated logarithm"; Howard, Ramdas,
McAuliffe and Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2)).
For any p0, the mixture likelihood ratio

    M_n(p0) = integral q^W (1-q)^(D-W) Beta(q; a, b) dq / (p0^W (1-p0)^(D-W))
            = B(a+W, b+D-W) / (B(a, b) p0^W (1-p0)^(D-W))

(W challenger-only wins among D discordant pairs) is a nonnegative martingale with mean 1 when p = p0, so by
Ville's inequality P(there is an n with M_n(p0) >= 1/alpha) <= alpha. The set {p0 : M_n(p0) < 1/alpha} is therefore
a confidence sequence: it holds the true p at every n at once, with probability at least 1 - alpha, whatever rule
decides when to look or stop. It is an interval around W/D (log M_n is convex in p0's log-odds).

Decision after every review: PROMOTE when the interval lies entirely above 1/2, ROLL_BACK when entirely below,
CONTINUE otherwise or while fewer than `min_sample` pairs have been seen. Guarantees (time-uniform, under optional
stopping): with equally accurate models, the probability of ever deciding anything is at most alpha; with a better
challenger the probability of ever rolling it back is at most alpha, and with a worse one the probability of ever
promoting it is at most alpha. Pairs are assumed independent and identically distributed given the two models
(reviews of a stationary stream); concordant pairs leave the statistic unchanged, so they cannot inflate the error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared.lean_imports import lazy_module

if TYPE_CHECKING:
    import numpy as np
else:
    # imported by the first decision computed (~12 MiB of RSS the idle monitoring service does without)
    np = lazy_module("numpy")

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SAMPLE = 30
PRIOR = (1.0, 1.0)  # Beta(1, 1): the uniform mixture over p; every choice keeps the guarantee, it only moves power


class Decision(StrEnum):
    """What the test says after a review."""

    PROMOTE = "promote"
    ROLL_BACK = "roll_back"
    CONTINUE = "continue"


@dataclass(frozen=True)
class PairCounts:
    """Counts of paired outcomes: n11 both right, n10 champion only, n01 challenger only, n00 neither."""

    n11: int = 0
    n10: int = 0
    n01: int = 0
    n00: int = 0

    @property
    def pairs(self) -> int:
        return self.n11 + self.n10 + self.n01 + self.n00

    @classmethod
    def from_pairs(cls, pairs: list[tuple[bool, bool]]) -> PairCounts:
        """Count (champion correct, challenger correct) pairs."""
        n = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
        for champion, challenger in pairs:
            n[(bool(champion), bool(challenger))] += 1
        return cls(n11=n[(True, True)], n10=n[(True, False)], n01=n[(False, True)], n00=n[(False, False)])


@dataclass(frozen=True)
class Evidence:
    """The test's state after the pairs seen so far: what a decision event and retrieve_information show."""

    decision: Decision
    pairs: int
    n11: int
    n10: int
    n01: int
    n00: int
    champion_accuracy: float | None
    challenger_accuracy: float | None
    log_evidence: float  # log M_n(1/2): the mixture likelihood ratio against "equally accurate"
    threshold: float  # log(1/alpha): the boundary log_evidence must reach
    p_lower: float  # confidence sequence for P(challenger wins | the models disagree)
    p_upper: float
    alpha: float
    min_sample: int
    # what a pair compares: "top1" (classification: the top class is right), "f1_iou50" (detection and
    # segmentation: which model has the higher per-image F1 at IoU 0.5, challenge_pairs.py) or "mixed"; for
    # detection the accuracies are the shares of images entirely right and the scores the mean per-image F1
    metric: str = "top1"
    champion_score: float | None = None
    challenger_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"decision": self.decision.value}


def log_mixture_ratio(wins: Any, discordant: Any, p0: float = 0.5, prior: tuple[float, float] = PRIOR) -> Any:
    """log M_n(p0) for arrays (or scalars) of challenger-only wins and discordant-pair counts."""
    from scipy.special import betaln  # here, not at import: the service loads scipy (~50 MiB) only once it tests

    a, b = prior
    wins = np.asarray(wins, dtype=float)
    discordant = np.asarray(discordant, dtype=float)
    losses = discordant - wins
    return (betaln(a + wins, b + losses) - betaln(a, b)
            - wins * math.log(p0) - losses * math.log1p(-p0))


def decide_arrays(wins: Any, discordant: Any, pairs: Any, alpha: float = DEFAULT_ALPHA,
                  min_sample: int = DEFAULT_MIN_SAMPLE, prior: tuple[float, float] = PRIOR) -> np.ndarray:
    """Vectorized decision: +1 promote, -1 roll back, 0 continue, for every element of the count arrays."""
    wins = np.asarray(wins, dtype=float)
    discordant = np.asarray(discordant, dtype=float)
    evident = log_mixture_ratio(wins, discordant, 0.5, prior) >= math.log(1 / alpha)
    reject = evident & (np.asarray(pairs) >= min_sample)
    direction = np.sign(2 * wins - discordant)
    return np.where(reject, direction, 0).astype(int)


def _bound(wins: int, discordant: int, alpha: float, prior: tuple[float, float], upper: bool) -> float:
    """One end of {p : log M_n(p) < log(1/alpha)}, found by bracketing from the estimate outwards."""
    from scipy.optimize import brentq

    threshold = math.log(1 / alpha)
    # the maximum-likelihood estimate: M_n there is at most 1 < 1/alpha, so it is inside the interval
    estimate = min(max(wins / discordant if discordant else 0.5, 1e-12), 1 - 1e-12)
    end = 1 - 1e-12 if upper else 1e-12

    def excess(p: float) -> float:
        return float(log_mixture_ratio(wins, discordant, p, prior)) - threshold

    if excess(end) < 0 or end == estimate:
        return 1.0 if upper else 0.0
    return float(brentq(excess, estimate, end) if upper else brentq(excess, end, estimate))


def evaluate(counts: PairCounts, alpha: float = DEFAULT_ALPHA, min_sample: int = DEFAULT_MIN_SAMPLE,
             prior: tuple[float, float] = PRIOR) -> Evidence:
    """The decision and its evidence after the pairs counted so far."""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    wins, discordant = counts.n01, counts.n01 + counts.n10
    log_m = float(log_mixture_ratio(wins, discordant, 0.5, prior))
    lower = _bound(wins, discordant, alpha, prior, upper=False)
    upper = _bound(wins, discordant, alpha, prior, upper=True)
    decision = Decision.CONTINUE
    if counts.pairs >= min_sample and log_m >= math.log(1 / alpha):
        decision = Decision.PROMOTE if wins * 2 > discordant else Decision.ROLL_BACK
    n = counts.pairs
    return Evidence(
        decision=decision, pairs=n, n11=counts.n11, n10=counts.n10, n01=counts.n01, n00=counts.n00,
        champion_accuracy=(counts.n11 + counts.n10) / n if n else None,
        challenger_accuracy=(counts.n11 + counts.n01) / n if n else None,
        log_evidence=log_m, threshold=math.log(1 / alpha), p_lower=lower, p_upper=upper, alpha=alpha,
        min_sample=min_sample)
