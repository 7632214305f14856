"""FastStream's pull-consumer loop and nats-py's builtin TimeoutError (shared/faststream_logs.py): the supervisor's
ERROR with a traceback for a fetch that found no message in time is dropped, any other failure of the loop is not."""

from __future__ import annotations

import asyncio
import inspect
import logging
from types import SimpleNamespace

import pytest
from faststream._internal.endpoint.subscriber.supervisor import TaskCallbackSupervisor
from faststream.nats.subscriber.usecases.stream_pull_subscriber import PullStreamSubscriber

from shared.bus import make_broker
from shared.settings import Settings


def _loop_failure(raised: BaseException) -> BaseException:
    """The exception FastStream's real pull loop ends with when fetch raises `raised`."""

    async def fetch(batch, timeout):
        raise raised

    loop = SimpleNamespace(subscription=SimpleNamespace(fetch=fetch), running=True,
                           pull_sub=SimpleNamespace(batch_size=16, timeout=1.0))
    with pytest.raises(type(raised)) as caught:
        asyncio.run(PullStreamSubscriber._consume_pull(loop, cb=None))
    return caught.value


def test_the_supervisors_record_of_a_fetch_timeout_is_dropped_and_other_failures_kept(caplog):
    make_broker(Settings(), "logtest")  # a service's broker, and with it its FastStream logger
    logger = logging.getLogger("railyard.logtest.faststream")
    retrying = "Task-7 raised an exception, retrying...\nIf this behavior causes issues, ..."
    with caplog.at_level(logging.INFO, logger=logger.name):
        # nats-py >= 2.15 raises the builtin TimeoutError (not nats.errors.TimeoutError, which the loop catches)
        logger.log(logging.ERROR, retrying, exc_info=_loop_failure(TimeoutError()))
        logger.log(logging.INFO, "callback for Task-7 is being executed...")
        assert caplog.records == []
        logger.log(logging.ERROR, retrying, exc_info=_loop_failure(RuntimeError("broken")))
        try:
            raise TimeoutError("a handler's own timeout")
        except TimeoutError as elsewhere:
            logger.log(logging.ERROR, "handler failed", exc_info=elsewhere)
    assert [r.exc_info[1].args for r in caplog.records] == [("broken",), ("a handler's own timeout",)]


def test_the_texts_filtered_are_the_ones_faststream_logs():
    """An upgrade of FastStream that rewords its supervisor's lines must fail here rather than silently let them
    through (or drop others)."""
    source = inspect.getsource(TaskCallbackSupervisor.__call__)
    assert 'f"callback for {task.get_name()} is being executed..."' in source
    assert "raised an exception, retrying" in source
    assert "_consume_pull" in inspect.getsource(PullStreamSubscriber)
