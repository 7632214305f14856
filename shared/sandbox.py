"""The one way Railyard runs users' code: in a sandbox (a process in its own namespaces, under limits).

Every place that runs code a user uploaded (the engine's Python-step and BYOP worker, the registry's pickle and
XGBoost conversion and its upload checks, later task runs and ML backends) starts it through `spawn` (a
long-lived process talking over pipes) or `run` (one shot, with a wall-time limit). What the code gets:

- exactly the environment in `SandboxSpec.env` (plus a minimal PATH, LANG and HOME, and the numeric libraries' thread
  counts, `thread_env`, each one the spec does not set itself): nothing of `os.environ`;
- a filesystem of its own: the system directories, the Python installation, the virtualenv and Railyard's code
  read-only, `readonly_paths` read-only, the working directory alone writable; the stack's data directory is an
  empty tmpfs (no secrets file, no artifacts, no engine cache); /tmp and /dev/shm are small private tmpfs;
- its own pid namespace and /proc: no other process of the host exists for it (no /proc/<pid>/environ);
- its own network namespace: no interface but a down loopback, so no platform port is reachable;
- another identity: as root, the dedicated unprivileged OS user `SandboxSettings.user` (created if missing);
  as a normal user, the same uid inside a user namespace with no capability left once the code starts;
- a memory limit for the sandbox as a whole (`Limits.memory_bytes`): a memory cgroup per sandbox holds all its
  processes, the page cache it fills and its tmpfs and memfd pages; an OOM kill there ends the whole sandbox with
  the launcher's verdict "memory". Where the service can write no memory cgroup (`memory_cgroup`),
  `check_available` warns and the limit is per process only (RLIMIT_AS);
- a limit on the sandbox's processes and threads together (`Limits.processes`): pids.max of its memory cgroup on
  cgroup v2, of a cgroup of its own in the pids hierarchy on v1 (`pids_cgroup`); past it a fork or a new thread
  fails with EAGAIN inside, and a sandbox that then fails ends with the launcher's verdict "processes". Without
  either, RLIMIT_NPROC (counted in the sandbox's own user namespace) is the limit;
- rlimits on address space, CPU seconds, processes (a backstop above pids.max), open files and file size;
  `wall_seconds` kills the whole pid namespace;
- a disk quota on its working directory (`Limits.disk_bytes` and `Limits.disk_files`, counted from what the
  directory held at the start): the launcher measures it while the code runs and kills the whole sandbox past
  either, which ends with `limit_hit` "disk_bytes" or "disk_files" and `describe_limit` saying so; and, since a
  descriptor in flight on a unix socket is counted by nothing, a sandbox that keeps descriptors in flight for
  `Limits.in_flight_seconds` is stopped too ("fds_in_flight"); io_uring, which can hold files no /proc file
  shows, is refused (ENOSYS). That verdict
  comes from the launcher on a pipe of its own (`quota_verdict`), never from the exit status or stderr, which the
  code chooses: code exiting with the launcher's status 122 is an ordinary exit. Likewise a sandbox the launcher
  could not build (`run` raises `SandboxUnavailable`) is known by its verdict "setup_failed" (`setup_failed`), not by
  the status 125 and "railyard-sandbox:" on stderr, which code can print and exit with too.

shared/sandbox_launcher.py builds that (a bubblewrap-like setup with the standard library, so no extra package
is needed). When a host can give none of it (not root and no user namespaces), `check_available` raises
`SandboxUnavailable` naming RAILYARD_SANDBOX__MODE; only `off-for-single-user` runs code without a boundary
(environment scrubbed and rlimits kept), and says so loudly in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import math
import os
import platform
import pwd
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shared import sandbox_launcher
from shared.errors import RailyardError
from shared.settings import SandboxSettings, Settings

log = logging.getLogger("railyard.sandbox")
LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
SETUP_FAILED = 125  # the launcher's exit code when it could not build the sandbox; the tenant can exit with it
# and print the launcher's words too, so only the verdict SETUP_VERDICT says it (`setup_failed`)
SETUP_VERDICT = "setup_failed"  # the launcher's verdict when it could not build the sandbox (same in the launcher)
QUOTA_EXIT = 122  # the launcher's exit code when it stopped the sandbox for its disk quota (same in the launcher);
# the tenant can exit with it too, so it proves nothing: the verdict is `quota_verdict`
QUOTA_LIMITS = frozenset({"disk_bytes", "disk_files", "fds_in_flight"})  # the launcher's disk quota verdicts
# what the launcher's verdict may say ("memory": its memory cgroup's OOM kill; "processes": a sandbox that failed
# after its pids.max refused a fork or thread)
VERDICT_LIMITS = QUOTA_LIMITS | {"memory", "processes"}
STDERR_TAIL = 2000
# refuses SCM_RIGHTS sent to a unix socket (Linux 6.16; inherited by the connections a listener accepts): a descriptor
# parked in the queue of one of this process's sockets would be counted by no sandbox's disk quota
SO_PASSRIGHTS = 83
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# the thread counts of the numeric libraries users' code loads (OpenMP, OpenBLAS, MKL, BLIS, Apple's Accelerate,
# numexpr, numba: joblib's list for its workers); `thread_env`
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")
THREADS_PER_PROCESS_LIMIT = 4  # a library's threads are at most a quarter of the sandbox's process limit
_STREAM_LIMIT = 64 * 1024 * 1024


class Network(enum.Enum):
    """What the sandboxed code may reach on the network."""

    NONE = "none"  # own empty network namespace: no loopback peers, nothing
    GATEWAY_ONLY = "gateway"  # task runs: 127.0.0.1:<gateway port> inside is relayed to the gateway, nothing else


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandbox."""

    memory_bytes: int = 1 << 30  # the sandbox's memory cgroup (all its processes) and each process's RLIMIT_AS
    cpu_seconds: int = 60  # RLIMIT_CPU (SIGXCPU, then SIGKILL 2 s later)
    processes: int = 64  # processes and threads together: the cgroup's pids.max (+2), else RLIMIT_NPROC
    open_files: int = 256  # RLIMIT_NOFILE
    file_size_bytes: int = 256 << 20  # RLIMIT_FSIZE; also the size of its /tmp
    wall_seconds: float | None = None  # `run` kills the whole pid namespace after this
    disk_bytes: int = 1 << 30  # what the working directory may grow by (bytes allocated), all processes together
    disk_files: int = 20_000  # how many files and directories may be added to the working directory
    in_flight_seconds: float = 3.0  # how long descriptors may stay in flight on its unix sockets (the disk quota)

    @classmethod
    def from_settings(cls, settings: SandboxSettings, **overrides) -> Limits:
        """The configured default limits, with `overrides` (field=value) applied."""
        values = {"memory_bytes": settings.memory_mb << 20, "cpu_seconds": settings.cpu_seconds,
                  "processes": settings.processes, "open_files": settings.open_files,
                  "file_size_bytes": settings.file_size_mb << 20, "wall_seconds": settings.wall_seconds,
                  "disk_bytes": settings.disk_mb << 20, "disk_files": settings.disk_files}
        return cls(**(values | overrides))


