"""The sweep a process that starts no sandbox itself runs (the deployer, at its start and after an undeploy:
shared/sandbox.py `sweep_unused_cgroups`): the sandbox cgroups whose owner is gone and that hold no process go (an
engine replica killed with SIGKILL: its launchers and code died with it, its own removal never ran); one still holding
a process is left, and nothing is killed; where they are is found without changing anything
(`sandbox_cgroup_parents`). Before session 32 they stayed until some process's first sandbox in the same cgroup.
Fake cgroup folders, and where this machine lets the test write cgroups (root, a writable cgroup v1/v2), real ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared import sandbox, sandbox_launcher
from shared.sandbox_launcher import CGROUP_LEAF, CGROUP_PREFIX, sandbox_cgroup_parents, sweep_unused_cgroups
from tests.unit.test_sandbox_cgroup import proc, v2_tree, write


def _gone_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_only_an_empty_cgroup_whose_owner_is_gone_goes_and_nothing_is_killed(tmp_path, monkeypatch):
    me, gone = os.getpid(), _gone_pid()
    started = sandbox_launcher.process_start(me)
    stale, busy = f"{CGROUP_PREFIX}{gone}-12345-1", f"{CGROUP_PREFIX}{gone}-12345-2"
    mine, other = f"{CGROUP_PREFIX}{me}-{started}-3", "railyard-services"
    for name in (stale, mine, other):
        (tmp_path / name).mkdir()
    write(tmp_path / busy / "cgroup.procs", f"{me}\n")  # a process is in it
    killed: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(pid))
    assert sweep_unused_cgroups(1, str(tmp_path)) == [stale]
    assert {path.name for path in tmp_path.iterdir()} == {busy, mine, other} and killed == []
    assert sweep_unused_cgroups(1, str(tmp_path / "missing")) == []


def test_where_the_sandboxes_cgroups_are_is_found_without_changing_anything(tmp_path):
    """cgroup v2: the service's cgroup, or its parent once the service moved into CGROUP_LEAF; its subtree_control
    is left as it is (locate_memory_cgroup would enable the memory controller). cgroup v1: the service's memory and
    pids cgroups. A parent that is not there is left out."""
    base = v2_tree(tmp_path, "/railyard.service", "memory pids", "")
    files = proc(tmp_path, f"0::/railyard.service/{CGROUP_LEAF}\n",
                 [f"41 31 0:38 / {tmp_path}/unified rw - cgroup2 cgroup2 rw"])
    assert sandbox_cgroup_parents(*files) == [(2, base)]
    assert open(os.path.join(base, "cgroup.subtree_control")).read() == ""
    (tmp_path / "memory" / "process_api" / "abc").mkdir(parents=True)
    (tmp_path / "pids" / "services").mkdir(parents=True)
    v1 = proc(tmp_path, "8:pids:/services\n4:memory:/process_api/abc\n0::/gone\n",
              [f"35 31 0:32 / {tmp_path}/memory rw - cgroup cgroup rw,memory",
               f"39 31 0:36 / {tmp_path}/pids rw - cgroup cgroup rw,pids",
               f"41 31 0:38 / {tmp_path}/unified rw - cgroup2 cgroup2 rw"])
    assert sandbox_cgroup_parents(*v1) == [(1, str(tmp_path / "memory" / "process_api" / "abc")),
                                           (1, str(tmp_path / "pids" / "services"))]
    assert sandbox_cgroup_parents(str(tmp_path / "none"), str(tmp_path / "none")) == []


def _writable_parent() -> tuple[int, str] | None:
    located = sandbox_launcher.locate_memory_cgroup()
    if isinstance(located, str):
        return None
    probe = sandbox_launcher.MemoryCgroup(located[0], os.path.join(located[1], f"{CGROUP_PREFIX}probe-{os.getpid()}"))
    try:
        probe.create(64 << 20)
    except OSError:
        return None
    probe.remove(timeout=1.0)
    return located


def test_real_cgroups_a_replica_killed_left_go_and_one_in_use_stays():
    """A stale memory cgroup with nothing in it (a SIGKILLed replica's sandbox, its processes dead) is removed by
    sandbox.sweep_unused_cgroups; a stale one a process is still in stays, the process alive."""
    located = _writable_parent()
    if located is None:
        pytest.skip("no writable memory cgroup on this machine (not root, no delegated cgroup)")
    version, parent = located
    gone = _gone_pid()
    empty = sandbox_launcher.MemoryCgroup(version, os.path.join(parent, f"{CGROUP_PREFIX}{gone}-12345-1"))
    busy = sandbox_launcher.MemoryCgroup(version, os.path.join(parent, f"{CGROUP_PREFIX}{gone}-12345-2"))
    sleeper = None
    try:
        empty.create(64 << 20)
        busy.create(64 << 20)
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.path.join(busy.path, "cgroup.procs"), "w") as handle:
            handle.write(str(sleeper.pid))
        assert sandbox.sweep_unused_cgroups() >= 1
        assert not os.path.exists(empty.path) and os.path.exists(busy.path)
        assert sleeper.poll() is None  # not killed
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        for group in (empty, busy):
            group.remove(timeout=2.0)
