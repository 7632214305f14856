"""What nats-server does per batch-1 inference request: messages, bytes and syscalls per connection.

    python -m bench.bus_account [--count 3000] [--form records] [--env RAILYARD_...=value] [--strace]

Starts a fresh embedded stack, deploys ccfraud, sends `count` sequential batch-1 requests on one connection
(bench/loadgen.py) and reads, before and after, nats-server's per-connection counters (`/connz`: messages and
bytes in and out of each client, named by its process), nats-server's `/proc/<pid>/io` (read and write
syscalls), its context switches and CPU, and the same of the gateway and the engine replica: each per request.
`--strace` adds `strace -c -f` of nats-server over the run (slows it: counts only, not CPU); `--gc` its Go GC
collections and stop-the-world pauses over the run (through its profiler's port).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

from bench import loadgen
from bench.cpu_account import _cpu, _role
from bench.peers.harness import ccfraud_stack, descendants


def _io(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def _switches(pid: int) -> tuple[int, int]:
    vol = invol = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol += int(line.split()[1])
        except OSError:
            pass
    return vol, invol


def _connz(port: int) -> dict[str, dict[str, int]]:
    raw = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?limit=1024", timeout=5).read())
    out: dict[str, dict[str, int]] = {}
    for conn in raw.get("connections", []):
        name = conn.get("name") or f"cid{conn['cid']}"
        name = "engine (logs)" if name.endswith("-logs") else "engine" if "engine" in name else name
        entry = out.setdefault(name, {"in_msgs": 0, "out_msgs": 0, "in_bytes": 0, "out_bytes": 0, "subs": 0})
        for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes"):
            entry[key] += conn.get(key, 0)
        entry["subs"] += conn.get("subscriptions", 0)
    return out


def _gc(prof_port: int) -> dict[str, int]:
    """nats-server's Go GC count and total pause (ns), from its profiler's heap page (`--gc`)."""
    if not prof_port:
        return {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{prof_port}/debug/pprof/heap?debug=1", timeout=5).read().decode()
    pauses = [int(v) for v in re.search(r"# PauseNs = \[([\d ]*)\]", text).group(1).split()]
    return {"NumGC": int(re.search(r"# NumGC = (\d+)", text).group(1)), "PauseNs": pauses}


def _snapshot(pids: dict[str, int], monitor: int, prof_port: int = 0) -> dict:
    return {"gc": _gc(prof_port), "connz": _connz(monitor),
            "proc": {role: {"cpu": _cpu(pid), "io": _io(pid), "switches": _switches(pid)}
                     for role, pid in pids.items()},
            "varz": json.loads(urllib.request.urlopen(f"http://127.0.0.1:{monitor}/varz", timeout=5).read())}


def report(before: dict, after: dict, count: int) -> None:
    print(f"per request ({count} requests):")
    print("  nats-server's view of each client (in = client -> server):")
    for name, entry in sorted(after["connz"].items()):
        prev = before["connz"].get(name, {})
        delta = {k: entry[k] - prev.get(k, 0) for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
        if not any(delta.values()):
            continue
        print(f"    {name:40s} in {delta['in_msgs'] / count:6.3f} msgs {delta['in_bytes'] / count:8.1f} B   "
              f"out {delta['out_msgs'] / count:6.3f} msgs {delta['out_bytes'] / count:8.1f} B  (subs {entry['subs']})")
    varz = {k: round((after["varz"][k] - before["varz"][k]) / count, 3)
            for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
    print(f"  server total per request: {varz}; slow consumers in all: {after['varz'].get('slow_consumers', 0)}")
    if after["gc"]:
        total = after["gc"]["NumGC"]
        gcs = total - before["gc"]["NumGC"]
        pauses = [after["gc"]["PauseNs"][(total - 1 - i) % 256] / 1e3 for i in range(min(gcs, 256))]
        print(f"  nats-server GC: {gcs} collections, stop-the-world pauses {sum(pauses):.0f} us in all, "
              f"longest {max(pauses, default=0):.0f} us")
    for role, now in after["proc"].items():
        then = before["proc"][role]
        io = {k: (now["io"].get(k, 0) - then["io"].get(k, 0)) / count for k in ("syscr", "syscw", "rchar", "wchar")}
        vol = (now["switches"][0] - then["switches"][0]) / count
        invol = (now["switches"][1] - then["switches"][1]) / count
        print(f"  {role:15s} cpu {(now['cpu'] - then['cpu']) / count * 1e6:6.0f} us  read calls {io['syscr']:5.2f} "
              f"({io['rchar']:7.0f} B)  write calls {io['syscw']:5.2f} ({io['wchar']:7.0f} B)  "
              f"ctx switches {vol:5.2f} voluntary {invol:5.2f} forced")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--form", default="records", choices=["records", "Arrow", "OIP v2"])
    parser.add_argument("--engine-config", default="{}")
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the whole stack")
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--gc", action="store_true", help="nats-server's GC collections and pauses (its profiler)")
    args = parser.parse_args()
    prof_port = 0
    if args.gc:
        from bench.cpu_account import free_port

        prof_port = free_port()
        args.env.append(f"RAILYARD_STACK__NATS_PROF_PORT={prof_port}")
    with ccfraud_stack("railyard-bus-", args.env) as (stack, deployer):
        monitor = int(stack.env["RAILYARD_STACK__NATS_MONITOR_PORT"])
        target = deployer.targets(deployer.deploy("bus", ["ccfraud"], json.loads(args.engine_config)))[args.form]
        uvloop.run(loadgen.sequential(target.url, target.one, 300))
        time.sleep(1.0)
        pids = {}
        for pid in descendants(stack.process.pid):
            role = _role(pid)
            if role in ("nats", "gateway", "engine replica", "log store") and role not in pids:
                pids[role] = pid
        environ = Path(f"/proc/{pids['nats']}/environ").read_bytes().split(b"\0")
        print("nats-server " + (b" ".join(e for e in environ if e.startswith(b"GOMAXPROCS=")) or b"GOMAXPROCS unset")
              .decode())
        idle = _snapshot(pids, monitor)
        time.sleep(5.0)
        idle_after = _snapshot(pids, monitor)
        print("idle, CPU per second (us): " + ", ".join(
            f"{role} {(idle_after['proc'][role]['cpu'] - idle['proc'][role]['cpu']) / 5 * 1e6:,.0f}" for role in pids))
        print("idle, messages per second in/out: " + ", ".join(
            f"{name} {(entry['in_msgs'] - idle['connz'].get(name, {}).get('in_msgs', 0)) / 5:.1f}/"
            f"{(entry['out_msgs'] - idle['connz'].get(name, {}).get('out_msgs', 0)) / 5:.1f}"
            for name, entry in sorted(idle_after["connz"].items())))
        for _ in range(args.rounds):
            tracer = None
            if args.strace:
                out = os.path.join(tempfile.gettempdir(), f"bus_account_strace_{os.getpid()}.txt")
                tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(pids["nats"])],
                                          stderr=subprocess.DEVNULL)
                time.sleep(0.5)
            before = _snapshot(pids, monitor, prof_port)
            started = time.perf_counter()
            samples = uvloop.run(loadgen.sequential(target.url, target.one, args.count))
            wall = time.perf_counter() - started
            time.sleep(0.5)  # the last log batch's publish and the log store's fetch and acks
            after = _snapshot(pids, monitor, prof_port)
            samples.sort()
            print(f"\n{args.form}: {args.count / wall:,.0f} req/s, p50 {samples[len(samples) // 2] * 1e3:.3f} ms "
                  f"p99 {samples[int(len(samples) * 0.99)] * 1e3:.3f} ms")
            report(before, after, args.count)
            if tracer is not None:
                tracer.send_signal(2)
                tracer.wait()
                print(Path(out).read_text())


if __name__ == "__main__":
    main()
