"""An exited engine replica's sandboxed workers' folders (engine-work/<deployment>/<replica id>-<n>) are swept by the
deployer (services/deployer/backend.py LocalBackend.sweep_work): a replica killed with SIGKILL (hung, out of memory,
past stop_timeout) or crashed never removed them (SandboxedRuntime.stop does on a clean stop), one set per restart of
a crash loop. Only that replica's folders go: another replica's, and names that only start alike, stay. The removals
run in the background, one at a time, and do not hold the supervisor's pass (which awaited them before 2026-12-05);
at the deployer's start the folders no running replica owns go (a previous deployer process's replicas), and an
undeployed deployment's folder with them. Stand-in processes (tests/unit/test_deployer_liveness.py)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import subprocess
import sys
import threading

import services.deployer.backend as backend_module
from services.deployer.backend import REPLICA_MODULE, LocalBackend, Replica, ReplicaSet
from tests.unit.test_deployer_liveness import Process
from tests.unit.test_deployer_replica_status import RUNNING


def _backend(tmp_path) -> tuple[LocalBackend, ReplicaSet, object]:
    async def request(subject: str, payload: bytes, wait: float) -> bytes:
        raise AssertionError("nothing probes here")

    work = tmp_path / "engine-work"
    backend = LocalBackend(tmp_path / "deployments", request, scale_down_after=60, ready_timeout=10,
                           stop_timeout=0.05, engine_work_dir=work)
    replica_set = ReplicaSet(name="d-1", spec_path=tmp_path / "spec.json", ready=True)
    backend.sets["d-1"] = replica_set
    folder = work / "d-1"
    for name in ("ab-0", "ab-1", "abc-0", "ab-x", "cd-0"):
        (folder / name).mkdir(parents=True)
        (folder / name / "scratch").write_bytes(b"x")
    return backend, replica_set, folder


def _left(folder) -> set[str]:
    return {path.name for path in folder.iterdir()}


async def test_a_replica_seen_exited_has_its_folders_swept(tmp_path, monkeypatch):
    backend, replica_set, folder = _backend(tmp_path)
    dead = Replica(replica_id="ab", process=Process(100), started_at=0.0, answered=RUNNING)
    dead.process.returncode = -9  # SIGKILL: its workers' folders stayed
    live = Replica(replica_id="cd", process=Process(101), started_at=0.0, answered=RUNNING)
    replica_set.replicas = [dead, live]

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        return Replica(replica_id=replica_id, process=Process(102), started_at=0.0, answered=RUNNING)

    monkeypatch.setattr(backend, "_spawn", spawn)
    monkeypatch.setattr(backend, "_probe_if_due", lambda *args: None)
    await backend._supervise_pass()
    await backend.swept()
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}
    assert replica_set.replicas[1] is live and replica_set.replicas[0] is not dead  # replaced


async def test_a_replica_killed_or_stopped_has_its_folders_swept(tmp_path):
    backend, replica_set, folder = _backend(tmp_path)
    hung = Replica(replica_id="ab", process=Process(100), started_at=0.0, answered=RUNNING)
    await backend._kill_hung(hung, "d-1")  # SIGTERM ignored, SIGKILL after the grace
    assert hung.process.returncode == -9
    await backend.swept()
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}
    stopped = Replica(replica_id="cd", process=Process(101), started_at=0.0, answered=RUNNING)
    await backend._stop_replica(stopped, "d-1")  # past stop_timeout: killed
    await backend.swept()
    assert _left(folder) == {"abc-0", "ab-x"}


async def test_nothing_is_swept_without_an_engine_work_folder(tmp_path):
    backend, replica_set, folder = _backend(tmp_path)
    backend.engine_work_dir = None
    backend.sweep_work("d-1", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    backend.sweep_work("d-2", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    backend.sweep_stale_work()
    await backend.stop("d-1")
    await backend.swept()
    assert len(_left(folder)) == 5
    backend.engine_work_dir = tmp_path / "engine-work"
    backend.sweep_work("d-2", Replica(replica_id="ab", process=Process(100), started_at=0.0))  # no folder
    await backend.swept()
    assert len(_left(folder)) == 5


async def test_a_link_in_a_swept_folder_is_not_followed(tmp_path):
    """A worker's folder is the sandbox's writable working directory: a symbolic link its code made there (to the data
    directory, another deployment's folder) goes with the folder, and what it points at stays."""
    backend, replica_set, folder = _backend(tmp_path)
    outside = tmp_path / "outside"
    (outside / "kept").mkdir(parents=True)
    (outside / "kept" / "file").write_bytes(b"x")
    (folder / "ab-0" / "link").symlink_to(outside, target_is_directory=True)
    (folder / "ab-1" / "file-link").symlink_to(outside / "kept" / "file")
    backend.sweep_work("d-1", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    await backend.swept()
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}
    assert (outside / "kept" / "file").read_bytes() == b"x"


class Gate:
    """shutil.rmtree held until opened (a large unpacked package), counting the removals running at once."""

    def __init__(self, monkeypatch) -> None:
        self.open, self.running, self.most, self.removed = threading.Event(), 0, 0, []
        self.lock = threading.Lock()
        real = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                self.open.wait(30)  # bounded: a failing test leaves no thread behind for long
                self.removed.append(path.name)
                return real(path, *args, **kwargs)
            finally:
                with self.lock:
                    self.running -= 1

        monkeypatch.setattr(shutil, "rmtree", rmtree)


async def test_a_slow_sweep_does_not_hold_the_supervisors_pass(tmp_path, monkeypatch):
    """Two replicas exit; removing their folders takes long: the pass replaces both and probes the live one without
    waiting, and the removals run after, one at a time. Before, the pass awaited each removal."""
    backend, replica_set, folder = _backend(tmp_path)
    (folder / "ef-0").mkdir()
    first = Replica(replica_id="ab", process=Process(100), started_at=0.0, answered=RUNNING)
    second = Replica(replica_id="ef", process=Process(101), started_at=0.0, answered=RUNNING)
    live = Replica(replica_id="cd", process=Process(102), started_at=0.0, answered=RUNNING)
    first.process.returncode = second.process.returncode = -9
    replica_set.replicas = [first, second, live]
    probed: list[str] = []
    spawned = iter(range(103, 200))

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        return Replica(replica_id=replica_id, process=Process(next(spawned)), started_at=0.0, answered=RUNNING)

    monkeypatch.setattr(backend, "_spawn", spawn)
    monkeypatch.setattr(backend, "_probe_if_due", lambda replica_set, replica: probed.append(replica.replica_id))
    gate = Gate(monkeypatch)
    try:
        async with asyncio.timeout(10):  # held until the gate opens (30 s) when the pass waits for the removals
            await backend._supervise_pass()
        assert [r.process.pid for r in replica_set.replicas] == [103, 104, 102] and probed == ["cd"]
        assert _left(folder) == {"ab-0", "ab-1", "abc-0", "ab-x", "cd-0", "ef-0"}  # nothing removed yet
    finally:
        gate.open.set()
    await backend.swept()
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}
    assert sorted(gate.removed) == ["ab-0", "ab-1", "ef-0"] and gate.most == 1  # one at a time


