"""`Assay.results()` answers every scored window, newest first, read a page at a time (each page ending before the
previous page's oldest window: `end` is exclusive and a window is unique per assay). It sent one assays/get_results
without a limit, which the assay runner answers with its newest 1000: a 1-minute assay older than 17 hours lost the
rest, silently (so did `railyard assays results`). A fake server with the route's semantics (window_start in
[start, end), newest first, `limit` default 1000)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from railyard_client import assays
from railyard_client.assays import Assay
from railyard_client.errors import InvalidInput

T0 = datetime(2026, 12, 1, tzinfo=UTC)
WINDOWS = [(T0 + timedelta(minutes=n)).isoformat().replace("+00:00", "Z") for n in range(2500)]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Server:
    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def post(self, route: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        assert route == "assays/get_results" and body["assay_id"] == 5
        self.asked.append(body)
        rows = [w for w in reversed(WINDOWS)
                if ("start" not in body or moment(w) >= moment(body["start"]))
                and ("end" not in body or moment(w) < moment(body["end"]))]
        return [{"window_start": w, "score": 0.0} for w in rows[:body.get("limit", 1000)]]


def starts(results: list[dict[str, Any]]) -> list[str]:
    return [r["window_start"] for r in results]


def test_every_window_is_answered_newest_first():
    server = Server()
    found = Assay(server, {"id": 5}).results()
    assert starts(found) == WINDOWS[::-1]  # the old code: the newest 1000
    assert all(body["limit"] <= assays.RESULTS_PAGE for body in server.asked)
    assert len(server.asked) == 2500 // assays.RESULTS_PAGE + 1


def test_a_limit_and_a_range_are_kept():
    server = Server()
    assert starts(Assay(server, {"id": 5}).results(limit=450)) == WINDOWS[::-1][:450]
    assert [body["limit"] for body in server.asked] == [200, 200, 50]
    found = Assay(Server(), {"id": 5}).results(start=WINDOWS[100], end=WINDOWS[1400])
    assert starts(found) == WINDOWS[100:1400][::-1]
    assert Assay(Server(), {"id": 5}).results(start=WINDOWS[-1], end=WINDOWS[0]) == []


def test_a_limit_below_one_is_refused_not_answered_empty():
    """Paging made `limit=0` (or negative) ask nothing and answer [] (`railyard assays results --limit 0` printed an
    empty table, exit 0); the route refuses such a limit with a 400, as the SDK did by sending it."""
    for limit in (0, -5):
        server = Server()
        with pytest.raises(InvalidInput, match=f"limit must be at least 1, not {limit}"):
            Assay(server, {"id": 5}).results(limit=limit)
        assert server.asked == []
