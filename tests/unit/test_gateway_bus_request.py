"""The gateway's lean request/reply (services/gateway/bus_request.py) against a real nats-server: a responder sees
what nats-py's own `Client.request` sends (subject, payload, headers, a reply inbox under the connection's inbox
prefix), every request gets its own reply (concurrent ones too, written at once or through nats-py's flusher),
and nobody listening or nobody answering raise nats-py's errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import nats.errors
import pytest

from services.gateway.bus_request import WRITE_AT_ONCE, Requester, header_block
from tests.local_nats import local_nats_server, subscribed


@pytest.fixture
def nats_url(tmp_path: Path):
    """A nats-server (tests/local_nats.py)."""
    with local_nats_server(tmp_path) as url:
        yield url


async def _connect(url: str, **options) -> nats.NATS:
    return await nats.connect(url, max_reconnect_attempts=0, connect_timeout=10, **options)


async def test_requests_are_sent_and_answered_as_nats_pys_own(nats_url: str) -> None:
    caller = await _connect(nats_url, inbox_prefix="_INBOX.gateway")
    engine = await _connect(nats_url)
    seen = []

    async def answer(msg) -> None:
        seen.append(msg)
        await msg.respond(msg.data[::-1])  # after a moment, so replies to concurrent requests interleave

    try:
        await engine.subscribe("engine.d.infer", queue="replicas", cb=answer)
        await subscribed(engine)
        requester = Requester(caller)
        headers = {"Railyard-Request-Id": "abc", " Spaced ": " value\r\nINJECTED \n"}
        own = await caller.request("engine.d.infer", b"one", timeout=5, headers=headers)
        lean = await requester.request("engine.d.infer", b"one", 5, headers)
        assert lean.data == own.data == b"eno"
        assert seen[1].headers == seen[0].headers == {"Railyard-Request-Id": "abc", "Spaced": "value  INJECTED"}
        assert seen[1].reply.startswith("_INBOX.gateway.") and seen[0].reply.startswith("_INBOX.gateway.")
        payloads = [str(i).encode() * (i * 997 % 5000) for i in range(60)] + [b"z" * (WRITE_AT_ONCE + 1)]
        replies = await asyncio.gather(*(requester.request("engine.d.infer", p, 5, {"N": str(i)})
                                         for i, p in enumerate(payloads)))
        assert [reply.data for reply in replies] == [p[::-1] for p in payloads]
        assert not requester.replies.waiting
    finally:
        await caller.close()
        await engine.close()


async def test_nobody_listening_and_nobody_answering_are_nats_pys_errors(nats_url: str) -> None:
    caller = await _connect(nats_url)
    engine = await _connect(nats_url)
    try:
        requester = Requester(caller)

        async def silent(msg) -> None:
            return None

        await engine.subscribe("engine.silent.infer", cb=silent)
        await subscribed(engine)
        with pytest.raises(nats.errors.NoRespondersError):
            await requester.request("engine.nobody.infer", b"x", 5, {"A": "b"})
        with pytest.raises(nats.errors.TimeoutError):
            await requester.request("engine.silent.infer", b"x", 0.2, {"A": "b"})
        with pytest.raises(nats.errors.BadSubjectError):
            await requester.request("engine.a b.infer", b"x", 1, {})
        with pytest.raises(nats.errors.BadHeaderError):
            await requester.request("engine.silent.infer", b"x", 1, {"Bad:Key": "v"})
        assert not requester.replies.waiting
    finally:
        await caller.close()
        await engine.close()


def test_the_header_block_is_nats_pys() -> None:
    assert header_block({"A": "1", "": "skipped", "B": " two\r\n"}) == b"NATS/1.0\r\nA: 1\r\nB: two\r\n\r\n"


def test_a_connections_requester_goes_with_the_connection() -> None:
    # a WeakKeyDictionary by connection kept every entry: its value (the Requester) holds its key (rev1's nit)
    import gc
    import weakref

    from services.gateway import inference
    from services.gateway.bus_request import requester_of

    nc = nats.NATS()
    requester = requester_of(nc)
    assert requester_of(nc) is requester and requester.nc is nc
    gone = weakref.ref(nc)
    held = getattr(inference, "_requesters", {})  # the former registry, if any
    if isinstance(held, weakref.WeakKeyDictionary):
        held[nc] = requester
    del nc, requester
    gc.collect()
    assert gone() is None
