"""A benchmark's engine call (workflow_lineage's `infer`: auto-benchmarks, run_classification, evaluate_detections) is
sent once more if no replica answered it within ENGINE_FIRST_ATTEMPT (3 s), as the gateway re-sends an inference and
monitoring a predict (shared.bus.request_engine): a replica killed while it held a batch never answers, and the
benchmark waited the whole ENGINE_TIMEOUT (30 s) for it and failed. Both attempts carry one Railyard-Request-Id (a
replica still running the first answers the second from that one run: services/engine/answers.py), the second
`Railyard-Attempt: 2`; nobody listening is a 503 at once (an auto-benchmark's claim is tried again), two attempts
unanswered the 504 after ENGINE_TIMEOUT in all."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import nats.errors
import pytest

from services.workflow_lineage import app
from shared.bus import ENGINE_FIRST_ATTEMPT, error_headers
from shared.errors import InvalidRequest, RailyardError
from shared.logrecords import ATTEMPT, REQUEST_ID
from shared.objectstore import BUCKET_TABLES
from shared.table_transport import TABLE_REF

BATCH = b"arrow ipc of a batch"


class _Replicas:
    """The deployment's queue group: `outcomes` says what each request meets in turn: "dies" (the replica that took it
    was killed: no answer within the request's timeout), "answers", "refuses" (an error header), or "nobody"."""

    max_payload = 1 << 20

    def __init__(self, *outcomes: str, answer_headers: dict[str, str] | None = None) -> None:
        self.outcomes = list(outcomes)
        self.answer_headers = answer_headers or {"Railyard-Meta": "{}"}
        self.sent: list[tuple[str, bytes, float, dict[str, str]]] = []

    async def request(self, subject, payload, timeout, headers):
        self.sent.append((subject, payload, timeout, dict(headers)))
        outcome = self.outcomes.pop(0)
        if outcome == "dies":
            await asyncio.sleep(0)
            raise nats.errors.TimeoutError
        if outcome == "nobody":
            raise nats.errors.NoRespondersError
        if outcome == "refuses":
            return SimpleNamespace(headers=error_headers(InvalidRequest("column x: expected float")), data=b"")
        return SimpleNamespace(headers=dict(self.answer_headers), data=b"answer")


def _infer(nc: _Replicas, objects=None):
    return asyncio.run(app.engine_infer(nc, objects, "digits", BATCH))


def test_a_batch_whose_replica_died_holding_it_is_sent_once_more_and_answered():
    nc = _Replicas("dies", "answers")
    headers, data = _infer(nc)
    assert data == b"answer" and headers == {"Railyard-Meta": "{}"}
    assert len(nc.sent) == 2
    (subject, payload, first_wait, first), (subject2, payload2, second_wait, second) = nc.sent
    assert subject == subject2 == "engine.digits.infer" and payload == payload2 == BATCH
    assert (first_wait, second_wait) == (ENGINE_FIRST_ATTEMPT, app.ENGINE_TIMEOUT - ENGINE_FIRST_ATTEMPT) == (3.0, 27.0)
    assert len(first[REQUEST_ID]) == 32 and second[REQUEST_ID] == first[REQUEST_ID]  # one request, run once
    assert ATTEMPT not in first and second[ATTEMPT] == "2"


def test_an_answered_batch_is_sent_once_and_two_batches_have_their_own_ids():
    one, other = _Replicas("answers"), _Replicas("answers")
    _infer(one), _infer(other)
    assert len(one.sent) == 1 and ATTEMPT not in one.sent[0][3] and one.sent[0][2] == ENGINE_FIRST_ATTEMPT
    assert one.sent[0][3][REQUEST_ID] != other.sent[0][3][REQUEST_ID]


@pytest.mark.parametrize("outcomes", [("nobody",), ("dies", "nobody")], ids=["at-once", "at-the-re-send"])
def test_nobody_listening_is_a_503_at_once(outcomes):
    nc = _Replicas(*outcomes)
    with pytest.raises(RailyardError) as caught:
        _infer(nc)
    assert caught.value.status == 503, repr(caught.value)
    assert caught.value.msg == "deployment 'digits' has no running engine; retry shortly"
    assert len(nc.sent) == len(outcomes)  # not sent a third time


def test_two_attempts_unanswered_are_a_504_after_the_engine_timeout_in_all():
    nc = _Replicas("dies", "dies")
    with pytest.raises(RailyardError) as caught:
        _infer(nc)
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout"), repr(caught.value)
    assert caught.value.msg == "the engine did not answer within 30s"
    assert sum(wait for _, _, wait, _ in nc.sent) == app.ENGINE_TIMEOUT and len(nc.sent) == 2


def test_the_engine_s_refusal_is_its_typed_error_not_re_sent():
    nc = _Replicas("refuses")
    with pytest.raises(RailyardError) as caught:
        _infer(nc)
    assert (caught.value.status, caught.value.msg) == (400, "column x: expected float"), repr(caught.value)
    assert len(nc.sent) == 1


def test_an_answer_by_reference_is_read_and_deleted():
    events = []

    class Objects:
        async def get_bytes(self, bucket, key):
            events.append(("get", bucket, key))
            return b"big answer"

        async def delete(self, bucket, key):
            events.append(("delete", bucket, key))

    nc = _Replicas("dies", "answers", answer_headers={TABLE_REF: "inference/abc"})
    _, data = _infer(nc, Objects())
    assert data == b"big answer"
    assert events == [("get", BUCKET_TABLES, "inference/abc"), ("delete", BUCKET_TABLES, "inference/abc")]


@pytest.mark.parametrize("timeout", [ENGINE_FIRST_ATTEMPT, 1.0], ids=["equal", "shorter"])
def test_a_timeout_no_longer_than_the_first_wait_is_one_attempt_of_that_timeout(timeout):
    """request_engine with a timeout <= its first attempt's wait sent a second attempt with a negative (or zero)
    wait; now it is one attempt of `timeout`, then the 504."""
    from shared.bus import request_engine
    from shared.errors import UpstreamTimeout

    nc = _Replicas("dies", "dies")
    with pytest.raises(UpstreamTimeout):
        asyncio.run(request_engine(nc.request, "engine.digits.infer", BATCH, {}, timeout=timeout))
    assert [wait for _, _, wait, _ in nc.sent] == [timeout]
