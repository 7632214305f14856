"""The gateway's connection limits behind a real uvicorn configured as the gateway configures it
(services/gateway/app.py `http_config`, services/gateway/connections.py): one connection above the per-source cap or
the total is answered 503 and closed, the ones already open and other sources keep being served, a closed
connection frees its place, and a trusted proxy has no per-source cap. Other sources are other loopback addresses
(Linux routes all of 127/8)."""

from __future__ import annotations

import asyncio
import json
import os
import socket

import httpx
import pytest

from services.gateway.app import _Server, http_config
from services.gateway.connections import ConnectionLimits
from shared.settings import GatewaySettings

GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _app(scope, receive, send) -> None:  # noqa: ANN001 - a raw ASGI callable
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _slow_app(scope, receive, send) -> None:  # noqa: ANN001 - a raw ASGI callable
    if scope["type"] == "http":
        await asyncio.sleep(1.0)  # twice the head deadline (keep_alive=0.5) of the test that uses it
        await _app(scope, receive, send)


async def _big_app(scope, receive, send) -> None:  # noqa: ANN001 - a raw ASGI callable
    if scope["type"] != "http":
        return
    if scope["path"] != "/big":
        await _app(scope, receive, send)
        return
    body = b"0" * (48 << 20)  # more than loopback's socket buffers take
    head = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": body})


class _Gateway:
    def __init__(self, app=_app, **limits: object) -> None:  # noqa: ANN001 - an ASGI callable
        self.app = app
        self.settings = GatewaySettings(host="127.0.0.1", port=_free_port(), **limits)

    async def __aenter__(self) -> _Gateway:
        self.server = _Server(http_config(self.app, self.settings))
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:  # noqa: ASYNC110 - uvicorn.Server has a flag, no event
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task

    async def connect(self, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.settings.port, local_addr=(source, 0))


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes = GET) -> bytes:
    """One request on an open connection; the answer's head and body (up to the end of a 2-byte or refusal body)."""
    writer.write(request)
    await writer.drain()
    answer = b""
    while b"\r\n\r\n" not in answer or not (answer.endswith(b"ok") or answer.endswith(b"connections\n")):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        answer += chunk
    return answer


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        rest = await asyncio.wait_for(reader.read(65536), 5)
    except ConnectionResetError:
        return True
    return rest == b""


async def test_one_source_is_capped_and_others_keep_being_served():
    async with _Gateway(max_connections=50, max_connections_per_source=3) as gateway:
        held = [await gateway.connect("127.0.0.2") for _ in range(3)]
        for reader, writer in held:
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
        reader, writer = await gateway.connect("127.0.0.2")
        answer = await _ask(reader, writer)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"connection: close" in head.lower() and b"retry-after: 1" in head.lower(), head
        assert b"content-type: application/json" in head.lower(), head
        error = json.loads(body)
        assert set(error) == {"code", "msg"} and error["code"] == "too_many_connections", error
        assert "httpx.Client" in error["msg"] and "retry" in error["msg"], error
        assert await _closed(reader)
        writer.close()
        # another source, and the three held connections, are served
        other = await gateway.connect("127.0.0.3")
        assert (await _ask(*other)).startswith(b"HTTP/1.1 200")
        for reader, writer in held:
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
        # a connection that closes frees its place
        held[0][1].close()
        await held[0][1].wait_closed()
        await asyncio.sleep(0.1)
        again = await gateway.connect("127.0.0.2")
        assert (await _ask(*again)).startswith(b"HTTP/1.1 200")
        for _, writer in [*held[1:], other, again]:
            writer.close()


async def test_the_total_is_capped_and_the_open_connections_keep_being_served():
    """Four sources with one connection each: a fifth source's would take no more than its fair share, but nobody
    holds more than it would (two more than its none), so it is refused and nothing is closed."""
    async with _Gateway(max_connections=4, max_connections_per_source=100) as gateway:
        held = [await gateway.connect(f"127.0.0.{2 + index}") for index in range(4)]
        for reader, writer in held:
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
        reader, writer = await gateway.connect("127.0.0.5")
        assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 503")
        writer.close()
        for reader, writer in held:
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
            writer.close()


