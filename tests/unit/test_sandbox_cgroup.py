"""Where the launcher finds a memory cgroup for its sandboxes (shared/sandbox_launcher.py `locate_memory_cgroup`), read
from /proc/self/cgroup and mountinfo as the kernel writes them, with the cgroup files of a fake tree; how it reads an
OOM kill from either version's files; and which leftover cgroups a sweep takes for stale. Likewise (cgroup v1) the
pids hierarchy's cgroup (`locate_pids_cgroup`, `PidsCgroup`) and the refused forks it counts."""

from __future__ import annotations

import os
import subprocess
import sys

from shared import sandbox_launcher
from shared.sandbox_launcher import (
    CGROUP_LEAF,
    CGROUP_PREFIX,
    MemoryCgroup,
    PidsCgroup,
    locate_memory_cgroup,
    locate_pids_cgroup,
)


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def proc(tmp_path, cgroup: str, mounts: list[str]) -> tuple[str, str]:
    write(tmp_path / "cgroup", cgroup)
    write(tmp_path / "mountinfo", "".join(line + "\n" for line in mounts))
    return str(tmp_path / "cgroup"), str(tmp_path / "mountinfo")


def v2_tree(tmp_path, own: str, controllers: str, subtree: str) -> str:
    base = tmp_path / "unified" / own.strip("/")
    write(base / "cgroup.controllers", controllers)
    write(base / "cgroup.subtree_control", subtree)
    write(base / "cgroup.procs", "")
    return str(base)


def test_cgroup_v2_with_the_memory_controller_delegated(tmp_path):
    base = v2_tree(tmp_path, "/user.slice/railyard.service", "cpu memory pids", "memory pids")
    files = proc(tmp_path, "0::/user.slice/railyard.service\n",
                 [f"41 31 0:38 / {tmp_path}/unified rw,relatime - cgroup2 cgroup2 rw"])
    assert locate_memory_cgroup(*files) == (2, base)


def test_a_process_already_moved_into_the_leaf_uses_the_leafs_parent(tmp_path):
    base = v2_tree(tmp_path, "/railyard.service", "memory", "memory")
    files = proc(tmp_path, f"0::/railyard.service/{CGROUP_LEAF}\n",
                 [f"41 31 0:38 / {tmp_path}/unified rw - cgroup2 cgroup2 rw"])
    assert locate_memory_cgroup(*files) == (2, base)


def test_a_controller_that_cannot_be_enabled_is_the_reason_and_v1_is_used_instead(tmp_path):
    """This host's shape: an empty cgroup v2 (the memory controller bound to v1) beside a v1 memory hierarchy."""
    v2_tree(tmp_path, "/", "", "")
    memory = tmp_path / "memory" / "process_api" / "abc"
    memory.mkdir(parents=True)
    cgroup = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
    mounts = [f"35 31 0:32 / {tmp_path}/memory rw,relatime - cgroup cgroup rw,memory",
              f"41 31 0:38 / {tmp_path}/unified rw,relatime - cgroup2 cgroup2 rw"]
    assert locate_memory_cgroup(*proc(tmp_path, cgroup, mounts)) == (1, str(memory))
    memory.chmod(0o555)
    try:
        if os.geteuid() != 0:  # root writes anyway
            why = locate_memory_cgroup(*proc(tmp_path, cgroup, mounts))
            assert isinstance(why, str) and "not writable" in why and "memory controller is not available" in why
    finally:
        memory.chmod(0o755)


def test_a_mount_showing_part_of_the_hierarchy(tmp_path):
    """A container's cgroup mount whose root is the container's cgroup (mountinfo's fourth field)."""
    base = v2_tree(tmp_path, "/", "memory", "memory")
    files = proc(tmp_path, "0::/kubepods/pod1/c1\n",
                 [f"41 31 0:38 /kubepods/pod1/c1 {tmp_path}/unified rw - cgroup2 cgroup2 rw"])
    assert locate_memory_cgroup(*files) == (2, base)
    elsewhere = proc(tmp_path, "0::/other\n",
                     [f"41 31 0:38 /kubepods/pod1/c1 {tmp_path}/unified rw - cgroup2 cgroup2 rw"])
    assert isinstance(locate_memory_cgroup(*elsewhere), str)


