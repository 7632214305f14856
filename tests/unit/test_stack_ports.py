"""tests/stack.py's port picking across processes (leases until the stack binds its ports) and its loud failure when
a port of the stack is taken anyway, instead of a service crash-looping while wait_healthy waits."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import stack
from tests.stack import REPO, RunningStack

PICK = """
import json, sys
from pathlib import Path
from tests import stack
stack.PORT_LEASES = Path(sys.argv[1])
stack.port_range = lambda: range(int(sys.argv[2]), int(sys.argv[2]) + 24)
sys.stdin.readline()  # both start picking at the same moment
print(json.dumps(stack.free_ports(12)), flush=True)
sys.stdin.readline()  # and hold their leases until told
"""


@pytest.fixture
def leases(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "leases"
    monkeypatch.setattr(stack, "PORT_LEASES", folder)
    return folder


def _free_range(width: int) -> int:
    """The start of `width` ports free on 127.0.0.1 (the test needs them free to tell leases from bound ports):
    below the test stacks' ports and the kernel's ephemeral range, where no outgoing connection takes one meanwhile
    (46000-60000 once lost a port to one and the pick came back one short)."""
    for start in range(4096, stack.port_range().start - width, width):
        if all(stack.port_free("127.0.0.1", port) for port in range(start, start + width)):
            return start
    pytest.skip("no free range of ports")


def test_two_processes_picking_at_once_never_share_a_port(leases):
    start = _free_range(24)
    pickers = [subprocess.Popen([sys.executable, "-c", PICK, str(leases), str(start)], cwd=REPO, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for picker in pickers:
            picker.stdin.write("go\n")
            picker.stdin.flush()
        picked = [set(json.loads(picker.stdout.readline())) for picker in pickers]
    finally:
        for picker in pickers:
            picker.communicate("done\n", timeout=30)
    # 12 of 24 each: two independent random picks (the old code) share a port all but always
    assert len(picked[0]) == len(picked[1]) == 12 and not picked[0] & picked[1]
    assert picked[0] | picked[1] == set(range(start, start + 24))


def test_a_live_processs_lease_is_skipped_an_expired_or_dead_ones_taken_over(leases, monkeypatch):
    start = _free_range(3)
    monkeypatch.setattr(stack, "port_range", lambda: range(start, start + 3))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leases.mkdir()
    (leases / str(start)).write_text(str(dead.pid))  # its process is gone
    (leases / str(start + 1)).write_text("1")  # init's: alive
    (leases / str(start + 2)).write_text("1")
    old = time.time() - stack.LEASE_SECONDS - 1  # ...but older than LEASE_SECONDS: expired
    stack.os.utime(leases / str(start + 2), (old, old))
    assert sorted(stack.free_ports(2)) == [start, start + 2]
    assert {(leases / str(p)).read_text() for p in (start, start + 2)} == {str(stack.os.getpid())}
    # this process's own leases hold too, and a range with nothing left fails instead of searching forever
    with pytest.raises(RuntimeError, match="no 1 free ports"):
        stack.free_ports(1)


def test_a_lease_from_the_future_expires_and_a_planted_link_is_not_written_through(leases, monkeypatch, tmp_path):
    """The lease folder is in /tmp, where anyone may have made it: a lease file that is a link to another file is not
    written through (it would overwrite that file with a pid), and a lease dated in the future (a clock set back)
    does not hold for ever."""
    start = _free_range(2)
    monkeypatch.setattr(stack, "port_range", lambda: range(start, start + 2))
    leases.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (leases / str(start)).symlink_to(victim)
    (leases / str(start + 1)).write_text("1")  # init's: alive, but dated an hour ahead
    ahead = time.time() + 3600
    stack.os.utime(leases / str(start + 1), (ahead, ahead))
    assert sorted(stack.free_ports(2)) == [start, start + 1]
    assert victim.read_text() == "keep me"
    assert (leases / str(start + 1)).read_text() == str(stack.os.getpid())


PICK_ONE = """
import json, sys
from pathlib import Path
from tests import stack
stack.PORT_LEASES = Path(sys.argv[1])
stack.port_range = lambda: range(int(sys.argv[2]), int(sys.argv[2]) + 2)
print(json.dumps(stack.free_ports(2)), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                    reason="needs root to become another user")
def test_a_second_user_leases_in_the_folder_the_first_one_made(monkeypatch):
    """A CI host where two users run the suite: the lease folder the first one made (umask 022) is 1777 as /tmp is,
    so the second one's picks are leased there too (and the first one's kept from it). Before, mkdir's 1777 was cut
    to 1755 by the umask: `nobody` could open neither the lock nor a lease, picked ports unleased, and a port the
    first user had leased could be taken before its stack bound it."""
    outer = Path(tempfile.mkdtemp(prefix="railyard-leases-"))  # pytest's tmp_path is not traversable by nobody
    try:
        outer.chmod(0o755)
        folder = outer / "railyard-test-ports"
        monkeypatch.setattr(stack, "PORT_LEASES", folder)
        start = _free_range(4)
        monkeypatch.setattr(stack, "port_range", lambda: range(start, start + 2))
        umask = os.umask(0o022)
        try:
            mine = stack.free_ports(2)
        finally:
            os.umask(umask)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o1777
        done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                               "-c", PICK_ONE, str(folder), str(start)], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        # the first user's live leases hold for the second one too: nothing left in that range
        assert done.returncode != 0 and "no 2 free ports" in done.stderr, done.stdout + done.stderr
        stack.release_ports(mine)
        done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                               "-c", PICK_ONE, str(folder), str(start + 2)], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert done.returncode == 0, done.stderr
        theirs = json.loads(done.stdout)
        assert sorted(theirs) == [start + 2, start + 3]
        assert {(folder / str(port)).stat().st_uid for port in theirs} == {65534}  # leased, by the second user
        # and their ended leases (the process is gone) are the first user's to take over
        monkeypatch.setattr(stack, "port_range", lambda: range(start + 2, start + 4))
        assert sorted(stack.free_ports(2)) == [start + 2, start + 3]
        assert {(folder / str(port)).read_text() for port in theirs} == {str(os.getpid())}
    finally:  # not pytest's folder: removed whatever happened
        shutil.rmtree(outer, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                    reason="needs root to become another user")
