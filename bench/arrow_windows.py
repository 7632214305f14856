"""Railyard's batch-1000 Arrow rows/s window by window, as `make bench-peers` measures it, and what each window cost.

    python -m bench.arrow_windows [--stacks 2] [--extra 3] [--before records] [--seconds 4] [--alternate]
                                  [--sequence] [--keep-logs DIR]

`make bench-peers` gives each (system, model, form) one 4-s window of batch-1000 requests on 4 connections, after
that form's batch-1 figures; Railyard's ccfraud Arrow window comes after the records form of both models, on a
stack started for the round. Its rows/s moved ~15 % between the two rounds of one quiet run (session 32: 498
against 570k; docs/performance.md item 93). This replays that sequence on `--stacks` fresh stacks one after another
(the harness's own `measure` for each form in `--before`, both models, then ccfraud Arrow's batch-1 part), times the
Arrow window with each process's CPU a request beside it (bench.cpu_account.account: the load generator's own is the
machine's speed), then `--extra` more windows on the same stack, each after the harness's settle and warm-up
(`--alternate`: each after the batch-1 part too, every other one with an idle wait between). Printed a window:
SeaweedFS's volume count and bytes on disk (a volume is grown when the writable ones fill), the kernel's dirty and
under-writeback page cache (sampled every 100 ms), which processes were busy while the settle waited, and the load.
A window where the log store's CPU a request jumps (~25 -> 200-700 us) is one where the engine sent a flush through
the stream. `--sequence`: the harness's whole Railyard sequence instead (every form and model, its own `measure`;
BENCH_NO_SYNC=1 for the old one). `--keep-logs`: each stack's logs copied there (with GODEBUG=gctrace=1 exported,
the Go servers' collections are in them).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvloop

from bench import loadgen
from bench.cpu_account import _role, _stat, account
from bench.peers import harness
from bench.peers.harness import MODELS, RailyardDeployer, descendants, measure, settle, uptime
from tests.stack import stack_env, start_stack


def volumes(data: Path) -> tuple[int, float]:
    """SeaweedFS's volume files (.dat) under the stack's store and their MiB on disk."""
    files = list((data / "s3").rglob("*.dat"))
    return len(files), sum(f.stat().st_blocks * 512 for f in files) / 2**20


def busy_settle(stack) -> tuple[float, str]:
    """harness.settle, and which processes were busy while it waited (cores, the busiest first)."""
    pids = descendants(stack.process.pid)
    before = {pid: _stat(pid)[0] for pid in pids}
    started = time.monotonic()
    waited = uvloop.run(settle())
    spent: dict[str, float] = {}
    for pid in pids:
        spent[_role(pid)] = spent.get(_role(pid), 0.0) + _stat(pid)[0] - before[pid]
    seconds = time.monotonic() - started
    return waited, ", ".join(f"{role} {cpu / seconds:.2f}" for role, cpu in
                             sorted(spent.items(), key=lambda item: -item[1])[:3])


def meminfo_kib(name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


class WritebackWatch:
    """The kernel's dirty page cache and pages under writeback, sampled every 100 ms in a thread (a flush of the
    stack's written files to disk during a window: the writes it waits behind)."""

    def __enter__(self) -> WritebackWatch:
        self.dirty, self.writeback, self.stop = [], [], threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self) -> None:
        while not self.stop.wait(0.1):
            self.dirty.append(meminfo_kib("Dirty"))
            self.writeback.append(meminfo_kib("Writeback"))

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def describe(self) -> str:
        return (f"dirty {max(self.dirty or [0]) // 1024} MiB at most, writeback {max(self.writeback or [0]) // 1024} "
                f"MiB at most ({sum(1 for w in self.writeback if w > 1024) / 10:.1f} s of it)")


def window(stack, target, seconds: float, data: Path) -> dict[str, float]:
    """One batch-1000 window as harness.measure takes it (3 warm requests, then 4 connections for `seconds`)."""
    uvloop.run(loadgen.sequential(target.url, target.thousand, 3))
    rate = 0.0

    def run() -> int:
        nonlocal rate
        rate = uvloop.run(loadgen.concurrent(target.url, target.thousand, 4, seconds))
        return round(rate * seconds)

    before = volumes(data)
    load = uptime()
    began = time.strftime("%H:%M:%S")
    with WritebackWatch() as disk:
        roles, _, count, _ = account(stack.process.pid, run, seconds=seconds)
    after = volumes(data)
    return {"rows_s": rate * 1000, "load": load, "began": began, "disk": disk.describe(),
            "volumes": f"{before[0]}->{after[0]}",
            "mib": f"{before[1]:,.0f}->{after[1]:,.0f}",
            **{role: spent / max(count, 1) * 1e6 for role, spent in roles.items()}}


