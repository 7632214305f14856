"""Arms of a batch-1000 Arrow A/B, alternated stack by stack: each process's CPU a request, rows/s, the replica's RSS.

    python -m bench.arrow_ab --arm base: --arm 8m:RAILYARD_LOGS__ENGINE_SEGMENT_BYTES=8388608 [--rounds 3]
                             [--windows 3] [--seconds 8] [--idle 5] [--out build/arrow_ab.jsonl]

Each round starts one fresh stack per arm, in the order given (the next round in the opposite order), deploys
ccfraud and times `--windows` windows of 1,000-row Arrow requests on 4 connections, as bench.cpu_account does (a
1-s warm-up, then `--seconds` of load; every process's CPU read from /proc, with 1.5 s after the load), each after
the harness's settle and a sync of the page cache (harness.write_back: item 93's write-back burst stays out). Printed
a window: rows/s, the CPU a request of each process, the same over the load generator's (its work is the same in every
window, so it is the machine's speed: item 93), the replica's RSS right after the load and before the window (what
the last one left, after the settle); then `--idle` seconds of the idle stack (each process's CPU a second: what an
idle second adds to a window) and the replica's RSS after them. An arm is `name:VAR=value;...`:
`RAILYARD_...` settings, or the BENCH_* variables of bench/arrow_ab_site/sitecustomize.py (nats-server's own
environment, more `weed server` flags, the replica's segment writes at once or its spill factor), which is put on the
stack's PYTHONPATH.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import uvloop

from bench import loadgen
from bench.cpu_account import _role, _stat, account
from bench.peers.harness import ccfraud_stack, descendants, rss_mib, settle, uptime, write_back

SITE = Path(__file__).resolve().parent / "arrow_ab_site"
ROLES = ("seaweedfs", "engine replica", "gateway", "nats", "loadgen", "log store", "postgres")


def idle(root: int, seconds: float) -> dict[str, float]:
    """Each role's CPU a second over `seconds` of the idle stack (ms)."""
    pids = descendants(root)
    before = {pid: _stat(pid)[0] for pid in pids}
    time.sleep(seconds)
    spent: dict[str, float] = {}
    for pid in pids:
        spent[_role(pid)] = spent.get(_role(pid), 0.0) + _stat(pid)[0] - before[pid]
    return {role: cpu / seconds * 1e3 for role, cpu in spent.items()}


def bench_lines(data: Path) -> dict[str, int]:
    """The replicas' "bench:" lines so far (BENCH_SPILL_LOG: flushes sent through the stream, slow segment writes)."""
    counts = {"spill": 0, "backoff": 0, "slow": 0}
    for path in (data / "deployments").rglob("replica-*.log"):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for kind in counts:
            counts[kind] += text.count(f"bench: {kind}")
    return counts


