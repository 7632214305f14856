"""Concurrent uploads of the same bytes share one sandboxed check (services/registry/handlers.py CheckCache.answer):
the cache kept an answer only once its check had ended, so uploads arriving while it ran (a CI pipeline's parallel
jobs, a user's retry) each ran their own check, a sandboxed Python process of up to worker_memory_mb and ~0.3 s of
CPU. A check that fails or whose upload goes away answers no one: the others check themselves. The harness (the
real worker's main in this process) is test_registry_check_cache's."""

from __future__ import annotations

import asyncio

import pytest

from services.registry import handlers
from shared.errors import Unavailable
from tests.models import ccfraud_onnx
from tests.unit.test_registry_check_cache import Harness


@pytest.fixture
def harness(monkeypatch) -> Harness:
    return Harness(monkeypatch)


class Held:
    """The harness's worker, held at its start until `gate` opens; counts the uploads that reached the check."""

    def __init__(self, harness: Harness, monkeypatch, fail_first: bool = False) -> None:
        self.gate, self.entered, self.asked = asyncio.Event(), asyncio.Event(), 0
        self.fail_first = fail_first
        worker, cache = harness._worker, harness.deps.checked
        get = cache.get

        async def held(*args):
            self.entered.set()
            await self.gate.wait()
            if self.fail_first:
                self.fail_first = False
                raise Unavailable("the sandbox is not available on this host")
            return await worker(*args)

        def counted_get(framework: str, sha: str):
            self.asked += 1
            return get(framework, sha)

        monkeypatch.setattr(handlers, "run_worker_verdict", held)
        monkeypatch.setattr(cache, "get", counted_get)

    async def all_asked(self, uploads: int) -> None:
        """Until every upload has asked the cache (its download done) and gone as far as it goes without the
        worker (in-memory steps only once they asked)."""
        for _ in range(100_000):
            if self.asked >= uploads and self.entered.is_set():
                break
            await asyncio.sleep(0 if self.asked >= uploads else 0.001)  # the downloads are threads
        for _ in range(20):
            await asyncio.sleep(0)


async def test_concurrent_uploads_of_the_same_bytes_run_the_check_once(harness, monkeypatch):
    held = Held(harness, monkeypatch)
    uploads = [asyncio.create_task(harness.upload(ccfraud_onnx())) for _ in range(3)]
    await held.all_asked(3)
    held.gate.set()
    await asyncio.gather(*uploads)
    assert len(harness.worker_runs) == 1 and harness.sessions == 1, "each upload ran its own check"
    first, *others = harness.inserted
    assert first["input_schema"] and first["status"] == "ready"
    for other in others:
        assert (other["input_schema"], other["output_schema"]) == (first["input_schema"], first["output_schema"])
    await harness.upload(ccfraud_onnx())  # and it is kept
    assert len(harness.worker_runs) == 1 and len(harness.inserted) == 4


async def test_a_failed_or_abandoned_check_answers_no_one_and_the_others_check(harness, monkeypatch):
    held = Held(harness, monkeypatch, fail_first=True)
    failing = asyncio.create_task(harness.upload(ccfraud_onnx()))
    await held.all_asked(1)  # the first upload is the one checking (its download, a thread, came first)
    waiting = asyncio.create_task(harness.upload(ccfraud_onnx()))
    await held.all_asked(2)
    held.gate.set()
    with pytest.raises(Unavailable):
        await failing
    await waiting  # checked itself
    assert len(harness.worker_runs) == 1 and len(harness.inserted) == 1

    harness.deps.checked = handlers.CheckCache()
    held = Held(harness, monkeypatch)
    abandoned = asyncio.create_task(harness.upload(ccfraud_onnx()))
    await held.all_asked(1)
    waiting = asyncio.create_task(harness.upload(ccfraud_onnx()))
    await held.all_asked(2)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    held.gate.set()
    await waiting
    assert len(harness.worker_runs) == 2 and len(harness.inserted) == 2
