"""A sandbox's process limit holds for the sandbox as a whole through a cgroup of its own in the pids hierarchy on
cgroup v1 (shared/sandbox_launcher.py `PidsCgroup`; on v2 its memory cgroup carries pids.max): processes and threads
together, whatever their uid or user namespace, made before the code starts and removed after it ends. A fork or
thread past it fails with EAGAIN inside; a sandbox that then fails gets the launcher's verdict "processes". Real
processes and the host's cgroups (no stack); skipped where this host has no writable v1 pids hierarchy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared import sandbox, sandbox_launcher
from shared.sandbox import Limits, SandboxSpec
from shared.settings import Settings

PARENT, WHY_NOT = sandbox.pids_cgroup()
pytestmark = pytest.mark.skipif(PARENT is None, reason=f"no writable cgroup v1 pids hierarchy here: {WHY_NOT}")
PROCESSES = 16  # the sandbox's limit: pids.max is 18 (its init and the gateway forwarder besides the code's own)

# threads, then forked children, each until the kernel refuses one; what was refused is handled (EAGAIN). Small
# thread stacks and two malloc arenas (as the engine's worker has): 8 MiB stacks and an arena of 64 MiB a thread
# ran into the 1 GiB of address space (RLIMIT_AS) at 14 threads
BOMBS = """
import errno, os, sys, threading, time
threading.stack_size(256 << 10)
print([line for line in open("/proc/self/cgroup").read().split() if ":pids:" in line][0], flush=True)
sys.stdin.readline()
stop = threading.Event()
threads = []
try:
    while len(threads) < 500:
        thread = threading.Thread(target=stop.wait)
        thread.start()
        threads.append(thread)
except RuntimeError as exc:
    print("threads", len(threads), exc, flush=True)
stop.set()
for thread in threads:
    thread.join()
children = []
try:
    while len(children) < 500:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print("children", len(children), errno.errorcode[exc.errno], flush=True)
sys.stdin.readline()
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print("done", flush=True)
"""
# the classic bomb: every process forks for ever; the first refused fork raises in each (not handled)
FORK_BOMB = """
import os
while True:
    os.fork()
"""
# children that sleep, forked until the kernel refuses one (handled); prints how many, leaves them in `children`
FORK_UNTIL_REFUSED = """
import os, time
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except BlockingIOError:
    print("children", len(children), flush=True)
"""


@pytest.fixture
def settings(tmp_path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    return Settings(stack={"data_dir": data})


def spec(code: str, settings: Settings, name: str = "one", **limits) -> SandboxSpec:
    return SandboxSpec(argv=[sys.executable, "-c", textwrap.dedent(code)],
                       workdir=settings.stack.data_dir / "work" / name, env={"MALLOC_ARENA_MAX": "2"},
                       limits=Limits(**({"processes": PROCESSES, "wall_seconds": 30} | limits)))


def mine() -> list[str]:
    """The pids cgroups of this process's sandboxes that exist now."""
    prefix = f"{sandbox_launcher.CGROUP_PREFIX}{os.getpid()}-"
    return sorted(name for name in os.listdir(PARENT) if name.startswith(prefix))


def read(name: str, file: str) -> str:
    with open(os.path.join(PARENT, name, file)) as handle:
        return handle.read().strip()


