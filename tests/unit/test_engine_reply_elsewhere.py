"""An engine replica answers on its caller's inbox only (services/engine/replica.py, shared/raw_bus.py): the engine
identity keeps NATS's `allow_responses` (shared/bus_identities.py), which lets a replica publish its answer on any
subject a request names, so a holder of the gateway's, lineage's, monitoring's or the deployer's password could have
it published on `events.>`, `logs.inference.>` or another service's command. A real replica served in this process
(a real ONNX model) on a bare nats-server, batched (the batcher's `submit`, the fast lane) and not (`infer`): an
inference, a repeat of an answered one (`resend`) and a status probe aimed elsewhere, or with no reply subject, are
not run, nothing reaches those subjects, one warning per subject (rate-limited); the same requests on an inbox are
answered."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pytest

import services.engine.answers
import shared.raw_bus
from shared import subjects
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import REQUEST_ID
from tests.local_nats import local_nats_server, subscribed
from tests.models import sample_rows
from tests.unit.replica_world import ccfraud_replica, logged_tables, until_status_answers

ELSEWHERE = ("events.pipeline.x", "logs.inference.x", "registry.models.list", "_INBOXES.x", "x._INBOX.y")
"""Reply subjects a caller names that are no caller's inbox."""


@pytest.fixture
def nats_url(tmp_path: Path):
    """A nats-server with JetStream (tests/local_nats.py), no permissions: only the replica's check stops an answer."""
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_warning_counts(monkeypatch):
    monkeypatch.setattr(shared.raw_bus, "_refused_logged", {})


def _warnings(caplog, subject: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and f"a request on {subject} named the reply subject" in r.getMessage()]


@pytest.mark.parametrize("batched", [True, False], ids=["submit", "infer"])
def test_a_replica_answers_no_subject_but_an_inbox(nats_url, tmp_path, caplog, monkeypatch, batched):
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(services.engine.answers, "SLOW", 0.0)  # every answer kept for a re-sent attempt
    request = to_ipc_stream(pa.table({"tensor": tensor_array(sample_rows(1).astype(np.float64))}))
    infer, status = subjects.engine_infer("elsewhere"), subjects.engine_replica_status("elsewhere", "r1")

    async def main():
        caller = await nats.connect(nats_url, inbox_prefix="_INBOX.gateway")
        listener = await nats.connect(nats_url)
        seen: list = []

        async def keep(msg) -> None:
            seen.append((msg.subject, msg.data[:40]))

        for subject in ELSEWHERE:
            await listener.subscribe(subject, cb=keep)
        await subscribed(listener)  # listening before anything is asked: else `seen == []` could pass without it
        async with ccfraud_replica(caller, nats_url, tmp_path, "elsewhere",
                                   {} if batched else {"batch_max_delay_ms": -1}) as (replica, serving):
            await until_status_answers(caller, status, serving)
            assert (getattr(replica, "request_batcher", None) is not None) == batched
            answered_id = uuid.uuid4().hex
            for reply in ELSEWHERE:
                await caller.publish(infer, request, reply=reply, headers={REQUEST_ID: uuid.uuid4().hex})
                await caller.publish(status, b"{}", reply=reply)
            await caller.publish(infer, request, headers={REQUEST_ID: uuid.uuid4().hex})  # no reply: not run either
            await caller.flush()
            # on an inbox, answered: taken after the ones above (one subscription each, in order)
            answer = await caller.request(infer, request, timeout=10, headers={REQUEST_ID: answered_id})
            assert answer.data and "Railyard-Error" not in (answer.headers or {})
            assert b"Running" in (await caller.request(status, b"{}", timeout=10)).data
            # a repeat of the answered request (the replica re-sends the answer it kept) aimed elsewhere: not re-sent
            for reply in ELSEWHERE:
                await caller.publish(infer, request, reply=reply, headers={REQUEST_ID: answered_id})
            again = await caller.request(infer, request, timeout=10, headers={REQUEST_ID: answered_id})
            assert again.data == answer.data  # the repeat on an inbox still gets the first answer
            # the same on the listener's own inbox, after all the others: answered after anything the replica
            # published for them (each subscription takes its requests in order, and one connection's messages
            # reach the listener in order), where a fixed sleep could end first on a slow host; a few loop turns
            # more let the listener's other subscriptions' callbacks run what they were handed
            assert b"Running" in (await listener.request(status, b"{}", timeout=10)).data
            mine = await listener.request(infer, request, timeout=10, headers={REQUEST_ID: answered_id})
            assert mine.data == answer.data
            for _ in range(20):
                await asyncio.sleep(0)
            assert seen == []
            assert replica.served == 1  # the refused requests ran nothing
            for subject in (infer, status):
                warned = _warnings(caplog, subject)
                assert len(warned) == 1 and ELSEWHERE[0] in warned[0] and "not run, nothing answered" in warned[0]
        # one record logged: the answered request's
        assert sum(table.num_rows for table in await logged_tables(caller)) == 1
        await caller.close()
        await listener.close()

    asyncio.run(main())