def test_a_folder_another_user_made_1755_is_not_used(monkeypatch):
    """The lease folder another user's run of a version before session 37 made (1755 under umask 022: mkdir's 1777
    cut by the umask), with its .lock 0644: a second user can read the lock but make no lease there, so its picks
    are made as before, checked free only. After 27528650 (the lock opened read-only) it took the lock, every lease
    failed and free_ports ended in 'no 2 free ports': every stack start of that user failed."""
    outer = Path(tempfile.mkdtemp(prefix="railyard-leases-"))  # pytest's tmp_path is not traversable by nobody
    try:
        outer.chmod(0o755)
        folder = outer / "railyard-test-ports"
        folder.mkdir()
        folder.chmod(0o1755)
        (folder / ".lock").write_text("")
        (folder / ".lock").chmod(0o644)
        start = _free_range(2)
        done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                               "-c", PICK_ONE, str(folder), str(start)], cwd=REPO, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert done.returncode == 0, done.stdout + done.stderr
        assert sorted(json.loads(done.stdout)) == [start, start + 1]
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # unleased: nobody may not write there
        assert stat.S_IMODE(folder.stat().st_mode) == 0o1755  # not nobody's to change
    finally:  # not pytest's folder: removed whatever happened
        shutil.rmtree(outer, ignore_errors=True)


def test_a_lock_that_cannot_be_taken_picks_unleased(leases, monkeypatch):
    """flock refused (on NFS it is a POSIX lock, which a descriptor opened read-only cannot take exclusively:
    EBADF): ports are picked as when the folder cannot be used, checked free only, where the error ended the pick
    (and with it the stack's start)."""
    start = _free_range(2)
    monkeypatch.setattr(stack, "port_range", lambda: range(start, start + 2))

    def refused(fd, operation):
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(stack.fcntl, "flock", refused)
    assert sorted(stack.free_ports(2)) == [start, start + 1]
    assert sorted(p.name for p in leases.iterdir()) == [".lock"]
    stack.release_ports([start, start + 1])  # (and a release does not fail either)


