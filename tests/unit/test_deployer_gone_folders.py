"""At its start the deployer removes the folders of deployment names no deployment has any more
(services/deployer/handlers.py sweep_gone_folders, LocalBackend.remove_gone): a name whose row does not exist, and a
name other than its inactive row's own (an earlier deploy_id). Before session 32 (2026-12-05) deployments/<name>/ was
never removed, so such folders stayed for ever: no later undeploy names them.
Never an active row's folders (a failed renamed redeploy's logs stay until its undeploy), nor a name a set runs under
or a start uses. An inactive row's own name's goes unless it holds a failed deploy's kept logs (KEPT_MARKER), and
those KEPT_FAILED_FOR after their marker or past KEPT_FAILED_MAX newer ones; before session 34 nothing told the two
apart and both stayed for ever. A data directory of before the markers has its unmarked folders adopted (kept)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from types import SimpleNamespace

import pytest

import services.deployer.backend as backend_module
from services.deployer import handlers
from services.deployer.backend import (
    DATA_DIR_MARKED,
    KEPT_FAILED_FOR,
    KEPT_MARKER,
    REMOVING,
    LocalBackend,
    ReplicaSet,
)
from services.deployer.handlers import sweep_gone_folders, sweep_gone_folders_every


class _Pool:
    """The deployments table: (deploy_id, active) by id."""

    def __init__(self, rows: dict[int, tuple[str, bool]], fails: BaseException | None = None) -> None:
        self.rows, self.fails, self.asked = rows, fails, []

    async def fetch(self, sql: str, ids: list[int]):
        self.asked.append(ids)
        if self.fails is not None:
            raise self.fails
        return [{"id": i, "deploy_id": self.rows[i][0], "active": self.rows[i][1]} for i in ids if i in self.rows]


def _backend(tmp_path) -> LocalBackend:
    async def request(subject: str, payload: bytes, wait: float) -> bytes:
        raise AssertionError("nothing probes here")

    swept = []
    backend = LocalBackend(tmp_path / "deployments", request, scale_down_after=60, ready_timeout=10,
                           stop_timeout=0.05, engine_work_dir=tmp_path / "engine-work",
                           sweep_cgroups=lambda: swept.append(1) or 0)
    backend.cgroup_sweeps = swept  # type: ignore[attr-defined]
    return backend


NAMES = ["gone-7", "old-5", "new-5", "live-6", "other-6", "run-8", "starting-9", "nodash", "x-12ab", "-4",
         "huge-99999999999999999999", "odd-\u0663"]


def _folders(tmp_path) -> None:
    for name in NAMES:
        folder = tmp_path / "deployments" / name
        folder.mkdir(parents=True)
        (folder / "replica-ab.log").write_text("railyard-engine: it failed\n")
        (folder / "spec-1.json").write_text("{}")
    for name in ("gone-7", "old-5", "new-5"):
        (tmp_path / "engine-work" / name / "ab-0").mkdir(parents=True)
    (tmp_path / "deployments" / f"{REMOVING}x-1-abcd").mkdir()


def _left(tmp_path, top: str) -> set[str]:
    return {path.name for path in (tmp_path / top).iterdir()
            if not path.name.startswith(REMOVING) and path.name != DATA_DIR_MARKED}


async def test_folders_of_names_no_deployment_has_go_and_every_other_stays(tmp_path):
    _folders(tmp_path)
    backend = _backend(tmp_path)
    backend.sets["run-8"] = ReplicaSet(name="run-8", spec_path=tmp_path / "spec.json")  # runs (no row: a guard)
    backend._users["starting-9"] += 1  # a start of it is under way
    # 5: renamed from old to new, inactive; 6: active as live (other-6: a failed renamed redeploy's logs); 7, 8, 9:
    # no row
    pool = _Pool({5: ("new", False), 6: ("live", True)})
    removing = await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0))
    assert removing == ["gone-7", "old-5"]
    assert pool.asked == [[5, 6, 7, 8, 9]]  # the names' ids once; none of a name of another shape or past bigint
    await backend.swept()
    assert _left(tmp_path, "deployments") == set(NAMES) - {"gone-7", "old-5"}
    assert _left(tmp_path, "engine-work") == {"new-5"}
    # the renamed folders are removed whole, as an undeploy's (the one a dead deployer left is sweep_stale_work's)
    assert [p.name for p in (tmp_path / "deployments").iterdir() if p.name.startswith(REMOVING)] == \
        [f"{REMOVING}x-1-abcd"]
    assert not [p for p in (tmp_path / "engine-work").iterdir() if p.name.startswith(REMOVING)]
    assert backend.cgroup_sweeps == []  # no replica of them ran here: no cgroup sweep for them
    assert "run-8" in backend.sets and backend._undeployed == {}
    await backend.close()


async def test_a_database_that_fails_or_does_not_answer_removes_nothing(tmp_path, caplog):
    _folders(tmp_path)
    backend = _backend(tmp_path)
    failing = _Pool({}, fails=OSError("connection refused"))
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=failing, timeout=4.0)) == []
    assert "could not look for the folders of deployments that are gone" in caplog.text

    class Silent(_Pool):
        async def fetch(self, sql, ids):
            await asyncio.sleep(60)

    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=Silent({}), timeout=0.05)) == []
    await backend.swept()
    assert _left(tmp_path, "deployments") == set(NAMES)
    await backend.close()


async def test_nothing_to_look_up_asks_nothing(tmp_path):
    backend = _backend(tmp_path)
    pool = _Pool({})
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0)) == []
    assert pool.asked == []
    # no folder from before the markers: the data directory is marked (an unmarked folder found later goes)
    assert (tmp_path / "deployments" / DATA_DIR_MARKED).exists()
    await backend.close()


async def test_many_names_go_with_one_listing_of_the_live_processes_and_a_live_replica_s_log_stays(tmp_path,
                                                                                                  monkeypatch):
    """Each folder was removed in a job of its own that listed every process first (_live_replicas: ~10-30 ms of CPU):
    the thousands of names a start may find took that many listings of the sweep thread, the undeploys' removals and
    cgroup sweeps queued behind them. One listing serves a batch's removals for LIVE_LISTING_FOR seconds; what a live
    replica uses (a previous deployer's draining replica's log) still stays and is looked at again."""
    listings = []

    def live_replicas(cwds=False):
        listings.append(cwds)
        return {"live1"}, set(), set()

    monkeypatch.setattr(backend_module, "_live_replicas", live_replicas)
    monkeypatch.setattr(backend_module, "LIVE_LISTING_FOR", 60.0)
    for number in range(1, 41):
        folder = tmp_path / "deployments" / f"old-{number}"
        folder.mkdir(parents=True)
        (folder / "replica-ab.log").write_text("railyard-engine: it failed\n")
    (tmp_path / "deployments" / "old-7" / "replica-live1.log").write_text("draining\n")
    backend = _backend(tmp_path)
    removing = await sweep_gone_folders(SimpleNamespace(backend=backend, pool=_Pool({}), timeout=4.0))
    assert len(removing) == 40
    await backend.swept()
    await asyncio.sleep(0)
    # one listing for the 40 folders' removals (40 before), after the names of the running replicas (never removed)
    assert listings == [False, True]
    [left] = [path for path in (tmp_path / "deployments").iterdir() if path.name != DATA_DIR_MARKED]
    assert left.name.startswith(f"{REMOVING}old-7-") and [p.name for p in left.iterdir()] == ["replica-live1.log"]
    assert left in backend._later  # looked at again (RECHECK_EVERY)
    await backend.close()
    # a listing older than LIVE_LISTING_FOR is taken again
    monkeypatch.setattr(backend_module, "LIVE_LISTING_FOR", 0.0)
    listings.clear()
    for number in range(41, 44):
        folder = tmp_path / "deployments" / f"old-{number}"
        folder.mkdir(parents=True)
        (folder / "replica-ab.log").write_text("railyard-engine: it failed\n")
    backend = _backend(tmp_path)
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=_Pool({}), timeout=4.0)) == \
        ["old-41", "old-42", "old-43"]
    await backend.swept()
    assert listings == [False] + [True] * 3
    await backend.close()


def _marked(folder, age: float | None) -> None:
    """deployments/<name>/ with a failed deploy's log, and a KEPT_MARKER `age` seconds old (None: no marker)."""
    folder.mkdir(parents=True)
    (folder / "replica-ab.log").write_text("railyard-engine: it failed\n")
    if age is not None:
        (folder / KEPT_MARKER).write_text("kept\n")
        then = time.time() - age
        os.utime(folder / KEPT_MARKER, (then, then))


