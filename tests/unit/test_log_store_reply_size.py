"""The log store's raw Arrow replies against a real nats-server whose max_payload (128 KiB) is below a page: the
reply is the typed 422 reply_too_large advising a smaller page_size, not a publish NATS refuses (the caller waited
for its timeout: 504)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import nats
import pytest

from services.log_store.app import PAGE_TOO_LARGE, _raw_responder, reply_size
from shared.bus import raw_request
from shared.embedded.servers import find_binary
from shared.errors import ReplyTooLarge
from shared.table_transport import PAGE_HEADER
from tests.stack import free_ports

MAX_PAYLOAD = 128 * 1024


@pytest.fixture
def small_nats(tmp_path: Path):
    """A nats-server whose max_payload is 128 KiB; its URL."""
    (port,) = free_ports(1)
    config = tmp_path / "nats.conf"
    config.write_text(f"listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD}\n")
    process = subprocess.Popen([find_binary("nats-server"), "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def _connect(url: str) -> nats.NATS:
    host, port = url.removeprefix("nats://").split(":")
    for _ in range(200):
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return await nats.connect(url, max_reconnect_attempts=0)
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nats-server at {url} did not start")


async def test_a_page_above_the_bus_limit_is_a_typed_422_and_a_page_within_it_is_answered(small_nats):
    nc = await _connect(small_nats)
    try:
        assert nc.max_payload == MAX_PAYLOAD
        sizes = {"small": 1000, "large": 200 * 1024, "edge": 0}
        page = {PAGE_HEADER: '{"status": "More", "cursor": "abc"}'}
        sizes["edge"] = MAX_PAYLOAD - reply_size(b"", page)  # exactly fits, with its headers

        async def work(msg, token):
            return b"x" * sizes[msg.data.decode()], dict(page)

        await nc.subscribe("test.logs.query", cb=_raw_responder(nc, work, PAGE_TOO_LARGE))
        for name in ("small", "edge"):
            reply = await raw_request(nc, "test.logs.query", name.encode(), token=None, timeout=5)
            assert len(reply.data) == sizes[name] and reply.headers[PAGE_HEADER] == page[PAGE_HEADER]
        with pytest.raises(ReplyTooLarge) as refused:
            await raw_request(nc, "test.logs.query", b"large", token=None, timeout=5)
        assert (refused.value.status, refused.value.code) == (422, "reply_too_large")
        assert refused.value.msg == ("the answer would be 200.1 KiB, above the 128.0 KiB a reply may carry on the "
                                     "bus: ask for fewer records: lower page_size and follow the cursor "
                                     "(x-iteration-cursor)")
        sizes["edge"] += 1  # one byte over: refused as well, not a publish the server would refuse
        with pytest.raises(ReplyTooLarge):
            await raw_request(nc, "test.logs.query", b"edge", token=None, timeout=5)
        assert nc.is_connected
    finally:
        await nc.close()
