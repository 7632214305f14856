"""A WebSocket upgrade request to the gateway's uvicorn (services/gateway/app.py `http_config`) is answered as plain
HTTP and its connection is counted out when it closes. With uvicorn's default ws="auto" (wsproto installed) the
connection was handed to the WebSocket protocol and never released from the connection limits: three upgrades left
a source with a cap of two refused for as long as the process lived."""

from __future__ import annotations

import asyncio

from tests.unit.test_gateway_connections import _ask, _Gateway

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


async def test_an_upgrade_request_is_plain_http_and_frees_its_place():
    async with _Gateway(max_connections=50, max_connections_per_source=2) as gateway:
        upgrades = []
        for _ in range(3):
            reader, writer = await gateway.connect("127.0.0.2")
            upgrades.append(await _ask(reader, writer, UPGRADE))
            writer.close()
            await writer.wait_closed()
        # the server counts each close out within a loop iteration or two; before, never (polled, not slept)
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            held = [await gateway.connect("127.0.0.2") for _ in range(2)]
            answers = [await _ask(reader, writer) for reader, writer in held]
            for _, writer in held:
                writer.close()
            if all(a.startswith(b"HTTP/1.1 200") for a in answers) or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
        assert all(a.startswith(b"HTTP/1.1 200") for a in upgrades), upgrades  # the app's answer, not a 101
