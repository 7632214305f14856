"""An undeployed deployment's folders go: deployments/<name>/ (its replicas' logs, its specs) and engine-work/<name>/
(its replicas' sandboxed workers' folders), once no replica of it runs (services/deployer/backend.py
LocalBackend._release). Before session 32 deployments/<name>/ stayed for ever, and the empty engine-work/<name>/ was
removed by the sweep thread after a look at the running sets that a redeploy of the same name could slip past. Now the
removal is decided on the event loop, where starts happen: the folders are renamed out of the way (REMOVING) and the
renamed ones removed in the thread, so a redeploy right after an undeploy keeps the folders it makes, and one before
the removal began calls it off. A failed first deploy keeps its replicas' logs and spec (the traceback behind the
reason its 400 quotes) until an undeploy, marked as such (KEPT_MARKER). The LocalBackend's own start/stop/supervisor
with stand-in processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time

import pytest

import services.deployer.backend as backend_module
from services.deployer import handlers
from services.deployer.backend import KEPT_MARKER, REMOVING, REPLICA_MODULE, LocalBackend, Replica, ReplicaSet
from shared.errors import InvalidRequest
from shared.messages.engine import ReplicaDeployment, ReplicaSpec
from tests.unit.deployer_world import ALICE, PIPELINE, _deploy, _until, make_world


class Proc:
    """A replica's process: exits on SIGTERM (`draining`: only when the test says, or on SIGKILL)."""

    def __init__(self, pid: int, draining: bool = False) -> None:
        self.pid, self.returncode, self.draining, self.signals = pid, None, draining, []
        self._exited = asyncio.Event()

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGTERM and not self.draining:
            self.exit(0)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.exit(-9)

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        return self.returncode


class Backend(LocalBackend):
    """The real LocalBackend (start, stop, _spawn's bookkeeping, the supervisor), its processes stand-ins: each
    spawned replica makes a worker's folder as a replica's sandboxed worker would; `ready` answers the starts (None:
    ready at once; an exception: they fail); `spawn_gate`, when set, holds each spawn until it is done."""

    def __init__(self, tmp_path) -> None:
        super().__init__(tmp_path / "deployments", None, scale_down_after=60, ready_timeout=10, stop_timeout=5,
                         engine_work_dir=tmp_path / "engine-work", sweep_cgroups=self._count_cgroup_sweeps)
        self.pids = iter(range(1000, 2000))
        self.ready: BaseException | asyncio.Future | None = None
        self.spawn_gate: asyncio.Future | None = None
        self.processes: list[Proc] = []
        self.cgroup_sweeps = 0
        self.cgroup_swept_at: list[float] = []  # when each sweep ran (time.monotonic)

    def _count_cgroup_sweeps(self) -> int:
        self.cgroup_sweeps += 1
        self.cgroup_swept_at.append(time.monotonic())
        return 0

    async def _wait_ready(self, replica_set: ReplicaSet) -> None:
        if isinstance(self.ready, asyncio.Future):
            await self.ready
        elif self.ready is not None:
            raise self.ready


def _exec(backend: Backend):
    async def create_subprocess_exec(*argv, stdout=None, **kwargs):
        assert argv[2] == REPLICA_MODULE
        stdout.write(b"railyard-engine: loading\n")
        if backend.spawn_gate is not None:
            await backend.spawn_gate
        process = Proc(next(backend.pids))
        backend.processes.append(process)
        worker = backend.engine_work_dir / backend_module.Path(argv[3]).parent.name / f"{argv[4]}-0"
        worker.mkdir(parents=True)
        (worker / "scratch").write_bytes(b"x")
        return process
    return create_subprocess_exec


@pytest.fixture
def backend(tmp_path, monkeypatch) -> Backend:
    made = Backend(tmp_path)
    monkeypatch.setattr(backend_module.asyncio, "create_subprocess_exec", _exec(made))
    return made


SPEC = ReplicaSpec(deployment=ReplicaDeployment(pipeline="p", pipeline_version="1", workspace_id=1), steps=[],
                   engine_config={})


def _names(folder) -> set[str]:
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


def _files(backend: Backend, name: str) -> set[str]:
    """What deployments/<name>/ holds, by kind: spec, replica (its log)."""
    return {path.name.split("-")[0] for path in (backend.work_dir / name).iterdir()}