def one_stack(name: str, settings: list[str], args: argparse.Namespace, out) -> None:
    env = [*settings, f"PYTHONPATH={SITE}", "BENCH_SPILL_LOG=1"]
    with ccfraud_stack("railyard-arrow-ab-", env) as (stack, deployer):
        target = deployer.targets(deployer.deploy("ab", ["ccfraud"]))["Arrow"]
        for number in range(args.windows):
            uvloop.run(settle())
            write_back()
            settled = rss_mib([pid for pid in descendants(stack.process.pid) if _role(pid) == "engine replica"])
            uvloop.run(loadgen.concurrent(target.url, target.thousand, 4, 1.0))  # warm
            time.sleep(1.0)
            load = uptime()
            lines = bench_lines(stack.data_dir)

            def run() -> int:
                rate = uvloop.run(loadgen.concurrent(target.url, target.thousand, 4, args.seconds))
                return round(rate * args.seconds)

            roles, wall, count, _ = account(stack.process.pid, run, seconds=args.seconds)
            by_role: dict[str, list[int]] = {}
            for pid in descendants(stack.process.pid):
                by_role.setdefault(_role(pid), []).append(pid)
            rss = {role: rss_mib(by_role.get(role, [])) for role in ("engine replica", "nats", "seaweedfs")}
            per = {role: spent / max(count, 1) * 1e6 for role, spent in roles.items()}
            after = bench_lines(stack.data_dir)
            events = {kind: after[kind] - lines[kind] for kind in after}
            row = {"events": events, "arm": name, "window": number, "at": time.strftime("%H:%M:%S"), "load": load,
                   "rows_s": count * 1000 / wall, "rss_replica": rss["engine replica"], "rss": rss, "us": per,
                   "rss_replica_before": settled,
                   "total": sum(per.values())}
            out.write(json.dumps(row) + "\n")
            out.flush()
            lg = per.get("loadgen", 1.0)
            print(f"{name:8s} w{number} {row['at']} load {load}: {row['rows_s']:,.0f} rows/s, total "
                  f"{row['total']:,.0f} us ({row['total'] / lg:.2f} lg), "
                  + ", ".join(f"{role} {per.get(role, 0):,.0f} ({per.get(role, 0) / lg:.2f})" for role in ROLES)
                  + f"; log events {events}; RSS (MiB) "
                  + ", ".join(f"{role} {mib:.0f}" for role, mib in rss.items())
                  + f" (the replica {settled:.0f} before the window)", flush=True)
        if args.idle:
            uvloop.run(settle())
            quiet = idle(stack.process.pid, args.idle)
            settled = rss_mib([pid for pid in descendants(stack.process.pid) if _role(pid) == "engine replica"])
            out.write(json.dumps({"arm": name, "idle_ms_s": quiet, "rss_replica_settled": settled}) + "\n")
            print(f"{name:8s} idle (ms of CPU a second): " + ", ".join(
                f"{role} {ms:.1f}" for role, ms in sorted(quiet.items(), key=lambda item: -item[1]) if ms >= 0.5)
                + f"; the replica's RSS then {settled:.0f} MiB", flush=True)


def summary(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    arms: dict[str, list[dict]] = {}
    for row in rows:
        if "us" in row:
            arms.setdefault(row["arm"], []).append(row)
    for name, windows in arms.items():
        med = statistics.median
        ratio = {role: med(w["us"].get(role, 0) / w["us"]["loadgen"] for w in windows) for role in ROLES}
        print(f"{name:8s} {len(windows)} windows: rows/s {med(w['rows_s'] for w in windows):,.0f} "
              f"({min(w['rows_s'] for w in windows):,.0f}-{max(w['rows_s'] for w in windows):,.0f}), x loadgen us "
              f"{med(w['rows_s'] * w['us']['loadgen'] / 1e6 for w in windows):,.1f}k, total "
              f"{med(w['total'] for w in windows):,.0f} us, over loadgen "
              f"{med(w['total'] / w['us']['loadgen'] for w in windows):.2f} ("
              + ", ".join(f"{role} {value:.2f}" for role, value in ratio.items() if role != "loadgen")
              + f"), replica RSS {min(w['rss_replica'] for w in windows):.0f}-"
              f"{max(w['rss_replica'] for w in windows):.0f} MiB, nats "
              f"{min(w['rss']['nats'] for w in windows):.0f}-{max(w['rss']['nats'] for w in windows):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", action="append", required=True, help="name:VAR=value;VAR=value")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--out", default="build/arrow_ab.jsonl")
    parser.add_argument("--summary", action="store_true", help="only summarise --out")
    args = parser.parse_args()
    path = Path(args.out)
    if args.summary:
        summary(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    arms = [(name, list(filter(None, spec.split(";")))) for name, _, spec in (a.partition(":") for a in args.arm)]
    with path.open("a") as out:
        for number in range(args.rounds):
            for name, settings in (arms if number % 2 == 0 else arms[::-1]):
                one_stack(name, settings, args, out)
    summary(path)


if __name__ == "__main__":
    main()
