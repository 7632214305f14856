"""`railyard up`: the embedded stack and its supervisor.

Starts NATS, PostgreSQL and S3, waits until each answers, then starts every service as its own
process (`python -m services.<name>`), restarts any child that dies (with a growing back-off that
resets once it has run a while), and stops everything in reverse order on SIGTERM or Ctrl-C, also in
the middle of a start: each child gets its stop signal, a few seconds' grace, then SIGKILL.
Its state (pids, ports, URLs) is written to `<data>/run/stack.json` for `railyard status` and
`railyard down`.

Every child runs in a session of its own, so a signal to the supervisor's process group (Ctrl-C in a
terminal, a CI job's group killed) reaches the supervisor only, which stops the services while what
they use is still up, then the servers (PostgreSQL with its fast shutdown). When the group's SIGTERM
reached every process at once, PostgreSQL's smart shutdown (waiting for every client to leave) and
SeaweedFS's 15 s graceful stop kept a stack alive well past 10 s.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shared import __version__, sched_hint, subjects
from shared.embedded import servers
from shared.embedded.servers import Secrets, ServerSpec, StackError
from shared.settings import COMMAND_DRAIN_TIMEOUT, TASK_STOP_TIMEOUT, Settings

STABLE_AFTER = 10.0  # a child that ran this long is restarted at once if it dies
FIRST_BACKOFF = 0.2


def _die_with_parent(sig: int = signal.SIGTERM, slice_us: int = 0, parent: int | None = None) -> None:
    """In a child between fork and exec: ask the kernel to send it `sig` (its stop signal: SIGINT, a fast shutdown,
    for PostgreSQL) if the supervisor (`parent`, its pid) dies (Linux only); `slice_us`: the scheduler slice it and
    its threads ask for (shared/sched_hint.py). `sig`'s default action first: until the exec the child has the
    supervisor's handler (up()'s request_stop), which took the signal and only set a flag in the child's copy; and
    the supervisor may have died before the child asked, when the kernel sends nothing (the child reparented
    already): then it exits. Before, a server or service forked in either window ran on with no supervisor (the
    deployer's replicas had the same gap: services/deployer/backend.py)."""
    with contextlib.suppress(ValueError):  # defensive: in the forked child the forking thread is its main thread
        signal.signal(sig, signal.SIG_DFL)
    sched_hint.parent_death_signal(sig)  # libc found at import: no dlopen between fork and exec
    if parent is not None and os.getppid() != parent:
        os._exit(1)
    if slice_us:
        sched_hint.request_path_slice(slice_us)


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_grace: float = 5.0
    cwd: Path | None = None
    leftovers: tuple[Path, ...] = ()  # sockets it leaves when killed, removed once it is gone
    slice_us: int = 0  # the scheduler slice it asks for (nats-server: on every request's path), 0: the default
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        if self._log is None:
            self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - kept open for the child's life
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            user=self.user,
            cwd=self.cwd,
            start_new_session=True,  # a signal to the supervisor's group is the supervisor's to pass on, in order
            preexec_fn=functools.partial(_die_with_parent, self.stop_signal, self.slice_us, os.getpid()),
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def schedule_restart(self, now: float) -> float:
        ran = now - self.started_at
        self.backoff = FIRST_BACKOFF if ran >= STABLE_AFTER else min(self.backoff * 2, self._max_backoff)
        delay = 0.0 if ran >= STABLE_AFTER else self.backoff
        self.restart_at = now + delay
        return delay

    _max_backoff: float = 5.0

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL to its process group (its own session's): it and what it started that is still there, such as the
        deployer's engine replicas (a child's SIGTERM is its own to pass on; this comes after its grace)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if not self.alive():
            for path in self.leftovers:
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode) and path.lstat().st_uid == os.getuid():
                        path.unlink()


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


