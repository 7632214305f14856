"""The inference body reader behind uvicorn's httptools protocol, as the gateway runs it: a body in several chunks
is gathered from the protocol's own buffer (services/gateway/body.py `_read_rest_in_place`), with the same bytes,
limit (413), deadline (408) and client-gone answer as the general reader (`limits.read_rest`, through `receive()`)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn

from services.gateway import body as body_module
from services.gateway.body import read_request_body
from shared.errors import PayloadTooLarge, RequestTimeout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Server:
    """uvicorn (httptools, as services/gateway/app.py configures it) serving an app that reads the body with
    read_request_body and keeps what it got."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit, self.timeout = limit, timeout
        self.results: list = []
        self.done = asyncio.Event()

    async def app(self, scope, receive, send) -> None:  # noqa: ANN001 - a raw ASGI callable
        if scope["type"] != "http":
            return
        try:
            result = await read_request_body(receive, self.limit, self.timeout)
        except (PayloadTooLarge, RequestTimeout) as exc:
            result = type(exc)
        self.results.append(result)
        self.done.set()
        if result is None:
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def __aenter__(self) -> _Server:
        self.port = _free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="off", http="httptools",
                                loop="none", log_level="warning", access_log=False, interface="asgi3")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:  # noqa: ASYNC110 - uvicorn.Server has a flag, no event
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task

    async def post(self, payload: bytes, pieces: int, close_after: int | None = None) -> object:
        """Send `payload` in `pieces` writes (a pause between them, so the server reads several chunks); stop and
        close after `close_after` pieces, or stall there when the server's deadline is short."""
        self.done.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     + str(len(payload)).encode() + b"\r\n\r\n")
        step = -(-len(payload) // pieces)
        for index in range(pieces):
            if close_after is not None and index == close_after:
                if self.timeout < 1:
                    await asyncio.wait_for(self.done.wait(), 5)  # stalled: the server's deadline passes
                break
            writer.write(payload[index * step:(index + 1) * step])
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.close()
        await asyncio.wait_for(self.done.wait(), 5)
        return self.results[-1]


@pytest.fixture(params=["in place", "through receive()"])
def path(request, monkeypatch) -> str:
    """Both readers on the same bytes: the in-place one, and the general one (the in-place path turned off)."""
    used = []
    original = body_module._read_rest_in_place

    async def counted(*args, **kwargs):  # noqa: ANN202
        used.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(body_module, "_read_rest_in_place", counted)
    if request.param == "through receive()":
        monkeypatch.setattr(body_module, "RequestResponseCycle", type("NotUvicorns", (), {}))
    yield request.param
    assert bool(used) == (request.param == "in place")


async def test_a_body_in_many_chunks_is_read_whole(path) -> None:
    payload = bytes(range(256)) * 2400  # 614,400 bytes: ~10 of uvicorn's 64 KiB flow-control steps
    async with _Server(1 << 20, 5) as server:
        assert await server.post(payload, 12) == payload
        assert await server.post(payload[:70_000], 2) == payload[:70_000]


async def test_a_body_past_the_limit_is_413(path) -> None:
    async with _Server(100_000, 5) as server:
        # (the fast path refuses a declared excess before reading: here the reader meets it chunk by chunk)
        assert await server.post(b"x" * 300_000, 6) is PayloadTooLarge
        assert await server.post(b"x" * 100_000, 6) == b"x" * 100_000


async def test_a_client_gone_mid_body_is_none(path) -> None:
    async with _Server(1 << 20, 5) as server:
        assert await server.post(b"y" * 400_000, 8, close_after=3) is None


async def test_a_body_that_stalls_is_408(path) -> None:
    async with _Server(1 << 20, 0.3) as server:
        assert await server.post(b"z" * 400_000, 8, close_after=3) is RequestTimeout
