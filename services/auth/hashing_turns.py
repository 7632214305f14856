"""Who hashes next: the auth service's argon2 turns, handed out by priority (services/auth/handlers.py).

At most `at_once` password checks hash together (argon2's memory and the cores, docs/auth.md "Sign-in capacity"),
and a check that does not get a turn within its wait is refused (503). Until session 32 the waiting checks were served
first come first served (an asyncio.Semaphore): under a flood of guesses every turn went to the flood in its order,
and an honest sign-in queued behind all of it, waited the whole 2 s and got 503, or got its turn near the end and,
with a hash slowed by a busy machine, passed the gateway's 5 s (504). Now a waiting check is served by its priority,
the failed checks its source made lately (SourceFailures; its name tried and source's failures counted by the
database too), lowest first, and in order of arrival among equals: a source with no recent failure (a person signing
in) goes before every source that keeps failing, whatever their number. And the failing sources' checks hold at most
HASHING_AT_ONCE - 1 turns together: a clean source's check finds a turn free at once instead of waiting for a flood's
hash to end (seconds each at the default cost on a busy machine: wait and own hash passed the gateway's 5 s). Nothing
else changes: as many hashes at once, the same wait, the same 503; with no failing source every turn is a person's; a
flood's own checks wait longer (and more of them are refused) instead of the honest ones.

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
    among equals, or TimeoutError after `wait` seconds (taking nothing). Checks of failing sources (priority above 0)
    hold at most `at_once - 1` turns together (at least 1): one turn is always left for a clean source's check, which
    then waits for no flood's hash to end."""

    def __init__(self, at_once: int) -> None:
        self.at_once = at_once
        self.failing_at_once = max(1, at_once - 1)
        self._held = 0
        self._held_failing = 0
        self._waiting: list[tuple[int, int, asyncio.Future]] = []  # (priority, arrival, granted when done)
        self._arrivals = itertools.count()
        self._given_up = 0  # waiters that gave up and are still in the heap

    @property
    def held(self) -> int:
        return self._held

    @property
    def held_failing(self) -> int:
        return self._held_failing

    @property
    def waiting(self) -> int:
        return len(self._waiting) - self._given_up

    def _may_take(self, failing: bool) -> bool:
        return self._held < self.at_once and (not failing or self._held_failing < self.failing_at_once)

    async def acquire(self, priority: int, wait: float) -> bool:
        """A turn (whether it counts as a failing source's: pass it to `release`)."""
        failing = priority > 0
        # a turn is free for a check only while no check it may take it for waits (release hands a freed turn to the
        # first waiter that may take it, never back to the pool)
        if self._may_take(failing):
            self._take(failing)
            return failing
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), granted))
        try:
            async with asyncio.timeout(wait):
                await granted
        except BaseException:  # the wait ended (TimeoutError) or its caller went away (CancelledError)
            if granted.done() and not granted.cancelled():
                self.release(failing)  # handed over as the wait ended: pass it on, or a turn is lost for good
            else:
                granted.cancel()
                self._gave_up()
            raise
        return failing

    def _take(self, failing: bool) -> None:
        self._held += 1
        self._held_failing += failing

    def release(self, failing: bool) -> None:
        """A turn ends: to the first live waiter that may take it (counted held on its behalf), else free."""
        self._held -= 1
        self._held_failing -= failing
        while self._waiting:
            priority, _, granted = self._waiting[0]
            if granted.done():  # gave up (cancelled)
                heapq.heappop(self._waiting)
                self._given_up -= 1
                continue
            if not self._may_take(priority > 0):  # the first is a failing source's (clean ones come first): wait
                return
            heapq.heappop(self._waiting)
            self._take(priority > 0)
            granted.set_result(None)
            return

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
