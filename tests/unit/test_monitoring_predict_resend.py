"""Monitoring's predict re-sends an image no replica answered within FIRST_ATTEMPT (3 s), as the gateway re-sends an
inference: a replica killed while it held the image never answers, and the predict waited the whole ENGINE_TIMEOUT
(30 s) for it, then answered 504, while another replica (or the dead one's replacement) was idle. The second
attempt carries the first's request id (a replica still running the first answers it from that one run:
services/engine/answers.py) and `Railyard-Attempt: 2`; nobody listening by then is the deployer's word at once
(a 503, a crash loop's with its Retry-After), and two attempts unanswered are the 504 after ENGINE_TIMEOUT in all."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import nats.errors
import pyarrow as pa
import pytest

from services.gateway.errors import error_parts
from services.monitoring import predictions
from shared.arrow_codec import from_ipc, to_ipc_stream
from shared.errors import RailyardError
from shared.logrecords import ATTEMPT, REQUEST_ID
from shared.messages.deployer import DeploymentRoute
from shared.not_serving import CRASH_LOOP
from shared.objectstore import BUCKET_TABLES
from shared.table_transport import META_HEADER, SHADOWS_HEADER, SHADOWS_INLINE, TABLE_REF

ANSWER = pa.table({"out": [0.25]})


class _Replicas:
    """The deployment's queue group: `outcomes` says what each request meets in turn: "dies" (the replica that took it
    was killed: no answer within the request's timeout), "answers", or "nobody" (no replica subscribed)."""

    max_payload = 1 << 20

    def __init__(self, *outcomes: str) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[str, bytes, float, dict[str, str]]] = []

    async def request(self, subject, payload, timeout, headers):
        self.sent.append((subject, payload, timeout, dict(headers)))
        outcome = self.outcomes.pop(0)
        if outcome == "dies":
            await asyncio.sleep(0)
            raise nats.errors.TimeoutError
        if outcome == "nobody":
            raise nats.errors.NoRespondersError
        return SimpleNamespace(headers={META_HEADER: '{"last_model": "m"}'}, data=to_ipc_stream(ANSWER))


def _deps(nc: _Replicas) -> SimpleNamespace:
    return SimpleNamespace(broker=SimpleNamespace(config=SimpleNamespace(connection_state=SimpleNamespace(
        connection=nc))), timeout=4.0, objects=None)


def _ask(nc: _Replicas):
    return asyncio.run(predictions._ask_engine(_deps(nc), "digits", pa.table({"x": [1.0]}), token="alice's"))


def test_a_predict_whose_replica_died_holding_it_is_sent_once_more_and_answered():
    nc = _Replicas("dies", "answers")
    answer, meta, _ = _ask(nc)
    assert answer.equals(ANSWER) and meta == {"last_model": "m"}
    assert len(nc.sent) == 2
    (subject, payload, first_wait, first), (subject2, payload2, second_wait, second) = nc.sent
    assert subject == subject2 == "engine.digits.infer" and payload == payload2
    assert from_ipc(payload).equals(pa.table({"x": [1.0]}))
    # the first attempt waits FIRST_ATTEMPT, not the whole ENGINE_TIMEOUT; both together ENGINE_TIMEOUT
    assert (first_wait, second_wait) == (predictions.FIRST_ATTEMPT, predictions.ENGINE_TIMEOUT
                                         - predictions.FIRST_ATTEMPT) == (3.0, 27.0)
    assert len(first[REQUEST_ID]) == 32 and second[REQUEST_ID] == first[REQUEST_ID]  # one request, run once
    assert ATTEMPT not in first and second[ATTEMPT] == "2"
    assert first[SHADOWS_HEADER] == second[SHADOWS_HEADER] == SHADOWS_INLINE


def test_two_predicts_have_their_own_request_ids():
    one, other = _Replicas("answers"), _Replicas("answers")
    _ask(one), _ask(other)
    assert one.sent[0][3][REQUEST_ID] != other.sent[0][3][REQUEST_ID]
    assert len(one.sent) == 1 and ATTEMPT not in one.sent[0][3]  # answered at once: sent once


def test_nobody_listening_when_it_is_sent_again_is_the_deployer_s_word_at_once(monkeypatch):
    """A one-replica deployment whose replica died holding the predict and whose replacement keeps failing to start:
    the second attempt finds no replica and the deployer's route answers (a crash loop's 503 and Retry-After), 3 s
    after the request, not a 504 after 30 s."""
    resolves = []

    async def request(broker, subject, message, *, token, timeout, reply_model):
        resolves.append(message.name)
        return DeploymentRoute(deployment_id=1, name="digits", pipeline_name="p", workspace_id=7, status="Error",
                               pipeline_version="v1", input_schema=None, reason="CrashLoopBackOff: boom",
                               retry_after=4.2)

    monkeypatch.setattr(predictions, "request", request)
    nc = _Replicas("dies", "nobody")
    with pytest.raises(RailyardError) as caught:
        _ask(nc)
    assert caught.value.code == CRASH_LOOP and caught.value.status == 503, repr(caught.value)
    assert error_parts(caught.value)[1]["Retry-After"] == "5"
    assert len(nc.sent) == 2 and resolves == ["digits"]


def test_two_attempts_unanswered_are_a_504_after_the_engine_timeout_in_all():
    nc = _Replicas("dies", "dies")
    with pytest.raises(RailyardError) as caught:
        _ask(nc)
    assert (caught.value.status, caught.value.code) == (504, "upstream_timeout"), repr(caught.value)
    assert caught.value.msg == "the engine did not answer within 30s"
    assert sum(wait for _, _, wait, _ in nc.sent) == predictions.ENGINE_TIMEOUT and len(nc.sent) == 2


def test_an_image_sent_by_reference_stays_stored_for_the_second_attempt_and_goes_once_after_it():
    """An image above the bus limit goes by reference (an ML backend's task): both attempts name the one stored table,
    deleted once the second is answered, not after the first (the re-sent attempt would name an object gone)."""
    nc = _Replicas("dies", "answers")
    nc.max_payload = 0  # any table is above the limit
    events = []

    class Objects:
        async def put_bytes(self, bucket, key, body):
            events.append(("put", bucket, key))

        async def delete(self, bucket, key):
            events.append(("delete", bucket, key, len(nc.sent)))

    deps = _deps(nc)
    deps.objects = Objects()
    answer, _, _ = asyncio.run(predictions._ask_engine(deps, "digits", pa.table({"x": [1.0]}), by_reference=True,
                                                    token="alice's"))
    assert answer.equals(ANSWER)
    [(_, bucket, key)] = events[:1]
    (_, first_payload, _, first), (_, second_payload, _, second) = nc.sent
    assert first[TABLE_REF] == second[TABLE_REF] == key and first_payload == second_payload == b""
    assert second[ATTEMPT] == "2" and bucket == BUCKET_TABLES
    assert events[1:] == [("delete", BUCKET_TABLES, key, 2)]  # once, after both attempts
