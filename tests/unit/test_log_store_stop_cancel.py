"""A cancel of the log store's `Ingestor.stop` itself is raised (services/log_store/handlers.py). Before, stop waited
for the consumer loop with asyncio.wait_for inside `except (TimeoutError, CancelledError): pass`: a cancel of the stop
was taken for the loop's and stop() returned normally to a caller that had been cancelled, and on Python 3.11
wait_for returns the loop's result instead of raising when the loop ends in the step the cancel comes (bpo-42130).
Nothing cancels stop() today (app.stop awaits it); these keep a caller that bounds it from going on past its bound."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.log_store import handlers
from services.log_store.handlers import Ingestor
from shared.settings import LogSettings


def _ingestor() -> Ingestor:
    return Ingestor(SimpleNamespace(settings=LogSettings()), js=None)


def test_a_cancel_of_stop_while_a_flush_is_under_way_is_raised_and_ends_the_loop():
    async def scenario() -> tuple[asyncio.Task, asyncio.Task]:
        ingestor = _ingestor()
        ingestor.task = asyncio.create_task(asyncio.Event().wait())  # a flush that does not end
        stopping = asyncio.create_task(ingestor.stop())
        await asyncio.sleep(0.05)
        stopping.cancel()
        await asyncio.wait({stopping}, timeout=3.0)
        await asyncio.wait({ingestor.task}, timeout=3.0)
        return stopping, ingestor.task

    stopping, loop = asyncio.run(scenario())
    assert stopping.cancelled(), "stop() returned normally to a cancelled caller"
    assert loop.cancelled()


def test_a_cancel_of_stop_that_comes_as_the_loop_ends_is_raised():
    async def scenario() -> asyncio.Task:
        ingestor = _ingestor()
        flushed = asyncio.get_running_loop().create_future()
        ingestor.task = asyncio.create_task(asyncio.wait_for(flushed, 10.0))  # the flush under way
        stopping = asyncio.create_task(ingestor.stop())
        await asyncio.sleep(0.05)
        # the loop's end and the stop's cancel in one step: this callback runs before stop's wait hears of the end
        ingestor.task.add_done_callback(lambda _: stopping.cancel())
        flushed.set_result(None)
        await asyncio.wait({stopping}, timeout=3.0)
        return stopping

    assert asyncio.run(scenario()).cancelled(), "stop() returned normally to a cancelled caller"


def test_a_loop_cancelled_by_another_or_stuck_still_lets_stop_return(monkeypatch):
    monkeypatch.setattr(handlers, "STOP_WAIT", 0.2)

    async def scenario() -> None:
        ingestor = _ingestor()
        ingestor.task = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        ingestor.task.cancel()  # not stop's cancel: stop returns normally
        await asyncio.wait_for(ingestor.stop(), 3.0)
        stuck = _ingestor()
        stuck.task = asyncio.create_task(asyncio.Event().wait())
        await asyncio.wait_for(stuck.stop(), 3.0)  # STOP_WAIT ran out: the loop is cancelled, stop returns
        assert stuck.task.cancelled()

    asyncio.run(scenario())
