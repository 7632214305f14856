"""How many commands of one subject a subscriber handles at once (shared/bus_workers.py); the stop that answers every
command taken is tested on the real bus (tests/integration/test_bus_concurrency.py)."""

from __future__ import annotations

import asyncio
import importlib

from faststream.nats import NatsBroker
from faststream.nats.subscriber.usecases.core_subscriber import ConcurrentCoreSubscriber, CoreSubscriber

from shared import subjects
from shared.bus import CallContext, command
from shared.bus_workers import ConcurrentCallback, command_workers
from shared.messages.base import Command
from shared.service import Runtime
from shared.settings import Settings

# Subjects handled one at a time, each for a reason its subscriber states (pipelines/copy was, until its name check
# and create became one transaction under the name's advisory lock: tests/integration/test_bus_concurrency.py).
SERIAL: set[str] = set()


class Ping(Command):
    """A test command."""


def _workers(sub: CoreSubscriber) -> int:
    return sub.max_workers if isinstance(sub, ConcurrentCoreSubscriber) else 1


def _register(broker: NatsBroker, subject: str, **kwargs) -> None:
    @command(broker, subject, service="gateway", **kwargs)
    async def ping(cmd: Ping, ctx: CallContext) -> dict:
        return {}


def test_a_command_takes_the_process_setting_unless_it_names_its_own():
    broker = NatsBroker()
    _register(broker, "t.outside")
    with command_workers(4):
        _register(broker, "t.inside")
        _register(broker, "t.serial", max_workers=1)
    _register(broker, "t.after")
    found = {sub.subject.template: _workers(sub) for sub in broker.subscribers}
    assert found == {"t.outside": 1, "t.inside": 4, "t.serial": 1, "t.after": 1}


def test_every_service_command_is_handled_several_at_once_but_the_ones_that_say_why():
    serial, concurrent = set(), set()
    for service in subjects.SERVICES:
        app = importlib.import_module(f"services.{service}.app")
        with command_workers(8):
            router = app.SPEC.build_router(Runtime(name=app.NAME, settings=Settings()))
        for sub in router.subscribers:
            if isinstance(sub, CoreSubscriber):
                (serial if _workers(sub) == 1 else concurrent).add(sub.subject.template)
    assert serial == SERIAL
    assert {subjects.DEPLOYER_PIPELINES_DEPLOY, subjects.DEPLOYER_PIPELINES_COPY,
            subjects.MONITORING_GET_STATS} <= concurrent


def test_a_raw_callback_takes_the_next_message_while_one_waits_and_no_more_than_its_bound():
    async def scenario() -> None:
        gate, fast_done, done = asyncio.Event(), asyncio.Event(), []

        async def handle(msg: str) -> None:
            if msg.startswith("slow"):
                await gate.wait()
            done.append(msg)
            if msg == "fast":
                fast_done.set()

        callback = ConcurrentCallback(handle, 2)
        await callback.take("slow-1")
        await callback.take("fast")
        await asyncio.wait_for(fast_done.wait(), 5)
        await callback.take("slow-2")
        third = asyncio.create_task(callback.take("slow-3"))  # two are running: nats-py's reader waits here
        await asyncio.sleep(0.05)
        assert not third.done()
        gate.set()
        await third
        await callback.wait(5)
        assert done[0] == "fast" and sorted(done[1:]) == ["slow-1", "slow-2", "slow-3"]

    asyncio.run(scenario())