def test_cgroup_v1_pids_hierarchy_beside_the_memory_one(tmp_path):
    """This host's shape: every controller in a v1 hierarchy of its own; the pids cgroup is found in the pids one,
    under this process's own cgroup there (which differs from its memory cgroup), and not where it is not writable
    or not mounted. cgroup v2 alone has no pids hierarchy (its memory cgroup carries pids.max)."""
    pids = tmp_path / "pids" / "services"
    pids.mkdir(parents=True)
    (tmp_path / "memory" / "process_api" / "abc").mkdir(parents=True)
    cgroup = "9:name=systemd:/\n8:pids:/services\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
    mounts = [f"35 31 0:32 / {tmp_path}/memory rw,relatime - cgroup cgroup rw,memory",
              f"39 31 0:36 / {tmp_path}/pids rw,relatime - cgroup cgroup rw,pids",
              f"41 31 0:38 / {tmp_path}/unified rw,relatime - cgroup2 cgroup2 rw"]
    assert locate_pids_cgroup(*proc(tmp_path, cgroup, mounts)) == (1, str(pids))
    assert locate_memory_cgroup(*proc(tmp_path, cgroup, mounts)) == (1, str(tmp_path / "memory" / "process_api" /
                                                                          "abc"))
    pids.chmod(0o555)
    try:
        if os.geteuid() != 0:  # root writes anyway
            why = locate_pids_cgroup(*proc(tmp_path, cgroup, mounts))
            assert isinstance(why, str) and "pids cgroup" in why and "not writable" in why
    finally:
        pids.chmod(0o755)
    unmounted = locate_pids_cgroup(*proc(tmp_path, cgroup, mounts[:1] + mounts[2:]))
    assert isinstance(unmounted, str) and "no cgroup v1 pids hierarchy" in unmounted
    v2_tree(tmp_path, "/railyard.service", "memory pids", "memory pids")
    v2_only = proc(tmp_path, "0::/railyard.service\n", [mounts[2]])
    assert isinstance(locate_pids_cgroup(*v2_only), str)
    assert locate_memory_cgroup(*v2_only)[0] == 2


def test_a_pids_cgroup_sets_pids_max_and_reads_the_refused_forks(tmp_path):
    """pids.max is the limit it is made with (a fake directory: the kernel's files are plain ones here); the refused
    forks are pids.events' "max" (v1 and v2 alike), 0 where the file is not there."""
    group = PidsCgroup(str(tmp_path / "railyard-sandbox-1-2-3"))
    group.create(18)
    assert (tmp_path / "railyard-sandbox-1-2-3" / "pids.max").read_text() == "18"
    assert group.refused_forks() == 0
    write(tmp_path / "railyard-sandbox-1-2-3" / "pids.events", "max 7\n")
    assert group.refused_forks() == 7
    write(tmp_path / "v2" / "pids.events", "max 3\n")
    write(tmp_path / "v2" / "pids.max", "66\n")
    memory = MemoryCgroup(2, str(tmp_path / "v2"))
    assert memory.refused_forks() == 3 and memory.limits_pids()
    assert not MemoryCgroup(1, str(tmp_path / "v1")).limits_pids()


def test_no_cgroup_at_all_is_a_reason(tmp_path):
    why = locate_memory_cgroup(*proc(tmp_path, "0::/\n", []))
    assert isinstance(why, str) and "no cgroup" in why


