"""The review queue (deployments/list_predictions_to_review) pages by keyset as the other lists do
(docs/api-paging.md): `limit`, then the answer's `next_cursor` as `cursor`, oldest first (predicted_at, then id).
By the seed's `offset`, a prediction someone else reviewed between two pages moved every later one a place down, so
the next page skipped one that was never listed; by cursor, the next page misses none and repeats none. The offset is
still answered (the seed's callers); a cursor that no page answered, or with an offset, is a typed 400."""

from __future__ import annotations

import time

import pytest

from tests.image_models import digit_png, digits_classifier_onnx, digits_image_config
from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk

pytestmark = pytest.mark.integration

ROUTE = "deployments/list_predictions_to_review"


@pytest.fixture(scope="module")
def reviewer(stack, admin):
    account = make_account(stack, admin, "rqpages")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def queue(stack, reviewer) -> tuple[str, list[str]]:
    """A deployed digits classifier with 6 predictions made elsewhere (monitor_bytes), a second apart: its name and
    the predictions' ids, oldest first."""
    client = sdk(stack, reviewer)
    model = client.upload_model("rqdigits", digits_classifier_onnx(), progress=False)
    pipeline = client.build_pipeline("rq-digits").add_model_step(model, image=digits_image_config())
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    deployment = pipeline.deployment().wait_until_running(180)
    start = time.time() - 600
    ids = []
    for index in range(6):
        image, label = digit_png(index)
        ids.append(deployment.monitor_bytes(image, "image/png", f"q{index}.png", latency=0.01, height=8, width=8,
                                            prediction={"detection_classes": [label], "detection_scores": [0.9]},
                                            timestamp=start + index)["id"])
    return deployment.name, ids


def page(stack, account, body: dict) -> dict:
    response = post(stack, ROUTE, account.token, body)
    assert response.status_code == 200, response.text[:300]
    return response.json()


def test_a_review_between_two_pages_neither_hides_nor_repeats_a_prediction(stack, reviewer, queue):
    name, ids = queue
    first = page(stack, reviewer, {"deployment": name, "limit": 2})
    assert [p["id"] for p in first["predictions"]] == ids[:2] and first["pending"] == 6
    assert first["next_cursor"]
    # someone else reviews the first prediction listed on page 1 before page 2 is read
    reviewed = post(stack, "deployments/review_prediction", reviewer.token,
                    {"deployment": name, "prediction_id": ids[0], "decision": "accepted"})
    assert reviewed.status_code == 200, reviewed.text[:300]
    listed, cursor = [p["id"] for p in first["predictions"]], first["next_cursor"]
    while cursor:  # the rest by cursor: each once, in order, none skipped
        answer = page(stack, reviewer, {"deployment": name, "limit": 2, "cursor": cursor})
        listed += [p["id"] for p in answer["predictions"]]
        assert answer["pending"] == 5
        cursor = answer.get("next_cursor")
        assert len(listed) <= 8, listed
    assert listed == ids
    # what offset paging answered (and still does, for the seed's callers): page 2 at offset 2 skips ids[2]
    by_offset = page(stack, reviewer, {"deployment": name, "limit": 2, "offset": 2})
    assert [p["id"] for p in by_offset["predictions"]] == ids[3:5]
    # the last page has no next_cursor; the whole queue in one page neither
    whole = page(stack, reviewer, {"deployment": name, "limit": 50})
    assert [p["id"] for p in whole["predictions"]] == ids[1:] and "next_cursor" not in whole


def test_a_bad_cursor_is_a_typed_400_that_changes_nothing(stack, reviewer, queue):
    name, _ = queue
    before = page(stack, reviewer, {"deployment": name, "limit": 50})
    for cursor in ("nope", "12", "1." + "0" * 31, "9" * 19 + "." + "a" * 32):
        response = post(stack, ROUTE, reviewer.token, {"deployment": name, "limit": 2, "cursor": cursor})
        assert response.status_code == 400, (cursor, response.text[:300])
        assert response.json()["code"] == "invalid_request" and "cursor" in response.json()["msg"], response.text
    cursor = page(stack, reviewer, {"deployment": name, "limit": 1})["next_cursor"]
    both = post(stack, ROUTE, reviewer.token, {"deployment": name, "limit": 1, "cursor": cursor, "offset": 1})
    assert both.status_code == 400 and both.json()["code"] == "invalid_request", both.text[:300]
    assert "not both" in both.json()["msg"]
    assert page(stack, reviewer, {"deployment": name, "limit": 50}) == before