async def test_an_inactive_rows_own_folder_goes_unless_a_failed_deploys_logs_are_kept_in_it(tmp_path):
    """In a data directory with the markers (DATA_DIR_MARKED): an inactive deployment's own-name folder without a
    marker is what an undeploy before session 32 left (nothing removed it), and goes; a failed deploy's marked one
    stays KEPT_FAILED_FOR after its marker, then goes. An active row's folder stays, marker or not. Before session 34
    every inactive row's own-name folder stayed for ever."""
    top = tmp_path / "deployments"
    _marked(top / "left-5", None)  # undeployed before session 32
    _marked(top / "failed-6", 3600.0)  # failed an hour ago
    _marked(top / "failed-7", KEPT_FAILED_FOR + 60)  # failed 7 days and a minute ago
    _marked(top / "live-8", None)  # active
    _marked(top / "restore-9", KEPT_FAILED_FOR + 60)  # active (a failed restore: Error until its undeploy)
    (tmp_path / "engine-work" / "left-5" / "ab-0").mkdir(parents=True)
    (top / DATA_DIR_MARKED).write_text("marked\n")
    backend = _backend(tmp_path)
    pool = _Pool({5: ("left", False), 6: ("failed", False), 7: ("failed", False), 8: ("live", True),
                  9: ("restore", True)})
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0)) == ["failed-7", "left-5"]
    await backend.swept()
    assert _left(tmp_path, "deployments") == {"failed-6", "live-8", "restore-9"}
    assert _left(tmp_path, "engine-work") == set()
    await backend.close()


