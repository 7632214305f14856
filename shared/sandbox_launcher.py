"""The process that builds one sandbox; started by shared/sandbox.py with `python -I -S`, which imports it and runs
`main` (`_launcher_argv`: from its bytecode cache); `python -I -S sandbox_launcher.py` runs it too.

Standard library only (it runs before any site-packages are trusted) and configured by one JSON document in
the RAILYARD_SANDBOX_LAUNCH variable, the only variable it is given. What it does, as bubblewrap does it:

1. (not root) a new user namespace mapping the caller's own uid/gid onto themselves, which gives this process
   the capabilities to build the rest inside it; (root) no user namespace: it drops to the dedicated sandbox
   uid at the end instead;
2. new mount, pid, network, IPC and UTS namespaces; then it forks: the child is pid 1 of the new pid namespace
   and dies with this process (PDEATHSIG), and every process of the namespace dies with it; the target it forks
   to run the code has a PDEATHSIG of its own (without a pid namespace, `off`, nothing else would end it), so a
   service killed with SIGKILL takes its sandboxes' code with it (this process has a PDEATHSIG too);
3. the child builds a new root on a tmpfs: the system directories (/usr, /etc, /lib...), the Python
   installation, the virtualenv and the code are bound read-only at their own paths, the stack's data directory
   is an empty tmpfs, the working directory alone is bound writable, /proc is a fresh procfs of the new pid
   namespace (no other process of the host is visible), /dev holds null/zero/full/random/urandom only, /tmp and
   /dev/shm are small tmpfs; then it pivots into that root and detaches the old one;
4. it sets no_new_privs, sets user.max_user_namespaces to 0 in the sandbox's user namespace (no namespace can be
   nested inside: `forbid_user_namespaces`) and the resource limits, drops to the sandbox uid (root) -- a
   non-zero uid executing a program loses every capability -- installs a seccomp filter refusing io_uring and
   fallocate (`refuse_io_uring_and_fallocate`, for the disk quota) and executes the target with exactly the
   environment it was given.

Before 1. (config "cgroup") it makes the sandbox's memory cgroup (`MemoryCgroup`), and on cgroup v1 (config
"pids_cgroup") its cgroup in the pids hierarchy too (`PidsCgroup`: v1 keeps each controller in a hierarchy of its
own); after forking the child it puts the child into them; the child forks nothing before that, so every process of
the sandbox is charged to them. An OOM kill there ends the whole sandbox, and the verdict "memory" goes out of band
as the quota's does (below); a sandbox that failed after its pids limit refused it a process or thread gets the
verdict "processes". The cgroups are removed once the sandbox has ended (the caller removes them when this process
was killed with SIGKILL).

This process waits for the child and exits with its status (a signal death is re-raised on itself, so the
caller sees the same negative returncode). SIGTERM to it kills the whole sandbox.

While it waits, it holds the sandbox to its disk quota (config "quota"): every QUOTA_INTERVAL it measures what the
working directory holds (allocated bytes and inodes, through directory descriptors, never following a link) plus the
files the sandbox's processes hold open or mapped after deleting them, and when the growth since the start passes
the quota (or the sandbox has kept descriptors in flight on its unix sockets, where no /proc file shows what they
are, for the quota's grace: `Flight`) it kills the whole sandbox, says why on stderr (QUOTA_MARKS, for the logs) and
exits QUOTA_EXIT. The verdict itself goes out of band: the limit's name is written on the descriptor config
"verdict_fd" (a pipe the caller reads), which is closed in the child before anything of the sandbox runs. The exit
status and stderr are the tenant's to choose (it can exit 122 and print the mark), so the caller believes neither. A
setup failure goes the same way: `fail` (status 125, "railyard-sandbox: ..." on stderr, both of which the tenant can
fake) also writes "setup_failed" on the verdict pipe in this process, and in the child on a close-on-exec pipe to
this process (closed before the target runs), which this process turns into that verdict once the child has ended.
The working directory stays on the host's disk, so what the code wrote is there for the caller afterwards; the price
is an overshoot of what the code can write within one interval (docs/security.md, "Disk quota").
"""

from __future__ import annotations

