"""The delivery policy of the durable event consumers (shared/consumers.py): what a failed delivery becomes, with
fake messages and pools (tests/integration/test_dead_letters.py runs it against the real stream)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from services.workflow_lineage.handlers import decode_event
from shared.consumers import (
    ERROR_KEEP,
    PAYLOAD_KEEP,
    DeliveryPolicy,
    Undecodable,
    durable_subscriber,
    json_model,
    record_dead_letter,
    settle,
    verdict,
)
from shared.messages.registry import ModelUploaded
from shared.settings import Settings

POLICY = DeliveryPolicy(max_deliver=4, backoff=1.0, backoff_max=3.0)


def test_an_undecodable_message_is_dead_at_its_first_delivery():
    assert verdict(POLICY, 1, permanent=True).dead


def test_a_failing_handler_is_retried_with_a_doubling_capped_delay_up_to_max_deliver():
    assert [verdict(POLICY, n, permanent=False) for n in (1, 2, 3)] == [(False, 1.0), (False, 2.0), (False, 3.0)]
    assert verdict(POLICY, 4, permanent=False).dead
    assert verdict(POLICY, 9, permanent=False).dead  # delivered more often before (an older consumer): dead now


def test_the_policy_comes_from_the_settings(monkeypatch):
    assert DeliveryPolicy.from_settings(Settings().nats) == DeliveryPolicy(10, 2.0, 300.0)
    monkeypatch.setenv("RAILYARD_NATS__CONSUMER_MAX_DELIVER", "3")
    monkeypatch.setenv("RAILYARD_NATS__CONSUMER_BACKOFF", "0.5")
    assert DeliveryPolicy.from_settings(Settings().nats) == DeliveryPolicy(3, 0.5, 300.0)


def test_decoders_refuse_what_is_not_their_model():
    decode = json_model(ModelUploaded)
    for data in (b"\xff\xfe", b"not json", b"[1, 2]", b'{"model_id": "x"}'):
        with pytest.raises(Undecodable):
            decode(data)
    with pytest.raises(Undecodable):
        json_model(None)(b"[1]")
    assert json_model(None)(b'{"a": 1}') == {"a": 1}


def test_lineage_takes_a_json_object_with_an_event_id_as_an_event():
    event = {"event_id": "5d0c3b8e-7a53-4c9a-9a43-3c1e0b5f6a10", "occurred_at": "2026-12-03T10:00:00Z", "x": 1}
    assert decode_event(json.dumps(event).encode()) == event
    for bad in ({"x": 1}, {"event_id": "not-a-uuid"}, {**event, "occurred_at": "yesterday"}):
        with pytest.raises(Undecodable):
            decode_event(json.dumps(bad).encode())


STORED = datetime(2026, 12, 3, 18, 0, 0, 123456, tzinfo=UTC)  # a message's time in the stream


class FakeMessage:
    def __init__(self, delivered: int, data: bytes = b"{}", stored: datetime = STORED) -> None:
        self.raw_message = SimpleNamespace(
            subject="events.model.uploaded", data=data, headers={"Nats-Msg-Id": "m1"},
            metadata=SimpleNamespace(num_delivered=delivered, stream="EVENTS", timestamp=stored,
                                     sequence=SimpleNamespace(stream=17)))
        self.outcome: tuple | None = None

    async def nack(self, delay=None) -> None:
        self.outcome = ("nak", delay)

    async def reject(self) -> None:
        self.outcome = ("term",)


class FakePool:
    def __init__(self, fail: bool = False) -> None:
        self.rows: dict[tuple[str, int], tuple] = {}
        self.fail = fail

    async def fetchval(self, sql: str, *args):
        if self.fail:
            raise OSError("PostgreSQL away")
        assert "ON CONFLICT (durable, stream_seq, stream_time)" in sql
        key = (args[0], args[1], args[9])  # durable, stream sequence, stream time: the table's primary key
        if key in self.rows:
            return None
        self.rows[key] = args
        return True


async def test_a_transient_failure_is_redelivered_later_and_the_last_one_is_a_dead_letter(caplog):
    pool = FakePool()
    message = FakeMessage(2)
    await settle(message, "d", lambda: pool, POLICY, "boom", permanent=False)
    assert message.outcome == ("nak", 2.0) and not pool.rows
    message = FakeMessage(4)
    with caplog.at_level("WARNING", "railyard.consumers"):
        await settle(message, "d", lambda: pool, POLICY, "boom", permanent=False)
    assert message.outcome == ("term",)
    (row,) = pool.rows.values()
    assert row[:6] == ("d", 17, "EVENTS", "events.model.uploaded", 4, "boom")
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "dead letter of d: events.model.uploaded #17 (delivery 4): boom"]


async def test_a_dead_letter_is_recorded_once_and_reported_once(caplog):
    pool = FakePool()
    with caplog.at_level("INFO", "railyard.consumers"):
        for _ in range(2):  # a redelivery after a crash between the insert and the term
            message = FakeMessage(1)
            await settle(message, "d", lambda: pool, POLICY, "not JSON", permanent=True)
            assert message.outcome == ("term",)
    assert len(pool.rows) == 1
    assert [r.levelname for r in caplog.records] == ["ERROR"]


async def test_failures_log_warning_with_traceback_first_then_info_and_the_dead_letter_is_an_error(caplog):
    # before, every failure was INFO and the dead letter a WARNING ~13 minutes later: an alert on ERROR saw nothing
    pool = FakePool()
    with caplog.at_level("INFO", "railyard.consumers"):
        for delivered in range(1, POLICY.max_deliver + 1):
            try:
                raise RuntimeError("database away")
            except RuntimeError:
                await settle(FakeMessage(delivered), "d", lambda: pool, POLICY, "RuntimeError: database away",
                             permanent=False)
        try:
            raise RuntimeError("database away")
        except RuntimeError:  # the last delivery again, its row not writable: an ERROR each time, redelivered
            await settle(FakeMessage(POLICY.max_deliver + 1), "d2", lambda: FakePool(fail=True), POLICY,
                         "RuntimeError: database away", permanent=False)
    levels = [(r.levelname, bool(r.exc_info)) for r in caplog.records]
    assert levels == [("WARNING", True), ("INFO", False), ("INFO", False), ("ERROR", False), ("ERROR", False)]
    assert repr(caplog.records[0].exc_info[1]) == "RuntimeError('database away')"
    assert caplog.records[-1].getMessage() == (
        "could not record the dead letter of d2: events.model.uploaded #17 (delivery 5: RuntimeError: database away):"
        " PostgreSQL away; redelivering it")


async def test_the_first_failure_this_process_sees_is_the_warning_whatever_the_delivery_count(caplog):
    # delivery 1 went past its ack wait (lineage's is 5 s) or its process died: delivery 2's failure is the first
    # anyone sees; by the delivery count alone it was an INFO line without its traceback
    pool = FakePool()
    stored = STORED + timedelta(seconds=7)  # a message no other test settles
    with caplog.at_level("INFO", "railyard.consumers"):
        for delivered in (2, 3):
            try:
                raise RuntimeError("database away")
            except RuntimeError:
                await settle(FakeMessage(delivered, stored=stored), "late", lambda: pool, POLICY,
                             "RuntimeError: database away", permanent=False)
        try:
            raise RuntimeError("database away")
        except RuntimeError:  # another message of the same durable: its own first failure
            await settle(FakeMessage(3, stored=stored + timedelta(seconds=1)), "late", lambda: pool, POLICY,
                         "RuntimeError: database away", permanent=False)
    assert [(r.levelname, bool(r.exc_info)) for r in caplog.records] == [
        ("WARNING", True), ("INFO", False), ("WARNING", True)]
    assert repr(caplog.records[0].exc_info[1]) == "RuntimeError('database away')"


async def test_a_stream_made_again_cannot_pass_a_new_dead_letter_for_an_old_one():
    # a deleted and recreated EVENTS stream numbers from 1 again: keyed by (durable, sequence) alone, a new poison
    # message at an old one's sequence "was recorded" and was terminated without its row
    pool = FakePool()
    old = FakeMessage(1, data=b"old poison")
    await settle(old, "d", lambda: pool, POLICY, "not JSON", permanent=True)
    again = FakeMessage(2, data=b"old poison")  # the same message redelivered: same sequence, same stream time
    await settle(again, "d", lambda: pool, POLICY, "not JSON", permanent=True)
    new = FakeMessage(1, data=b"new poison", stored=STORED + timedelta(days=3))  # same sequence, another stream
    await settle(new, "d", lambda: pool, POLICY, "not JSON", permanent=True)
    assert old.outcome == again.outcome == new.outcome == ("term",)
    assert sorted(row[6] for row in pool.rows.values()) == [b"new poison", b"old poison"]
    assert {row[9] for row in pool.rows.values()} == {STORED, STORED + timedelta(days=3)}


async def test_a_dead_letter_that_cannot_be_recorded_is_not_terminated():
    message = FakeMessage(4)
    await settle(message, "d", lambda: FakePool(fail=True), POLICY, "boom", permanent=False)
    assert message.outcome == ("nak", 3.0)


async def test_a_dead_letter_keeps_a_bounded_payload_and_error_with_the_full_size():
    pool = FakePool()
    message = FakeMessage(1, data=b"x" * (PAYLOAD_KEEP + 10))
    assert await record_dead_letter(pool, "d", message.raw_message, "e" * (ERROR_KEEP * 2))
    (row,) = pool.rows.values()
    assert len(row[5]) == ERROR_KEEP and len(row[6]) == PAYLOAD_KEEP and row[7] == PAYLOAD_KEEP + 10
    assert json.loads(row[8]) == {"Nats-Msg-Id": "m1"}


async def test_a_message_delivered_thousands_of_times_still_gets_a_capped_delay():
    # a message delivered thousands of times before this policy (FastStream's nak without a delay), or a dead letter
    # whose row could not be written for days: 2 ** n overflowed a float, settle raised and FastStream nak'ed the
    # message without a delay, redelivering it at once, in a loop, while PostgreSQL was away
    assert DeliveryPolicy().delay(7201) == 300.0
    message = FakeMessage(7201)
    await settle(message, "d", lambda: FakePool(fail=True), POLICY, "boom", permanent=False)
    assert message.outcome == ("nak", 3.0)


async def test_a_dead_letter_keeps_its_headers_as_they_were_without_nuls():
    # a header's own backslash-u0000 text was cut out of the JSON with the NUL escapes: corrupted ("a\b"), or the
    # JSON broken (its row never written, so the message never terminated)
    pool = FakePool()
    message = FakeMessage(1)
    message.raw_message.headers = {"path": "C:\\u0000", "text": "a\\u0000b", "nul": "c\x00d"}
    assert await record_dead_letter(pool, "d", message.raw_message, "not JSON")
    (row,) = pool.rows.values()
    assert json.loads(row[8]) == {"path": "C:\\u0000", "text": "a\\u0000b", "nul": "cd"}


@pytest.mark.parametrize("name", ["CONSUMER_BACKOFF", "CONSUMER_BACKOFF_MAX"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "1e12"])
def test_a_backoff_that_is_not_a_finite_delay_of_at_most_a_day_is_refused(monkeypatch, name, value):
    # an infinite (or absurd) delay failed settle's nak (int nanoseconds), and FastStream then nak'ed without one
    monkeypatch.setenv(f"RAILYARD_NATS__{name}", value)
    with pytest.raises(ValidationError):
        Settings()


def test_a_consumer_needs_at_least_one_delivery(monkeypatch):
    monkeypatch.setenv("RAILYARD_NATS__CONSUMER_MAX_DELIVER", "0")
    with pytest.raises(ValidationError):
        Settings()


class FakeRouter:
    def subscriber(self, *args, **kwargs):
        return lambda subscriber: subscriber


class DeliveredMessage(FakeMessage):
    async def ack(self) -> None:
        self.outcome = self.outcome or ("ack",)


@pytest.mark.parametrize("decode", [json_model(ModelUploaded), json_model(None), decode_event])
async def test_json_nested_past_the_recursion_limit_is_a_dead_letter_at_once(decode):
    # json.loads raises RecursionError (not a ValueError) for ~100k nested brackets: it escaped the subscriber, and
    # FastStream's NACK_ON_ERROR nak'ed the message without a delay, for ever
    pool = FakePool()
    handled = []

    async def handler(value, message) -> None:
        handled.append(value)

    subscriber = durable_subscriber(FakeRouter(), "events.model.uploaded", durable="d", service="auth", decode=decode,
                                    pool=lambda: pool, policy=POLICY, ack_wait=5.0, batch_size=1, title="t",
                                    description="d")(handler)
    for body in (b"[" * 100_000, b'{"a": ' * 100_000):
        message = DeliveredMessage(1, data=body)
        await subscriber(body, message)
        assert message.outcome == ("term",) and not handled
    assert [row[5].split(":")[0] for row in pool.rows.values()] == ["RecursionError"]


async def test_a_decoder_that_fails_otherwise_makes_a_dead_letter_not_an_endless_nak():
    pool = FakePool()

    def decode(data: bytes):
        raise KeyError("event_id")

    async def handler(value, message) -> None:
        raise AssertionError("not decoded, not handled")

    subscriber = durable_subscriber(FakeRouter(), "events.x", durable="d", service="auth", decode=decode,
                                    pool=lambda: pool, policy=POLICY, ack_wait=5.0, batch_size=1, title="t",
                                    description="d")(handler)
    message = DeliveredMessage(1)
    await subscriber(b"{}", message)
    assert message.outcome == ("term",)
    (row,) = pool.rows.values()
    assert row[5] == "KeyError: 'event_id'"


async def test_an_event_that_is_not_the_subscriber_s_model_is_redelivered_then_a_dead_letter():
    # valid JSON, not this model: events refuse unknown fields, so a publisher upgraded before this consumer (a new
    # field) was terminated at its first delivery and lost; now it is redelivered with the backoff (read once the
    # consumer is upgraded too) and kept as a dead letter at its last delivery
    newer = json.loads(ModelUploaded(workspace_id=1, model_id=2, model_version="5d0c3b8e-7a53-4c9a-9a43-3c1e0b5f6a10",
                                     name="m", framework="onnx", status="ready").model_dump_json())
    body = json.dumps({**newer, "a_newer_field": 1}).encode()
    pool = FakePool()
    handled = []

    async def handler(value, message) -> None:
        handled.append(value)

    subscriber = durable_subscriber(FakeRouter(), "events.model.uploaded", durable="d", service="auth",
                                    decode=json_model(ModelUploaded), pool=lambda: pool, policy=POLICY, ack_wait=5.0,
                                    batch_size=1, title="t", description="d")(handler)
    first = DeliveredMessage(1, data=body)
    await subscriber(body, first)
    assert first.outcome == ("nak", 1.0) and not pool.rows and not handled
    last = DeliveredMessage(POLICY.max_deliver, data=body)
    await subscriber(body, last)
    assert last.outcome == ("term",) and not handled
    (row,) = pool.rows.values()
    assert row[4] == POLICY.max_deliver and "extra_forbidden" in row[5]
    for permanent in (b"not json", b"[1]"):  # these never decode: dead at once
        message = DeliveredMessage(1, data=permanent)
        await subscriber(permanent, message)
        assert message.outcome == ("term",)
