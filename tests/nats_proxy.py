"""A small TCP proxy in front of a real nats-server (tests/local_nats.py) that reads the NATS protocol both ways, for
unit tests of what a service does when JetStream answers late or not at all: a subclass looks at each protocol
message (`to_server`, `to_client`) and passes it on, holds it back a while, or drops it; everything else passes as it
came. `ApiProxy` drops the answers to a consumer's JetStream API requests (tests/unit/test_service_consumer_setup.py,
test_log_store_consumer_setup.py); test_service_started_ack.py's AckProxy holds back or drops PubAcks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.service import ServiceSpec

WITH_PAYLOAD = (b"MSG", b"PUB", b"HMSG", b"HPUB")


class NatsProxy:
    """Passes every protocol message on; a subclass decides otherwise in `to_server` / `to_client` (False: dropped;
    awaiting in them holds back that message and every byte after it on that connection)."""

    async def to_server(self, words: list[bytes], line: bytes, payload: bytes) -> bool:
        return True

    async def to_client(self, words: list[bytes], line: bytes, payload: bytes) -> bool:
        return True

    @staticmethod
    async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[list[bytes], bytes, bytes]]:
        """(the control line's words with its verb upper-cased, the line, the payload with its CRLF; b"" when it
        has none) of each protocol message as it comes."""
        while True:
            line = await reader.readline()
            if not line:
                return
            words = line.split()
            if words:
                words[0] = words[0].upper()
            payload = await reader.readexactly(int(words[-1]) + 2) if words and words[0] in WITH_PAYLOAD else b""
            yield words, line, payload

    @staticmethod
    async def _pump(decide: Callable[[list[bytes], bytes, bytes], Any], reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            async for words, line, payload in NatsProxy._frames(reader):
                if not words or await decide(words, line, payload):
                    writer.write(line + payload)
                    await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self, upstream: str) -> AsyncIterator[str]:
        """The proxy on 127.0.0.1 in front of the nats-server at `upstream`; yields its URL."""
        host, port = upstream.removeprefix("nats://").rsplit(":", 1)
        pumps: set[asyncio.Task] = set()

        async def accepted(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
            for task in (asyncio.create_task(self._pump(self.to_server, client_reader, server_writer)),
                         asyncio.create_task(self._pump(self.to_client, server_reader, client_writer))):
                pumps.add(task)
                task.add_done_callback(pumps.discard)

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        try:
            yield f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            for task in list(pumps):
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


@dataclass
class ApiProxy(NatsProxy):
    """Holds back (never passes on) the server's answers to the first `drop` JetStream API requests about the
    consumer `durable` (`$JS.API.CONSUMER.*`); records those requests' subjects (`asked`)."""

    durable: str
    drop: int = 0
    asked: list[str] = field(default_factory=list)
    _dropping: set[bytes] = field(default_factory=set)

    async def to_server(self, words: list[bytes], line: bytes, payload: bytes) -> bool:
        api = words[0] in (b"PUB", b"HPUB") and words[1].startswith(b"$JS.API.CONSUMER.")
        if api and self.durable.encode() in line:
            self.asked.append(words[1].decode())
            if self.drop > 0:
                self.drop -= 1
                self._dropping.add(words[2])  # the request's reply subject
        return True

    async def to_client(self, words: list[bytes], line: bytes, payload: bytes) -> bool:
        if words[0] in (b"MSG", b"HMSG") and words[1] in self._dropping:
            self._dropping.discard(words[1])
            return False
        return True


async def until(done: Callable[[], bool], task: asyncio.Task, within: float = 60.0) -> None:
    """Wait (polling every 20 ms, at most `within` seconds) until `done()`; fails at once, with its exception, when
    `task` (the service's start) ends first."""
    async with asyncio.timeout(within):
        while not done():
            assert not task.done(), task.exception() if not task.cancelled() else task
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serve_through(proxy: NatsProxy, upstream: str, spec: ServiceSpec,
                        stop: asyncio.Event) -> AsyncIterator[asyncio.Task]:
    """The service runner (shared.service.serve) of `spec`, as a task, on the nats-server at `upstream` reached through
    `proxy`; at the end, a task still running (a test that failed before it stopped) is cancelled and waited for."""
    from shared.service import serve
    from shared.settings import Settings

    async with proxy.serving(upstream) as proxied:
        task = asyncio.create_task(serve(spec, Settings(nats={"url": proxied}), stop))
        try:
            yield task
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
