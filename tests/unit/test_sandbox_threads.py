"""The numeric libraries' thread counts a sandbox's code gets (shared/sandbox.py `thread_env`, `host_cpus`): the CPUs
the sandbox may use, shared among the sandboxes its caller may run at once (a scheduler's runs), or the threads
setting, unless the spec (a task run's, the engine's or the registry's worker's) sets its own."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from services.task_scheduler import runner
from shared import sandbox
from shared.sandbox import THREAD_VARIABLES, Limits, SandboxSpec
from shared.settings import Settings


@pytest.fixture
def off(tmp_path) -> Settings:
    return Settings(stack={"data_dir": tmp_path / "data"}, sandbox={"mode": "off-for-single-user"})


def launched_env(spec: SandboxSpec, settings: Settings) -> dict[str, str]:
    return sandbox._launch_config(spec, settings)["env"]


def test_a_spec_setting_no_thread_count_gets_the_cpus_the_sandbox_may_use(tmp_path, off, monkeypatch):
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 3)
    env = launched_env(SandboxSpec(argv=["true"], workdir=tmp_path, env={"INPUT": "given"}), off)
    assert {name: env[name] for name in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, "3")
    assert env["INPUT"] == "given"


def test_a_task_run_gets_them_too(tmp_path, off, monkeypatch):
    """The run's environment (runner.run_env) sets none: its sandbox adds them all."""
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 2)
    env = runner.run_env(task_id="t", run_id="r", orch_sha="s", owner_id="o", workspace_id=1,
                         gateway_url="http://127.0.0.1:1", token="x", args={})
    plan = runner.RunPlan(run_id="r", workdir=tmp_path, zip_path=tmp_path / "o.zip", entrypoint="main.py",
                          python=sys.executable, env_dir=None, env=env, timeout=20, memory_bytes=1 << 30,
                          cpu_seconds=60)
    launched = launched_env(runner.sandbox_spec(plan), off)
    assert {name: launched[name] for name in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, "2")
    assert launched["TASK_RUN_ID"] == "r"


def test_the_spec_s_own_value_wins(tmp_path, off, monkeypatch):
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 4)
    env = launched_env(SandboxSpec(argv=["true"], workdir=tmp_path, env={"OPENBLAS_NUM_THREADS": "7"}), off)
    assert env["OPENBLAS_NUM_THREADS"] == "7"
    assert {env[name] for name in THREAD_VARIABLES if name != "OPENBLAS_NUM_THREADS"} == {"4"}


def test_the_spec_s_omp_num_threads_is_the_count_of_those_it_does_not_set(tmp_path, off, monkeypatch):
    """OpenBLAS and MKL fall back to OMP_NUM_THREADS: a sandbox's own OPENBLAS_NUM_THREADS must not override it."""
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 4)
    env = launched_env(SandboxSpec(argv=["true"], workdir=tmp_path,
                                   env={"OMP_NUM_THREADS": "6", "MKL_NUM_THREADS": "2"}), off)
    assert env["MKL_NUM_THREADS"] == "2"
    assert {env[name] for name in THREAD_VARIABLES if name != "MKL_NUM_THREADS"} == {"6"}
    odd = launched_env(SandboxSpec(argv=["true"], workdir=tmp_path, env={"OMP_NUM_THREADS": "4,2"}), off)
    assert odd["OMP_NUM_THREADS"] == "4,2"  # kept as given, but not copied where a library wants a plain number
    assert {odd[name] for name in THREAD_VARIABLES if name != "OMP_NUM_THREADS"} == {"4"}
    # a digit str.isdigit takes and int() does not ("²"): kept as given, not a launch that raises ValueError
    sup = launched_env(SandboxSpec(argv=["true"], workdir=tmp_path, env={"OMP_NUM_THREADS": "\u00b2"}), off)
    assert sup["OMP_NUM_THREADS"] == "\u00b2"
    assert {sup[name] for name in THREAD_VARIABLES if name != "OMP_NUM_THREADS"} == {"4"}


def test_the_count_is_at_most_a_quarter_of_the_process_limit_and_at_least_one(tmp_path, off, monkeypatch):
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 64)
    assert sandbox.thread_env({}, Limits(processes=128))["OPENBLAS_NUM_THREADS"] == "32"
    assert sandbox.thread_env({}, Limits(processes=3))["OPENBLAS_NUM_THREADS"] == "1"
    assert sandbox.thread_env({}, Limits(processes=64))["OMP_NUM_THREADS"] == "16"


