"""Starting the real embedded stack for tests: `railyard up` in a temporary data directory, on ports
picked free on 127.0.0.1 so a developer's own `make run` stack is never touched."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.embedded.servers import GRPC_OFFSET, weed_grpc_socket
from shared.embedded.stack import pid_alive, port_free, read_state
from shared.settings import AuthSettings, GatewaySettings, NatsSettings, PostgresSettings, S3Settings, Settings

REPO = Path(__file__).resolve().parent.parent

PORT_NAMES = ("NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "S3_PORT", "WEED_MASTER_PORT",
              "WEED_VOLUME_PORT", "WEED_FILER_PORT")
NEEDS_GRPC = {"S3_PORT", "WEED_MASTER_PORT", "WEED_VOLUME_PORT", "WEED_FILER_PORT"}
PLANTED_WEED_KEY = "planted-in-the-callers-environment-32-bytes"


def ephemeral_ports() -> range:
    """The ports the kernel hands out to outgoing connections (net.ipv4.ip_local_port_range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def port_range() -> range:
    """Where a test stack's ports are picked: the 10,000 ports that lie 20,000 below the kernel's ephemeral range
    (by default 12768-22767; their gRPC ports, +10000, in 22768-32767), or under pytest-xdist (`make test`) a
    slice of those per worker, so two workers' stacks starting at the same moment never pick the same port (their
    gRPC ports fall in slices no other worker picks from either).

    Below the ephemeral range because any outgoing connection on the machine (a test's HTTP client, a service's
    pool, one in TIME_WAIT for a minute) may take an ephemeral port as its local port, and a server can then not
    bind it: a port checked free at pick time was taken before SeaweedFS bound its gRPC port (+10000 fell in
    30000-39999, inside 32768-60999), which then exited at start, or at the next start in the same directory."""
    top = min(ephemeral_ports().start, 65536)
    if top - 2 * GRPC_OFFSET < 1024:  # an unusual ephemeral range: the old fixed range
        base = 20000
    else:
        base = top - 2 * GRPC_OFFSET
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if count < 2 or not worker.startswith("gw") or not worker[2:].isdigit():
        return range(base, base + GRPC_OFFSET)
    width = GRPC_OFFSET // count
    start = base + int(worker[2:]) % count * width
    return range(start, start + width)


# Ports picked here are leased across processes until the picking process releases them (RunningStack.stop), dies,
# or LEASE_SECONDS pass: a port checked free is only bound by the stack seconds later, and two processes picking at
# once (xdist workers of two sessions, a bench's stack beside a test's) could take each other's ports: a gateway
# then crash-looped on a port the other stack had bound, silently (wait_healthy now fails on it). Once the stack
# has bound what it picked, port_free keeps it from being picked again.
PORT_LEASES = Path(tempfile.gettempdir()) / "railyard-test-ports"
LEASE_SECONDS = 600.0


def free_ports(count: int, with_grpc: set[int] = frozenset()) -> list[int]:
    """`count` distinct free ports of port_range(); those at indexes in with_grpc also have port+10000 free. Each is
    leased to this process (PORT_LEASES) so no other process picks it before the stack binds it."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    ports = port_range()
    chosen: list[int] = []
    with _leases_locked() as leases:
        _drop_ended_leases(leases)
        draws = max(20 * len(ports), 1000)
        while len(chosen) < count:
            draws -= 1
            if draws < 0:
                raise RuntimeError(f"no {count} free ports in {ports} (bound or leased in {leases})")
            port = rng.randrange(ports.start, ports.stop)
            needed = [port] + ([port + GRPC_OFFSET] if len(chosen) in with_grpc else [])
            taken = set(chosen) | {p + GRPC_OFFSET for p in chosen}
            if any(p in taken or not _lease_free(leases, p) for p in needed) \
                    or not all(port_free("127.0.0.1", p) for p in needed):
                continue
            if not _lease_all(leases, needed):  # another user's ended lease this user may not remove
                continue
            chosen.append(port)
    return chosen


def release_ports(ports: Iterator[int] | list[int]) -> None:
    """End this process's leases of `ports` (and of their port+10000), as a stopped stack no longer needs them."""
    with _leases_locked() as leases:
        if leases is None:
            return
        for port in ports:
            for p in (port, port + GRPC_OFFSET):
                path = leases / str(p)
                with contextlib.suppress(OSError, ValueError):
                    if _read_lease(path)[0] == os.getpid():
                        path.unlink()


@contextlib.contextmanager
def _leases_locked() -> Iterator[Path | None]:
    """The lease folder, locked against other processes picking at the same moment (a pick takes milliseconds); None
    when it cannot be used (a link, another user's folder a version before session 37 made 1755, a lock flock
    refuses): then ports are picked as before, checked free only. Shared by every user of the host, as /tmp is
    (1777: ports are the host's, so one user's runs must not take another's picked ports either); mkdir's mode is
    cut by the umask, so its maker sets it (it was 1755 under umask 022: a second user running the suite could open
    neither the lock nor a lease)."""
    try:
        PORT_LEASES.mkdir(mode=0o1777, exist_ok=True)
        # a folder in /tmp anyone may have made: not followed if it is a link, nor are the links planted in it (a
        # lease written through one would overwrite whatever file it names)
        descriptor = os.open(PORT_LEASES, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            folder = os.fstat(descriptor)
            if folder.st_uid == os.geteuid() and stat.S_IMODE(folder.st_mode) != 0o1777:
                os.fchmod(descriptor, 0o1777)  # (the folder opened: not a link put in its place meanwhile)
        finally:
            os.close(descriptor)
        # one this user may not write in (another user's, made 1755 by a version before session 37): no lease
        # could be made, and every pick would be refused
        if not os.access(PORT_LEASES, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            raise PermissionError(PORT_LEASES)
        handle = _open_lock(PORT_LEASES / ".lock")
    except OSError:
        yield None
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:  # (NFS: flock is a POSIX lock there, which a descriptor opened read-only cannot take)
        handle.close()
        yield None
        return
    try:
        yield PORT_LEASES
    finally:
        handle.close()  # and the lock with it


def _lease_free(leases: Path | None, port: int) -> bool:
    """No live lease on `port`: none, or one whose process is gone or which is too old. This process's own leases
    hold too (two stacks it starts one after the other must not share the first one's ports before it binds them)."""
    if leases is None:
        return True
    try:
        pid, written = _read_lease(leases / str(port))
    except (OSError, ValueError):
        return True
    age = time.time() - written
    return not 0 <= age <= LEASE_SECONDS or not pid_alive(pid)  # a lease from the future would never expire


def _read_lease(path: Path) -> tuple[int, float]:
    """A lease file's pid and time. Any user may make files in the folder: one that is not a regular file (a link, a
    FIFO, whose open would wait for a writer) is not a lease (ValueError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "r") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a file")
        return int(handle.read(32) or 0), info.st_mtime


def _drop_ended_leases(leases: Path | None) -> None:
    """The lease files of ended leases removed (their process gone, or too old), wherever in the folder: a lease is
    ended by its file's removal only when its stack is stopped by RunningStack.stop, and `make test`'s session stacks
    are stopped by another process (tests/stack_stop_later.py) after the worker is gone, so each run left ~24 files
    behind and a CI host running every session's CI gathered them (up to one a port of the range). Called with the
    folder locked; a few hundred files at most, read in about a millisecond."""
    if leases is None:
        return
    with contextlib.suppress(OSError):
        for entry in os.scandir(leases):
            if entry.name.isdigit() and _lease_free(leases, int(entry.name)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _open_lock(path: Path):
    """The lease folder's lock file, opened for reading and writing where this user may (flock on NFS is a POSIX lock,
    which needs a descriptor open for writing), else for reading (a local flock needs no more, and every user may
    read it), made if it is not there. Opened without O_CREAT first: with fs.protected_regular, an O_CREAT open of a
    file in a sticky folder that neither the opener nor the folder's owner owns is refused even when the file is
    there."""
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # (a FIFO planted there: opened, not waited on)
    for _ in range(10):
        try:
            try:
                return os.fdopen(os.open(path, flags | os.O_RDWR), "r")
            except PermissionError:  # another user's
                return os.fdopen(os.open(path, flags | os.O_RDONLY), "r")
        except FileNotFoundError:
            pass
        try:
            return os.fdopen(os.open(path, flags | os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), "r")
        except FileExistsError:  # made by another process meanwhile
            continue
    raise FileExistsError(path)


def _lease_all(leases: Path | None, ports: list[int]) -> bool:
    """Lease every one of `ports` (checked free: no live lease) to this process, or none (False)."""
    done: list[int] = []
    for port in ports:
        if not _lease(leases, port):
            for leased in done:
                with contextlib.suppress(OSError):
                    os.unlink(leases / str(leased))
            return False
        done.append(port)
    return True


def _lease(leases: Path | None, port: int) -> bool:
    """Lease `port` (no live lease on it) to this process: its ended lease file (or a link planted there) removed, a
    new one made (never written through a link). False when that cannot be done: an ended lease of another user,
    which the folder's sticky bit keeps (that user's next pick removes it)."""
    if leases is None:
        return True
    path = leases / str(port)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    with contextlib.suppress(OSError), os.fdopen(fd, "w") as handle:  # (a pid not written, a full disk: the file
        handle.write(str(os.getpid()))  # reads as an ended lease, as before)
    return True


# the test stack's (stack_env): a replica that answered before keeps its Running while its status probes go
# unanswered for 5 s, not 10 (test_deploy_busy_status.py holds one with SIGSTOP until its status reads say Starting);
# the liveness bound above that hold (held 5.2 s at load 7-8; 10.0 s at load 17 with the 10 s default), which must not
# get it replaced
DEPLOYER_SILENT_KEPT_FOR = 5.0
DEPLOYER_LIVENESS_TIMEOUT, DEPLOYER_LIVENESS_PROBES = 10, 3


def stack_env(data_dir: Path) -> dict[str, str]:
    """Environment for `railyard up` on fresh free ports."""
    names = list(PORT_NAMES) + ["GATEWAY"]
    ports = free_ports(len(names), {i for i, n in enumerate(names) if n in NEEDS_GRPC})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    env["RAILYARD_STACK__DATA_DIR"] = str(data_dir)
    # brute-force protection and body limit scaled down so their tests run in seconds
    # 0.5 s per failure: well above the noise of an argon2 check on a loaded machine (±0.5 s seen at load 40)
    env["RAILYARD_AUTH__FAILED_LOGIN_DELAY"] = "0.5"
    env["RAILYARD_AUTH__LOCKOUT_AFTER"] = "5"
    # argon2id at its cheapest (still argon2id, still checked): every test creates users and logs them in, and
    # the default cost (64 MiB, 3 passes, ~0.1 s idle, ~0.5 s loaded) per invite and per login added up to minutes
    env["RAILYARD_AUTH__PASSWORD_HASH_TIME_COST"] = "1"
    env["RAILYARD_AUTH__PASSWORD_HASH_MEMORY_KIB"] = "64"
    env["RAILYARD_AUTH__PASSWORD_HASH_PARALLELISM"] = "1"
    env["RAILYARD_GATEWAY__MAX_BODY_BYTES"] = str(16 * 1024 * 1024)
    env["RAILYARD_GATEWAY__MAX_UPLOAD_BYTES"] = str(256 * 1024 * 1024)
    env["RAILYARD_GATEWAY__BODY_TIMEOUT"] = "5"  # a trickled body is refused after 5 s (test_gateway_abuse.py)
    # requests from 127.0.0.5 come "through a reverse proxy": X-Forwarded-For names the source (test_gateway_abuse)
    env["RAILYARD_GATEWAY__TRUSTED_PROXIES"] = "127.0.0.5"
    # log rows above 64 KiB lose columns; replaced segments go after 1 s, fresh ones may be compacted at once
    env["RAILYARD_LOGS__MAX_ROW_BYTES"] = str(64 * 1024)
    env["RAILYARD_LOGS__SUPERSEDED_GRACE"] = "1"
    env["RAILYARD_LOGS__COMPACT_MIN_AGE"] = "0"
    # compaction runs when a test asks for it: with fresh segments compactable at once, the 60-s timer pass could
    # merge a test's segments just before its own pass and leave it nothing to report (test_log_order.py)
    env["RAILYARD_LOGS__MAINTENANCE_INTERVAL"] = "86400"
    env["RAILYARD_LOGS__PAGE_MAX_BYTES"] = str(1024 * 1024)  # a get_logs page holds at most 1 MiB of rows
    # what a killed log store held comes back after 5 s, not 30 (test_logs.py kills it); a flush takes well under
    # that even loaded, and a redelivery of a committed batch is refused as a duplicate anyway
    env["RAILYARD_LOGS__ACK_WAIT"] = "5"
    # a batch of a deployment not announced yet comes back 0.5 s later, then 1, 2, 4 ... s, not 2, 4, 8 ...: the tests
    # holding batches for a late announcement (test_log_owners.py, test_log_held_two_stores.py) wait 10.5 s, not 16
    env["RAILYARD_LOGS__UNKNOWN_RETRY"] = "0.5"
    # a due window waiting for the log store is looked at again every 0.25 s, not every 1 s, and a window due sooner
    # than a tick after a pass waits one: test_assays.py's windows are scored sooner (its held window is still checked
    # held 3 s past due, not 3 ticks: b04024f3)
    env["RAILYARD_ASSAYS__TICK"] = "0.25"
    # an event whose handler keeps failing is redelivered 0.1, 0.2, 0.4 ... 2, 2 s later, not 2, 4 ... 300: its 10
    # deliveries and dead letter take about 11 s (tests/integration/test_dead_letters.py waits them out), still longer
    # than a test keeps a consumer's dependency away (a service restarted), which the default 13 minutes are for
    env["RAILYARD_NATS__CONSUMER_BACKOFF"] = "0.1"
    env["RAILYARD_NATS__CONSUMER_BACKOFF_MAX"] = "2"
    # users' code: a hanging step is stopped after 5 s, a file above 64 MiB refused
    # (tests/integration/test_sandbox_hostile.py)
    env["RAILYARD_SANDBOX__WALL_SECONDS"] = "5"
    env["RAILYARD_SANDBOX__FILE_SIZE_MB"] = "64"
    # an autoscaled deployment retires an idle replica 4 s after it last scaled, not 10 (test_pipelines.py)
    env["RAILYARD_DEPLOYER__SCALE_DOWN_AFTER"] = "4"
    # a replica whose status probes go unanswered for 5 s (3 in a row) reads Starting, not after 10 s, and for 10 s
    # (3 in a row) is hung: killed and replaced, not after 60 s (test_deploy_busy_status.py holds one with SIGSTOP, and
    # loads another for longer than that)
    env["RAILYARD_DEPLOYER__SILENT_KEPT_FOR"] = str(DEPLOYER_SILENT_KEPT_FOR)
    env["RAILYARD_DEPLOYER__LIVENESS_TIMEOUT"] = str(DEPLOYER_LIVENESS_TIMEOUT)
    env["RAILYARD_DEPLOYER__LIVENESS_PROBES"] = str(DEPLOYER_LIVENESS_PROBES)
    # the registry's sandboxed checks and conversions: limits small enough that hostile uploads end in seconds
    env["RAILYARD_REGISTRY__WORKER_TIMEOUT"] = "45"  # a normal conversion: 4 s idle, 20 s on a loaded machine
    # ...but 2.2-2.9 s of CPU (sklearn, XGBoost; an ONNX check ~0.45 s) however loaded the machine is (session 40, load
    # 6-11), so a spinning one is stopped on CPU long before 45 s (test_conversion_hostile.py). Not lower: 5 s saved
    # ~3 s a run, but left a slower host (session 35's spent twice this VM's CPU a request) no margin
    env["RAILYARD_REGISTRY__WORKER_CPU_SECONDS"] = "8"
    env["RAILYARD_REGISTRY__WORKER_MEMORY_MB"] = "1024"
    env["RAILYARD_REGISTRY__WORKER_FILE_SIZE_MB"] = "64"
    env["RAILYARD_REGISTRY__WORKER_DISK_MB"] = "256"  # many files of 60 MiB are stopped at 256 (the hostile test)
    env["RAILYARD_TASKS__RUN_DISK_MB"] = "128"  # a run filling its working directory (test_orchestrations.py)
    # a SeaweedFS setting in the caller's environment (viper reads WEED_*) must not reach the stack's SeaweedFS: were
    # it honoured, the volume server would take tokens signed with this key (test_storage_ports.py)
    env["WEED_JWT_SIGNING_READ_KEY"] = PLANTED_WEED_KEY
    for name, port in zip(names, ports, strict=True):
        key = "RAILYARD_GATEWAY__PORT" if name == "GATEWAY" else f"RAILYARD_STACK__{name}"
        env[key] = str(port)
    return env


@dataclass
class RunningStack:
    """A started stack: how to reach it and its supervisor process."""

    process: subprocess.Popen
    data_dir: Path
    env: dict[str, str]
    output: Path
    log_sizes: dict[str, int] = field(default_factory=dict)  # the services' logs at start: what came before is old

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.env['RAILYARD_GATEWAY__PORT']}/v1/api"

    def state(self) -> dict:
        return json.loads((self.data_dir / "run" / "stack.json").read_text())

    def secrets(self) -> dict:
        return json.loads((self.data_dir / "secrets.json").read_text())

    @property
    def weed_ports(self) -> dict[str, int]:
        """SeaweedFS's own ports (`master`, `volume`, `filer`, and each with `-grpc`), the S3 gateway's aside."""
        ports = {name: int(self.env[f"RAILYARD_STACK__WEED_{name.upper()}_PORT"])
                 for name in ("master", "volume", "filer")}
        return {**ports, **{f"{name}-grpc": port + GRPC_OFFSET for name, port in ports.items()}}

    def settings(self) -> Settings:
        """Settings as the services see them (same URLs and credentials)."""
        secrets = self.secrets()
        env = self.env
        return Settings(
            nats=NatsSettings(url=self.nats_url("ops")),  # the operator's identity: every subject
            postgres=PostgresSettings(
                dsn=f"postgresql://railyard:{secrets['postgres_password']}@127.0.0.1:"
                f"{env['RAILYARD_STACK__POSTGRES_PORT']}/railyard"
            ),
            s3=S3Settings(endpoint=f"127.0.0.1:{env['RAILYARD_STACK__S3_PORT']}",
                          access_key=secrets["s3_access_key"], secret_key=secrets["s3_secret_key"]),
            gateway=GatewaySettings(port=int(env["RAILYARD_GATEWAY__PORT"])),
            auth=AuthSettings(),
        )

    def nats_url(self, identity: str) -> str:
        """The NATS URL with a bus identity's credentials in it (`ops`: everything; `client`: the front door)."""
        password = self.secrets()[f"nats_password_{identity}"]
        return f"nats://{identity}:{password}@127.0.0.1:{self.env['RAILYARD_STACK__NATS_PORT']}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['RAILYARD_GATEWAY__PORT']}"

    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.api}/health", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            return 0, {}

    def wait_healthy(self, timeout: float = 120.0) -> dict:
        """The health report once every service answers. Fails at once, naming the process and the port, when a
        server or service of this stack cannot bind its port (the supervisor would restart it forever and the
        health check never answer), or when what answers on the gateway's port is not this stack's gateway."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"railyard up exited with {self.process.returncode}:\n{self.output.read_text()}")
            failures = self.bind_failures()
            if failures:
                raise RuntimeError("a port of this stack is taken by another process (a concurrent stack?): "
                                   + "; ".join(failures) + f"\n{self.output.read_text()[-3000:]}")
            status, body = self.health()
            if status == 200:
                self._check_gateway_is_ours()
                return body
            time.sleep(0.2)
        raise RuntimeError(f"stack not healthy after {timeout}s:\n{self.output.read_text()}")

    def bind_failures(self) -> list[str]:
        """`<process>: <its log line>` for each server or service of this stack whose log says, since this stack
        started, that its address was already in use."""
        found = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            with contextlib.suppress(OSError), open(log, "rb") as handle:
                handle.seek(self.log_sizes.get(log.name, 0))
                for line in handle.read().decode(errors="replace").splitlines():
                    if "address already in use" in line.lower():
                        found.append(f"{log.stem}: {line.strip()[:300]}")
                        break
        return found

    def _check_gateway_is_ours(self) -> None:
        """The process listening on the gateway's port is one of this stack's (the supervisor's descendants)."""
        import psutil

        port = int(self.env["RAILYARD_GATEWAY__PORT"])
        try:
            listeners = {c.pid for c in psutil.net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
            ours = {self.process.pid} | {p.pid for p in psutil.Process(self.process.pid).children(recursive=True)}
        except (psutil.Error, OSError):
            return
        if listeners and None not in listeners and not listeners & ours:  # None: not allowed to see the owner
            raise RuntimeError(f"the gateway port {port} is held by pid {sorted(listeners)}, not by this stack: "
                               f"another stack answered its health check\n{self.output.read_text()[-3000:]}")

    def leftovers(self) -> list[str]:
        """What a stopped stack must not leave behind: a process running from its data directory, its state file,
        PostgreSQL's pid file (a killed PostgreSQL's), SeaweedFS's Unix sockets (in the data directory and /tmp)."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(self.data_dir) in " ".join(proc.info["cmdline"] or ()) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(f"process {proc.info['pid']}: {' '.join(proc.info['cmdline'])[:120]}")
        grpc = [weed_grpc_socket(name.removesuffix("-grpc"), port) for name, port in self.weed_ports.items()
                if name.endswith("-grpc")]
        grpc.append(weed_grpc_socket("s3", int(self.env['RAILYARD_STACK__S3_PORT']) + GRPC_OFFSET))
        files = [self.data_dir / "run" / "stack.json", self.data_dir / "postgres" / "postmaster.pid",
                 *(self.data_dir / "run").glob("*.sock"), *map(Path, grpc)]
        found += [str(path) for path in files if path.exists()]
        return found

    def stop(self) -> int:
        stop_process(self.process, 90)
        release_ports(self.ports())
        return self.process.returncode

    def lease_ports_again(self) -> None:
        """This stack's ports and their gRPC ports leased to this process afresh, before a stop that start_again
        follows: a lease ends LEASE_SECONDS after its pick, and the session's stack is minutes old when
        test_restart.py stops it, so between that stop and the start its ports were free for any other process's
        pick (a bound port is never picked; a stopped stack's are not bound). A port another live process leased
        meanwhile stays its (the start's wait_healthy then names the clash)."""
        grpc = [int(self.env[f"RAILYARD_STACK__{name}"]) + GRPC_OFFSET for name in NEEDS_GRPC]
        with _leases_locked() as leases:
            if leases is None:
                return
            for port in [*self.ports(), *grpc]:
                with contextlib.suppress(OSError, ValueError):
                    if _read_lease(leases / str(port))[0] == os.getpid():
                        os.utime(leases / str(port))
                        continue
                if _lease_free(leases, port):
                    _lease(leases, port)

    def start_again(self) -> None:
        """`railyard up` again on this stack's data directory and ports once its process has exited (SIGTERM'd by
        stop_process, after lease_ports_again: the ports stay leased), this object then the new process's, until it
        is healthy: test_restart.py stops and starts the session's stack, which the `stack` fixture's later users
        and its stop at the session's end hold. A start that fails is recorded in `restart_failed`."""
        global restart_failed
        assert self.process.poll() is not None, "the stack is still running"
        try:
            again = start_stack(self.data_dir, env=self.env)
            self.process, self.output, self.log_sizes = again.process, again.output, again.log_sizes
            self.wait_healthy()
        except BaseException as exc:
            restart_failed = f"{type(exc).__name__}: {exc}"[:2000]
            raise

    def ports(self) -> list[int]:
        """The ports picked for this stack (their gRPC ports, +10000, go with them)."""
        return [int(value) for key, value in self.env.items()
                if key == "RAILYARD_GATEWAY__PORT" or (key.startswith("RAILYARD_STACK__") and key.endswith("_PORT"))]


# Why the session's stack did not come back from test_restart.py's stop and start (RunningStack.start_again), or "":
# tests/conftest.py then fails each later test of the process that asks for the stack at once, naming it, instead of
# letting it run into the stopped stack's refused connections and time-outs
restart_failed = ""

STACK_FOLDER_PREFIX = "railyard-test-stack-"
ABANDONED_AFTER = 3600.0  # seconds without a write to a stack folder's logs before it may be judged abandoned


def remove_abandoned_stack_folders(root: Path | None = None, older_than: float = ABANDONED_AFTER) -> list[Path]:
    """This user's test stack folders in the temporary directory that no stack uses any more, removed; returns them.

    A session's stack folder is removed when its session ends, or by tests/stack_stop_later.py once its stack has
    stopped; a run killed before that (a CI job's time-out, its process group or cgroup killed at the job's end while
    stack_stop_later still waited) left the folder, 50-330 MB, for good, one more each such run on a host that runs
    every session's CI. A folder is abandoned when nothing was written to it or its logs for `older_than` seconds,
    its supervisor (data/run/stack.json) is not running, and no process names it on its command line. A scan of the
    temporary directory, a few stat calls a folder; the process table is read only when a folder qualifies."""
    root = Path(root or tempfile.gettempdir())
    now = time.time()
    candidates: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            with contextlib.suppress(OSError):
                if not entry.name.startswith(STACK_FOLDER_PREFIX):
                    continue
                info = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                    continue
                folder = Path(entry.path)
                written = [info.st_mtime, *(path.stat().st_mtime for path in
                                            [*folder.glob("*-up.log"), *folder.glob("*/logs/*.log")])]
                if max(written) > now - older_than:
                    continue
                if any(pid_alive((read_state(data) or {}).get("supervisor_pid", 0)) for data in folder.iterdir()
                       if data.is_dir()):
                    continue
                candidates.append(folder)
    if not candidates:
        return []
    import psutil

    named = " ".join(" ".join(proc.info["cmdline"] or ()) for proc in psutil.process_iter(["cmdline"]))
    removed = [folder for folder in candidates if str(folder) not in named]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


@contextlib.contextmanager
def stack_directory() -> Iterator[Path]:
    """A data directory for a test stack, outside pytest's own temporary root: pytest makes that root private
    (mode 0700) whenever a session starts, and the embedded PostgreSQL, which runs as its own OS user when the
    tests run as root, then loses its data directory in the middle of another session's run."""
    folder = Path(tempfile.mkdtemp(prefix=STACK_FOLDER_PREFIX))
    folder.chmod(0o755)
    try:
        yield folder / "data"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_stack(data_dir: Path, env: dict[str, str] | None = None, own_group: bool = False) -> RunningStack:
    """`railyard up` for data_dir; own_group: in a process group of its own, which a test may signal as a whole."""
    env = env or stack_env(data_dir)
    output = data_dir.parent / f"{data_dir.name}-up.log"
    # a restarted stack's data directory keeps its logs: only what is written after this start counts
    log_sizes = {log.name: log.stat().st_size for log in (data_dir / "logs").glob("*.log")}
    with open(output, "ab") as handle:  # the child writes to its own copy of the descriptor for its whole life
        process = subprocess.Popen([sys.executable, "-m", "shared.cli", "up"], cwd=REPO, env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=own_group)
    return RunningStack(process=process, data_dir=data_dir, env=env, output=output, log_sizes=log_sizes)


def stop_process(process: subprocess.Popen, grace: float) -> int | None:
    """SIGTERM, `grace` seconds for a graceful stop, then SIGKILL: a process a test started stops either way."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@contextlib.contextmanager
def service_process(stack: RunningStack, name: str, log: Path,
                    env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """One more process of service `name` on the stack, as the supervisor starts one (its own bus identity and
    database role, the stack's object store), its output in `log`; `env` adds or overrides settings. Stopped
    (SIGTERM, 20 s, then SIGKILL) when the block ends."""
    from shared.db_roles import role_dsn

    settings, secrets = stack.settings(), stack.secrets()
    full = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    full.update({
        "RAILYARD_NATS__URL": f"nats://127.0.0.1:{stack.env['RAILYARD_STACK__NATS_PORT']}",
        "RAILYARD_NATS__USER": name,
        "RAILYARD_NATS__PASSWORD": secrets[f"nats_password_{name}"],
        "RAILYARD_POSTGRES__DSN": role_dsn(settings.postgres.dsn, name, secrets[f"postgres_password_{name}"]),
        "RAILYARD_S3__ENDPOINT": settings.s3.endpoint,
        "RAILYARD_S3__ACCESS_KEY": settings.s3.access_key,
        "RAILYARD_S3__SECRET_KEY": settings.s3.secret_key,
        "RAILYARD_S3__SECURE": "false",
        "PYTHONUNBUFFERED": "1",
    })
    full.update(env or {})
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=REPO, env=full, stdout=handle,
                                   stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process, 20)


def wait_serving(process: subprocess.Popen, log: Path, what: str, within: float = 60.0) -> None:
    """Until a service_process has logged that it serves ("serving (pid"); fails if it exits first or takes longer
    than `within` seconds (`what` names it in the failure, with its log)."""
    deadline = time.monotonic() + within
    while "serving (pid" not in log.read_text():
        assert process.poll() is None, f"{what} exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{what} did not start:\n{log.read_text()}"
        time.sleep(0.2)
