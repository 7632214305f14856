"""What a Python step's `wallaroo_json` returns, as a table (services/engine/runtimes.py's PythonStepRuntime, run
in the sandboxed worker).

What comes out is what pandas' `to_dict(orient="records")`, `plain` and `records_to_table` made of a result row by
row, value for value, with the same errors in the same order (tests/unit/test_step_tables.py compares both); only
the work is done a column at a time, without a dict per row (a 1000-row answer: ~3.3 -> ~1.0 ms of CPU). A DataFrame
(or dict of columns) with rows and unique string labels goes that way; anything else (a list of rows, repeated or
non-string labels, no rows) the row-by-row way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.extensions import ExtensionDtype
from pandas.core.dtypes.cast import maybe_box_native

from shared.arrow_codec import _column_array, check_column_count, records_to_table
from shared.errors import InvalidRequest

# values maybe_box_native hands back unchanged (or as an equal value of the same type): no call needed
_NATIVE = frozenset({list, str, float, int, bool, type(None), dict, np.ndarray})
_OBJECT = np.dtype(object)
_SCALARS = frozenset({float, int, str, bool, type(None)})  # what `plain` returns as it is


def plain(value: Any) -> Any:
    """numpy values (as pandas hands them back) as plain Python for JSON-like conversion."""
    if type(value) is list:  # a list's plain elements are kept without a call each (a tensor row of floats)
        return [v if type(v) in _SCALARS else plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def step_output(result: Any) -> pa.Table:
    """The table of what a step returned: a DataFrame, a list of row objects or a dict of columns."""
    if isinstance(result, dict):
        result = pd.DataFrame(result)
    if isinstance(result, pd.DataFrame):
        labels = result.columns.tolist()
        if len(result) and result.columns.is_unique and all(type(label) is str for label in labels):
            return _frame_table(result, labels)
        records = result.to_dict(orient="records")
    elif isinstance(result, list):
        records = result
    else:
        raise InvalidRequest(f"the Python step returned {type(result).__name__}, not a DataFrame, list or dict")
    return records_to_table([{k: plain(v) for k, v in row.items()} for row in records])


def _frame_table(frame: pd.DataFrame, labels: list[str]) -> pa.Table:
    """records_to_table(to_dict(orient="records") with `plain` values), a column at a time: a column's values are
    what itertuples yields for it (Series iteration), boxed as to_dict boxes object and extension columns."""
    columns = []
    for index, dtype in enumerate(frame.dtypes.tolist()):
        values = list(frame.iloc[:, index])
        if dtype == _OBJECT or isinstance(dtype, ExtensionDtype):
            values = [v if type(v) in _NATIVE else maybe_box_native(v) for v in values]
        columns.append([plain(v) for v in values])
    check_column_count(len(labels))
    arrays = [_column_array(label, values) for label, values in zip(labels, columns, strict=True)]
    return pa.Table.from_arrays(arrays, names=labels)