async def test_an_undeploy_removes_its_deployments_folders_and_no_others(backend):
    await backend.start("d-1", SPEC, 2)
    await backend.start("d-2", SPEC, 1)
    assert _files(backend, "d-1") == {"spec", "replica"} and len(_names(backend.engine_work_dir / "d-1")) == 2
    await backend.stop("d-1")
    await backend.swept()
    assert _names(backend.work_dir) == {"d-2"} and _names(backend.engine_work_dir) == {"d-2"}  # nothing left over
    assert _files(backend, "d-2") == {"spec", "replica"} and len(_names(backend.engine_work_dir / "d-2")) == 1
    assert backend.cgroup_sweeps == 1  # the undeploy's replicas' sandbox cgroups, once they are gone
    await backend.stop("d-9")  # never deployed here: nothing to remove, nothing raised
    await backend.swept()
    assert _names(backend.work_dir) == {"d-2"}


async def test_a_failed_first_deploy_keeps_its_logs_until_an_undeploy(backend):
    """What a user reads after a failed deploy (its 400 quotes the last line of a replica's log): the logs and the
    spec stay; the workers' folders of its replicas, which nobody reads, go. An undeploy of it (inactive, nothing
    runs) then removes the rest. A failed redeploy of a running deployment removes nothing: the old set serves."""
    backend.ready = RuntimeError("the model did not load")
    with pytest.raises(RuntimeError):
        await backend.start("d-1", SPEC, 2)
    await backend.swept()
    assert "d-1" not in backend.sets
    # and its marker (KEPT_MARKER): what the sweep of folders no deployment has tells from an undeploy's leftovers
    assert _files(backend, "d-1") == {"spec", "replica", KEPT_MARKER}
    assert len(list((backend.work_dir / "d-1").iterdir())) == 4
    assert "failed start of deployment d-1" in (backend.work_dir / "d-1" / KEPT_MARKER).read_text()
    assert _names(backend.engine_work_dir) == set()
    await backend.stop("d-1")
    await backend.swept()
    assert _names(backend.work_dir) == set()

    backend.ready = RuntimeError("the model did not load")
    with pytest.raises(RuntimeError):
        await backend.start("d-2", SPEC, 1)
    assert KEPT_MARKER in _names(backend.work_dir / "d-2")
    backend.ready = None
    await backend.start("d-2", SPEC, 1)  # a deploy of the name that serves: its folder is no failed deploy's now
    assert KEPT_MARKER not in _names(backend.work_dir / "d-2")
    backend.ready = RuntimeError("the new version did not load")
    with pytest.raises(RuntimeError):
        await backend.start("d-2", SPEC, 1)
    await backend.swept()
    assert KEPT_MARKER not in _names(backend.work_dir / "d-2")  # a failed redeploy: the serving set's folder
    assert "d-2" in backend.sets and len(list((backend.work_dir / "d-2").glob("replica-*.log"))) == 3
    assert len(_names(backend.engine_work_dir / "d-2")) == 1  # the serving replica's (the failed one's swept)


class Gate:
    """shutil.rmtree held until opened (a removal under way in the sweep thread)."""

    def __init__(self, monkeypatch) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        real = backend_module.shutil.rmtree

        def rmtree(path, *args, **kwargs):
            self.entered.set()
            self.open.wait(30)  # bounded: a failing test leaves no thread behind for long
            return real(path, *args, **kwargs)

        monkeypatch.setattr(backend_module.shutil, "rmtree", rmtree)


async def test_a_redeploy_while_the_removal_runs_keeps_its_own_folders(backend, monkeypatch):
    """The undeploy's removal is under way in the sweep thread when the same name is deployed again: the new replicas'
    spec, logs and workers' folders stay (the removal works on the renamed folders only)."""
    await backend.start("d-1", SPEC, 1)
    gate = Gate(monkeypatch)
    try:
        await backend.stop("d-1")
        assert await asyncio.to_thread(gate.entered.wait, 10)  # the removal has begun
        assert not (backend.work_dir / "d-1").exists()  # renamed away at once
        await backend.start("d-1", SPEC, 1)
    finally:
        gate.open.set()
    await backend.swept()
    assert _files(backend, "d-1") == {"spec", "replica"} and len(list((backend.work_dir / "d-1").iterdir())) == 2
    assert (backend.engine_work_dir / "d-1" / f"{backend.sets['d-1'].replicas[0].replica_id}-0" / "scratch").exists()
    assert not [path for top in (backend.work_dir, backend.engine_work_dir) for path in top.iterdir()
                if path.name.startswith(REMOVING)]  # and the old ones are gone


