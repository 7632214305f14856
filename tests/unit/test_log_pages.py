"""The log page order's pure parts (services/log_store/pages.py): cursors and (time, position) comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from services.log_store.pages import _below_in_sorted, _count_below, decode_cursor, encode_cursor
from shared.errors import InvalidRequest


def test_cursor_round_trip_and_refusals():
    cursor = encode_cursor(1_700_000_000_123, 42, "Asc")
    assert decode_cursor(cursor, "Asc") == (1_700_000_000_123, 42)
    with pytest.raises(InvalidRequest, match="same order"):
        decode_cursor(cursor, "Desc")
    with pytest.raises(InvalidRequest, match="x-iteration-cursor"):
        decode_cursor("not-a-cursor", "Asc")
    old_style = "eyJwIjo1LCJvIjoiQXNjIn0"  # {"p":5,"o":"Asc"}: a position-only cursor of an earlier version
    with pytest.raises(InvalidRequest):
        decode_cursor(old_style, "Asc")


def test_counts_below_a_key_break_ties_by_position():
    times = np.array([5, 5, 5, 7, 3], np.int64)
    positions = np.array([10, 11, 12, 2, 30], np.int64)
    assert _count_below(times, positions, (5, 11), inclusive=False) == 2  # t=3 and (5, 10)
    assert _count_below(times, positions, (5, 11), inclusive=True) == 3
    order = np.lexsort((positions, times))
    kt, kp = times[order], positions[order]
    assert _below_in_sorted(kt, kp, (5, 11)) == 2
    assert _below_in_sorted(kt, kp, (5, -1)) == 1
    assert _below_in_sorted(kt, kp, (8, 0)) == 5