# secrets only one service reads: the others do not get them in their environment
SECRET_OWNERS = {
    "RAILYARD_AUTH__BOOTSTRAP_ADMIN_PASSWORD": "auth",
    "RAILYARD_AUTH__BOOTSTRAP_CLIENT_SECRET": "auth",
    "RAILYARD_AUTH__CLIENT_SECRET_KEY": "auth",
    "RAILYARD_REGISTRY__SECRETS_KEY": "registry",
}

PORT_SETTINGS = {
    ("nats", "client"): "RAILYARD_STACK__NATS_PORT",
    ("nats", "monitor"): "RAILYARD_STACK__NATS_MONITOR_PORT",
    ("postgres", "postgres"): "RAILYARD_STACK__POSTGRES_PORT",
    ("s3", "s3"): "RAILYARD_STACK__S3_PORT",
    ("s3", "s3-grpc"): "RAILYARD_STACK__S3_PORT",
    ("s3", "master"): "RAILYARD_STACK__WEED_MASTER_PORT",
    ("s3", "master-grpc"): "RAILYARD_STACK__WEED_MASTER_PORT",
    ("s3", "volume"): "RAILYARD_STACK__WEED_VOLUME_PORT",
    ("s3", "volume-grpc"): "RAILYARD_STACK__WEED_VOLUME_PORT",
    ("s3", "filer"): "RAILYARD_STACK__WEED_FILER_PORT",
    ("s3", "filer-grpc"): "RAILYARD_STACK__WEED_FILER_PORT",
    ("gateway", "http"): "RAILYARD_GATEWAY__PORT",
}


