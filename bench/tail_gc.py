"""Whether the batch-1 tail is the garbage collector's or the replica's log path's: every collection of every Python
process and the replica's log steps beside each request's window, on one connection.

    python -m bench.tail_gc [--rounds 3] [--count 1500] [--forms records,Arrow,OIP v2] [--shares N]
                            [--env RAILYARD_...=value]

Starts a fresh embedded stack with bench/gc_trace_site on PYTHONPATH (its sitecustomize writes each collection's
generation, start on CLOCK_MONOTONIC and duration, per process), deploys ccfraud and runs `rounds` x `count`
sequential batch-1 requests per form, each request's start and latency on the same clock (bench/tail_trace.timed).
Prints, per process role, the collections (and the replica's log steps) during the requests by kind (count, median
and max ms), and for the slowest 1 % and the requests over 3x the p50: how many had a collection of the gateway or
the engine replica, or a log step of the replica, inside their window, and its time inside them against the other
requests'. `--shares` as
bench/tail_ab.py's (a stand-in for a quiet machine).

Then what a segment flush costs the requests beside it (docs/performance.md item 86): each request's latency over
the form's p50 by its start in ms from each flush's start (the replica's table step), 2 ms bins from -2 to 24 ms,
and the share of requests over 2x p50 within those 26 ms against the rest; and each log step's wall and thread
CPU (medians). `--env RAILYARD_BENCH_SKIP=put|publish|both` leaves out the segment's PUT, its description's
publish, or both (diagnostics: those rows are not logged; bench/gc_trace_site).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import uvloop

from bench.peers.harness import ccfraud_stack
from bench.tail_trace import quiet_group, timed

SITE = Path(__file__).resolve().parent / "gc_trace_site"
CHAIN = ("gateway", "engine replica")
# the site's event kinds: collections by generation, the replica's log steps (+ 100: off the event loop's thread)
KINDS = {0: "gen0", 1: "gen1", 2: "gen2", 10: "table", 11: "parquet", 12: "encode", 13: "put", 14: "publish",
         110: "table (thread)", 111: "parquet (thread)", 112: "encode (thread)",
         20: "build_batch", 21: "drop_oversized", 22: "encode_segment_buffer", 23: "describe", 24: "sort_by_time"}
KINDS.update({100 + kind: f"{name} (thread)" for kind, name in KINDS.items() if 20 <= kind < 30})
COLUMNS = 7  # kind, start, duration, count, thread CPU s, minor faults, context switches (0 for collections)
AFTER = (-2, 24, 2)  # the after-flush profile's first and last ms from a flush's start, and its bin
ON_LOOP, AWAITED = (10, 11, 12), (13, 14)


def role_of(cmdline: str) -> str:
    if "services.engine.replica" in cmdline:
        return "engine replica"
    if " -m services." in cmdline:
        return cmdline.split(" -m services.", 1)[1].split()[0].split(".")[0]
    return cmdline.split(" ", 1)[0].rsplit("/", 1)[-1][:30] or "?"


def read_collections(folder: Path) -> dict[str, np.ndarray]:
    """role -> array of (generation, start, duration, count, CPU, faults, switches) rows, every process of the role
    together."""
    found: dict[str, list[list[float]]] = {}
    for path in folder.glob("gc-*.tsv"):
        lines = path.read_text().splitlines()
        if not lines or not lines[0].startswith("# "):
            continue
        rows = found.setdefault(role_of(lines[0][2:]), [])
        for line in lines[1:]:
            if line:
                values = [float(v) for v in line.split("\t")[:COLUMNS]]
                rows.append(values + [0.0] * (COLUMNS - len(values)))
    return {role: np.array(rows).reshape(-1, COLUMNS) for role, rows in found.items()}


def overlap(starts: np.ndarray, ends: np.ndarray, gc: np.ndarray) -> np.ndarray:
    """Seconds of collection inside each window [start, end)."""
    total = np.zeros(len(starts))
    for begun, took in gc[:, 1:3]:
        total += np.clip(np.minimum(ends, begun + took) - np.maximum(starts, begun), 0, None)
    return total


def report(form: str, samples: list[tuple[float, float]], collections: dict[str, np.ndarray]) -> None:
    starts = np.array([s for s, _ in samples])
    lat = np.array([v for _, v in samples])
    ends = starts + lat
    first, last = starts.min(), ends.max()
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    print(f"{form}: {len(lat)} requests, p50 {p50 * 1e3:.3f} ms p99 {p99 * 1e3:.3f} ms p99/p50 {p99 / p50:.2f}")
    for role, rows in sorted(collections.items()):
        inside = rows[(rows[:, 1] >= first) & (rows[:, 1] <= last)]
        if not len(inside):
            continue
        parts = []
        for kind in sorted(set(inside[:, 0].astype(int))):
            took = inside[inside[:, 0] == kind, 2] * 1e3
            parts.append(f"{KINDS.get(kind, kind)} {len(took)} (median {np.median(took):.3f} ms, max {took.max():.3f})")
        print(f"  {role:22s} " + ", ".join(parts))
    chain = np.concatenate([collections.get(r, np.zeros((0, COLUMNS))) for r in CHAIN])
    replica = collections.get("engine replica", np.zeros((0, COLUMNS)))
    looks = {"gateway/replica collection": chain[chain[:, 0] < 10],
             "replica log step on its loop": replica[np.isin(replica[:, 0], ON_LOOP)],
             "replica log step in its thread": replica[replica[:, 0] >= 100],
             "replica segment PUT or publish": replica[np.isin(replica[:, 0], AWAITED)]}
    for what, events in looks.items():
        in_window = overlap(starts, ends, events)
        for name, mask in (("slowest 1 %", lat >= p99), ("over 3x p50", lat > 3 * p50), ("the rest", lat < p99)):
            if mask.any():
                hit = in_window[mask] > 0
                print(f"  {name:12s} {int(mask.sum()):5d} requests: {int(hit.sum())} ({100 * hit.mean():.1f} %) with a "
                      f"{what} inside, {in_window[mask].mean() * 1e6:.1f} us of it a request on average (latency "
                      f"{lat[mask].mean() * 1e3:.3f} ms)")


def after_flush(form: str, samples: list[tuple[float, float]], replica: np.ndarray) -> None:
    """Latency over p50 by start relative to each segment flush (its table step, kind 10) in AFTER's bins."""
    starts = np.array([s for s, _ in samples])
    lat = np.array([v for _, v in samples])
    p50 = np.percentile(lat, 50)
    flushes = replica[replica[:, 0] == 10, 1]
    first, last, step = AFTER
    edges = np.arange(first, last + step, step)
    near = np.zeros(len(lat), bool)
    bins: list[list[float]] = [[] for _ in edges[:-1]]
    for at in flushes:
        offset = (starts - at) * 1e3
        inside = (offset >= first) & (offset < last)
        near |= inside
        for index in np.nonzero(inside)[0]:
            bins[int((offset[index] - first) // step)].append(lat[index] / p50)
    slow = lat > 2 * p50
    share = 100 * slow[near].mean() if near.any() else 0.0
    print(f"  after a flush ({len(flushes)} flushes): requests over 2x p50 {share:.1f} % "
          f"of {int(near.sum())} within {first}..{last} ms of one, {100 * slow[~near].mean():.2f} % of the other "
          f"{int((~near).sum())}; latency / p50 by ms from the flush's start:")
    print("    " + " ".join(f"{edge:>4d}" for edge in edges[:-1]))
    print("    " + " ".join(f"{np.mean(b):4.1f}" if b else "   -" for b in bins))
    print("    " + " ".join(f"{len(b):4d}" for b in bins) + "  (requests)")


def steps(replica: np.ndarray) -> None:
    """Each log step's count and medians: wall, thread CPU, minor faults."""
    parts = []
    for kind in sorted(set(replica[:, 0].astype(int))):
        if kind >= 10:
            rows = replica[replica[:, 0] == kind]
            parts.append(f"{KINDS.get(kind, kind)} {len(rows)}: wall {np.median(rows[:, 2]) * 1e3:.2f} ms, CPU "
                         f"{np.median(rows[:, 4]) * 1e3:.2f}, faults {np.median(rows[:, 5]):.0f}")
    print("the replica's log steps (medians; CPU is the step's thread's, 0 for awaited steps):\n  "
          + "\n  ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--forms", default="records,Arrow,OIP v2")
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the whole stack")
    parser.add_argument("--config", default="{}", help="engine_config JSON of the deployment")
    parser.add_argument("--shares", type=int, default=0)
    parser.add_argument("--out", default="", help="write the samples and collections as JSON here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="railyard-gc-"))
    folder.chmod(0o777)
    env = [*args.env, f"PYTHONPATH={SITE}", f"RAILYARD_BENCH_GC={folder}"]
    try:
        with quiet_group(args.shares) if args.shares else contextlib.nullcontext():
            with ccfraud_stack("railyard-tailgc-", env) as (_, deployer):
                targets = deployer.targets(deployer.deploy("tail-0", ["ccfraud"], json.loads(args.config)))
                samples: dict[str, list[tuple[float, float]]] = {form: [] for form in args.forms.split(",")}
                for form in samples:
                    uvloop.run(timed(targets[form].url, targets[form].one, 300))
                for _ in range(args.rounds):
                    for form in samples:
                        samples[form] += uvloop.run(timed(targets[form].url, targets[form].one, args.count))
                collections = read_collections(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"processes traced: {sorted(collections)}")
    replica = collections.get("engine replica", np.zeros((0, COLUMNS)))
    for form, run in samples.items():
        report(form, run, collections)
        after_flush(form, run, replica)
    steps(replica)
    if args.out:
        Path(args.out).write_text(json.dumps({"samples": samples,
                                              "collections": {r: c.tolist() for r, c in collections.items()}}))


if __name__ == "__main__":
    main()
