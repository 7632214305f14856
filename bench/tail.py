"""Batch-1 latency tails of engine options, measured side by side on one stack.

    python -m bench.tail [--rounds 6] [--count 1500] [--form records[,Arrow,OIP v2]]
                         [--variant 'logs off={"log_policy": "off"}' ...] [--per-round]

Deploys ccfraud once per variant (plus the default configuration) on a fresh embedded stack, then alternates
short sequential runs of `count` batch-1 requests on one connection over the variants (and the forms given, in
the same stack), `rounds` times, in A B, B A order, so that whatever else the machine does weighs on all of
them alike; prints p50, p99 and p99/p50 per variant with the load averages seen (and each round's with
--per-round). This is how the causes of the tail were told apart (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import numpy as np
import uvloop

from bench import loadgen
from bench.peers.harness import ccfraud_stack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--form", default="records", help="records, Arrow, OIP v2, or several, comma-separated")
    parser.add_argument("--variant", action="append", default=[], help="label=engine_config JSON")
    parser.add_argument("--env", action="append", default=[], help="RAILYARD_...=value for the whole stack")
    parser.add_argument("--per-round", action="store_true", help="print each round's p50, p99 and load average")
    args = parser.parse_args()
    forms = args.form.split(",")
    if set(forms) - {"records", "Arrow", "OIP v2"}:
        parser.error("--form: records, Arrow or OIP v2")
    variants = {"default": {}} | {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in args.variant}
    with ccfraud_stack("railyard-tail-", args.env) as (_, deployer):
        found = {label: deployer.targets(deployer.deploy(f"tail-{index}", ["ccfraud"], config))
                 for index, (label, config) in enumerate(variants.items())}
        targets = {(form, label): found[label][form] for form in forms for label in variants}
        for target in targets.values():
            uvloop.run(loadgen.sequential(target.url, target.one, 300))
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in targets}
        rounds: dict[tuple[str, str], list[tuple[float, float, float]]] = {key: [] for key in targets}
        for index in range(args.rounds):
            for form in forms:
                for label in list(variants) if index % 2 == 0 else list(variants)[::-1]:
                    target = targets[form, label]
                    run = uvloop.run(loadgen.sequential(target.url, target.one, args.count))
                    samples[form, label] += run
                    rounds[form, label].append((float(np.percentile(run, 50)), float(np.percentile(run, 99)),
                                                os.getloadavg()[0]))
                    if args.per_round:
                        p50, p99, load = rounds[form, label][-1]
                        print(f"  round {index + 1} {form:8s} {label:16s} p50 {p50 * 1e3:.3f} ms  p99 "
                              f"{p99 * 1e3:.3f} ms  p99/p50 {p99 / p50:.2f}  load {load:.2f}", flush=True)
        print(f"batch 1, one connection, {args.rounds} rounds x {args.count} requests {args.env}")
        for (form, label), values in samples.items():
            p50, p99 = np.percentile(values, 50) * 1e3, np.percentile(values, 99) * 1e3
            ratios = [b / a for a, b, _ in rounds[form, label]]
            loads = [load for _, _, load in rounds[form, label]]
            print(f"  {form:8s} {label:16s} p50 {p50:.3f} ms  p99 {p99:.3f} ms  p99/p50 {p99 / p50:.2f} "
                  f"(per round {min(ratios):.2f}-{max(ratios):.2f}, median {statistics.median(ratios):.2f}; "
                  f"load {min(loads):.2f}-{max(loads):.2f})")


if __name__ == "__main__":
    main()
