"""An idle log store waits for work (services/log_store/handlers.py `Ingestor.idle_fetch`): with nothing gathering and
nothing held, its consumer loop makes one fetch of one message, up to IDLE_FETCH, which the server answers as soon
as a message is published; before, it fetched with `flush_interval` (0.25 s) as the timeout and woke four times a
second with nothing to do. What it fetches then goes as before (rows gather for `flush_interval` with batched
fetches), and a stop ends the idle wait at once (the loop ends by itself, not cancelled after STOP_WAIT)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import nats.errors

from services.log_store import handlers
from services.log_store.handlers import IDLE_FETCH, Ingestor
from shared.settings import LogSettings


class Subscription:
    """Fetches as nats-py's answer them: the messages `publish`ed while one waits (a fetch of one: the first at
    once), else nats.errors.TimeoutError once its timeout is up. Each fetch's (batch, timeout) is recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []
        self.queue: asyncio.Queue = asyncio.Queue()

    def publish(self, name: str) -> None:
        self.queue.put_nowait(SimpleNamespace(data=b"x" * 100, headers={}, name=name))

    async def fetch(self, batch: int, timeout: float) -> list:
        self.calls.append((batch, timeout))
        try:
            async with asyncio.timeout(timeout):
                msgs = [await self.queue.get()]
        except TimeoutError:
            raise nats.errors.TimeoutError() from None
        while len(msgs) < batch and not self.queue.empty():
            msgs.append(self.queue.get_nowait())
        return msgs


def test_an_idle_loop_waits_for_a_message_then_gathers_as_before(monkeypatch):
    monkeypatch.setattr(handlers, "STOP_WAIT", 3.0)
    settings = LogSettings(flush_interval=0.02)

    async def scenario() -> tuple[Ingestor, Subscription, list[list[str]]]:
        ingestor = Ingestor(SimpleNamespace(settings=settings), js=None)
        sub = ingestor.sub = Subscription()
        flushed: list[list[str]] = []
        was_flushed = asyncio.Event()

        async def flush_with_retry(msgs, probe=False):
            flushed.append([m.name for m in msgs])
            was_flushed.set()

        ingestor.flush_with_retry = flush_with_retry
        ingestor.task = asyncio.create_task(ingestor.run())
        await asyncio.sleep(0.3)  # idle: 15 flush_intervals
        assert sub.calls == [(1, IDLE_FETCH)]  # one wait for work; before, a fetch every flush_interval
        sub.publish("r1")
        sub.publish("r2")
        await asyncio.wait_for(was_flushed.wait(), 10)
        await asyncio.sleep(0.3)  # idle again
        await asyncio.wait_for(ingestor.stop(), 10)
        return ingestor, sub, flushed

    ingestor, sub, flushed = asyncio.run(scenario())
    assert flushed == [["r1", "r2"]]  # the first came alone, the second with the next (batched) fetch
    assert sub.calls[0] == (1, IDLE_FETCH)
    gathering = sub.calls[1:-1]  # while r1 gathered: batched fetches within flush_interval
    assert gathering and all(batch == ingestor.fetch_batch and timeout <= 0.02 for batch, timeout in gathering)
    assert sub.calls[-1] == (1, IDLE_FETCH)  # idle again after the flush
    assert ingestor.task.done() and not ingestor.task.cancelled()  # the stop ended the wait: the loop ended itself


def test_a_stop_between_the_loops_awaits_does_not_start_an_idle_wait():
    async def scenario() -> list:
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=None)
        ingestor.sub = Subscription()
        ingestor.running = False
        return await asyncio.wait_for(ingestor.idle_fetch(), 1)

    assert asyncio.run(scenario()) == []


def test_both_consumer_loops_wait_by_one_idle_fetch_defined_once():
    """IDLE_FETCH was defined twice, in handlers.py (ingestion) and in deployments.py (announcements), free to drift
    apart: it is defined once (waits.py) and both loops use that one."""
    import ast
    from pathlib import Path

    from services.log_store import deployments, waits

    folder = Path(handlers.__file__).parent
    defined = [path.name for path in sorted(folder.glob("*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, (ast.Assign, ast.AnnAssign))
               and any(isinstance(t, ast.Name) and t.id == "IDLE_FETCH"
                       for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert defined == ["waits.py"]
    assert handlers.IDLE_FETCH is waits.IDLE_FETCH and deployments.IDLE_FETCH is waits.IDLE_FETCH
