"""The command wrapper and request helper, in memory with FastStream's TestNatsBroker."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from shared.bus import CallContext, command, request
from shared.data_errors import refused_request_value
from shared.errors import Conflict, InvalidRequest, RailyardError
from shared.messages.base import Command, Message


class Greet(Command):
    name: str


class Label(Command):
    labels: dict[str, Any] = {}


class Window(Command):
    start_ms: int
    count: int


class Greeting(Message):
    text: str
    token: str | None


def make_broker() -> NatsBroker:
    broker = NatsBroker()

    @command(broker, "test.greet", service="gateway")
    async def greet(cmd: Greet, ctx: CallContext) -> Greeting:
        if cmd.name == "taken":
            raise Conflict("name 'taken' is already in use")
        if cmd.name == "boom":
            raise ValueError("secret internal detail: SELECT * FROM users")
        if cmd.name == "huge":
            raise asyncpg.exceptions.NumericValueOutOfRangeError("integer out of range in SELECT * FROM users")
        return Greeting(text=f"hello {cmd.name}", token=ctx.token)

    @command(broker, "test.label", service="gateway")
    async def label(cmd: Label, ctx: CallContext) -> dict:
        raise AssertionError("a command the boundary refuses never reaches its handler")

    return broker


async def test_command_replies_with_data_and_sees_the_token():
    broker = make_broker()
    async with TestNatsBroker(broker) as br:
        reply = await request(br, "test.greet", Greet(name="ada"), token="tok123", reply_model=Greeting)
    assert reply == Greeting(text="hello ada", token="tok123")


async def test_invalid_message_is_invalid_request_naming_the_field():
    broker = make_broker()
    async with TestNatsBroker(broker) as br:
        with pytest.raises(InvalidRequest, match="name"):
            await request(br, "test.greet", {"nam": "ada"})


async def test_railyard_error_keeps_its_type_and_message():
    broker = make_broker()
    async with TestNatsBroker(broker) as br:
        with pytest.raises(Conflict) as caught:
            await request(br, "test.greet", Greet(name="taken"))
    assert caught.value.status == 409 and "already in use" in caught.value.msg


async def test_unexpected_error_is_internal_without_details():
    broker = make_broker()
    async with TestNatsBroker(broker) as br:
        with pytest.raises(RailyardError) as caught:
            await request(br, "test.greet", Greet(name="boom"))
    assert caught.value.code == "internal" and caught.value.status == 500
    assert "SELECT" not in caught.value.msg and "secret" not in caught.value.msg


async def test_a_data_error_no_field_of_the_request_explains_is_internal_without_sql():
    # "integer out of range" while no field of the command is beyond an integer: our own SQL's fault, not the
    # caller's (tests/integration/test_bus_data_errors.py has both sides against a real PostgreSQL)
    broker = make_broker()
    async with TestNatsBroker(broker) as br:
        with pytest.raises(RailyardError) as caught:
            await request(br, "test.greet", Greet(name="huge"))
    assert caught.value.status == 500 and caught.value.code == "internal" and "SELECT" not in caught.value.msg


@pytest.mark.parametrize(("labels", "said"), [
    ({"score": float("nan")}, "must be a finite number: nan"),
    ({"score": [float("inf")]}, "must be a finite number: inf"),
    ({"note": "\ud800"}, "must not contain a lone surrogate"),
    ({"\udfff": 1}, "must not contain a lone surrogate"),
])
async def test_what_the_bus_decodes_but_no_database_stores_is_refused_before_the_handler(labels, said):
    # the bus's JSON decoder (the standard library) reads NaN, Infinity and "\ud800"; jsonb and text refuse them,
    # which came back as a 500 from the service's SQL (tests/integration/test_bus_data_errors.py: the real jsonb)
    broker = make_broker()
    async with TestNatsBroker(broker) as br:
        with pytest.raises(InvalidRequest) as caught:
            # bytes as another process's json.dumps writes them ("\ud800" escaped, NaN bare)
            await request(br, "test.label", json.dumps({"labels": labels}).encode())  # type: ignore[arg-type]
    assert caught.value.status == 400 and caught.value.msg.startswith("labels: ") and said in caught.value.msg


def test_a_refused_number_is_blamed_only_on_the_field_holding_it():
    cmd = Window(start_ms=1_733_000_000_000, count=5)
    computed = asyncpg.exceptions.DataError(
        "invalid input for query argument $2: 50000000000 (value out of int32 range)")
    assert refused_request_value(computed, cmd) is None  # our count * 10**10: no field holds it, start_ms is innocent
    sent = asyncpg.exceptions.DataError(
        "invalid input for query argument $1: 1733000000000 (value out of int32 range)")
    assert refused_request_value(sent, cmd).msg == (
        "start_ms: 1733000000000 is out of range here: must be between -2147483648 and 2147483647")
    assert refused_request_value(asyncpg.exceptions.NumericValueOutOfRangeError("integer out of range"), cmd) is None


class Titled(Command):
    name: str
    title: str
    tags: list[str] = []


def test_a_text_too_long_is_blamed_on_a_field_only_when_no_other_is_as_long():
    # PostgreSQL's 22001 names neither the value nor the column
    too_long = asyncpg.exceptions.StringDataRightTruncationError("value too long for type character varying(8)")
    assert refused_request_value(too_long, Titled(name="short", title="t" * 9)).msg == (
        "title: too long (9 characters): at most 8 here")
    assert refused_request_value(too_long, Titled(name="short", title="t", tags=["ok", "x" * 20])).msg == (
        "tags.1: too long (20 characters): at most 8 here")
    several = refused_request_value(too_long, Titled(name="n" * 12, title="t" * 9)).msg
    assert several == ("a text of this request is longer than the 8 characters allowed where it is stored; the"
                       " database does not say which, and 2 fields are longer than that: name (12 characters),"
                       " title (9 characters)")
    assert not several.startswith("name:")  # the first long text is not blamed
    many = refused_request_value(too_long, Titled(name="n" * 9, title="t" * 9, tags=["x" * 9] * 5)).msg
    assert many.endswith("tags.2 (9 characters) and 2 more") and "7 fields" in many
    assert refused_request_value(too_long, Titled(name="short", title="t")) is None  # a text of ours


def test_handler_must_be_typed_by_a_message_model():
    broker = NatsBroker()
    with pytest.raises(TypeError, match="Message model"):
        @command(broker, "test.untyped", service="gateway")
        async def untyped(cmd: dict, ctx: CallContext) -> None: ...


def test_a_reply_above_the_bus_limit_becomes_a_typed_reply_too_large():
    # NATS refuses a message above its max_payload: published as it is, the reply was only logged and the caller
    # waited for a 504 (tests/integration/test_dataset_versions_read.py sends one through the real stack)
    from shared.bus import REPLY_HEADROOM, encode_reply, reply_ok
    from shared.errors import ReplyTooLarge
    from shared.messages.base import Reply

    reply = reply_ok({"files": ["x" * 100] * 1000})  # ~104 KB of JSON
    assert encode_reply(reply, None, "test.list") == encode_reply(reply, 1024**2, "test.list")
    assert Reply.model_validate_json(encode_reply(reply, 1024**2, "test.list")) == reply
    size = len(encode_reply(reply, None, "test.list"))
    assert Reply.model_validate_json(encode_reply(reply, size + REPLY_HEADROOM, "test.list")).ok  # exactly fits
    refused = Reply.model_validate_json(encode_reply(reply, size + REPLY_HEADROOM - 1, "test.list",
                                                     "pass limit and follow next_cursor"))
    assert not refused.ok and (refused.status, refused.error.code) == (ReplyTooLarge.status, "reply_too_large") == (
        422, "reply_too_large")
    assert refused.error.msg == ("the answer would be 100.6 KiB, above the 100.6 KiB a reply may carry on the bus: "
                                 "pass limit and follow next_cursor")
    generic = Reply.model_validate_json(encode_reply(reply, 64 * 1024, "test.list"))
    assert generic.error.msg.endswith("above the 60.0 KiB a reply may carry on the bus: ask for less: a page (limit "
                                      "and cursor where the command has them) or narrower filters")


async def test_a_command_above_the_bus_limit_is_a_413_not_a_500():
    # nats-py refuses to publish a message above the server's max_payload (MaxPayloadError) before sending it
    import nats.errors

    from shared.errors import PayloadTooLarge

    class RefusingBroker:
        async def request(self, *args: Any, **kwargs: Any) -> Any:
            raise nats.errors.MaxPayloadError

    with pytest.raises(PayloadTooLarge, match="the command to registry is above the bus payload limit"):
        await request(RefusingBroker(), "registry.models.list", {"workspace_id": 1})  # type: ignore[arg-type]
