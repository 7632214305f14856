"""When the batch-1 tail's slow requests happen: per-request timestamps and latencies on one connection.

    python -m bench.tail_trace [--rounds 3] [--count 1500] [--form records] [--perf-sched ROUND]
                               [--env RAILYARD_...=value] [--slice US:ROLES] [--shares N] [--hold S]
                               [--out build/tail/trace.json]

Starts a fresh embedded stack, deploys ccfraud, and runs `rounds` sequential runs of `count` batch-1 requests on
one connection, recording each request's start (CLOCK_MONOTONIC, the clock `perf ... -k CLOCK_MONOTONIC` uses)
and latency. It prints the latency histogram and how the slow requests (over 3x the p50) are spaced: a timer
shows as a peak of the gaps between slow requests at its period, the scheduler as no peak. `--perf-sched N`
records `perf sched record -a -k CLOCK_MONOTONIC` around round N (build/tail/sched.data), so that
`perf sched timehist` can say which process ran while a slow request waited (bench/tail_sched.py reads both).
The JSON written holds the samples and the stack's processes and threads by role. `--shares 100000` runs it all
in a cpu cgroup of that weight, so that other people's work on the machine hardly takes CPU from it (a stand-in
for a quiet machine; it still waits for a task's slice to end, which is what the tail is made of).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import uvloop

from bench import loadgen
from bench.cpu_account import _role
from bench.peers.harness import ccfraud_stack, cmdline, descendants


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32), ("flags", ctypes.c_uint64),
                ("nice", ctypes.c_int32), ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64), ("util_min", ctypes.c_uint32),
                ("util_max", ctypes.c_uint32)]


def set_slice(tid: int, nanoseconds: int) -> None:
    """The EEVDF slice of a thread (sched_setattr's sched_runtime for SCHED_OTHER, Linux >= 6.12), nice kept."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _SchedAttr()
    if libc.syscall(315, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:  # sched_getattr
        raise OSError(ctypes.get_errno(), "sched_getattr")
    attr.size, attr.runtime = ctypes.sizeof(attr), nanoseconds
    if libc.syscall(314, tid, ctypes.byref(attr), 0) != 0:  # sched_setattr
        raise OSError(ctypes.get_errno(), "sched_setattr")


@contextlib.contextmanager
def quiet_group(shares: int):
    """This process (and what it starts) in a cpu cgroup of `shares`, removed afterwards."""
    path = Path(f"/sys/fs/cgroup/cpu/railyard-tail-{os.getpid()}")
    path.mkdir()
    try:
        (path / "cpu.shares").write_text(str(shares))
        (path / "cgroup.procs").write_text(str(os.getpid()))
        yield
    finally:
        Path("/sys/fs/cgroup/cpu/cgroup.procs").write_text(str(os.getpid()))
        for pid in (path / "cgroup.procs").read_text().split():  # leftovers of the stacks, if any
            with contextlib.suppress(OSError):
                Path("/sys/fs/cgroup/cpu/cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            path.rmdir()


def fine_role(pid: int) -> str:
    """The service a process is (`services.X` -> X, nats-server, postgres, weed, ...), finer than cpu_account's."""
    line = cmdline(pid)
    if "services.engine.replica" in line:
        return "engine replica"
    if " -m services." in line:
        return line.split(" -m services.", 1)[1].split()[0].split(".")[0]
    for key in ("nats-server", "postgres", "weed", "shared.cli"):
        if key in line:
            return key
    return line.split(" ", 1)[0].rsplit("/", 1)[-1][:20] or "?"


def autogroup(pid: int) -> str:
    """The process's autogroup (/proc/PID/autogroup: one per session where the cpu cgroup is the root)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/autogroup").read_text().strip()
    return "?"


def thread_roles(pids: dict[int, str]) -> tuple[dict[int, str], dict[int, str]]:
    """thread id -> role (the request chain's roles as cpu_account names them, else the fine role), and thread id
    -> 'role/thread name' for perf sched's per-thread lines."""
    threads, names = {}, {}
    for pid, role in pids.items():
        fine = role if role in ("loadgen", "gateway", "nats", "engine replica") else fine_role(pid)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                threads[int(tid)] = fine
                with contextlib.suppress(OSError):
                    comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                    names[int(tid)] = f"{fine}/{comm}" + (f"+{int(tid) - pid}" if int(tid) != pid else "")
    return threads, names


OUT = Path(__file__).resolve().parent.parent / "build" / "tail"


async def timed(url: str, request: bytes, count: int) -> list[tuple[float, float]]:
    """(start on CLOCK_MONOTONIC, latency) in seconds of `count` requests one after another on one connection."""
    connection = await loadgen.Connection(url).open()
    samples = []
    clock = time.monotonic
    try:
        for _ in range(count):
            started = clock()
            status, body = await connection.send(request)
            samples.append((started, clock() - started))
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    finally:
        connection.close()
    return samples


def describe(samples: list[tuple[float, float]]) -> None:
    """The latency histogram and the spacing of slow requests."""
    starts = np.array([s for s, _ in samples])
    lat = np.array([v for _, v in samples]) * 1e3
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    print(f"  {len(lat)} requests: p50 {p50:.3f} ms p90 {np.percentile(lat, 90):.3f} p99 {p99:.3f} "
          f"max {lat.max():.2f}  p99/p50 {p99 / p50:.2f}")
    edges = [0, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 1e9]
    counts, _ = np.histogram(lat / p50, bins=edges)
    print("  latency / p50 histogram: " + "  ".join(f"<{b:g}:{c}" for b, c in zip(edges[1:], counts, strict=True) if c))
    slow = lat > 3 * p50
    print(f"  slow (> 3x p50): {slow.sum()} ({100 * slow.mean():.2f} %), after a slow one: "
          f"{int((slow[1:] & slow[:-1]).sum())}")
    times = starts[slow]
    if len(times) > 2:
        gaps = np.diff(times) * 1e3
        p10, p50_gap, p90 = np.percentile(gaps, [10, 50, 90])
        print(f"  gaps between slow requests (ms): p10 {p10:.1f} p50 {p50_gap:.1f} p90 {p90:.1f}")
        for period in (4, 10, 20, 50, 100, 200, 250, 500, 1000):
            phase = (times * 1e3 % period) / period * 2 * np.pi
            strength = abs(np.exp(1j * phase).mean())  # 1: always at one phase of the period; ~1/sqrt(n): none
            none = 1 / np.sqrt(len(times))
            print(f"    period {period:5d} ms: phase concentration {strength:.2f} (none ~{none:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--form", default="records", choices=["records", "Arrow", "OIP v2"])
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the whole stack")
    parser.add_argument("--config", default="{}", help="engine_config JSON of the deployment")
    parser.add_argument("--perf-sched", type=int, default=-1, help="record perf sched around this round")
    parser.add_argument("--hold", type=float, default=0, help="seconds to keep the stack up after (py-spy etc.)")
    parser.add_argument("--slice", default="", help="microseconds:role,role (loadgen: this process) - as "
                        "bench/tail_ab.py's --slice")
    parser.add_argument("--shares", type=int, default=0, help="as bench/tail_ab.py's --shares")
    parser.add_argument("--out", default=str(OUT / "trace.json"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with quiet_group(args.shares) if args.shares else contextlib.nullcontext():
        trace(args)


def trace(args: argparse.Namespace) -> None:
    with ccfraud_stack("railyard-tail-", args.env) as (stack, deployer):
        target = deployer.targets(deployer.deploy("tail-0", ["ccfraud"], json.loads(args.config)))[args.form]
        uvloop.run(timed(target.url, target.one, 300))
        pids = {pid: _role(pid) for pid in descendants(stack.process.pid)} | {os.getpid(): "loadgen"}
        if args.slice:
            micros, roles = args.slice.split(":", 1)
            for pid, role in pids.items():
                if role in roles.split(","):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        with contextlib.suppress(OSError):
                            set_slice(int(tid), int(micros) * 1000)
        every: list[tuple[float, float]] = []
        rounds = []
        for index in range(args.rounds):
            perf = None
            if index == args.perf_sched:
                perf = subprocess.Popen(["perf", "sched", "record", "-a", "-k", "CLOCK_MONOTONIC", "-o",
                                         str(OUT / "sched.data")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            run = uvloop.run(timed(target.url, target.one, args.count))
            if perf is not None:
                perf.send_signal(2)
                perf.wait(60)
            every += run
            rounds.append(run)
            print(f"round {index}{' (perf sched)' if perf else ''}:")
            describe(run)
        print("all rounds:")
        describe(every)
        threads, names = thread_roles(pids)
        groups = {pid: autogroup(pid) for pid in pids}
        print("autogroups: " + ", ".join(f"{fine_role(pid)} {groups[pid]}" for pid in pids))
        Path(args.out).write_text(json.dumps({"form": args.form, "env": args.env, "pids": pids,
                                              "threads": threads, "names": names, "autogroups": groups,
                                              "rounds": rounds, "perf_sched_round": args.perf_sched}))
        print(f"written {args.out}")
        if args.hold:
            print("holding; pids:", {r: [p for p, q in pids.items() if q == r] for r in set(pids.values())})
            time.sleep(args.hold)


if __name__ == "__main__":
    main()