@dataclass(frozen=True)
class SandboxSpec:
    """What to run and what it may see."""

    argv: list[str]  # e.g. [sys.executable, "-m", "services.engine.worker"]
    workdir: Path  # the only writable directory (created and handed to the sandbox identity)
    env: dict[str, str] = field(default_factory=dict)  # exactly what the code gets, plus PATH/HOME/LANG defaults
    readonly_paths: tuple[Path, ...] = ()  # extra paths visible read-only (e.g. the artifact to convert)
    limits: Limits = Limits()
    network: Network = Network.NONE
    # GATEWAY_ONLY: whose traffic this is (a task run's owner). On a loopback gateway the relay connects from a
    # 127.0.0.0/8 address of this key's own, so the gateway's per-source counts (connections, token requests,
    # failed sign-ins) are the tenant's, not 127.0.0.1's, which the host's own clients use ("" = one per sandbox)
    source_key: str = ""
    # the key's own number, allocated once (the task scheduler's relay_sources: store.relay_number): the relay's address
    # is the number's (relay_source), which no other key's is; None: a digest of source_key's, which another's may be
    source_number: int | None = None
    # how many sandboxes like this one its caller may run at once (the task scheduler: tasks.max_runs_per_process):
    # the numeric libraries' thread count it gets by default is its share of the CPUs (`thread_env`)
    at_once: int = 1


@dataclass
class SandboxResult:
    """How a one-shot sandboxed run ended."""

    returncode: int
    stdout: bytes
    stderr_tail: str  # the last STDERR_TAIL characters of its stderr
    limit_hit: str | None  # "memory" | "cpu" | "wall_time" | "file_size" | "processes" | "disk_bytes" |
    # "disk_files" | "fds_in_flight" | None


class SandboxUnavailable(RailyardError):
    """This host cannot isolate users' code, so Railyard refuses to run it."""

    status = 503
    code = "sandbox_unavailable"


def code_paths() -> list[Path]:
    """What the sandboxed Python must read: its installation, the virtualenv, the packages on sys.path and
    Railyard's own code (wherever the repository is: /work/main, a clone under /tmp, /app)."""
    candidates = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.exec_prefix),
                  Path(sys.executable).resolve().parent.parent, Path(__file__).resolve().parent.parent}
    candidates |= {Path(p) for p in sys.path if p and Path(p).is_dir()}
    resolved = {p.resolve() for p in candidates if p.exists()} | {p.absolute() for p in candidates if p.exists()}
    outermost = sorted(resolved, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in outermost:
        if path != Path("/") and not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _settings() -> Settings:
    return Settings()


@functools.cache
def _sandbox_identity(user: str) -> tuple[int, int]:
    """uid and gid of the dedicated sandbox user, created (a system user without home or shell) if missing."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        created = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                  "--user-group", user], capture_output=True, text=True, check=False)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise SandboxUnavailable(
                f"running as root, Railyard runs users' code as the OS user {user!r}, which could not be "
                f"created ({created.stderr.strip()[:200]}); create it, or name another with "
                "RAILYARD_SANDBOX__USER") from None
        entry = pwd.getpwnam(user)
    if entry.pw_uid == 0:
        raise SandboxUnavailable(f"the sandbox user {user!r} is root; set RAILYARD_SANDBOX__USER to an "
                                 "unprivileged user")
    return entry.pw_uid, entry.pw_gid


def _mechanism(settings: SandboxSettings) -> str:
    if settings.mode == "off-for-single-user":
        return "off"
    return "root" if os.geteuid() == 0 else "userns"


@functools.cache
def host_cpus(cgroup_file: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo") -> int:
    """The CPUs this process (and so each sandbox it starts) may use, at least 1: those of its affinity, and no more
    than its cgroup's CPU quota (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us, of its cgroup and the
    ones above it), rounded up. OpenBLAS and OpenMP count the machine's CPUs instead: a service in a container or
    pod allowed 1 CPU of a 64-CPU host would have each sandbox's libraries start 64 threads on it."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cpu_quota(cgroup_file, mountinfo)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cpu_quota(cgroup_file: str, mountinfo: str) -> float | None:
    """The smallest CPU quota (in CPUs) on this process's cgroup and its ancestors, None when none is set or none
    can be read."""
    read = sandbox_launcher._read_cgroups(cgroup_file, mountinfo)
    if isinstance(read, str):
        return None
    lines, mounts = read
    quotas: list[float] = []
    for fields in mounts:
        if "-" not in fields:
            continue
        fstype, options, root, point = fields[fields.index("-") + 1], fields[-1].split(","), fields[3], fields[4]
        if fstype == "cgroup2":
            own = next((path for hierarchy, controllers, path in lines if hierarchy == "0" and not controllers), None)
        elif fstype == "cgroup" and "cpu" in options:
            own = next((path for hierarchy, controllers, path in lines
                        if hierarchy != "0" and "cpu" in controllers.split(",")), None)
        else:
            continue
        found = None if own is None else sandbox_launcher._under_mount(point, root, own)
        top = os.path.normpath(point.replace("\\040", " "))
        while found is not None:  # up to the mount's top
            quotas += [quota] if (quota := _quota_in(found, v2=fstype == "cgroup2")) is not None else []
            found = os.path.dirname(found) if found.startswith(top + "/") else None
    return min(quotas, default=None)