def one_stack(index: int, args: argparse.Namespace) -> list[dict[str, float]]:
    folder = Path(tempfile.mkdtemp(prefix="railyard-arrow-windows-"))
    data = folder / "data"
    stack = start_stack(data, stack_env(data))
    try:
        stack.wait_healthy(180)
        deployer = RailyardDeployer(stack)
        for model, make in MODELS.items():
            deployer.upload(model, make())
        targets = {model: deployer.targets(deployer.deploy(f"default-{model}", [model])) for model in MODELS}
        for form in filter(None, args.before.split(",")):
            for model in MODELS:
                figures = uvloop.run(measure(targets[model][form], model))
                print(f"  stack {index}: {form} / {model}: batch-1000 {figures['rows1000']:,.0f} rows/s "
                      f"(load {uptime()})", flush=True)
        if args.sequence:  # the harness's whole Railyard sequence, every form and model, each its own measure
            rows = []
            for form in ("records", "Arrow", "OIP v2"):
                for model in MODELS:
                    dirty = meminfo_kib("Dirty") // 1024
                    figures = uvloop.run(measure(targets[model][form], model))
                    rows.append({"rows_s": figures["rows1000"], **figures})
                    print(f"  stack {index}: {form} / {model}: batch-1000 {figures['rows1000']:,.0f} rows/s, "
                          f"loadgen {figures['loadgen_us']:,.0f} us a request, p99/p50 "
                          f"{figures['p99_ms'] / figures['p50_ms']:.2f} (p50 {figures['p50_ms']:.3f} ms), dirty "
                          f"{dirty} MiB before, synced {figures['sync_s']:.1f} s, settled {figures['settle_s']:.1f} s "
                          f"(load {uptime()})", flush=True)
            return rows
        arrow = targets["ccfraud"]["Arrow"]
        rows = []
        for number in range(1 + args.extra):
            waited, busy = busy_settle(stack)
            between = 0.0
            if number == 0 or args.alternate:  # the harness's batch-1 part of the form, as before its window
                uvloop.run(loadgen.sequential(arrow.url, arrow.one, harness.WARM + harness.SINGLES))
                uvloop.run(loadgen.concurrent(arrow.url, arrow.one, 8, harness.CONCURRENT_S))
                uvloop.run(loadgen.concurrent(arrow.url, arrow.one, 32, harness.CONCURRENT_S))
                if args.alternate and number % 2:  # the idle wait between the batch-1 part and the window
                    between, busy = busy_settle(stack)
            row = window(stack, arrow, args.seconds, data) | {"settle_s": waited, "between_s": between}
            rows.append(row)
            cpu = ", ".join(f"{role} {row[role]:,.0f}" for role in ("engine replica", "gateway", "seaweedfs",
                                                                    "log store", "postgres", "nats", "loadgen")
                            if role in row)
            kind = "" if not (number == 0 or args.alternate) else \
                f" (after the batch-1 part, {'then idle ' + format(between, '.1f') + ' s' if between else 'at once'})"
            print(f"  stack {index} window {number}{kind} at {row['began']}: "
                  f"{row['rows_s']:,.0f} rows/s, settled {waited:.1f} s (busy: {busy} cores), load {row['load']}, "
                  f"volumes {row['volumes']} ({row['mib']} MiB), {row['disk']}; CPU a request (us): {cpu}", flush=True)
        return rows
    finally:
        stack.stop()
        if args.keep_logs:  # the services' and servers' own logs (GODEBUG=gctrace=1 writes the Go servers' GCs there)
            shutil.copytree(data / "logs", Path(args.keep_logs) / f"stack-{index}", dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stacks", type=int, default=2)
    parser.add_argument("--extra", type=int, default=3, help="more Arrow windows on the same stack")
    parser.add_argument("--before", default="records", help="forms measured (both models) before ccfraud Arrow")
    parser.add_argument("--seconds", type=float, default=harness.BATCH_S)
    parser.add_argument("--alternate", action="store_true",
                        help="every window after the batch-1 part: at once (even) or after an idle wait (odd)")
    parser.add_argument("--sequence", action="store_true",
                        help="instead: harness.measure for every form and model, in the harness's order")
    parser.add_argument("--keep-logs", default="", help="copy each stack's logs folder here before removing it")
    args = parser.parse_args()
    firsts, rest = [], []
    for index in range(args.stacks):
        print(f"stack {index} (load {uptime()})", flush=True)
        rows = one_stack(index, args)
        firsts.append(rows[0]["rows_s"])
        rest += [row["rows_s"] for row in rows[1:]]
        time.sleep(2)
    print(f"first windows {[round(v) for v in firsts]}; later windows median "
          f"{statistics.median(rest) if rest else 0:,.0f} ({min(rest or [0]):,.0f}-{max(rest or [0]):,.0f})")


if __name__ == "__main__":
    main()