async def test_a_data_directory_from_before_the_markers_keeps_its_folders_then_removes_them_in_time(tmp_path):
    """The first sweep with the markers cannot tell an old failed deploy's logs from an undeploy's leftovers: it
    writes a marker in each unmarked inactive own-name folder (kept as a failed deploy's, KEPT_FAILED_FOR from
    then) and marks the data directory. A later sweep keeps them until that time has passed, then removes them;
    a folder made unmarked after the first sweep (an undeploy's removal that failed) goes at the next."""
    top = tmp_path / "deployments"
    _marked(top / "old-5", None)
    _marked(top / "failed-6", 60.0)
    backend = _backend(tmp_path)
    pool = _Pool({5: ("old", False), 6: ("failed", False), 7: ("later", False)})
    deps = SimpleNamespace(backend=backend, pool=pool, timeout=4.0)
    assert await sweep_gone_folders(deps) == []
    assert (top / DATA_DIR_MARKED).exists()
    adopted = (top / "old-5" / KEPT_MARKER).stat().st_mtime
    assert abs(adopted - time.time()) < 60 and "old-5" in (top / "old-5" / KEPT_MARKER).read_text()
    assert time.time() - (top / "failed-6" / KEPT_MARKER).stat().st_mtime > 59  # its own marker untouched
    _marked(top / "later-7", None)
    assert await sweep_gone_folders(deps) == ["later-7"]
    then = time.time() - KEPT_FAILED_FOR - 60
    os.utime(top / "old-5" / KEPT_MARKER, (then, then))
    assert await sweep_gone_folders(deps) == ["old-5"]
    await backend.swept()
    assert _left(tmp_path, "deployments") == {"failed-6"}
    await backend.close()


