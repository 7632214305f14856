"""A graceful stack stop lets the deployer's engine replicas drain: the supervisor's real stop (EmbeddedStack.stop) of
a deployer stand-in that runs the real LocalBackend over two replica sets whose replicas take a while to publish the
log rows they hold (real processes, no stack). Before: the deployer got the services' short grace, then SIGKILL to its
whole process group, and its close() stopped the sets one after another, so replicas still draining were killed and
their rows lost (rev1's finding, notes/s8/requests.md 00:47)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil

from shared.embedded.stack import Child, EmbeddedStack
from shared.settings import DeployerSettings, Settings, StackSettings

REPO = Path(__file__).resolve().parents[2]
ROWS = 10  # each replica's log rows of requests it answered, published only when it drains

# an engine replica stand-in: on SIGTERM it takes `drain` seconds (publishing what it holds), and, when its folder
# names another service's pid (other.pid), also until that one is gone; then writes its rows. Its SIGTERM and its
# rows are lines of the folder's `events`, in the order they happened (appends of one line)
REPLICA = f"""
import os, signal, sys, time
rows, drain = sys.argv[1], float(sys.argv[2])
folder = os.path.dirname(rows)
def event(what):
    with open(os.path.join(folder, "events"), "a") as out:
        out.write(what + " " + os.path.basename(rows) + "\\n")
def gone(pid):
    try:
        with open(f"/proc/{{pid}}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True
def stop(*_):
    event("term")
    time.sleep(drain)
    other = os.path.join(folder, "other.pid")
    if os.path.exists(other):
        pid, deadline = int(open(other).read()), time.monotonic() + 60
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    with open(rows, "a") as out:
        out.write("row\\n" * {ROWS})
    event("rows")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(rows + ".ready", "w").close()
print("ready", flush=True)
time.sleep(120)
"""

# the deployer stand-in: the real LocalBackend holding one replica set per deployment; SIGTERM closes it, as the
# deployer's stop hook does
DEPLOYER = """
import asyncio, signal, sys, time
from pathlib import Path
from services.deployer.backend import LocalBackend, Replica, ReplicaSet, _die_with_parent

async def main(folder, sets, drain, stop_timeout, replica):
    backend = LocalBackend(folder, None, scale_down_after=60, ready_timeout=60, stop_timeout=stop_timeout)
    for index in range(sets):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", replica, str(folder / f"rows-{index}"), str(drain), preexec_fn=_die_with_parent)
        backend.sets[f"d{index}"] = ReplicaSet(f"d{index}", folder / "spec.json",
                                               replicas=[Replica(str(index), process, time.monotonic())])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await backend.close()

folder, sets, drain, stop_timeout, replica = sys.argv[1:]
asyncio.run(main(Path(folder), int(sets), float(drain), float(stop_timeout), replica))
"""

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"


def test_graceful_stop_lets_every_deployment_publish_its_log_rows(tmp_path):
    """Checked by what happened in which order, not by wall times (bounds of 3 s and 1.5 s failed on a loaded
    machine): every replica was told to stop before any had published (at once, not one set after another), and each
    drains until the other service, which ignores SIGTERM, is gone: it keeps its own short grace (killed after its
    0.5 s). A stop that waited for the deployer before killing it would leave the replicas draining past the
    deployer's grace (2 + 0.5 s): killed, their rows lost."""
    sets, drain = 3, 1.0
    stack = EmbeddedStack(Settings(stack=StackSettings(data_dir=tmp_path / "data", stop_grace=0.5),
                                   deployer=DeployerSettings(stop_timeout=2.0)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    deployer = Child("deployer", [sys.executable, "-c", DEPLOYER, str(tmp_path), str(sets), str(drain),
                                  str(stack.settings.deployer.stop_timeout), REPLICA],
                     env, tmp_path / "deployer.log", stop_grace=stack.service_stop_grace("deployer"), cwd=REPO)
    other = Child("gateway", [sys.executable, "-c", STUBBORN], env, tmp_path / "gateway.log",
                  stop_grace=stack.service_stop_grace("gateway"))
    deployer.start()
    other.start()
    (tmp_path / "other.pid").write_text(str(other.pid))
    stack.services = [deployer, other]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"rows-{i}.ready").exists() for i in range(sets)) and time.monotonic() < deadline:
        assert deployer.alive(), (tmp_path / "deployer.log").read_text()
        time.sleep(0.02)
    replicas = psutil.Process(deployer.pid).children()
    assert len(replicas) == sets
    began = time.monotonic()
    try:
        stack.stop()
    finally:
        took = time.monotonic() - began
        for process in replicas:  # a failure leaves nothing running
            if process.is_running():
                process.kill()
    rows = sum(len(path.read_text().splitlines()) for path in tmp_path.glob("rows-?"))
    assert rows == sets * ROWS, f"{rows} of {sets * ROWS} log rows published; the stop took {took:.1f} s"
    assert deployer.proc.returncode == 0, (tmp_path / "deployer.log").read_text()
    # the sets drained at once: every replica's SIGTERM before any published (one after another: term, rows, term...)
    events = [line.split()[0] for line in (tmp_path / "events").read_text().splitlines()]
    assert events == ["term"] * sets + ["rows"] * sets, events
    # another service keeps the short grace: killed (it ignores SIGTERM) while the deployer still drained
    assert other.proc.returncode == -9, other.proc.returncode


def test_close_waits_for_a_scaled_down_replica_still_draining(tmp_path):
    """A replica the autoscaler retired is draining (publishing its rows) when the deployer stops: close() waits for
    it as for the sets' replicas. Before, it was only sent SIGTERM and forgotten, so the stack's sweep of the
    deployer's group killed it."""
    from services.deployer.backend import LocalBackend, Replica, ReplicaSet

    async def scenario() -> None:
        backend = LocalBackend(tmp_path, None, scale_down_after=0.01, ready_timeout=60, stop_timeout=5)
        replicas = []
        drains = ["0.3", "1.2"]  # the retired one (the last) drains longer than the set's
        for index in range(2):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", REPLICA, str(tmp_path / f"rows-{index}"), drains[index],
                stdout=asyncio.subprocess.PIPE)
            assert await process.stdout.readline() == b"ready\n"  # its SIGTERM handler is set
            replicas.append(Replica(str(index), process, time.monotonic()))
        replica_set = ReplicaSet("d", tmp_path / "spec.json", replicas=list(replicas), autoscale=(1, 2),
                                 last_scaled=time.monotonic() - 60)
        backend.sets["d"] = replica_set
        await backend._autoscale(replica_set)  # idle: one replica retired
        assert len(replica_set.replicas) == 1
        await backend.close()
        assert all(replica.process.returncode == 0 for replica in replicas)
        rows = sum(len(path.read_text().splitlines()) for path in tmp_path.glob("rows-?"))
        assert rows == 2 * ROWS

    asyncio.run(scenario())
