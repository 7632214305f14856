"""shared/nats_direct.py against a real nats-server: what `write_now` writes is received exactly as nats-py's own
publish of the same message (subject, reply, headers — none, empty, trimmed — payload), messages keep their order
with those nats-py has pending, and what it cannot write at once (large payloads, a closed connection) it leaves
to the caller."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest

from shared.nats_direct import WRITE_AT_ONCE, write_now
from tests.local_nats import subscribed
from tests.unit.test_gateway_bus_request import _connect, nats_url  # noqa: F401 - nats_url: the fixture


async def test_written_at_once_is_received_as_nats_pys_publish(nats_url: str) -> None:  # noqa: F811
    sender = await _connect(nats_url)
    receiver = await _connect(nats_url)
    got: asyncio.Queue = asyncio.Queue()
    try:
        await receiver.subscribe("t.>", cb=got.put)
        await subscribed(receiver)
        cases = [("t.a", b"plain", None, ""), ("t.b", b"", {}, "r.1"),
                 ("t.c", b"x" * 5000, {"Railyard-Meta": '{"a": 1}', " K ": " v\r\n"}, "_INBOX.x.7")]
        for subject, payload, headers, reply in cases:
            await sender.publish(subject, payload, reply=reply, headers=headers)
            await sender.flush()
            own = await asyncio.wait_for(got.get(), 5)
            assert write_now(sender, subject, payload, headers, reply) is True
            direct = await asyncio.wait_for(got.get(), 5)
            assert (direct.subject, direct.reply, direct.data, direct.headers) == \
                   (own.subject, own.reply, own.data, own.headers)
        with pytest.raises(nats.errors.BadSubjectError):
            write_now(sender, "t.bad subject", b"")
        # behind what nats-py holds: nothing is written at once, the order stays
        await sender.publish("t.order", b"1")
        assert write_now(sender, "t.order", b"2") is False
        await sender.publish("t.order", b"2")
        assert write_now(sender, "t.order", b"z" * (WRITE_AT_ONCE + 1)) is False
        await sender.flush()
        assert [(await asyncio.wait_for(got.get(), 5)).data for _ in range(2)] == [b"1", b"2"]
        assert write_now(sender, "t.order", b"3") is True  # flushed: at once again
        assert (await asyncio.wait_for(got.get(), 5)).data == b"3"
    finally:
        await sender.close()
        await receiver.close()
    assert write_now(sender, "t.closed", b"x") is False  # closed: nats-py's publish gives its error