class EmbeddedStack:
    """The embedded stack for one data directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.stack
        self.data_dir = self.cfg.data_dir.expanduser().resolve()
        self.run_dir = self.data_dir / "run"
        self.log_dir = self.data_dir / "logs"
        self.state_path = self.run_dir / "stack.json"
        self.infra: list[Child] = []
        self.services: list[Child] = []
        self.stopping = False
        self.secrets: Secrets | None = None
        self.new_secrets: list[str] = []

    @property
    def unshown_marker(self) -> Path:
        """Present from the creation of the admin's password until a start printed it: a first start that
        failed (a port in use) must not leave the next one to say only "in the secrets file"."""
        return self.data_dir / "credentials-not-shown"

    def command(self, name: str) -> str:
        """`railyard NAME` as a user should type it for this stack: with --data-dir unless the data directory is
        .railyard in the current directory, which the command finds by itself (`railyard up --data-dir` sets
        RAILYARD_STACK__DATA_DIR in this process only, not in the user's shell)."""
        if self.data_dir == Path(".railyard").resolve():
            return f"railyard {name}"
        return f"railyard {name} --data-dir {shlex.quote(str(self.data_dir))}"

    # --- start ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        for folder in (self.data_dir, self.run_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o711)  # traversable by the PostgreSQL user, not listable
        self.run_dir.chmod(0o700)  # SeaweedFS's Unix sockets (S3, filer) and temporary files: ours only
        running = read_state(self.data_dir)
        if running and pid_alive(running.get("supervisor_pid", 0)):
            raise StackError(f"a stack is already running for {self.data_dir} (pid {running['supervisor_pid']});"
                             f" `{self.command('down')}` stops it")
        self.secrets, self.new_secrets = Secrets.load_or_create(self.data_dir / "secrets.json")
        if "admin_password" in self.new_secrets:  # shown by the first start that comes up, not the first attempt
            self.unshown_marker.touch(mode=0o600)

    def server_specs(self, pg_user: str | None) -> list[ServerSpec]:
        assert self.secrets is not None
        nats = servers.nats_server(self.cfg, self.data_dir, servers.jetstream_file_store(self.stream_caps()))
        servers.add_nats_authorization(self.data_dir, self.secrets)
        return [
            nats,
            servers.postgres_server(self.cfg, self.data_dir, pg_user),
            servers.seaweedfs_server(self.cfg, self.data_dir, self.secrets),  # with its S3 gateway: "s3"
        ]

    def stream_caps(self) -> list[int]:
        """The byte caps of the platform's JetStream streams (shared.bus.stream_configs)."""
        return [self.settings.nats.events_max_bytes, self.settings.logs.stream_max_bytes]

    def warn_if_disk_is_short(self) -> None:
        """One warning line when the data folder's disk has less free than the streams may hold: their caps bound a
        backlog (the log store or a reader away), and a backlog that outgrows the disk is refused at the publish."""
        caps = sum(cap for cap in self.stream_caps() if cap > 0)
        free = shutil.disk_usage(self.data_dir).free
        if free < caps:
            log_line(f"warning: {free / 1024**3:.1f} GiB free on the disk of {self.data_dir}, less than the "
                     f"{caps / 1024**3:g} GiB the bus streams may hold while a reader is away; publishes are refused "
                     "once the disk is full. Free disk, or lower RAILYARD_LOGS__STREAM_MAX_BYTES and "
                     "RAILYARD_NATS__EVENTS_MAX_BYTES")

    def check_ports(self, specs: list[ServerSpec]) -> None:
        wanted = [((spec.name, label), port) for spec in specs for label, port in spec.ports.items()]
        wanted.append((("gateway", "http"), self.settings.gateway.port))
        seen: dict[int, str] = {}
        for (owner, label), port in wanted:
            if port in seen:
                raise StackError(f"port {port} is configured twice ({seen[port]} and {owner} {label})")
            seen[port] = f"{owner} {label}"
            host = self.settings.gateway.host if owner == "gateway" else self.cfg.host
            if not port_free(host, port):
                hint = PORT_SETTINGS.get((owner, label), "")
                raise StackError(f"port {port} on {host} ({owner} {label}) is already in use"
                                 + (f"; set {hint} to another port" if hint else ""))

    def superuser_dsn(self) -> str:
        """PostgreSQL's superuser: the supervisor's, to create the services' roles; no service gets it."""
        assert self.secrets is not None
        return (f"postgresql://railyard:{self.secrets.postgres_password}"
                f"@{self.cfg.host}:{self.cfg.postgres_port}/railyard")

    def ensure_service_roles(self) -> None:
        """Each service's own role owning its schema only (shared.db_roles), passwords from the secrets file."""
        import asyncio

        from shared.db_roles import DATABASE_SCHEMAS, ensure_service_roles

        assert self.secrets is not None
        passwords = {s: self.secrets.values[f"postgres_password_{s}"] for s in DATABASE_SCHEMAS}
        try:
            asyncio.run(ensure_service_roles(self.superuser_dsn(), passwords))
        except Exception as exc:  # asyncpg's errors and OSError: one line, and the stack stops cleanly
            raise StackError(f"could not create the services' database roles: {type(exc).__name__}: {exc}"
                             .splitlines()[0]) from None

    def start_streams(self) -> subprocess.Popen:
        """The platform's JetStream streams (shared.bus_streams), created or completed as the `bootstrap` bus
        identity before any service starts: services may not create or update streams. A process of its own,
        so the supervisor, which stays up as long as the stack, does not keep FastStream and nats-py for one
        call at start; it runs while PostgreSQL and SeaweedFS come up (`finish_streams` waits for it)."""
        from shared.bus_identities import BOOTSTRAP

        assert self.secrets is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_NATS__")}
        env.update({"RAILYARD_NATS__URL": f"nats://{self.cfg.host}:{self.cfg.nats_port}",
                    "RAILYARD_NATS__USER": BOOTSTRAP,
                    "RAILYARD_NATS__PASSWORD": self.secrets.values[f"nats_password_{BOOTSTRAP}"],
                    "PYTHONUNBUFFERED": "1"})
        return subprocess.Popen([sys.executable, "-m", "shared.bus_streams"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def finish_streams(self, process: subprocess.Popen) -> None:
        output = servers.communicate_unless(process, lambda: self.stopping, timeout=60)
        if self.stopping:
            raise StackError("stopped during start-up")
        if process.returncode != 0:
            last = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
            raise StackError(f"could not create the JetStream streams: {last}")

    def service_env(self, name: str) -> dict[str, str]:
        """The environment of service `name`: its own database role's DSN (none if it keeps no tables) and
        only the secrets it uses."""
        from shared.db_roles import DATABASE_SCHEMAS, role_dsn

        assert self.secrets is not None
        cfg = self.cfg
        # the caller's own RAILYARD_* settings reach the services; connections and secrets are the stack's
        env = dict(os.environ)
        env.update({
            "RAILYARD_ENV": self.settings.env,
            "RAILYARD_LOG_LEVEL": self.settings.log_level,
            "RAILYARD_NATS__URL": f"nats://{cfg.host}:{cfg.nats_port}",
            "RAILYARD_S3__ENDPOINT": f"{cfg.host}:{cfg.s3_port}",
            "RAILYARD_S3__ACCESS_KEY": self.secrets.s3_access_key,
            "RAILYARD_S3__SECRET_KEY": self.secrets.s3_secret_key,
            "RAILYARD_S3__SECURE": "false",
            "RAILYARD_GATEWAY__HOST": self.settings.gateway.host,
            "RAILYARD_GATEWAY__PORT": str(self.settings.gateway.port),
            "RAILYARD_STACK__DATA_DIR": str(self.data_dir),
            "RAILYARD_AUTH__BOOTSTRAP_ADMIN_USERNAME": self.secrets.values["admin_username"],
            "RAILYARD_AUTH__BOOTSTRAP_ADMIN_PASSWORD": self.secrets.values["admin_password"],
            "RAILYARD_AUTH__BOOTSTRAP_CLIENT_ID": self.secrets.values["client_id"],
            "RAILYARD_AUTH__BOOTSTRAP_CLIENT_SECRET": self.secrets.values["client_secret"],
            "RAILYARD_AUTH__CLIENT_SECRET_KEY": self.secrets.values["client_secret_key"],
            "RAILYARD_REGISTRY__SECRETS_KEY": self.secrets.values["secrets_key"],
            "PYTHONUNBUFFERED": "1",
        })
        # its own bus identity (deploy/nats-permissions.json); the deployer also holds the engine replicas'
        env["RAILYARD_NATS__USER"] = name
        env["RAILYARD_NATS__PASSWORD"] = self.secrets.values[f"nats_password_{name}"]
        env.pop("RAILYARD_NATS__ENGINE_PASSWORD", None)
        if name == "deployer":
            env["RAILYARD_NATS__ENGINE_PASSWORD"] = self.secrets.values["nats_password_engine"]
        env.pop("RAILYARD_POSTGRES__DSN", None)
        if name in DATABASE_SCHEMAS:
            env["RAILYARD_POSTGRES__DSN"] = role_dsn(self.superuser_dsn(), name,
                                                     self.secrets.values[f"postgres_password_{name}"])
        for secret, owner in SECRET_OWNERS.items():
            if owner != name:
                env.pop(secret, None)
        return env

    def start(self) -> float:
        """Start everything; returns the seconds it took until every service was healthy."""
        began = time.monotonic()
        self.prepare()
        self.warn_if_disk_is_short()
        specs = self.server_specs(None)
        self.check_ports(specs)
        specs[1].user = servers.prepare_postgres(self.cfg, self.data_dir, self.secrets, lambda: self.stopping)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
        for spec in specs:
            self.check_stop()
            env = {k: v for k, v in base_env.items() if not k.startswith(spec.env_drop)}
            child = Child(spec.name, spec.argv, {**env, **spec.env}, self.log_dir / f"{spec.name}.log",
                          user=spec.user, stop_signal=spec.stop_signal, stop_grace=spec.stop_grace, cwd=spec.cwd,
                          leftovers=spec.leftovers,
                          slice_us=self.settings.request_path_slice_us if spec.name == "nats" else 0)
            child._max_backoff = self.cfg.restart_backoff_max
            child.start()
            self.infra.append(child)
        nats, postgres, s3 = self.infra
        servers.wait_until(lambda: servers.nats_ready(self.cfg), "NATS", 30, self.starting(nats))
        streams = self.start_streams()
        try:
            servers.wait_until(lambda: servers.postgres_ready(self.cfg), "PostgreSQL", 60, self.starting(postgres))
        except BaseException:
            streams.kill()
            streams.wait()
            raise
        self.finish_streams(streams)
        servers.ensure_database(self.cfg, self.secrets)
        self.ensure_service_roles()
        servers.wait_until(lambda: servers.s3_ready(self.cfg, self.secrets), "S3 (SeaweedFS)", 60,
                           self.starting(s3))
        for name in subjects.SERVICES:
            self.check_stop()
            child = Child(name, [sys.executable, "-m", f"services.{name}"], self.service_env(name),
                          self.log_dir / f"{name}.log", stop_grace=self.service_stop_grace(name))
            child._max_backoff = self.cfg.restart_backoff_max
            child.start()
            self.services.append(child)
        self.write_state()
        servers.wait_until(self.gateway_healthy, "the services", 90, lambda: not self.stopping)
        return time.monotonic() - began

    def service_stop_grace(self, name: str) -> float:
        """Seconds service `name` has to stop before its process group is killed. The deployer's stop hook drains
        its engine replicas (every set at once, each replica killed past `deployer.stop_timeout`) and they publish the
        log rows they hold, after its command drain (up to COMMAND_DRAIN_TIMEOUT while a deploy waits for its
        replicas), so its grace is the two together, at least the services' own grace more than the timeout. The task
        scheduler's stop stops its runs and records their end within TASK_STOP_TIMEOUT (services/task_scheduler/
        scheduler.py), which its grace adds to the services' (before: the services' 5 s, and a run whose process
        ignored its SIGTERM had its scheduler killed before the stop was recorded). Every other service has the
        services' grace."""
        if name == "deployer":
            return self.settings.deployer.stop_timeout + max(self.cfg.stop_grace, COMMAND_DRAIN_TIMEOUT)
        if name == "task_scheduler":
            return TASK_STOP_TIMEOUT + self.cfg.stop_grace
        return self.cfg.stop_grace

    def check_stop(self) -> None:
        """A stop asked for during the start ends it here (up() then stops what did start)."""
        if self.stopping:
            raise StackError("stopped during start-up")

    def starting(self, child: Child):
        """For a start's wait on `child`: false once it died or a stop was asked for, so SIGTERM in the middle of
        a start does not wait for that server to answer first (or, were it stopping too, to exit)."""
        return lambda: child.alive() and not self.stopping

    def gateway_healthy(self) -> bool:
        self.supervise_once()
        try:
            with urllib.request.urlopen(f"{self.api_url()}/health", timeout=3) as response:  # noqa: S310
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    # --- supervise -----------------------------------------------------------------------------

    def supervise_once(self) -> None:
        now = time.monotonic()
        changed = False
        for child in self.infra + self.services:
            if self.stopping:
                return
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start()
                    child.restarts += 1
                    changed = True
                    log_line(f"restarted {child.name} (pid {child.pid}, restart #{child.restarts})")
            elif not child.alive():
                code = child.proc.returncode if child.proc else None
                delay = child.schedule_restart(now)
                log_line(f"{child.name} exited with code {code}; restarting in {delay:.1f}s")
        if changed:
            self.write_state()

    def run_forever(self) -> None:
        while not self.stopping:
            self.supervise_once()
            time.sleep(0.1)

    # --- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping = True
        # services all at once (they drain in parallel), then the servers one by one in reverse
        # order of start, so each stops while what it talks to is still there
        for group in [self.services] + [[child] for child in reversed(self.infra)]:
            if not group:
                continue
            for child in group:
                child.signal(child.stop_signal)
            signalled = time.monotonic()
            # each its own grace, the shortest first, so one with a longer grace (the deployer) does not delay the
            # others' kill; a group is swept only once its leader is gone (the deployer: its replicas drained)
            for child in sorted(group, key=lambda child: child.stop_grace):
                if not child.wait(max(0.1, signalled + child.stop_grace - time.monotonic())):
                    log_line(f"{child.name} did not stop in {child.stop_grace:g}s; killing it")
                    child.kill_group()
                    child.wait(5)
                # and what it started that is left (its pid, the group's id, stays reserved while a member is)
                child.kill_group()
                child.close()
        # only this supervisor's state: a start refused because a stack already runs for this data directory
        # deleted that stack's state, and `railyard down`/`status` then said no stack was running
        if (read_state(self.data_dir) or {}).get("supervisor_pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()

    # --- state ---------------------------------------------------------------------------------

    def api_url(self) -> str:
        return f"http://{self.settings.gateway.host}:{self.settings.gateway.port}/v1/api"

    def write_state(self) -> None:
        state = {
            "version": __version__,
            "supervisor_pid": os.getpid(),
            "data_dir": str(self.data_dir),
            "api_url": self.api_url(),
            "components": {
                c.name: {"pid": c.pid, "restarts": c.restarts, "log": str(c.log_path),
                         "kind": "server" if c in self.infra else "service"}
                for c in self.infra + self.services
            },
            "ports": {
                "nats": self.cfg.nats_port, "postgres": self.cfg.postgres_port, "s3": self.cfg.s3_port,
                "gateway": self.settings.gateway.port,
            },
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def banner(self, seconds: float) -> str:
        base = f"http://{self.settings.gateway.host}:{self.settings.gateway.port}"
        lines = [
            f"Railyard {__version__} is up: {len(self.services)} services healthy in {seconds:.1f}s",
            f"  API      {base}/v1/api",
            f"  Docs     {base}/v1/api/docs",
            f"  UI       {base}/",
            f"  Health   {base}/v1/api/health",
            f"  Data     {self.data_dir}  (logs in {self.log_dir})",
            f"  Secrets  {self.data_dir / 'secrets.json'}  (mode 0600)",
            f"  Token    {base}/auth/realms/master/protocol/openid-connect/token",
        ]
        values = self.secrets.values
        if "admin_password" in self.new_secrets or self.unshown_marker.exists():
            lines += [
                "  Log in   first start: these are shown once (and kept in the secrets file above)",
                f"             user {values['admin_username']}  password {values['admin_password']}",
                f"             client {values['client_id']}  secret {values['client_secret']}",
            ]
        else:
            lines.append(f"  Log in   user {values['admin_username']}, client {values['client_id']};"
                         " password and secret in the secrets file")
        lines += [
            f"           `{self.command('login')}` signs in with them; `railyard token` prints a bearer token.",
            "           The UI signs in with the user and password only (its client is public: no secret).",
            f"Ctrl-C here, or `{self.command('down')}`, stops everything; `{self.command('status')}` shows every"
            " component.",
        ]
        return "\n".join(lines)


def log_line(text: str) -> None:
    print(f"railyard: {text}", file=sys.stderr, flush=True)


def read_state(data_dir: Path) -> dict | None:
    path = data_dir / "run" / "stack.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    with contextlib.suppress(FileNotFoundError, IndexError):
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return status != "Z"
    return True


def up(settings: Settings) -> int:
    """Run the stack in the foreground until SIGTERM/SIGINT."""
    stack = EmbeddedStack(settings)

    def request_stop(signum, _frame) -> None:
        stack.stopping = True

    # SIGHUP too: the terminal `railyard up` runs in closed (its children, in sessions of their own, do not get it)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, request_stop)
    try:
        seconds = stack.start()
    except BaseException as exc:  # whatever ended the start, what it started stops
        interrupted = stack.stopping
        if interrupted:
            log_line("stopping (asked during start-up)")
        stack.stop()
        if interrupted:
            log_line("stopped")
            return 0
        if isinstance(exc, StackError):
            log_line(str(exc))
            return 2
        raise
    if stack.stopping:
        stack.stop()
        return 0
    print(stack.banner(seconds), flush=True)
    stack.unshown_marker.unlink(missing_ok=True)
    stack.run_forever()
    log_line("stopping")
    stack.stop()
    log_line("stopped")
    return 0