def test_the_sandbox_is_in_a_pids_cgroup_of_its_own_whose_max_stops_threads_and_forks(settings):
    """From inside, /proc/self/cgroup names the sandbox's pids cgroup; from outside, its pids.max is the limit plus
    the init's and forwarder's two. Threads, then children, are refused at pids.max with EAGAIN inside (RLIMIT_NPROC
    is a backstop above it: before, it stopped them at 14), the kernel counts the refusals, and a sandbox that
    handles them ends normally, with no verdict."""

    async def bombed() -> tuple[str, str, str, str, bytes, asyncio.subprocess.Process]:
        process = await sandbox.spawn(spec(BOMBS, settings), settings=settings)
        line = (await process.stdout.readline()).decode().strip()
        name = line.rsplit("/", 1)[1]
        limit = read(name, "pids.max")
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        said = [(await process.stdout.readline()).decode().strip() for _ in range(2)]
        refused, current = read(name, "pids.events"), read(name, "pids.current")
        process.stdin.write(b"end\n")
        await process.stdin.drain()
        rest, _ = await process.communicate()
        await process._railyard_cgroup
        return line, limit, " | ".join(said), f"{refused} / current {current}", rest, process

    line, limit, said, counted, rest, process = asyncio.run(bombed())
    assert line.startswith(tuple(f"{n}:pids:/" for n in range(1, 20))) and sandbox_launcher.CGROUP_PREFIX in line
    assert limit == str(PROCESSES + 2)
    # its init, the main thread and 16 more; then the init, the main process and 16 children
    assert said == f"threads {PROCESSES} can't start new thread | children {PROCESSES} EAGAIN", said
    refusals = int(counted.split()[1])
    assert refusals >= 2 and counted.endswith(f"current {PROCESSES + 2}"), counted
    assert rest == b"done\n" and process.returncode == 0
    assert sandbox.quota_verdict(process) is None  # handled: nothing to say
    assert mine() == []


def test_a_sandbox_is_stopped_at_pids_max_where_its_rlimit_would_allow_more(settings, monkeypatch):
    """RLIMIT_NPROC raised to 200 under the same pids.max (18): the children stop at 16 all the same. Without the
    pids cgroup this sandbox forked up to its rlimit."""
    launch_config = sandbox._launch_config

    def generous(spec_, settings_):
        config = launch_config(spec_, settings_)
        config["limits"]["processes"] = 200
        return config

    monkeypatch.setattr(sandbox, "_launch_config", generous)
    result = asyncio.run(sandbox.run(spec(FORK_UNTIL_REFUSED + textwrap.dedent("""
        for pid in children:
            os.kill(pid, 9)
    """), settings), settings=settings))
    assert result.returncode == 0 and result.stdout == f"children {PROCESSES}\n".encode(), result.stderr_tail
    assert mine() == []


def test_a_sandbox_that_fails_after_a_refused_fork_gets_the_launchers_verdict(settings):
    """A fork bomb that does not handle EAGAIN: every process dies of BlockingIOError, and the launcher, which saw
    the kernel count refused forks in its pids cgroup, says "processes" on its verdict pipe (the engine answers a
    400 resource_limit for it). Code that only prints the words and fails gets no verdict."""

    async def ended(code: str) -> tuple[str | None, int, bytes]:
        process = await sandbox.spawn(spec(code, settings, wall_seconds=20), settings=settings)
        _, stderr = await process.communicate()
        await process._railyard_cgroup
        return sandbox.quota_verdict(process), process.returncode, stderr

    verdict, code, stderr = asyncio.run(ended(FORK_BOMB))
    assert verdict == "processes", (code, stderr[-500:])
    assert code != 0 and b"railyard-sandbox: process limit reached: it started more processes or threads than " \
        b"the sandbox allows (16)" in stderr, stderr[-500:]
    assert sandbox.limit_hit(code, "", Limits(processes=PROCESSES), verdict) == "processes"
    faked, code, _ = asyncio.run(ended("import sys; print('BlockingIOError: [Errno 11] Resource temporarily "
                                       "unavailable', file=sys.stderr); sys.exit(1)"))
    assert faked is None and code == 1
    assert mine() == []