def _quota_in(directory: str, *, v2: bool) -> float | None:
    try:
        if v2:
            with open(os.path.join(directory, "cpu.max")) as handle:
                quota, period = (handle.read().split() + ["100000"])[:2]
        else:
            with open(os.path.join(directory, "cpu.cfs_quota_us")) as handle:
                quota = handle.read().strip()
            with open(os.path.join(directory, "cpu.cfs_period_us")) as handle:
                period = handle.read().strip()
        return int(quota) / int(period) if quota != "max" and int(quota) > 0 and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def thread_env(env: dict[str, str], limits: Limits, *, at_once: int = 1, threads: int = 0) -> dict[str, str]:
    """The thread counts (THREAD_VARIABLES) a sandbox gets besides `env`, its spec's: each variable `env` does not set.

    Unset, OpenBLAS and OpenMP start a thread per CPU of the machine whatever the sandbox may use, and on a busy
    host the extra threads spin waiting for a core (a scikit-learn fit of 0.1-0.3 s took 7-13 s on a loaded
    2-core machine, tests/conftest.py). The count is `threads` (SandboxSettings.threads) when set, else the CPUs
    the service may use (`host_cpus`) shared among the `at_once` sandboxes of this kind it may run at once (the
    task scheduler's runs: joblib's rule for its workers, CPUs // n_jobs), so that runs side by side do not each
    start a thread per CPU; either way at most a quarter of the sandbox's process limit (numpy's and scipy's
    OpenBLAS and an OpenMP runtime are three pools in one process, and the limit counts threads), at least 1. A
    value the spec gives wins (the engine's and the registry's workers give 1); its OMP_NUM_THREADS, a plain
    number, is also the count of the variables it does not set, as OpenBLAS and MKL would fall back to it. Code
    in the sandbox can still set any of them before it loads its libraries (or use threadpoolctl)."""
    share = threads if threads > 0 else host_cpus() // max(1, at_once)
    count = max(1, min(share, limits.processes // THREADS_PER_PROCESS_LIMIT))
    given = env.get("OMP_NUM_THREADS", "").strip()
    # ASCII digits only: str.isdigit takes "²", which int() refuses (the launch would raise)
    value = given if given.isascii() and given.isdigit() and int(given) > 0 else str(count)
    return {name: value for name in THREAD_VARIABLES if name not in env}


def _launch_config(spec: SandboxSpec, settings: Settings) -> dict:
    mechanism = _mechanism(settings.sandbox)
    workdir = spec.workdir.absolute()
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    env |= thread_env(spec.env, spec.limits, at_once=spec.at_once, threads=settings.sandbox.threads) | spec.env
    limits = spec.limits
    config = {
        "mechanism": mechanism, "parent": os.getpid(), "argv": [str(a) for a in spec.argv], "env": env,
        "workdir": str(workdir),
        "readonly": [str(p) for p in [*code_paths(), *(Path(p).absolute() for p in spec.readonly_paths)]],
        "hidden": [str(settings.stack.data_dir.expanduser().absolute())],
        "tmp_bytes": limits.file_size_bytes,
        "limits": {"memory_bytes": limits.memory_bytes, "cpu_seconds": limits.cpu_seconds,
                   "processes": limits.processes, "open_files": limits.open_files,
                   "file_size_bytes": limits.file_size_bytes},
        "quota": {"disk_bytes": limits.disk_bytes, "disk_files": limits.disk_files,
                  "in_flight_seconds": limits.in_flight_seconds,
                  # the launcher says why on stderr in the words every caller uses (it imports nothing of ours)
                  "reasons": {hit: describe_limit(hit, limits) for hit in VERDICT_LIMITS}},
    }
    if mechanism == "root":
        config["uid"], config["gid"] = _sandbox_identity(settings.sandbox.user)
    found, _ = memory_cgroup()
    counted, _ = pids_cgroup()
    name = _cgroup_name() if found is not None or counted is not None else ""
    if found is not None:
        version, parent = found
        config["cgroup"] = {"version": version, "path": os.path.join(parent, name),
                            # the sandbox's init and the gateway forwarder besides the code's own
                            "processes": limits.processes + 2}
    if counted is not None:  # (cgroup v1) the same name in the pids hierarchy
        config["pids_cgroup"] = {"path": os.path.join(counted, name), "processes": limits.processes + 2}
    return config


_cgroup_names = iter(range(1, 1 << 62))


def _cgroup_name() -> str:
    """A new sandbox cgroup's name: this process's pid and start time (so a sweep can tell whose owner is gone)."""
    return f"{sandbox_launcher.CGROUP_PREFIX}{os.getpid()}-{sandbox_launcher.process_start(os.getpid())}-" \
           f"{next(_cgroup_names)}"


@functools.cache
def memory_cgroup() -> tuple[tuple[int, str] | None, str | None]:
    """Where this process's sandboxes get their memory cgroups ((cgroup version, parent directory), None) or why
    none can (None, reason), checked once: a trial cgroup is made and removed. The first check sweeps the sandbox
    cgroups left there by owners that are gone (a crashed service, a launcher killed while nobody cleaned up)."""
    located = sandbox_launcher.locate_memory_cgroup()
    if isinstance(located, str):
        return None, located
    version, parent = located
    swept = sandbox_launcher.sweep_stale_cgroups(version, parent)
    if swept:
        log.warning("removed %d sandbox memory cgroups left by processes that are gone in %s", len(swept), parent)
    trial = sandbox_launcher.MemoryCgroup(version, os.path.join(parent, _cgroup_name()))
    try:
        trial.create(64 << 20)
    except OSError as exc:
        return None, f"a memory cgroup could not be created in {parent} ({exc.strerror or exc})"
    finally:
        trial.remove(timeout=1.0)
    return located, None


@functools.cache
def pids_cgroup() -> tuple[str | None, str | None]:
    """(cgroup v1) Where this process's sandboxes get their cgroups in the pids hierarchy (parent directory, None)
    or why none can (None, reason), checked once as `memory_cgroup` is (a trial cgroup; stale ones swept). On
    cgroup v2 there is no such hierarchy: the memory cgroup carries pids.max."""
    located = sandbox_launcher.locate_pids_cgroup()
    if isinstance(located, str):
        return None, located
    parent = located[1]
    swept = sandbox_launcher.sweep_stale_cgroups(1, parent)
    if swept:
        log.warning("removed %d sandbox pids cgroups left by processes that are gone in %s", len(swept), parent)
    trial = sandbox_launcher.PidsCgroup(os.path.join(parent, _cgroup_name()))
    try:
        trial.create(64)
    except OSError as exc:
        return None, f"a pids cgroup could not be created in {parent} ({exc.strerror or exc})"
    finally:
        trial.remove(timeout=1.0)
    return parent, None


def sweep_unused_cgroups() -> int:
    """Remove the sandbox cgroups (memory, and on cgroup v1 pids) of this process's cgroup whose owner is gone and
    that hold no process: those of a service killed with SIGKILL (an engine replica killed as hung, out of memory or
    past its stop timeout), whose launchers and code died with it (parent-death signals) but whose removal
    (`_remove_cgroup`) never ran. A process's first sandbox sweeps them too (`memory_cgroup`), killing what is left in
    them; this one, for a process that starts no sandbox itself (the deployer, at its start), kills nothing and
    changes nothing else. The number removed; none where no cgroup is readable."""
    removed = 0
    for version, parent in sandbox_launcher.sandbox_cgroup_parents():
        swept = sandbox_launcher.sweep_unused_cgroups(version, parent)
        if swept:
            log.info("removed %d sandbox cgroups left by processes that are gone in %s", len(swept), parent)
        removed += len(swept)
    return removed


def _warn_unbounded_processes() -> None:
    """Say (`_warn_host_gaps`: once a process) that its sandboxes' processes are bounded by RLIMIT_NPROC alone (no
    cgroup has the pids limit: neither a v2 memory cgroup with the pids controller nor a writable v1 pids
    hierarchy)."""
    found, _ = memory_cgroup()
    if pids_cgroup()[0] is not None or (found is not None and found[0] == 2 and "pids" in _v2_controllers(found[1])):
        return
    log.warning("sandboxes get no pids cgroup here (%s), so their processes and threads are limited by "
                "RLIMIT_NPROC alone, counted in each sandbox's user namespace, and no verdict tells a process limit "
                "that ended a sandbox: see docs/security.md, \"Known gaps\"", pids_cgroup()[1])


def _v2_controllers(parent: str) -> list[str]:
    try:
        with open(os.path.join(parent, "cgroup.subtree_control")) as handle:
            return handle.read().split()
    except OSError:
        return []


def _prepare_workdir(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    if config["mechanism"] == "root":
        os.chown(workdir, config["uid"], config["gid"])
    workdir.chmod(0o700)


# The launcher imported as a module, from its folder (argv[1]), so Python loads it from its bytecode cache
# (shared/__pycache__, written when a service imported shared.sandbox_launcher) instead of compiling its source at
# every start, as it does for a script: ~20 ms of CPU less per sandbox (a task run, a conversion, a worker), 55 ms
# -> 35 ms to the launcher's main() at load 1.4 (docs/orchestrations.md, "A run's start"). The folder leaves
# sys.path once the module is loaded, so what the launcher imports later finds what `-I -S` gives it, as before.
_LAUNCH = ("import sys; sys.path.append(sys.argv[1]); import sandbox_launcher; sys.path.pop(); "
           "sandbox_launcher.main()")


def _launcher_argv() -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _LAUNCH, str(LAUNCHER.parent)]


@functools.cache
def _probe(mechanism: str, user: str, data_dir: str) -> str | None:
    """Why a trivial program cannot run in a sandbox on this host, or None when it can (checked once)."""
    import tempfile

    settings = _settings()
    with tempfile.TemporaryDirectory(prefix="railyard-sandbox-probe-") as folder:
        spec = SandboxSpec(argv=[sys.executable, "-I", "-S", "-c", "pass"], workdir=Path(folder) / "work")
        config = _launch_config(spec, settings)
        _prepare_workdir(spec.workdir, config)
        Path(folder).chmod(0o755)
        probe = subprocess.run(_launcher_argv(), env={"RAILYARD_SANDBOX_LAUNCH": json.dumps(config)},
                               capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode == 0:
        return None
    return probe.stderr.strip()[-300:] or f"exit status {probe.returncode}"


def check_available(settings: Settings | None = None) -> str:
    """The mechanism this host isolates users' code with ("root+namespaces", "userns", or "off" when the
    operator opted out), or SandboxUnavailable saying why not and which setting overrides."""
    settings = settings or _settings()
    mechanism = _mechanism(settings.sandbox)
    if mechanism == "off":
        log.warning("RAILYARD_SANDBOX__MODE=off-for-single-user: users' code runs WITHOUT a sandbox (same OS "
                    "user, network and files as Railyard); only acceptable on a single-user machine")
        return "off"
    why = _probe(mechanism, settings.sandbox.user, str(settings.stack.data_dir))
    if why is not None:
        hint = ("this host allows no unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone, "
                "user.max_user_namespaces or an AppArmor restriction)" if mechanism == "userns"
                else "namespaces could not be created")
        raise SandboxUnavailable(
            f"users' code cannot be isolated here: {hint}: {why}. Run Railyard as root, allow user namespaces, "
            "or on a single-user machine set RAILYARD_SANDBOX__MODE=off-for-single-user")
    _warn_host_gaps()
    return "root+namespaces" if mechanism == "root" else "userns"


@functools.cache
def _warn_host_gaps() -> None:
    """Once a process (`check_available` runs at every `spawn`: every worker start, conversion and run): what this
    host's kernel and cgroups leave out of the sandbox."""
    for gap in quota_gaps():
        log.warning("the sandbox's disk quota cannot see %s on this kernel (%s): see docs/security.md, "
                    "\"Known gaps\"", gap, platform.release())
    if (why_not := memory_cgroup()[1]) is not None:
        log.warning("sandboxes get no memory cgroup here, so memory is limited per process (RLIMIT_AS) and not per "
                    "sandbox, and memfd files written without a mapping not at all: %s; run as root or delegate a "
                    "cgroup v2 subtree (systemd Delegate=yes): see docs/security.md, \"Known gaps\"", why_not)
    _warn_unbounded_processes()


# the machines whose system call numbers the launcher's seccomp filter knows (sandbox_launcher.py
# `refuse_io_uring_and_fallocate`: x86_64 with x32 and i386, aarch64, arm); on any other its program allows everything
SECCOMP_MACHINES = frozenset({"x86_64", "amd64", "i386", "i486", "i586", "i686", "aarch64", "arm64", "armv6l",
                              "armv7l", "armv8l"})


@functools.cache
def quota_gaps(fdinfo: str = "/proc/self/fdinfo/{fd}", machine: str | None = None) -> tuple[str, ...]:
    """What the disk quota's measurement cannot see on this kernel (checked once): descriptors in flight on unix
    sockets before Linux 5.7 (no `scm_fds` in fdinfo), descriptors sent to the gateway relay before 6.16 (no
    SO_PASSRIGHTS), and io_uring and fallocate on a machine the seccomp filter has no system call numbers for."""
    gaps = []
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in SECCOMP_MACHINES:
        gaps.append(f"files kept by io_uring, nor is fallocate refused (the seccomp filter knows no system call "
                    f"numbers of {machine or 'this machine'})")
    sender, receiver = socket.socketpair()
    read, write = os.pipe()
    try:
        socket.send_fds(sender, [b"x"], [read])
        with open(fdinfo.format(fd=receiver.fileno()), "rb") as handle:
            shown = b"scm_fds:" in handle.read()
    except OSError:
        shown = False
    finally:
        for end in (sender, receiver):
            end.close()
        os.close(read)
        os.close(write)
    if not shown:
        gaps.append("files kept by descriptors in flight on unix sockets (fdinfo shows them from Linux 5.7)")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
        except OSError:
            gaps.append("descriptors a task run sends to its gateway relay (refused from Linux 6.16)")
    return tuple(gaps)


# Connections one sandbox may have open through its gateway relay at once; more are answered 503 and closed. Every
# relay of a host (a Kubernetes pod: every run of one scheduler process, `tasks.max_runs_per_process`, 4) reaches the
# gateway from one address, and the gateway keeps `gateway.max_connections_per_source` (256) per address: without a
# cap one run held all 256 and the gateway refused every other run there, and on a loopback gateway every client of
# the host too (until 2026-12-05; tests/integration/test_sandbox_gateway_relay.py).
RELAY_CONNECTIONS = 32
RELAY_TRUSTED_DRAIN = 2.0  # seconds a refused run's request is read and dropped after the answer (below)


def relay_refusal(code: str, msg: str, *, retry: bool) -> bytes:
    """An answer of the relay's own, in the gateway's shape (services/gateway/errors.py): 503 with a typed
    `{"code", "msg"}` JSON body, `Retry-After: 1` when a retry can mend it, and the connection closed."""
    body = json.dumps({"code": code, "msg": msg}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n" + (b"retry-after: 1\r\n" if retry else b"")
            + b"\r\n" + body)


RELAY_REFUSED = relay_refusal(
    "too_many_gateway_connections",
    f"this task run has {RELAY_CONNECTIONS} connections to the gateway open, the most a run may hold at once: close "
    f"the ones it no longer uses, or send its requests through one client (one requests.Session or httpx.Client, "
    f"which reuses its connections) instead of a new connection each, and retry", retry=True)


def relay_source_trusted(address: str) -> bytes:
    """The answer to every connection of a run whose relay would reach the gateway from `address`, a trusted proxy's:
    not retryable, the operator has to change the setting."""
    return relay_refusal(
        "gateway_relay_trusted",
        f"task runs cannot reach the gateway here: their connections would come from {address}, which "
        f"RAILYARD_GATEWAY__TRUSTED_PROXIES lists, so a run could name any client address in X-Forwarded-For; "
        f"the operator should list only the reverse proxies' own addresses there, not this one", retry=False)


def _trusted(address: str, networks: list) -> bool:
    import ipaddress

    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return bool(networks)  # not an address: trusted or not cannot be told, so not relayed when any is set
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # as the gateway reads a peer (services/gateway/source_address.py, parse_address)
    return any(ip in network for network in networks)


# The addresses of numbered owners (relay_source's `number`: the task scheduler's relay_sources, one number an owner,
# allocated once): 127.1.0.0 up to 127.255.255.254 in order, so RELAY_NUMBERS owners get one each, no two alike. Not
# 127.0.0.0/16 (127.0.0.1, and what tests and operators use) nor 127.255.255.255 (the loopback's broadcast: it binds,
# but Linux then connects from 127.0.0.1), and a trusted proxy's addresses are skipped (the numbers after them move up)
RELAY_NUMBERED_FIRST = 0x7F010000  # 127.1.0.0
RELAY_NUMBERED_END = 0x7FFFFFFF  # 127.255.255.255, not one of them
RELAY_NUMBERS = RELAY_NUMBERED_END - RELAY_NUMBERED_FIRST  # 16,711,679


def relay_numbered_address(number: int, trusted: list) -> str | None:
    """The `number`-th address (from 0) of 127.1.0.0 .. 127.255.255.254 that no network of `trusted` (ip_network
    objects) holds; None past them (more numbered owners than addresses left). Distinct numbers give distinct
    addresses for one `trusted`."""
    import ipaddress

    if number < 0:
        return None
    last = RELAY_NUMBERED_END - 1
    spans = sorted((max(int(net.network_address), RELAY_NUMBERED_FIRST), min(int(net.broadcast_address), last))
                   for net in trusted if net.version == 4 and int(net.broadcast_address) >= RELAY_NUMBERED_FIRST
                   and int(net.network_address) <= last)
    merged: list[list[int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    candidate = RELAY_NUMBERED_FIRST + number
    for low, high in merged:  # each trusted span at or below the candidate moves it up past the span
        if low > candidate:
            break
        candidate += high - low + 1
    return str(ipaddress.IPv4Address(candidate)) if candidate <= last else None


def relay_source(host: str, key: str, trusted_proxies: list[str], number: int | None = None) -> str | None:
    """The address a relay connects to a loopback IPv4 gateway from, never in 127.0.0.0/16 (127.0.0.1, and what tests
    and operators use) nor in a trusted proxy's range (a sandbox could write its own X-Forwarded-For there). With
    `number` (the owner's own, allocated once by the task scheduler: store.relay_number), the number's address
    (relay_numbered_address): no two owners share one. Without it, or past the numbered addresses (over 16.7 million
    owners), 127.a.b.c from a digest of `key` (a task run's owner), which another key's may equal (24 bits: a pair in
    16.7 million). None (the system's choice) for a gateway that is not on IPv4 loopback, or when every candidate is
    trusted. The gateway then counts a tenant's runs on their own: one run's connections, token requests and failed
    sign-ins (the lock of `admin` from 127.0.0.1 included) reach no other tenant and no client of the host."""
    import hashlib
    import ipaddress

    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        return None
    if address.version != 4 or not address.is_loopback:
        return None
    trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]
    if number is not None:
        if (numbered := relay_numbered_address(number, trusted)) is not None:
            return numbered
        log.warning("task owner number %d is past the %d relay addresses of 127.1.0.0-127.255.255.254 not trusted: "
                    "its runs reach the gateway from an address of a digest of its id, which another owner's may "
                    "equal (docs/orchestrations.md)", number, RELAY_NUMBERS)
    for attempt in range(64):
        digest = hashlib.sha256(f"{attempt}:{key}".encode()).digest()
        if digest[0] == 0 or digest[:3] == b"\xff\xff\xff":  # 127.255.255.255, the broadcast: bound, Linux
            continue  # connects from 127.0.0.1 all the same
        candidate = ipaddress.IPv4Address(bytes((127,)) + digest[:3])
        if not any(candidate in net for net in trusted):
            return str(candidate)
    return None


async def _gateway_relay(settings: Settings, source_key: str = "",
                         source_number: int | None = None) -> tuple[asyncio.AbstractServer, Path]:
    """Network.GATEWAY_ONLY, host side: a unix socket (in a folder the sandbox sees read-only) whose every
    connection is relayed to the gateway's host:port and nowhere else, at most RELAY_CONNECTIONS at once, from
    `relay_source`'s address when the gateway is on loopback, and never from a trusted proxy's (`refuse_trusted`)."""
    import ipaddress
    import secrets
    import tempfile

    host = settings.gateway.host if settings.gateway.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    port = settings.gateway.port
    source = relay_source(host, source_key or secrets.token_hex(16), settings.gateway.trusted_proxies, source_number)
    if source is not None:
        # the whole 127.0.0.0/8 is the loopback's on Linux (the kernel's `local 127.0.0.0/8 dev lo` route, in this
        # service's own network namespace: nothing to set up), unless lo was given 127.0.0.1/32 alone: then every
        # relayed connection failed and the run could not reach the gateway at all; the system's choice instead
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((source, 0))
        except OSError as exc:
            log.warning("cannot connect to the gateway from %s (%s): this run's relay connects from the system's "
                        "choice of address, which the host's own clients share", source, exc)
            source = None
    local_addr = (source, 0) if source else None
    trusted = [ipaddress.ip_network(n, strict=False) for n in settings.gateway.trusted_proxies]
    open_now = 0
    running: set[asyncio.Task] = set()
    said_trusted = False
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="railyard-gateway-"))
    await asyncio.to_thread(folder.chmod, 0o755)  # the sandbox's user must reach the socket
    path = folder / "gateway.sock"

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ended=None) -> None:
        """`reader`'s bytes to `writer` until its end, then its end (a half-close), after calling `ended`."""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        if ended is not None:
            ended()
        with contextlib.suppress(ConnectionError, OSError):
            if writer.can_write_eof():
                writer.write_eof()

    async def refuse_trusted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        """The gateway believes X-Forwarded-For from a trusted proxy: a run whose connections came from one could
        write its own and be counted as any client (anyone's token buckets and failed sign-ins, another tenant's
        address, a lock of any user from anywhere). Refused instead, saying why; what it sent meanwhile is read and
        dropped for RELAY_TRUSTED_DRAIN, so that its client reads the answer rather than a reset."""
        nonlocal said_trusted
        if not said_trusted:  # once per run
            said_trusted = True
            log.error("a task run's connections to the gateway would come from %s, which gateway.trusted_proxies "
                      "(RAILYARD_GATEWAY__TRUSTED_PROXIES) lists: a run could write its own X-Forwarded-For and be "
                      "counted as any client, so they are refused (503 gateway_relay_trusted); list only the reverse "
                      "proxies' own addresses there", address)
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(relay_source_trusted(address))
            writer.write_eof()
            async with asyncio.timeout(RELAY_TRUSTED_DRAIN):
                while await reader.read(65536):
                    pass

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        if open_now >= RELAY_CONNECTIONS:  # answered and closed at once: nothing of it is held here
            with contextlib.suppress(OSError):
                writer.write(RELAY_REFUSED)
            writer.close()
            return
        open_now += 1
        counted = True
        # held here while it runs: once the run has half-closed its end, nothing else refers to this task (asyncio's
        # streams hold their reader weakly), and the garbage collector destroyed it mid-answer
        running.add(asyncio.current_task())

        def free() -> None:
            """The slot is given back once, as soon as the connection is over for the gateway: before the run can
            read the gateway's end (so a client that reconnects at once, as a pool does, is not refused for a slot
            the closed one still held) and before the run has closed its own end."""
            nonlocal open_now, counted
            if counted:
                counted = False
                open_now -= 1

        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port, local_addr=local_addr)
            except OSError:
                writer.close()
                return
            try:
                # the address the gateway sees, as connected (the system's choice included: the fallback above, a
                # gateway off loopback, 127.0.0.1 when every candidate of relay_source was trusted)
                own = upstream_writer.get_extra_info("sockname")
                if trusted and (own is None or _trusted(str(own[0]), trusted)):
                    upstream_writer.close()  # nothing of the run's was sent on it
                    await refuse_trusted(reader, writer, str(own[0]) if own else "an unknown address")
                    return
                # the gateway's end (it closed the connection: its idle timeout, `Connection: close`, a reset) ends
                # the connection: the slot is free at once and both sides are closed, whether or not the run has
                # closed its end (a pooled client keeps an idle one open until it next uses it). Until 2026-12-05
                # both directions were awaited, so a connection the gateway had closed counted against the run's
                # RELAY_CONNECTIONS until the run closed it too. The run's own end alone (a half-close) does not end
                # it: the gateway's answer still comes back.
                up = asyncio.ensure_future(pipe(reader, upstream_writer))
                try:
                    await pipe(upstream_reader, writer, ended=free)
                finally:
                    up.cancel()  # what the run sends from now on has nowhere to go
            finally:
                writer.close()
                upstream_writer.close()
        finally:
            free()
            running.discard(asyncio.current_task())

    server = await asyncio.start_unix_server(relay, path=str(path))
    for listening in server.sockets:  # code in the sandbox can connect to it directly: refuse descriptors on it
        with contextlib.suppress(OSError):  # (kernels older than 6.16 cannot: docs/security.md, "Known gaps")
            listening.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
    path.chmod(0o666)  # the sandbox's identity connects to it
    return server, folder


