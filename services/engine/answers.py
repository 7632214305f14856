"""Re-sent inference requests answered once.

The gateway re-sends a request left unanswered for 3 s (a replica may have died holding it) with the same
`Railyard-Request-Id` and `Railyard-Attempt: 2`. A replica that is still running the first attempt, or has just
answered it, answers the second from that one run (the same body, or the same by-reference object, which the
gateway deletes once it has read it), so the request runs and is logged once. Where the second attempt reaches
another replica, both run; then the records of slow or re-sent requests carry the request id
(`Railyard-Requests` on the log batch) and the log store stores the first and drops the other.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from shared.logrecords import ATTEMPT, REQUEST_ID

SLOW = 1.0  # seconds (from when the replica received it): such a request may be re-sent, so it is stored once
KEEP = 35.0  # seconds an answer is kept for a re-sent attempt (longer than the gateway waits in all)
KEPT_ANSWERS = 256


class RepeatedRequests:
    """In-flight and recent slow answers by request id."""

    def __init__(self) -> None:
        # the running attempts by id: None until a repeat waits for the answer (a future per request cost more
        # than the rare repeat)
        self.running: dict[str, asyncio.Future | None] = {}
        self.kept: OrderedDict[str, tuple[float, tuple[bytes, dict[str, str]]]] = OrderedDict()

    @staticmethod
    def request_id(msg: Any) -> str | None:
        return (msg.headers or {}).get(REQUEST_ID)

    def earlier(self, msg: Any) -> asyncio.Future | tuple[bytes, dict[str, str]] | None:
        """The first attempt's answer (a future while it runs) when this message repeats one, else None (and the
        message is now the running attempt of its id)."""
        request_id = self.request_id(msg)
        if not request_id:
            return None
        now = time.monotonic()
        while self.kept and next(iter(self.kept.values()))[0] < now:
            self.kept.popitem(last=False)
        if request_id in self.kept:
            return self.kept[request_id][1]
        if request_id in self.running:
            future = self.running[request_id]
            if future is None:
                future = self.running[request_id] = asyncio.get_running_loop().create_future()
            return future
        self.running[request_id] = None
        return None

    def answered(self, msg: Any, body: bytes, headers: dict[str, str], seconds: float) -> None:
        """The running attempt's answer: handed to attempts waiting for it, and kept a while if it was slow."""
        request_id = self.request_id(msg)
        if not request_id or request_id not in self.running:
            return
        future = self.running.pop(request_id)
        if future is not None and not future.done():
            future.set_result((body, headers))
        if seconds >= SLOW:
            self.kept[request_id] = (time.monotonic() + KEEP, (body, headers))
            while len(self.kept) > KEPT_ANSWERS:
                self.kept.popitem(last=False)

    def forget(self, msg: Any) -> None:
        """The running attempt ended without an answer (it failed unexpectedly)."""
        request_id = self.request_id(msg)
        future = self.running.pop(request_id, None) if request_id else None
        if future is not None and not future.done():
            future.cancel()

    @staticmethod
    def store_once(msg: Any, seconds: float) -> str | None:
        """The id the log store de-duplicates this request's record on: re-sent attempts and slow requests."""
        headers = msg.headers or {}
        request_id = headers.get(REQUEST_ID)
        if request_id and (headers.get(ATTEMPT) or seconds >= SLOW):
            return request_id
        return None
