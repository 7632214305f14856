"""The inference body reader (services/gateway/body.py) answers as limits.read_body does: a body there at once,
one that comes later or in chunks, one past the limit (413) or the deadline (408), a client gone; a cancelled
request stays cancelled."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.body import read_request_body
from services.gateway.limits import read_body
from shared.errors import PayloadTooLarge, RequestTimeout


def _receiver(messages: list[dict], delay: float = 0.0):
    queue = list(messages)

    async def receive() -> dict:
        if delay:
            await asyncio.sleep(delay)
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


CASES = [
    ([{"type": "http.request", "body": b"abc", "more_body": False}], b"abc"),
    ([{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}], b"abc"),
    ([{"type": "http.disconnect"}], None),
    ([{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}], None),
    ([{"type": "http.request", "body": b"", "more_body": False}], b""),
]


@pytest.mark.parametrize("delay", [0.0, 0.01])
@pytest.mark.parametrize(("messages", "expected"), CASES)
async def test_bodies_read_as_read_body_reads_them(messages, expected, delay) -> None:
    assert await read_request_body(_receiver(messages, delay), 100, 5) == expected
    assert await read_body(_receiver(messages, delay), 100, 5) == expected


@pytest.mark.parametrize("delay", [0.0, 0.01])
async def test_a_body_past_the_limit_is_413(delay) -> None:
    for messages in ([{"type": "http.request", "body": b"x" * 11}],
                     [{"type": "http.request", "body": b"x" * 6, "more_body": True},
                      {"type": "http.request", "body": b"x" * 6}]):
        with pytest.raises(PayloadTooLarge):
            await read_request_body(_receiver(messages, delay), 10, 5)


async def test_a_body_that_does_not_come_in_time_is_408() -> None:
    async def never() -> dict:
        await asyncio.sleep(60)
        return {}

    with pytest.raises(RequestTimeout):
        await read_request_body(never, 10, 0.05)
    chunks = iter([{"type": "http.request", "body": b"a", "more_body": True}])

    async def first_then_never() -> dict:
        message = next(chunks, None)
        if message is None:
            await asyncio.sleep(60)
        return message

    with pytest.raises(RequestTimeout):
        await read_request_body(first_then_never, 10, 0.05)


async def test_a_cancelled_read_is_cancelled() -> None:
    started = asyncio.Event()

    async def slow() -> dict:
        started.set()
        await asyncio.sleep(60)
        return {}

    task = asyncio.create_task(read_request_body(slow, 10, 30))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