async def _remove_cgroup(process: asyncio.subprocess.Process, config: dict) -> None:
    """Once the launcher has ended, its sandbox's cgroups go too (its memory cgroup; on v1 its pids cgroup): the
    launcher removes them itself, but not when it was killed with SIGKILL (`kill`); then what is left in them is
    killed here (the sandbox's processes die with its init, which dies with the launcher, a moment later)."""
    await process.wait()
    groups: list[tuple[str, sandbox_launcher.Cgroup]] = []
    if "cgroup" in config:
        groups.append(("memory", sandbox_launcher.MemoryCgroup(config["cgroup"]["version"], config["cgroup"]["path"])))
    if "pids_cgroup" in config:
        groups.append(("pids", sandbox_launcher.PidsCgroup(config["pids_cgroup"]["path"])))

    def remove() -> list[tuple[str, sandbox_launcher.Cgroup]]:
        return [(kind, group) for kind, group in groups if not group.remove()]

    # one thread for both: cancelled meanwhile (a loop shutting down), this task stops waiting but the thread goes on
    # (one await per cgroup left the pids cgroup behind whenever the cancel came during the memory cgroup's)
    for kind, group in await asyncio.to_thread(remove):
        log.warning("the sandbox %s cgroup %s could not be removed (the next start sweeps it)", kind, group.path)