async def _still_served(pair: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    """The connection answers a request (False: the gateway closed it)."""
    try:
        return (await _ask(*pair)).startswith(b"HTTP/1.1 200")
    except (ConnectionError, TimeoutError):
        return False


async def test_a_full_gateway_closes_an_idle_connection_of_the_largest_source_for_a_source_under_its_share():
    """Two sources hold all 8 places at their cap of 4, renewing them: a third source used to be refused for as long
    as they liked. Its connections now take idle ones' places, each of the source holding the most, until it holds
    about its share (8 / 3 sources): then it is refused, and the others keep what they have."""
    async with _Gateway(max_connections=8, max_connections_per_source=4) as gateway:
        big = {source: [await gateway.connect(source) for _ in range(4)] for source in ("127.0.0.2", "127.0.0.3")}
        for pairs in big.values():
            for pair in pairs:
                assert (await _ask(*pair)).startswith(b"HTTP/1.1 200")  # idle now, between requests
        newcomer = [await gateway.connect("127.0.0.4") for _ in range(3)]
        answers = [(await _ask(*pair))[:12] for pair in newcomer]
        assert answers == [b"HTTP/1.1 200"] * 2 + [b"HTTP/1.1 503"], answers
        served = {source: [await _still_served(pair) for pair in pairs] for source, pairs in big.items()}
        # one closed at each source (the second newcomer's turn took the source that was the largest then), the
        # oldest idle one first
        assert sorted(served.values()) == [[False, True, True, True]] * 2, served
        for pairs in [*big.values(), newcomer]:
            for _, writer in pairs:
                writer.close()


async def _slow_on_request(scope, receive, send) -> None:  # noqa: ANN001 - a raw ASGI callable
    if scope["type"] == "http" and scope["path"] == "/slow":
        await asyncio.sleep(1.0)
    await _app(scope, receive, send)


async def test_a_connection_with_a_request_on_its_way_or_in_progress_is_never_taken():
    async with _Gateway(_slow_on_request, max_connections=2, max_connections_per_source=2) as gateway:
        partial, slow = await gateway.connect("127.0.0.2"), await gateway.connect("127.0.0.2")
        partial[1].write(b"GET /x HTTP/1.1\r\n")  # the start of a head
        slow[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # a request being answered
        await asyncio.sleep(0.2)
        refused = await gateway.connect("127.0.0.3")
        assert (await _ask(*refused)).startswith(b"HTTP/1.1 503")
        refused[1].close()
        assert (await _ask(*partial, b"Host: x\r\n\r\n")).startswith(b"HTTP/1.1 200")
        answer = b""
        while not answer.endswith(b"ok"):
            answer += await asyncio.wait_for(slow[0].read(65536), 5)
        assert answer.startswith(b"HTTP/1.1 200")
        # both idle now: the newcomer takes the oldest one's place
        admitted = await gateway.connect("127.0.0.3")
        assert (await _ask(*admitted)).startswith(b"HTTP/1.1 200")
        assert [await _still_served(partial), await _still_served(slow)] == [False, True]
        for _, writer in (partial, slow, admitted):
            writer.close()


async def test_a_pipelined_head_begun_during_the_previous_answer_is_never_taken():
    """A client pipelining its next request, whose head had only begun when the previous answer completed: that
    answer made the connection idle again (uvicorn arms its keep-alive when no whole request waits) and a newcomer
    took its place, dropping the request on its way. It is not idle now: the newcomer is refused, the request
    answered."""
    async with _Gateway(_slow_on_request, max_connections=2, max_connections_per_source=2) as gateway:
        pipelined, busy = await gateway.connect("127.0.0.2"), await gateway.connect("127.0.0.2")
        pipelined[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\n")
        answer = b""
        while not answer.endswith(b"ok"):
            answer += await asyncio.wait_for(pipelined[0].read(65536), 5)
        assert answer.startswith(b"HTTP/1.1 200")
        busy[1].write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # in progress: never taken
        await asyncio.sleep(0.2)
        newcomer = await gateway.connect("127.0.0.3")
        assert (await _ask(*newcomer)).startswith(b"HTTP/1.1 503")
        newcomer[1].close()
        assert (await _ask(*pipelined, b"Host: x\r\n\r\n")).startswith(b"HTTP/1.1 200")
        for _, writer in (pipelined, busy):
            writer.close()


async def test_a_client_library_reads_the_refusal_even_with_a_body_on_its_way():
    """The 503 is written before the request is read; httpx (writing a 1 MiB body) still gets it, no reset."""
    async with _Gateway(max_connections=1, max_connections_per_source=1) as gateway:
        reader, writer = await gateway.connect("127.0.0.2")
        assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(3):
                response = await client.post(f"http://127.0.0.1:{gateway.settings.port}/x", content=b"0" * 2**20)
                assert response.status_code == 503 and response.headers["retry-after"] == "1"
                assert response.json()["code"] == "too_many_connections", response.text
        writer.close()


async def test_a_trusted_proxy_has_no_per_source_cap():
    async with _Gateway(max_connections=50, max_connections_per_source=2,
                        trusted_proxies="127.0.0.4") as gateway:
        held = [await gateway.connect("127.0.0.4") for _ in range(5)]
        for reader, writer in held:
            assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
        capped = [await gateway.connect("127.0.0.2") for _ in range(3)]
        assert [(await _ask(*pair))[:12] for pair in capped] == [b"HTTP/1.1 200"] * 2 + [b"HTTP/1.1 503"]
        for _, writer in held + capped:
            writer.close()


@pytest.mark.parametrize("start", [b"", b"GET /x HTTP/1.1\r\nHost: x\r\n"], ids=["silent", "partial-head"])
async def test_a_connection_without_a_whole_request_head_is_closed_and_frees_its_place(start):
    """uvicorn arms its keep-alive timer only after a response, and any byte disarms it: a connection that sent
    nothing, or only the start of a head, was held (and counted against its source) for as long as the client
    liked. It now has keep_alive seconds, from its start and from each response, to send a whole head."""
    async with _Gateway(max_connections=50, max_connections_per_source=1, keep_alive=0.5) as gateway:
        reader, writer = await gateway.connect("127.0.0.2")
        writer.write(start)
        await writer.drain()
        assert await _closed(reader)
        writer.close()
        await asyncio.sleep(0.1)
        reader, writer = await gateway.connect("127.0.0.2")
        assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")  # the place was given back
        assert await _closed(reader)  # idle after its response: the same deadline
        writer.close()


async def test_a_request_slower_than_the_head_deadline_is_answered():
    async with _Gateway(_slow_app, keep_alive=0.5) as gateway:
        reader, writer = await gateway.connect("127.0.0.2")
        await asyncio.sleep(0.3)
        assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")
        assert (await _ask(reader, writer)).startswith(b"HTTP/1.1 200")  # kept alive in between
        writer.close()


async def test_a_client_that_reads_nothing_of_a_response_is_cut_off_and_frees_its_place():
    """A large response to a client that reads none of it waited in uvicorn's flow control for ever, holding the
    connection (and its source's place); after keep_alive seconds without the buffer draining it is cut off."""
    async with _Gateway(_big_app, max_connections=50, max_connections_per_source=1, keep_alive=0.5) as gateway:
        reader, writer = await gateway.connect("127.0.0.2")
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answers = []
        try:
            # reads nothing, and keeps its socket open; the place is given back once the gateway cut the unread one
            # (keep_alive after the buffer stopped draining), asked every 0.1 s for up to ~5.5 s (1.5 s of sleep,
            # then 20 tries 0.2 s apart, before: the first 1.5 s could only be refused)
            for _ in range(55):
                again = await gateway.connect("127.0.0.2")
                answers.append((await _ask(*again))[:12])
                again[1].close()
                if answers[-1] == b"HTTP/1.1 200":
                    break
                await asyncio.sleep(0.1)
        finally:
            writer.transport.abort()  # (uvicorn's shutdown would wait for the stuck response for ever)
        assert answers[-1] == b"HTTP/1.1 200", answers


async def test_refused_connections_draining_at_once_are_capped(monkeypatch):
    """Each refused connection is drained for up to REFUSED_LINGER seconds; a flood of them (no limit on how fast a
    client opens them) would otherwise hold descriptors the gateway needs. Past REFUSED_LINGERING_MAX one is closed
    at once. Counted by this process's descriptors (the clients' sockets are in it too)."""
    from services.gateway import connections

    monkeypatch.setattr(connections, "REFUSED_LINGERING_MAX", 3)
    monkeypatch.setattr(connections, "REFUSED_LINGER", 1.0)  # 2.0: a second of this test's wait, no more checked
    async with _Gateway(max_connections=1) as gateway:
        held = await gateway.connect("127.0.0.2")
        assert (await _ask(*held)).startswith(b"HTTP/1.1 200")
        before = len(os.listdir("/proc/self/fd"))
        refused = [await gateway.connect("127.0.0.3") for _ in range(12)]  # never closed by the client
        await asyncio.sleep(0.3)
        assert len(os.listdir("/proc/self/fd")) - before <= 12 + 3
        assert [(await asyncio.wait_for(reader.read(12), 5)) for reader, _ in refused] == [b"HTTP/1.1 503"] * 12
        await asyncio.sleep(connections.REFUSED_LINGER + 0.5)  # the drained ones are closed and counted out
        assert len(os.listdir("/proc/self/fd")) - before <= 12
        more = [await gateway.connect("127.0.0.3") for _ in range(6)]
        await asyncio.sleep(0.3)
        assert len(os.listdir("/proc/self/fd")) - before <= 12 + 6 + 3
        for _, writer in [held, *refused, *more]:
            writer.close()


@pytest.mark.parametrize("field", ["max_connections", "max_connections_per_source"])
def test_a_limit_is_at_least_one(field):
    with pytest.raises(ValueError):
        GatewaySettings(**{field: 0})


class _Held:
    """A connection as ConnectionLimits sees it: evicting one counts it out."""

    def __init__(self, limits: ConnectionLimits, key: str) -> None:
        self.limits, self.key, self.evicted = limits, key, False
        assert limits.admit(key)

    def evict(self) -> None:
        self.evicted = True
        self.limits.mark_busy(self.key, self)
        self.limits.release(self.key)


def test_the_fair_share_rule_takes_the_largest_sources_oldest_idle_connection_and_nothing_from_equals():
    limits = ConnectionLimits(total=10, per_source=10)
    big = [_Held(limits, "a") for _ in range(6)]
    mid = [_Held(limits, "b") for _ in range(4)]
    for held in mid:
        limits.mark_idle("b", held)
    # "a" holds the most but has no idle connection: "b" (4 >= 0 + 2) gives its oldest idle one
    assert limits.admit("c") and [h.evicted for h in mid] == [True, False, False, False]
    for held in big[1:]:
        limits.mark_idle("a", held)
    assert limits.admit("c") and big[1].evicted and limits.by_source == {"a": 5, "b": 3, "c": 2}
    assert not limits.admit(None)  # a trusted proxy neither takes a place
    assert limits.admit("c")  # "c" reaches 3 (its share: 10 / 3), and "a" is down to 4: then it is refused
    assert limits.by_source == {"a": 4, "b": 3, "c": 3} and not limits.admit("c")
    equals = ConnectionLimits(total=3, per_source=10)
    for key in "xyz":
        equals.mark_idle(key, _Held(equals, key))
    assert not equals.admit("w")  # nobody holds two more than the newcomer's none
