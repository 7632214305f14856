"""The log store's ingestion stops while the database and object storage are away: `Ingestor.stop` cancels the
consumer loop, which may be in `flush_with_retry`'s wait for the stores (`stores_answer` probes them, then it tries
again, for as long as they stay away). The probe was bounded with asyncio.wait_for, which on Python 3.11 gives the
probe's answer instead of CancelledError when that answer (here: the connection refused) comes in the step the cancel
does (bpo-42130): the cancel was lost, the retry loop went on while the stores stayed away and the stop waited for
it until the service was killed (its batches, unacknowledged, redelivered: nothing lost, but no stop)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.log_store import handlers
from services.log_store.handlers import Ingestor
from shared.settings import LogSettings


def test_a_stop_whose_cancel_comes_with_the_probes_refusal_ends_the_retries(monkeypatch):
    monkeypatch.setattr(handlers, "MAX_ATTEMPTS", 1)  # the stores are probed at the first failure
    probes: list[str] = []

    async def scenario() -> asyncio.Task:
        loop = asyncio.get_running_loop()

        class AwayPool:
            async def fetchval(self, query: str):
                probes.append(query)
                refused = loop.create_future()
                loop.call_soon(refused.set_exception, ConnectionRefusedError("the database is away"))
                if len(probes) == 1:  # the stop's cancel comes in the step the refusal does, once
                    loop.call_soon(retrying.cancel)
                return await refused

        ingestor = Ingestor(SimpleNamespace(settings=LogSettings(), pool=AwayPool(), objects=None), js=None)

        async def flush(msgs, probe=False):
            raise ConnectionRefusedError("the database is away")

        ingestor.flush = flush
        retrying = asyncio.create_task(ingestor.flush_with_retry([SimpleNamespace(data=b"x")]))
        await asyncio.wait({retrying}, timeout=3.0)
        assert retrying.done(), f"the retries go on after the cancel: {len(probes)} probes of the stores"
        return retrying

    assert asyncio.run(scenario()).cancelled()
    assert len(probes) == 1
