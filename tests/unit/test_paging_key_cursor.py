"""The cursor of the lists in (created_at, id) order with UUID ids (task/list, orchestration/list; shared/paging.py):
it gives back the exact key it was made from (microseconds, PostgreSQL's precision), and what no page answered is a
400, never a 500 (a time out of range included)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from shared import paging
from shared.errors import InvalidRequest


@pytest.mark.parametrize("at", [datetime(2026, 12, 3, 16, 20, 1, 123456, tzinfo=UTC),
                                datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)])
def test_a_key_cursor_reads_as_its_key(at):
    row = {"created_at": at, "id": uuid.uuid4()}
    assert paging.after_key(paging.key_cursor(row), "task/list") == (at, row["id"])
    assert paging.after_key(None, "task/list") is None


@pytest.mark.parametrize("cursor", ["17", "x", "1." + "g" * 32, "1." + "0" * 31, "9" * 19 + "." + "0" * 32,
                                    "-" + "9" * 19 + "." + "0" * 32, " 1." + "0" * 32])
def test_anything_else_is_a_400(cursor):
    with pytest.raises(InvalidRequest, match="cursor: not a next cursor of task/list"):
        paging.after_key(cursor, "task/list")


@pytest.mark.parametrize("key", ["inference-0123456789abcdef", "a.b-c_d", "x", "9" * 39, "inference-ab.c-d.e"])
@pytest.mark.parametrize("at", [datetime(2026, 12, 4, 0, 1, 2, 345678, tzinfo=UTC),
                                datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)])
def test_a_name_key_cursor_reads_as_its_key(at, key):
    """workspaces/list_inference_clients' cursor (created_at, client id): the first dot ends the microseconds, so a key
    with dots and dashes reads back whole."""
    cursor = paging.name_key_cursor(at, key)
    assert paging.after_name_key(cursor, "workspaces/list_inference_clients") == (at, key)


@pytest.mark.parametrize("cursor", ["17", "x", "1.", ".inference-ab", "1.-inference", "1..ab", "1.a b", "1.a\n",
                                    "1." + "a" * 40, "9" * 19 + ".inference-ab", "-" + "9" * 19 + ".ab",
                                    "253402300800000000.ab", "1.inference/ab", "١.ab"])
def test_anything_else_is_a_400_for_a_name_key_cursor(cursor):
    with pytest.raises(InvalidRequest, match="cursor: not a next cursor of workspaces/list_inference_clients"):
        paging.after_name_key(cursor, "workspaces/list_inference_clients")
