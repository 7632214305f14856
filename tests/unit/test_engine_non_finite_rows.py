"""The engine's refusal of NaN or infinity names the rows (services/engine/runtimes.py, non_finite_rows): a JSON
body's refusal named the column only ("column 'tensor': NaN or infinite values"), and only the SDK's DataFrame and
Arrow paths found the rows, client-side. The message keeps its start, which the SDK reads (explain_missing)."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine.runtimes import _check_integers, non_finite_rows
from shared.errors import InvalidRequest


def test_the_rows_holding_nan_or_infinity_are_named() -> None:
    tensor = np.ones((4, 3))
    tensor[1, 2], tensor[3, 0] = np.nan, -np.inf
    assert non_finite_rows(tensor) == " in rows 1 and 3 (counted from 0)"
    assert non_finite_rows(np.array([1.0, np.inf])) == " in row 1 (counted from 0)"  # a column of scalars
    many = np.full((9, 2, 2), np.nan)  # nested tensors: a row counts once
    assert non_finite_rows(many) == " in rows 0, 1, 2, 3 and 4 (and 4 more) (counted from 0)"
    assert non_finite_rows(np.ones((2, 2))) == "" and non_finite_rows(np.float64(np.nan)) == ""


def test_an_integer_inputs_refusal_names_the_row_and_keeps_its_start() -> None:
    with pytest.raises(InvalidRequest) as refused:
        _check_integers("ids", np.array([[1.0, 2.0], [np.nan, 2.0]]), np.dtype(np.int64))
    assert str(refused.value.msg) == ("column 'ids': NaN or infinite values in row 1 (counted from 0) where the model "
                                      "expects int64 integers")