def test_the_engine_s_and_the_registry_s_workers_stay_on_one_thread(tmp_path, off, monkeypatch):
    from services.engine.sandboxed import WORKER_ENV as ENGINE_ENV
    from services.registry.worker import WORKER_ENV as REGISTRY_ENV

    monkeypatch.setattr(sandbox, "host_cpus", lambda: 8)
    for given in (ENGINE_ENV, REGISTRY_ENV):
        env = launched_env(SandboxSpec(argv=["true"], workdir=tmp_path, env=dict(given)), off)
        assert {env[name] for name in THREAD_VARIABLES} == {"1"}, given


def write_cgroups(root: Path, version: int, quotas: dict[str, str]) -> tuple[str, str]:
    """A fake /proc/self/cgroup and mountinfo for a process in cgroup /a/b, with `quotas` (relative path -> cpu.max
    or "quota period" for v1) written under a mount at `root`."""
    for relative, value in quotas.items():
        folder = root / relative
        folder.mkdir(parents=True, exist_ok=True)
        if version == 2:
            (folder / "cpu.max").write_text(value + "\n")
        else:
            quota, period = value.split()
            (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
            (folder / "cpu.cfs_period_us").write_text(period + "\n")
    (root / "a" / "b").mkdir(parents=True, exist_ok=True)
    cgroup = root / "proc-cgroup"
    mountinfo = root / "mountinfo"
    if version == 2:
        cgroup.write_text("0::/a/b\n")
        mountinfo.write_text(f"31 23 0:28 / {root} rw,relatime - cgroup2 cgroup2 rw\n")
    else:
        cgroup.write_text("3:cpu,cpuacct:/a/b\n2:memory:/a/b\n")
        mountinfo.write_text(f"32 31 0:29 / {root} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n")
    return str(cgroup), str(mountinfo)


@pytest.mark.parametrize("version", [1, 2])
def test_host_cpus_is_the_affinity_within_the_cgroup_s_cpu_quota(tmp_path, monkeypatch, version):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    period = " 100000"
    cases = [
        ({}, 8),  # no quota anywhere: the affinity
        ({"a/b": "250000" + period}, 3),  # 2.5 CPUs: rounded up
        ({"a/b": "50000" + period}, 1),  # half a CPU: at least 1
        ({"a/b": ("max" if version == 2 else "-1") + period, "a": "200000" + period}, 2),  # the parent's quota
        ({"a/b": "2000000" + period}, 8),  # more than the affinity: the affinity
    ]
    for number, (quotas, expected) in enumerate(cases):
        files = write_cgroups(tmp_path / f"case{number}", version, quotas)
        sandbox.host_cpus.cache_clear()
        try:
            assert sandbox.host_cpus(*files) == expected, quotas
        finally:
            sandbox.host_cpus.cache_clear()


def test_host_cpus_without_readable_cgroups_is_the_affinity(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    sandbox.host_cpus.cache_clear()
    try:
        assert sandbox.host_cpus(str(tmp_path / "missing"), str(tmp_path / "missing")) == 3
    finally:
        sandbox.host_cpus.cache_clear()


def _run_plan(tmp_path, **given) -> runner.RunPlan:
    env = runner.run_env(task_id="t", run_id="r", orch_sha="s", owner_id="o", workspace_id=1,
                         gateway_url="http://127.0.0.1:1", token="x", args={})
    return runner.RunPlan(run_id="r", workdir=tmp_path, zip_path=tmp_path / "o.zip", entrypoint="main.py",
                          python=sys.executable, env_dir=None, env=env, timeout=20, memory_bytes=1 << 30,
                          cpu_seconds=60, **given)


def test_runs_at_once_share_the_cpus(tmp_path, off, monkeypatch):
    """Four runs a scheduler may run at once on 8 CPUs get 2 threads each (8 in all), not 8 each (32 threads
    spinning for 8 cores); on 2 CPUs, 1 each (at least 1)."""
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 8)
    launched = launched_env(runner.sandbox_spec(_run_plan(tmp_path, at_once=4)), off)
    assert {launched[name] for name in THREAD_VARIABLES} == {"2"}
    assert {launched_env(runner.sandbox_spec(_run_plan(tmp_path, at_once=3)), off)[name]
            for name in THREAD_VARIABLES} == {"2"}  # 8 // 3: rounded down, never more threads than CPUs
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 2)
    launched = launched_env(runner.sandbox_spec(_run_plan(tmp_path, at_once=4)), off)
    assert {launched[name] for name in THREAD_VARIABLES} == {"1"}