def test_a_linked_lease_folder_is_not_used(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "leases"
    link.symlink_to(elsewhere)
    monkeypatch.setattr(stack, "PORT_LEASES", link)
    start = _free_range(2)
    monkeypatch.setattr(stack, "port_range", lambda: range(start, start + 2))
    assert len(stack.free_ports(1)) == 1 and not list(elsewhere.iterdir())  # picked as before, checked free only


def test_a_stopped_stack_releases_only_its_own_leases(leases, monkeypatch):
    start = _free_range(4)
    monkeypatch.setattr(stack, "port_range", lambda: range(start, start + 2))
    picked = stack.free_ports(2)
    leases.joinpath(str(start + 3)).write_text("1")  # another process's
    stack.release_ports([*picked, start + 3])
    assert sorted(p.name for p in leases.iterdir() if not p.name.startswith(".")) == [str(start + 3)]


def test_ended_leases_are_removed_at_the_next_pick_a_live_ones_kept(leases, monkeypatch):
    """A lease no stop released (`make test`'s session stacks are stopped after their worker is gone) is removed by
    the next pick, in or out of its range: the folder holds live leases only, not one file a port ever picked."""
    start = _free_range(2)
    monkeypatch.setattr(stack, "port_range", lambda: range(start, start + 1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leases.mkdir()
    (leases / "40001").write_text(str(dead.pid))  # its process gone
    (leases / "40002").write_text("1")  # init's, but older than LEASE_SECONDS
    old = time.time() - stack.LEASE_SECONDS - 1
    stack.os.utime(leases / "40002", (old, old))
    (leases / "40003").write_text("1")  # init's and fresh: live
    (leases / "notes").write_text("not a lease")
    assert stack.free_ports(1) == [start]
    assert {p.name for p in leases.iterdir() if not p.name.startswith(".")} == {"40003", "notes", str(start)}


def test_stack_env_leases_every_port_it_picks_with_its_grpc_port(leases):
    env = stack.stack_env(Path("/unused"))
    running = RunningStack(process=subprocess.Popen(["true"]), data_dir=Path("/unused"), env=env, output=Path("/x"))
    ports = running.ports()
    assert len(ports) == len(stack.PORT_NAMES) + 1
    held = {int(p.name) for p in leases.iterdir() if not p.name.startswith(".")}
    grpc = {int(env[f"RAILYARD_STACK__{name}"]) + stack.GRPC_OFFSET for name in stack.NEEDS_GRPC}
    assert held == set(ports) | grpc
    running.process.wait()
    running.stop()
    assert not [p for p in leases.iterdir() if not p.name.startswith(".")]


def test_a_stack_stopped_to_be_started_again_leases_its_ports_afresh(leases):
    """test_restart.py stops the session's stack, minutes after its ports were picked, and starts it again on them:
    its leases, older than LEASE_SECONDS, had ended (one of them removed by another process's pick), so between the
    stop and the start any other process could pick its ports. lease_ports_again leases them to this process anew."""
    env = stack.stack_env(Path("/unused"))
    running = RunningStack(process=subprocess.Popen(["true"]), data_dir=Path("/unused"), env=env, output=Path("/x"))
    grpc = [int(env[f"RAILYARD_STACK__{name}"]) + stack.GRPC_OFFSET for name in stack.NEEDS_GRPC]
    ports = [*running.ports(), *grpc]
    old = time.time() - stack.LEASE_SECONDS - 1
    for port in ports:
        stack.os.utime(leases / str(port), (old, old))
    (leases / str(ports[0])).unlink()  # dropped as ended by another process's pick
    (leases / str(ports[1])).write_text("1")  # init's, fresh: another live process leased it meanwhile
    assert [p for p in ports if not stack._lease_free(leases, p)] == [ports[1]]
    running.lease_ports_again()
    assert [p for p in ports if stack._lease_free(leases, p)] == []
    assert {p: (leases / str(p)).read_text() for p in ports} == {
        p: "1" if p == ports[1] else str(stack.os.getpid()) for p in ports}
    running.process.wait()
    running.stop()
    assert [p.name for p in leases.iterdir() if not p.name.startswith(".")] == [str(ports[1])]


def test_a_failed_restart_fails_each_later_test_of_the_stack_at_once_naming_it(tmp_path, monkeypatch):
    """test_restart.py stops the session's stack and starts it again for the files after it: a start that does not
    come back (here `railyard up` exits) is recorded, and tests/conftest.py then fails each later test that asks for
    the stack before its fixtures, naming it (they ran into refused connections, 8 of them for 3.5 min)."""
    from tests import conftest

    monkeypatch.setattr(stack, "restart_failed", "")
    stopped = subprocess.Popen(["true"])
    stopped.wait()
    data = tmp_path / "data"
    env = {"RAILYARD_GATEWAY__PORT": "9"}  # nothing answers there
    running = RunningStack(process=stopped, data_dir=data, env=env, output=tmp_path / "up.log")
    (tmp_path / "up.log").write_text("auth: migration 031 failed\n")

    def start(data_dir: Path, env: dict) -> RunningStack:
        return RunningStack(process=subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]),
                            data_dir=data_dir, env=env, output=tmp_path / "up.log")

    monkeypatch.setattr(stack, "start_stack", start)
    with pytest.raises(RuntimeError, match="exited with 3"):
        running.start_again()
    assert stack.restart_failed.startswith("RuntimeError: railyard up exited with 3:")
    assert "migration 031 failed" in stack.restart_failed
    with pytest.raises(pytest.fail.Exception, match="(?s)did not come back from test_restart.*031"):
        conftest.pytest_runtest_setup(SimpleNamespace(fixturenames=["admin", "stack"]))
    conftest.pytest_runtest_setup(SimpleNamespace(fixturenames=["tmp_path"]))  # a test without the stack runs
    monkeypatch.setattr(stack, "restart_failed", "")
    conftest.pytest_runtest_setup(SimpleNamespace(fixturenames=["stack"]))


def test_wait_healthy_fails_at_once_when_a_service_cannot_bind_its_port(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "nats.log").write_text("[ERR] listen tcp 127.0.0.1:4222: bind: address already in use\n")
    up = tmp_path / "up.log"
    up.write_text("railyard: gateway exited with code 1; restarting in 0.4s\n")
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the nats line was there before this start (a restarted data directory): only the gateway's is new
        running = RunningStack(process=supervisor, data_dir=data, env={"RAILYARD_GATEWAY__PORT": "1"}, output=up,
                               log_sizes={"nats.log": (data / "logs" / "nats.log").stat().st_size})
        (data / "logs" / "gateway.log").write_text(
            "ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 1): address already in use\n")
        # at once: before its first look at the health route and its first pause between looks (counted, not timed:
        # a bound of 5 s of wall time could fail on a loaded machine)
        waited: list[str] = []
        monkeypatch.setattr(stack.time, "sleep", lambda seconds: waited.append(f"sleep {seconds}"))
        monkeypatch.setattr(RunningStack, "health", lambda self: waited.append("health") or (0, {}))
        with pytest.raises(RuntimeError, match="taken by another process") as caught:
            running.wait_healthy(30)
        assert waited == []
        assert "gateway: ERROR: [Errno 98]" in str(caught.value) and "nats:" not in str(caught.value)
    finally:
        supervisor.kill()
        supervisor.wait()


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_test_ports_and_their_grpc_ports_lie_below_the_ephemeral_range(monkeypatch, workers):
    """An outgoing connection anywhere on the machine may take an ephemeral port as its local port, and a server
    cannot then bind it: SeaweedFS's gRPC port (+10000) once fell there and `weed` exited at a stack's start."""
    ephemeral = stack.ephemeral_ports()
    slices = []
    for worker in range(max(workers, 1)):
        if workers:
            monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
            monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        else:
            monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
            monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
        ports = stack.port_range()
        assert len(ports) >= 1000
        assert ports.start >= 1024 and ports.stop + stack.GRPC_OFFSET <= ephemeral.start, (ports, ephemeral)
        slices.append(set(ports) | {p + stack.GRPC_OFFSET for p in ports})
    for i, mine in enumerate(slices):  # no worker's ports, gRPC ones included, are another worker's
        assert all(not mine & other for other in slices[i + 1:])
