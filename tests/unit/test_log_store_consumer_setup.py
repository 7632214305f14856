"""The log store's own JetStream consumers (services/log_store: the inference logs' `Ingestor`, the deployer's
announcements' `Deployments`) are set up with the retries of every service's durable consumers
(shared.service.set_up_durable_consumers): a JetStream answer later than the request's wait is tried again, with a
WARNING naming the consumer and the stream. Before, `Ingestor.start`'s `pull_subscribe` and `Deployments.start`'s
`add_consumer` were asked once: one late answer ended the log store's start with "TimeoutError: nats: timeout".

And the bootstrap's `ensure_streams` / `ensure_log_store_consumer` (shared/bus.py): JetStream refusing a CREATE ends
with one line naming the stream or consumer and JetStream's own words, not the "not found" of the read after it.

A SIGTERM during those tries ends the log store's start hook at once (`Runtime.stop`, services/log_store/app.py).

A real nats-server with JetStream (tests/local_nats.py), reached through tests/nats_proxy.py's ApiProxy, which
holds back the server's answers to the first `drop` JetStream API requests about one consumer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest
from faststream.nats import NatsBroker
from nats.js.api import StreamConfig

from services.log_store import app, deployments
from services.log_store.deployments import Deployments
from services.log_store.handlers import Ingestor
from shared import bus, service, subjects
from shared.errors import RailyardError
from shared.settings import LogSettings, Settings
from tests.local_nats import local_nats_server
from tests.nats_proxy import ApiProxy, until

WAIT = 0.5
"""Seconds one JetStream request of the test's connection waits for its answer."""


@pytest.fixture
def jetstream_url(tmp_path: Path):
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "CONSUMER_RETRY_FIRST", 0.1)


def _warned(caplog: pytest.LogCaptureFixture, durable: str, stream: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "railyard.service" and r.levelno == logging.WARNING
            and f"JetStream consumer {durable} of stream {stream}: no answer" in r.getMessage()]


async def _set_up_at_a_later_try(url: str, stream: str, stream_subjects: list[str], durable: str,
                                  start: Callable[[Any], tuple[Any, Awaitable[None]]]) -> tuple[list[str], Any]:
    """`start(js)` (the consumer's owner, its start) on a connection whose first JetStream API answer about `durable`
    never comes, the stream made first; the owner has started (a subscription, a loop), then stops. The requests
    asked and the consumer's config as the server has it."""
    admin = await nats.connect(url)
    try:
        await admin.jetstream().add_stream(name=stream, subjects=stream_subjects)
        proxy = ApiProxy(durable, drop=1)
        async with proxy.serving(url) as through:
            nc = await nats.connect(through, max_reconnect_attempts=0)
            try:
                owner, starting = start(nc.jetstream(timeout=WAIT))
                await starting
                try:
                    assert owner.sub is not None and owner.task is not None
                finally:
                    await asyncio.wait_for(owner.stop(), 10)
            finally:
                await nc.close()
        return proxy.asked, (await admin.jetstream().consumer_info(stream, durable)).config
    finally:
        await admin.close()


async def test_the_ingestor_sets_up_its_consumer_at_a_later_try(jetstream_url: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="railyard.service")

    def start(js) -> tuple[Ingestor, Awaitable[None]]:
        ingestor = Ingestor(SimpleNamespace(settings=LogSettings()), js=js)
        return ingestor, ingestor.start()

    asked, config = await _set_up_at_a_later_try(jetstream_url, subjects.INFERENCE_LOGS_STREAM, ["logs.inference.>"],
                                                 subjects.INFERENCE_LOGS_DURABLE, start)
    assert config.filter_subject == "logs.inference.>" and config.max_deliver == -1, config
    assert len(asked) >= 2 and asked[0] == asked[1], asked  # the same question again, not given up
    assert len(_warned(caplog, subjects.INFERENCE_LOGS_DURABLE, subjects.INFERENCE_LOGS_STREAM)) >= 1


async def test_the_announcements_consumer_is_set_up_at_a_later_try(jetstream_url: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="railyard.service")

    def start(js) -> tuple[Deployments, Awaitable[None]]:
        known = Deployments(pool=None)  # type: ignore[arg-type]
        return known, known.start(js)

    asked, config = await _set_up_at_a_later_try(jetstream_url, subjects.EVENTS_STREAM, ["events.>"],
                                                 deployments.DURABLE, start)
    assert sorted(config.filter_subjects) == sorted(deployments.SUBJECTS), config
    assert len(asked) >= 2 and all(".CREATE." in s for s in asked[:2]), asked
    assert len(_warned(caplog, deployments.DURABLE, subjects.EVENTS_STREAM)) >= 1


class _IdleFeed:
    """The revocation feed's face (it subscribes and reads auth's list on the bus)."""

    async def start(self, nats_client: Any) -> None:
        pass

    async def stop(self) -> None:
        pass


