"""A command's answer already encoded (shared.bus.EncodedData: auth's users/query, docs/performance.md item 57): the
reply around it is the one a model's data gets, held to the same bus limit, and request_encoded / reply_data_bytes
give back those bytes as they are, or the typed error an error reply carries. And reply_limit, the one place the bytes
a reply may carry are worked out (shared.bus.encode_reply, auth's early users/query check)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from shared.bus import (
    REPLY_HEADROOM,
    CallContext,
    EncodedData,
    encode_reply,
    reply_data_bytes,
    reply_error,
    reply_limit,
    reply_ok,
    request_encoded,
    run_command,
)
from shared.errors import NotFound, Unavailable
from shared.messages.auth import Users
from shared.messages.base import Command, Reply

DATA = {"next_cursor": "12.ab", "users": {"a": {"id": "a", "email": None, "name": "jürgen \"q\" \x01"}}}


def test_reply_limit():
    assert reply_limit(8 * 1024**2) == 8 * 1024**2 - REPLY_HEADROOM
    assert reply_limit(None) is None and reply_limit("8MB") is None  # not connected, or not the server's number


def test_an_encoded_answer_gets_the_reply_a_model_gets():
    encoded = EncodedData(orjson.dumps(DATA))
    assert encode_reply(encoded, None, "t") == encode_reply(reply_ok(DATA), None, "t")
    assert Reply.model_validate_json(encode_reply(encoded, 1024**2, "t")) == reply_ok(DATA)


def test_an_encoded_answer_above_the_bus_limit_is_reply_too_large():
    encoded = EncodedData(orjson.dumps({"users": {str(n): "x" * 100 for n in range(100)}}))
    size = len(encode_reply(encoded, None, "t"))
    assert Reply.model_validate_json(encode_reply(encoded, size + REPLY_HEADROOM, "t")).ok  # exactly fits
    refused = Reply.model_validate_json(encode_reply(encoded, size + REPLY_HEADROOM - 1, "t", "pass limit"))
    assert not refused.ok and refused.status == 422 and refused.error.code == "reply_too_large"
    assert refused.error.msg.endswith("a reply may carry on the bus: pass limit"), refused.error.msg


def test_run_command_leaves_an_encoded_answer_as_it_is():
    class Ask(Command):
        pass

    async def handler(cmd: Ask, ctx: CallContext) -> EncodedData:
        return EncodedData(b'{"users":{}}')

    assert asyncio.run(run_command(handler, Ask, {}, CallContext(subject="t"))) == b'{"users":{}}'


def test_the_data_bytes_of_a_reply():
    encoded = orjson.dumps(DATA)
    assert reply_data_bytes("auth.users.query", encode_reply(EncodedData(encoded), None, "t")) == encoded
    # a reply a model made: its data as pydantic encoded it
    assert orjson.loads(reply_data_bytes("auth.users.query", encode_reply(reply_ok(DATA), None, "t"))) == DATA
    # an envelope written otherwise (spaces, another order): read and encoded again
    spaced = b'{"status": 200, "ok": true, "data": {"users": {}}, "error": null}'
    assert reply_data_bytes("auth.users.query", spaced) == b'{"users":{}}'
    with pytest.raises(NotFound, match="no such workspace"):
        reply_data_bytes("auth.users.query", encode_reply(reply_error(NotFound("no such workspace")), None, "t"))
    for unreadable in (b"", b"not json", b'{"ok":true,"data":'):
        with pytest.raises(Unavailable, match="auth answered with a reply that could not be read"):
            reply_data_bytes("auth.users.query", unreadable)


def test_request_encoded_sends_as_request_does():
    sent = []

    async def request(payload, subject, headers, timeout):
        sent.append((payload, subject, headers, timeout))
        return SimpleNamespace(body=encode_reply(EncodedData(b'{"users":{}}'), None, subject))

    broker = SimpleNamespace(request=request)
    assert asyncio.run(request_encoded(broker, "auth.users.query", {"limit": 2}, timeout=3.0, token="t",
                                       reply_model=Users)) == b'{"users":{}}'
    assert sent == [({"limit": 2}, "auth.users.query", {"authorization": "Bearer t"}, 3.0)]


def test_an_encoded_answer_not_shaped_as_the_reply_model_is_not_passed_on():
    """reply_data_bytes passed any ok envelope's data on unread: a service's answer of the wrong shape (a list,
    another command's data, a required field missing) reached the gateway's caller as it was (the old code returned
    each of these bytes). Now the top level is checked against the route's reply model with byte searches (the fast
    path stays: no parse, item 57) and anything else is read and validated as `request` does: a typed 503."""
    user = b'{"id":"a","username":"a","email":"a@x.io","enabled":true,"createdTimestamp":1,"access":{}}'
    for right in (b'{"users":{}}', b'{"next_cursor":"12.ab","users":{"a":' + user + b"}}",
                  b'{"users":{"a":' + user + b'},"next_cursor":null}'):
        data = EncodedData(right)
        assert reply_data_bytes("auth.users.query", encode_reply(data, None, "t"), Users) == right  # as it is
    for wrong in (b"[1,2]", b'"users"', b"{}", b'{"workspaces":{}}', b'{"next_cursor":"12.ab"}',
                  b'{"next_cursor":"12.ab","user":{"users":{}}}'):
        with pytest.raises(Unavailable, match="auth answered with a reply that could not be read"):
            reply_data_bytes("auth.users.query", encode_reply(EncodedData(wrong), None, "t"), Users)
    # the right shape written otherwise (spaces): read, checked and encoded again, not refused
    spaced = encode_reply(EncodedData(b'{ "users": {"a": ' + user + b"}}"), None, "t")
    assert reply_data_bytes("auth.users.query", spaced, Users) == Users.model_validate_json(
        b'{"users":{"a":' + user + b"}}").model_dump_json().encode()


def test_a_required_field_inside_a_nested_object_is_not_taken_for_the_top_levels():
    """`,"users":` was looked for anywhere in the bytes, so an object whose first key is a field (`next_cursor`) and
    whose `users` key is only inside another value was passed on unread as a Users answer (cb16109's check; the
    reply has no top-level `users`). A required field found past an opened object or list is now read and checked:
    a typed 503. Auth's answers (the cursor a string, `users` right after it) keep the unread path."""
    inner = b'{"next_cursor":"12.ab","other":{"a":1,"users":{}}}'
    with pytest.raises(Unavailable, match="auth answered with a reply that could not be read"):
        reply_data_bytes("auth.users.query", encode_reply(EncodedData(inner), None, "t"), Users)  # cb16109: as it is
    listed = b'{"next_cursor":"12.ab","pages":[{"a":1,"users":{}}]}'
    with pytest.raises(Unavailable, match="auth answered with a reply that could not be read"):
        reply_data_bytes("auth.users.query", encode_reply(EncodedData(listed), None, "t"), Users)
    page = b'{"next_cursor":"12.ab","users":{"a":{"id":"a","users":{"b":1}}}}'  # not validated: passed on as it is
    assert reply_data_bytes("auth.users.query", encode_reply(EncodedData(page), None, "t"), Users) == page
