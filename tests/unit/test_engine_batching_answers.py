"""Each request of a shared batch is answered on its own (services/engine/batching.py): when answering one of them
raises (object storage refusing an answer above the bus limit, a publish failing), that request gets its own
typed error answer at once and the others of the batch their normal answers; nothing is logged twice."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from services.engine import handlers
from services.engine.batching import RequestBatcher
from shared.arrow_codec import from_ipc
from shared.bus import ERROR_HEADER
from shared.table_transport import TABLE_REF
from tests.models import ccfraud_onnx, sample_rows
from tests.unit.test_engine_batching import Pipeline, _request


@pytest.fixture
def pipeline(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(ccfraud_onnx())
    return Pipeline(path)


class Store:
    """Object storage whose `fail_at`-th PUT (counted from 1) fails."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.puts = 0
        self.objects: dict[str, bytes] = {}

    async def put_bytes(self, bucket, key, data, content_type="application/octet-stream"):
        self.puts += 1
        if self.puts == self.fail_at:
            raise OSError("connection refused")
        self.objects[key] = bytes(data)

    async def get_bytes(self, bucket, key):
        return self.objects[key]


def _serve(pipeline, messages, max_payload=1 << 20, fail_deliver=None):
    """Queue the messages together, run the batch; every (reply, answer) delivered, in order, and who ran alone."""
    delivered: list[tuple[str, handlers.Answer]] = []
    alone: list[str] = []
    failed: set[str] = set()

    async def run_alone(msg, received, at_ms):
        alone.append(msg.reply)
        await deliver(msg, await handlers.infer(pipeline, msg.data, msg.headers, received, max_payload),
                      received, at_ms)

    async def deliver(msg, answer, received, at_ms):
        if msg.reply == fail_deliver and msg.reply not in failed:  # its first answer's publish fails
            failed.add(msg.reply)
            raise ConnectionError("publish failed")
        delivered.append((msg.reply, answer))

    async def main():
        batcher = RequestBatcher(pipeline, 0.0, 4096, max_payload, run_alone, deliver, lambda msg: False)
        task = asyncio.create_task(batcher.run())
        for msg in messages:
            await batcher.submit(msg)
        await asyncio.sleep(0)
        await batcher.idle(5)
        task.cancel()

    asyncio.run(main())
    return delivered, alone


def _error(answer: handlers.Answer) -> dict:
    assert answer.output is None and answer.body == b""  # no output: the replica logs no record for it
    return json.loads(answer.headers[ERROR_HEADER])


def _one_each(delivered, replies) -> dict[str, handlers.Answer]:
    assert sorted(reply for reply, _ in delivered) == sorted(replies)  # each answered exactly once
    return dict(delivered)


def test_object_storage_failing_for_one_answer_fails_only_that_request(pipeline, caplog):
    pipeline.store = Store(fail_at=2)
    rows = [sample_rows(n, seed=i) for i, n in enumerate((2, 3, 1))]
    delivered, alone = _serve(pipeline, [_request(r, f"r{i}") for i, r in enumerate(rows)], max_payload=64)
    assert pipeline.calls == [6] and alone == []  # one shared call; every answer above the bus limit: by reference
    answers = _one_each(delivered, ["r0", "r1", "r2"])
    assert _error(answers["r1"]) == {"code": "unavailable", "msg": _error(answers["r1"])["msg"], "status": 503}
    for reply, n in (("r0", 2), ("r2", 1)):
        answer = answers[reply]
        stored = pipeline.store.objects[answer.headers[TABLE_REF]]
        assert from_ipc(stored).num_rows == n and answer.output.num_rows == n
    assert len(pipeline.store.objects) == 2  # no orphan object for the failed answer
    failures = [r for r in caplog.records if "could not be answered" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelname == "ERROR"


def test_a_publish_failing_for_one_answer_fails_only_that_request(pipeline):
    rows = [sample_rows(n, seed=i) for i, n in enumerate((1, 2, 3))]
    delivered, alone = _serve(pipeline, [_request(r, f"r{i}") for i, r in enumerate(rows)], fail_deliver="r1")
    assert pipeline.calls == [6] and alone == []
    answers = _one_each(delivered, ["r0", "r1", "r2"])
    assert _error(answers["r1"])["status"] == 500
    expected = pipeline.steps[0].runtimes[0].session.run(None, {"tensor": np.concatenate(rows)})[0]
    assert np.allclose(np.array(from_ipc(answers["r0"].body).column("dense_1").to_pylist()), expected[:1], atol=1e-6)
    assert np.allclose(np.array(from_ipc(answers["r2"].body).column("dense_1").to_pylist()), expected[3:], atol=1e-6)


@pytest.mark.parametrize("fail", ["store", "publish"])
def test_requests_run_alone_after_a_failed_shared_call_are_answered_each(pipeline, fail):
    """A bad request fails the shared call: each runs alone, and one of those failing stops none of the others."""
    bad = sample_rows(1, seed=9)
    bad[0, 0] = np.nan
    messages = [_request(sample_rows(2), "r0"), _request(bad, "bad"), _request(sample_rows(1, seed=5), "r2"),
                _request(sample_rows(3, seed=6), "r3")]
    pipeline.store = Store(fail_at=2)  # r0 stored, r2's PUT fails
    delivered, alone = _serve(pipeline, messages, max_payload=64 if fail == "store" else 1 << 20,
                              fail_deliver="r2" if fail == "publish" else None)
    assert alone == ["r0", "bad", "r2", "r3"]
    answers = _one_each(delivered, ["r0", "bad", "r2", "r3"])
    assert "NaN" in _error(answers["bad"])["msg"]
    # object storage refusing r2's answer: 503 from handlers.infer; its publish failing: run_alone raised, a 500
    assert _error(answers["r2"])["status"] == (503 if fail == "store" else 500)
    assert answers["r0"].output.num_rows == 2 and answers["r3"].output.num_rows == 3
