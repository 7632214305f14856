"""An inference body read as services/gateway/limits.py's read_body reads it, without a timer when it is already
there.

A batch-1 request's body arrives with its headers, so the server's `receive()` answers without waiting; arming
`asyncio.timeout` for it (a timer handle armed and cancelled: ~4 us a request in-process, more cold) buys nothing
then. The first `receive()` is stepped once by hand: when it finishes at once, its message is used as it is;
when it waits (the body is still on its way), it is awaited to the end under the same deadline as every later
chunk, `body_timeout` seconds from the start. Limits, errors and the disconnect answer are read_body's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from services.gateway.limits import read_rest, too_large
from shared.errors import RequestTimeout


class _Started:
    """Awaits a coroutine whose first step has run and yielded `pending` (what the task must wait on)."""

    def __init__(self, coro: Coroutine, pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                value = yield pending
            except BaseException as exc:  # noqa: BLE001 - a cancellation (the deadline's too) goes on into it
                try:
                    pending = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coro.send(value)
                except StopIteration as done:
                    return done.value


async def read_request_body(receive: Callable[[], Awaitable[dict]], limit: int, timeout: float) -> bytes | None:
    """`limits.read_body(receive, limit, timeout)`, without arming a timer when the whole body is already there."""
    deadline = asyncio.get_running_loop().time() + timeout
    step = receive()
    waiting: Awaitable[dict] | None = step
    if isinstance(step, Coroutine):
        try:
            pending = step.send(None)
        except StopIteration as done:
            message, waiting = done.value, None
        else:
            waiting = _Started(step, pending)
    if waiting is not None:
        try:
            async with asyncio.timeout_at(deadline):
                message = await waiting
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
    if message["type"] == "http.disconnect":
        return None
    chunk = message.get("body", b"")
    if len(chunk) > limit:
        raise too_large(limit)
    if not message.get("more_body"):
        return chunk
    return await read_rest(receive, [chunk], len(chunk), limit, deadline, timeout)
