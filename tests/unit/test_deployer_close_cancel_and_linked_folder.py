"""services/deployer/backend.py: close() swallows the cancellation of the sweeper (and supervisor) it cancels, not its
own (it returned as if it had finished: contextlib.suppress caught both); and a worker's folder that is itself a
symbolic link is unlinked at the sweep, not followed (shutil.rmtree refused it: never removed, a warning at every
start)."""

from __future__ import annotations

import asyncio
import logging
import threading

from services.deployer.backend import Replica
from tests.unit.test_deployer_liveness import Process
from tests.unit.test_deployer_work_sweep import _backend, _left


async def test_close_cancelled_while_it_waits_for_the_sweeper_is_cancelled(tmp_path):
    backend, replica_set, folder = _backend(tmp_path)
    backend.sets.clear()
    release = threading.Event()
    backend._sweep_later("a slow removal", lambda: release.wait(30))  # a large folder's rmtree, in its thread
    try:
        await asyncio.sleep(0)  # the sweeper is in its thread
        closing = asyncio.create_task(backend.close())
        await asyncio.sleep(0)  # close() cancelled the sweeper and waits for it
        assert not closing.done()
        closing.cancel()
        await asyncio.wait({closing})
        assert closing.cancelled()  # on HEAD: returned normally, its cancellation swallowed
        assert backend._sweeper.cancelled()
    finally:
        release.set()


async def test_close_not_cancelled_swallows_the_cancellation_of_what_it_cancels(tmp_path):
    backend, replica_set, folder = _backend(tmp_path)
    backend.sets.clear()
    release = threading.Event()
    backend._sweep_later("a slow removal", lambda: release.wait(30))
    backend._supervisor = asyncio.create_task(asyncio.sleep(3600))
    try:
        await asyncio.sleep(0)
        await backend.close()  # returns: the sweeper's and supervisor's CancelledError are theirs
        assert backend._sweeper.cancelled() and backend._supervisor.cancelled()
    finally:
        release.set()


async def test_close_in_the_finally_of_a_task_cancelled_before_stops_everything(tmp_path):
    """A stop hook run after its task's cancellation was delivered (shared/service.py's finally): its cancelling()
    stays 1, and close() still stops the sets (checking cancelling() would stop at the supervisor's cancel)."""
    backend, replica_set, folder = _backend(tmp_path)
    release = threading.Event()
    backend._sweep_later("a slow removal", lambda: release.wait(30))
    backend._supervisor = asyncio.create_task(asyncio.sleep(3600))

    async def service() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # delivered; the stop hooks run
            pass
        await backend.close()
        return "closed"

    try:
        running = asyncio.create_task(service())
        await asyncio.sleep(0)
        running.cancel()
        assert await running == "closed"
        assert backend.sets == {} and backend._supervisor.cancelled() and backend._sweeper.cancelled()
    finally:
        release.set()


async def test_a_worker_folder_that_is_a_link_is_unlinked_and_its_target_kept(tmp_path, caplog):
    backend, replica_set, folder = _backend(tmp_path)
    outside = tmp_path / "outside"
    (outside / "kept").mkdir(parents=True)
    (outside / "kept" / "file").write_bytes(b"x")
    for name in ("ab-0", "ab-1"):
        (folder / name / "scratch").unlink()
        (folder / name).rmdir()
    (folder / "ab-0").symlink_to(outside, target_is_directory=True)
    (folder / "ab-1").symlink_to(outside / "kept" / "file")
    with caplog.at_level(logging.WARNING, logger="railyard"):
        backend.sweep_work("d-1", Replica(replica_id="ab", process=Process(100), started_at=0.0))
        await backend.swept()
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}  # on HEAD: both links stayed
    assert (outside / "kept" / "file").read_bytes() == b"x" and _left(outside) == {"kept"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_at_start_a_stale_worker_folder_that_is_a_link_goes_once(tmp_path, caplog):
    backend, replica_set, folder = _backend(tmp_path)  # d-1 restored meanwhile: its folder stays, zz-3 is nobody's
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"x")
    (folder / "zz-3").symlink_to(outside, target_is_directory=True)  # no replica zz runs
    with caplog.at_level(logging.WARNING, logger="railyard"):
        backend.sweep_stale_work()
        await backend.swept()
        assert "zz-3" not in _left(folder)
        backend.sweep_stale_work()  # the next start: nothing to say about it
        await backend.swept()
    assert (outside / "file").read_bytes() == b"x"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
