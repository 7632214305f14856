"""The batch-1 tail of scheduling settings toggled on ONE stack, block by block (A B A B ..., a few hundred requests
each).

    python -m bench.tail_toggle [--blocks 40] [--count 400] [--forms records,Arrow,OIP v2]
                                [--variant 'label=nice:10:log_store,weed,...'] [--variant 'label=slice:0:gateway,...']
                                [--shares N]

bench/tail_ab.py alternates whole rounds of two stacks; on this shared 2-core VM other people's work changes from
second to second, and a round of 1,500 requests (~2 s) against the other stack's round still sees different
machines. Here one stack serves every variant and the variant changes every `count` requests (~0.4 s): the
machine's noise falls on every variant alike, and the pooled p99/p50 of each variant (and the blocks' median)
compare. A variant is a list of `;`-separated changes, applied to the stack's processes by role (bench.tail_trace's
fine_role: log_store, weed, postgres, registry, auth, engine, deployer, gateway, nats-server, engine replica, ...):

    nice:N:role,role   every thread of those processes at nice N, and their autogroups at nice N (each service
                       runs in a session of its own, so its autogroup is what weighs against the other processes
                       where the cpu cgroup is the root)
    slice:US:role,role the scheduler slice of every thread of those processes (0: the kernel's default)
    tnice:N:role, tslice:US:role   the same for every thread of those processes but the main one (a replica's
                       log-batcher and executor threads, the gateway's libuv workers, ...)

The first variant given is also the state restored at the end; `base` (nothing changed) is always one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import uvloop

from bench.cpu_account import _role
from bench.peers.harness import ccfraud_stack, descendants
from bench.tail_trace import OUT, fine_role, quiet_group, set_slice, thread_roles, timed

DEFAULT_SLICE_NS = 0  # sched_runtime 0: the kernel's default slice


def apply(pids: list[int], change: str) -> None:
    kind, value, roles = change.split(":", 2)
    chosen = [pid for pid in pids if fine_role(pid) in roles.split(",")]
    for pid in chosen:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                if kind.startswith("t") and int(tid) == pid:  # tnice, tslice: every thread but the main one
                    continue
                with contextlib.suppress(OSError):
                    if kind in ("nice", "tnice"):
                        os.setpriority(os.PRIO_PROCESS, int(tid), int(value))
                    elif kind in ("slice", "tslice"):
                        set_slice(int(tid), int(value) * 1000)
        if kind == "nice":
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/autogroup").write_text(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=40, help="blocks per variant and form")
    parser.add_argument("--count", type=int, default=400, help="requests per block")
    parser.add_argument("--forms", default="records,Arrow,OIP v2")
    parser.add_argument("--variant", action="append", default=[], help="label=change;change")
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the stack")
    parser.add_argument("--shares", type=int, default=0, help="as bench/tail_ab.py's --shares")
    parser.add_argument("--perf-sched", action="store_true", help="record perf sched around the blocks (build/tail/"
                        "sched.data) and write build/tail/toggle-<variant>.json for bench/tail_sched.py")
    parser.add_argument("--out", default=str(OUT / "toggle.json"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with quiet_group(args.shares) if args.shares else contextlib.nullcontext():
        run(args)


def run(args: argparse.Namespace) -> None:
    variants = {"base": ""} | dict(v.split("=", 1) for v in args.variant)
    undo = {}  # what puts a variant's changed processes back to base: nice 0, the stack's own slice
    forms = args.forms.split(",")
    with ccfraud_stack("railyard-toggle-", args.env) as (stack, deployer):
        found = deployer.targets(deployer.deploy("tail-0", ["ccfraud"], {}))
        targets = {form: found[form] for form in forms}
        pids = descendants(stack.process.pid)
        for form in forms:
            uvloop.run(timed(targets[form].url, targets[form].one, 300))
        for changes in variants.values():
            for change in filter(None, changes.split(";")):
                kind, _, roles = change.split(":", 2)
                base_value = "0" if kind in ("nice", "tnice") else str(_stack_slice_us(pids, roles))
                undo.setdefault(f"{kind}:{roles}", f"{kind}:{base_value}:{roles}")
        perf = None
        if args.perf_sched:
            perf = subprocess.Popen(["perf", "sched", "record", "-a", "-k", "CLOCK_MONOTONIC", "-o",
                                     str(OUT / "sched.data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        samples = {(label, form): [] for label in variants for form in forms}
        per_block = {key: [] for key in samples}
        order = list(variants)
        for index in range(args.blocks):
            for form in forms:
                for label in order if index % 2 == 0 else order[::-1]:
                    for change in undo.values():
                        apply(pids, change)
                    for change in filter(None, variants[label].split(";")):
                        apply(pids, change)
                    block = uvloop.run(timed(targets[form].url, targets[form].one, args.count))[5:]
                    samples[label, form] += block
                    lat = [v for _, v in block]
                    per_block[label, form].append(float(np.percentile(lat, 99) / np.percentile(lat, 50)))
            if index % 5 == 4:
                print(f"block {index + 1}/{args.blocks}, load {os.getloadavg()[0]:.1f}", flush=True)
        if perf is not None:
            perf.send_signal(2)
            perf.wait(60)
            roles = {pid: _role(pid) for pid in pids} | {os.getpid(): "loadgen"}
            threads, names = thread_roles(roles)
            for label in variants:
                (OUT / f"toggle-{label}.json").write_text(json.dumps({
                    "threads": threads, "names": names, "perf_sched_round": 0,
                    "rounds": [[s for form in forms for s in samples[label, form]]]}))
        for change in undo.values():
            apply(pids, change)
        print(f"batch 1, one connection, one stack, {args.blocks} blocks x {args.count} requests per variant and "
              f"form, variants alternated block by block: {variants}")
        for (label, form), run in samples.items():
            lat = np.array([v for _, v in run]) * 1e3
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            print(f"  {label:10s} {form:8s} p50 {p50:.3f} ms  p99 {p99:.3f} ms  p99/p50 {p99 / p50:.2f}  "
                  f"p99.9 {np.percentile(lat, 99.9):.2f} ms  blocks' p99/p50 median "
                  f"{statistics.median(per_block[label, form]):.2f}")
        Path(args.out).write_text(json.dumps({f"{label}|{form}": run for (label, form), run in samples.items()}))


def _stack_slice_us(pids: list[int], roles: str) -> int:
    """The slice the stack itself gave those processes (their main thread's), in microseconds."""
    for pid in pids:
        if fine_role(pid) in roles.split(","):
            with contextlib.suppress(OSError, IndexError, ValueError):
                text = Path(f"/proc/{pid}/sched").read_text()
                return int(text.split("se.slice")[1].split(":")[1].split()[0]) // 1000
    return DEFAULT_SLICE_NS


if __name__ == "__main__":
    main()
