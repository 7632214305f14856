"""services/engine/step_tables.step_output makes of what a Python step returns exactly the table (or the error)
that the row-by-row conversion it replaced made: pandas' to_dict(orient="records"), plain values, records_to_table."""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest

from services.engine.step_tables import step_output
from shared.arrow_codec import records_to_table, to_ipc_stream


def plain(value):
    """numpy values as plain Python, as PythonStepRuntime's _plain made them before step_tables (the reference)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def by_rows(result):
    """The conversion as PythonStepRuntime.predict did it before step_tables (the reference)."""
    if isinstance(result, pd.DataFrame):
        records = result.to_dict(orient="records")
    elif isinstance(result, dict):
        records = pd.DataFrame(result).to_dict(orient="records")
    elif isinstance(result, list):
        records = result
    else:
        raise TypeError(type(result).__name__)
    return records_to_table([{k: plain(v) for k, v in row.items()} for row in records])


def outcome(convert, result):
    try:
        table = convert(result)
    except Exception as exc:  # noqa: BLE001 - the error is what is compared
        return ("error", type(exc).__name__, str(exc), getattr(exc, "code", None))
    return ("table", table.schema.to_string(show_schema_metadata=True), to_ipc_stream(table))


rng = np.random.default_rng(3)
matrix = rng.normal(size=(5, 3))
CASES = {
    "float column": lambda: pd.DataFrame({"score": rng.normal(size=5)}),
    "float32 column": lambda: pd.DataFrame({"score": rng.normal(size=5).astype(np.float32)}),
    "int and bool": lambda: pd.DataFrame({"n": np.arange(5), "flag": [True, False, True, True, False]}),
    "int32 and uint8": lambda: pd.DataFrame({"n": np.arange(5, dtype=np.int32), "u": np.arange(5, dtype=np.uint8)}),
    "strings": lambda: pd.DataFrame({"label": ["a", "b", "c", "d", "e"]}),
    "strings with a missing one": lambda: pd.DataFrame({"label": ["a", None, "c", "d", "e"]}),
    "lists of floats": lambda: pd.DataFrame({"dense_1": [[float(v)] for v in rng.normal(size=5)]}),
    "numpy rows": lambda: pd.DataFrame({"out": list(matrix)}),
    "numpy float32 rows": lambda: pd.DataFrame({"out": list(matrix.astype(np.float32))}),
    "numpy scalars in objects": lambda: pd.DataFrame({"x": pd.Series([np.float32(1.5), np.int64(2), np.float64(3)],
                                                                     dtype=object)}),
    "lists of numpy scalars": lambda: pd.DataFrame({"t": [[np.float64(1.5), np.float32(2)], [np.int64(3), 4.0]]}),
    "lists of numpy rows": lambda: pd.DataFrame({"t": [[np.array([1.0, 2.0])], [np.array([3.0, 4.0])]]}),
    "lists of bools and None": lambda: pd.DataFrame({"t": [[True, None], [False, True]]}),
    "nested lists with numpy": lambda: pd.DataFrame({"t": [[np.float32(1), [2.0]], [[3.0], [4.0]]]}),
    "2x2 tensors": lambda: pd.DataFrame({"t": [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]}),
    "ragged": lambda: pd.DataFrame({"t": [[1.0, 2.0], [3.0]]}),
    "tensors and scalars mixed": lambda: pd.DataFrame({"t": [[1.0], 2.0]}),
    "strings and numbers mixed": lambda: pd.DataFrame({"t": ["a", 1.0]}),
    "nan and None in objects": lambda: pd.DataFrame({"t": pd.Series([float("nan"), None], dtype=object)}),
    "float nan": lambda: pd.DataFrame({"t": [float("nan"), 1.0]}),
    "nullable Int64 with NA": lambda: pd.DataFrame({"t": pd.array([1, None, 3], dtype="Int64")}),
    "nullable boolean": lambda: pd.DataFrame({"t": pd.array([True, False], dtype="boolean")}),
    "Float64 extension": lambda: pd.DataFrame({"t": pd.array([1.5, 2.5], dtype="Float64")}),
    "categorical": lambda: pd.DataFrame({"t": pd.Categorical(["a", "b", "a"])}),
    "timestamps": lambda: pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02"])}),
    "dates as objects": lambda: pd.DataFrame({"t": [datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)]}),
    "dicts": lambda: pd.DataFrame({"t": [{"a": 1}, {"a": 2}]}),
    "big int": lambda: pd.DataFrame({"t": pd.Series([2**63 + 5, 1], dtype=object)}),
    "uint64 past int64": lambda: pd.DataFrame({"t": np.array([2**63 + 5, 1], dtype=np.uint64)}),
    "no rows": lambda: pd.DataFrame({"t": pd.Series([], dtype=float)}),
    "no columns": lambda: pd.DataFrame(index=range(3)),
    "repeated labels": lambda: pd.DataFrame([[1.0, 2.0]], columns=["a", "a"]),
    "integer labels": lambda: pd.DataFrame({0: [1.0], 1: [2.0]}),
    "numpy string labels": lambda: pd.DataFrame({np.str_("a"): [1.0]}),
    "a non-default index": lambda: pd.DataFrame({"t": [1.0, 2.0]}, index=["x", "y"]),
    "several columns": lambda: pd.DataFrame({"a": [1.0, 2.0], "b": [[1], [2]], "c": ["x", "y"], "d": [True, False]}),
    "too many columns": lambda: pd.DataFrame({f"c{i}": [1.0] for i in range(5000)}),
    "a dict of columns": lambda: {"score": [1.0, 2.0], "label": ["a", "b"]},
    "a dict of scalars": lambda: {"score": 1.0},
    "a list of rows": lambda: [{"score": 1.0}, {"score": np.float64(2.0)}],
    "a list of unequal rows": lambda: [{"score": 1.0}, {"other": 2.0}],
    "an empty list": lambda: [],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_step_result_converts_as_it_did_row_by_row(case: str) -> None:
    result = CASES[case]()
    expected = outcome(by_rows, result)
    assert outcome(step_output, result) == expected


def test_what_is_no_frame_list_or_dict_is_refused() -> None:
    with pytest.raises(Exception, match="returned int, not a DataFrame, list or dict"):
        step_output(3)