async def test_only_the_newest_kept_folders_stay_past_kept_failed_max(tmp_path, monkeypatch):
    monkeypatch.setattr(handlers, "KEPT_FAILED_MAX", 2)
    top = tmp_path / "deployments"
    for number, age in ((5, 300.0), (6, 100.0), (7, 200.0), (8, 400.0)):
        _marked(top / f"f-{number}", age)
    (top / DATA_DIR_MARKED).write_text("marked\n")
    backend = _backend(tmp_path)
    pool = _Pool({number: ("f", False) for number in (5, 6, 7, 8)})
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0)) == ["f-5", "f-8"]
    await backend.swept()
    assert _left(tmp_path, "deployments") == {"f-6", "f-7"}
    await backend.close()


async def test_a_name_started_since_the_listing_or_a_live_replica_uses_is_not_removed(tmp_path, monkeypatch):
    """A later sweep runs beside deploys: a start of the name that began or ended between its listing and its
    removal (a failed deploy whose fresh logs and marker the listing missed) keeps its folder; so does a name a
    replica running on this machine has (a previous deployer's, draining)."""
    top = tmp_path / "deployments"
    _marked(top / "a-5", None)
    _marked(top / "b-6", None)
    _marked(top / "c-7", None)
    _marked(top / "d-9", None)  # no row; a replica of it runs
    (top / DATA_DIR_MARKED).write_text("marked\n")
    backend = _backend(tmp_path)
    pool = _Pool({5: ("a", False), 6: ("b", False), 7: ("c", False)})
    real_names = pool.fetch

    async def fetch(sql, ids):
        backend._starting("a-5")  # a deploy of a-5 began (and ended, failed) while the rows were read
        backend._starting("a-5")
        return await real_names(sql, ids)

    pool.fetch = fetch
    monkeypatch.setattr(backend_module, "_live_replicas", lambda cwds=False: ({"r1"}, {"b-6", "d-9"}))
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0)) == ["c-7"]
    await backend.swept()
    assert _left(tmp_path, "deployments") == {"a-5", "b-6", "d-9"}
    await backend.close()


async def test_the_sweep_runs_again_until_cancelled(tmp_path):
    top = tmp_path / "deployments"
    (top / DATA_DIR_MARKED).parent.mkdir(parents=True)
    (top / DATA_DIR_MARKED).write_text("marked\n")
    backend = _backend(tmp_path)
    deps = SimpleNamespace(backend=backend, pool=_Pool({5: ("a", False)}), timeout=4.0)
    task = asyncio.create_task(sweep_gone_folders_every(deps, 0.01))
    await asyncio.sleep(0.05)
    _marked(top / "a-5", None)  # an undeploy's removal that failed, after the start's sweep
    deadline = time.monotonic() + 30  # a run lists the processes in a thread: bounded in time, not in turns
    while (top / "a-5").exists() and time.monotonic() < deadline:  # noqa: ASYNC110 - a folder, no event
        await asyncio.sleep(0.01)
    assert not (top / "a-5").exists()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    await backend.close()


def _aged(folder, age: float) -> None:
    """Everything in `folder`, and the folder, last written `age` seconds ago."""
    then = time.time() - age
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (then, then))


async def test_a_deployer_without_the_markers_run_since_the_last_sweep_has_its_folders_adopted(tmp_path):
    """A rollback to a deployer from before the markers, then this one again: the older one's failed deploy wrote no
    marker. A process's first sweep adopts (keeps, as a failed deploy's) the unmarked folders written since the data
    directory's last sweep with the markers (DATA_DIR_MARKED's time, which each sweep sets); one from before goes, and
    so does one made unmarked later in the same process's run. Before, the older deployer's failed deploy's logs went
    at the first sweep."""
    top = tmp_path / "deployments"
    _marked(top / "left-5", None)  # what an undeploy left before the last sweep
    _aged(top / "left-5", 7200.0)
    top.joinpath(DATA_DIR_MARKED).write_text("marked\n")
    _aged(top, 3600.0)  # the last sweep with the markers: an hour ago
    _marked(top / "rolled-6", None)  # the older deployer's failed deploy, since
    pool = _Pool({5: ("left", False), 6: ("rolled", False), 7: ("later", False), 8: ("again", False)})
    backend = _backend(tmp_path)
    deps = SimpleNamespace(backend=backend, pool=pool, timeout=4.0)
    assert await sweep_gone_folders(deps) == ["left-5"]
    assert "written since this data directory's last sweep" in (top / "rolled-6" / KEPT_MARKER).read_text()
    assert abs(top.joinpath(DATA_DIR_MARKED).stat().st_mtime - time.time()) < 60  # this sweep's time
    _marked(top / "later-7", None)  # an undeploy's removal that failed, in this process's run
    assert await sweep_gone_folders(deps) == ["later-7"]
    await backend.swept()
    await backend.close()
    stamped = time.time() - 60  # that sweep a minute ago: a file's time is the kernel's coarse clock, which may read
    os.utime(top / DATA_DIR_MARKED, (stamped, stamped))  # a few ms behind time.time() just after it
    _marked(top / "again-8", None)  # the older deployer once more, then a new process
    restarted = _backend(tmp_path)
    assert await sweep_gone_folders(SimpleNamespace(backend=restarted, pool=pool, timeout=4.0)) == []
    assert (top / "again-8" / KEPT_MARKER).exists()
    await restarted.swept()
    assert _left(tmp_path, "deployments") == {"rolled-6", "again-8"}
    await restarted.close()