async def test_a_failing_sweep_is_logged_and_the_next_one_runs(tmp_path, monkeypatch, caplog):
    backend, replica_set, folder = _backend(tmp_path)
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if path.name.startswith("ab-"):
            raise RuntimeError("disk gone")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    caplog.set_level(logging.WARNING, logger="railyard.deployer.backend")
    backend.sweep_work("d-1", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    backend.sweep_work("d-1", Replica(replica_id="cd", process=Process(101), started_at=0.0))
    await backend.swept()
    assert _left(folder) == {"ab-0", "ab-1", "abc-0", "ab-x"}  # cd-0 went all the same
    [failed] = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed.levelno == logging.WARNING
    assert "engine replica ab of d-1" in failed.getMessage() and "disk gone" in failed.getMessage()


async def test_a_removal_that_fails_inside_is_logged(tmp_path, monkeypatch, caplog):
    """What rmtree could not remove (its onerror) is logged with the folder, not dropped (ignore_errors before)."""
    backend, replica_set, folder = _backend(tmp_path)
    real = shutil.rmtree

    def rmtree(path, *args, onerror=None, **kwargs):
        if path.name == "ab-0":
            onerror(shutil.os.unlink, str(path / "scratch"), (PermissionError, PermissionError(13, "denied"), None))
            return None
        return real(path, *args, onerror=onerror, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    caplog.set_level(logging.WARNING, logger="railyard.deployer.backend")
    backend.sweep_work("d-1", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    await backend.swept()
    assert _left(folder) == {"ab-0", "abc-0", "ab-x", "cd-0"}
    [warned] = [r for r in caplog.records if "could not remove" in r.getMessage()]
    assert str(folder / "ab-0") in warned.getMessage() and "denied" in warned.getMessage()


async def test_a_replacement_whose_slot_went_while_it_started_is_stopped_not_added(tmp_path, monkeypatch):
    """The exited replica left the set while its replacement started (a scale-down): the replacement would be one
    replica more than the set holds; it is stopped instead of appended (s28's note)."""
    backend, replica_set, folder = _backend(tmp_path)
    dead = Replica(replica_id="ab", process=Process(100), started_at=0.0, answered=RUNNING)
    dead.process.returncode = 1
    live = Replica(replica_id="cd", process=Process(101), started_at=0.0, answered=RUNNING)
    replica_set.replicas = [dead, live]
    started: list[Replica] = []

    async def spawn(replica_set: ReplicaSet, replica_id: str) -> Replica:
        replica_set.replicas.remove(dead)  # removed meanwhile
        fresh = Replica(replica_id=replica_id, process=Process(102), started_at=0.0)
        started.append(fresh)
        return fresh

    monkeypatch.setattr(backend, "_spawn", spawn)
    monkeypatch.setattr(backend, "_probe_if_due", lambda *args: None)
    await backend._supervise_pass()
    await asyncio.gather(*backend._retiring)
    [fresh] = started
    assert replica_set.replicas == [live]
    assert fresh.process.signals == [signal.SIGTERM, signal.SIGKILL]  # stopped (past stop_timeout: killed)


async def test_an_undeployed_deployments_folder_goes_with_its_workers_folders(tmp_path):
    """An undeploy removes engine-work/<deployment>/ once its replicas have stopped (what is in it included: since
    session 32 the whole folder, tests/unit/test_deployer_undeploy_folders.py), another deployment's stays; a live
    replica's worker folder in it (a previous deployer's, draining) stays."""
    backend, replica_set, folder = _backend(tmp_path)
    replica_set.replicas = [Replica(replica_id="ab", process=Process(100), started_at=0.0, answered=RUNNING),
                            Replica(replica_id="cd", process=Process(101), started_at=0.0, answered=RUNNING)]
    kept = folder.parent / "d-2"
    (kept / "ef-0").mkdir(parents=True)
    await backend.stop("d-1")
    await backend.swept()
    assert not folder.exists() and _left(folder.parent) == {"d-2"} and _left(kept) == {"ef-0"}
    backend.sets["d-2"] = ReplicaSet(name="d-2", spec_path=tmp_path / "spec.json", ready=True)
    (kept / "ef-0" / "x").write_bytes(b"x")
    (kept / "gh-0").mkdir()
    draining = _replica_process("d-2", "ef", tmp_path)
    try:
        await backend.stop("d-2")
        await backend.swept()
    finally:
        draining.kill()
        draining.wait()
    [moved] = _left(folder.parent)  # renamed out of the way, kept for the live replica's folder
    assert moved.startswith(backend_module.REMOVING) and _left(folder.parent / moved) == {"ef-0"}


def _replica_process(deployment: str, replica_id: str, tmp_path) -> subprocess.Popen:
    """A process with a replica's command line (python -m services.engine.replica <spec> <id>), sleeping."""
    spec = tmp_path / "deployments" / deployment / "spec-1.json"
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", REPLICA_MODULE, str(spec),
                             replica_id])


async def test_at_start_the_folders_no_running_replica_owns_are_swept(tmp_path):
    """A previous deployer's replicas: killed with it (their folders stay), or still draining (kept), another
    deployment's empty folder goes, and one a running replica's deployment keeps."""
    backend, replica_set, folder = _backend(tmp_path)
    backend.sets.clear()  # a deployer just started: none of its own
    (folder.parent / "d-2").mkdir()  # undeployed while the deployer was down
    (folder.parent / "d-3").mkdir()  # a running replica's, which made no worker yet
    (folder.parent / "stray-file").write_bytes(b"x")
    draining = _replica_process("d-1", "cd", tmp_path)
    starting = _replica_process("d-3", "gh", tmp_path)
    try:
        backend.sweep_stale_work()
        await backend.swept()
    finally:
        for process in (draining, starting):
            process.kill()
            process.wait()
    assert _left(folder) == {"ab-x", "cd-0"}  # ab (gone) and abc (gone) swept; cd runs; ab-x is no worker's
    assert _left(folder.parent) == {"d-1", "d-3", "stray-file"}


async def test_a_live_replicas_command_line_is_read(tmp_path):
    process = _replica_process("d-9", "zz", tmp_path)
    try:
        ids, names = await asyncio.to_thread(backend_module._live_replicas)
    finally:
        process.kill()
        process.wait()
    assert "zz" in ids and "d-9" in names
