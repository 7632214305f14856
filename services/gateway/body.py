"""An inference body read as services/gateway/limits.py's read_body reads it, without a timer when it is already
there.

A batch-1 request's body arrives with its headers, so the server's `receive()` answers without waiting; arming
`asyncio.timeout` for it (a timer handle armed and cancelled: ~4 us a request in-process, more cold) buys nothing
then. The first `receive()` is stepped once by hand: when it finishes at once, its message is used as it is;
when it waits (the body is still on its way), it is awaited to the end under the same deadline as every later
chunk, `body_timeout` seconds from the start. Limits, errors and the disconnect answer are read_body's.

A body that comes in several chunks (a 1,000-row JSON body: ~10 of uvicorn's 64 KiB flow-control steps) is, when
the server is uvicorn's httptools protocol (the gateway's, services/gateway/app.py), taken from the protocol as
httptools hands it over, chunk by chunk, and joined once (`_read_rest_in_place`), instead of one `receive()` a
chunk: uvicorn appended each chunk to a bytearray, each `receive()` copied that bytearray into a new `bytes` and
made an event dict, and the chunks were joined at the end: three copies of the body where one is left. Any other
server (or a `receive` wrapped by middleware) goes through `receive()` as before."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from services.gateway.limits import read_rest, too_large
from shared.errors import RequestTimeout

try:  # checked with uvicorn 0.29 and 0.54 (tests/unit/test_gateway_body_uvicorn.py); another layout: receive()
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
except ImportError:  # pragma: no cover - uvicorn without its httptools protocol module
    RequestResponseCycle = None  # type: ignore[assignment,misc]


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
    cycle = getattr(receive, "__self__", None)
    if type(cycle) is RequestResponseCycle:
        return await _read_rest_in_place(cycle, chunk, limit, deadline, timeout)
    return await read_rest(receive, [chunk], len(chunk), limit, deadline, timeout)


class _Chunks:
    """Stands in for uvicorn's `cycle.body` bytearray while a body is read: its protocol's `on_body` does
    `cycle.body += chunk` and pauses reading when `len(cycle.body)` passes 64 KiB; here `+=` keeps the chunk (a
    `bytes` of its own, from httptools) and `len` is what came since the last wake-up, as with the bytearray that
    each `receive()` replaces."""

    __slots__ = ("chunks", "fresh", "size")

    def __init__(self, chunks: list) -> None:
        self.chunks = chunks
        self.size = sum(len(chunk) for chunk in chunks)
        self.fresh = 0

    def __iadd__(self, chunk: bytes) -> _Chunks:
        self.chunks.append(chunk)
        self.size += len(chunk)
        self.fresh += len(chunk)
        return self

    extend = __iadd__  # in case a uvicorn appends with bytearray.extend

    def __len__(self) -> int:
        return self.fresh


async def _read_rest_in_place(cycle: RequestResponseCycle, first: bytes, limit: int, deadline: float,
                              timeout: float) -> bytes | None:
    """The rest of the body, read as uvicorn's `receive()` would read it (the same flow control, disconnect and end
    of body), by gathering the chunks uvicorn's protocol hands to `cycle.body` (`_Chunks`) and joining them once:
    each `receive()` copied the chunks into a bytearray, the bytearray into a `bytes`, and made an event dict."""
    held = cycle.body  # what came since the first receive()
    body = cycle.body = _Chunks([first, bytes(held)] if held else [first])
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                if cycle.disconnected or cycle.response_complete:  # receive() would say http.disconnect
                    return None
                if body.size > limit:
                    raise too_large(limit)
                if not cycle.more_body:
                    return b"".join(body.chunks)
                body.fresh = 0
                cycle.flow.resume_reading()  # the protocol pauses reading past 64 KiB held, as for receive()
                await cycle.message_event.wait()
                cycle.message_event.clear()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
    finally:
        cycle.body = bytearray()
