"""`python -m bench.sandbox_oom_lag [rounds]`: how long the rest of a sandbox runs on after an OOM kill in its
cgroup v1 memory cgroup (v1 kills one process; the launcher kills the rest), with the launcher told by the cgroup's
OOM eventfd and with its measurements only (the launch config's "oom_events" off), alternated within each round
(order swapped every round); the load average beside each round (docs/security.md, "Memory"). Three children of 60
MiB under 128 MiB and one small survivor that prints the time every 2 ms; this process registers an eventfd of its
own on the sandbox's memory cgroup, and the figure is the survivor's last time minus the moment of the OOM event
(negative: its last line came before this process woke). Needs a writable v1 memory cgroup (root)."""
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shared import sandbox, sandbox_launcher
from shared.sandbox import Limits, SandboxSpec
from shared.settings import Settings

CODE = """
import os, time
if os.fork() == 0:
    while True:
        os.write(1, b"%.6f\\n" % time.monotonic())
        time.sleep(0.002)
for _ in range(3):
    if os.fork() == 0:
        time.sleep(1.2)
        block = bytearray(60 << 20)
        for at in range(0, len(block), 4096):
            block[at] = 1
        time.sleep(30)
        os._exit(0)
time.sleep(30)
"""
_launch_config = sandbox._launch_config
events = {"on": True}


def launch_config(spec, settings):
    config = _launch_config(spec, settings)
    if "cgroup" in config:
        config["cgroup"]["oom_events"] = events["on"]
    return config


sandbox._launch_config = launch_config


def register(path: str) -> int:
    """An eventfd of this process's own on the OOM events of the memory cgroup at `path`."""
    event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    control = os.open(os.path.join(path, "memory.oom_control"), os.O_RDONLY)
    with open(os.path.join(path, "cgroup.event_control"), "w") as handle:
        handle.write(f"{event} {control}")
    os.close(control)
    return event


async def once(settings: Settings, folder: str, parent: str) -> tuple[str | None, float | None]:
    spec = SandboxSpec(argv=[sys.executable, "-c", CODE], workdir=Path(folder) / "work",
                       limits=Limits(memory_bytes=128 << 20, wall_seconds=20))
    before = set(os.listdir(parent))
    running = asyncio.create_task(sandbox.run(spec, settings=settings))
    while not (new := [name for name in set(os.listdir(parent)) - before  # noqa: ASYNC110 - a new directory
                       if name.startswith(sandbox_launcher.CGROUP_PREFIX)]):  # has no event to await
        await asyncio.sleep(0.005)
    event = register(os.path.join(parent, new[0]))
    loop = asyncio.get_running_loop()
    seen = loop.create_future()
    loop.add_reader(event, lambda: seen.done() or seen.set_result(time.monotonic()))
    result = await running
    loop.remove_reader(event)
    os.close(event)
    times = [float(line) for line in result.stdout.split()]
    return result.limit_hit, (times[-1] - seen.result()) * 1000 if seen.done() and times else None


async def main(rounds: int) -> None:
    found = sandbox.memory_cgroup()[0]
    if found is None or found[0] != 1:
        sys.exit(f"no cgroup v1 memory cgroup here: {sandbox.memory_cgroup()[1] or found}")
    lags: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        settings = Settings(stack={"data_dir": Path(folder) / "data"})
        sandbox.check_available(settings)  # its probe sandbox first
        for number in range(rounds):
            load = os.getloadavg()[0]
            line = []
            for on in (True, False) if number % 2 == 0 else (False, True):
                events["on"] = on
                hit, lag = await once(settings, folder, found[1])
                if lag is not None:
                    lags[on].append(lag)
                line.append(f"{'event' if on else 'measured'} {hit} {lag if lag is None else f'{lag:.1f} ms'}")
            print(f"round {number} load {load:.2f}: " + ", ".join(line), flush=True)
    for on in (True, False):
        ordered = sorted(lags[on])
        if ordered:
            print(f"{'event' if on else 'measured'}: median {statistics.median(ordered):.1f} ms, "
                  f"min {ordered[0]:.1f}, max {ordered[-1]:.1f}, n {len(ordered)}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 12))