async def _close_relay(process: asyncio.subprocess.Process, server: asyncio.AbstractServer, folder: Path) -> None:
    try:
        await process.wait()
    finally:
        server.close()
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


async def spawn(spec: SandboxSpec, *, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, settings: Settings | None = None) -> asyncio.subprocess.Process:
    """Start `spec.argv` in a sandbox; the process returned is its launcher (killing it kills the sandbox).
    `spec.limits.wall_seconds` is not enforced here: the caller of a long-lived worker times its requests."""
    settings = settings or _settings()
    await asyncio.to_thread(check_available, settings)
    config = _launch_config(spec, settings)
    await asyncio.to_thread(_prepare_workdir, spec.workdir, config)
    relay = None
    if spec.network is Network.GATEWAY_ONLY and config["mechanism"] != "off":
        relay = await _gateway_relay(settings, spec.source_key, spec.source_number)
        config["readonly"].append(str(relay[1]))
        config["gateway"] = {"socket": str(relay[1] / "gateway.sock"), "port": settings.gateway.port}
    verdict, config["verdict_fd"] = os.pipe()  # the launcher's verdict (quota, setup), out of the tenant's reach
    os.set_blocking(verdict, False)
    try:
        process = await asyncio.create_subprocess_exec(
            *_launcher_argv(), stdin=stdin, stdout=stdout, stderr=stderr, limit=_STREAM_LIMIT,
            env={"RAILYARD_SANDBOX_LAUNCH": json.dumps(config)}, start_new_session=True,
            pass_fds=(config["verdict_fd"],))
    except BaseException:
        os.close(verdict)
        if relay is not None:
            relay[0].close()
        raise
    finally:
        os.close(config["verdict_fd"])
    process._railyard_verdict = _Verdict(verdict)  # type: ignore[attr-defined]
    if "cgroup" in config or "pids_cgroup" in config:
        process._railyard_cgroup = asyncio.create_task(_remove_cgroup(process, config))  # type: ignore[attr-defined]
    if relay is not None:
        process._railyard_relay = asyncio.create_task(_close_relay(process, *relay))  # type: ignore[attr-defined]
    return process


