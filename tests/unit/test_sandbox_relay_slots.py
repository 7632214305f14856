"""A task run's gateway relay (shared/sandbox.py `_gateway_relay`) counts a connection against the run's
RELAY_CONNECTIONS only while the gateway holds it: one the gateway closed (its idle timeout, `Connection: close`)
frees its slot at once, before the run reads the end, even while the run keeps its own end open, as a pooled client
does with an idle connection. Until 2026-12-05 both directions were awaited, and a run whose client kept
RELAY_CONNECTIONS closed connections in its pool was refused every new one (503 too_many_gateway_connections).
And a connection the run half-closed (its request sent, the answer awaited) was held by nothing once its end was read:
the garbage collector destroyed its relay task, cutting it before the answer.
The relay's unix socket is driven directly here, with a local server standing for the gateway (no sandbox)."""

from __future__ import annotations

import asyncio
import gc
import shutil

from shared import sandbox
from shared.sandbox import RELAY_CONNECTIONS, RELAY_REFUSED
from shared.settings import Settings


async def _with_relay(tmp_path, answer, test) -> None:
    """`test(socket path)` against a relay to a server on 127.0.0.1 that runs `answer(reader, writer)` for each
    connection and then closes it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    gateway = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = gateway.sockets[0].getsockname()[1]
    settings = Settings(stack={"data_dir": tmp_path / "data"}, gateway={"host": "127.0.0.1", "port": port})
    server, folder = await sandbox._gateway_relay(settings, "owner-a")
    try:
        await asyncio.wait_for(test(str(folder / "gateway.sock")), 30)
    finally:
        server.close()
        gateway.close()
        shutil.rmtree(folder, ignore_errors=True)


async def _to_end(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 10)


def test_connections_the_gateway_closed_free_their_slots_while_the_run_keeps_them_open(tmp_path):
    async def answer(reader, writer):
        writer.write(b"bye")  # and closed (serve)

    async def test(path):
        kept = []
        for _ in range(RELAY_CONNECTIONS):
            reader, writer = await asyncio.open_unix_connection(path)
            assert await _to_end(reader) == b"bye"  # the gateway's answer, then its end
            kept.append(writer)  # never closed by the run
        for _ in range(3):  # the run's next connections are relayed, at once, not refused
            reader, writer = await asyncio.open_unix_connection(path)
            assert await _to_end(reader) == b"bye"
            kept.append(writer)
        for writer in kept:
            writer.close()

    asyncio.run(_with_relay(tmp_path, answer, test))


def test_connections_the_gateway_holds_stay_counted_and_a_half_close_still_gets_its_answer(tmp_path):
    release = asyncio.Event()

    async def answer(reader, writer):
        request = await reader.read()  # to the run's half-close
        if request == b"hold":
            await release.wait()
        writer.write(b"answer to " + request)

    async def test(path):
        held = []
        for _ in range(RELAY_CONNECTIONS):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"hold")
            writer.write_eof()  # the run's end alone: still counted, the gateway has not answered
            held.append((reader, writer))
        await asyncio.sleep(0.2)  # every one connected upstream
        gc.collect()  # a relay task nothing held was destroyed here, its connection cut, its slot freed
        reader, writer = await asyncio.open_unix_connection(path)
        assert await _to_end(reader) == RELAY_REFUSED
        writer.close()
        release.set()
        for reader, writer in held:
            assert await _to_end(reader) == b"answer to hold"
            writer.close()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"next")
        writer.write_eof()
        assert await _to_end(reader) == b"answer to next"
        writer.close()

    asyncio.run(_with_relay(tmp_path, answer, test))
