"""A stopped log store leaves no pull request at the server (services/log_store/handlers.py `Ingestor.stop`). Its idle
loop waits for work in one fetch of up to IDLE_FETCH (5 s, since 4bcf8d78); a stop cancels that wait, but the pull
request stays at the server until it expires or the connection closes, and app.py closes the ingestion connection
only after the deployer's announcements have stopped. A record published in that gap went to the stopping process,
which never acknowledged it: it came back to another process only after ack_wait (30 s). The stop now unsubscribes
the pull subscription once the loop has ended, and the server drops a request nobody listens to any more."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import nats
import pytest

from services.log_store.handlers import Ingestor
from shared import subjects
from shared.bus import log_store_consumer_config
from shared.settings import LogSettings
from tests.local_nats import local_nats_server, subscribed


@pytest.fixture
def jetstream_url(tmp_path: Path):
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


async def test_a_record_published_after_a_stop_goes_to_another_process_not_the_stopped_one(jetstream_url: str):
    nc = await nats.connect(jetstream_url)  # the stopping process's ingestion connection: still open after the stop
    other = await nats.connect(jetstream_url)  # another log store process, and an engine publishing
    try:
        js = nc.jetstream()
        await js.add_stream(name=subjects.INFERENCE_LOGS_STREAM, subjects=["logs.inference.>"])
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=js)
        await ingestor.start()
        for _ in range(200):  # its loop is idle: one fetch waiting at the server
            if ingestor.idle is not None:
                break
            await asyncio.sleep(0.01)
        assert ingestor.idle is not None, "the idle loop did not start its fetch"
        await subscribed(nc)  # the server has the pull request
        await asyncio.wait_for(ingestor.stop(), 10)
        assert ingestor.task.done() and not ingestor.task.cancelled()
        await subscribed(nc)

        other_js = other.jetstream()
        await other_js.publish("logs.inference.dep-p", b"a record")
        b = await other_js.pull_subscribe("logs.inference.>", durable=subjects.INFERENCE_LOGS_DURABLE,
                                          stream=subjects.INFERENCE_LOGS_STREAM, config=log_store_consumer_config())
        # ack_wait is 30 s: a record taken by the stopped process's request would not come back within this fetch
        [msg] = await b.fetch(1, timeout=5)
        assert msg.data == b"a record" and msg.metadata.num_delivered == 1
        await msg.ack_sync()
    finally:
        await other.close()
        await nc.close()
