"""The log store's consumer of the deployer's announcements waits for one when it has read them all
(services/log_store/deployments.py `Deployments.run`, IDLE_FETCH): one fetch of one announcement, which the server
answers as soon as one is published, instead of a fetch with a 1-s timeout every second (a pull request and a wake-up
with nothing to do, most of an idle log store's CPU after session 31's ingestion change). Until it has read the
stream (its start, an announcement owed) it fetches in batches with FETCH_WAIT as before, so `ready` is as soon as
it was. A stop unsubscribes once the loop has ended, so the idle wait's pull request leaves the server with it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest

from services.log_store import deployments
from services.log_store.deployments import FETCH_WAIT, IDLE_FETCH, Deployments
from shared import subjects
from tests.local_nats import local_nats_server, subscribed


def _announcement(name: str, pending: int, seq: int) -> SimpleNamespace:
    data = json.dumps({"deployment_id": seq, "name": name, "pipeline_id": 2, "workspace_id": 9,
                       "pipeline_version": "v"}).encode()

    async def ack() -> None:
        return None

    return SimpleNamespace(data=data, headers={}, subject=subjects.EVENT_PIPELINE_DEPLOYED, ack=ack,
                           metadata=SimpleNamespace(num_pending=pending, sequence=SimpleNamespace(stream=seq)))


class Subscription:
    """A fetch with FETCH_WAIT finds what was published or 'times out' at once (its second is not waited: the test
    counts fetches, not seconds); a fetch of one with IDLE_FETCH waits until something is published (the server's
    lingering pull request). Each fetch's (batch, timeout) is recorded."""

    def __init__(self, backlog: list[SimpleNamespace]) -> None:
        self.calls: list[tuple[int, float]] = []
        self.queue: asyncio.Queue = asyncio.Queue()
        for msg in backlog:
            self.queue.put_nowait(msg)
        self.waiting = asyncio.Event()
        self.unsubscribed = False

    async def fetch(self, batch: int, timeout: float) -> list:
        self.calls.append((batch, timeout))
        await asyncio.sleep(0)
        if self.queue.empty() and timeout == IDLE_FETCH:
            self.waiting.set()
            msgs = [await self.queue.get()]
            self.waiting.clear()
        elif self.queue.empty():
            raise nats.errors.TimeoutError()
        else:
            msgs = [self.queue.get_nowait()]
        while len(msgs) < batch and not self.queue.empty():
            msgs.append(self.queue.get_nowait())
        return msgs

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