async def test_a_marker_adopted_while_a_start_of_the_name_ended_serving_is_taken_back(tmp_path):
    """The sweep read the row inactive and writes its adoption marker in its thread while a deploy of the name
    starts and serves (it took the folder's marker away before the thread wrote one): a serving set's folder is no
    failed deploy's, so the sweep takes the marker back on the event loop. Before, it stayed in the serving folder
    and was kept KEPT_FAILED_FOR as a failed deploy's once the row went inactive without an undeploy."""
    top = tmp_path / "deployments"
    _marked(top / "serving-5", None)
    _marked(top / "old-6", None)
    backend = _backend(tmp_path)
    backend.sets["serving-5"] = ReplicaSet(name="serving-5", spec_path=tmp_path / "spec.json", ready=True)
    pool = _Pool({5: ("serving", False), 6: ("old", False)})
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=pool, timeout=4.0)) == []
    assert not (top / "serving-5" / KEPT_MARKER).exists()
    assert (top / "old-6" / KEPT_MARKER).exists()  # adopted, no set of it
    del backend.sets["serving-5"]
    await backend.close()


async def test_an_undeploys_folder_a_killed_deployer_left_goes_at_the_next_starts_first_sweep(tmp_path):
    """A deployer with the markers killed between an undeploy's commit (the row inactive) and the folder's removal: its
    next start's first sweep adopted the folder (written since the last sweep) and kept it KEPT_FAILED_FOR as a failed
    deploy's. DATA_DIR_MARKED says a deployer with the markers ran and did not stop: the unmarked folders written since
    are its own undeploys' (it marks its failed deploys), and go. After a stop it records, a folder written since the
    stop (a deployer without the markers run in between) is adopted as before."""
    top = tmp_path / "deployments"
    top.mkdir()
    pool = _Pool({5: ("undeployed", False), 6: ("rolled", False)})
    killed = _backend(tmp_path)
    assert await sweep_gone_folders(SimpleNamespace(backend=killed, pool=pool, timeout=4.0)) == []
    swept = time.time() - 60  # that sweep a minute ago
    os.utime(top / DATA_DIR_MARKED, (swept, swept))
    _marked(top / "undeployed-5", None)  # its logs, then the undeploy's commit: killed before the removal
    restarted = _backend(tmp_path)
    assert await sweep_gone_folders(SimpleNamespace(backend=restarted, pool=pool, timeout=4.0)) == ["undeployed-5"]
    await restarted.swept()
    assert _left(tmp_path, "deployments") == set()
    await restarted.close()  # a stop: then a deployer without the markers, and this one again
    stopped = time.time() - 60  # that stop a minute ago (a file's time is the kernel's coarse clock)
    os.utime(top / DATA_DIR_MARKED, (stopped, stopped))
    _marked(top / "rolled-6", None)
    again = _backend(tmp_path)
    assert await sweep_gone_folders(SimpleNamespace(backend=again, pool=pool, timeout=4.0)) == []
    assert (top / "rolled-6" / KEPT_MARKER).exists()
    await again.close()
    await killed.close()


