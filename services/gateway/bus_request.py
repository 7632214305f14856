"""Request/reply to the engine over the gateway's nats-py connection, with less work per request than
`Client.request` (issue 20: ~110 us of the gateway's CPU per batch-1 request went to it).

nats-py's request puts each reply on its wildcard subscription's queue, which a task of its own takes off and
hands to a callback that resolves the request's future (two extra turns of the event loop per reply), makes each
request's inbox token from `os.urandom`, waits with `asyncio.wait_for`, and publishes through its flusher task
(one more turn). Here one reply subscription per connection resolves the waiting future as nats-py parses the
reply (nats-py's own single-reply path: a subscription's `future`), inbox tokens count up under a random prefix
of the connection's inbox, the timeout is a timer handle, and a request is written to the connection at once
when nothing else is waiting to be flushed (else it goes through nats-py's publish, in order behind the rest).
What travels is what `Client.request` sends: the same HPUB command and header block, the same reply inbox
namespace (the identity's `inbox_prefix`, which its permissions allow), and the same errors (NoRespondersError
for the server's 503 status reply, TimeoutError)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import nats.errors
from nats.aio.msg import Msg

WRITE_AT_ONCE = 64 * 1024  # larger payloads go through nats-py's flusher, which waits for the socket to drain
_SUBJECT_INVALID = re.compile(r"[ \t\r\n]")  # nats-py's publish check: CRLF would inject protocol commands
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's header key check
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
NO_RESPONDERS = "503"


def header_block(headers: dict[str, str]) -> bytes:
    """A NATS header block as nats-py's publish writes it (keys checked, values trimmed and stripped of CR/LF)."""
    lines = [b"NATS/1.0\r\n"]
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        if not _HEADER_KEY.fullmatch(key):
            raise nats.errors.BadHeaderError(key)
        lines.append(b"%s: %s\r\n" % (key.encode(), v.strip().translate(_NEWLINES).encode()))
    lines.append(b"\r\n")
    return b"".join(lines)


class _Replies:
    """Stands in for the future of nats-py's single-reply subscriptions: `Client._process_msg` calls
    `set_result(msg)` for every message of the subscription, which here resolves the request it answers."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future] = {}

    def cancelled(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        future = self.waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


class Requester:
    """`request(subject, payload, timeout, headers)` -> the reply `Msg`, like `Client.request` (module docstring)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.replies = _Replies()
        self.prefix = ""
        self.count = 0
        self.checked: set[str] = set()
        self.subscription: Any = None
        self._starting: asyncio.Lock | None = None

    async def _start(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self.subscription is None:
                prefix = self.nc.new_inbox() + "."  # the identity's inbox prefix and a random token
                self.subscription = await self.nc.subscribe(prefix + "*", future=self.replies)  # type: ignore[arg-type]
                self.prefix = prefix

    def _check(self, subject: str) -> None:
        if subject not in self.checked:
            if not subject or _SUBJECT_INVALID.search(subject):
                raise nats.errors.BadSubjectError
            if len(self.checked) > 10_000:
                self.checked.clear()
            self.checked.add(subject)

    async def request(self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]) -> Msg:
        """The reply to one request; NoRespondersError when nobody listens, TimeoutError when nobody answers."""
        if self.subscription is None:
            await self._start()
        self._check(subject)
        nc = self.nc
        self.count += 1
        inbox = f"{self.prefix}{self.count}"
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.replies.waiting[inbox] = future
        try:
            if nc._pending_data_size or len(payload) > WRITE_AT_ONCE or not nc.is_connected or nc.is_draining_pubs:
                await nc.publish(subject, payload, reply=inbox, headers=headers)  # behind what waits, or its errors
            else:
                if len(payload) > nc.max_payload:
                    raise nats.errors.MaxPayloadError
                hdr = header_block(headers)
                nc.stats["out_msgs"] += 1
                nc.stats["out_bytes"] += len(payload)
                nc._transport.write(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                    subject.encode(), inbox.encode(), len(hdr), len(hdr) + len(payload), hdr, payload))
            timer = loop.call_later(timeout, _expire, future)
            try:
                msg = await future
            finally:
                timer.cancel()
        finally:
            self.replies.waiting.pop(inbox, None)
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg


_REQUESTER = "_railyard_requester"


def requester_of(nc: Any) -> Requester:
    """The connection's one Requester, kept on the connection object: it goes with the connection (a cycle the
    garbage collector frees). A WeakKeyDictionary by connection never let an entry go, since the Requester (its
    value) holds the connection (its key) strongly."""
    requester = getattr(nc, _REQUESTER, None)
    if requester is None:
        requester = Requester(nc)
        setattr(nc, _REQUESTER, requester)
    return requester
