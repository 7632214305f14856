"""`shared.bus.request` against a real nats-server (tests/local_nats.py): a reply the caller cannot read, whether
its envelope is not a Reply or its data is not the reply model the caller expects (a service of another version,
a foreign responder on the subject), is a typed 503 naming the service. The data's check ran outside the try, so
a gateway asking auth for its signing keys (reply_model=SigningKeys) met an uncaught ValidationError: a 500 with a
stack trace."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from faststream.nats import NatsBroker

from shared.bus import raw_request, request
from shared.errors import NotFound, Unavailable
from shared.messages.base import Message
from tests.local_nats import local_nats_server, subscribed


class Keys(Message):
    keys: list[dict]


@pytest.fixture
def nats_url(tmp_path: Path):
    with local_nats_server(tmp_path) as url:
        yield url


REPLIES = {
    "auth.keys.get": b'{"ok": true, "data": {"keys": "not a list"}}',  # the envelope reads, its data does not
    "auth.garbled.get": b"\x00not json",
    "auth.other.get": b'{"ok": "perhaps", "data": []}',
    "auth.good.get": b'{"ok": true, "data": {"keys": [{"kid": "a"}]}}',
    "auth.missing.get": b'{"ok": false, "status": 404, "error": {"code": "not_found", "msg": "no such key"}}',
}


async def test_an_unreadable_reply_is_a_typed_503_naming_the_service(nats_url: str) -> None:
    responder = await nats.connect(nats_url, max_reconnect_attempts=0)
    broker = NatsBroker(nats_url, max_reconnect_attempts=0)

    async def answer(msg) -> None:
        await msg.respond(REPLIES[msg.subject])

    try:
        await responder.subscribe("auth.>", cb=answer)
        await subscribed(responder)  # the SUB is at the server before the first request
        await broker.start()
        for subject in ("auth.keys.get", "auth.garbled.get", "auth.other.get"):
            with pytest.raises(Unavailable) as raised:
                await request(broker, subject, {}, timeout=5, reply_model=Keys)
            assert (raised.value.status, raised.value.code) == (503, "unavailable")
            assert raised.value.msg == "auth answered with a reply that could not be read"
        # a readable reply and a service's own error are unchanged
        assert await request(broker, "auth.good.get", {}, timeout=5, reply_model=Keys) == Keys(keys=[{"kid": "a"}])
        with pytest.raises(NotFound, match="no such key"):
            await request(broker, "auth.missing.get", {}, timeout=5, reply_model=Keys)
    finally:
        await broker.stop()
        await responder.close()


async def test_a_request_while_the_bus_is_away_is_a_typed_503(tmp_path: Path) -> None:
    """NATS away: nats-py keeps what is published in its reconnect buffer, and once that is full (2 MiB by
    default: moments into an outage for a busy gateway) every request raised OutboundBufferLimitError, which nothing
    caught: a 500 with a stack trace, and the end of the token verifiers' revocation poll, which expects only
    RailyardError. Each request is now a typed error: UpstreamTimeout while buffered, Unavailable once refused."""
    import contextlib

    from shared.errors import RailyardError

    server = local_nats_server(tmp_path)
    url = server.__enter__()
    broker = NatsBroker(url, max_reconnect_attempts=-1, pending_size=1024)
    try:
        await broker.start()
        server.__exit__(None, None, None)  # the server goes away; the client reconnects, buffering
        raised = []
        for _ in range(3):
            with pytest.raises(RailyardError) as caught:
                await request(broker, "auth.revocations.list", {"pad": "x" * 700}, timeout=0.5)
            raised.append(caught.value)
        assert isinstance(raised[-1], Unavailable) and raised[-1].status == 503
        assert raised[-1].msg == "auth cannot be reached: the connection to the bus is down"
        with pytest.raises(Unavailable, match="log_store cannot be reached: the connection to the bus is down"):
            await raw_request(broker._connection, "log_store.logs.arrow", b"x" * 700, token=None, timeout=0.5)
    finally:
        with contextlib.suppress(Exception):
            server.__exit__(None, None, None)
        with contextlib.suppress(Exception):
            await broker.stop()
