"""A sandbox's memory limit holds for the sandbox as a whole (shared/sandbox_launcher.py `MemoryCgroup`): processes
it forks, each under its own address-space limit (RLIMIT_AS), and memfd files written with write() and never mapped
(which no address space holds) are charged to one memory cgroup per sandbox, made before the code starts and
removed after it ends, however it ends. Real processes and the host's cgroups (no stack); skipped where this host
gives no writable memory cgroup (the gap `check_available` warns about)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shared import sandbox, sandbox_launcher
from shared.sandbox import Limits, SandboxSpec
from shared.settings import Settings

LIMIT = 128 << 20
CGROUP, WHY_NOT = sandbox.memory_cgroup()
pytestmark = pytest.mark.skipif(CGROUP is None, reason=f"no writable memory cgroup here: {WHY_NOT}")

# N processes, each well under RLIMIT_AS (LIMIT of address space), that together write more than LIMIT
FORKERS = """
import os, time
children = []
for _ in range({count}):
    pid = os.fork()
    if pid == 0:
        block = bytearray({each_mib} << 20)
        for at in range(0, len(block), 4096):
            block[at] = 1  # written, not only reserved
        time.sleep({hold})
        os._exit(0)
    children.append(pid)
print("statuses", [os.waitpid(pid, 0)[1] for pid in children], flush=True)
"""
# memfd files written with write(): no mapping, so no address space holds them
MEMFD_WRITER = """
import os
files = [os.memfd_create(f"hidden-{{n}}") for n in range({files})]
chunk = b"x" * (1 << 20)
for fd in files:
    for _ in range({each_mib}):
        os.write(fd, chunk)
