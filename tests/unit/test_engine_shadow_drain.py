"""A stopping replica's shadow queue (replica.drain_shadows): queued challengers run for a while, then every record
still queued is logged without their columns, each once, and the stop goes on, also when the cancel of the shadow
worker does not reach it."""

from __future__ import annotations

import asyncio

import pyarrow as pa

from services.engine import handlers
from services.engine.replica import Replica
from shared.logrecords import InferenceRecord
from shared.settings import Settings

QUEUED = 200


def test_a_stop_the_finishing_challenger_swallows_still_logs_every_record_once(tmp_path, monkeypatch):
    """The challenger's thread ends as the stop cancels the worker: Python 3.11's asyncio.wait_for (in
    run_challengers) then returns the thread's result instead of raising CancelledError (bpo-42130), which the
    stand-in below does on every cancel. The worker went on through the queue (30 ms a record in the test that met
    it) and drain_shadows waited for it until the deployer killed the replica, with every record not yet published:
    5,229 of 5,997 rows logged (test_redeploy_under_shadow_load_loses_no_record, the final CI of a2d0693)."""
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", str(tmp_path))
    table = pa.table({"x": pa.array([1.0])})

    swallowed: list[int] = []

    async def challenger_done_at_the_cancel(shadows, outputs, deployment="", rows=None):
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if swallowed:  # the race happens once: a later cancel is a cancel
                raise
            swallowed.append(1)  # what wait_for does when the thread's result is there as the cancel comes
        outputs["slow"] = table
        return {"slow": 1}

    monkeypatch.setattr(handlers, "run_challengers", challenger_done_at_the_cancel)

    async def scenario() -> list[InferenceRecord]:
        replica = Replica({"deployment": {"name": "d"}}, "r1", Settings())
        logged: list[InferenceRecord] = []
        replica.log_record = logged.append
        worker = asyncio.create_task(replica.run_shadows())
        for at_ms in range(QUEUED):
            replica.shadow_queue.put_nowait((InferenceRecord(at_ms, table, table, "", (0, 0)), [("slow", None, table)]))
        # the queue needs 10 s: the stop lets it run 0.12 s, then logs the rest at once (before: it waited for all)
        drain = asyncio.create_task(replica.drain_shadows(worker, 0.12))
        done, _ = await asyncio.wait({drain}, timeout=3.0)
        assert drain in done and worker.done(), f"the stop still waits for the queue: {len(logged)} records logged"
        assert swallowed  # the cancel did meet the challenger
        return logged

    logged = asyncio.run(scenario())
    assert sorted(record.at_ms for record in logged) == list(range(QUEUED))  # each once, none lost
    with_challenger = [record.at_ms for record in logged if record.shadows]
    assert 1 <= len(with_challenger) < 10 and with_challenger == list(range(len(with_challenger)))


class Named:
    """A challenger that says when it ran."""

    def __init__(self, name: str, ran: list[str]) -> None:
        self.name, self.ran = name, ran

    def predict(self, table: pa.Table) -> pa.Table:
        self.ran.append(self.name)
        return table


def test_a_cancel_that_comes_as_a_challengers_thread_ends_ends_the_run(monkeypatch):
    """handlers.run_challengers itself: the first challenger's thread hands its result to the loop in the step the
    stop's cancel comes in. On Python 3.11 asyncio.wait_for returned that result instead of raising CancelledError
    (bpo-42130): the cancel was lost and the next challenger ran (up to SHADOW_TIMEOUT each, in a stopping replica or
    a cancelled request); under asyncio.timeout the cancel ends the run."""
    table = pa.table({"x": pa.array([1.0])})
    ran: list[str] = []

    async def scenario() -> asyncio.Task:
        loop = asyncio.get_running_loop()
        cancels: list[asyncio.Task] = []

        async def thread_done_as_the_cancel_comes(func, *args):
            result = func(*args)
            answered = loop.create_future()
            loop.call_soon(answered.set_result, result)  # the thread's result, handed back to the loop ...
            if not cancels:  # ... and, once, the stop's cancel in the same step
                cancels.append(run)
                loop.call_soon(run.cancel)
            return await answered

        monkeypatch.setattr(handlers.asyncio, "to_thread", thread_done_as_the_cancel_comes)
        outputs: dict[str, pa.Table] = {}
        run = asyncio.create_task(handlers.run_challengers(
            [("first", Named("first", ran), table), ("second", Named("second", ran), table)], outputs, "d"))
        await asyncio.wait({run}, timeout=3.0)
        return run

    run = asyncio.run(scenario())
    assert run.done() and run.cancelled(), f"the cancel was lost: challengers {ran} ran"
    assert ran == ["first"]
