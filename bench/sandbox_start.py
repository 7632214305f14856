"""`python -m bench.sandbox_start [rounds] [runs per round] [memory|pids]`: what a sandbox's memory cgroup adds to
its start (docs/performance.md item 40), or (`pids`) what its cgroup v1 pids cgroup adds beside the memory cgroup
(item 44). `shared.sandbox.run` of `python -I -S -c pass`, with the cgroup and without it (the launch config's
"cgroup", or "pids_cgroup", left out), alternated within each round (the order swapped every round) so the machine's
load weighs on both alike; the load average is printed beside each round. Needs a writable memory cgroup (root, or
a delegated subtree), and for `pids` a writable v1 pids hierarchy."""
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shared import sandbox
from shared.sandbox import Limits, SandboxSpec

_launch_config = sandbox._launch_config
with_cgroup = {"on": True, "key": "cgroup"}


def launch_config(spec, settings):
    config = _launch_config(spec, settings)
    if not with_cgroup["on"]:
        config.pop(with_cgroup["key"], None)
    return config


sandbox._launch_config = launch_config


async def once(folder: str) -> float:
    spec = SandboxSpec(argv=[sys.executable, "-I", "-S", "-c", "pass"], workdir=Path(folder) / "work",
                       limits=Limits(wall_seconds=30))
    started = time.perf_counter()
    result = await sandbox.run(spec)
    assert result.returncode == 0, result.stderr_tail
    return time.perf_counter() - started


async def main(rounds: int, per: int, which: str = "memory") -> None:
    if sandbox.memory_cgroup()[0] is None:
        sys.exit(f"no memory cgroup here: {sandbox.memory_cgroup()[1]}")
    if which == "pids":
        if sandbox.pids_cgroup()[0] is None:
            sys.exit(f"no pids cgroup here: {sandbox.pids_cgroup()[1]}")
        with_cgroup["key"] = "pids_cgroup"
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        await once(folder)
        for number in range(rounds):
            load = os.getloadavg()[0]
            line = []
            for on in (True, False) if number % 2 == 0 else (False, True):
                with_cgroup["on"] = on
                taken = [await once(folder) for _ in range(per)]
                times[on].extend(taken)
                line.append(f"{'cgroup' if on else 'none'} {statistics.median(taken) * 1000:.1f} ms")
            print(f"round {number} load {load:.2f}: " + ", ".join(line), flush=True)
    paired = [a - b for a, b in zip(times[True], times[False], strict=True)]
    print(f"paired difference (cgroup - none), median: {statistics.median(paired) * 1000:.1f} ms")
    for on in (True, False):
        ordered = sorted(times[on])
        print(f"{'cgroup' if on else 'none'}: median {statistics.median(ordered) * 1000:.1f} ms, "
              f"p90 {ordered[int(0.9 * len(ordered))] * 1000:.1f} ms, n {len(ordered)}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40, int(sys.argv[2]) if len(sys.argv) > 2 else 3,
                     sys.argv[3] if len(sys.argv) > 3 else "memory"))