@pytest.mark.parametrize("marked", [True, False], ids=["since-the-last-sweep", "before-the-markers"])
async def test_a_marker_the_first_sweep_could_not_write_is_retried_for_its_folders_only(tmp_path, monkeypatch, marked):
    """The first sweep's adoption of a folder written since the last sweep (or of any, in a data directory from before
    the markers) failed (a full disk): the later sweeps adopted every unmarked folder written since that time (every
    one), this process's own undeploys' leftovers too (kept KEPT_FAILED_FOR), until a marker was written. They retry
    the folders the first sweep was to adopt, and remove the others; once those are marked the data directory's time
    is set (it is marked)."""
    top = tmp_path / "deployments"
    top.mkdir()
    if marked:
        top.joinpath(DATA_DIR_MARKED).write_text("marked\n")
        _aged(top, 3600.0)  # the last sweep with the markers: an hour ago
    _marked(top / "rolled-6", None)  # a deployer without the markers' failed deploy, since
    pool = _Pool({6: ("rolled", False), 7: ("later", False)})
    real = backend_module._mark_kept
    full = [True]
    monkeypatch.setattr(backend_module, "_mark_kept", lambda *args: False if full[0] else real(*args))
    backend = _backend(tmp_path)
    deps = SimpleNamespace(backend=backend, pool=pool, timeout=4.0)
    assert await sweep_gone_folders(deps) == []  # not marked: kept, and tried again
    assert not (top / "rolled-6" / KEPT_MARKER).exists()
    # not set (not marked): something left to adopt
    assert time.time() - top.joinpath(DATA_DIR_MARKED).stat().st_mtime > 3000 if marked else \
        not top.joinpath(DATA_DIR_MARKED).exists()
    _marked(top / "later-7", None)  # an undeploy's removal that failed, in this process's run
    full[0] = False
    assert await sweep_gone_folders(deps) == ["later-7"]  # was: [] (adopted)
    assert (top / "rolled-6" / KEPT_MARKER).exists() and not (top / "later-7" / KEPT_MARKER).exists()
    assert abs(top.joinpath(DATA_DIR_MARKED).stat().st_mtime - time.time()) < 60
    await backend.swept()
    assert _left(tmp_path, "deployments") == {"rolled-6"}
    await backend.close()


async def test_a_sweep_thread_past_its_check_when_close_comes_does_not_undo_the_stop(tmp_path, monkeypatch):
    """The hourly sweep's thread runs on after the stop cancels its task (asyncio.to_thread): one that had read
    `_closing` false and was writing DATA_DIR_MARKED's "running" while close() ran wrote it after close()'s "stopped",
    and the next start took the stop for a kill (it adopts nothing: a deployer without the markers' failed deploys run
    in between went). The thread's check and write and close()'s are one at a time: "stopped" is the last word."""
    top = tmp_path / "deployments"
    top.mkdir()
    backend = _backend(tmp_path)
    deps = SimpleNamespace(backend=backend, pool=_Pool({}), timeout=4.0)
    assert await sweep_gone_folders(deps) == []  # the start's: "running"
    real = backend_module._stamp
    writing, release, written = threading.Event(), threading.Event(), threading.Event()

    def stamp(path, now, run):
        if run == "running":  # the hourly sweep's thread, past its check
            writing.set()
            release.wait(1.0)  # (with the fix, close() waits for it: this ends the wait)
            real(path, now, run)
            written.set()
        else:
            real(path, now, run)

    monkeypatch.setattr(backend_module, "_stamp", stamp)
    hourly = asyncio.create_task(sweep_gone_folders(deps))
    assert await asyncio.to_thread(writing.wait, 30.0)
    hourly.cancel()  # the deployer's stop (app.stop), then the backend's close()
    await asyncio.wait({hourly})
    await backend.close()
    release.set()
    assert await asyncio.to_thread(written.wait, 30.0)
    assert backend_module._run_unstopped(top / DATA_DIR_MARKED) is False
    assert "Deployer: stopped at " in (top / DATA_DIR_MARKED).read_text()
