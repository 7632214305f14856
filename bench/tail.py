"""Batch-1 latency tails of engine options, measured side by side on one stack.

    python -m bench.tail [--rounds 6] [--count 1500] [--form records]
                         [--variant 'logs off={"log_policy": "off"}' ...]

Deploys ccfraud once per variant (plus the default configuration) on a fresh embedded stack, then alternates
short sequential runs of `count` batch-1 requests on one connection over the variants, `rounds` times, so that
whatever else the machine does weighs on all of them alike; prints p50, p99 and p99/p50 per variant. This is
how the causes of the tail were told apart (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import uvloop

from bench import loadgen
from bench.peers.harness import ccfraud_stack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--form", default="records", choices=["records", "Arrow", "OIP v2"])
    parser.add_argument("--variant", action="append", default=[], help="label=engine_config JSON")
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the whole stack")
    args = parser.parse_args()
    variants = {"default": {}} | {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in args.variant}
    with ccfraud_stack("railyard-tail-", args.env) as (_, deployer):
        targets = {label: deployer.targets(deployer.deploy(f"tail-{index}", ["ccfraud"], config))[args.form]
                   for index, (label, config) in enumerate(variants.items())}
        for target in targets.values():
            uvloop.run(loadgen.sequential(target.url, target.one, 300))
        samples: dict[str, list[float]] = {label: [] for label in targets}
        rounds: dict[str, list[tuple[float, float]]] = {label: [] for label in targets}
        for _ in range(args.rounds):
            for label, target in targets.items():
                run = uvloop.run(loadgen.sequential(target.url, target.one, args.count))
                samples[label] += run
                rounds[label].append((float(np.percentile(run, 50)), float(np.percentile(run, 99))))
        print(f"{args.form}, batch 1, one connection, {args.rounds} rounds x {args.count} requests {args.env}")
        for label, values in samples.items():
            p50, p99 = np.percentile(values, 50) * 1e3, np.percentile(values, 99) * 1e3
            ratios = [b / a for a, b in rounds[label]]
            print(f"  {label:24s} p50 {p50:.3f} ms  p99 {p99:.3f} ms  p99/p50 {p99 / p50:.2f} "
                  f"(per round {min(ratios):.2f}-{max(ratios):.2f}, median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
