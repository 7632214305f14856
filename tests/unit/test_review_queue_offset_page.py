"""deployments/list_predictions_to_review without a cursor (the seed's `offset`, the first page too): a page is
`limit` predictions as the seed answered it, never cut short at 4 MiB. 3dbe033 stopped every page at 4 MiB of JSON
(for its `cursor`), so a seed caller whose page of large predictions (segmentation masks) passed 4 MiB got fewer than
`limit` and then asked offset + limit, skipping those cut off without a word. A page by cursor still stops at 4 MiB
with a next_cursor (tests/integration/test_review_queue_pages.py reads the real queue by both; the UI asks a first
page past a reply smaller: test_ui.py::test_a_first_review_page_past_a_reply_is_read_smaller)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from services.monitoring import feedback, handlers
from services.monitoring import feedback_store as fs
from shared import paging
from shared.authz import Principal
from shared.messages.monitoring_feedback import ListPredictionsToReview

MASK = 800_000  # ints of one mask: ~1.5 MiB of JSON, so three predictions pass a 4 MiB page
START = datetime(2026, 12, 4, tzinfo=UTC)


def prediction_row(index: int) -> dict:
    return {"id": uuid.UUID(int=index + 1), "predicted_at": START + timedelta(seconds=index), "origin": "monitor",
            "source": None, "tags": [], "kind": "segmentation", "height": 8, "width": 8, "content_type": "image/png",
            "prediction": {"detection_classes": [0], "detection_masks": [[1] * MASK]}, "shadow_prediction": None}


@pytest.fixture
def queue(monkeypatch) -> list[dict]:
    """Eight large predictions waiting; the store answers them by offset or after a cursor, as its SQL does."""
    rows = [prediction_row(index) for index in range(8)]

    async def deployment(*_args):
        return SimpleNamespace(route=SimpleNamespace(deployment_id=1))

    async def waiting(_pool, _deployment_id, limit, offset, after=None):
        later = [r for r in rows if after is None or (r["predicted_at"], r["id"]) > after]
        return later[offset:offset + limit], len(rows)

    async def labels(*_args):
        return None

    monkeypatch.setattr(handlers, "_deployment", deployment)
    monkeypatch.setattr(fs, "predictions_to_review", waiting)
    monkeypatch.setattr(feedback, "_labels", labels)
    return rows


async def ask(**body) -> dict:
    principal = Principal(subject="u", kind="user", admin=False, client_id="c", username="u", issued_at=0.0)
    deps = SimpleNamespace(monitoring=SimpleNamespace(pool=None))
    answer = await feedback.predictions_to_review(deps, principal, "token", ListPredictionsToReview(
        deployment="d", **body))
    return {"ids": [p.id for p in answer.predictions], "next_cursor": answer.next_cursor}


async def test_an_offset_page_holds_limit_predictions_however_large(queue):
    first = await ask(limit=3)  # offset 0
    assert first["ids"] == [r["id"] for r in queue[:3]]  # 3dbe033: queue[:2], the next offset 3 skipped 2
    page = await ask(limit=3, offset=3)
    assert page["ids"] == [r["id"] for r in queue[3:6]]  # 3dbe033: queue[3:5] (4 MiB), the next offset 6 skipped 5
    assert page["next_cursor"] == paging.key_cursor({"created_at": queue[5]["predicted_at"], "id": queue[5]["id"]})
    assert (await ask(limit=3, offset=6))["ids"] == [r["id"] for r in queue[6:8]]
    assert (await ask(limit=3, offset=6))["next_cursor"] is None


async def test_a_cursor_page_stops_at_4_mib_and_says_where_to_go_on(queue):
    first = await ask(limit=3)
    listed, cursor = list(first["ids"]), first["next_cursor"]
    while cursor:
        page = await ask(limit=3, cursor=cursor)
        assert 1 <= len(page["ids"]) <= 2  # 3 x 1.5 MiB pass the page's 4 MiB
        listed += page["ids"]
        cursor = page["next_cursor"]
    assert listed == [r["id"] for r in queue]
