"""The gateway's limits on open connections: in all (`gateway.max_connections`) and per source address
(`gateway.max_connections_per_source`).

Why not uvicorn's `limit_concurrency`: it limits nothing at the connection level. Every connection is accepted
and kept; each *request* is answered 503 while the open connections (or running tasks) are at the limit or above,
counting the requesting connection itself and idle keep-alive ones (75 s here). So anyone who opens that many idle
connections makes the gateway answer 503 to everyone, and the connections (file descriptors, buffers) still
grow without bound.

Here a connection is counted when it is accepted: one above either limit is answered `503 Service Unavailable`
with `Connection: close` at once, without waiting for its request, then half-closed; what the client still sends
is read and dropped for up to `REFUSED_LINGER` seconds (closing with unread bytes would make the kernel send a
reset, which may reach the client before it read the 503), then it is closed. The connections already open are
served as before. The 503 is the gateway's typed JSON error (`too_many_connections`, `Retry-After: 1`), encoded
once (`REFUSED`). Refused connections lingering at once are capped (REFUSED_LINGERING_MAX): past it one is closed at
once, so a flood of them cannot take the descriptors the admitted connections and the gateway's own need.

An admitted connection has `keep_alive` seconds (uvicorn's timeout_keep_alive) from its start, and from each
response, to send the whole head of its next request, or it is closed: uvicorn arms its keep-alive timer only after
a response and any byte disarms it, so a connection that sent nothing, or the start of a head, held its place (and
its source's) for as long as the client liked, and 16 silent sources held all 4096. Likewise a client that reads
nothing of a response for `keep_alive` seconds (the transport's buffer above its high-water mark all that time) is
cut off: the response waited in uvicorn's flow control for ever, holding the connection and its task.

When the total is full, a newcomer from a source holding less than its fair share (the total over the sources
holding connections, the newcomer's included) takes the place of an idle keep-alive connection (one waiting for its
next request's head, not a byte of it received) of the source holding the most among those with one, closed for
it (its oldest idle one), as long as that source holds at least two more than the newcomer's (so equals never
trade places back and forth). Otherwise 16 sources at the per-source cap, each renewing its connections within
keep_alive, held all 4096 for as long as they liked and every other client was refused. Closing an idle
keep-alive connection is what HTTP lets a server do at any time (a client retries an idempotent request on a
connection closed under it; uvicorn's own keep-alive timeout does the same); a connection with a request on its way
or in progress is never taken. A refused newcomer is answered as before.

A source is the TCP peer keyed as the token endpoint's bucket keys it (an IPv6 peer by its /64,
`source_address.counted_as`); a trusted proxy (`gateway.trusted_proxies`) carries many clients on its connections
and has no per-source cap, only the total; it neither takes an idle connection's place nor gives one up. Counts
are per gateway process.
"""

from __future__ import annotations

import asyncio
import resource
from collections import Counter
from typing import Protocol

from services.gateway.errors import error_parts
from services.gateway.source_address import SourceAddress, counted_as, parse_address
from shared.errors import Unavailable

try:  # the gateway's server (services/gateway/app.py); another uvicorn layout has no connection limits
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