def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL a sandbox's launcher, which takes the whole sandbox with it. (Not `process.kill()`: it polls
    first, and a poll that reaps an exited launcher leaves asyncio's child watcher reporting status 255.)"""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


class _Verdict:
    """The read end of a launcher's verdict pipe: what it says once the launcher has ended (then closed)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self.said = b""

    def read(self) -> bytes:
        if self.fd is not None:
            try:
                self.said = os.read(self.fd, 64)
            except BlockingIOError:  # nothing said (every write end is closed once the launcher has ended)
                self.said = b""
            finally:
                os.close(self.fd)
                self.fd = None
        return self.said

    def __del__(self) -> None:  # a process nobody asked about (a replaced engine worker): its pipe still closes
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)


def _launcher_verdict(process: asyncio.subprocess.Process) -> str | None:
    """What the launcher of a `spawn`ed process wrote on its verdict pipe (the sandbox never holds it), "" for
    nothing; None while the process runs or when it was not started by `spawn`."""
    verdict = getattr(process, "_railyard_verdict", None)
    if verdict is None or process.returncode is None:
        return None
    return verdict.read().decode(errors="replace")


def quota_verdict(process: asyncio.subprocess.Process) -> str | None:
    """The limit ("disk_bytes", "disk_files", "fds_in_flight"; "memory" when the OOM killer acted in its memory
    cgroup; "processes" when it failed after its pids.max refused a fork or thread) the launcher of a `spawn`ed
    process stopped its sandbox for, as the launcher wrote it on a pipe the sandbox never holds; None while it runs,
    when it ended otherwise, or when it was not started by `spawn`. The exit status and stderr are the user's code's
    to choose, so they never decide it."""
    said = _launcher_verdict(process)
    return said if said in VERDICT_LIMITS else None


def setup_failed(process: asyncio.subprocess.Process) -> bool:
    """Whether the launcher of a `spawn`ed process (ended) says it could not build the sandbox, on the verdict pipe
    the sandbox never holds. Exit status 125 and "railyard-sandbox:" on stderr are the code's to choose as well (a
    pickle under conversion could print them), so they never decide it."""
    return _launcher_verdict(process) == SETUP_VERDICT


def setup_failure(process: asyncio.subprocess.Process, stderr: str) -> SandboxUnavailable | None:
    """The error to raise when the launcher of a `spawn`ed process (ended) could not build the sandbox
    (`setup_failed`), naming the end of `stderr`, where the launcher said why; None otherwise. Returned, not
    raised, so a caller inside an `except` chooses the chain (`raise failure from None`)."""
    if not setup_failed(process):
        return None
    return SandboxUnavailable(f"the sandbox could not be set up: {stderr.strip()[-300:]}")


def limit_hit(returncode: int, stderr_tail: str, limits: Limits, quota: str | None = None) -> str | None:
    """Which limit ended a sandboxed process: `quota`, the launcher's verdict (`quota_verdict`), when it gave
    one; otherwise read from how it ended and the end of its stderr. A "processes" verdict (it failed after a
    refused fork, which it may have handled) yields to the file size limit when its stderr ends on Python's error
    for it: Python ignores SIGXFSZ, so a write past the limit fails with OSError 'File too large' and the code
    exits 1, which the launcher cannot tell from any other failure (the signal case, `OTHER_LIMITS` there). The
    code could as well die of SIGXFSZ to be told so: the words give it nothing more."""
    if quota == "processes" and "File too large" in stderr_tail:
        return "file_size"
    if quota in VERDICT_LIMITS:
        return quota
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "cpu"
    if returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "File too large" in stderr_tail:
        return "file_size"
    if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail or "bad_alloc" in stderr_tail:
        return "memory"
    if "BlockingIOError" in stderr_tail or "Resource temporarily unavailable" in stderr_tail:
        return "processes"
    if returncode == -signal.SIGKILL:
        return "memory"  # killed by the kernel: the out-of-memory killer (the CPU limit sends SIGXCPU first)
    return None


LIMIT_REASONS = {  # the one wording of each limit: the registry, the engine, task runs and the launcher use it
    "memory": "it needed more memory than {by} allows ({memory_mib} MiB)",
    "cpu": "it used more CPU time than {by} allows ({cpu_seconds} s)",
    "wall_time": "it did not finish within {wall_seconds:g} s",
    "file_size": "it wrote a file larger than {by} allows ({file_size_mib} MiB)",
    "processes": "it started more processes or threads than {by} allows ({processes})",
    "disk_bytes": "the sandbox's disk quota of {disk_mib} MiB was exceeded (what its working directory may grow by; "
                  "write less, or delete what is no longer needed)",
    "disk_files": "the sandbox's file quota of {disk_files} files was exceeded (how many files and directories its "
                  "working directory may gain; write fewer, larger files)",
    "fds_in_flight": "it kept file descriptors in flight on a unix socket (sent with SCM_RIGHTS and not received) "
                     "for more than {in_flight_seconds:g} s, which would hide deleted files from the sandbox's disk "
                     "quota; receive descriptors as soon as they are sent",
}


def describe_limit(hit: str, limits: Limits, *, by: str = "the sandbox") -> str:
    """A sentence for the user naming the limit `hit` (as `limit_hit` returns it) and its value; `by` names who
    sets it ("the registry")."""
    if hit not in LIMIT_REASONS:
        return f"the sandbox's {hit} limit was exceeded"
    return LIMIT_REASONS[hit].format(
        by=by, memory_mib=limits.memory_bytes >> 20, cpu_seconds=limits.cpu_seconds,
        wall_seconds=limits.wall_seconds or 0, file_size_mib=limits.file_size_bytes >> 20,
        processes=limits.processes, disk_mib=limits.disk_bytes >> 20, disk_files=limits.disk_files,
        in_flight_seconds=limits.in_flight_seconds)


def stderr_excerpt(data: bytes, limit: int = STDERR_TAIL) -> str:
    """The last `limit` characters of a sandboxed process's stderr, decoded leniently."""
    text = data.decode(errors="replace")
    return text[-limit:]


async def run(spec: SandboxSpec, *, input: bytes | None = None, settings: Settings | None = None) -> SandboxResult:  # noqa: A002
    """Run `spec.argv` to completion in a sandbox, killing it after `spec.limits.wall_seconds`."""
    process = await spawn(spec, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                          settings=settings)
    timed_out = False
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the output when the process ends in the step
        # a cancel comes (bpo-42130), and the cancel was lost (a registry stop's cancelled conversion went on to its
        # next sandboxed step, the stop waiting for it)
        async with asyncio.timeout(spec.limits.wall_seconds):
            stdout, stderr = await process.communicate(input)
    except TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            kill(process)
        stdout, stderr = await process.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            kill(process)
        await process.wait()
        raise
    if (removing := getattr(process, "_railyard_cgroup", None)) is not None:
        await removing  # gone before the result is: nothing of the sandbox outlives `run`
    tail = stderr_excerpt(stderr)
    if failure := setup_failure(process, tail):  # the launcher's verdict, never the status or stderr
        raise failure
    hit = "wall_time" if timed_out else limit_hit(process.returncode, tail, spec.limits, quota_verdict(process))
    return SandboxResult(returncode=process.returncode, stdout=stdout, stderr_tail=tail, limit_hit=hit)