async def _turns(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_consumer_that_read_every_announcement_waits_for_the_next_in_one_fetch():
    recorded: list[str] = []

    async def scenario() -> tuple[Deployments, Subscription]:
        known = Deployments(pool=None)  # type: ignore[arg-type]

        async def record(event) -> None:
            recorded.append(event.name)

        known.record = record  # type: ignore[method-assign]
        sub = known.sub = Subscription([_announcement("d-1", 1, 1), _announcement("d-2", 0, 2)])
        known.task = asyncio.create_task(known.run())
        await asyncio.wait_for(sub.waiting.wait(), 10)
        await _turns()  # the old loop made a fetch a turn here (each 'timing out' at once): dozens
        assert known.ready.is_set() and known.caught_up > 0
        assert sub.calls == [(64, FETCH_WAIT), (1, IDLE_FETCH)]  # the backlog in a batch, then one wait

        sub.queue.put_nowait(_announcement("d-3", 0, 3))  # published while it waits: taken, then waiting again
        await _turns()
        assert recorded == ["d-1", "d-2", "d-3"]
        assert sub.calls[2:] == [(1, IDLE_FETCH)] and sub.waiting.is_set()

        sub.queue.put_nowait(_announcement("d-4", 2, 4))  # two more behind it: read in a batch, then waiting
        sub.queue.put_nowait(_announcement("d-5", 1, 5))
        sub.queue.put_nowait(_announcement("d-6", 0, 6))
        await _turns()
        assert recorded[3:] == ["d-4", "d-5", "d-6"]
        assert sub.calls[3:] == [(64, FETCH_WAIT), (1, IDLE_FETCH)]
        await asyncio.wait_for(known.stop(), 10)
        return known, sub

    known, sub = asyncio.run(scenario())
    assert known.task.done() and sub.unsubscribed


def test_an_announcement_owed_keeps_the_batched_fetches_until_it_is_recorded():
    """One whose recording failed comes again (ack_wait): until then the consumer is not caught up, and each fetch
    that finds nothing asks EVENTS whether it still has it (forget_gone), as before; no idle wait meanwhile."""
    fails = [True]

    async def scenario() -> tuple[Deployments, Subscription]:
        known = Deployments(pool=None)  # type: ignore[arg-type]
        known.js = SimpleNamespace(stream_info=_first_seq(1))

        async def record(event) -> None:
            if fails[0]:
                raise OSError("the database is away")

        known.record = record  # type: ignore[method-assign]
        sub = known.sub = Subscription([_announcement("d-1", 0, 1)])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(deployments.asyncio, "sleep", _no_sleep)
            known.task = asyncio.create_task(known.run())
            await _turns(200)
            assert known.owed == {1} and not known.ready.is_set()
            assert len(sub.calls) > 3 and set(sub.calls) == {(64, FETCH_WAIT)}
            fails[0] = False
            sub.queue.put_nowait(_announcement("d-1", 0, 1))  # redelivered, and PostgreSQL is back
            await asyncio.wait_for(sub.waiting.wait(), 10)
        assert known.owed == set() and known.ready.is_set() and sub.calls[-1] == (1, IDLE_FETCH)
        await asyncio.wait_for(known.stop(), 10)
        return known, sub

    asyncio.run(scenario())


def _first_seq(first: int):
    async def stream_info(name: str):
        return SimpleNamespace(state=SimpleNamespace(first_seq=first))

    return stream_info


_real_sleep = asyncio.sleep


async def _no_sleep(delay: float, result=None):
    await _real_sleep(0)
    return result


@pytest.fixture
def jetstream_url(tmp_path: Path):
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


async def test_an_announcement_published_after_a_stop_goes_to_another_process(jetstream_url: str):
    """The stopping process's connection stays open after its stop (app.py closes it after); an announcement
    published then is fetched by another consumer of the durable at its first delivery, not taken by the stopped
    one's idle pull request (which would hold it, unacknowledged, for ack_wait: 30 s)."""
    nc = await nats.connect(jetstream_url)
    other = await nats.connect(jetstream_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=subjects.EVENTS_STREAM, subjects=["events.>"])
        known = Deployments(pool=None)  # type: ignore[arg-type]
        await known.start(js)  # its loop's task has not run yet
        fetch, idle = known.sub.fetch, asyncio.Event()

        async def fetching(batch: int, timeout: float) -> list:
            if timeout == IDLE_FETCH:
                idle.set()
            return await fetch(batch, timeout)

        known.sub.fetch = fetching  # type: ignore[method-assign]
        await asyncio.wait_for(idle.wait(), 30)  # the (empty) stream read: the idle fetch begins
        assert known.ready.is_set()
        await _turns()
        await subscribed(nc)  # the server has its pull request
        await asyncio.wait_for(known.stop(), 10)
        await subscribed(nc)

        other_js = other.jetstream()
        await other_js.publish(subjects.EVENT_PIPELINE_DEPLOYED, b"an announcement")
        again = await other_js.pull_subscribe_bind(durable=deployments.DURABLE, stream=subjects.EVENTS_STREAM)
        [msg] = await again.fetch(1, timeout=15)  # under ack_wait: one held by the stopped process is not back
        assert msg.data == b"an announcement" and msg.metadata.num_delivered == 1
        await msg.ack_sync()
    finally:
        await other.close()
        await nc.close()