async def test_the_folders_wait_for_a_draining_replica_and_a_redeploy_calls_their_removal_off(backend):
    """A replica retired before the undeploy (scaled down, or killed as hung) still drains, writing its log: the
    folders go once it has exited. A deploy of the name meanwhile keeps them, also after it exits."""
    for redeployed in (False, True):
        await backend.start("d-1", SPEC, 1)
        draining = Replica(replica_id="dr", process=Proc(1, draining=True), started_at=0.0)
        backend._retire("d-1", backend._stop_replica(draining, "d-1"))
        await backend.stop("d-1")
        await backend.swept()
        assert _files(backend, "d-1") == {"spec", "replica"}  # kept while it drains
        if redeployed:
            await backend.start("d-1", SPEC, 1)
        draining.process.exit(0)
        await asyncio.gather(*backend._retiring)
        await backend.swept()
        assert (backend.work_dir / "d-1").exists() is redeployed
        assert (backend.engine_work_dir / "d-1").exists() is redeployed


async def test_a_retired_replica_exiting_while_the_undeployed_set_drains_leaves_the_folders_to_the_set(backend):
    """The undeploy's set drains (stop() awaits it, the set already out of `sets`) when a replica retired before
    (scaled down, killed as hung) exits: its end is no cue to remove the folders, which the set's replicas still
    write their logs in and keep their workers' folders in. Before, that exit renamed and removed them under the
    draining set (its replicas' logs of the drain lost, their workers' folders left in a .removing-* folder)."""
    await backend.start("d-1", SPEC, 1)
    backend.sets["d-1"].replicas[0].process.draining = True
    retired = Replica(replica_id="dr", process=Proc(1, draining=True), started_at=0.0)
    backend._retire("d-1", backend._stop_replica(retired, "d-1"))
    stopping = asyncio.create_task(backend.stop("d-1"))
    await asyncio.sleep(0)  # the set drains
    retired.process.exit(0)
    await asyncio.gather(*backend._retiring)
    await backend.swept()
    assert not stopping.done()
    assert _files(backend, "d-1") == {"spec", "replica"} and len(_names(backend.engine_work_dir / "d-1")) == 1
    backend.processes[0].exit(0)
    await stopping
    await backend.swept()
    assert _names(backend.work_dir) == set() and _names(backend.engine_work_dir) == set()


async def test_a_replacement_spawned_while_its_set_stops_keeps_the_folders_until_it_is_stopped(backend):
    """The supervisor replaces an exited replica; the undeploy comes while the replacement is being spawned (its log
    opened, its spec not read yet): the folders stay until the replacement, retired, has exited."""
    await backend.start("d-1", SPEC, 1)
    replica_set = backend.sets["d-1"]
    replica_set.ready = True
    replica_set.replicas[0].answered = {"status": "Running"}
    replica_set.replicas[0].process.exit(1)
    backend.crash_stable_after = 0.0  # it came up: replaced at once
    backend.spawn_gate = asyncio.get_running_loop().create_future()
    supervising = asyncio.create_task(backend._supervise_pass())
    for _ in range(200):
        if backend._users.get("d-1"):
            break
        await asyncio.sleep(0.005)
    await backend.stop("d-1")
    await backend.swept()
    assert _files(backend, "d-1") == {"spec", "replica"}  # the spawn under way uses them
    backend.spawn_gate.set_result(None)
    await supervising
    await asyncio.gather(*backend._retiring)
    await backend.swept()
    assert backend.processes[-1].signals == [signal.SIGTERM]  # the replacement was stopped
    assert _names(backend.work_dir) == set() and _names(backend.engine_work_dir) == set()


