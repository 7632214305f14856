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
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from shared.nats_direct import WRITE_AT_ONCE, check_subject, header_block, write_now

__all__ = ["WRITE_AT_ONCE", "NO_RESPONDERS", "Requester", "header_block", "requester_of"]

NO_RESPONDERS = "503"


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
            check_subject(subject)
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
            if not write_now(nc, subject, payload, headers, inbox, checked=True):
                await nc.publish(subject, payload, reply=inbox, headers=headers)  # behind what waits, or its errors
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
