"""The always-valid sequential test (services/monitoring/sequential.py): decisions, evidence, and its error rates
under optional stopping, checked by simulation (seeded numpy, every stream looked at after every pair)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import comb

from services.monitoring.sequential import (
    Decision,
    PairCounts,
    decide_arrays,
    evaluate,
    log_mixture_ratio,
)


def simulate(rng: np.random.Generator, streams: int, steps: int, champion: float, challenger: float,
             overlap: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (challenger-only wins, discordant pairs, pairs) after each step of `streams` streams. Each pair:
    both right with probability overlap * the lower accuracy, else each model right on its own margin."""
    p11 = overlap * min(champion, challenger)
    p10, p01 = champion - p11, challenger - p11
    draws = rng.random((streams, steps))
    only_champion = draws < p10
    only_challenger = (draws >= p10) & (draws < p10 + p01)
    wins = np.cumsum(only_challenger, axis=1)
    discordant = np.cumsum(only_champion | only_challenger, axis=1)
    pairs = np.broadcast_to(np.arange(1, steps + 1), (streams, steps))
    return wins, discordant, pairs


def first_decisions(wins, discordant, pairs, alpha, min_sample) -> np.ndarray:
    """The first non-CONTINUE decision of each stream (0: none within the horizon)."""
    decisions = decide_arrays(wins, discordant, pairs, alpha, min_sample)
    decided = decisions != 0
    first = np.argmax(decided, axis=1)
    return np.where(decided.any(axis=1), decisions[np.arange(len(decisions)), first], 0)


def test_the_statistic_matches_the_closed_form_of_the_uniform_mixture():
    # Beta(1, 1) mixture against p0 = 1/2: M = 2^D / ((D + 1) * C(D, W))
    for wins, discordant in [(0, 0), (3, 5), (10, 12), (0, 9)]:
        expected = discordant * math.log(2) - math.log((discordant + 1) * comb(discordant, wins, exact=True))
        assert float(log_mixture_ratio(wins, discordant)) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_a_clearly_better_challenger_is_promoted_and_a_worse_one_rolled_back():
    better = evaluate(PairCounts(n11=40, n10=2, n01=18, n00=5), alpha=0.05, min_sample=30)
    assert better.decision is Decision.PROMOTE
    assert better.p_lower > 0.5 and better.log_evidence >= better.threshold
    assert better.challenger_accuracy > better.champion_accuracy
    worse = evaluate(PairCounts(n11=40, n10=18, n01=2, n00=5), alpha=0.05, min_sample=30)
    assert worse.decision is Decision.ROLL_BACK and worse.p_upper < 0.5


def test_no_decision_below_the_minimum_sample_and_none_on_equal_evidence():
    strong = PairCounts(n01=20)
    assert evaluate(strong, min_sample=30).decision is Decision.CONTINUE
    assert evaluate(strong, min_sample=20).decision is Decision.PROMOTE
    tied = evaluate(PairCounts(n11=50, n10=10, n01=10, n00=5), min_sample=30)
    assert tied.decision is Decision.CONTINUE and tied.p_lower < 0.5 < tied.p_upper
    empty = evaluate(PairCounts(), min_sample=0)
    assert empty.decision is Decision.CONTINUE and (empty.p_lower, empty.p_upper) == (0.0, 1.0)
    assert empty.champion_accuracy is None


def test_the_interval_is_the_set_the_statistic_does_not_reject():
    counts = PairCounts(n11=30, n10=6, n01=14)
    evidence = evaluate(counts, alpha=0.1, min_sample=0)
    for p in (evidence.p_lower, evidence.p_upper):
        assert float(log_mixture_ratio(14, 20, p)) == pytest.approx(math.log(10), abs=1e-6)
    assert evidence.p_lower < 14 / 20 < evidence.p_upper


def test_bad_alpha_is_refused():
    with pytest.raises(ValueError):
        evaluate(PairCounts(), alpha=0)


def test_type_one_error_under_optional_stopping_is_at_most_alpha():
    """Equally accurate models, 400 streams of 600 pairs, looked at after every pair from the first one (no
    minimum sample: the hardest case): the share of streams that ever decide anything stays below alpha."""
    rng = np.random.default_rng(20261201)
    alpha = 0.1
    decided = first_decisions(*simulate(rng, 400, 600, champion=0.8, challenger=0.8, overlap=0.7), alpha, 0)
    rate = np.mean(decided != 0)
    assert rate <= alpha + 0.03, rate  # slack: 400 streams give a standard error of 0.015 at alpha


def test_a_better_challenger_is_rarely_rolled_back_and_mostly_promoted():
    rng = np.random.default_rng(7)
    alpha = 0.05
    decided = first_decisions(*simulate(rng, 300, 400, champion=0.75, challenger=0.85), alpha, 30)
    assert np.mean(decided == -1) <= alpha + 0.02
    assert np.mean(decided == 1) >= 0.8
    decided = first_decisions(*simulate(rng, 300, 400, champion=0.85, challenger=0.75), alpha, 30)
    assert np.mean(decided == 1) <= alpha + 0.02
    assert np.mean(decided == -1) >= 0.8


def test_equal_models_mostly_continue():
    rng = np.random.default_rng(11)
    decisions = decide_arrays(*simulate(rng, 300, 200, champion=0.9, challenger=0.9), 0.05, 30)
    assert np.mean(decisions[:, -1] == 0) >= 0.95


def test_evidence_round_trips_through_its_dict():
    evidence = evaluate(PairCounts(n11=10, n01=20), min_sample=5)
    stored = evidence.as_dict()
    assert stored["decision"] == "promote"
    fields = {k: v for k, v in stored.items() if k != "decision"}
    again = type(evidence)(**fields, decision=Decision(stored["decision"]))
    assert again == evidence
