"""A service's start waits long enough for the JetStream ack of its `events.service.started`, tries it again with the
same event id when the ack does not come, and serves without it after STARTED_WITHIN (shared/service.py,
`announce_started`; shared/bus.py, `publish_event`'s JETSTREAM_TIMEOUT). Session 32's CI: a second monitoring start
exited 2 with "nats: timeout" when that ack took over FastStream's default 0.5 s (the test stack's nats-server fsyncs
every write, two stacks loaded the host).

The service runner (`serve`) runs in the test's process on a real nats-server with JetStream (tests/local_nats.py),
reached through a small TCP proxy that reads the NATS protocol both ways (tests/nats_proxy.py): it sees each
publish of the event (and its Nats-Msg-Id header) and holds back, or drops, the server's PubAck replies; everything
else passes as it came."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
from faststream.nats import NatsRouter

from shared import service, subjects
from shared.service import ServiceSpec
from tests.local_nats import local_nats_server
from tests.nats_proxy import NatsProxy, serve_through, until

SERVICE = "registry"  # a known service name (subjects.health); nothing of the registry runs


@dataclass
class AckProxy(NatsProxy):
    """What the proxy does with the server's PubAcks of EVENTS: `delay` seconds held back (and every byte after them
    on that connection), the first `drop` of them not passed on at all. It records the event publishes' Nats-Msg-Ids
    (`published`) and the acks it passed on (`passed`)."""

    delay: float = 0.0
    drop: int = 0
    published: list[str] = field(default_factory=list)
    passed: list[dict] = field(default_factory=list)

    async def to_server(self, words: list[bytes], line: bytes, payload: bytes) -> bool:
        if words[0] == b"HPUB" and words[1] == subjects.EVENT_SERVICE_STARTED.encode():
            headers = payload[:int(words[-2])].decode()
            self.published.append(re.search(r"Nats-Msg-Id:\s*(\S+)", headers, re.IGNORECASE).group(1))
        return True

    async def to_client(self, words: list[bytes], line: bytes, payload: bytes) -> bool:
        if words[0] in (b"MSG", b"HMSG"):
            body = payload[int(words[-2]) if words[0] == b"HMSG" else 0:-2]
            try:
                answer = json.loads(body)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and answer.get("stream") == "EVENTS" and "seq" in answer:  # a PubAck
                if self.drop > 0:
                    self.drop -= 1
                    return False
                await asyncio.sleep(self.delay)
                self.passed.append(answer)
        return True


def _spec() -> ServiceSpec:
    return ServiceSpec(name=SERVICE, build_router=lambda runtime: NatsRouter())


def _serving(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.name == "railyard.service" and "serving (pid" in r.getMessage() for r in caplog.records)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "railyard.service" and r.levelno == logging.WARNING
            and subjects.EVENT_SERVICE_STARTED in r.getMessage()]


async def _run(proxy: AckProxy, url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Start the service through the proxy; return once it logged "serving" and answers its health, then stop it.
    Fails if the start ends first (before the fix: TimeoutError "nats: timeout" out of serve)."""
    stop = asyncio.Event()
    async with serve_through(proxy, url, _spec(), stop) as task:
        try:
            await until(lambda: _serving(caplog), task)
            caller = await nats.connect(url, max_reconnect_attempts=0)
            try:
                health = await caller.request(subjects.health(SERVICE), b"{}", timeout=5)
            finally:
                await caller.close()
            assert json.loads(health.data)["data"]["status"] == "ok", health.data
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def _started_events(url: str) -> int:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM, subjects_filter=subjects.EVENT_SERVICE_STARTED)
        return (info.state.subjects or {}).get(subjects.EVENT_SERVICE_STARTED, 0)
    finally:
        await nc.close()


def test_a_late_ack_is_waited_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An ack held back 1 s (twice FastStream's default wait) is waited for: one publish, no warning, serving."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    proxy = AckProxy(delay=1.0)

    async def scenario(url: str) -> None:
        await _run(proxy, url, caplog)
        assert await _started_events(url) == 1

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    assert len(proxy.published) == 1, proxy.published
    assert [a.get("duplicate", False) for a in proxy.passed] == [False], proxy.passed
    assert not _warnings(caplog), _warnings(caplog)


def test_a_lost_ack_is_tried_again_with_the_same_event(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The first ack never comes: the start tries the same event again (one Nats-Msg-Id), the stream, which stored
    the first try, keeps one (the ack that comes says duplicate), and the service serves without a warning."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    monkeypatch.setattr(service, "STARTED_ACK_WAIT", 0.5)  # a try gives up sooner; STARTED_WITHIN as it is
    proxy = AckProxy(drop=1)

    async def scenario(url: str) -> None:
        await _run(proxy, url, caplog)
        assert await _started_events(url) == 1

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    assert len(proxy.published) >= 2 and len(set(proxy.published)) == 1, proxy.published
    assert proxy.passed and proxy.passed[-1].get("duplicate") is True, proxy.passed
    assert not _warnings(caplog), _warnings(caplog)


def test_no_ack_at_all_serves_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No ack ever comes: after STARTED_WITHIN the service logs a warning naming the event and serves anyway (its
    health answers, it runs until stopped); every try was the same event."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    monkeypatch.setattr(service, "STARTED_WITHIN", 2.0)
    monkeypatch.setattr(service, "STARTED_ACK_WAIT", 0.3)
    proxy = AckProxy(drop=1_000)

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(_run(proxy, url, caplog))
    assert len(proxy.published) >= 2 and len(set(proxy.published)) == 1, proxy.published
    assert proxy.passed == []
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "serving without it" in warnings[0], warnings


@pytest.mark.parametrize("when", ["during a try", "during the start", "during a pause"])
def test_a_stop_ends_the_wait_for_the_ack_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A SIGTERM while a try waits for its ack (or one that came before the start got that far, or between two
    tries) is not held up by that wait: the try is given up, no other follows, the service stops, with no warning. A
    try (or the pause after it) waits 60 s here, so a stop that waited for it (as it did, up to 5 s, the stack's
    whole stop grace) fails the 15 s bound."""
    caplog.set_level(logging.INFO, logger="railyard.service")
    monkeypatch.setattr(service, "STARTED_WITHIN", 120.0)
    monkeypatch.setattr(service, "STARTED_ACK_WAIT", 0.3 if when == "during a pause" else 60.0)
    if when == "during a pause":
        monkeypatch.setattr(service, "STARTED_RETRY_PAUSE", 60.0)
    proxy = AckProxy(drop=1_000)

    async def scenario(url: str) -> None:
        stop = asyncio.Event()
        if when == "during the start":
            stop.set()
        async with serve_through(proxy, url, _spec(), stop) as task:
            if when != "during the start":
                await until(lambda: bool(proxy.published), task)
                if when == "during a pause":  # the try's 0.3 s are over: the start pauses before the next
                    await asyncio.sleep(1.0)
                stop.set()
            await asyncio.wait_for(asyncio.shield(task), 15)  # else failed: not stopped within the bound

    with local_nats_server(tmp_path, jetstream=True) as url:
        asyncio.run(scenario(url))
    assert len(proxy.published) <= 1, proxy.published
    assert not _warnings(caplog), _warnings(caplog)
    told = [r.getMessage() for r in caplog.records
            if r.name == "railyard.service" and "before the stop" in r.getMessage()]
    assert len(told) == 1 and subjects.EVENT_SERVICE_STARTED in told[0], told