import collections
import ctypes
import errno
import json
import math
import os
import platform
import random
import resource
import select
import signal
import stat
import sys
import tempfile
import time

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# statvfs flags a bind remount must keep (the kernel refuses to clear locked ones in a user namespace)
KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
              (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
QUOTA_EXIT = 122  # this process's exit status when it stopped the sandbox for its disk quota
QUOTA_MARKS = {"disk_bytes": "railyard-sandbox: disk quota exceeded",
               "disk_files": "railyard-sandbox: file quota exceeded",
               "fds_in_flight": "railyard-sandbox: descriptors kept in flight"}
QUOTA_INTERVAL = 0.25  # seconds between two measurements (longer when measuring takes long: at most 20 % busy)
QUOTA_INTERVAL_MIN = 0.02  # shortest, while the directory grows fast towards its quota
MAX_DEPTH = 200  # deeper directories count as over the file quota (each level holds a descriptor while measured)
# Descriptors in flight on a unix socket (sent with SCM_RIGHTS, not yet received) are in no process's fd table: a
# deleted file whose only reference is one of them would escape the quota (docs/security.md, "Disk quota"). A
# sandbox is stopped, INFLIGHT_GRACE seconds or more since it was first seen with some and with some now, once it
# had some at every measurement of the last INFLIGHT_GRACE seconds (INFLIGHT_ALL at least), or once the evidence
# of its measurements reaches INFLIGHT_EVIDENCE: a CUSUM of the log-likelihood ratio between "seen at 60 % of
# measurements" (a tenant moving its files between sockets and fd tables: the processes are read one after another,
# so some measurements miss them) and "at 30 %" (code that passes descriptors and receives them at once: 6-28 % of
# measurements here, at random moments). Until 2026-12-02 the rule was "at half the measurements of the last grace",
# and code seen at 28 % crossed half of some 3-second window within about 25 s (simulated, median of 10), at 15-20 %
# within a minute when the walk spaced the measurements: a long-lived worker passing descriptors was stopped sooner
# or later. The CUSUM stops one always in flight at the grace (the first rule), one at 63 % after ~6 s of 0.1 s
# probes, and one at 28 % not in 4 simulated hours (10 of 10). Meanwhile it is measured at least every INFLIGHT_PROBE.
INFLIGHT_GRACE = 3.0
INFLIGHT_SAMPLES = 8
INFLIGHT_ALL = 16  # "at every measurement" needs this many (8 of 8 at 28 % came once in ~26,000: hours of probes)
INFLIGHT_UP = math.log(0.6 / 0.3)  # the evidence a measurement with descriptors in flight adds
INFLIGHT_DOWN = math.log(0.7 / 0.4)  # and one without takes away (never below 0)
INFLIGHT_EVIDENCE = 14.0
INFLIGHT_PROBE = 0.1
IO_URING_SETUP = 425  # the same number on x86_64, i386, x32 (with its 0x40000000 bit), aarch64 and arm

libc = ctypes.CDLL(None, use_errno=True)


SETUP_FAILED = b"setup_failed"  # the verdict of a sandbox that could not be built (shared/sandbox.py)
MEMORY_VERDICT = b"memory"  # the verdict of a sandbox the OOM killer acted in (its memory cgroup's limit)
MEMORY_MARK = "railyard-sandbox: memory limit exceeded"
PROCESSES_VERDICT = b"processes"  # the verdict of a sandbox that failed after its pids limit refused a fork
PROCESSES_MARK = "railyard-sandbox: process limit reached"
# RLIMIT_NPROC above a cgroup's pids.max, which then binds first: the rlimit also counts the launcher (in a normal
# user's sandbox it is in the sandbox's user namespace), the cgroup does not
NPROC_BACKSTOP = 8
# exit codes that are no failure after a refused fork: 0, and the signals of the CPU time and file size limits
OTHER_LIMITS = frozenset({0, 128 + signal.SIGXCPU, 128 + signal.SIGXFSZ})
REPORT_FD: int | None = None  # where `fail` reports out of band: the verdict pipe in this process, the setup pipe
# (to this process) in the child until the target's execve closes it; None where nobody listens


CGROUP_PREFIX = "railyard-sandbox-"  # a sandbox's memory cgroup: railyard-sandbox-<owner pid>-<its start>-<n>
CGROUP_LEAF = "railyard-services"  # (v2) where the services' processes move so that their cgroup may have children
# with controllers (the "no internal processes" rule), as nsjail moves itself into NSJAIL_SELF.<pid>
CGROUP: MemoryCgroup | None = None  # this launcher's sandbox cgroup, removed by `fail` too (in this process only)
PIDS_CGROUP: PidsCgroup | None = None  # (cgroup v1) its cgroup in the pids hierarchy, likewise
OOM_EVENTS: int | None = None  # (cgroup v1) an eventfd the kernel signals at an OOM in the memory cgroup


class Cgroup:
    """One sandbox's cgroup directory: what is common to its memory cgroup and (v1) its pids cgroup."""

    def __init__(self, version: int, path: str) -> None:
        self.version = version
        self.path = path

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as handle:
            handle.write(value)

    def _has(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, name))

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as handle:
                return [int(line) for line in handle if line.strip()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """SIGKILL every process in it: cgroup.kill (v2, Linux 5.14), otherwise a walk of cgroup.procs."""
        if self.version == 2 and self._has("cgroup.kill"):
            try:
                self._write("cgroup.kill", "1")
                return
            except OSError:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill what is left in it and remove it; whether it is gone (it may take the killed a moment to exit)."""
        deadline, pause = time.monotonic() + timeout, 0.002
        while True:
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return False
            self.kill()
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def refused_forks(self) -> int:
        """How many forks and new threads its pids.max refused (pids.events "max"; 0 when it cannot be read)."""
        try:
            with open(os.path.join(self.path, "pids.events")) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "max":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0


class MemoryCgroup(Cgroup):
    """One sandbox's memory cgroup: every process of the sandbox, the page cache it fills and the tmpfs and memfd
    pages it writes are charged to it, so `memory_bytes` bounds the sandbox as a whole (RLIMIT_AS bounds one
    process's address space and no memfd written with write()). Version 2: memory.max, memory.swap.max 0,
    memory.oom.group 1 (an OOM kill takes every process of it), pids.max; version 1: memory.limit_in_bytes and
    memory.memsw.limit_in_bytes (no swap beyond it) where the kernel accounts swap, swappiness 0 otherwise, and the
    launcher kills the whole sandbox once memory.oom_control counts an OOM kill (v1 has no group kill); v1 keeps
    pids.max in a hierarchy of its own (`PidsCgroup`)."""

    def create(self, memory_bytes: int, processes: int | None = None) -> None:
        """Make the cgroup and set its limits (OSError when it cannot; what was made is removed)."""
        os.mkdir(self.path, 0o755)
        try:
            if self.version == 2:
                self._write("memory.max", str(memory_bytes))
                if self._has("memory.swap.max"):
                    self._write("memory.swap.max", "0")
                self._write("memory.oom.group", "1")
                if processes is not None and self._has("pids.max"):
                    self._write("pids.max", str(processes))
            else:
                self._write("memory.limit_in_bytes", str(memory_bytes))
                if self._has("memory.memsw.limit_in_bytes"):  # memory and swap together: no swap past the limit
                    self._write("memory.memsw.limit_in_bytes", str(memory_bytes))
                else:  # no swap accounting (swapaccount=0): at least reclaim in the cgroup does not swap
                    self._write("memory.swappiness", "0")
                self._write("memory.oom_control", "0")  # the OOM killer enabled (not paused at the limit)
        except OSError:
            self.remove(timeout=0.5)
            raise

    def limits_pids(self) -> bool:
        """Whether it carries the sandbox's pids.max too (v2 with the pids controller)."""
        return self.version == 2 and self._has("pids.max")

    def oom_eventfd(self) -> int | None:
        """(v1) An eventfd the kernel signals at every OOM in the cgroup (registered on memory.oom_control through
        cgroup.event_control), so that the launcher kills the rest of the sandbox at once rather than at its next
        measurement (up to QUOTA_INTERVAL later); None where none can be had (v2 kills the group itself)."""
        if self.version != 1 or not hasattr(os, "eventfd"):
            return None
        try:
            event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            return None
        try:
            control = os.open(os.path.join(self.path, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                self._write("cgroup.event_control", f"{event} {control}")
            finally:
                os.close(control)  # the registration holds the cgroup, not this descriptor
        except OSError:
            os.close(event)
            return None
        return event

    def oom_kills(self) -> int:
        """How many of its processes the OOM killer killed (0 when that cannot be read)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name)) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0


class PidsCgroup(Cgroup):
    """(cgroup v1) One sandbox's cgroup in the pids hierarchy: pids.max bounds the tasks (processes and threads) of
    the sandbox as a whole, counted by the kernel whatever their uid or user namespace; past it a fork or a new
    thread fails with EAGAIN inside the sandbox. On v2 the memory cgroup carries pids.max itself."""

    def __init__(self, path: str) -> None:
        super().__init__(1, path)

    def create(self, processes: int) -> None:
        """Make the cgroup and set pids.max (OSError when it cannot; what was made is removed)."""
        os.mkdir(self.path, 0o755)
        try:
            self._write("pids.max", str(processes))
        except OSError:
            self.remove(timeout=0.5)
            raise


def remove_cgroups() -> None:
    """Remove this launcher's sandbox cgroups (both hierarchies on v1), killing what is left in them."""
    for group in (CGROUP, PIDS_CGROUP):
        if group is not None:
            group.remove()


def cgroup_owner_alive(name: str) -> bool:
    """Whether the process that named a sandbox cgroup `name` (CGROUP_PREFIX<pid>-<start time>-...) still runs;
    a name of another shape is never taken for a stale one."""
    parts = name[len(CGROUP_PREFIX):].split("-")
    if not name.startswith(CGROUP_PREFIX) or len(parts) < 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        return True
    return process_start(int(parts[0])) == int(parts[1])


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _ownerless_cgroups(parent: str) -> list[str]:
    """The names of the sandbox cgroups in `parent` whose owner is gone (cgroup_owner_alive); none when `parent`
    cannot be listed. Both sweeps' listing."""
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return [name for name in names if name.startswith(CGROUP_PREFIX) and not cgroup_owner_alive(name)]


def sweep_stale_cgroups(version: int, parent: str) -> list[str]:
    """Remove the sandbox cgroups in `parent` whose owner is gone (a service that crashed, or whose launcher was
    killed while no one was left to clean up), killing what is left in them; the names removed."""
    return [name for name in _ownerless_cgroups(parent)
            if MemoryCgroup(version, os.path.join(parent, name)).remove(timeout=2.0)]


def sweep_unused_cgroups(version: int, parent: str) -> list[str]:
    """Remove the sandbox cgroups in `parent` whose owner is gone and that no process is in (its launcher and code
    died with it: a service killed with SIGKILL, whose own removal never ran); the names removed. Kills nothing: a
    stale cgroup still holding a process is left for `sweep_stale_cgroups` (a process's first sandbox), and one a
    process entered meanwhile the kernel refuses to remove (EBUSY). For a process that starts no sandbox of its own
    (the deployer, whose replicas' cgroups these are)."""
    removed = []
    for name in _ownerless_cgroups(parent):
        group = Cgroup(version, os.path.join(parent, name))
        if group.pids():
            continue
        try:
            os.rmdir(group.path)
        except OSError:  # gone meanwhile (its owner's own removal), or busy
            continue
        removed.append(name)
    return removed


def sandbox_cgroup_parents(cgroup_file: str = "/proc/self/cgroup",
                           mountinfo: str = "/proc/self/mountinfo") -> list[tuple[int, str]]:
    """Where this process's children make their sandboxes' cgroups ((version, parent directory): the memory
    cgroup's, and on v1 the pids hierarchy's), found as `locate_memory_cgroup` and `locate_pids_cgroup` find them
    but changing nothing (on v2 those enable the memory controller and move processes into CGROUP_LEAF). A process
    whose children (engine replicas) run in its own cgroup finds theirs."""
    read = _read_cgroups(cgroup_file, mountinfo)
    if isinstance(read, str):
        return []
    lines, mounts = read
    found: list[tuple[int, str]] = []
    v2_path = next((path for hierarchy, controllers, path in lines if hierarchy == "0" and not controllers), None)
    for fields in mounts:
        if "-" in fields and fields[fields.index("-") + 1] == "cgroup2" and v2_path is not None:
            own = _under_mount(fields[4], fields[3], v2_path)
            if own is not None:
                found.append((2, os.path.dirname(own) if os.path.basename(own) == CGROUP_LEAF else own))
    for controller in ("memory", "pids"):
        v1 = _v1_cgroup(controller, lines, mounts)
        if isinstance(v1, tuple):
            found.append(v1)
    return [(version, parent) for version, parent in dict.fromkeys(found) if os.path.isdir(parent)]


def locate_memory_cgroup(cgroup_file: str = "/proc/self/cgroup",
                         mountinfo: str = "/proc/self/mountinfo") -> tuple[int, str] | str:
    """Where this process may create sandbox memory cgroups: (2, dir) under its cgroup v2 cgroup when the memory
    controller is available there, else (1, dir) under its cgroup v1 memory cgroup; or why neither is usable. v2
    needs the memory controller enabled in the cgroup's subtree_control, which the kernel refuses while the cgroup
    holds processes: then they are moved into its child CGROUP_LEAF first (as nsjail moves itself, and Docker's
    dind entrypoint moves every process). Writing needs root or a delegated subtree (systemd Delegate=yes)."""
    read = _read_cgroups(cgroup_file, mountinfo)
    if isinstance(read, str):
        return read
    lines, mounts = read
    v2_path = next((path for hierarchy, controllers, path in lines if hierarchy == "0" and not controllers), None)
    why = []
    for fields in mounts:
        if "-" not in fields:
            continue
        fstype, root, point = fields[fields.index("-") + 1], fields[3], fields[4]
        if fstype == "cgroup2" and v2_path is not None:
            found = _under_mount(point, root, v2_path)
            if found is not None:
                usable = _v2_parent(found)
                if isinstance(usable, str):
                    why.append(usable)
                else:
                    return usable
    found = _v1_cgroup("memory", lines, mounts)
    if isinstance(found, tuple):
        return found
    why += [found] if found else []
    return "; ".join(why) or "no cgroup v2 with the memory controller and no cgroup v1 memory hierarchy is mounted"


def locate_pids_cgroup(cgroup_file: str = "/proc/self/cgroup",
                       mountinfo: str = "/proc/self/mountinfo") -> tuple[int, str] | str:
    """(cgroup v1) Where this process may create sandbox pids cgroups: (1, dir) under its cgroup in the v1 pids
    hierarchy, or why not. On v2 (where the pids controller is not bound to a v1 hierarchy) the memory cgroup
    carries pids.max and this answers why not too."""
    read = _read_cgroups(cgroup_file, mountinfo)
    if isinstance(read, str):
        return read
    return _v1_cgroup("pids", *read) or "no cgroup v1 pids hierarchy is mounted"


def _read_cgroups(cgroup_file: str, mountinfo: str) -> tuple[list[list[str]], list[list[str]]] | str:
    """This process's cgroups (hierarchy, controllers, path) and the mounts; or why they could not be read."""
    try:
        with open(cgroup_file) as handle:
            lines = [line.rstrip("\n").split(":", 2) for line in handle if line.count(":") >= 2]
        with open(mountinfo) as handle:
            mounts = [line.split() for line in handle]
    except OSError as exc:
        return f"{cgroup_file} or {mountinfo} could not be read ({exc.strerror})"
    return lines, mounts


def _v1_cgroup(controller: str, lines: list[list[str]], mounts: list[list[str]]) -> tuple[int, str] | str:
    """(1, dir) of this process's cgroup in the v1 hierarchy of `controller` when it is writable, else why not
    ("" when no such hierarchy is mounted)."""
    own = next((path for hierarchy, controllers, path in lines
                if hierarchy != "0" and controller in controllers.split(",")), None)
    why = ""
    for fields in mounts:
        if "-" not in fields or own is None:
            continue
        fstype, options = fields[fields.index("-") + 1], fields[-1].split(",")
        root, point = fields[3], fields[4]
        if fstype == "cgroup" and controller in options:
            found = _under_mount(point, root, own)
            if found is None:
                continue
            if not os.access(found, os.W_OK):
                why = f"the cgroup v1 {controller} cgroup {found} is not writable"
                continue
            return 1, found
    return why


def _under_mount(point: str, root: str, path: str) -> str | None:
    """The directory of cgroup `path` under a cgroup mount at `point` showing the hierarchy from `root`."""
    point = point.replace("\\040", " ")
    if root == "/":
        return os.path.normpath(point + path)
    if path == root or path.startswith(root.rstrip("/") + "/"):
        return os.path.normpath(point + path[len(root.rstrip("/")):])
    return None


def _delegated(path: str) -> bool:
    """Was cgroup `path` delegated (systemd >= 251 marks a Delegate=yes unit's cgroup with a `trusted.delegate`
    extended attribute, or `user.delegate` for a user manager's)? Only then are its processes moved into
    CGROUP_LEAF: in any other cgroup (an SSH or desktop session's scope, a container's root) they may be the shell
    and everything else of the session, which a sandbox has no business moving."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name).strip() == b"1":
                return True
        except OSError:
            continue
    return False


def _v2_parent(own: str) -> tuple[int, str] | str:
    base = os.path.dirname(own) if os.path.basename(own) == CGROUP_LEAF else own

    def read(name: str) -> list[str]:
        with open(os.path.join(base, name)) as handle:
            return handle.read().split()

    try:
        if "memory" not in read("cgroup.controllers"):
            return f"the memory controller is not available in the cgroup v2 cgroup {base} (not delegated)"
        if "memory" not in read("cgroup.subtree_control"):
            wanted = "+memory +pids" if "pids" in read("cgroup.controllers") else "+memory"
            try:
                with open(os.path.join(base, "cgroup.subtree_control"), "w") as handle:
                    handle.write(wanted)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                if not _delegated(base):  # other programs' processes may live there (a login session's scope)
                    return (f"the cgroup v2 cgroup {base} holds processes and was not delegated to Railyard (no "
                            "user.delegate/trusted.delegate attribute), so its children cannot have the memory "
                            "controller and its processes are not Railyard's to move: run Railyard in a cgroup of its "
                            "own with Delegate=yes (a systemd unit, or `systemd-run --scope -p Delegate=yes`)")
                leaf = os.path.join(base, CGROUP_LEAF)
                os.makedirs(leaf, exist_ok=True)
                for pid in read("cgroup.procs"):
                    try:
                        with open(os.path.join(leaf, "cgroup.procs"), "w") as handle:
                            handle.write(pid)
                    except OSError:
                        pass  # gone meanwhile, or not ours to move: the write below then says so
                with open(os.path.join(base, "cgroup.subtree_control"), "w") as handle:
                    handle.write(wanted)
    except OSError as exc:
        return f"the cgroup v2 cgroup {base} cannot have children with the memory controller ({exc.strerror})"
    if not os.access(base, os.W_OK):
        return f"the cgroup v2 cgroup {base} is not writable"
    return 2, base


def fail(message: str) -> None:
    """Setup failed: say so on stderr, report it on REPORT_FD and exit 125. Only that report makes the caller call
    it a sandbox failure: the status and stderr are the tenant's to choose too (it can exit 125 and print this)."""
    os.write(2, f"railyard-sandbox: {message}\n".encode())
    remove_cgroups()  # only the launcher holds them: the child forgets them at once
    if REPORT_FD is not None:
        try:
            os.write(REPORT_FD, SETUP_FAILED)
        except OSError:
            pass
    os._exit(125)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        fail(f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), ctypes.c_ulong(flags),
                     data and data.encode()), f"mount {target}")


def write_file(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def enter_namespaces(config: dict) -> None:
    uid, gid = os.getuid(), os.getgid()
    if config["mechanism"] == "userns":
        check(libc.unshare(CLONE_NEWUSER), "unshare(user)")
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", f"{uid} {uid} 1\n")
        write_file("/proc/self/gid_map", f"{gid} {gid} 1\n")
    check(libc.unshare(CLONE_NEWPID), "unshare(pid)")  # the next child is pid 1 of a new pid namespace


def make_mountpoint(path: str, like: str) -> None:
    if os.path.isdir(like):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def bind(source: str, target: str, writable: bool, device: bool = False) -> None:
    make_mountpoint(target, source)
    mount(source, target, None, MS_BIND | MS_REC)
    kept = os.statvfs(source).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if device else MS_NODEV) | (0 if writable else MS_RDONLY)
    flags |= sum(ms for st, ms in KEPT_FLAGS if kept & st)
    mount(None, target, None, flags)


def build_root(config: dict, root: str) -> None:
    """The new root's tree (see the module docstring)."""
    # its own mount namespace (the launcher's root must stay where it is), network, IPC and hostname
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare(mount, net, ipc, uts)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    scratch = f"mode=1777,size={config['tmp_bytes']}"
    entries = [(p, "system") for p in SYSTEM_PATHS if os.path.lexists(p)]
    entries += [(p, "readonly") for p in config["readonly"]]
    entries += [(p, "hide") for p in config["hidden"]] + [("/tmp", "scratch")]
    entries.append((config["workdir"], "writable"))
    # parents before children; at one path a tmpfs goes before what is bound inside it
    order = {"system": 0, "readonly": 0, "hide": 1, "scratch": 1, "writable": 2}
    entries.sort(key=lambda e: (e[0].rstrip("/").count("/"), order[e[1]]))
    for path, kind in entries:
        target = root + path
        if kind == "system" and os.path.islink(path):
            if not os.path.lexists(target):
                os.symlink(os.readlink(path), target)
        elif kind == "hide":
            if os.path.isdir(target):
                mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        elif kind == "scratch":
            os.makedirs(target, exist_ok=True)
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, scratch)
        elif os.path.exists(path):
            bind(path, target, writable=kind == "writable")
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/dev", exist_ok=True)
    mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for device in DEVICES:
        bind(f"/dev/{device}", f"{root}/dev/{device}", writable=True, device=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/dev/shm")
    mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, scratch)
    mount(None, root + "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        fail(f"pivot_root is not known on {platform.machine()}")
    check(libc.syscall(number, b".", b"."), "pivot_root")  # the old root now sits under the new one...
    check(libc.umount2(b".", MNT_DETACH), "detach the old root")  # ...and is detached from this namespace
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring the new network namespace's loopback up (it starts down)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(probe, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def gateway_forwarder(config: dict) -> None:
    """Network.GATEWAY_ONLY: a process of the sandbox listens on 127.0.0.1:<gateway port> and relays every
    connection to the unix socket the caller serves (shared/sandbox.py relays that to the gateway alone). The
    namespace has no other interface, so the gateway is all the code can reach."""
    import socket

    gateway = config["gateway"]
    loopback_up()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(gateway["port"])))  # before dropping privileges: the port may be < 1024
    listener.listen(64)
    if os.fork() != 0:
        listener.close()
        return
    global REPORT_FD
    if REPORT_FD is not None:  # a side process: its own failure is no setup failure, and it runs beside the code
        os.close(REPORT_FD)
        REPORT_FD = None
    try:  # the forwarder: unprivileged like the code it serves; it dies with the namespace's pid 1
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        if config["mechanism"] == "root":
            os.setgroups([])
            os.setresgid(config["gid"], config["gid"], config["gid"])
            os.setresuid(config["uid"], config["uid"], config["uid"])

        relay_connections(listener, gateway["socket"])
    finally:
        os._exit(0)


