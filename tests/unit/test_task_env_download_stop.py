"""An install stopped while it downloads its requirements' wheels (services/task_scheduler/packaging.py, _download:
`pip download` outside the sandbox) stops the download's process. The install is cancelled when its claim was taken
over by another scheduler or the service stops (Scheduler._install_one); before, the cancel ended the wait only
(asyncio.wait_for), and pip went on downloading into a wheelhouse nobody would read. A `sleep` stands in for pip."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.task_scheduler import packaging
from shared.settings import TaskSettings


async def test_a_cancelled_download_stops_its_process(tmp_path, monkeypatch):
    started: list[asyncio.subprocess.Process] = []
    running = asyncio.Event()
    create_subprocess_exec = asyncio.create_subprocess_exec

    async def a_long_download(*argv: str, **kwargs: object) -> asyncio.subprocess.Process:
        assert argv[1:4] == ("-m", "pip", "download")
        process = await create_subprocess_exec("sleep", "600", **kwargs)
        started.append(process)
        running.set()
        return process

    monkeypatch.setattr(packaging.asyncio, "create_subprocess_exec", a_long_download)
    (tmp_path / "requirements.txt").write_text("x==1\n")
    download = asyncio.create_task(packaging._download(tmp_path / "requirements.txt", tmp_path / "wheels",
                                                       TaskSettings()))
    try:
        async with asyncio.timeout(10):
            await running.wait()
        download.cancel()
        with pytest.raises(asyncio.CancelledError):
            await download
        assert started[0].returncode is not None  # was: None, the process still running
    finally:
        for process in started:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