def _refusal(exc: Unavailable) -> bytes:
    """The whole HTTP answer to a refused connection, in the gateway's error shape (services/gateway/errors.py: 503,
    the typed `{"code", "msg"}` body, `Retry-After`), encoded once: it is written when the gateway is full."""
    status, headers, body = error_parts(exc, close=True)
    head = [f"HTTP/1.1 {status} Service Unavailable", "content-type: application/json",
            f"content-length: {len(body)}", *(f"{name.lower()}: {value}" for name, value in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


REFUSED = _refusal(Unavailable(
    "the gateway has as many connections open as it takes, from your address or in all: send your requests over "
    "one client's connections (one requests.Session or httpx.Client, which reuses them) instead of a new "
    "connection each, close the ones you no longer use, and retry after a second",
    code="too_many_connections"))
REFUSED_LINGER = 2.0
REFUSED_LINGERING_MAX = 128  # refused connections draining at once (each a descriptor for up to REFUSED_LINGER)


class Evictable(Protocol):
    def evict(self) -> None:
        """Close this idle connection for a newcomer; it is counted out at once."""


class ConnectionLimits:
    """Open connections in all and per source key; `admit` counts one in or says no (making room by evicting an
    idle connection of the largest source when that is fair), `release` counts it out. `idle` holds the
    connections between requests, by source, oldest first."""

    def __init__(self, total: int, per_source: int, source: SourceAddress | None = None) -> None:
        self.total, self.per_source = total, per_source
        self.source = source or SourceAddress()
        self.open = 0
        self.by_source: Counter[str] = Counter()
        self.idle: dict[str, dict[Evictable, None]] = {}
        self.lingering = 0  # refused connections still draining (REFUSED_LINGER)
        self.evicted = 0

    def key(self, peer: str | None) -> str | None:
        """The per-source key of a TCP peer; None for a trusted proxy (and an unknown peer): total only."""
        if peer is None:
            return None
        address = parse_address(peer)
        if address is not None and self.source.trusted(address):
            return None
        return counted_as(peer)

    def admit(self, key: str | None) -> bool:
        if key is not None and self.by_source[key] >= self.per_source:
            return False
        if self.open >= self.total and not self._make_room(key):
            return False
        self.open += 1
        if key is not None:
            self.by_source[key] += 1
        return True

    def _make_room(self, key: str | None) -> bool:
        """Evict an idle connection of the source holding the most, if the newcomer is under its fair share and
        that source holds at least two more than it; False when none may go."""
        if key is None:
            return False
        held = self.by_source.get(key, 0)
        sources = len(self.by_source) + (0 if held else 1)
        if held * sources >= self.total:  # at or above its fair share already
            return False
        largest, most = None, held + 1
        for victim_key in self.idle:  # the sources with an idle connection (one pass, no sort: a flood of refused
            count = self.by_source[victim_key]  # newcomers pays little each)
            if count > most:
                largest, most = victim_key, count
        if largest is None:
            return False
        victim = next(iter(self.idle[largest]))  # its oldest idle one
        self.evicted += 1
        victim.evict()  # counts it out (release) and closes it
        return True

    def mark_idle(self, key: str | None, connection: Evictable) -> None:
        if key is not None:
            self.idle.setdefault(key, {})[connection] = None

    def mark_busy(self, key: str | None, connection: Evictable) -> None:
        waiting = self.idle.get(key) if key is not None else None
        if waiting is not None:
            waiting.pop(connection, None)
            if not waiting:
                del self.idle[key]

    def release(self, key: str | None) -> None:
        self.open -= 1
        if key is not None:
            self.by_source[key] -= 1
            if self.by_source[key] <= 0:
                del self.by_source[key]


def limited_protocol(limits: ConnectionLimits) -> type:
    """uvicorn's httptools protocol that counts its connection against `limits` and refuses one above them."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _admitted: bool = False
        _counted: bool = False  # in `limits` (an evicted connection is counted out before it is gone)
        _idle: bool = False  # waiting for a request's head, not a byte of it received: may be evicted
        _head_begun: bool = False  # a request's head has begun (httptools' message begin) and is not complete
        _refused: asyncio.TimerHandle | None = None
        _lingering: bool = False
        _head_due: asyncio.TimerHandle | None = None
        _unread: asyncio.TimerHandle | None = None  # a response the client has not read from for keep_alive seconds

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            self._source_key = limits.key(peer[0] if peer else None)
            if limits.admit(self._source_key):
                self._admitted = self._counted = True
                super().connection_made(transport)
                self._await_head()
                return
            self.transport = transport
            transport.write(REFUSED)
            if limits.lingering >= REFUSED_LINGERING_MAX:  # a flood of them: no draining, the descriptor goes now
                transport.close()
                return
            try:
                transport.write_eof()
            except (NotImplementedError, AttributeError, RuntimeError):  # pragma: no cover - not TCP
                transport.close()
                return
            self._lingering = True
            limits.lingering += 1
            self._refused = asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.abort)

        def _await_head(self) -> None:
            """Close this connection unless a request's head is complete within the keep-alive timeout (module
            docstring). It is idle (evictable) only if no byte of that head has come: a pipelined request's head
            may have begun while the previous request was answered (httptools began its message), and closing the
            connection then would drop a request on its way."""
            if self._head_due is not None:
                self._head_due.cancel()
            self._head_due = self.loop.call_later(self.timeout_keep_alive, self._head_overdue)
            if not self._head_begun:
                self._idle = True
                limits.mark_idle(self._source_key, self)

        def on_message_begin(self) -> None:
            self._head_begun = True
            super().on_message_begin()

        def _busy(self) -> None:
            if self._idle:
                self._idle = False
                limits.mark_busy(self._source_key, self)

        def evict(self) -> None:
            """Close this idle connection to make room for another source's (ConnectionLimits._make_room)."""
            self._busy()
            if self._counted:
                self._counted = False
                limits.release(self._source_key)
            if not self.transport.is_closing():
                self.transport.close()

        def _head_overdue(self) -> None:
            self._head_due = None
            if not self.transport.is_closing():
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._head_begun = False
            if self._head_due is not None:
                self._head_due.cancel()
                self._head_due = None
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.timeout_keep_alive_task is not None:  # idle now (no pipelined request): the next head is due
                self._await_head()

        def data_received(self, data: bytes) -> None:
            if self._admitted:
                self._busy()
                super().data_received(data)

        def eof_received(self) -> bool | None:
            if not self._admitted:
                self.transport.close()
                return None
            return super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._head_due, self._unread):
                if timer is not None:
                    timer.cancel()
            self._head_due = self._unread = None
            self._busy()
            if self._admitted:
                self._admitted = False
                if self._counted:
                    self._counted = False
                    limits.release(self._source_key)
                super().connection_lost(exc)
                return
            if self._refused is not None:
                self._refused.cancel()
            if self._lingering:
                self._lingering = False
                limits.lingering -= 1

        def pause_writing(self) -> None:
            if self._admitted:
                super().pause_writing()
                if self._unread is None:
                    self._unread = self.loop.call_later(self.timeout_keep_alive, self.transport.abort)

        def resume_writing(self) -> None:
            if self._unread is not None:
                self._unread.cancel()
                self._unread = None
            if self._admitted:
                super().resume_writing()

    return LimitedHttpToolsProtocol


def ensure_descriptors(max_connections: int, spare: int = 512) -> int:
    """Raise this process's soft limit on open files (up to the hard one) so `max_connections` client connections
    fit beside the gateway's own (bus, S3, ...); past the limit accept() fails with EMFILE and the server stops
    accepting for a while, everyone's connections refused alike. The soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + spare
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
