"""Every request a non-batched replica takes gets exactly one answer (services/engine/replica.py's `infer`,
services/engine/handlers.py): an answer above the bus limit that object storage refuses is a 503 `unavailable` at
once, not a raw exception leaving the caller unanswered; and a request that ended without its answer does not hold
its id (services/engine/answers.py), so the gateway's re-send of it (same `Railyard-Request-Id`, 3 s later) is run
and answered instead of waiting for an answer of the first attempt that never comes. A real replica served in this
process (a real ONNX model) on a bare nats-server."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pytest

import services.engine.handlers
from shared import subjects
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from shared.bus import ERROR_HEADER
from shared.logrecords import ATTEMPT, REQUEST_ID
from shared.table_transport import TABLE_REF
from tests.local_nats import local_nats_server
from tests.models import sample_rows
from tests.unit.replica_world import ccfraud_replica, until_status_answers


@pytest.fixture
def nats_url(tmp_path: Path):
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


class Store:
    """Object storage whose first `failures` PUTs fail (a refused connection)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.objects: dict[str, bytes] = {}

    async def put_bytes(self, bucket, key, data, content_type="application/octet-stream"):
        if self.failures:
            self.failures -= 1
            raise OSError("connection refused by 10.1.2.3:8333")
        self.objects[key] = bytes(data)

    async def get_bytes(self, bucket, key):
        return self.objects[key]


def _serve(nats_url, tmp_path, store: Store, test) -> None:
    """A non-batched replica whose every answer goes by reference to `store`; `test(caller, request)` runs on it."""
    request = to_ipc_stream(pa.table({"tensor": tensor_array(sample_rows(2).astype(np.float64))}))
    status = subjects.engine_replica_status("failing", "r1")

    async def main():
        caller = await nats.connect(nats_url, inbox_prefix="_INBOX.gateway")
        try:
            # not batched: the `infer` callback
            async with ccfraud_replica(caller, nats_url, tmp_path, "failing", {"batch_max_delay_ms": -1}) as (
                    replica, serving):
                await until_status_answers(caller, status, serving)
                assert getattr(replica, "request_batcher", None) is None
                replica.store = store  # after serve() handed its own (none) to the log batcher
                await test(caller, request)
        finally:
            await caller.close()

    asyncio.run(main())


@pytest.fixture(autouse=True)
def every_answer_by_reference(monkeypatch):
    monkeypatch.setattr(services.engine.handlers, "above_bus_limit", lambda body, max_payload: True)


def _error(msg) -> dict:
    assert msg.data == b"" and TABLE_REF not in (msg.headers or {})
    return json.loads(msg.headers[ERROR_HEADER])


def test_an_answer_object_storage_refuses_is_a_503_at_once(nats_url, tmp_path, caplog):
    store = Store(failures=1)

    async def test(caller, request):
        answer = await caller.request(subjects.engine_infer("failing"), request, timeout=2,
                                      headers={REQUEST_ID: uuid.uuid4().hex})
        error = _error(answer)
        assert error["code"] == "unavailable" and error["status"] == 503
        assert "try again" in error["msg"] and "10.1.2.3" not in error["msg"] and "inference/" not in error["msg"]
        assert store.objects == {}  # nothing stored for it
        # the replica still answers the next request (its answer stored this time)
        answer = await caller.request(subjects.engine_infer("failing"), request, timeout=5,
                                      headers={REQUEST_ID: uuid.uuid4().hex})
        assert from_ipc(store.objects[answer.headers[TABLE_REF]]).num_rows == 2

    _serve(nats_url, tmp_path, store, test)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "could not be stored" in logged[0].getMessage()  # once


def test_a_resent_request_whose_first_attempt_failed_is_run(nats_url, tmp_path):
    store = Store(failures=1)

    async def test(caller, request):
        request_id = uuid.uuid4().hex
        inbox = caller.new_inbox()
        first = await caller.subscribe(inbox)
        await caller.publish(subjects.engine_infer("failing"), request, reply=inbox, headers={REQUEST_ID: request_id})
        await asyncio.sleep(0.5)  # the first attempt has ended (as the gateway's re-send comes 3 s later)
        # the gateway's re-send of the same id: run again (the id was released), its answer stored this time
        again = await caller.request(subjects.engine_infer("failing"), request, timeout=5,
                                     headers={REQUEST_ID: request_id, ATTEMPT: "2"})
        assert from_ipc(store.objects[again.headers[TABLE_REF]]).num_rows == 2
        assert _error(await first.next_msg(timeout=1))["status"] == 503  # the first attempt had its own answer

    _serve(nats_url, tmp_path, store, test)


def test_a_request_failing_unexpectedly_is_answered_and_its_resend_run(nats_url, tmp_path, monkeypatch, caplog):
    """Not only object storage: anything `run_alone` raises (here the answer's encoding) is a typed 500 answer."""
    real = services.engine.handlers.to_ipc_stream
    calls = []

    def fails_once(table):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("out of memory")
        return real(table)

    monkeypatch.setattr(services.engine.handlers, "to_ipc_stream", fails_once)
    store = Store(failures=0)

    async def test(caller, request):
        request_id = uuid.uuid4().hex
        first = await caller.request(subjects.engine_infer("failing"), request, timeout=2,
                                     headers={REQUEST_ID: request_id})
        assert _error(first) == {"code": "inference_failed", "msg": _error(first)["msg"], "status": 500}
        again = await caller.request(subjects.engine_infer("failing"), request, timeout=5,
                                     headers={REQUEST_ID: request_id, ATTEMPT: "2"})
        assert from_ipc(store.objects[again.headers[TABLE_REF]]).num_rows == 2

    _serve(nats_url, tmp_path, store, test)
    failures = [r for r in caplog.records if "could not be answered" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelname == "ERROR"
