"""A small HTTP/1.1 load generator on raw asyncio streams (uvloop): prebuilt request bytes, keep-alive
connections, responses read by Content-Length. It costs a fraction of a general client's CPU per request, which
matters when it shares the 2 cores with the stack (the issue allows wrk "or an equivalent bounded generator").
Every loop is bounded in time and count, and it only talks to loopback."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit


def build_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the load generator only targets loopback")
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            raise RuntimeError("response without Content-Length")
        end = lower.find(b"\r\n", at + 2)
        body = await self.reader.readexactly(int(lower[at + 17:end]))
        return status, body

    def close(self) -> None:
        self.writer.close()


async def sequential(url: str, request: bytes, count: int) -> list[float]:
    """Latencies (s) of `count` requests one after another on one connection."""
    connection = await Connection(url).open()
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            status, body = await connection.send(request)
            samples.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    finally:
        connection.close()
    return samples


async def concurrent(url: str, request: bytes, connections: int, seconds: float, max_requests: int = 1_000_000
                     ) -> float:
    """Requests per second over `connections` keep-alive connections for `seconds` (or `max_requests`)."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        connection = await Connection(url).open()
        try:
            while time.perf_counter() < deadline and done < max_requests:
                status, body = await connection.send(request)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
                done += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - started)