def test_oom_kills_are_read_from_either_versions_file(tmp_path):
    write(tmp_path / "v2" / "memory.events", "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 1\n")
    write(tmp_path / "v1" / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert MemoryCgroup(2, str(tmp_path / "v2")).oom_kills() == 2
    assert MemoryCgroup(1, str(tmp_path / "v1")).oom_kills() == 1
    assert MemoryCgroup(1, str(tmp_path / "missing")).oom_kills() == 0


def test_only_cgroups_named_by_an_owner_that_is_gone_are_stale():
    me = os.getpid()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    started = sandbox_launcher.process_start(me)
    assert sandbox_launcher.cgroup_owner_alive(f"{CGROUP_PREFIX}{me}-{started}-1")
    assert not sandbox_launcher.cgroup_owner_alive(f"{CGROUP_PREFIX}{me}-{started + 1}-1")  # the pid, reused
    assert not sandbox_launcher.cgroup_owner_alive(f"{CGROUP_PREFIX}{gone}-{started}-1")
    for odd in (f"{CGROUP_PREFIX}x-1-1", f"{CGROUP_PREFIX}{gone}", "something-else", CGROUP_LEAF):
        assert sandbox_launcher.cgroup_owner_alive(odd)  # never taken for stale


def test_processes_of_an_undelegated_cgroup_are_not_moved(tmp_path, monkeypatch):
    """A cgroup v2 holding processes refuses the memory controller for its children (EBUSY): its processes are
    moved into the leaf only where the cgroup was delegated to us (systemd's delegate attribute); in a login
    session's scope they are the user's shell and the rest of the session, so the reason is given instead."""
    import builtins
    import errno

    base = v2_tree(tmp_path, "/user.slice/session-3.scope", "memory pids", "")
    files = proc(tmp_path, "0::/user.slice/session-3.scope\n",
                 [f"41 31 0:38 / {tmp_path}/unified rw - cgroup2 cgroup2 rw"])
    real_open = builtins.open
    busy = {"on": True}

    def kernel_open(path, mode="r", *args, **kwargs):  # the kernel's answer while the cgroup holds processes
        if busy["on"] and str(path).endswith("cgroup.subtree_control") and "w" in mode:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", kernel_open)
    why = locate_memory_cgroup(*files)
    assert isinstance(why, str) and "not delegated" in why and "Delegate=yes" in why
    assert not os.path.exists(os.path.join(base, CGROUP_LEAF))  # nothing moved

    monkeypatch.setattr(sandbox_launcher, "_delegated", lambda path: path == base)
    moves = []

    def delegated_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(f"{CGROUP_LEAF}/cgroup.procs") and "w" in mode:
            moves.append(path)
            busy["on"] = False  # the cgroup is empty once its processes are in the leaf
        return kernel_open(path, mode, *args, **kwargs)

    write(tmp_path / "unified" / "user.slice" / "session-3.scope" / "cgroup.procs", "4242\n")
    monkeypatch.setattr(builtins, "open", delegated_open)
    assert locate_memory_cgroup(*files) == (2, base)
    assert moves


def test_no_pids_cgroup_is_said_once_and_not_where_a_v2_memory_cgroup_has_pids(tmp_path, monkeypatch, caplog):
    """Without a v1 pids hierarchy and without the pids controller in a v2 memory cgroup, a process's sandboxes are
    bounded by RLIMIT_NPROC alone: said once a process with the host's other gaps (check_available runs at every
    spawn), not at every start."""
    from shared import sandbox

    monkeypatch.setattr(sandbox, "pids_cgroup", lambda: (None, "no cgroup v1 pids hierarchy is mounted"))
    monkeypatch.setattr(sandbox, "memory_cgroup", lambda: ((1, str(tmp_path)), None))
    sandbox._warn_host_gaps.cache_clear()
    try:
        for _ in range(3):
            sandbox._warn_host_gaps()
        said = [record.getMessage() for record in caplog.records if "no pids cgroup" in record.getMessage()]
        assert len(said) == 1 and "RLIMIT_NPROC alone" in said[0] and "no cgroup v1 pids hierarchy" in said[0]
        caplog.clear()
        write(tmp_path / "cgroup.subtree_control", "memory pids")
        monkeypatch.setattr(sandbox, "memory_cgroup", lambda: ((2, str(tmp_path)), None))
        sandbox._warn_host_gaps.cache_clear()
        sandbox._warn_host_gaps()
        assert not [record for record in caplog.records if "no pids cgroup" in record.getMessage()]
    finally:
        sandbox._warn_host_gaps.cache_clear()


def test_an_oom_event_cuts_the_launchers_wait_short(monkeypatch):
    """(cgroup v1) The launcher waits for its child and for the memory cgroup's OOM eventfd at once: an event ends
    the wait (well before its 30 s) and is drained, so the OOM kill is acted on without waiting for the next
    measurement; a quiet wait and the child's end read as before."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    exited, event = os.pidfd_open(child.pid), os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    waits: list[tuple[list, float, list]] = []  # each select: what it watched, its timeout, what ended it
    select = sandbox_launcher.select.select

    def recorded(readable, writable, errors, timeout):
        ready = select(readable, writable, errors, timeout)
        waits.append((list(readable), timeout, list(ready[0])))
        return ready

    monkeypatch.setattr(sandbox_launcher.select, "select", recorded)
    try:
        os.eventfd_write(event, 1)
        assert sandbox_launcher.ended(exited, child.pid, 30.0, event) == (False, True)
        # the one wait watched the event beside the child and was ended by it, not by its 30 s running out (what
        # ended the wait, not its wall time under 10 s, which a loaded machine could miss)
        assert waits == [([exited, event], 30.0, [event])], waits
        assert sandbox_launcher.ended(exited, child.pid, 0.01, event) == (False, False)  # drained
        assert sandbox_launcher.ended(None, child.pid, 0.01, None) == (False, False)  # no pidfd: waitid
        child.kill()
        assert sandbox_launcher.ended(exited, child.pid, 30.0, event) == (True, False)
    finally:
        child.kill()
        child.wait()
        os.close(exited)
        os.close(event)
