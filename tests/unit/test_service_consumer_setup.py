"""A service's start sets up its durable JetStream consumers before FastStream subscribes them, trying again while
JetStream does not answer, and ends with one line naming the consumer and the stream when it never does
(shared/service.py, `set_up_consumers`). Before, the consumer's CONSUMER.INFO / CREATE was FastStream's
`broker.start()`'s own, unretried: one answer later than 5 s (shared.bus.JETSTREAM_TIMEOUT) ended the start with
"TimeoutError: nats: timeout", naming nothing.

The service runner (`serve`) runs in the test's process on a real nats-server with JetStream (tests/local_nats.py),
reached through a small TCP proxy that reads the NATS protocol both ways (tests/nats_proxy.py's ApiProxy): it sees
the JetStream API requests about the test's consumer and holds back the server's answers to the first `drop` of
them; everything else passes as it came."""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import logging
from pathlib import Path

import nats
import pytest
from faststream.nats import JStream, NatsRouter, PullSub
from nats.js.api import ConsumerConfig

from shared import bus, service, subjects
from shared.consumers import DeliveryPolicy, durable_subscriber, json_model
from shared.errors import RailyardError, Unavailable
from shared.service import ServiceSpec, serve
from shared.settings import Settings
from tests.local_nats import local_nats_server
from tests.nats_proxy import ApiProxy, serve_through, until

SERVICE = "registry"  # a known service name (subjects.health); nothing of the registry runs
DURABLE = "test-consumer-setup"
QUICK_WAIT = 1.0
"""Seconds a JetStream request waits in the tests that drop answers (`quick`)."""


def _spec() -> ServiceSpec:
    def build_router(runtime: service.Runtime) -> NatsRouter:
        router = NatsRouter()

        @durable_subscriber(router, "events.model.>", durable=DURABLE, service=SERVICE, decode=json_model(None),
                            pool=lambda: runtime.db, policy=DeliveryPolicy(), ack_wait=30.0, batch_size=10,
                            title="test", description="the test's consumer")
        async def consume(value: dict, message: object) -> None:
            """Nothing."""

        return router

    return ServiceSpec(name=SERVICE, build_router=build_router)


def _logged(caplog: pytest.LogCaptureFixture, text: str, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "railyard.service" and text in r.getMessage()
            and (level is None or r.levelno == level)]


async def _acknowledged(nc: nats.NATS) -> int:
    return (await nc.jetstream().consumer_info(subjects.EVENTS_STREAM, DURABLE)).ack_floor.stream_seq


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JetStream request gives up after 1 s (the broker's js_options), tries are 0.1 s apart at first. Not less:
    the wait is every request's, also the unretried ones (ensure_streams, FastStream's bind), which a loaded host
    (a stack starting on the other worker) can keep from the server's answer for a few tenths of a second."""
    monkeypatch.setattr(bus, "JETSTREAM_TIMEOUT", QUICK_WAIT)
    monkeypatch.setattr(service, "CONSUMER_RETRY_FIRST", 0.1)