async def test_a_replica_autoscaling_added_while_its_set_stopped_is_stopped(backend, monkeypatch):
    """Before, it was appended to the stopped set after _stop_set had taken the set's list: it ran on, untracked."""
    await backend.start("d-1", SPEC, 1)
    replica_set = backend.sets["d-1"]
    replica_set.autoscale, replica_set.last_scaled = (1, 3), 0.0
    monkeypatch.setattr(Replica, "cpu_percent", lambda self: 100.0)
    backend.spawn_gate = asyncio.get_running_loop().create_future()
    scaling = asyncio.create_task(backend._autoscale(replica_set))
    for _ in range(200):
        if backend._users.get("d-1"):
            break
        await asyncio.sleep(0.005)
    await backend.stop("d-1")
    backend.spawn_gate.set_result(None)
    await scaling
    await asyncio.gather(*backend._retiring)
    await backend.swept()
    added = backend.processes[-1]
    assert len(backend.processes) == 2 and added.returncode == 0 and added.signals == [signal.SIGTERM]
    assert len(replica_set.replicas) == 1
    assert _names(backend.work_dir) == set()


async def test_an_undeployed_deployments_folder_that_is_a_symbolic_link_is_unlinked_not_followed(backend, tmp_path):
    """engine-work/<name>/ or deployments/<name>/ a symbolic link (whoever made it: an operator moving a large folder
    to another disk): the undeploy removes the link, and what it points at stays, as at the start's sweep. Before,
    the renamed engine-work link was listed through and each folder in its target removed."""
    outside = tmp_path / "outside"
    (outside / "kept-0").mkdir(parents=True)
    (outside / "kept-0" / "file").write_bytes(b"x")
    backend.engine_work_dir.mkdir()
    backend.work_dir.mkdir()
    (backend.engine_work_dir / "d-1").symlink_to(outside, target_is_directory=True)
    (backend.work_dir / "d-1").symlink_to(outside, target_is_directory=True)
    await backend.stop("d-1")
    await backend.swept()
    assert (outside / "kept-0" / "file").exists()
    assert _names(backend.work_dir) == set() and _names(backend.engine_work_dir) == set()


