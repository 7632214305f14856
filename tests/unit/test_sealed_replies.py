"""Sealed replies (shared/sealed.py): a reply to the shared `client` inbox is readable by the caller that sent the key
only. The seal itself (altered or moved replies do not open), the key check, and both kinds of handler a `client` may
reach, `shared.bus.command` and the log store's raw responder, against a real nats-server (tests/local_nats.py): a
request to the shared inbox without a key is refused before the handler runs, with a key the reply on the wire is
ciphertext that `sealed_request` opens, and a service's own inbox is answered as before (no key, nothing sealed)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import nats
import pytest
from faststream.nats import NatsBroker

from services.log_store.app import _raw_responder
from shared import sealed
from shared.bus import CallContext, command
from shared.errors import Forbidden, InvalidRequest
from shared.messages.base import Message, Reply
from shared.raw_bus import ERROR_HEADER, error_headers
from tests.local_nats import local_nats_server, subscribed

SUBJECT = "_INBOX.client.abc.1"
SECRET = b'{"users": [{"email": "secret-alice@example.com"}]}'


def test_a_sealed_reply_opens_with_its_key_and_subject_only() -> None:
    key = sealed.new_key()
    body, headers = sealed.seal(key, SUBJECT, SECRET, {"content-type": "application/json", "x-page": '{"n": 1}'})
    assert set(headers) == {sealed.SEALED_HEADER} and b"secret-alice" not in body and b"users" not in body
    assert sealed.unseal(key, SUBJECT, body, headers) == (SECRET, {"content-type": "application/json",
                                                                  "x-page": '{"n": 1}'})
    # a typed error travels inside the seal too
    error_body, error_out = sealed.seal(key, SUBJECT, b"", error_headers(Forbidden("not yours: secret-x")))
    assert b"secret-x" not in error_body and ERROR_HEADER not in error_out
    assert ERROR_HEADER in sealed.unseal(key, SUBJECT, error_body, error_out)[1]
    for index in (0, len(body) // 2, len(body) - 1):  # altered anywhere: the ciphertext or the tag
        altered = bytearray(body)
        altered[index] ^= 1
        with pytest.raises(sealed.UnsealError):
            sealed.unseal(key, SUBJECT, bytes(altered), headers)
    with pytest.raises(sealed.UnsealError):  # moved to another inbox (associated data)
        sealed.unseal(key, "_INBOX.client.other.1", body, headers)
    with pytest.raises(sealed.UnsealError):  # another key
        sealed.unseal(sealed.new_key(), SUBJECT, body, headers)
    nonce = headers[sealed.SEALED_HEADER]
    for marker in (nonce[:-2] + ("AA" if not nonce.endswith("AA") else "BB"), "2" + nonce[1:], "1.", "", "1.!!"):
        with pytest.raises(sealed.UnsealError):
            sealed.unseal(key, SUBJECT, body, {sealed.SEALED_HEADER: marker})
    # two seals of the same reply differ (a fresh nonce each)
    assert sealed.seal(key, SUBJECT, SECRET, None)[0] != sealed.seal(key, SUBJECT, SECRET, None)[0]


def test_the_key_check() -> None:
    key = sealed.new_key()
    text = sealed.encode_key(key)
    assert len(text) == 43
    assert sealed.reply_key({sealed.REPLY_KEY_HEADER: text}, SUBJECT) == key
    assert sealed.reply_key({sealed.REPLY_KEY_HEADER: text + "="}, SUBJECT) == key
    assert sealed.reply_key({sealed.REPLY_KEY_HEADER.lower(): text}, SUBJECT) == key
    assert sealed.reply_key({sealed.REPLY_KEY_HEADER: text}, "_INBOX.gateway.x.1") == key  # asked for: sealed
    # no key: refused for the shared client inbox only
    for headers in (None, {}, {"authorization": "Bearer x"}):
        with pytest.raises(sealed.ReplyKeyRequired) as raised:
            sealed.reply_key(headers, SUBJECT)
        assert (raised.value.status, raised.value.code) == (400, "reply_key_required")
        assert sealed.REPLY_KEY_HEADER in raised.value.msg and "base64url" in raised.value.msg
        assert isinstance(raised.value, InvalidRequest)
    for reply in ("_INBOX.gateway.x.1", "_INBOX.clientele.x", "_INBOX.x", None, ""):
        assert sealed.reply_key({}, reply) is None
    for bad in ("", "short", text[:-1], text + "A", text + "==", base64.b64encode(b"\xfb" * 32).decode(),
                base64.urlsafe_b64encode(b"k" * 16).decode(), text[:-1] + "."):
        with pytest.raises(sealed.BadReplyKey) as raised:
            sealed.reply_key({sealed.REPLY_KEY_HEADER: bad}, SUBJECT)
        assert (raised.value.status, raised.value.code) == (400, "bad_reply_key"), bad


class Ask(Message):
    name: str = ""


@pytest.fixture
def nats_url(tmp_path: Path):
    with local_nats_server(tmp_path) as url:
        yield url


async def _until(condition, wait: float = 30.0) -> None:
    """Until `condition()` (the eavesdropper's copies arrive on its own connection's task), at most `wait` s."""
    for _ in range(int(wait / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


async def _eavesdrop(nc, seen: list) -> None:
    async def keep(msg) -> None:
        seen.append(msg)

    await nc.subscribe("_INBOX.client.>", cb=keep)
    await subscribed(nc)


async def test_commands_seal_replies_to_the_client_inbox_and_refuse_them_without_a_key(nats_url: str) -> None:
    calls: list[CallContext] = []
    broker = NatsBroker(nats_url, max_reconnect_attempts=0)

    @command(broker, "auth.secret.get", service="auth")
    async def secret(cmd: Ask, ctx: CallContext) -> dict:
        calls.append(ctx)
        if cmd.name == "refuse":
            raise Forbidden("secret-refusal of alice")
        return {"email": "secret-alice@example.com"}

    caller = await nats.connect(nats_url, inbox_prefix="_INBOX.client", max_reconnect_attempts=0)
    service_caller = await nats.connect(nats_url, inbox_prefix="_INBOX.gateway", max_reconnect_attempts=0)
    eavesdropper = await nats.connect(nats_url, max_reconnect_attempts=0)
    seen: list = []
    try:
        await broker.start()
        await subscribed(broker.config.connection_state.connection)  # the SUB at the server before a request
        await _eavesdrop(eavesdropper, seen)
        opened = await sealed.sealed_request(caller, "auth.secret.get", b"{}", headers={"authorization": "Bearer t"},
                                             timeout=30)
        assert Reply.model_validate_json(opened.data).data == {"email": "secret-alice@example.com"}
        assert calls[-1].token == "t" and sealed.REPLY_KEY_HEADER not in calls[-1].headers  # the key stays out
        refused = await sealed.sealed_request(caller, "auth.secret.get", b'{"name": "refuse"}', timeout=30)
        assert Reply.model_validate_json(refused.data).error.msg == "secret-refusal of alice"
        await _until(lambda: len(seen) >= 2)
        assert len(seen) == 2
        for msg in seen:  # what every other client connection sees: ciphertext
            assert b"secret" not in msg.data and "secret" not in json.dumps(msg.headers)
            assert sealed.is_sealed(msg.headers)
            with pytest.raises(ValueError):
                json.loads(msg.data)
        # without a key, or with a malformed one: refused, and the handler did not run
        before = len(calls)
        for headers, code in ((None, "reply_key_required"), ({sealed.REPLY_KEY_HEADER: "not-a-key"}, "bad_reply_key")):
            reply = Reply.model_validate_json((await caller.request("auth.secret.get", b"{}", timeout=30,
                                                                    headers=headers)).data)
            assert (reply.ok, reply.status, reply.error.code) == (False, 400, code)
            assert sealed.REPLY_KEY_HEADER in reply.error.msg
        assert len(calls) == before
        # a service's own inbox: no key, nothing sealed
        plain = await service_caller.request("auth.secret.get", b"{}", timeout=30)
        assert not sealed.is_sealed(plain.headers) and Reply.model_validate_json(plain.data).ok
        assert len(calls) == before + 1
    finally:
        await broker.stop()
        for nc in (caller, service_caller, eavesdropper):
            await nc.close()


async def test_the_log_store_responder_seals_and_refuses_the_same_way(nats_url: str) -> None:
    service = await nats.connect(nats_url, max_reconnect_attempts=0)
    caller = await nats.connect(nats_url, inbox_prefix="_INBOX.client", max_reconnect_attempts=0)
    eavesdropper = await nats.connect(nats_url, max_reconnect_attempts=0)
    calls: list = []
    seen: list = []

    async def work(msg, token):
        calls.append(token)
        if msg.data == b"refuse":
            raise Forbidden("secret-refusal")
        return b"ARROW secret-rows", {"x-page": '{"cursor": "secret-cursor"}'}

    try:
        await service.subscribe("log_store.logs.query", cb=_raw_responder(service, work, "ask for less"))
        await subscribed(service)
        await _eavesdrop(eavesdropper, seen)
        opened = await sealed.sealed_request(caller, "log_store.logs.query", b"{}", timeout=30,
                                             headers={"authorization": "Bearer t"})
        assert (opened.data, opened.headers) == (b"ARROW secret-rows", {"x-page": '{"cursor": "secret-cursor"}'})
        refused = await sealed.sealed_request(caller, "log_store.logs.query", b"refuse", timeout=30)
        assert json.loads(refused.headers[ERROR_HEADER])["msg"] == "secret-refusal"
        await _until(lambda: len(seen) >= 2)
        assert len(seen) == 2 and calls == ["t", None]
        for msg in seen:
            assert b"secret" not in msg.data and "secret" not in json.dumps(msg.headers)
        for headers, code in ((None, "reply_key_required"), ({sealed.REPLY_KEY_HEADER: "x" * 44}, "bad_reply_key")):
            reply = await caller.request("log_store.logs.query", b"{}", timeout=30, headers=headers)
            error = json.loads(reply.headers[ERROR_HEADER])
            assert (error["status"], error["code"]) == (400, code) and reply.data == b""
        assert calls == ["t", None]  # work never ran for them
        plain = await service.request("log_store.logs.query", b"{}", timeout=30)  # its own inbox: as before
        assert plain.data == b"ARROW secret-rows" and not sealed.is_sealed(plain.headers)
    finally:
        for nc in (service, caller, eavesdropper):
            await nc.close()


async def test_the_caller_refuses_any_reply_that_was_not_sealed(nats_url: str) -> None:
    """A reply to a request that sent a valid key arrives sealed or is refused, an ok answer and a refusal alike: an
    unsealed refusal is what any service may publish into a caller's inbox (`_INBOX.>`), so a forged 403 or a forged
    `reply_key_required` is not passed on as the service's answer, and nothing it says reaches the caller."""
    service = await nats.connect(nats_url, max_reconnect_attempts=0)
    caller = await nats.connect(nats_url, inbox_prefix="_INBOX.client", max_reconnect_attempts=0)
    forged_error = Reply(ok=False, status=403, error={"code": "forbidden", "msg": "forged: call evil.example"})
    unsealed = {
        "auth.old.get": (b'{"ok":true,"data":{"email":"a@example.com"}}', None),  # an older version, say
        "auth.forged.get": (forged_error.model_dump_json().encode(), None),  # a command's refusal, forged
        "auth.forged_key.get": (Reply(ok=False, status=400, error={
            "code": "reply_key_required", "msg": "forged: call evil.example"}).model_dump_json().encode(), None),
        "log_store.forged.query": (b"", error_headers(Forbidden("forged: call evil.example"))),  # a raw refusal
    }

    def answer(subject: str):
        async def respond(msg) -> None:
            assert sealed.REPLY_KEY_HEADER in msg.headers
            body, headers = unsealed[subject]
            await service.publish(msg.reply, body, headers=headers)
        return respond

    try:
        for subject in unsealed:
            await service.subscribe(subject, cb=answer(subject))
        await subscribed(service)
        for subject in unsealed:
            with pytest.raises(sealed.UnsealedReply) as refused:
                await sealed.sealed_request(caller, subject, b"{}", timeout=30)
            assert (refused.value.status, refused.value.code) == (502, "unsealed_reply")
            assert "arrived unsealed" in str(refused.value) and "evil" not in str(refused.value)
            assert isinstance(refused.value, sealed.UnsealError)  # who catches the seal's errors catches this one
    finally:
        for nc in (service, caller):
            await nc.close()


def test_a_service_loads_cryptography_with_its_first_sealed_reply_not_at_start() -> None:
    """shared.bus imports shared.sealed; services load cryptography (~6 MiB) when they first need it
    (docs/performance.md), so importing the bus must not."""
    import subprocess
    import sys

    code = ("import sys, shared.bus, shared.sealed as s; assert 'cryptography' not in sys.modules; "
            "s.seal(s.new_key(), 'x', b'', None); assert 'cryptography' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
