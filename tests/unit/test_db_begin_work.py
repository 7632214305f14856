"""shared.db.begin (and within, which the deployer's request-path steps and the task scheduler's bounded steps go
through) takes a coroutine, or a task it began (itself returned): the connections work takes are noted so that work
given up on has them terminated CUT_AFTER after its cancel. Any other future is a TypeError. Before, one was only
wrapped, nothing of it noted: given up on, it kept asyncpg's own hold on its connections (the command timeout, 30 s,
on a server that stopped answering) while the bound said CUT_AFTER; Scheduler.stop's left loop (a plain task) was one.
No database: no connection is taken."""

from __future__ import annotations

import asyncio

import pytest

from shared import db


def gave_up() -> TimeoutError:
    return TimeoutError("no answer")


async def test_a_future_begin_did_not_make_is_refused() -> None:
    loop = asyncio.get_running_loop()
    plain = loop.create_future()
    elsewhere = asyncio.ensure_future(asyncio.Event().wait())  # a task of its own context, not noted
    try:
        for work in (plain, elsewhere):
            with pytest.raises(TypeError, match="coroutine"):
                db.begin(work)
            with pytest.raises(TypeError, match="coroutine"):  # was: bounded, its connections never cut
                await db.within(0.05, work, gave_up)
        assert not plain.cancelled() and not elsewhere.cancelled()  # refused: left as they were
    finally:
        elsewhere.cancel()


async def test_a_task_begin_made_is_itself_and_still_cut_as_its_own() -> None:
    begun = db.begin(asyncio.Event().wait())
    assert db.begin(begun) is begun
    assert begun in db._HELD_BY  # its connections noted: `leave` cuts them
    with pytest.raises(TimeoutError):
        await db.within(0.05, begun, gave_up)
    await asyncio.wait({begun}, timeout=5)
    assert begun.cancelled()