@pytest.mark.usefixtures("quick")
def test_a_consumer_jetstream_answers_late_is_set_up_at_a_later_try(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The first two requests about the consumer get no answer: the start tries again (a WARNING each failed try,
    naming the consumer and the stream), creates it, serves (its health answers) and consumes from it."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    proxy = ApiProxy(DURABLE, drop=2)

    async def scenario(url: str) -> None:
        stop = asyncio.Event()
        async with serve_through(proxy, url, _spec(), stop) as task:
            try:
                await until(lambda: bool(_logged(caplog, "serving (pid")), task)
                nc = await nats.connect(url, max_reconnect_attempts=0)
                try:
                    health = await nc.request(subjects.health(SERVICE), b"{}", timeout=5)
                    assert json.loads(health.data)["data"]["status"] == "ok", health.data
                    info = await nc.jetstream().consumer_info(subjects.EVENTS_STREAM, DURABLE)
                    assert info.config.filter_subject == "events.model.>" and info.config.ack_wait == 30.0, info
                    await nc.jetstream().publish("events.model.test", b"{}", timeout=5)
                    async with asyncio.timeout(30):  # the subscriber is bound: it takes and acknowledges it
                        while await _acknowledged(nc) < 1:  # noqa: ASYNC110 - the server's count, no event
                            await asyncio.sleep(0.05)
                finally:
                    await nc.close()
                assert not task.done()
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    # two tries at least (more only when the server itself took over QUICK_WAIT, on a loaded host), each failed one said
    warnings = _logged(caplog, "JetStream consumer", logging.WARNING)
    assert len(warnings) >= 2 and all(DURABLE in w and subjects.EVENTS_STREAM in w for w in warnings), warnings
    assert len(_logged(caplog, f"set up at try {len(warnings) + 1}")) == 1


@pytest.mark.usefixtures("quick")
def test_a_consumer_jetstream_never_answers_for_ends_the_start_naming_it(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """JetStream never answers about the consumer: after CONSUMERS_WITHIN the start ends with Unavailable (main's
    one line and exit code 2) naming the consumer and the stream; it never served."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    monkeypatch.setattr(service, "CONSUMERS_WITHIN", 2.0)
    proxy = ApiProxy(DURABLE, drop=1_000)

    async def scenario(url: str) -> None:
        async with serve_through(proxy, url, _spec(), asyncio.Event()) as task:
            with pytest.raises(Unavailable) as raised:
                await asyncio.wait_for(task, 30)
        assert DURABLE in raised.value.msg and subjects.EVENTS_STREAM in raised.value.msg, raised.value.msg

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    assert len(proxy.asked) >= 2, proxy.asked
    assert not _logged(caplog, "serving (pid")
    assert len(_logged(caplog, "JetStream consumer", logging.WARNING)) == len(proxy.asked) - 1


@pytest.mark.parametrize("when", ["during a request", "during a pause"])
def test_a_stop_during_the_consumer_set_up_ends_the_start_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A SIGTERM while the start waits for JetStream's answer about a consumer, or pauses before it asks again, is
    not held up by that wait (60 s here): the start ends without subscribing or serving, and no other request
    follows."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    monkeypatch.setattr(bus, "JETSTREAM_TIMEOUT", QUICK_WAIT if when == "during a pause" else 60.0)
    monkeypatch.setattr(service, "CONSUMER_RETRY_FIRST", 60.0)
    monkeypatch.setattr(service, "CONSUMER_RETRY_MAX", 60.0)
    monkeypatch.setattr(service, "CONSUMERS_WITHIN", 300.0)
    proxy = ApiProxy(DURABLE, drop=1_000)

    async def scenario(url: str) -> None:
        stop = asyncio.Event()
        async with serve_through(proxy, url, _spec(), stop) as task:
            await until(lambda: bool(proxy.asked), task)
            if when == "during a pause":  # the request's QUICK_WAIT is over: the start pauses before the next
                await until(lambda: bool(_logged(caplog, "JetStream consumer", logging.WARNING)), task)
            stop.set()
            await asyncio.wait_for(asyncio.shield(task), 15)  # else failed: not stopped within the bound

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    assert len(proxy.asked) == 1, proxy.asked
    assert not _logged(caplog, "serving (pid")
    assert len(_logged(caplog, "JetStream consumer", logging.WARNING)) == (when == "during a pause")
    assert len(_logged(caplog, "while its JetStream consumers were set up")) == 1


@pytest.mark.parametrize("name", ["auth", "monitoring", "workflow_lineage"])
def test_every_jetstream_subscriber_of_a_service_is_set_up(name: str) -> None:
    """The services' JetStream subscribers (shared.consumers.durable_subscriber's) are each a durable consumer the
    set-up finds, with its stream and subject: one it missed would be created by FastStream's start unretried."""
    spec = importlib.import_module(f"services.{name}.app").SPEC
    broker = service.build_broker(spec, service.Runtime(name=spec.name, settings=Settings()))
    jetstream = [sub for sub in broker.subscribers if getattr(sub, "stream", None) is not None]
    found = service.durable_consumers(broker)
    assert jetstream and len(found) == len(jetstream), (found, jetstream)
    assert len({c.durable for c in found}) == len(found), found
    for consumer in found:
        assert consumer.stream == subjects.EVENTS_STREAM and consumer.subject.startswith("events."), consumer
        assert consumer.config.durable_name == consumer.durable, consumer


def test_the_consumers_are_created_as_faststream_would_create_them(tmp_path: Path) -> None:
    """Each service's durable consumer, as the set-up creates it, has exactly the config FastStream's own start gives
    it (nats-py's `pull_subscribe` with the subscriber's config and options, as PullStreamSubscriber calls it): a
    field set otherwise (the filter, the ack wait, the name) would leave every new consumer different from the one
    the code declares, with no error anywhere."""

    async def scenario(url: str) -> None:
        settings = Settings(nats={"url": url})
        for name in ("auth", "monitoring", "workflow_lineage"):
            spec = importlib.import_module(f"services.{name}.app").SPEC
            broker = service.build_broker(spec, service.Runtime(name=spec.name, settings=settings))
            await broker.connect()
            try:
                await bus.ensure_streams(broker, settings)
                js = broker.config.connection_state.stream
                assert await service.set_up_consumers(broker, asyncio.Event())
                subscribers = {sub.extra_options["durable"]: sub for sub in broker.subscribers
                               if getattr(sub, "pull_sub", None) is not None}
                found = service.durable_consumers(broker)
                assert found and len(found) == len(subscribers), (found, subscribers)
                for consumer in found:
                    ours = (await js.consumer_info(consumer.stream, consumer.durable)).config.as_dict()
                    await js.delete_consumer(consumer.stream, consumer.durable)
                    sub = subscribers[consumer.durable]
                    # FastStream's call (its PullStreamSubscriber._create_subscription), on a copy of the config
                    # it would change in place
                    bound = await js.pull_subscribe(subject=sub.subject.broker_address,
                                                    config=copy.deepcopy(sub.config), **sub.extra_options)
                    await bound.unsubscribe()
                    theirs = (await js.consumer_info(consumer.stream, consumer.durable)).config.as_dict()
                    assert ours == theirs, (consumer.durable, ours, theirs)
            finally:
                await broker.stop()

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))