def test_the_scheduler_s_installs_share_them_by_its_runs_at_once(tmp_path, off, monkeypatch):
    from services.task_scheduler import packaging
    from shared.settings import TaskSettings

    monkeypatch.setattr(sandbox, "host_cpus", lambda: 12)
    specs = []

    async def run(spec):
        specs.append(spec)
        return sandbox.SandboxResult(0, b"", "", None)

    monkeypatch.setattr(packaging, "run", run)
    asyncio.run(packaging._pip(tmp_path / "env", tmp_path, None, TaskSettings(max_runs_per_process=3)))
    (spec,) = specs
    assert {launched_env(spec, off)[name] for name in THREAD_VARIABLES} == {"4"}


def test_the_threads_setting_sets_the_count_of_every_sandbox_whose_caller_sets_none(tmp_path, tmp_path_factory,
                                                                                      monkeypatch):
    monkeypatch.setattr(sandbox, "host_cpus", lambda: 8)
    data = tmp_path_factory.mktemp("data")
    three = Settings(stack={"data_dir": data}, sandbox={"mode": "off-for-single-user", "threads": 3})
    assert {launched_env(runner.sandbox_spec(_run_plan(tmp_path, at_once=4)), three)[name]
            for name in THREAD_VARIABLES} == {"3"}  # not 8 // 4
    # still at most a quarter of the sandbox's process limit, and a caller's own value still wins
    many = Settings(stack={"data_dir": data}, sandbox={"mode": "off-for-single-user", "threads": 100})
    assert launched_env(SandboxSpec(argv=["true"], workdir=tmp_path, limits=Limits(processes=64)),
                        many)["OMP_NUM_THREADS"] == "16"
    env = launched_env(SandboxSpec(argv=["true"], workdir=tmp_path, env={"OMP_NUM_THREADS": "1"}), three)
    assert {env[name] for name in THREAD_VARIABLES} == {"1"}
    with pytest.raises(ValueError):
        Settings(sandbox={"threads": -1})


def test_the_scheduler_plans_its_runs_with_its_runs_at_once(tmp_path, monkeypatch):
    """Scheduler._run hands each run's plan tasks.max_runs_per_process (the sandbox shares the CPUs by it)."""
    import uuid
    from types import SimpleNamespace

    from services.task_scheduler import scheduler, store
    from shared.settings import TaskSettings

    async def task(pool, task_id):
        return {"id": task_id, "orch_id": 1, "owner_id": "o", "workspace_id": 1, "timeout_seconds": 20, "args": {}}

    async def orchestration(pool, orch_id):
        return {"sha": "s", "requirements_sha": None, "entrypoint": "main.py"}

    plans = []

    async def execute(plan, writer, kill):
        plans.append(plan)
        return runner.RunOutcome("success", 0, None)

    monkeypatch.setattr(store, "task", task)
    monkeypatch.setattr(store, "orchestration", orchestration)

    async def relay_number(pool, owner_id):  # the owner's relay address (test_sandbox_relay_numbers.py)
        return 0

    async def beat_runs(pool, run_ids, supervisor):  # still this process's as main.py starts (Scheduler._still_claimed)
        return {r: False for r in run_ids}

    monkeypatch.setattr(store, "relay_number", relay_number)
    monkeypatch.setattr(store, "beat_runs", beat_runs)
    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(runner, "cleanup", lambda workdir: None)
    deps = SimpleNamespace(pool=None, settings=TaskSettings(max_runs_per_process=3), work_root=tmp_path)

    async def mint(*args):
        return "token"

    async def local_zip(self, sha):
        return tmp_path / "o.zip"

    monkeypatch.setattr(scheduler.Scheduler, "_local_zip", local_zip)
    run_id = uuid.uuid4()

    async def main():
        sched = scheduler.Scheduler(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1")
        sched.kills[run_id] = asyncio.Event()
        return await sched._run({"id": run_id, "task_id": 7})

    assert asyncio.run(main()).status == "success"
    assert [plan.at_once for plan in plans] == [3]
