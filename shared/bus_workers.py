"""How many commands of one subject a service handles at once, and how it stops without losing one it took.

A command subscriber (`shared.bus.command`) handles up to `nats.command_workers` commands of its subject at once
(FastStream's `max_workers`), so a slow command (a large listing, a deploy, a command waiting on a lock) does not
hold up the ones behind it. A handler that must see one command at a time says so with `max_workers=1` and a
comment. Core NATS request/reply has no acknowledgement and no redelivery: a command the process took and then
dropped leaves its caller waiting for its timeout. So a stopping service first drains its command subscriptions
(`drain_commands`): the server stops routing the subjects to it (another replica of the queue group, or nobody:
the caller's request fails at once with no responders), every command already delivered is handled and answered,
and only then does FastStream stop the subscribers (which would drop what it had not started).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import nats.errors

log = logging.getLogger("railyard.bus")

_COMMAND_WORKERS: ContextVar[int] = ContextVar("railyard_command_workers", default=1)


@contextlib.contextmanager
def command_workers(count: int) -> Iterator[None]:
    """Within the block, `command()` subscribers without their own `max_workers` handle `count` commands at once.
    The service runner sets the process's `nats.command_workers` around building its router; outside it (unit
    tests, `TestNatsBroker`) the default is 1."""
    token = _COMMAND_WORKERS.set(max(1, count))
    try:
        yield
    finally:
        _COMMAND_WORKERS.reset(token)


def default_command_workers() -> int:
    """Commands at once for a subscriber that names no `max_workers` (see `command_workers`)."""
    return _COMMAND_WORKERS.get()


def _idle(sub: Any) -> bool:
    """No command of the subscriber is buffered or being handled (FastStream's internals, 0.7: its MultiLock counts
    the messages being processed; a concurrent subscriber also buffers messages and holds a semaphore per
    worker)."""
    if not getattr(sub.lock, "empty", True):
        return False
    limiter = getattr(sub, "limiter", None)
    if limiter is None:
        return True
    return limiter.value == sub.max_workers and sub.receive_stream.statistics().current_buffer_used == 0


async def _drain_subscription(subscription: Any) -> None:
    """nats-py's drain: UNSUB at the server, then every message already delivered passed to the callback."""
    try:
        with contextlib.suppress(nats.errors.Error):
            await subscription.drain()
    except asyncio.CancelledError:
        # out of time: end it as an unsubscribe would (nats-py 2.x; the UNSUB is already sent), or the connection's
        # own drain at the broker's stop would wait for it another 30 s
        subscription._stop_processing()
        subscription._conn._remove_sub(subscription._id)
        raise


async def _drain(sub: Any) -> None:
    subscription = sub.subscription
    if subscription is not None:
        # ours to end from here, even when the drain times out: FastStream's own stop must not unsubscribe it again
        # (nats-py raises on a drained subscription, and the broker's stop would fail)
        sub.subscription = None
        # UNSUB at the server, then wait until every message already delivered was passed to the subscriber's
        # callback (for a one-at-a-time subscriber that is handling it; a concurrent one buffers it)
        await _drain_subscription(subscription)
    # a concurrent subscriber: what it buffered is started within a turn of the loop, so idle twice in a row
    # (a loop turn apart) means nothing is left
    while True:
        was_idle = _idle(sub)
        await asyncio.sleep(0.01)
        if was_idle and _idle(sub):
            return


async def drain_commands(broker: Any, timeout: float) -> None:
    """Stop taking commands (core NATS subscriptions) and wait, up to `timeout` seconds, until every command
    already delivered is answered. JetStream consumers are left to FastStream's stop: what they do not
    acknowledge is redelivered. Call it before `broker.stop()`, while the connection is open."""
    from faststream.nats.subscriber.usecases.core_subscriber import CoreSubscriber

    subs = [sub for sub in broker.subscribers if isinstance(sub, CoreSubscriber) and sub.running]
    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(_drain(sub) for sub in subs)), timeout)
    except TimeoutError:
        busy = [sub.subject.template for sub in subs if not _idle(sub)]
        log.warning("commands still running after %.0f s of draining: %s", timeout, ", ".join(busy) or "none")
    else:
        log.debug("drained %d command subscriptions in %.2f s", len(subs), time.monotonic() - started)


class ConcurrentCallback:
    """A raw nats-py subscription callback (the log store's Arrow subjects) that handles up to `at_once` messages at
    once, as `command()` subscribers do; nats-py awaits a callback before it hands over the next message, so a plain
    one takes one at a time. Subscribe with `cb=callback.take` (nats-py wants a coroutine function). When `at_once`
    are running, the subscription waits (its pending queue holds the rest). At stop: `drain_raw`."""

    def __init__(self, handle: Callable[[Any], Awaitable[None]], at_once: int) -> None:
        self._handle = handle
        self._gate = asyncio.Semaphore(max(1, at_once))
        self._running: set[asyncio.Task[None]] = set()

    async def take(self, msg: Any) -> None:
        """The subscription's callback: start handling `msg`, once fewer than `at_once` are running."""
        await self._gate.acquire()
        task = asyncio.create_task(self._run(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, msg: Any) -> None:
        try:
            await self._handle(msg)
        finally:
            self._gate.release()

    async def wait(self, timeout: float) -> None:
        """Until every message taken is handled (at most `timeout` seconds; the rest is logged)."""
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=timeout)
        if pending:
            log.warning("%d raw commands still running after %.0f s", len(pending), timeout)


async def drain_raw(subscription: Any, callback: ConcurrentCallback, timeout: float) -> None:
    """Stop a raw subscription taking messages and answer every one it took (see `drain_commands`)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_drain_subscription(subscription), timeout)
    await callback.wait(timeout)
