"""Where a slow batch-1 request's time goes, stage by stage: the gateway's and the replica's own stamps beside each
request's window on one connection, the slow requests' stages against the median request's (docs/performance.md
item 104).

    python -m bench.tail_stages [--model ccfraud] [--forms records,Arrow,OIP v2] [--rounds 2] [--count 2000]
                                [--env RAILYARD_...=value] [--shares N] [--out file.json]

Starts a fresh embedded stack with bench/tail_stages_site on PYTHONPATH (its sitecustomize stamps the gateway's and
the replica's stages on CLOCK_MONOTONIC, and loads bench/gc_trace_site's: every collection, the replica's log
steps), deploys the model and runs, per round, each form's `count` sequential batch-1 requests (as `make
bench-peers` measures: 2,000 a figure, after 200 to warm), forms back to back, each request's start and latency on
the same clock (bench/tail_trace.timed). Each request's window is cut at the stamps inside it: the client to the
gateway (its raw ASGI entry), the gateway before the bus (the token, the body read, its parse, the route), the
request's write to nats-server, nats-server to the replica's callback, the replica (the fast lane, the answer's
write), the answer back to the gateway's await, the gateway after it (the answer's encoding), the gateway's answer
to the client. Prints, per form, each part's median over every request, over the requests above 2x p50 and over
the slowest 1 %, which part holds most of each slow request's excess, and how many slow requests had a collection,
a replica log step or a segment flush's first 25 ms inside them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import uvloop

from bench import loadgen
from bench.peers.harness import MODELS, _own_cpu, _steal_jiffies, ccfraud_stack, settle, steal_share
from bench.tail_gc import COLUMNS, read_collections, role_of
from bench.tail_trace import quiet_group, timed

SITE = Path(__file__).resolve().parent / "tail_stages_site"
# each part of a request's window: (name, from point, to point); points below
PARTS = (("client->gateway", "start", "gw_in"), ("gateway pre", "gw_in", "ask_in"),
         ("gw write", "ask_in", "req_out"), ("bus->replica", "req_out", "rep_in"), ("replica", "rep_in", "ans_out"),
         ("bus->gateway", "ans_out", "ask_out"), ("gateway post", "ask_out", "gw_out"),
         ("gateway->client", "gw_out", "end"))
INNER = (("  body read", 2), ("  parse", 3), ("  encode", 5), ("  request write", 6), ("  callback", 11),
         ("  fast lane", 13), ("  answer write", 12))


def read_stages(folder: Path) -> dict[str, dict[int, np.ndarray]]:
    """role -> kind -> array of (start, duration) rows, sorted by start."""
    found: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for path in folder.glob("stage-*.tsv"):
        lines = path.read_text().splitlines()
        if not lines or not lines[0].startswith("# "):
            continue
        kinds = found.setdefault(role_of(lines[0][2:]), {})
        for line in lines[1:]:
            parts = line.split("\t")
            if len(parts) == 3:
                kinds.setdefault(int(parts[0]), []).append((float(parts[1]), float(parts[2])))
    return {role: {kind: np.array(sorted(rows)) for kind, rows in kinds.items()} for role, kinds in found.items()}


def inside(starts: np.ndarray, ends: np.ndarray, events: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """For each window, the first event starting inside it: (its start, its duration), NaN where none."""
    out_start, out_took = np.full(len(starts), np.nan), np.full(len(starts), np.nan)
    if events is None or not len(events):
        return out_start, out_took
    index = np.searchsorted(events[:, 0], starts)
    ok = index < len(events)
    index = np.where(ok, index, 0)
    ok &= events[index, 0] < ends
    out_start[ok], out_took[ok] = events[index[ok], 0], events[index[ok], 1]
    return out_start, out_took


def points(samples: list[tuple[float, float]], stages: dict[str, dict[int, np.ndarray]]) -> dict[str, np.ndarray]:
    starts = np.array([s for s, _ in samples])
    ends = starts + np.array([v for _, v in samples])
    gateway, replica = stages.get("gateway", {}), stages.get("engine replica", {})
    found = {"start": starts, "end": ends}
    gw_in, gw_took = inside(starts, ends, gateway.get(1))
    found["gw_in"], found["gw_out"] = gw_in, gw_in + gw_took
    ask_in, ask_took = inside(starts, ends, gateway.get(4))
    found["ask_in"], found["ask_out"] = ask_in, ask_in + ask_took
    found["req_out"], found["  request write"] = inside(starts, ends, gateway.get(6))  # from the write's start: a
    # wake-up of nats-server on the gateway's core may preempt it inside the write, after the bytes went
    found["rep_in"], found["  callback"] = inside(starts, ends, replica.get(11))
    found["ans_out"], found["  answer write"] = inside(starts, ends, replica.get(12))
    for name, kind in INNER:
        if name not in found:
            found[name] = inside(starts, ends, (replica if kind >= 10 else gateway).get(kind))[1]
    return found


def report(form: str, samples: list[tuple[float, float]], stages: dict[str, dict[int, np.ndarray]],
           collections: dict[str, np.ndarray]) -> dict[str, float]:
    lat = np.array([v for _, v in samples])
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    found = points(samples, stages)
    parts = {name: found[b] - found[a] for name, a, b in PARTS} | {name: found[name] for name, _ in INNER}
    complete = ~np.isnan(np.column_stack([parts[name] for name, _, _ in PARTS])).any(axis=1)
    slow, worst = lat > 2 * p50, lat >= p99
    print(f"{form}: {len(lat)} requests, p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms, p99/p50 {p99 / p50:.2f}, "
          f"over 2x p50 {int(slow.sum())}; every stage stamped in {int(complete.sum())}")
    print(f"  {'part (us)':18s} {'median all':>10s} {'med >2x':>9s} {'mean >2x':>9s} {'med 1%':>9s} "
          f"{'mean 1%':>9s}  excess's largest part in (of >2x)")
    medians = {name: np.nanmedian(values) for name, values in parts.items()}
    excess = np.column_stack([parts[name] - medians[name] for name, _, _ in PARTS])
    largest = np.argmax(np.where(np.isnan(excess), -np.inf, excess), axis=1)
    summary: dict[str, float] = {"p50": p50, "p99": p99, "slow": float(slow.sum())}
    for index, (name, values) in enumerate(parts.items()):
        row = [np.nanmedian(values), *(f(values[m]) if m.any() and not np.isnan(values[m]).all() else np.nan
                                       for m in (slow, worst) for f in (np.nanmedian, np.nanmean))]
        held = int(((largest == index) & slow & complete).sum()) if index < len(PARTS) else None
        print(f"  {name:18s} " + " ".join(f"{v * 1e6:9.1f}" if v == v else "        -" for v in row)
              + ("" if held is None else f"  {held}"))
        summary[name] = row[2] - row[0] if row[2] == row[2] else 0.0
    starts = np.array([s for s, _ in samples])
    ends = starts + lat
    replica = collections.get("engine replica", np.zeros((0, COLUMNS)))
    chain = [collections.get(role, np.zeros((0, COLUMNS))) for role in ("gateway", "engine replica")]
    flushes = replica[replica[:, 0] == 10, 1]
    near = np.zeros(len(lat), bool)
    for at in flushes:
        near |= (starts >= at - 0.002) & (starts < at + 0.025)
    looks = {"a gateway/replica collection": np.concatenate(chain)[np.concatenate(chain)[:, 0] < 10],
             "a replica log step": replica[replica[:, 0] >= 10]}
    for what, events in looks.items():
        hit = np.zeros(len(lat), bool)
        for begun, took in events[:, 1:3]:
            hit |= (starts < begun + took) & (ends > begun)
        print(f"  with {what} inside: {int(hit[slow].sum())} of {int(slow.sum())} over 2x p50, "
              f"{int(hit[~slow].sum())} of {int((~slow).sum())} others")
    print(f"  started within -2..25 ms of a flush ({len(flushes)} flushes in all): {int(near[slow].sum())} of "
          f"{int(slow.sum())} over 2x p50 ({100 * slow[near].mean() if near.any() else 0:.1f} % of those near one "
          f"against {100 * slow[~near].mean():.2f} % of the rest); of the slowest 1 %: {int(near[worst].sum())} of "
          f"{int(worst.sum())}")
    away = ~near
    if away.any():
        ratio = np.percentile(lat[away], 99) / np.percentile(lat[away], 50)
        print(f"  the requests not near a flush: p99/p50 {ratio:.2f} ({int(away.sum())})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ccfraud", choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--forms", default="records,Arrow,OIP v2")
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the whole stack")
    parser.add_argument("--shares", type=int, default=0)
    parser.add_argument("--out", default="", help="write the samples, stages and collections as JSON here")
    parser.add_argument("--arm", default="", help="a label for the SUMMARY lines (an A/B's arm)")
    parser.add_argument("--settle", type=float, default=0, help="seconds to wait after the deployment, and before "
                        "each form's requests wait for an idle machine as make bench-peers does (harness.settle)")
    parser.add_argument("--thousand", type=float, default=0, help="then this many seconds of batch-1000 Arrow "
                        "requests on 4 connections (as make bench-peers): rows/s, beside the batch-1 figures")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="railyard-st-"))
    folder.chmod(0o777)
    env = [*args.env, f"PYTHONPATH={SITE}", f"RAILYARD_BENCH_GC={folder}"]
    forms = args.forms.split(",")
    samples: dict[str, list[list[tuple[float, float]]]] = {form: [] for form in forms}
    try:
        with quiet_group(args.shares) if args.shares else contextlib.nullcontext():
            with ccfraud_stack("railyard-st-", env) as (_, deployer):
                if args.model != "ccfraud":
                    deployer.upload(args.model, MODELS[args.model]())
                targets = deployer.targets(deployer.deploy("stages-0", [args.model]))
                time.sleep(args.settle)
                steals: list[float] = []
                loads = [Path("/proc/loadavg").read_text().split()[0]]
                for _ in range(args.rounds):
                    for form in forms:
                        if args.settle:
                            uvloop.run(settle())
                        uvloop.run(timed(targets[form].url, targets[form].one, 200))
                        stolen = _steal_jiffies()
                        samples[form].append(uvloop.run(timed(targets[form].url, targets[form].one, args.count)))
                        steals.append(steal_share(stolen, _steal_jiffies()))
                loads.append(Path("/proc/loadavg").read_text().split()[0])
                if args.thousand:
                    arrow = targets["Arrow"]
                    uvloop.run(loadgen.sequential(arrow.url, arrow.thousand, 3))
                    own, stolen, started = _own_cpu(), _steal_jiffies(), time.perf_counter()
                    rate = uvloop.run(loadgen.concurrent(arrow.url, arrow.thousand, 4, args.thousand))
                    print(f"SUMMARY1000\t{args.arm}\t{args.model}\t{1000 * rate:.0f}\t"
                          f"{(_own_cpu() - own) / max(rate * (time.perf_counter() - started), 1) * 1e6:.0f}\t"
                          f"{100 * steal_share(stolen, _steal_jiffies()):.1f}\t"
                          f"{Path('/proc/loadavg').read_text().split()[0]}")
                time.sleep(0.7)  # the site writes its stamps at the first one 0.5 s after its last write
                uvloop.run(timed(targets[forms[0]].url, targets[forms[0]].one, 3))
                stages, collections = read_stages(folder), read_collections(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"stamped: {sorted(stages)}; load {' -> '.join(loads)}; the host's steal during the figures "
          f"{100 * min(steals):.1f}-{100 * max(steals):.1f} %")
    for form, runs in samples.items():
        for index, run in enumerate(runs):
            summary = report(form, run, stages, collections)
            print(f"SUMMARY\t{args.arm}\t{args.model}\t{form}\t{index}\t{summary['p50'] * 1e3:.3f}\t"
                  f"{summary['p99'] * 1e3:.3f}\t{summary['p99'] / summary['p50']:.3f}\t{int(summary['slow'])}\t"
                  f"{loads[0]}-{loads[1]}\t{100 * steals[index * len(forms) + forms.index(form)]:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "samples": samples, "stages": {r: {k: v.tolist() for k, v in s.items()} for r, s in stages.items()},
            "collections": {r: c.tolist() for r, c in collections.items()}}))


if __name__ == "__main__":
    main()