def _replica_process(spec, replica_id: str) -> subprocess.Popen:
    """A process with a replica's command line (python -m services.engine.replica <spec> <id>), sleeping."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", REPLICA_MODULE, str(spec),
                             replica_id])


async def test_at_start_what_an_undeploy_left_and_idle_workers_folders_go(backend):
    """A deployer that died while it removed an undeployed deployment's folders left them renamed: they go at the next
    start (but a live replica's worker folder in one). The engine-work folder of a deployment none of whose
    replicas runs goes, decided on the event loop: not one whose start is under way or whose set runs. A
    deployment's deployments/<name>/ stays (a failed deploy's logs). The sandbox cgroups are swept once."""
    work, engine = backend.work_dir, backend.engine_work_dir
    for folder in (work / f"{REMOVING}d-5-1234abcd", engine / f"{REMOVING}d-5-1234abcd" / "gone-0",
                   engine / f"{REMOVING}d-6-1234abcd" / "lv-0", engine / "d-7" / "gone-0", engine / "d-8" / "x-0",
                   engine / "d-9", work / "d-7"):
        folder.mkdir(parents=True)
        (folder / "file").write_bytes(b"x")
    backend.sets["d-8"] = ReplicaSet(name="d-8", spec_path=work / "d-8" / "spec.json", ready=True)
    backend._users["d-9"] += 1  # its start under way
    live = _replica_process(work / "d-6" / "spec-1.json", "lv")
    try:
        backend.sweep_stale_work()
        await backend.swept()
    finally:
        live.kill()
        live.wait()
    assert _names(work) == {"d-7"} and _names(work / "d-7") == {"file"}
    assert _names(engine) == {f"{REMOVING}d-6-1234abcd", "d-8", "d-9"}
    assert _names(engine / f"{REMOVING}d-6-1234abcd") == {"lv-0"}  # its replica still runs
    assert _names(engine / "d-8") == set()  # x-0 is no running replica's: swept; the set runs: the folder stays
    assert backend.cgroup_sweeps == 1


async def test_through_the_handlers_the_last_failed_deploys_logs_stay_and_an_undeploy_removes_them(tmp_path,
                                                                                                   monkeypatch):
    """pipelines/deploy whose replicas fail (a 400 quoting the reason): deployments/a-5/ stays with its spec. A
    deploy under another deploy_id renames the deployment and stops the old name: a-5's folder goes, b-5's (failed
    too) stays; pipelines/undeploy of the (inactive) deployment then removes it."""
    world = make_world(tmp_path, monkeypatch)
    for deploy_id in ("a", "b"):
        deploy = _deploy(world, deploy_id)
        await _until(lambda: world.backend.waiting, "the deploy starts its replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest, match="the model did not load"):
            await deploy
        await world.backend.swept()
        assert _names(tmp_path) == {f"{deploy_id}-5"} and _names(tmp_path / f"{deploy_id}-5") != set()
    await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
    await world.backend.swept()
    assert _names(tmp_path) == set()


async def test_an_undeploy_removes_the_folders_of_the_deployments_other_names(tmp_path, monkeypatch):
    """Deployment 5 serves as a-5; a redeploy under deploy_id b fails (a-5 serves on): b-5's folder keeps its logs.
    Before, nothing ever removed it (an undeploy stops a-5, the name the row gives); now the undeploy of deployment 5
    removes it with a-5's. Another deployment's (a-15, c-6) stays."""
    world = make_world(tmp_path, monkeypatch)
    for other in ("a-15", "c-6"):
        (tmp_path / other).mkdir()
    world.backend.hold = False
    await _deploy(world, "a")
    world.backend.hold = True
    redeploy = _deploy(world, "b")
    await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
    world.backend.waiting.pop()[1].set_exception(RuntimeError("the new version did not load"))
    with pytest.raises(InvalidRequest, match="a-5 still serves"):
        await redeploy
    await world.backend.swept()
    assert _names(tmp_path) == {"a-5", "b-5", "a-15", "c-6"}
    await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
    await world.backend.swept()
    assert _names(tmp_path) == {"a-15", "c-6"}


async def test_a_crash_loop_keeps_the_logs_of_the_last_replicas_replaced(backend):
    """Each replacement has a log of its own: the last KEPT_LOGS replaced replicas' and the running one's stay, the
    older ones go (a crash loop wrote one a restart for as long as it lasted)."""
    await backend.start("d-1", SPEC, 1)
    replica_set = backend.sets["d-1"]
    replica_set.ready = True
    backend.crash_stable_after = 0.0  # each came up: replaced at once, no back-off
    replaced = []
    for _ in range(backend_module.KEPT_LOGS + 3):
        replica = replica_set.replicas[0]
        replica.answered = {"status": "Running"}
        replica.process.exit(1)
        replaced.append(replica.replica_id)
        await backend._supervise_pass()
        assert replica_set.replicas[0] is not replica
    await backend.swept()
    kept = {path.name for path in (backend.work_dir / "d-1").glob("replica-*.log")}
    assert kept == {f"replica-{r}.log" for r in [*replaced[-backend_module.KEPT_LOGS:],
                                                   replica_set.replicas[0].replica_id]}


def _removing(folder) -> list:
    return [path for path in folder.iterdir() if path.name.startswith(REMOVING)] if folder.exists() else []


async def _gone(condition, what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_a_previous_deployers_draining_replica_keeps_its_log_and_folder_until_it_exits(backend, monkeypatch):
    """After a deployer restart a replica of the previous deployer may still drain (SIGTERM at its deployer's death).
    An undeploy then removed its log at once and left its worker's folder in a renamed engine-work folder until the
    next deployer start. Now both stay while it runs and go, with the renamed folders, once it has exited."""
    monkeypatch.setattr(backend_module, "RECHECK_EVERY", 0.05)
    work, engine = backend.work_dir, backend.engine_work_dir
    (engine / "d-1" / "old-0").mkdir(parents=True)
    (work / "d-1").mkdir(parents=True)
    (work / "d-1" / "replica-old.log").write_bytes(b"draining\n")
    draining = _replica_process(work / "d-1" / "spec-0.json", "old")
    try:
        await backend.start("d-1", SPEC, 1)  # the restore's own set
        await backend.stop("d-1")
        await backend.swept()
        [logs], [workers] = _removing(work), _removing(engine)
        assert _names(logs) == {"replica-old.log"} and _names(workers) == {"old-0"}  # its own: kept while it runs
        assert _names(work) == {logs.name} and _names(engine) == {workers.name}  # the new set's: gone
    finally:
        draining.kill()
        draining.wait()
    await _gone(lambda: not _removing(work) and not _removing(engine), "the renamed folders go once it exited")
    assert _names(work) == set() and _names(engine) == set()
    await backend.close()


def _sleeping_in(folder) -> subprocess.Popen:
    """A process (not a replica) whose working directory is `folder`, sleeping."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=folder)


async def test_at_start_a_renamed_engine_work_folder_goes_whole_but_what_a_live_process_uses(backend, tmp_path):
    """A renamed engine-work folder (an undeploy cut short) was only emptied of <id>-<n> workers' folders at a start:
    anything else in it kept it for ever. Now the rest goes too (a link in it unlinked, not followed), but a live
    replica's worker folder and a folder a live process works in. A renamed link goes (unlinked): it was never
    listed."""
    engine = backend.engine_work_dir
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    stale, used = engine / f"{REMOVING}d-5-1234abcd", engine / f"{REMOVING}d-6-1234abcd"
    for folder in (stale / "gone-0", stale / "not-a-worker", used / "in-use"):
        folder.mkdir(parents=True)
        (folder / "file").write_bytes(b"x")
    (stale / "stray-file").write_bytes(b"x")
    (stale / "link").symlink_to(outside, target_is_directory=True)
    (used / "other-file").write_bytes(b"x")
    (engine / f"{REMOVING}d-7-1234abcd").symlink_to(outside, target_is_directory=True)  # a linked one renamed
    inside = _sleeping_in(used / "in-use")
    try:
        backend.sweep_stale_work()
        await backend.swept()
        assert _names(engine) == {used.name} and _names(used) == {"in-use"}
    finally:
        inside.kill()
        inside.wait()
    assert _names(outside) == {"keep"}
    await backend.close()


async def test_an_undeploys_cgroup_sweep_runs_again_a_little_later(backend, monkeypatch):
    """A replica killed with SIGKILL takes its sandbox launchers with it by their parent-death signal, which the kernel
    delivers asynchronously: the sweep right after the undeploy may find a launcher still in its cgroup. It runs
    once more CGROUP_RESWEEP later (in the sweep thread), and only once."""
    monkeypatch.setattr(backend_module, "CGROUP_RESWEEP", 0.3)
    await backend.start("d-1", SPEC, 1)
    stopping = time.monotonic()
    await backend.stop("d-1")
    await _gone(lambda: backend.cgroup_sweeps == 2, "the second sweep", 3.0)
    # the second CGROUP_RESWEEP after the undeploy at least, not at once with the first. (Counted once swept() returned,
    # the first alone failed under load: the undeploy's folder removals before it in the sweep thread took past a
    # 0.05 s CGROUP_RESWEEP, and swept() waited for the second, queued meanwhile, too.)
    first, second = backend.cgroup_swept_at
    assert first < second and second - stopping >= 0.3, (stopping, backend.cgroup_swept_at)
    await asyncio.sleep(0.4)
    await backend.swept()
    assert backend.cgroup_sweeps == 2
    await backend.close()


async def test_a_first_start_the_deployers_stop_cancels_or_ends_is_no_failed_deploy(backend):
    """A first start cancelled by the deployer's stop (the restore's start still loading, a deploy past the command
    drain), or one whose set close() stopped, did not fail: no KEPT_MARKER (its row stays active, the next start's
    restore starts it again). Before, it was marked as a failed start and kept KEPT_FAILED_FOR."""
    backend.ready = asyncio.get_running_loop().create_future()  # the replicas load until the test says
    starting = asyncio.create_task(backend.start("d-1", SPEC, 1))
    await _until(lambda: "d-1" in backend.sets, "the first start's set shown")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert "replica" in _files(backend, "d-1") and KEPT_MARKER not in _names(backend.work_dir / "d-1")

    backend.ready = asyncio.get_running_loop().create_future()
    starting = asyncio.create_task(backend.start("d-2", SPEC, 1))
    await _until(lambda: "d-2" in backend.sets, "the first start's set shown")
    closing = asyncio.create_task(backend.close())
    await _until(lambda: "d-2" not in backend.sets, "close() took the set")
    backend.ready.set_exception(RuntimeError("engine replica exited"))  # what its stopped replicas' start sees
    with pytest.raises(RuntimeError):
        await starting
    await closing
    assert KEPT_MARKER not in _names(backend.work_dir / "d-2")
