"""Where the CPU goes: per-process CPU time per request on a running embedded stack, for each format.

    python -m bench.cpu_account [--rows 1000] [--connections 4] [--seconds 5] [--forms records,Arrow,OIP v2]
                                [--engine-config '{"log_policy": "off"}'] [--spy 'log store' [--native]] [--pprof-nats]
                                [--perf nats]

Starts a fresh embedded stack, deploys ccfraud, and for each request format runs the load generator while
reading every stack process's utime+stime from /proc before and after: the answer is microseconds of CPU per
request in the gateway, the engine replica, nats-server, the log store, SeaweedFS, PostgreSQL and the load
generator itself (this process), plus the throughput and each process's minor page faults per request (fresh
memory is dear on this VM: docs/performance.md item 34). CPU seconds, unlike wall-clock latencies, hardly depend
on what else the 2-core machine is doing, so this is the tool for deciding where a change should go.
`--pprof-nats` turns on nats-server's profiler (`RAILYARD_STACK__NATS_PROF_PORT`) and writes its CPU profile
during each form's load to build/spy/nats-<form>.pprof, with `go tool pprof -top` of it beside (.txt);
`--perf nats` records a role with `perf record -g` (build/spy/<role>-<form>.perf), which also sees the kernel's
share (`perf report -i ... --no-children`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import uvloop

from bench import loadgen
from bench.peers.harness import ccfraud_stack, cmdline, descendants, rss_mib

TICK = os.sysconf("SC_CLK_TCK")
SPY_DIR = Path(__file__).resolve().parent.parent / "build" / "spy"
# --spy: sampled stacks to build/spy/<role>-<form>.txt; py-spy from PATH, else the venv's (beside this interpreter)
PY_SPY = os.environ.get("PY_SPY") or shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def _role(pid: int) -> str:
    line = cmdline(pid)
    for key, role in (("services.engine.replica", "engine replica"), ("services.gateway", "gateway"),
                      ("nats-server", "nats"), ("services.log_store", "log store"), ("weed", "seaweedfs"),
                      ("postgres", "postgres"), ("services.deployer", "deployer"),
                      ("services.monitoring", "monitoring"), ("services.auth", "auth")):
        if key in line:
            return role
    return "other"


def _cpu(pid: int) -> float:
    return _stat(pid)[0]


def _stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, minor page faults) of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[7])


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _nats_profile(url: str, seconds: int, label: str) -> threading.Thread:
    def fetch() -> None:
        out = SPY_DIR / f"nats-{label}.pprof"
        out.write_bytes(urllib.request.urlopen(f"{url}profile?seconds={seconds}", timeout=seconds + 30).read())
        top = subprocess.run(["go", "tool", "pprof", "-top", "-nodecount=60", str(out)], capture_output=True,
                             text=True)
        cum = subprocess.run(["go", "tool", "pprof", "-top", "-cum", "-nodecount=60", str(out)],
                             capture_output=True, text=True)
        (SPY_DIR / f"nats-{label}.txt").write_text(top.stdout + top.stderr + "\n\n" + cum.stdout)

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread


def account(root: int, run, spy: str = "", seconds: float = 5.0, label: str = "", pprof: str = "",
            perf: str = "", native: bool = False) -> tuple[dict[str, float], float, int, dict[str, int]]:
    pids = descendants(root)
    before = {pid: _stat(pid) for pid in pids}
    if spy or perf:
        SPY_DIR.mkdir(parents=True, exist_ok=True)
    profilers = [subprocess.Popen([PY_SPY, "record", "-p", str(pid), "-d", str(max(1, int(seconds) - 1)),
                                   "-r", "250", "-f", "raw", "--native" if native else "--nonblocking",
                                   "-o", str(SPY_DIR / f"{role.replace(' ', '_')}-{label}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid in pids if spy and (role := _role(pid)) in spy.split(",")]
    profilers += [subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-g", "-q", "-p", str(pid),
                                    "-o", str(SPY_DIR / f"{role.replace(' ', '_')}-{label}.perf"),
                                    "--", "sleep", str(max(1, int(seconds) - 1))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                  for pid in pids if perf and (role := _role(pid)) in perf.split(",")]
    if pprof:
        SPY_DIR.mkdir(parents=True, exist_ok=True)
        profilers.append(_nats_profile(pprof, max(1, int(seconds) - 1), label))
    own = _own_cpu()
    started = time.perf_counter()
    count = run()
    wall = time.perf_counter() - started
    time.sleep(1.5)  # what the log path does after the load belongs to it
    for profiler in profilers:
        profiler.join() if isinstance(profiler, threading.Thread) else profiler.wait()
    roles: dict[str, float] = {"loadgen": _own_cpu() - own}
    faults: dict[str, int] = {}
    for pid in pids:
        spent, faulted = _stat(pid)
        roles[_role(pid)] = roles.get(_role(pid), 0.0) + spent - before[pid][0]
        faults[_role(pid)] = faults.get(_role(pid), 0) + faulted - before[pid][1]
    return roles, wall, count, faults


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--forms", default="records,Arrow,OIP v2")
    parser.add_argument("--engine-config", default="{}")
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the whole stack")
    parser.add_argument("--spy", default="", help="roles to profile with py-spy, e.g. 'gateway,engine replica'")
    parser.add_argument("--pprof-nats", action="store_true", help="nats-server's own CPU profile per form")
    parser.add_argument("--native", action="store_true", help="--spy with native frames (py-spy pauses the process "
                                                                 "at each sample: its CPU figures are not the run's)")
    parser.add_argument("--rss", action="store_true", help="each role's RSS right after the load (MiB)")
    parser.add_argument("--perf", default="", help="roles to record with `perf record -g` (kernel time too), "
                                                   "e.g. 'nats'")
    args = parser.parse_args()
    pprof = ""
    if args.pprof_nats:
        port = free_port()
        args.env.append(f"RAILYARD_STACK__NATS_PROF_PORT={port}")
        pprof = f"http://127.0.0.1:{port}/debug/pprof/"
    with ccfraud_stack("railyard-cpu-", args.env) as (stack, deployer):
        targets = deployer.targets(deployer.deploy("cpu", ["ccfraud"], json.loads(args.engine_config)))
        for form in args.forms.split(","):
            target = targets[form]
            request = target.one if args.rows == 1 else target.thousand
            uvloop.run(loadgen.concurrent(target.url, request, args.connections, 1.0))  # warm
            time.sleep(1.0)

            def run(url: str = target.url, request: bytes = request) -> int:
                rate = uvloop.run(loadgen.concurrent(url, request, args.connections, args.seconds))
                return round(rate * args.seconds)

            roles, wall, count, faults = account(stack.process.pid, run, args.spy, args.seconds, form.replace(' ', ''),
                                         pprof, args.perf, args.native)
            print(f"\n{form}: {args.rows} rows x {args.connections} connections: {count / wall:,.0f} req/s, "
                  f"{count * args.rows / wall:,.0f} rows/s; CPU per request (us):")
            total = 0.0
            for role, seconds in sorted(roles.items(), key=lambda item: -item[1]):
                per = seconds / max(count, 1) * 1e6
                total += per
                print(f"  {role:15s} {per:10,.0f}")
            print(f"  {'total':15s} {total:10,.0f}  (2 cores allow {2e6 * wall / max(count, 1):,.0f})")
            print("  minor page faults per request: " + ", ".join(  # fresh memory is dear on this VM (item 34)
                f"{role} {n / max(count, 1):,.1f}" for role, n in sorted(faults.items(), key=lambda i: -i[1])
                if n / max(count, 1) >= 0.5))
            if args.rss:
                by_role: dict[str, list[int]] = {}
                for pid in descendants(stack.process.pid):
                    by_role.setdefault(_role(pid), []).append(pid)
                print("  RSS after the load (MiB): " + ", ".join(
                    f"{role} {rss_mib(pids):.0f}" for role, pids in sorted(by_role.items()) if role != "other"))
                time.sleep(5.0)  # as make bench-peers looks again (a replica trims its heap every 2 s)
                print("  RSS 5 s later (MiB): " + ", ".join(
                    f"{role} {rss_mib(pids):.0f}" for role, pids in sorted(by_role.items()) if role != "other"))


if __name__ == "__main__":
    main()
