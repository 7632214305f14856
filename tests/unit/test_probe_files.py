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