def test_a_sandbox_stopped_for_its_cpu_time_after_a_handled_refusal_is_told_its_cpu_time(settings):
    """The verdict "processes" is for a sandbox that failed after a refused fork, not for one the kernel stopped for
    another limit later: code that handled EAGAIN and then ran out of CPU time was told it started too many
    processes (the verdict overrode SIGXCPU), and one that wrote past its file size limit likewise."""
    handled = FORK_UNTIL_REFUSED + textwrap.dedent("""
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    """)
    burnt = asyncio.run(sandbox.run(spec(handled + "while True:\n    pass\n", settings, cpu_seconds=1),
                                    settings=settings))
    assert burnt.stdout == f"children {PROCESSES}\n".encode(), burnt.stderr_tail
    assert burnt.returncode == -signal.SIGXCPU and burnt.limit_hit == "cpu", (burnt.returncode, burnt.limit_hit)
    assert "process limit reached" not in burnt.stderr_tail
    written = asyncio.run(sandbox.run(spec(handled + textwrap.dedent("""
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # as a program that is not Python dies of it
        with open("big", "wb") as handle:
            handle.write(b"x" * (2 << 20))
    """), settings, file_size_bytes=1 << 20), settings=settings))
    assert written.returncode == -signal.SIGXFSZ and written.limit_hit == "file_size", written.limit_hit
    # Python ignores SIGXFSZ: the write fails with OSError 'File too large' and the code exits 1, which the
    # launcher cannot tell from any other failure; the verdict "processes" told it too many processes
    python = asyncio.run(sandbox.run(spec(handled + textwrap.dedent("""
        with open("big", "wb") as handle:
            handle.write(b"x" * (2 << 20))
    """), settings, file_size_bytes=1 << 20), settings=settings))
    assert python.returncode == 1 and "File too large" in python.stderr_tail, python.stderr_tail
    assert python.limit_hit == "file_size", python.limit_hit
    assert mine() == []


def test_a_bombed_sandbox_leaves_the_others_and_the_host_alone(settings):
    """One sandbox holds every process its pids.max allows; another beside it still starts eight children, and
    this process still starts one: each sandbox is counted in its own cgroup."""

    async def both() -> tuple[sandbox.SandboxResult, sandbox.SandboxResult]:
        bomb = spec(FORK_UNTIL_REFUSED + textwrap.dedent("""
            time.sleep(4)
            for pid in children:
                os.kill(pid, 9)
        """), settings, "bomb")
        steady = spec("""
            import os, time
            time.sleep(1.5)
            children = []
            for _ in range(8):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                children.append(pid)
            print("statuses", [os.waitpid(pid, 0)[1] for pid in children])
        """, settings, "steady")
        return await asyncio.gather(sandbox.run(bomb, settings=settings), sandbox.run(steady, settings=settings))

    bomb, steady = asyncio.run(both())
    assert bomb.stdout == f"children {PROCESSES}\n".encode(), bomb.stderr_tail
    assert steady.returncode == 0 and steady.stdout == b"statuses [0, 0, 0, 0, 0, 0, 0, 0]\n", steady.stderr_tail
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
    assert mine() == []


def test_connections_to_the_gateway_take_none_of_the_sandboxs_processes(settings):
    """Network.GATEWAY_ONLY (task runs): the forwarder inside the sandbox is one of the two tasks above the limit,
    whatever the number of connections it relays. It took a thread per connection and direction from the same
    pids.max, so 24 connections held open exhausted it (the code could start no thread) and the thread refused at
    the limit ended the forwarder, and with it the way to the gateway. Here an echo server stands for the gateway."""
    connections = 24

    async def echoed() -> sandbox.SandboxResult:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        at = Settings(stack={"data_dir": settings.stack.data_dir}, gateway={"host": "127.0.0.1", "port": port})
        code = f"""
            import socket, threading
            held = [socket.create_connection(("127.0.0.1", {port}), timeout=10) for _ in range({connections})]
            for number, sock in enumerate(held):
                sock.sendall(b"ping %d " % number * 1000)
            answers = []
            for number, sock in enumerate(held):
                wanted, got = b"ping %d " % number * 1000, b""
                while len(got) < len(wanted):
                    got += sock.recv(65536)
                answers.append(got == wanted)
            held[0].shutdown(socket.SHUT_WR)  # a half-close reaches the gateway, whose close comes back
            print("closed", held[0].recv(10) == b"", flush=True)
            threading.stack_size(256 << 10)
            stop = threading.Event()
            threads = [threading.Thread(target=stop.wait) for _ in range(8)]
            for thread in threads:
                thread.start()
            stop.set()
            print("echoed", sum(answers), "threads", len(threads), flush=True)
        """
        try:
            return await sandbox.run(SandboxSpec(
                argv=[sys.executable, "-c", textwrap.dedent(code)], workdir=settings.stack.data_dir / "work" / "gw",
                env={"MALLOC_ARENA_MAX": "2"}, network=sandbox.Network.GATEWAY_ONLY,
                limits=Limits(processes=PROCESSES, wall_seconds=30)), settings=at)
        finally:
            server.close()

    result = asyncio.run(echoed())
    assert result.returncode == 0, result.stderr_tail
    assert result.stdout == f"closed True\nechoed {connections} threads 8\n".encode(), result.stderr_tail
    assert mine() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC binds a normal user's processes anyway")
