"""Reading a stack's JetStream events from a test: which of the ids a test made were announced; what the EVENTS
stream holds of them."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import nats
from nats.js.api import DeliverPolicy

from shared import subjects


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
                try:  # another test on this stack may publish what is not an event here (test_dead_letters' poison)
                    seen.add(json.loads(msg.data)[key])
                except (ValueError, KeyError, TypeError):
                    continue
        finally:
            await nc.close()
        return seen & ids

    return asyncio.run(run())


async def stream_events(stack, subject: str, key: str, values: set) -> list[dict]:
    """Every event on `subject` (a filter: "events.model.>") the EVENTS stream holds whose `key` is one of `values`,
    in stream order, each with its subject (`_subject`), Nats-Msg-Id header (`_msg_id`) and stream sequence (`_seq`)
    added: what an outbox sent, how often, in which order, under which de-duplication key."""
    nc = await nats.connect(stack.settings().nats.url)
    found = []
    try:
        sub = await nc.jetstream().pull_subscribe(subject, stream=subjects.EVENTS_STREAM)
        while (await sub.consumer_info()).num_pending:
            for message in await sub.fetch(500, timeout=5):
                try:  # tests/integration/test_dead_letters.py puts messages that are not JSON on the stream, and
                    body = json.loads(message.data)  # JSON nested past the recursion limit (RecursionError)
                except (ValueError, RecursionError):
                    body = None
                if isinstance(body, dict) and body.get(key) in values:
                    found.append(body | {"_subject": message.subject,
                                         "_msg_id": (message.headers or {}).get("Nats-Msg-Id"),
                                         "_seq": message.metadata.sequence.stream})
                await message.ack()
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found


async def outbox_sent(stack, schema: str, key: str, values: set, within: float = 90.0) -> None:
    """Wait until `schema`'s outbox holds no row whose payload's `key` is one of `values`. The outbox deletes a row
    only once JetStream has acknowledged its event (shared/outbox.py), so every event those changes wrote is on the
    stream by then, a second copy of one included: the barrier before asserting each is there once, where a fixed
    sleep (1 s) could end before a copy went out on a slow host. `within`: a row refused OWN_RETRIES times waits for
    the outbox's IDLE rounds."""
    texts = [str(value) for value in values]
    deadline = time.monotonic() + within
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        while left := await conn.fetchval(f'SELECT count(*) FROM "{schema}".outbox WHERE payload->>$1 = ANY($2)',
                                          key, texts):
            assert time.monotonic() < deadline, f"{schema}'s outbox still holds {left} of those events"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
