"""A TCP proxy to the test stack's PostgreSQL that can stop passing bytes (FreezingProxy), and a pool through it
(through_a_proxy): a server that took the connection and stopped answering, for the tests of bounds on database work
(tests/integration/test_deployer_crash.py, test_task_run_log_retries.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

from shared.db import create_pool


class FreezingProxy:
    """A TCP proxy to the stack's PostgreSQL that stops passing bytes either way while `frozen`: a server that took the
    connection and stopped answering (stopped, a network partition), the cancel requests asyncpg sends it included."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.writers: list[asyncio.StreamWriter] = []
        self.freeze_after: bytes | None = None  # frozen once bytes with these passed to the server (they do)

    def freeze_once_sent(self, marker: bytes) -> None:
        """Freeze right after the server is sent bytes holding `marker` (a COMMIT: it is committed, unanswered)."""
        self.freeze_after = marker

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_server: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self.thawed.wait()
                writer.write(data)
                if to_server and self.freeze_after is not None and self.freeze_after in data:
                    self.freeze_after = None
                    self.freeze()  # in the step it was written: its answer is not passed back
                await writer.drain()
        writer.close()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer, to_server=True),
                             self._pump(up_reader, writer, to_server=False))

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            self.thaw()
            server.close()
            for writer in self.writers:
                writer.close()



@contextlib.asynccontextmanager
async def through_a_proxy(stack, pool) -> AsyncIterator[tuple[FreezingProxy, object]]:
    """A FreezingProxy to the stack's PostgreSQL and a pool through it on `pool`'s schema (closed within 30 s once the
    proxy thaws)."""
    settings = stack.settings().postgres
    parts = urlsplit(settings.dsn)
    proxy = FreezingProxy(parts.hostname, parts.port)
    async with proxy.serving() as port:
        dsn = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}"))
        proxied = await create_pool(settings.model_copy(update={"dsn": dsn}),
                                    await pool.fetchval("SELECT current_schema()"))
        try:
            yield proxy, proxied
        finally:
            proxy.thaw()
            async with asyncio.timeout(30):
                await proxied.close()
