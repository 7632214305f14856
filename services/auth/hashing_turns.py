"""Who hashes next: the auth service's argon2 turns, handed out by priority (services/auth/handlers.py).

At most `at_once` password checks hash together (argon2's memory and the cores, docs/auth.md "Sign-in capacity"),
and a check that does not get a turn within its wait is refused (503). Until session 32 the waiting checks were served
first come first served (an asyncio.Semaphore): under a flood of guesses every turn went to the flood in its order,
and an honest sign-in queued behind all of it, waited the whole 2 s and got 503, or got its turn near the end and,
with a hash slowed by a busy machine, passed the gateway's 5 s (504). Now a waiting check is served by its priority,
the failed checks its source made lately (SourceFailures; its user and source's failures counted by the database
too), lowest first, and in order of arrival among equals: a source with no recent failure (a person signing in) goes
before every source that keeps failing, whatever their number. Nothing else changes: as many hashes at once, the same
wait, the same 503; a flood's own checks wait longer (and more of them are refused) instead of the honest ones.

A source is the address the gateway names (an IPv6 client's /64). One with a botnet's many clean addresses gets one
clean-priority check an address until each has failed: no worse than before. The counts are this process's only
(each auth replica has its own turns) and only order the queue: the delay, the lock and the one-attempt-at-a-time
rule are the database's, unchanged."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import OrderedDict


class HashingTurns:
    """At most `at_once` turns held at a time; a waiter gets a freed turn lowest `priority` first, first come first
    among equals, or TimeoutError after `wait` seconds (taking nothing)."""

    def __init__(self, at_once: int) -> None:
        self.at_once = at_once
        self._held = 0
        self._waiting: list[tuple[int, int, asyncio.Future]] = []  # (priority, arrival, granted when done)
        self._arrivals = itertools.count()
        self._given_up = 0  # waiters that gave up and are still in the heap

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return len(self._waiting) - self._given_up

    async def acquire(self, priority: int, wait: float) -> None:
        # a turn is free only while nobody waits (release hands a freed turn to a waiter, never back to the pool)
        if self._held < self.at_once:
            self._held += 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), granted))
        try:
            async with asyncio.timeout(wait):
                await granted
        except BaseException:  # the wait ended (TimeoutError) or its caller went away (CancelledError)
            if granted.done() and not granted.cancelled():
                self.release()  # handed over as the wait ended: pass it on, or a turn is lost for good
            else:
                granted.cancel()
                self._gave_up()
            raise

    def release(self) -> None:
        """A turn ends: to the first live waiter (it is counted held on its behalf), else free."""
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if granted.done():  # gave up (cancelled)
                self._given_up -= 1
                continue
            granted.set_result(None)
            return
        self._held -= 1

    def _gave_up(self) -> None:
        self._given_up += 1
        # waiters that gave up leave the heap when they reach its top; low ones under a stream of higher ones would
        # not, so past half of it they are swept at once
        if self._given_up > 64 and self._given_up * 2 > len(self._waiting):
            self._waiting = [entry for entry in self._waiting if not entry[2].done()]
            heapq.heapify(self._waiting)
            self._given_up = 0


class SourceFailures:
    """Failed password checks per source, each counting 1 and halving every `half_life` seconds; at most `size`
    sources (the least recently failed forgotten first)."""

    def __init__(self, half_life: float = 60.0, size: int = 10_000) -> None:
        self.half_life = half_life
        self.size = size
        self._counts: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (count, when, monotonic)

    def _now(self, source: str, now: float) -> float:
        count, when = self._counts.get(source, (0.0, now))
        return count * 0.5 ** ((now - when) / self.half_life)

    def failed(self, source: str) -> None:
        now = time.monotonic()
        self._counts[source] = (self._now(source, now) + 1.0, now)
        self._counts.move_to_end(source)
        while len(self._counts) > self.size:
            self._counts.popitem(last=False)

    def priority(self, source: str) -> int:
        """0 for a source with no failure lately (under half of one left), else about how many it made lately."""
        return math.floor(self._now(source, time.monotonic()) + 0.5)
