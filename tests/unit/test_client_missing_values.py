"""A DataFrame holding NaN (pandas' missing value) goes as Arrow nulls (pa.Table.from_pandas), and a model input
refuses them with the engine's "column 'tensor': null values": no row, no NaN, nothing to do. The SDK adds to that
400 which rows of the column hold them (their index labels for a DataFrame) and what to do
(railyard_client.data.explain_missing, called by infer_at); it still sends the rows (a Python step takes them) and
keeps the API's status, code and words. The refusals here are the engine's own (services/engine/runtimes.py), so a
change of its wording fails this test rather than leaving the SDK's explanation silently unused."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from railyard_client import data
from railyard_client.errors import InvalidInput, InvalidRequest
from railyard_client.pipelines import infer_at

from services.engine.runtimes import column_to_tensor
from shared.errors import InvalidRequest as ServerInvalidRequest

GOOD = [0.5] * 4


class _Refusing:
    """A session whose API refuses the rows as the engine would for a model taking `column` (float32, 4 wide)."""

    def __init__(self, column: str, dims: list) -> None:
        self.column, self.dims, self.sent = column, dims, 0

    def send(self, method: str, path: str, **kwargs):
        self.sent += 1
        table = data.from_ipc(kwargs["content"])
        try:
            tensor = column_to_tensor(self.column, table.column(self.column), self.dims, np.float32)
            if not np.isfinite(tensor).all():  # OnnxRuntime.predict's check
                raise ServerInvalidRequest(f"column {self.column!r}: NaN or infinite values")
        except ServerInvalidRequest as exc:
            raise InvalidRequest(400, exc.code, exc.msg) from None
        raise AssertionError("the rows were taken")


def refused(session, rows) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        infer_at(session, "d", "p", rows)
    assert not isinstance(caught.value, InvalidInput) and session.sent == 1  # sent: the API's refusal
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    return caught.value


def test_a_dataframes_nan_in_tensors_is_named_by_row_and_index_label():
    frame = pd.DataFrame({"tensor": [GOOD, GOOD[:2] + [math.nan, 0.5], GOOD, [math.nan] * 4]}, index=[10, 11, 12, 13])
    message = refused(_Refusing("tensor", [-1, 4]), frame).message
    assert message.startswith("column 'tensor': null values: ")  # the API's words first, as they were
    assert "rows 1 and 3 (index 11, 13) of column 'tensor' hold a missing value" in message, message
    assert "inside the tensor" in message and "frame.drop(index=[11, 13])" in message, message


def test_a_dataframes_scalar_nan_says_fillna_or_dropna_and_counts_past_five():
    values = [math.nan if row % 2 else 1.0 for row in range(20)]
    frame = pd.DataFrame({"x": values}, index=[f"r{row}" for row in range(20)])
    message = refused(_Refusing("x", [-1]), frame).message
    assert message.startswith("column 'x': null values: rows 1, 3, 5, 7 and 9 (index r1, r3, r5, r7, r9) and 5 more"
                              " of column 'x' hold a missing value"), message
    assert "frame.fillna(...)" in message and "frame.dropna(subset=['x'])" in message, message
    assert "inside" not in message


def test_an_arrow_tables_nan_and_null_tensor_are_named_by_row():
    table = pa.table({"tensor": pa.array([GOOD, GOOD[:-1] + [math.inf]], pa.list_(pa.float64(), 4))})
    message = refused(_Refusing("tensor", [-1, 4]), table).message
    assert message.startswith("column 'tensor': NaN or infinite values: row 1 of column 'tensor' holds NaN or"
                              " infinity inside the tensor"), message
    assert "index" not in message and "frame." not in message
    holes = pa.table({"tensor": pa.array([GOOD, None, GOOD], pa.list_(pa.float64()))})
    message = refused(_Refusing("tensor", [-1, 4]), holes).message
    assert message.startswith("column 'tensor': null tensor: row 1 of column 'tensor' holds a null; replace it or"
                              " leave that row out"), message


def test_other_refusals_and_columns_the_rows_do_not_hold_are_left_as_the_api_said():
    other = InvalidRequest(400, "invalid_request", "column 'tensor': the model expects tensors of shape 4, got 3")
    table = pa.table({"tensor": [[1.0, None]]})
    assert data.explain_missing(other, table) is other
    elsewhere = InvalidRequest(400, "invalid_request", "column 'dense_1': null values")  # an earlier step's output
    assert data.explain_missing(elsewhere, table) is elsewhere
    nothing = InvalidRequest(400, "invalid_request", "column 'tensor': NaN or infinite values")
    assert data.explain_missing(nothing, pa.table({"tensor": [[1.0, 2.0]]})) is nothing
    quoted = InvalidRequest(400, "invalid_request", """column "it's": null values""")
    explained = data.explain_missing(quoted, pa.table({"it's": [1.0, None]}))
    assert explained.message.startswith("""column "it's": null values: row 1 of column "it's" holds""")


def test_a_json_files_rows_are_named_without_an_index(tmp_path):
    """A file path's JSON rows go as a table too (as_frame: their answer is records), but the path is no DataFrame:
    its `.index` (str.index, a method) was taken for the labels, and the API's 400 became a TypeError (a Path's an
    AttributeError)."""
    rows = tmp_path / "rows.json"
    rows.write_text('[{"tensor": [0.5, 0.5, 0.5, 0.5]}, {"tensor": [0.5, NaN, 0.5, 0.5]}]')
    for given in (str(rows), rows):
        message = refused(_Refusing("tensor", [-1, 4]), given).message
        assert message.startswith("column 'tensor': NaN or infinite values: row 1 of column 'tensor' holds NaN or"
                                  " infinity inside the tensor; replace it or leave that row out"), message
        assert "index" not in message


def test_a_null_list_backed_by_values_keeps_the_rows_in_step():
    """A null list whose offsets span values (ListArray.from_arrays(mask=), a compute kernel's output): flatten
    leaves those values out, list_parent_indices counted them, and the explanation raised IndexError instead of the
    API's 400."""
    values = pa.array([0.5] * 4 + [0.5] * 4 + [0.5, 0.5, math.nan, 0.5], pa.float64())
    tensor = pa.ListArray.from_arrays(pa.array([0, 4, 8, 12], pa.int32()), values, mask=pa.array([False, True, False]))
    message = refused(_Refusing("tensor", [-1, 4]), pa.table({"tensor": tensor})).message
    assert "null tensor: row 1 of column 'tensor' holds a null" in message, message
    assert data.explain_missing(InvalidRequest(400, "invalid_request", "column 'tensor': NaN or infinite values"),
                                pa.table({"tensor": tensor})).message.endswith(
        "row 2 of column 'tensor' holds NaN or infinity inside the tensor; replace it or leave that row out (the model"
        " takes no missing values), then infer again")


def test_repeated_index_labels_are_dropped_by_position():
    """frame.drop(index=[11]) drops every row labelled 11: with labels repeated, the rows are named by position."""
    frame = pd.DataFrame({"tensor": [GOOD, GOOD[:2] + [math.nan, 0.5], GOOD]}, index=[11, 11, 12])
    message = refused(_Refusing("tensor", [-1, 4]), frame).message
    assert "row 1 (index 11) of column 'tensor' holds a missing value" in message, message
    assert "frame.drop(" not in message and "if i not in {1}" in message, message
    kept = frame.iloc[[i for i in range(len(frame)) if i not in {1}]]
    assert len(kept) == 2 and not kept["tensor"].map(lambda t: any(map(math.isnan, t))).any()


def test_the_apis_own_row_words_are_not_repeated():
    """Since session 29 the engine names a NaN's rows itself (" in rows 1 and 3 (counted from 0)"); the SDK's
    explanation names them with the index and what to do, and said them twice ("values in rows 1 and 3 (counted from
    0): rows 1 and 3 of column ..."). The API's other words after them stay."""
    table = pa.table({"ids": [1.0, math.nan, 2.0, math.inf]})
    api = "column 'ids': NaN or infinite values in rows 1 and 3 (counted from 0) where the model expects int64"
    message = data.explain_missing(InvalidRequest(400, "invalid_request", api), table).message
    assert message.startswith("column 'ids': NaN or infinite values where the model expects int64: rows 1 and 3 of"
                              " column 'ids' hold NaN or infinity"), message
    assert "counted from 0" not in message
    many = "column 'ids': NaN or infinite values in rows 0, 1, 2, 3 and 4 (and 2 more) (counted from 0)"
    sevens = pa.table({"ids": [math.nan] * 7})
    message = data.explain_missing(InvalidRequest(400, "invalid_request", many), sevens).message
    assert message.startswith("column 'ids': NaN or infinite values: rows 0, 1, 2, 3 and 4 and 2 more of column"), \
        message
