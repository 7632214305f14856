"""Where the gateway's CPU goes, function by function, on a real stack under load.

    python -m bench.gateway_meter [--rows 1000] [--connections 4] [--seconds 4] [--rounds 3] [--forms 'OIP v2']

Starts a fresh embedded stack with bench/gateway_meter_site on PYTHONPATH (its sitecustomize wraps the gateway's
request functions with the thread's CPU clock: a coroutine's own steps, not the time it waits), deploys ccfraud and,
for each form and round, counts while the load generator runs (SIGUSR1 ... SIGUSR2 to the gateway), then prints
microseconds of gateway CPU per request by function beside the process's whole CPU. Unlike py-spy or cProfile,
which sample wall time, a process preempted inside a `write()` (the reader it woke took its core) counts nothing:
on a loaded 2-core machine that was a sixth of the gateway in py-spy and ~0.5 % of its CPU (docs/performance.md
item 33). Nested functions are counted in each (the simdjson parse is inside the OIP JSON read, which is inside
parse_request); work on other tasks (the coalescer's bus request) is not inside run_oip. To compare two variants
of the code, alternate them round by round on one stack (the item's A/B swapped module attributes at SIGUSR1).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from bench import loadgen
from bench.peers.harness import ccfraud_stack, cmdline, descendants

SITE = Path(__file__).resolve().parent / "gateway_meter_site"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forms", default="OIP v2")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="railyard-meter-"))
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    with ccfraud_stack("railyard-meter-", [f"PYTHONPATH={path}", f"RAILYARD_BENCH_METER={out}"]) as (stack,
                                                                                                   deployer):
        targets = deployer.targets(deployer.deploy("meter", ["ccfraud"], {}))
        gateway = next(pid for pid in descendants(stack.process.pid) if "services.gateway" in cmdline(pid))
        for form in args.forms.split(","):
            target = targets[form]
            request = target.one if args.rows == 1 else target.thousand
            uvloop.run(loadgen.concurrent(target.url, request, args.connections, 1.0))  # warm
            figures: dict[str, list[float]] = {}
            for round_ in range(args.rounds):
                os.kill(gateway, signal.SIGUSR1)
                rate = uvloop.run(loadgen.concurrent(target.url, request, args.connections, args.seconds))
                os.kill(gateway, signal.SIGUSR2)
                result = out / f"meter-{gateway}.json"
                for _ in range(100):
                    if result.exists():
                        break
                    time.sleep(0.05)
                totals = json.loads(result.read_text())
                result.unlink()
                count = max(rate * args.seconds, 1)
                for name, nanoseconds in totals.items():
                    figures.setdefault(name, []).append(nanoseconds / count / 1000)
                process = totals["process"] / count / 1000
                print(f"{form} round {round_ + 1}: {rate:,.0f} req/s, gateway CPU {process:,.0f} us a request "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
            print(f"\n{form}: {args.rows} rows x {args.connections} connections, gateway CPU per request (us), "
                  f"median of {args.rounds} rounds [min-max]:")
            for name, values in sorted(figures.items(), key=lambda item: -statistics.median(item[1])):
                print(f"  {name:55s} {statistics.median(values):8,.0f}  [{min(values):,.0f}-{max(values):,.0f}]")


if __name__ == "__main__":
    main()