print("held", {files} * {each_mib}, "MiB", flush=True)
"""


@pytest.fixture
def settings(tmp_path) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    return Settings(stack={"data_dir": data})


def spec(code: str, settings: Settings, name: str = "one", **limits) -> SandboxSpec:
    return SandboxSpec(argv=[sys.executable, "-c", textwrap.dedent(code)],
                       workdir=settings.stack.data_dir / "work" / name,
                       limits=Limits(**({"memory_bytes": LIMIT, "wall_seconds": 30} | limits)))


def mine() -> list[str]:
    """The sandbox cgroups this process owns that exist now."""
    prefix = f"{sandbox_launcher.CGROUP_PREFIX}{os.getpid()}-"
    return sorted(name for name in os.listdir(CGROUP[1]) if name.startswith(prefix))


def test_forked_processes_together_over_the_limit_are_stopped(settings):
    """Four processes of 60 MiB each: every one within its 128 MiB of address space, 240 MiB together. Under
    RLIMIT_AS alone all four finished (statuses [0, 0, 0, 0])."""
    result = asyncio.run(sandbox.run(spec(FORKERS.format(count=4, each_mib=60, hold=3), settings),
                                     settings=settings))
    assert result.limit_hit == "memory", (result.returncode, result.stdout, result.stderr_tail)
    assert b"statuses" not in result.stdout  # the whole sandbox was stopped, not one child
    assert "more memory than the sandbox allows (128 MiB)" in sandbox.describe_limit(result.limit_hit, spec(
        "", settings).limits)
    assert mine() == []


def test_memfd_written_without_a_mapping_is_stopped(settings):
    """Three memfds of 128 MiB written with write() (the review's 384 MiB under a 128 MiB limit)."""
    result = asyncio.run(sandbox.run(spec(MEMFD_WRITER.format(files=3, each_mib=128), settings), settings=settings))
    assert result.limit_hit == "memory", (result.returncode, result.stdout, result.stderr_tail)
    assert b"held" not in result.stdout
    assert mine() == []


def test_a_sandbox_within_its_limit_is_not_disturbed(settings):
    """Two children of 30 MiB and a 20 MiB memfd, while the parent holds its own: under 128 MiB together, so it
    runs to the end, and the page cache of a 200 MiB file written to the working directory (reclaimable) does not
    count against it either."""
    code = FORKERS.format(count=2, each_mib=30, hold=0.5) + MEMFD_WRITER.format(files=1, each_mib=20) + """
with open("big.bin", "wb") as handle:
    for _ in range(200):
        handle.write(b"y" * (1 << 20))
print("wrote", os.path.getsize("big.bin") >> 20, "MiB")
"""
    result = asyncio.run(sandbox.run(spec(code, settings, file_size_bytes=256 << 20), settings=settings))
    assert result.returncode == 0 and result.limit_hit is None, result.stderr_tail
    out = result.stdout.decode()
    assert "statuses [0, 0]" in out and "held 20 MiB" in out and "wrote 200 MiB" in out
    assert mine() == []


def test_two_sandboxes_have_independent_limits(settings):
    """One sandbox holds 100 MiB of its 128 for a while; another, beside it, goes past its own 128 MiB with memfd
    files. Only the second is stopped: each is charged its own memory."""

    async def both() -> tuple[sandbox.SandboxResult, sandbox.SandboxResult]:
        steady = spec("""
            import time
            block = bytearray(100 << 20)
            for at in range(0, len(block), 4096):
                block[at] = 1
            print("holding", flush=True)
            time.sleep(4)
            print("done")
        """, settings, "steady")
        greedy = spec("import time; time.sleep(1)\n" + MEMFD_WRITER.format(files=2, each_mib=100), settings, "greedy")
        return await asyncio.gather(sandbox.run(steady, settings=settings), sandbox.run(greedy, settings=settings))

    steady, greedy = asyncio.run(both())
    assert steady.returncode == 0 and steady.limit_hit is None, steady.stderr_tail
    assert steady.stdout.decode().split() == ["holding", "done"]
    assert greedy.limit_hit == "memory", (greedy.returncode, greedy.stdout, greedy.stderr_tail)
    assert mine() == []


def test_no_cgroup_is_left_after_a_timeout_or_a_killed_launcher(settings):
    """`run`'s wall time, and a `spawn`ed worker whose launcher is killed with SIGKILL (`sandbox.kill`, as the
    engine replaces a worker): the launcher removes its cgroup itself only when it lives to the end, so the service
    removes it once the launcher has ended."""
    timed = asyncio.run(sandbox.run(spec("import time; time.sleep(60)", settings, wall_seconds=1),
                                    settings=settings))
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

    during = asyncio.run(killed())
    assert len(during) == 1  # it had one while it ran
    assert mine() == []


def test_cgroups_whose_owner_is_gone_are_swept_with_what_is_left_in_them():
    """A service that crashed (or whose launcher was killed with nobody left to clean up) leaves its sandboxes'
    cgroups behind; the next service to start removes those whose owner is gone, killing what is still in them,
    and leaves a living owner's alone."""
    version, parent = CGROUP
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)
    assert sandbox_launcher.process_start(dead_pid) is None
    stale = sandbox_launcher.MemoryCgroup(version, os.path.join(
        parent, f"{sandbox_launcher.CGROUP_PREFIX}{dead_pid}-12345-1"))
    live = sandbox_launcher.MemoryCgroup(version, os.path.join(
        parent, f"{sandbox_launcher.CGROUP_PREFIX}{os.getpid()}-{sandbox_launcher.process_start(os.getpid())}-x"))
    stale.create(LIMIT)
    live.create(LIMIT)
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(os.path.join(stale.path, "cgroup.procs"), "w") as handle:
            handle.write(str(left.pid))
        removed = sandbox_launcher.sweep_stale_cgroups(version, parent)
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
def test_a_normal_user_with_a_delegated_cgroup_gets_the_limit_too(settings):
    """The user-namespace path (the launcher as `nobody`, as a normal user's stack starts it) under a cgroup
    delegated to that user (chowned, as systemd's Delegate=yes does): the launcher makes the sandbox's cgroup and
    places its child from inside its user namespace."""
    import shutil
    import tempfile

    version, parent = CGROUP
    delegated = os.path.join(parent, f"test-delegated-{os.getpid()}")
    os.mkdir(delegated)
    outer = Path(tempfile.mkdtemp(prefix="railyard-nobody-"))
    try:
        for name in [".", *os.listdir(delegated)]:
            os.chown(os.path.join(delegated, name), 65534, 65534)
        outer.chmod(0o755)
        workdir = outer / "work"
        workdir.mkdir()
        os.chown(workdir, 65534, 65534)
        code = MEMFD_WRITER.format(files=3, each_mib=64)
        limits = Limits(memory_bytes=LIMIT)
        verdict, told = os.pipe()
        config = sandbox._launch_config(SandboxSpec(argv=["/usr/bin/python3", "-I", "-c", code], workdir=workdir,
                                                    limits=limits), settings)
        config |= {"mechanism": "userns", "parent": os.getpid(), "readonly": [], "verdict_fd": told,
                   "cgroup": {"version": version, "path": os.path.join(delegated, "railyard-sandbox-nobody")}}
        config.pop("uid", None)
        config.pop("pids_cgroup", None)  # root's pids hierarchy (v1) is not nobody's (test_sandbox_pids.py)
        launched = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                   "/usr/bin/python3", "-I", "-S", str(sandbox.LAUNCHER)],
                                  env={"RAILYARD_SANDBOX_LAUNCH": json.dumps(config)}, capture_output=True, text=True,
                                  timeout=30, check=False, pass_fds=(told,))
        os.close(told)
        said = os.read(verdict, 64).decode()
        os.close(verdict)
        assert said == "memory", (launched.returncode, launched.stdout, launched.stderr)
        assert sandbox.limit_hit(launched.returncode, launched.stderr, limits, said) == "memory"
        assert "held" not in launched.stdout
        assert os.listdir(delegated) == [name for name in os.listdir(delegated) if "railyard-sandbox" not in name]
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
