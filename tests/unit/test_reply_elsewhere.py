"""A request whose reply subject is not a caller's inbox is not run and not answered (shared/raw_bus.py,
`answers_elsewhere`): a service may publish its own subjects (the registry `events.model.>`, the log store
`events.logs.>`), so a `client` naming one of those as the reply had the service's answer published there (into the
EVENTS stream). Both kinds of responder a `client` reaches, `shared.bus.command` and the log store's raw responder,
against a real nats-server (tests/local_nats.py): nothing reaches the named subject, the handler is not called, one
warning per subject (rate-limited), and a request on an inbox is answered as before."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import nats
import pytest
from faststream.nats import NatsBroker

import shared.raw_bus
from services.log_store.app import _raw_responder
from shared import sealed
from shared.bus import CallContext, command
from shared.messages.base import Message, Reply
from tests.local_nats import local_nats_server, subscribed

ELSEWHERE = ("events.model.uploaded", "logs.inference.x", "registry.models.list", "_INBOXES.x")
"""Reply subjects a caller names (a reply of `$JS.ACK.>` the server itself refuses to pass on)."""


class Ask(Message):
    name: str = ""


@pytest.fixture
def nats_url(tmp_path: Path):
    with local_nats_server(tmp_path) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_warning_counts(monkeypatch):
    # the rate limit's memory is the process's: each test starts with none (raising=False: the same test on a tree
    # without the check, where it must fail on what reaches the subjects, not here)
    monkeypatch.setattr(shared.raw_bus, "_refused_logged", {}, raising=False)


async def _listen(nc, subjects: tuple[str, ...]) -> list:
    seen: list = []

    async def keep(msg) -> None:
        seen.append((msg.subject, msg.data))

    for subject in subjects:
        await nc.subscribe(subject, cb=keep)
    await subscribed(nc)  # listening before anything is asked: else `seen == []` could pass without it
    return seen


async def _after_the_service(service, listener) -> None:
    """Until a message `service`'s connection publishes now has reached `listener`'s callbacks: what it published
    before (an answer sent elsewhere) reached the listener first, as the server passes one connection's messages on in
    order; a few loop turns more let the other subscriptions' callbacks (each its own task in nats-py) run what they
    had been handed by then. A fixed sleep here could end before a wrong answer showed on a slow host."""
    heard = asyncio.Event()

    async def barrier(msg) -> None:
        heard.set()

    sub = await listener.subscribe("test.reply-elsewhere.barrier", cb=barrier)
    await subscribed(listener)
    await service.publish("test.reply-elsewhere.barrier", b"")
    await service.flush()
    await asyncio.wait_for(heard.wait(), 10)
    for _ in range(20):
        await asyncio.sleep(0)
    await sub.unsubscribe()


async def _elsewhere(nc, subject: str, data: bytes) -> None:
    """The request sent as `client` could: to each subject of ELSEWHERE, with and without a reply key."""
    for reply in ELSEWHERE:
        await nc.publish(subject, data, reply=reply)
        await nc.publish(subject, data, reply=reply,
                         headers={sealed.REPLY_KEY_HEADER: sealed.encode_key(sealed.new_key())})
    await nc.flush()


def _warnings(caplog, subject: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and f"a request on {subject} named the reply subject" in r.getMessage()]


async def test_a_command_answers_no_subject_but_an_inbox(nats_url: str, caplog) -> None:
    caplog.set_level(logging.WARNING)
    calls: list[str] = []
    broker = NatsBroker(nats_url, max_reconnect_attempts=0)

    @command(broker, "registry.models.list", service="registry")
    async def models(cmd: Ask, ctx: CallContext) -> dict:
        calls.append(cmd.name)
        return {"models": ["secret-model"]}

    caller = await nats.connect(nats_url, inbox_prefix="_INBOX.client", max_reconnect_attempts=0)
    listener = await nats.connect(nats_url, max_reconnect_attempts=0)
    try:
        await broker.start()
        await subscribed(broker.config.connection_state.connection)  # the forged requests reach the command
        seen = await _listen(listener, tuple(s for s in ELSEWHERE if s != "registry.models.list"))
        await _elsewhere(caller, "registry.models.list", b'{"name": "elsewhere"}')
        # the same command on an inbox is answered: taken after the ones above (one subscription, in order)
        opened = await sealed.sealed_request(caller, "registry.models.list", b'{"name": "inbox"}', timeout=30)
        assert Reply.model_validate_json(opened.data).data == {"models": ["secret-model"]}
        await _after_the_service(broker.config.connection_state.connection, listener)
        assert seen == [] and calls == ["inbox"]
        warned = _warnings(caplog, "registry.models.list")
        assert len(warned) == 1 and "events.model.uploaded" in warned[0] and "not run, nothing answered" in warned[0]
        # past the rate limit's period, the next one is logged with the count of those not logged
        shared.raw_bus._refused_logged["registry.models.list"] = (-1e9, 9)
        await caller.publish("registry.models.list", b"{}", reply="events.model.again")
        await sealed.sealed_request(caller, "registry.models.list", b'{"name": "inbox"}', timeout=30)
        warned = _warnings(caplog, "registry.models.list")
        assert len(warned) == 2 and "events.model.again" in warned[1] and "(9 more such requests" in warned[1]
        assert calls == ["inbox", "inbox"]
    finally:
        await broker.stop()
        for nc in (caller, listener):
            await nc.close()


async def test_the_log_store_responder_answers_no_subject_but_an_inbox(nats_url: str, caplog) -> None:
    caplog.set_level(logging.WARNING)
    service = await nats.connect(nats_url, max_reconnect_attempts=0)
    caller = await nats.connect(nats_url, inbox_prefix="_INBOX.client", max_reconnect_attempts=0)
    listener = await nats.connect(nats_url, max_reconnect_attempts=0)
    calls: list = []

    async def work(msg, token):
        calls.append(msg.data)
        return b"ARROW secret-rows", {"x-page": "{}"}

    try:
        await service.subscribe("log_store.logs.query", cb=_raw_responder(service, work, "ask for less"))
        await subscribed(service)  # the forged requests reach the responder
        seen = await _listen(listener, tuple(s for s in ELSEWHERE if s != "registry.models.list"))
        await _elsewhere(caller, "log_store.logs.query", b"elsewhere")
        await caller.publish("log_store.logs.query", b"no reply")  # nobody to answer: not run either
        await caller.flush()
        opened = await sealed.sealed_request(caller, "log_store.logs.query", b"inbox", timeout=30)
        assert opened.data == b"ARROW secret-rows"
        await _after_the_service(service, listener)
        assert seen == [] and calls == [b"inbox"]
        warned = _warnings(caplog, "log_store.logs.query")
        assert len(warned) == 1 and "events.model.uploaded" in warned[0]
    finally:
        for nc in (service, caller, listener):
            await nc.close()


def test_which_reply_subjects_are_elsewhere() -> None:
    from shared.raw_bus import answers_elsewhere

    for inbox in ("_INBOX.client.abc.1", "_INBOX.gateway.x", "_INBOX.x", None, ""):
        assert not answers_elsewhere(inbox), inbox
    for elsewhere in (*ELSEWHERE, "$JS.ACK.EVENTS.a", "_INBOX", "_inbox.client.x", " _INBOX.x", "x._INBOX.y"):
        assert answers_elsewhere(elsewhere), elsewhere
