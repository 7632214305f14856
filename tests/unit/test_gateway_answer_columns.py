"""The constant columns the gateway adds to an inference answer (services/gateway/inference.py)."""

from __future__ import annotations

from services.gateway import inference


def test_only_answers_of_up_to_ten_thousand_rows_keep_their_check_failures_column() -> None:
    # the gateway kept the column of the 64 last row counts: of millions of rows each, gigabytes
    for rows in (1, inference.NO_FAILURES_CACHED_ROWS + 1):
        column = inference._no_failures(rows)
        assert len(column) == rows and column.null_count == 0 and column.to_pylist()[:2] == [[]] * min(rows, 2)
    assert inference._no_failures(3) is inference._no_failures(3)
    big = inference.NO_FAILURES_CACHED_ROWS + 1
    assert inference._no_failures(big) is not inference._no_failures(big)
