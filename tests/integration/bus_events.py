"""Reading a stack's JetStream events from a test: which of the ids a test made were announced."""

from __future__ import annotations

import asyncio
import json
import time

import nats
from nats.js.api import DeliverPolicy


def announced(stack, subject: str, key: str, ids: set[str], timeout: float = 10.0) -> set[str]:
    """Which of `ids` appear as `key` in the events on `subject` since the stream began (waits until all have,
    or `timeout`)."""

    async def run() -> set[str]:
        nc = await nats.connect(stack.nats_url("ops"))
        seen: set[str] = set()
        try:
            sub = await nc.jetstream().subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
            deadline = time.monotonic() + timeout
            while not ids <= seen and time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    break
                seen.add(json.loads(msg.data)[key])
        finally:
            await nc.close()
        return seen & ids

    return asyncio.run(run())
