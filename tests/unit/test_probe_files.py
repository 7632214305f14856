"""The probe files the Kubernetes manifests' liveness and readiness probes read (shared/probe_files.py)."""

from __future__ import annotations

import asyncio

import pytest

from shared.probe_files import LIVE, READY, keep_probe_files
from shared.settings import Settings


async def _until(condition, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_live_is_rewritten_and_ready_follows_the_health_check(tmp_path):
    healthy = {"ok": True}

    async def check() -> bool:
        return healthy["ok"]

    task = asyncio.create_task(keep_probe_files(tmp_path, check, interval=0.02))
    await _until(lambda: (tmp_path / READY).exists())
    first = (tmp_path / LIVE).stat().st_mtime_ns
    await _until(lambda: (tmp_path / LIVE).stat().st_mtime_ns != first)  # rewritten while the loop turns
    healthy["ok"] = False
    await _until(lambda: not (tmp_path / READY).exists())  # a failing check: not ready, still live
    assert (tmp_path / LIVE).exists()
    healthy["ok"] = True
    await _until(lambda: (tmp_path / READY).exists())
    task.cancel()  # the service starts draining
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / READY).exists() and (tmp_path / LIVE).exists()


@pytest.mark.asyncio
async def test_a_check_that_raises_is_not_ready_and_does_not_stop_liveness(tmp_path):
    async def broken() -> bool:
        raise RuntimeError("boom")

    task = asyncio.create_task(keep_probe_files(tmp_path, broken, interval=0.02))
    await _until(lambda: (tmp_path / LIVE).exists())
    first = (tmp_path / LIVE).stat().st_mtime_ns
    await _until(lambda: (tmp_path / LIVE).stat().st_mtime_ns != first)
    assert not (tmp_path / READY).exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_probe_folder_is_off_unless_set(monkeypatch):
    monkeypatch.delenv("RAILYARD_PROBE_DIR", raising=False)
    assert Settings().probe_dir is None
    monkeypatch.setenv("RAILYARD_PROBE_DIR", "/var/lib/railyard/probes")
    assert str(Settings().probe_dir) == "/var/lib/railyard/probes"


@pytest.mark.asyncio
async def test_a_stop_that_comes_as_a_dependency_answers_ends_the_probe_files(tmp_path):
    """A service's readiness is its health check (shared/service.py `_probe` of each dependency); the stop cancels the
    probe files' loop and waits for it. The probe was bounded with asyncio.wait_for, which on Python 3.11 returns the
    dependency's answer instead of raising CancelledError when it comes in the step the cancel does (bpo-42130): the
    loop went on for good and the service's stop with it, until the pod was killed."""
    from shared.service import _probe

    loop = asyncio.get_running_loop()
    cancelled: list[bool] = []

    async def answers_as_the_stop_comes() -> None:
        answered = loop.create_future()
        loop.call_soon(answered.set_result, None)  # PostgreSQL's answer, back on the loop ...
        if not cancelled:
            cancelled.append(True)
            loop.call_soon(task.cancel)  # ... in the step the stop cancels the loop
        await answered

    async def healthy() -> bool:
        return (await _probe("postgres", answers_as_the_stop_comes())).ok

    task = asyncio.create_task(keep_probe_files(tmp_path, healthy, interval=0.01))
    await asyncio.wait({task}, timeout=3.0)
    assert task.done(), "the probe files' loop goes on after the stop's cancel"
    assert task.cancelled()
    assert not (tmp_path / READY).exists()
