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

LINE = re.compile(r"^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.+?)\[(\d+)(?:/(\d+))?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                  r"(?:\s+(\S+))?")
KERNEL = re.compile(r"^(ksoftirqd|kworker|rcu_|migration|kcompactd|kswapd|jbd2|khugepaged|kdamond|swapper)")
CHAIN = ("loadgen", "gateway", "nats", "engine replica")


STATES: dict[tuple[float, int], str] = {}  # (end, tid) -> the state it switched out in (R: preempted, S: slept)


def events(data: Path) -> list[tuple[float, int, str, int, float, float]]:
    """(end, cpu, comm, tid, delay s, run s) per switch-out, sorted by end; the states go to STATES."""
    text = subprocess.run(["perf", "sched", "timehist", "--state", "-i", str(data)], capture_output=True,
                          text=True).stdout
    found = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            end, cpu, comm, tid, _, _, delay, run, state = match.groups()
            found.append((float(end), int(cpu), comm.strip(), int(tid), float(delay) / 1e3, float(run) / 1e3))
            STATES[float(end), int(tid)] = state or "?"
    found.sort()
    return found


def tick_phase(found: list[tuple[float, int, str, int, float, float]], period: float = 0.004) -> float:
    """The phase (s) of the scheduler tick: where preempted tasks' (state R) switch-outs cluster, mod `period`."""
    phases = np.array([end % period for end, _, _, tid, _, _ in found if STATES.get((end, tid)) == "R"])
    counts, edges = np.histogram(phases, bins=40, range=(0, period))
    return float(edges[int(np.argmax(counts))])


PAIRS: collections.Counter[str] = collections.Counter()  # a chain thread's wait behind another chain thread, s
HOLDER_KINDS = ("the request chain", "the stack's background", "kernel threads", "outside the stack")


def holder_kind(name: str, threads: dict[int, str]) -> str:
    """Which of HOLDER_KINDS a task name of `holders` is: the chain's roles, another process of the stack (its
    'role/thread' names), a kernel thread, or anything else (other people's work on the machine)."""
    role = name.split("/", 1)[0]
    if role in CHAIN:
        return HOLDER_KINDS[0]
    if "/" in name and role in set(threads.values()) and not KERNEL.match(name):
        return HOLDER_KINDS[1]
    if KERNEL.match(name):
        return HOLDER_KINDS[2]
    return HOLDER_KINDS[3]


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def main() -> None:
    trace = Path(sys.argv[1] if len(sys.argv) > 1 else OUT / "trace.json")
    data = Path(sys.argv[2] if len(sys.argv) > 2 else OUT / "sched.data")
    recorded = json.loads(trace.read_text())
    threads = {int(t): role for t, role in recorded["threads"].items()}
    names = {int(t): name for t, name in recorded.get("names", {}).items()}
    samples = recorded["rounds"][recorded["perf_sched_round"]]
    found = events(data)
    ends = [e[0] for e in found]
    by_cpu: dict[int, list[tuple[float, float, str, int]]] = collections.defaultdict(list)  # (start, end, name) run
    for end, cpu, comm, tid, _, r in found:
        by_cpu[cpu].append((end - r, end, names.get(tid) or threads.get(tid) or comm, tid))
    cpu_starts = {cpu: [e[0] for e in runs] for cpu, runs in by_cpu.items()}

    phase = tick_phase(found)
    kinds: collections.Counter[str] = collections.Counter()  # how the long waits ended, by kind, in ms

    def holders(cpu: int, t0: float, t1: float) -> collections.Counter[str]:
        """Who ran on `cpu` between t0 and t1 (while a chain thread waited to run there)."""
        held: collections.Counter[str] = collections.Counter()
        runs = by_cpu[cpu]
        for begin, end, name, tid in runs[max(0, bisect.bisect_left(cpu_starts[cpu], t0 - 0.1)):
                                          bisect.bisect_right(cpu_starts[cpu], t1)]:
            if (part := overlap(begin, end, t0, t1)) > 0:
                held[name] += part
                if t1 - t0 > 200e-6 and abs(end - t1) < 20e-6:  # the one whose switch-out ended a long wait
                    state = STATES.get((end, tid), "?")
                    at_tick = min((end - phase) % 0.004, 0.004 - (end - phase) % 0.004) < 150e-6
                    kind = ("kernel thread, " if name.startswith(("kworker", "ksoftirqd", "kdamond", "rcu")) else "") \
                        + ({"R": "preempted", "S": "slept", "D": "slept (D)", "I": "idle"}.get(state, state)) \
                        + (" at a tick" if at_tick and state == "R" else "")
                    own = "/" in name  # a thread of this stack or the load generator ('role/thread' names)
                    kinds[f"{kind} ({name.split('+')[0] if own else 'outside the stack'})"] += (t1 - t0) * 1e3
        return held
    lat = np.array([v for _, v in samples])
    p50 = np.median(lat)
    per_request = []
    for start, latency in samples:
        stop = start + latency
        run: collections.Counter[str] = collections.Counter()
        delay: collections.Counter[str] = collections.Counter()
        others: collections.Counter[str] = collections.Counter()
        waits: collections.Counter[str] = collections.Counter()  # the chain's waits by thread
        held: collections.Counter[str] = collections.Counter()  # who ran where a chain thread waited
        for end, cpu, comm, tid, d, r in found[bisect.bisect_left(ends, start):bisect.bisect_left(ends, stop + 0.2)]:
            role = threads.get(tid)
            ran = overlap(end - r, end, start, stop)
            if role in CHAIN:
                run[role] += ran
                waited = overlap(end - r - d, end - r, start, stop)
                delay[role] += waited
                if waited and not names.get(tid, "").endswith("nats-server+1"):  # Go's sysmon (the runtime's first
                    # thread after main, pid + 1) runs beside the request, not on its path
                    waits[names.get(tid, role)] += waited
                    by = holders(cpu, max(end - r - d, start), min(end - r, stop))
                    held.update(by)
                    for name, part in by.items():
                        if name.split("/", 1)[0] in CHAIN:
                            PAIRS[f"{names.get(tid, role)} behind {name}"] += part
                if ran:
                    others[names.get(tid, role)] += ran
            elif ran:
                others[names.get(tid) or role or comm] += ran
        per_request.append((run, delay, others, waits, held))
    # requests during which nothing outside this stack ran (what a quiet machine would show)
    foreign = np.array([sum(v for k, v in c[2].items()
                            if "/" not in k and k not in set(threads.values()) and not KERNEL.match(k))
                        for c in per_request])
    quiet = foreign < 50e-6
    if quiet.any():
        q = lat[quiet] * 1e3
        print(f"requests with < 50 us of other systems' CPU in their window: {quiet.sum()} of {len(lat)}, "
              f"p50 {np.percentile(q, 50):.3f} ms p99 {np.percentile(q, 99):.3f} p99/p50 "
              f"{np.percentile(q, 99) / np.percentile(q, 50):.2f}; the others: p50 "
              f"{np.percentile(lat[~quiet], 50) * 1e3:.3f} p99 {np.percentile(lat[~quiet], 99) * 1e3:.3f}")
    groups = {"all": lat > 0, "fast (< 1.5x p50)": lat < 1.5 * p50, "slow (> 3x p50)": lat > 3 * p50,
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
        others, waits, held = collections.Counter(), collections.Counter(), collections.Counter()
        for c in chosen:
            others.update(c[2])
            waits.update(c[3])
            held.update(c[4])
        kinds_held: collections.Counter[str] = collections.Counter()
        for k, v in held.items():
            kinds_held[holder_kind(k, threads)] += v
        print("  a chain thread's wait for a CPU, by who held it (ms per request): "
              + ", ".join(f"{k} {kinds_held[k] / n * 1e3:.3f}" for k in HOLDER_KINDS))
        print("  who held the CPU a chain thread waited for (ms per request): "
              + ", ".join(f"{k} {v / n * 1e3:.3f}" for k, v in held.most_common(14)))
        print("  the chain's waits by thread (ms per request): "
              + ", ".join(f"{k} {v / n * 1e3:.3f}" for k, v in waits.most_common(8)))
        print("  tasks running in the window (ms per request, both CPUs, the chain's threads included): "
              + ", ".join(f"{k} {v / n * 1e3:.3f}" for k, v in others.most_common(16)))


    print(f"the chain's waits behind its own threads, all {len(samples)} requests (ms per request): "
          + ", ".join(f"{k} {v / len(samples) * 1e3:.3f}" for k, v in PAIRS.most_common(10)))
    total = sum(kinds.values())
    print(f"how the chain's waits over 0.2 ms ended ({total:.1f} ms in all; tick phase {phase * 1e3:.2f} ms of 4): "
          + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in kinds.most_common()))


if __name__ == "__main__":
    main()
