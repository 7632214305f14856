"""services/engine/runtimes.column_to_tensor for an integer model input: what the type cannot hold exactly is
refused naming the column (a fraction, NaN or infinity, a float or an integer outside its range), whole numbers are
cast exactly, and what an earlier step made is cast as before (refuse_booleans=False). The integration test
(tests/integration/test_infer_integer_inputs_exact.py) runs the request formats through the gateway."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from services.engine.runtimes import column_to_tensor
from shared.errors import InvalidRequest

REFUSED = {
    "a fraction": (pa.array([1.0, 2.5]), np.int64, "a number with a fraction (2.5)"),
    "NaN": (pa.array([1.0, float("nan")]), np.int64, "NaN or infinite values"),
    "-inf for int32": (pa.array([float("-inf")], pa.float32()), np.int32, "NaN or infinite values"),
    "2**63 as a float": (pa.array([2.0**63]), np.int64, "a value (9.223372036854776e+18) outside the range of int64"),
    "-2**63 - 2**11 as a float": (pa.array([-(2.0**63) - 2.0**11]), np.int64, "outside the range of int64"),
    "int64 past int32": (pa.array([1, 2**40]), np.int32, "a value (1099511627776) outside the range of int32"),
    "negative for uint8": (pa.array([-1, 3]), np.uint8, "a value (-1) outside the range of uint8"),
    "uint64 past int64": (pa.array([2**64 - 1], pa.uint64()), np.int64, "a value (18446744073709551615)"),
    "a fraction in a tensor": (pa.array([[1.0, 2.0], [3.0, 0.5]], pa.list_(pa.float64(), 2)), np.int64,
                               "a number with a fraction (0.5)"),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_values_an_integer_input_cannot_hold_are_refused_naming_the_column(case):
    column, dtype, wanted = case
    dims = [None, 2] if pa.types.is_fixed_size_list(column.type) else [None]
    with pytest.raises(InvalidRequest) as raised:
        column_to_tensor("ids", column, dims, dtype)
    assert raised.value.msg.startswith("column 'ids': ") and wanted in raised.value.msg, raised.value.msg


def test_whole_numbers_are_cast_exactly_and_a_later_steps_values_as_before():
    exact = column_to_tensor("ids", pa.array([3.0, -(2.0**63), 2.0**62]), [None], np.int64)
    assert exact.tolist() == [3, -(2**63), 2**62]
    assert column_to_tensor("ids", pa.array([7, 255], pa.int32()), [None], np.uint8).tolist() == [7, 255]
    assert column_to_tensor("ids", pa.array([5], pa.int16()), [None], np.int64).tolist() == [5]  # safe: no check
    with np.errstate(invalid="ignore"):  # an earlier step's floats: numpy's cast, as before
        assert column_to_tensor("ids", pa.array([1.5]), [None], np.int64, refuse_booleans=False).tolist() == [1]
