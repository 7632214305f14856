"""What a route's resolve costs (deployer.deployments.resolve, the gateway's route of a deployment), idle and with the
replica under batch-1000 load, beside status/get_deployment (which probes every replica).

    python -m bench.deployer_resolve [--calls 300] [--rounds 3] [--connections 2]

Starts a fresh embedded stack, deploys ccfraud with one replica, then in each round sends `calls` resolves and as many
status reads one after another over the bus as the `client` identity (the front door, sealed replies), first idle,
then while a load generator keeps the replica busy with batch-1000 Arrow requests. Prints p50/p90/p99 (ms) of each
per phase, pooled over the rounds, and the load's requests per second. The gateway resolves a running deployment's
route every ROUTE_TTL (2 s) per process in the background, and a request waits for one past ROUTE_MAX_AGE, on a
deployment not Running, or when a replica refused it (services/gateway/inference.py); before session 30 each resolve
probed every replica (answered on the replica's event loop, beside its requests), since then it answers from the
deployer's known state when a replica answered lately (backend.serving_now). To compare two trees, run it with each
tree's Python (bench/tail_ab.py's tree_python) from that tree.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time

import nats

from bench import loadgen
from bench.peers.harness import ccfraud_stack
from shared import subjects
from shared.sealed import sealed_request


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 for q in (0.5, 0.9, 0.99)]
    return "p50 {:.2f}  p90 {:.2f}  p99 {:.2f} ms (n={})".format(*pick, len(ordered))


async def _calls(url: str, token: str, name: str, calls: int) -> dict[str, list[float]]:
    nc = await nats.connect(url, inbox_prefix="_INBOX.client")
    times: dict[str, list[float]] = {"resolve": [], "status": []}
    headers = {"authorization": f"Bearer {token}"}
    body = json.dumps({"name": name}).encode()
    try:
        for _ in range(calls):
            for label, subject in (("resolve", subjects.DEPLOYER_DEPLOYMENTS_RESOLVE),
                                   ("status", subjects.DEPLOYER_DEPLOYMENTS_STATUS)):
                started = time.perf_counter()
                reply = await sealed_request(nc, subject, body, headers=headers, timeout=10)
                times[label].append(time.perf_counter() - started)
                if not json.loads(reply.data).get("ok"):
                    raise RuntimeError(f"{subject}: {reply.data[:300]!r}")
    finally:
        await nc.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2)
    args = parser.parse_args()
    with ccfraud_stack("railyard-resolve-", []) as (stack, deployer):
        url = deployer.deploy("resolve", ["ccfraud"])
        name = url.split("/infer/")[1].split("/")[0]
        target = deployer.targets(url)["Arrow"]
        token = deployer.client.token
        pooled: dict[str, dict[str, list[float]]] = {"idle": {"resolve": [], "status": []},
                                                     "loaded": {"resolve": [], "status": []}}
        rates = []
        for _ in range(args.rounds):
            for phase in ("idle", "loaded"):
                stop = threading.Event()
                load = None
                if phase == "loaded":
                    done: list[float] = []

                    def run(stop: threading.Event = stop, done: list[float] = done) -> None:
                        while not stop.is_set():
                            done.append(asyncio.run(loadgen.concurrent(url, target.thousand, args.connections, 2.0)))

                    load = threading.Thread(target=run, daemon=True)
                    load.start()
                    time.sleep(1.0)  # the load is on before the first call
                times = asyncio.run(_calls(stack.nats_url("client"), token, name, args.calls))
                stop.set()
                if load is not None:
                    load.join()
                    rates.extend(done)
                for label, samples in times.items():
                    pooled[phase][label].extend(samples)
        for phase, labels in pooled.items():
            for label, samples in labels.items():
                print(f"{phase:7} {label:8} {_percentiles(samples)}")
        if rates:
            print(f"load: batch-1000 Arrow, {args.connections} connections: {statistics.median(rates):.1f} req/s "
                  "(median of 2-s runs)")


if __name__ == "__main__":
    main()
