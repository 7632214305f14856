"""An exited engine replica's sandboxed workers' folders (engine-work/<deployment>/<replica id>-<n>) are swept by the
deployer (services/deployer/backend.py LocalBackend.swept_work): a replica killed with SIGKILL (hung, out of memory,
past stop_timeout) or crashed never removed them (SandboxedRuntime.stop does on a clean stop), one set per restart of
a crash loop. Only that replica's folders go: another replica's, and names that only start alike, stay. Stand-in
processes (tests/unit/test_deployer_liveness.py)."""

from __future__ import annotations

from services.deployer.backend import LocalBackend, Replica, ReplicaSet
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
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}
    assert replica_set.replicas[1] is live and replica_set.replicas[0] is not dead  # replaced


async def test_a_replica_killed_or_stopped_has_its_folders_swept(tmp_path):
    backend, replica_set, folder = _backend(tmp_path)
    hung = Replica(replica_id="ab", process=Process(100), started_at=0.0, answered=RUNNING)
    await backend._kill_hung(hung, "d-1")  # SIGTERM ignored, SIGKILL after the grace
    assert hung.process.returncode == -9
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}
    stopped = Replica(replica_id="cd", process=Process(101), started_at=0.0, answered=RUNNING)
    await backend._stop_replica(stopped, "d-1")  # past stop_timeout: killed
    assert _left(folder) == {"abc-0", "ab-x"}


async def test_nothing_is_swept_without_an_engine_work_folder(tmp_path):
    backend, replica_set, folder = _backend(tmp_path)
    backend.engine_work_dir = None
    await backend.swept_work("d-1", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    await backend.swept_work("d-2", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    assert len(_left(folder)) == 5
    backend.engine_work_dir = tmp_path / "engine-work"
    await backend.swept_work("d-2", Replica(replica_id="ab", process=Process(100), started_at=0.0))  # no folder
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
    await backend.swept_work("d-1", Replica(replica_id="ab", process=Process(100), started_at=0.0))
    assert _left(folder) == {"abc-0", "ab-x", "cd-0"}
    assert (outside / "kept" / "file").read_bytes() == b"x"