class _IdleOutbox:
    """The outbox's face (it reads the log store's database)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    def wake(self) -> None:
        pass

    async def stop(self, task: asyncio.Task) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_stop_ends_the_log_store_start_while_jetstream_does_not_answer(jetstream_url: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM (the runner's stop, `Runtime.stop`) while the log store's start hook waits for JetStream's answer
    about its announcements consumer ends the hook at once: no other request follows, nothing is started, and the
    stop hook then runs. Before, the hook was given no stop: its tries went on for CONSUMERS_WITHIN (30 s; 300 here)
    whatever the stop, past the stack's stop grace."""
    monkeypatch.setattr(service, "CONSUMER_RETRY_FIRST", 60.0)
    monkeypatch.setattr(service, "CONSUMER_RETRY_MAX", 60.0)
    monkeypatch.setattr(service, "CONSUMERS_WITHIN", 300.0)
    monkeypatch.setattr(app, "bus_verifier", lambda *args: (None, _IdleFeed()))
    monkeypatch.setattr(app, "Outbox", _IdleOutbox)
    admin = await nats.connect(jetstream_url)
    try:
        await admin.jetstream().add_stream(name=subjects.EVENTS_STREAM, subjects=["events.>"])
    finally:
        await admin.close()
    proxy = ApiProxy(deployments.DURABLE, drop=1_000)
    async with proxy.serving(jetstream_url) as through:
        broker = SimpleNamespace(config=SimpleNamespace(connection_state=SimpleNamespace(connection=None)))
        runtime = service.Runtime(name=app.NAME, settings=Settings(nats={"url": through}), broker=broker)
        starting = asyncio.create_task(app.start(runtime))
        try:
            await until(lambda: bool(proxy.asked), starting)
            runtime.stop.set()
            await asyncio.wait_for(asyncio.shield(starting), 15)
        finally:
            if not starting.done():  # failed: not stopped within the bound
                starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await asyncio.wait_for(app.stop(runtime), 15)
    assert len(proxy.asked) == 1, proxy.asked
    assert "ingestor" not in runtime.extras and "timer" not in runtime.extras, runtime.extras
    assert runtime.extras["ingest_nc"].is_closed


async def _broker(url: str) -> NatsBroker:
    broker = NatsBroker(url)
    await broker.connect()
    return broker


async def test_a_stream_jetstream_refuses_is_named_with_its_reason(jetstream_url: str) -> None:
    """Another stream already takes EVENTS' subjects: JetStream refuses EVENTS' CREATE (subjects overlap); the
    bootstrap ends naming EVENTS and that reason, not "stream not found"."""
    broker = await _broker(jetstream_url)
    try:
        js = broker.config.connection_state.stream
        await js.add_stream(StreamConfig(name="SOMEONE_ELSES", subjects=["events.>"]))
        with pytest.raises(RailyardError) as raised:
            await bus.ensure_streams(broker, Settings(nats={"url": jetstream_url}))
    finally:
        await broker.stop()
    message = raised.value.msg
    assert f"refused the stream {subjects.EVENTS_STREAM}" in message and "overlap" in message, message
    assert "not found" not in message and "\n" not in message, message


async def test_a_stream_cap_with_no_room_in_jetstreams_file_storage_is_named_with_what_to_change(
        tmp_path: Path) -> None:
    """A nats-server with 64 MiB of file storage: JetStream refuses EVENTS' 1 GiB cap with a 500 (err_code 10047,
    "insufficient storage resources available"); the bootstrap ends with one line naming the stream, the cap and the
    settings that change it (was an uncaught ServerError, "could not create the JetStream streams:
    nats.js.errors.ServerError", on every start on a disk with under ~12 GiB free)."""
    with local_nats_server(tmp_path, jetstream=True, file_store=64 * 1024**2) as url:
        broker = await _broker(url)
        try:
            with pytest.raises(RailyardError) as raised:
                await bus.ensure_streams(broker, Settings(nats={"url": url}))
            assert await broker.config.connection_state.stream.streams_info() == []  # nothing half-made
        finally:
            await broker.stop()
    message = raised.value.msg
    assert f"refused the stream {subjects.EVENTS_STREAM}" in message and "err_code 10047" in message, message
    assert "byte cap (1 GiB)" in message and "max_file_store" in message, message
    assert "RAILYARD_NATS__EVENTS_MAX_BYTES" in message and "\n" not in message, message


async def test_the_log_store_consumer_jetstream_refuses_is_named_with_its_reason(jetstream_url: str) -> None:
    """INFERENCE_LOGS allows one consumer and has one: JetStream refuses the log store's CREATE; the bootstrap ends
    naming the consumer, the stream and that reason, not "consumer not found"."""
    broker = await _broker(jetstream_url)
    try:
        js = broker.config.connection_state.stream
        await js.add_stream(StreamConfig(name=subjects.INFERENCE_LOGS_STREAM, subjects=["logs.inference.>"],
                                         max_consumers=1))
        await js.add_consumer(subjects.INFERENCE_LOGS_STREAM, durable_name="someone-elses")
        with pytest.raises(RailyardError) as raised:
            await bus.ensure_log_store_consumer(broker, Settings(nats={"url": jetstream_url}))
    finally:
        await broker.stop()
    message = raised.value.msg
    assert (f"refused the consumer {subjects.INFERENCE_LOGS_DURABLE} of stream {subjects.INFERENCE_LOGS_STREAM}"
            in message and "maximum consumers" in message.lower()), message
    assert "not found" not in message and "\n" not in message, message