CONNECT_WAIT = 5.0  # how long a connection waits for room in the host socket's full backlog, as a blocking connect
CONNECT_RETRY = 0.005  # how often its connect is asked again meanwhile


def connect_unix(path: str):
    """A connected, non-blocking unix stream socket to `path`; None when the connect is refused (no socket there,
    out of descriptors); False when the socket's backlog is full. A non-blocking unix connect does not wait for
    room in a full backlog (EAGAIN, which a socket timeout does not wait out either) and cannot be polled for it:
    the caller asks again later (`relay_connections` does, between its other connections' work)."""
    import socket

    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    sock.setblocking(False)
    try:
        sock.connect(path)
        return sock
    except BlockingIOError:
        sock.close()
        return False
    except OSError:
        sock.close()
        return None


class _Direction:
    """One direction of a relayed connection: bytes read from `source` not yet written to `target` (at most one
    read's worth: nothing more is read until they are written)."""

    __slots__ = ("source", "target", "pending", "ended", "shut")

    def __init__(self, source, target) -> None:
        self.source, self.target = source, target
        self.pending = b""
        self.ended = False  # the source said end of file (or failed)
        self.shut = False  # and everything was written: the target was shut for writing


def relay_connections(listener, upstream: str, chunk: int = 65536) -> None:
    """The gateway forwarder's loop: every connection accepted on `listener` relayed to a new connection to the unix
    socket `upstream`, both ways, with half-closes passed on, in this one thread. One task whatever the number of
    connections: the forwarder counts against the sandbox's pids.max (its init and it are the 2 above
    `Limits.processes`), so a thread per connection and direction took the code's processes and threads (a run with
    32 connections open could start none), and a thread refused at the limit ended the forwarder, and with it the
    sandbox's way to the gateway."""
    import selectors
    import socket

    selector = selectors.DefaultSelector()
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ)
    sides: dict = {}  # socket -> (the direction it is the source of, the direction it is the target of)
    watched: dict = {}  # socket -> the events it is registered for

    def watch(sock) -> None:
        if sock not in sides:
            return
        out, into = sides[sock]
        events = (selectors.EVENT_READ if not out.ended and not out.pending else 0) | \
            (selectors.EVENT_WRITE if into.pending else 0)
        if events == watched.get(sock, 0):
            return
        if not events:
            selector.unregister(sock)
            del watched[sock]
        elif sock in watched:
            selector.modify(sock, events)
            watched[sock] = events
        else:
            selector.register(sock, events)
            watched[sock] = events

    def close(sock) -> None:
        out, _ = sides[sock]
        for end in (out.source, out.target):
            if end in watched:
                selector.unregister(end)
                del watched[end]
            sides.pop(end, None)
            end.close()

    def finish(direction: _Direction) -> None:
        if direction.ended and not direction.pending and not direction.shut:
            direction.shut = True
            try:
                direction.target.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if sides[direction.source][1].shut:  # both ways ended
                close(direction.source)

    def send(direction: _Direction) -> None:
        try:
            sent = direction.target.send(direction.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the other end is gone: so is the connection
            close(direction.target)
            return
        direction.pending = direction.pending[sent:]
        finish(direction)

    def receive(direction: _Direction) -> None:
        try:
            data = direction.source.recv(chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            direction.pending = data
            send(direction)
        else:
            direction.ended = True
            finish(direction)

    def relay(client, server) -> None:
        client.setblocking(False)
        up, down = _Direction(client, server), _Direction(server, client)
        sides[client], sides[server] = (up, down), (down, up)
        watch(client)
        watch(server)

    def connect_waiting() -> None:
        """Ask again for the connections waiting for room in the host socket's backlog, oldest first; one that
        waited CONNECT_WAIT is closed, as a blocking connect would have given up."""
        now = time.monotonic()
        while connecting:
            client, deadline = connecting[0]
            server = connect_unix(upstream)
            if server is False and now <= deadline:
                break  # still full: the later ones wait too, in their order
            connecting.popleft()
            if server:
                relay(client, server)
            else:
                client.close()
        for client, deadline in list(connecting):  # behind a full backlog for too long
            if now > deadline:
                connecting.remove((client, deadline))
                client.close()

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: the connections waiting are taken once some are closed
                time.sleep(0.05)
                return
            # the connect never waits here: a full backlog on the host's side would stall every other connection
            # of the sandbox (this one thread relays them all) for as long as it waited
            connecting.append((client, time.monotonic() + CONNECT_WAIT))
            connect_waiting()

    connecting: collections.deque = collections.deque()  # (accepted client, until when its connect is asked)
    while True:
        for key, events in selector.select(CONNECT_RETRY if connecting else None):
            sock = key.fileobj
            if sock is listener:
                accept()
                continue
            if sock in sides and events & selectors.EVENT_WRITE:
                into = sides[sock][1]
                send(into)
                watch(into.source)
            if sock in sides and events & selectors.EVENT_READ:
                out = sides[sock][0]
                receive(out)
                watch(out.target)
            watch(sock)
        if connecting:
            connect_waiting()


class Usage:
    """What a working directory holds: allocated bytes and inodes (each counted once, however many links)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.files = 0
        self.too_deep = False
        self.seen: set[tuple[int, int]] = set()
        self.device: int | None = None  # the filesystem measured; None when the directory could not be opened
        self.in_flight = 0  # descriptors queued in flight on the sandbox's unix sockets (their fdinfo's scm_fds)
        self.sockets: set[str] = set()  # the sockets read for it, each once however many processes hold it

    def add(self, info: os.stat_result) -> None:
        key = (info.st_dev, info.st_ino)
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += info.st_blocks * 512
            self.files += 1


def measure(top: str, stop_bytes: float = float("inf"), stop_files: float = float("inf")) -> Usage:
    """The usage of the tree at `top`, walked through directory descriptors (no path grows past PATH_MAX, no
    link is followed, another filesystem mounted inside is not entered); it stops early once `stop_bytes` or
    `stop_files` is passed. Entries that vanish while it walks are skipped."""
    usage = Usage()
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        top_fd = os.open(top, flags)
    except OSError:
        return usage
    device = usage.device = os.fstat(top_fd).st_dev
    usage.add(os.fstat(top_fd))
    try:
        stack = [(top_fd, os.scandir(top_fd))]
    except OSError:
        os.close(top_fd)
        return usage
    try:
        while stack:
            fd, entries = stack[-1]
            try:
                entry = next(entries, None)
            except OSError:
                entry = None
            if entry is None:
                stack.pop()
                entries.close()
                os.close(fd)
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            usage.add(info)
            if usage.bytes > stop_bytes or usage.files > stop_files:
                break
            if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                if len(stack) >= MAX_DEPTH:
                    usage.too_deep = True
                    break
                inner = None
                try:
                    inner = os.open(entry.name, flags, dir_fd=fd)
                    stack.append((inner, os.scandir(inner)))
                except OSError as exc:
                    if inner is not None:
                        os.close(inner)
                    if exc.errno in (errno.EMFILE, errno.ENFILE):  # a subtree it cannot enter is not skipped
                        usage.too_deep = True
                        break
    finally:
        for fd, entries in stack:
            entries.close()
            os.close(fd)
    return usage


def sandbox_pids(child_pid: int, namespace: str | None) -> list[int]:
    """The processes of the sandbox, this process excepted: every descendant of this process (so also those in a
    pid namespace the tenant nested inside the sandbox's, which a namespace comparison missed, and the orphans
    the sandbox's init adopts), and, without namespaces, those in this process's process group, which `spawn`
    started as a session of its own (orphans re-parented outside it).

    With a pid namespace the descendants are all of it: a process of the namespace that loses its parent goes to
    the namespace's init (the child) or a subreaper inside it, and its init may not clone with CLONE_PARENT; so
    the walk follows `/proc/<pid>/task/<tid>/children` from this process and reads a few files, where scanning
    every process on the host cost 3.5-4.7 ms at ~100-150 processes, four times a second for every sandbox
    (14-19 ms of CPU a second, idle or not; more on a busy host). Without namespaces, or on a kernel without
    those files (CONFIG_PROC_CHILDREN), every process is scanned as before."""
    if namespace is not None:
        walked = _descendants(os.getpid())
        if walked is not None:
            return sorted(walked)
    me, group = os.getpid(), os.getpgid(0)
    children: dict[int, list[int]] = {}
    members = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
            children.setdefault(parent, []).append(pid)
            if namespace is not None:
                if os.readlink(f"/proc/{name}/ns/pid") == namespace:
                    members.add(pid)
            elif os.getpgid(pid) == group:
                members.add(pid)
        except (OSError, IndexError, ValueError):
            continue
    stack, visited = list(children.get(me, [])), set()
    while stack:
        pid = stack.pop()
        if pid not in visited:
            visited.add(pid)
            stack.extend(children.get(pid, []))
    return sorted(members | visited)


def _children(pid: int) -> list[int] | None:
    """The children of every thread of `pid` ([] when it is gone); None when the kernel has no children files."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(value) for value in handle.read().split())
        except FileNotFoundError:
            if os.path.exists(f"/proc/{pid}/task/{tid}"):  # the thread is there, its children file is not
                return None
        except (OSError, ValueError):
            continue
    return found


def _descendants(root: int) -> set[int] | None:
    """Every descendant of `root`, `root` excepted; None when the kernel cannot list children."""
    stack, visited = [root], set()
    while stack:
        pid = stack.pop()
        found = _children(pid)
        if found is None:
            return None
        for child in found:
            if child not in visited:
                visited.add(child)
                stack.append(child)
    return visited


def add_unlinked(usage: Usage, pids: list[int], device: int, largest: int = 0) -> None:
    """Files of the working directory's filesystem that the sandbox deleted but still holds open, mapped or as a
    process's executable: gone from the tree, their blocks still taken; and the descriptors in flight on its unix
    sockets (`usage.in_flight`). A mapping without a descriptor counts the file's allocated size where
    /proc/<pid>/map_files lets this process stat it (as root), otherwise the larger of its mapped length and
    `largest` (the file-size limit: a mapping of one page may keep a whole file)."""
    number = f"{os.major(device):02x}:{os.minor(device):02x}"
    for pid in pids:
        for view in task_views(pid):
            add_unlinked_of(usage, pid, view, device, number, largest)


def task_views(pid: int) -> list[str]:
    """The /proc directories that show every descriptor table and the mappings of process `pid`: one per distinct
    descriptor table among its threads (`/proc/<pid>/task/<tid>`). `/proc/<pid>` alone shows its first thread's:
    a thread that took a table of its own (unshare(CLONE_FILES)) held deleted files there unseen, and once the
    first thread exited (SYS_exit, the process living on in its other threads) `/proc/<pid>/fd`, `maps` and `exe`
    showed nothing at all: 160 MiB past a 64 MiB quota either way. Threads sharing a table are told by kcmp
    (KCMP_FILES); where it is not available every thread is read (the same files are counted once)."""
    try:
        tids = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return []
    if pid in tids:  # the first thread first: its table is the one most threads share
        tids.remove(pid)
        tids.insert(0, pid)
    kept: list[int] = []
    for tid in tids:
        if not any(same_files(other, tid) for other in kept):
            kept.append(tid)
    return [f"/proc/{pid}/task/{tid}" for tid in kept]


KCMP_FILES = 2
SYS_KCMP = {"x86_64": 312, "i386": 349, "i686": 349, "aarch64": 272, "armv6l": 378, "armv7l": 378,
            "armv8l": 378}.get(os.uname().machine)


def same_files(one: int, other: int) -> bool:
    """Whether two threads share one descriptor table (kcmp KCMP_FILES: 0 when the same; an exited thread has
    none, which differs from any live one's); False when that cannot be told, so both are read."""
    if SYS_KCMP is None:
        return False
    arguments = (ctypes.c_long(value) for value in (one, other, KCMP_FILES, 0, 0))
    return libc.syscall(ctypes.c_long(SYS_KCMP), *arguments) == 0


def add_unlinked_of(usage: Usage, pid: int, view: str, device: int, number: str, largest: int) -> None:
    """`add_unlinked` for one descriptor table and the address space of process `pid`, read in `view`
    (`task_views`)."""
    try:
        descriptors = os.listdir(f"{view}/fd")
    except OSError:
        descriptors = []  # an exited thread: its address space may still be another's, read below
    for path in [f"{view}/fd/{fd}" for fd in descriptors] + [f"{view}/exe"]:
        try:
            link = os.readlink(path)
            if link.startswith("socket:["):
                if link not in usage.sockets:
                    usage.sockets.add(link)
                    usage.in_flight += in_flight(path.replace("/fd/", "/fdinfo/", 1))
                continue
            if not link.endswith(" (deleted)"):
                continue
            info = os.stat(path)
        except OSError:
            continue
        if info.st_nlink == 0 and info.st_dev == device and stat.S_ISREG(info.st_mode):
            usage.add(info)
    try:
        with open(f"{view}/maps") as maps:
            lines = [line for line in maps if line.rstrip().endswith("(deleted)")]
    except OSError:
        return
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[3] != number:
            continue
        key = (device, int(fields[4]))
        if key not in usage.seen:
            try:  # the process's (a thread has no map_files; with its first thread exited it reads nothing)
                info = os.stat(f"/proc/{pid}/map_files/{fields[0]}")
            except OSError:
                info = None  # no CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE) outside a user namespace
            if info is not None and info.st_dev == device and (info.st_dev, info.st_ino) == key:
                usage.add(info)
                continue
            start, end = (int(value, 16) for value in fields[0].split("-"))
            usage.seen.add(key)
            usage.bytes += max(end - start, largest)
            usage.files += 1


def in_flight(fdinfo: str) -> int:
    """How many descriptors are queued in flight on the socket of `fdinfo` (a listener's count includes those
    queued on connections it has not accepted); 0 for other sockets, and on kernels older than 5.7, which do not
    say (docs/security.md, "Known gaps")."""
    try:
        with open(fdinfo, "rb") as handle:
            for line in handle:
                if line.startswith(b"scm_fds:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Flight:
    """The measurements of the last grace period (whether each saw descriptors in flight), the evidence of all of
    them (module constants), and when the sandbox was first seen with some since a period with none."""

    def __init__(self, grace: float = INFLIGHT_GRACE) -> None:
        self.grace = grace
        self.since: float | None = None
        self.evidence = 0.0
        self.window: collections.deque[tuple[float, bool]] = collections.deque()

    @property
    def active(self) -> bool:
        """Whether a measurement of the last grace period saw descriptors in flight."""
        return self.since is not None

    def kept(self, now: float, count: int) -> bool:
        """Record a measurement that saw `count` descriptors in flight; whether the sandbox has kept descriptors in
        flight: some now, `since` a grace ago or more, and at every measurement of the last grace (INFLIGHT_ALL at
        least) or with the evidence at INFLIGHT_EVIDENCE."""
        seen = count > 0
        self.window.append((now, seen))
        self.evidence = self.evidence + INFLIGHT_UP if seen else max(0.0, self.evidence - INFLIGHT_DOWN)
        # the last grace's measurements, and never fewer than INFLIGHT_SAMPLES: a tree that takes long to walk (the
        # interval is at least four times a walk) must not leave too few to ever decide
        while len(self.window) > INFLIGHT_SAMPLES and self.window[0][0] < now - self.grace:
            self.window.popleft()
        sightings = sum(seen for _, seen in self.window)
        if not sightings:
            self.since, self.evidence = None, 0.0
            return False
        if self.since is None:
            self.since = now
        if not seen or now - self.since < self.grace:
            return False
        return (len(self.window) >= INFLIGHT_ALL and sightings == len(self.window)) or (
            self.evidence >= INFLIGHT_EVIDENCE)


def over_quota(config: dict, baseline: Usage, child_pid: int, namespace: str | None, flight: Flight | None = None,
               now: float | None = None) -> tuple[Usage, tuple[str, str] | None]:
    """The sandbox's usage now, and which quota it passed and how (None while it is within them); with `flight`,
    also whether it has kept descriptors in flight for the quota's grace."""
    quota = config["quota"]
    stop_bytes, stop_files = baseline.bytes + quota["disk_bytes"], baseline.files + quota["disk_files"]
    usage = measure(config["workdir"], stop_bytes, stop_files)
    # the device the walk measured, not the path's again: a working directory that is not there (the child failing
    # to set it up, or removed meanwhile) is measured as empty, and must not end this process before the child's
    # setup-failure verdict
    if usage.bytes <= stop_bytes and usage.files <= stop_files and not usage.too_deep and usage.device is not None:
        largest = config.get("limits", {}).get("file_size_bytes", 0)
        # in an order code cannot foresee: descriptors hopping between processes against a fixed order (by pid)
        # could be read in none of them at every measurement
        pids = sandbox_pids(child_pid, namespace)
        random.shuffle(pids)
        add_unlinked(usage, pids, usage.device, largest)
    reasons = quota.get("reasons", {})  # shared/sandbox.py's describe_limit, handed over in the config
    if usage.bytes > stop_bytes:
        return usage, ("disk_bytes", reasons.get("disk_bytes", "the sandbox's disk quota was exceeded"))
    if usage.files > stop_files or usage.too_deep:
        reason = reasons.get("disk_files", "the sandbox's file quota was exceeded")
        if usage.too_deep:
            reason += f" (its directories were nested too deeply to measure: at most {MAX_DEPTH} levels)"
        return usage, ("disk_files", reason)
    if flight is not None and flight.kept(time.monotonic() if now is None else now, usage.in_flight):
        return usage, ("fds_in_flight", reasons.get(
            "fds_in_flight", f"it kept file descriptors in flight on a unix socket for more than {flight.grace:g} s"))
    return usage, None


def next_interval(config: dict, baseline: Usage, before: tuple[float, Usage], now: tuple[float, Usage],
                  spent: float, previous: float = QUOTA_INTERVAL) -> float:
    """Seconds to the next measurement: a quarter more than the previous one, up to QUOTA_INTERVAL; shorter when
    the growth seen since the last one would reach a quota sooner (half the time left at that pace, at least
    QUOTA_INTERVAL_MIN); never under four times what measuring took. The first is QUOTA_INTERVAL_MIN: two
    processes writing into the page cache from their first moment went 1.3 GB past a 64 MiB quota when the first
    look came after QUOTA_INTERVAL, 260-430 MiB with the pause doubling from the first, 235-265 MiB with it
    growing by a quarter (~40 ms when a Python tenant starts writing)."""
    quota, elapsed = config["quota"], max(now[0] - before[0], 1e-3)
    interval = min(QUOTA_INTERVAL, 1.25 * previous)
    for grown, left in ((now[1].bytes - before[1].bytes, baseline.bytes + quota["disk_bytes"] - now[1].bytes),
                        (now[1].files - before[1].files, baseline.files + quota["disk_files"] - now[1].files)):
        if grown > 0:
            interval = min(interval, max(QUOTA_INTERVAL_MIN, left / (grown / elapsed) / 2))
    return max(interval, 4 * spent)


def supervise(pid: int, config: dict, baseline: Usage) -> int:
    """Wait for the child while holding the sandbox to its disk quota (module docstring); its wait status."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a walk holds two descriptors per level
    if soft != resource.RLIM_INFINITY and soft < 4 * MAX_DEPTH:
        wanted = 4 * MAX_DEPTH if hard == resource.RLIM_INFINITY else min(hard, 4 * MAX_DEPTH)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    namespace = None
    if config["mechanism"] != "off":
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/pid")
        except OSError:
            return wait_for(pid)  # already gone
    try:
        exited: int | None = os.pidfd_open(pid)
    except OSError:  # a kernel older than 5.3: poll instead
        exited = None
    interval, last = QUOTA_INTERVAL_MIN, (time.monotonic(), baseline)
    flight = Flight(config["quota"].get("in_flight_seconds", INFLIGHT_GRACE))
    while True:
        done, out_of_memory = ended(exited, pid, interval, OOM_EVENTS)
        if done:
            break
        if out_of_memory and CGROUP is not None:  # the kernel signals before it kills: its count follows at once
            deadline = time.monotonic() + 0.02
            while CGROUP.oom_kills() == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
        if CGROUP is not None and CGROUP.oom_kills() > 0:  # (v1: the OOM killer took one process) the sandbox ends
            os.kill(pid, signal.SIGKILL)
            CGROUP.kill()
            break
        began = time.monotonic()
        usage, over = over_quota(config, baseline, pid, namespace, flight, began)
        if over is not None:
            os.kill(pid, signal.SIGKILL)  # pid 1 of the namespace: the kernel kills every process in it
            if namespace is None:
                for other in sandbox_pids(pid, None):
                    try:
                        os.kill(other, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            wait_for(pid)
            remove_cgroups()
            os.write(2, f"\n{QUOTA_MARKS[over[0]]}: {over[1]}; the sandbox was stopped\n".encode())
            if config.get("verdict_fd") is not None:  # the verdict the caller believes (module docstring)
                os.write(config["verdict_fd"], over[0].encode())
            os._exit(QUOTA_EXIT)
        spent = time.monotonic() - began
        interval = next_interval(config, baseline, last, (began, usage), spent, interval)
        if flight.active:  # descriptors were in flight lately: enough measurements to tell passing from keeping
            interval = max(min(interval, INFLIGHT_PROBE), 4 * spent)
        last = (began, usage)
    if exited is not None:
        os.close(exited)
    return wait_for(pid)


def ended(exited: int | None, pid: int, seconds: float, oom: int | None = None) -> tuple[bool, bool]:
    """Whether the child ended within `seconds` (it is left to be reaped), and whether an OOM event (`oom`, an
    eventfd, then drained) cut the wait short."""
    watched = [fd for fd in (exited, oom) if fd is not None]
    if not watched:
        time.sleep(seconds)
        ready = []
    else:
        ready = select.select(watched, [], [], seconds)[0]
    signalled = oom is not None and oom in ready
    if signalled:
        try:
            os.eventfd_read(oom)
        except OSError:
            pass
    if exited is not None:
        return exited in ready, signalled
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None, signalled


def set_limits(limits: dict) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 2))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_bytes"], limits["file_size_bytes"]))


def forbid_user_namespaces() -> None:
    """No process of the sandbox can create a user namespace (and so no other namespace, mount or sysctl of its
    own: all of them need capabilities only a user namespace of its own would give it), as bubblewrap's
    --disable-userns does: user.max_user_namespaces is a limit of each user namespace, checked at every level
    above a new one, so 0 in the sandbox's own refuses every nested one at any depth. Writing it takes
    CAP_SYS_RESOURCE in that namespace, which this process holds until it executes the target and the code never
    gets (it runs under a uid other than the namespace's 0). Checked by trying, as bubblewrap does."""
    try:
        write_file("/proc/sys/user/max_user_namespaces", "0")
    except OSError as exc:
        fail(f"could not forbid user namespaces (user.max_user_namespaces): {exc.strerror}")
    if libc.unshare(CLONE_NEWUSER) == 0:
        fail("creating a user namespace inside the sandbox was not refused")


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def refuse_io_uring_and_fallocate() -> None:
    """A seccomp filter on this process and everything it starts (it needs no_new_privs): io_uring_setup fails with
    ENOSYS and fallocate with EOPNOTSUPP. An io_uring keeps files in its registered-file table, opens files straight
    into it and can itself be registered to its task instead of held by a descriptor: a deleted file kept there is
    in no fd table and no mapping, so the disk quota could not see it; programs that use io_uring fall back to
    ordinary system calls on ENOSYS, as they must where container runtimes refuse it too (Docker's default profile
    since 2023). fallocate allocated 5 GiB in 0.1 s here, so the quota's overshoot within one interval (or
    INFLIGHT_GRACE) was bounded by the disk rather than by how fast code can write; glibc's posix_fallocate (and so
    Python's os.posix_fallocate) writes the blocks instead on EOPNOTSUPP, as on filesystems without fallocate."""
    ld_arch, ld_nr, jeq, and_k, ret = 0x20, 0x20, 0x15, 0x54, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_ALU|AND|K, RET
    allow, enosys, eopnotsupp = 0x7FFF0000, 0x00050000 | errno.ENOSYS, 0x00050000 | errno.EOPNOTSUPP
    # (AUDIT_ARCH_*, io_uring_setup, fallocate): x86_64 (x32 too, its bit masked off), i386, aarch64, arm
    arches = ((0xC000003E, IO_URING_SETUP, 285), (0x40000003, IO_URING_SETUP, 324),
              (0xC00000B7, IO_URING_SETUP, 47), (0x40000028, IO_URING_SETUP, 352))
    refused = 7 * len(arches) + 1  # where the ENOSYS return is; EOPNOTSUPP's follows it
    code: list[tuple[int, int, int, int]] = []
    for arch, io_uring, fallocate in arches:
        at = len(code)
        code += [(ld_arch, 0, 0, 4), (jeq, 0, 5, arch), (ld_nr, 0, 0, 0), (and_k, 0, 0, 0xBFFFFFFF),
                 (jeq, refused - (at + 4) - 1, 0, io_uring), (jeq, refused + 1 - (at + 5) - 1, 0, fallocate),
                 (ret, 0, 0, allow)]
    code += [(ret, 0, 0, allow), (ret, 0, 0, enosys), (ret, 0, 0, eopnotsupp)]
    program = (SockFilter * len(code))(*(SockFilter(*instruction) for instruction in code))
    fprog = SockFprog(len(program), program)
    check(libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP): io_uring and fallocate could not "
          "be refused")


def child(config: dict, root: str | None, alive: int, mapping: tuple[int, int], placed: int) -> None:
    """pid 1 of the new namespaces: build the view, drop privileges, then run the target as its child (pid 1
    ignores signals it has no handler for, which would turn SIGXCPU and SIGXFSZ into no-ops) and exit with its
    status; when pid 1 exits, the kernel kills every process left in the namespace. Its setup failures (`fail`)
    are reported to the launcher on REPORT_FD, which the target's execve closes. It forks nothing before the
    launcher has put it into the sandbox's memory cgroup (`placed`), which the launcher does while it builds the
    view: moving a process between cgroups waits for an RCU grace period (~10 ms here)."""
    global REPORT_FD
    try:
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        if root is not None:
            build_root(config, root)
        if os.read(placed, 1) != b"c":  # the launcher is gone or could not place it
            os._exit(125)
        os.close(placed)
        if root is not None and config.get("gateway"):
            gateway_forwarder(config)
        os.chdir(config["workdir"])
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        if config["mechanism"] == "root":
            uid, gid = config["uid"], config["gid"]
            os.setgroups([])
            # a user namespace of its own (the launcher maps the sandbox uid onto itself): RLIMIT_NPROC then
            # counts this sandbox's processes, not those of every sandbox running as the same OS user
            check(libc.unshare(CLONE_NEWUSER), "unshare(user)")
            os.write(mapping[1], b"u")
            if os.read(mapping[0], 1) != b"m":
                fail("the launcher did not map the sandbox user")
        if root is not None:
            forbid_user_namespaces()
        if config["mechanism"] == "root":
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)  # leaving uid 0 clears every capability
            if os.geteuid() == 0 or os.getuid() == 0:
                fail("could not leave uid 0")
        # armed again: a change of credentials disarms it
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        os.set_blocking(alive, False)
        try:
            if os.read(alive, 1) == b"":  # the launcher died before PDEATHSIG was armed
                os._exit(125)
        except BlockingIOError:
            pass
        os.close(alive)
        go, ready = os.pipe()  # the target executes the code only once this process holds no REPORT_FD
        init = os.getpid()
        target = os.fork()
        if target == 0:
            os.close(ready)
            # the target dies with this process too (a PDEATHSIG is not inherited by a fork, and survives the exec):
            # in a pid namespace the kernel kills it anyway once pid 1 is gone, but `off-for-single-user` has none,
            # and there the code outlived a service killed with SIGKILL (an engine replica: its workers ran on)
            check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
            if os.getppid() != init:  # this process died before it was armed
                os._exit(125)
            try:
                set_limits(config["limits"])
                for number in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
                    signal.signal(number, signal.SIG_DFL)
                os.umask(0o077)
                refuse_io_uring_and_fallocate()
            except (OSError, ValueError) as exc:
                fail(f"could not set the limits: {exc}")
            if os.read(go, 1) != b"g":
                os._exit(125)  # pid 1 is gone, and the namespace with it
            os.close(go)
            os.execve(config["argv"][0], config["argv"], config["env"])  # closes REPORT_FD (close-on-exec)
        os.close(go)
        if REPORT_FD is not None:  # the target reports its own setup; the code it executes never holds the pipe
            os.close(REPORT_FD)
            REPORT_FD = None
        os.write(ready, b"g")
        os.close(ready)
        os._exit(exit_code(wait_for(target)))
    except OSError as exc:
        fail(f"{exc.strerror or exc}: {exc.filename or ''}")
    finally:
        os._exit(125)


def setup_failed(setup_read: int) -> bool:
    """Whether the child reported a setup failure on the setup pipe (read once it has ended: every write end is
    closed by then, the target's by its execve)."""
    try:
        return os.read(setup_read, len(SETUP_FAILED)) == SETUP_FAILED
    except BlockingIOError:
        return False


def wait_for(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue


def exit_code(status: int) -> int:
    """A wait status as an exit code: 128 + the signal for a signal death (the shell's convention)."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def mountpoint() -> str:
    """An empty directory for the child to mount its new root on (in its own mount namespace, so every sandbox
    can share it): one per uid under the temporary directory, kept, so a launcher killed with SIGKILL leaves
    nothing behind. Anything odd there (a symlink, another owner) gets a fresh private directory instead."""
    path = os.path.join(tempfile.gettempdir(), f".railyard-sandbox-root-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not os.listdir(path):
        return path
    return tempfile.mkdtemp(prefix="railyard-sandbox-")


def main() -> None:
    config = json.loads(os.environ.pop("RAILYARD_SANDBOX_LAUNCH"))
    global REPORT_FD
    if config.get("verdict_fd") is not None:
        os.set_inheritable(config["verdict_fd"], False)  # the child closes it too: fork ignores close-on-exec
        REPORT_FD = config["verdict_fd"]  # this process's own setup failures: the verdict itself
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() != config["parent"]:  # the service that spawned it is already gone
        os._exit(125)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    global CGROUP, PIDS_CGROUP, OOM_EVENTS
    procs = []  # the cgroups' cgroup.procs, opened now: the kernel checks a write against the opener's credentials
    if config.get("cgroup"):  # made as the caller's uid, before any namespace: its files are the caller's to write
        wanted = MemoryCgroup(config["cgroup"]["version"], config["cgroup"]["path"])
        try:
            wanted.create(config["limits"]["memory_bytes"], config["cgroup"].get("processes"))
            CGROUP = wanted
            procs.append(os.open(os.path.join(wanted.path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
            if config["cgroup"].get("oom_events", True):  # (v1) its OOM kills told at once (off: measurements only,
                OOM_EVENTS = wanted.oom_eventfd()  # for bench/sandbox_oom_lag.py to compare)
        except OSError as exc:
            fail(f"could not create the sandbox's memory cgroup {wanted.path}: {exc.strerror or exc}")
    if config.get("pids_cgroup"):  # (v1) likewise in the pids hierarchy
        counted = PidsCgroup(config["pids_cgroup"]["path"])
        try:
            counted.create(config["pids_cgroup"]["processes"])
            PIDS_CGROUP = counted
            procs.append(os.open(os.path.join(counted.path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            fail(f"could not create the sandbox's pids cgroup {counted.path}: {exc.strerror or exc}")
    if PIDS_CGROUP is not None or (CGROUP is not None and CGROUP.limits_pids()):
        # pids.max bounds the sandbox and counts what it refuses (the verdict "processes"); RLIMIT_NPROC, checked
        # first at a fork, stays a backstop above it, or it would refuse first and uncounted
        config["limits"]["processes"] += NPROC_BACKSTOP
    root = None
    if config["mechanism"] != "off":
        enter_namespaces(config)
        root = mountpoint()
    baseline = measure(config["workdir"]) if config.get("quota") else None  # the quota counts growth from here
    alive, keep = os.pipe()  # its write end stays open in this process for as long as it lives
    asked, answered = os.pipe(), os.pipe()  # (root) the child asks for its uid map, this process answers
    # the child's setup failures, reported to this process; close-on-exec, so the tenant's code never holds it
    setup_read, setup_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    placed, place = os.pipe()  # the child forks nothing until this process has put it into its cgroups
    pid = os.fork()
    if pid == 0:
        CGROUP = PIDS_CGROUP = None  # the launcher's to remove
        for end in procs:
            os.close(end)
        if OOM_EVENTS is not None:
            os.close(OOM_EVENTS)
        os.close(place)
        os.close(keep)
        os.close(setup_read)
        if config.get("verdict_fd") is not None:
            os.close(config["verdict_fd"])  # only this process may give a verdict
        REPORT_FD = setup_write
        child(config, root, alive, (answered[0], asked[1]), placed)
    for end in (alive, asked[1], answered[0], setup_write, placed):
        os.close(end)
    for end in procs:
        try:
            os.write(end, str(pid).encode())  # before it forks anything: every process it starts is charged here
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)
            wait_for(pid)
            fail(f"could not put the sandbox into its cgroups: {exc.strerror}")
        os.close(end)
    os.write(place, b"c")
    os.close(place)
    if config["mechanism"] == "root":
        if os.read(asked[0], 1) == b"u":
            write_file(f"/proc/{pid}/uid_map", f"{config['uid']} {config['uid']} 1\n")
            write_file(f"/proc/{pid}/gid_map", f"{config['gid']} {config['gid']} 1\n")
            os.write(answered[1], b"m")

    def stop(signum, frame) -> None:
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = exit_code(supervise(pid, config, baseline) if baseline is not None else wait_for(pid))
    out_of_memory = CGROUP is not None and CGROUP.oom_kills() > 0
    # a sandbox that failed (not one that exits 0: it may have handled EAGAIN) once its pids.max (v2: in the memory
    # cgroup) refused it a fork or a thread; the kernel's count, which the code cannot write. Not one the kernel
    # stopped for another limit, which its signal names (a refusal handled earlier would have taken its place)
    refused = code not in OTHER_LIMITS and any(group is not None and group.refused_forks() > 0
                                               for group in (CGROUP, PIDS_CGROUP))
    remove_cgroups()
    reasons = config.get("quota", {}).get("reasons", {})
    if setup_failed(setup_read) and REPORT_FD is not None:
        os.write(REPORT_FD, SETUP_FAILED)  # the verdict the caller believes, not the status 125 or stderr
    elif out_of_memory:
        reason = reasons.get("memory", "the sandbox's memory limit was exceeded")
        os.write(2, f"\n{MEMORY_MARK}: {reason}; the sandbox was stopped\n".encode())
        if REPORT_FD is not None:
            os.write(REPORT_FD, MEMORY_VERDICT)
    elif refused:
        reason = reasons.get("processes", "the sandbox's process limit was reached")
        os.write(2, f"\n{PROCESSES_MARK}: {reason}; the sandbox failed after a fork or thread was refused\n".encode())
        if REPORT_FD is not None:
            os.write(REPORT_FD, PROCESSES_VERDICT)
    if 128 < code < 128 + signal.NSIG:  # the target died of a signal: die of it too, for the caller to see
        number = code - 128
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    sys.exit(code)


if __name__ == "__main__":
    main()
