"""A pipeline definition's A/B split weights (services/deployer/handlers.py: _check_definition)."""

from __future__ import annotations

import pytest

from services.deployer.handlers import _check_definition
from shared.errors import InvalidRequest


def _split(weights) -> dict:
    return {"steps": [{"RandomSplit": {"weights": weights, "models": [{"name": "a"}, {"name": "b"}]}}]}


@pytest.mark.parametrize("weights", [[1, 1], [0, 3], [0.25, 1e300]])
def test_finite_weights_are_taken(weights):
    _check_definition(_split(weights))


@pytest.mark.parametrize("weights", [
    [1e308, 1e308],  # each finite, their sum inf: every request went to the last model, with no error
    [float("inf"), 1], [float("nan"), 1], [-1, 2], [0, 0], [1], "1,1", [True, "x"],
])
def test_weights_that_cannot_split_are_refused(weights):
    with pytest.raises(InvalidRequest, match="finite weight per model"):
        _check_definition(_split(weights))