def test_a_consumer_jetstream_refuses_ends_the_start_naming_it_at_once(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """JetStream answers the consumer's CREATE with a refusal (here: a back-off longer than its max_deliver allows):
    the start ends at the first try with one line (RailyardError: main's exit code 2) naming the consumer, the stream
    and JetStream's own words, not with the "consumer not found" of the read after it, and not after 30 s of tries."""
    caplog.set_level(logging.INFO, logger="railyard.service")

    def build_router(runtime: service.Runtime) -> NatsRouter:
        router = NatsRouter()

        @router.subscriber("events.model.>", stream=JStream(subjects.EVENTS_STREAM, declare=False), durable=DURABLE,
                           pull_sub=PullSub(batch_size=10), config=ConsumerConfig(backoff=[1.0, 2.0], max_deliver=1))
        async def consume(body: dict) -> None:
            """Nothing."""

        return router

    async def scenario(url: str) -> None:
        with pytest.raises(RailyardError) as raised:
            await asyncio.wait_for(serve(ServiceSpec(name=SERVICE, build_router=build_router),
                                         Settings(nats={"url": url}), asyncio.Event()), 30)
        assert not isinstance(raised.value, Unavailable), raised.value
        message = raised.value.msg
        assert f"refused the consumer {DURABLE} of stream {subjects.EVENTS_STREAM}" in message, message
        assert "max deliver" in message.lower() and "not found" not in message, message

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    assert not _logged(caplog, "JetStream consumer", logging.WARNING)
    assert not _logged(caplog, "serving (pid")


@pytest.mark.parametrize("durable", [False, True], ids=["no-durable-consumer", "durable-consumer"])
def test_a_stop_during_the_start_hook_ends_the_start_after_it(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                              durable: bool) -> None:
    """The start hook is given the runner's stop (`Runtime.stop`, which the log store's hook passes to its own
    consumers' set-up); a SIGTERM that came while the hook ran ends the start after it: nothing subscribed, no
    "serving", the stop hook runs. Before, the start went on to subscribe and logged "serving" after the stop.
    A service none of whose subscribers is a durable consumer is what tells: with one, the consumers' set-up after
    the hook already saw the stop (`set_up_consumers`), and the test passed without serve's check."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    seen: dict[str, object] = {}

    async def on_start(runtime: service.Runtime) -> None:
        seen["stop"] = runtime.stop
        runtime.stop.set()  # the SIGTERM, while the hook waited

    async def on_stop(runtime: service.Runtime) -> None:
        seen["subscribed"] = runtime.broker.running

    async def scenario(url: str) -> None:
        stop = asyncio.Event()
        build_router = _spec().build_router if durable else (lambda runtime: NatsRouter())
        spec = ServiceSpec(name=SERVICE, build_router=build_router, on_start=on_start, on_stop=on_stop)
        await asyncio.wait_for(serve(spec, Settings(nats={"url": url}), stop), 30)
        assert seen["stop"] is stop

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    assert seen["subscribed"] is False
    assert not _logged(caplog, "serving (pid")
    assert len(_logged(caplog, "the stop came while its start hook ran")) == 1
