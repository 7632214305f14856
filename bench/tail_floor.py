"""The batch-1 tail this machine gives a request path with no platform code in it (issue 20's p99 <= 2x p50).

    python -m bench.tail_floor [--rounds 4] [--count 2000] [--work-us 900] [--chains 0,1,2,4,7]

A "request" is a fixed amount of pure-Python CPU work (`--work-us`, calibrated at the start) split evenly over a
chain of K processes: the timing process writes one byte into a pipe, each process of the ring reads it, does its
share of the work and writes it on, and the timing process reads it back. K = 0 does the whole work in the timing
process itself (no pipe, no wake-up): what one process's fixed computation looks like on this machine. Each request
is followed by a 0.2 ms sleep, as a sequential load generator leaves the path idle between requests. Chains are
alternated within each round (round r runs them in one order, round r+1 in the opposite one) and the load average
is printed with every figure. What it shows: how much of p99/p50 the machine (the VM's scheduling and timer, other
processes) gives any chain of that many wake-ups, against which Railyard's 7-9 (docs/performance.md item 51).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def _calibrate(work_us: float) -> int:
    """Iterations of `_spin` that take `work_us` microseconds here (median of 30 timings)."""
    n = 20_000
    _spin(n)
    timings = []
    for _ in range(30):
        started = time.perf_counter()
        _spin(n)
        timings.append(time.perf_counter() - started)
    return max(1, int(n * work_us / 1e6 / float(np.median(timings))))


class Chain:
    """K forked processes in a ring of pipes, each doing `iterations` of work a pass (K = 0: no processes)."""

    def __init__(self, processes: int, iterations: int) -> None:
        self.processes, self.iterations, self.children = processes, iterations, []
        if processes == 0:
            return
        pipes = [os.pipe() for _ in range(processes + 1)]
        for k in range(processes):
            pid = os.fork()
            if pid == 0:  # a link: read, work, pass on; "q" (or the pipe's end) stops it
                read_end, write_end = pipes[k][0], pipes[k + 1][1]
                while True:
                    token = os.read(read_end, 1)
                    if token in (b"", b"q"):
                        os.write(write_end, b"q")
                        os._exit(0)
                    _spin(iterations)
                    os.write(write_end, token)
            self.children.append(pid)
        self.read_end, self.write_end = pipes[processes][0], pipes[0][1]

    def once(self) -> float:
        """One request's time in ms."""
        started = time.perf_counter_ns()
        if self.processes == 0:
            _spin(self.iterations)
        else:
            os.write(self.write_end, b"x")
            os.read(self.read_end, 1)
        return (time.perf_counter_ns() - started) / 1e6

    def close(self) -> None:
        if self.processes:
            os.write(self.write_end, b"q")
            os.read(self.read_end, 1)
            for pid in self.children:
                os.waitpid(pid, 0)


def _load() -> str:
    with open("/proc/loadavg") as handle:
        return handle.read().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--work-us", type=float, default=900.0, help="CPU work a request, split over the chain")
    parser.add_argument("--chains", default="0,1,2,4,7", help="processes in the chain (0: in-process)")
    args = parser.parse_args()
    iterations = _calibrate(args.work_us)
    sizes = [int(k) for k in args.chains.split(",")]
    chains = {k: Chain(k, max(1, iterations // max(k, 1))) for k in sizes}
    ratios: dict[int, list[float]] = {k: [] for k in sizes}
    try:
        for chain in chains.values():  # warm-up
            for _ in range(200):
                chain.once()
        for round_ in range(args.rounds):
            for k in (sizes if round_ % 2 == 0 else list(reversed(sizes))):
                load = _load()
                times = []
                for _ in range(args.count):
                    times.append(chains[k].once())
                    time.sleep(0.0002)
                p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
                ratios[k].append(p99 / p50)
                print(f"round {round_ + 1} chain of {k}: p50 {p50:.3f} ms p99 {p99:.3f} ms p99/p50 {p99 / p50:.2f}"
                      f" (load {load} -> {_load()})", flush=True)
    finally:
        for chain in chains.values():
            chain.close()
    for k in sizes:
        print(f"chain of {k}: p99/p50 median {np.median(ratios[k]):.2f}, rounds {min(ratios[k]):.2f}-"
              f"{max(ratios[k]):.2f}")


if __name__ == "__main__":
    main()
