"""What the slow batch-1 requests waited on: bench/tail_trace.py's samples against `perf sched timehist`.

    python -m bench.tail_sched [build/tail/trace.json] [build/tail/sched.data]

For every request of the round recorded under `perf sched record` it adds up, inside the request's window, how
long each process of the request chain (load generator, gateway, nats-server, engine replica) ran and how long it
was runnable but not running (the scheduler's delay), and which other tasks ran on the two CPUs meanwhile; then
compares the slow requests (over 3x the p50) with the rest: whether a slow request is more CPU work (run time
grows) or waiting for a CPU (delay grows), and whose run time filled the wait.
"""
from __future__ import annotations

import bisect
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.tail_trace import OUT

LINE = re.compile(r"^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
KERNEL = re.compile(r"^(ksoftirqd|kworker|rcu_|migration|kcompactd|kswapd|jbd2|khugepaged|kdamond|swapper)")
CHAIN = ("loadgen", "gateway", "nats", "engine replica")


def events(data: Path) -> list[tuple[float, int, str, int, float, float]]:
    """(end, cpu, comm, tid, delay s, run s) per switch-out, sorted by end."""
    text = subprocess.run(["perf", "sched", "timehist", "-i", str(data)], capture_output=True, text=True).stdout
    found = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            end, cpu, comm, tid, _, _, delay, run = match.groups()
            found.append((float(end), int(cpu), comm.strip(), int(tid), float(delay) / 1e3, float(run) / 1e3))
    found.sort()
    return found


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def main() -> None:
    trace = Path(sys.argv[1] if len(sys.argv) > 1 else OUT / "trace.json")
    data = Path(sys.argv[2] if len(sys.argv) > 2 else OUT / "sched.data")
    recorded = json.loads(trace.read_text())
    threads = {int(t): role for t, role in recorded["threads"].items()}
    samples = recorded["rounds"][recorded["perf_sched_round"]]
    found = events(data)
    ends = [e[0] for e in found]
    lat = np.array([v for _, v in samples])
    p50 = np.median(lat)
    per_request = []
    for start, latency in samples:
        stop = start + latency
        run: collections.Counter[str] = collections.Counter()
        delay: collections.Counter[str] = collections.Counter()
        others: collections.Counter[str] = collections.Counter()
        for end, _, comm, tid, d, r in found[bisect.bisect_left(ends, start):bisect.bisect_left(ends, stop + 0.2)]:
            role = threads.get(tid)
            ran = overlap(end - r, end, start, stop)
            if role in CHAIN:
                run[role] += ran
                delay[role] += overlap(end - r - d, end - r, start, stop)
            elif ran:
                others[role or comm] += ran
        per_request.append((run, delay, others))
    # requests during which nothing outside this stack ran (what a quiet machine would show)
    foreign = np.array([sum(v for k, v in c[2].items() if k not in set(threads.values()) and not KERNEL.match(k))
                        for c in per_request])
    quiet = foreign < 50e-6
    if quiet.any():
        q = lat[quiet] * 1e3
        print(f"requests with < 50 us of other systems' CPU in their window: {quiet.sum()} of {len(lat)}, "
              f"p50 {np.percentile(q, 50):.3f} ms p99 {np.percentile(q, 99):.3f} p99/p50 "
              f"{np.percentile(q, 99) / np.percentile(q, 50):.2f}; the others: p50 "
              f"{np.percentile(lat[~quiet], 50) * 1e3:.3f} p99 {np.percentile(lat[~quiet], 99) * 1e3:.3f}")
    groups = {"fast (< 1.5x p50)": lat < 1.5 * p50, "slow (> 3x p50)": lat > 3 * p50,
              "slowest 1 %": lat >= np.percentile(lat, 99),
              "quiet and slow (> 2x p50)": quiet & (lat > 2 * p50)}
    for name, mask in groups.items():
        chosen = [per_request[i] for i in np.flatnonzero(mask)]
        if not chosen:
            continue
        n = len(chosen)
        print(f"{name}: {n} requests, latency mean {lat[mask].mean() * 1e3:.3f} ms")
        for role in CHAIN:
            r = sum(c[0][role] for c in chosen) / n * 1e3
            d = sum(c[1][role] for c in chosen) / n * 1e3
            print(f"  {role:15s} ran {r:.3f} ms  runnable, not running {d:.3f} ms")
        others = collections.Counter()
        for c in chosen:
            others.update(c[2])
        print("  others running meanwhile (ms per request, both CPUs): "
              + ", ".join(f"{k} {v / n * 1e3:.3f}" for k, v in others.most_common(12)))


if __name__ == "__main__":
    main()