def test_off_for_single_user_as_root_is_bounded_by_the_pids_cgroup_alone(settings):
    """Without a sandbox (off-for-single-user), as root: the kernel does not apply RLIMIT_NPROC to root, so before
    this cgroup such code started as many threads as it liked (here, up to the test's 300)."""
    off = Settings(stack={"data_dir": settings.stack.data_dir}, sandbox={"mode": "off-for-single-user"})
    result = asyncio.run(sandbox.run(spec("""
        import threading
        threading.stack_size(256 << 10)
        stop = threading.Event()
        threads = []
        try:
            while len(threads) < 300:
                thread = threading.Thread(target=stop.wait)
                thread.start()
                threads.append(thread)
        except RuntimeError:
            pass
        print("threads", len(threads))
        stop.set()
    """, off), settings=off))
    assert result.returncode == 0 and result.stdout == f"threads {PROCESSES}\n".encode(), result.stderr_tail
    assert mine() == []


def test_no_pids_cgroup_is_left_after_a_timeout_or_a_killed_launcher(settings):
    """`run`'s wall time and a `spawn`ed worker whose launcher is killed with SIGKILL (the engine replacing a
    worker): the service removes what the launcher could not."""
    timed = asyncio.run(sandbox.run(spec("import time; time.sleep(60)", settings, wall_seconds=1), settings=settings))
    assert timed.limit_hit == "wall_time"
    assert mine() == []

    async def killed() -> list[str]:
        process = await sandbox.spawn(spec("print('up', flush=True); import time; time.sleep(60)", settings),
                                      settings=settings)
        assert await process.stdout.readline() == b"up\n"
        during = mine()
        sandbox.kill(process)
        await process.wait()
        await process._railyard_cgroup
        return during

    assert len(asyncio.run(killed())) == 1
    assert mine() == []


def test_both_cgroups_go_when_their_removal_is_cancelled_midway(settings, monkeypatch):
    """A loop that shuts down while the service removes a SIGKILLed launcher's cgroups (asyncio.run cancels the
    task; an engine or a task run does not await it): the removal's thread goes on and takes both. Awaited one
    cgroup at a time, a cancel during the memory cgroup's removal left the pids cgroup behind (seen once in three
    runs of test_sandbox.py)."""
    import threading
    import time

    removing, real = threading.Event(), sandbox_launcher.MemoryCgroup.remove

    def slow(self, timeout: float = 5.0) -> bool:  # a removal that takes a moment (the killed still exiting)
        removing.set()
        time.sleep(0.3)
        return real(self, timeout)

    monkeypatch.setattr(sandbox_launcher.MemoryCgroup, "remove", slow)

    async def cancelled() -> list[str]:
        process = await sandbox.spawn(spec("print('up', flush=True); import time; time.sleep(60)", settings),
                                      settings=settings)
        assert await process.stdout.readline() == b"up\n"
        during = mine()
        sandbox.kill(process)
        await process.wait()
        assert await asyncio.to_thread(removing.wait, 10)
        process._railyard_cgroup.cancel()
        return during

    assert len(asyncio.run(cancelled())) == 1  # asyncio.run's end waits for its threads
    assert mine() == []


