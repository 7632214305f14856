"""Monitoring's events.monitoring.prediction_created and review_created are not lost when the EVENTS stream refuses
them after the prediction / review committed: the monitoring service writes each in the row's own transaction to its
outbox (shared/outbox.py, migration 014) and it reaches the stream once it accepts again, once, with
Nats-Msg-Id = event_id. Before, both were published after the commit and a failed publish (or a crash in between)
lost them for good: lineage's event log never had the prediction, continuous training was not woken by the review.

The stack's real gateway and monitoring service handle monitor and review_prediction; the stream refuses as in
test_assay_events (a real JetStream error); the outbox table and the stream are read directly.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import subjects
from tests.image_models import detector_image_config, detector_onnx, squares_png
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.conftest import make_account, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.integration.test_assay_events import events_refused
from tests.integration.test_monitoring_predictions import query

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PREDICTION = {"detection_classes": [1], "detection_scores": [0.9], "detection_boxes": [[0, 10, 10, 20]]}


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "mevents")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def squares(stack, owner):
    """A square detector deployment (monitor and review only: its engine answers nothing here)."""
    client = sdk(stack, owner)
    detector = client.upload_model("squares", detector_onnx(), progress=False)
    pipeline = client.build_pipeline("mev-squares").add_model_step(detector, image=detector_image_config())
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    pipeline.deployment().wait_until_running(180)
    return client.get_deployment("mev-squares")


def in_outbox(stack, subject: str, key: str, value: str) -> list[dict]:
    """The monitoring outbox's unsent rows of `subject` whose payload's `key` is `value`."""
    return [dict(r) for r in query(stack, "SELECT event_id, subject FROM monitoring.outbox WHERE subject = $1"
                                          " AND payload->>$2 = $3", subject, key, value)]


async def monitoring_events(stack, key: str, value: str) -> list[dict]:
    return await stream_events(stack, "events.monitoring.>", key, {value})


def test_prediction_and_review_events_are_kept_with_their_rows_while_the_stream_refuses(stack, owner, squares):
    image = squares_png({(0, 1): 255}, size=40, fmt="PNG")

    async def while_refused() -> tuple[str, str]:
        async with events_refused(stack):
            answer = await asyncio.to_thread(squares.monitor_bytes, image, "image/png", "f.png", latency=0.01,
                                             height=40, width=40, prediction=PREDICTION)
            prediction_id = answer["id"]  # answered: the row is committed, and its event with it
            kept = await asyncio.to_thread(in_outbox, stack, subjects.EVENT_MONITORING_PREDICTION_CREATED,
                                           "prediction_id", prediction_id)
            assert len(kept) == 1, kept
            review = await asyncio.to_thread(squares.review_prediction, prediction_id)
            review_id = review["review_id"]
            kept = await asyncio.to_thread(in_outbox, stack, subjects.EVENT_MONITORING_REVIEW_CREATED, "review_id",
                                           review_id)
            assert len(kept) == 1, kept
            assert await monitoring_events(stack, "prediction_id", prediction_id) == []  # refused: none reached it
            return prediction_id, review_id

    prediction_id, review_id = asyncio.run(while_refused())
    deadline = time.monotonic() + 30
    while len(asyncio.run(monitoring_events(stack, "prediction_id", prediction_id))) < 2:  # the next round sends
        assert time.monotonic() < deadline, (
            "the refused monitoring events never reached the stream: "
            f"{asyncio.run(monitoring_events(stack, 'prediction_id', prediction_id))}")
        time.sleep(0.2)
    asyncio.run(outbox_sent(stack, "monitoring", "prediction_id", {prediction_id}))  # a copy would be on it too
    events = asyncio.run(monitoring_events(stack, "prediction_id", prediction_id))
    assert [e["_subject"] for e in events] == [subjects.EVENT_MONITORING_PREDICTION_CREATED,
                                               subjects.EVENT_MONITORING_REVIEW_CREATED]  # once each, in order
    assert events[0]["origin"] == "monitor" and events[1]["review_id"] == review_id
    assert all(e["_msg_id"] == e["event_id"] for e in events)  # the stream's (and lineage's) de-duplication key
    assert in_outbox(stack, subjects.EVENT_MONITORING_PREDICTION_CREATED, "prediction_id", prediction_id) == []
    assert in_outbox(stack, subjects.EVENT_MONITORING_REVIEW_CREATED, "review_id", review_id) == []