def test_pids_cgroups_whose_owner_is_gone_are_swept_with_what_is_left_in_them():
    """A crashed service's sandboxes leave their pids cgroups behind; the sweep (a process's first sandbox) removes
    those whose owner is gone, killing what is still in them, and leaves a living owner's alone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)
    stale = sandbox_launcher.PidsCgroup(os.path.join(PARENT, f"{sandbox_launcher.CGROUP_PREFIX}{dead_pid}-12345-1"))
    live = sandbox_launcher.PidsCgroup(os.path.join(
        PARENT, f"{sandbox_launcher.CGROUP_PREFIX}{os.getpid()}-{sandbox_launcher.process_start(os.getpid())}-x"))
    stale.create(PROCESSES)
    live.create(PROCESSES)
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(os.path.join(stale.path, "cgroup.procs"), "w") as handle:
            handle.write(str(left.pid))
        removed = sandbox_launcher.sweep_stale_cgroups(1, PARENT)
        assert os.path.basename(stale.path) in removed and not os.path.exists(stale.path)
        assert left.wait(timeout=5) == -signal.SIGKILL
        assert os.path.exists(live.path)
    finally:
        left.kill()
        left.wait()
        live.remove()
        stale.remove()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not Path("/usr/bin/setpriv").exists(),
                    reason="needs root to become another user and delegate a cgroup, and the system Python")
def test_a_normal_user_with_a_delegated_pids_cgroup_gets_the_limit_too(settings):
    """The user-namespace path (the launcher as `nobody`, as a normal user's stack starts it) under a pids cgroup
    delegated to that user (chowned, as systemd's Delegate=yes does): the launcher makes the sandbox's pids cgroup
    and places its child from inside its user namespace; a fork bomb there ends with the verdict "processes"."""
    import json
    import shutil
    import tempfile
    import time

    delegated = os.path.join(PARENT, f"test-delegated-{os.getpid()}")
    os.mkdir(delegated)
    outer = Path(tempfile.mkdtemp(prefix="railyard-nobody-"))
    try:
        for name in [".", *os.listdir(delegated)]:
            os.chown(os.path.join(delegated, name), 65534, 65534)
        outer.chmod(0o755)
        workdir = outer / "work"
        workdir.mkdir()
        os.chown(workdir, 65534, 65534)
        limits = Limits(processes=PROCESSES)
        verdict, told = os.pipe()
        config = sandbox._launch_config(SandboxSpec(argv=["/usr/bin/python3", "-I", "-c", FORK_BOMB], workdir=workdir,
                                                    limits=limits), settings)
        config |= {"mechanism": "userns", "parent": os.getpid(), "readonly": [], "verdict_fd": told,
                   "pids_cgroup": {"path": os.path.join(delegated, "railyard-sandbox-nobody"),
                                   "processes": PROCESSES + 2}}
        config.pop("uid", None)
        config.pop("cgroup", None)  # root's memory cgroup is not nobody's (test_sandbox_memory.py delegates one)
        launched = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                   "/usr/bin/python3", "-I", "-S", str(sandbox.LAUNCHER)],
                                  env={"RAILYARD_SANDBOX_LAUNCH": json.dumps(config)}, capture_output=True, text=True,
                                  timeout=30, check=False, pass_fds=(told,))
        os.close(told)
        said = os.read(verdict, 64).decode()
        os.close(verdict)
        assert said == "processes", (launched.returncode, launched.stdout, launched.stderr[-800:])
        assert sandbox.limit_hit(launched.returncode, launched.stderr, limits, said) == "processes"
        assert not [name for name in os.listdir(delegated) if "railyard-sandbox" in name]
    finally:
        shutil.rmtree(outer, ignore_errors=True)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(delegated)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
