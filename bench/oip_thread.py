"""OIP v2's batch-1000 JSON read on the gateway's event loop or in a thread, alternated on one stack (item 35).

    python -m bench.oip_thread [--rounds 4] [--seconds 5] [--connections 4]

Variants, switched by SIGUSR1 in the gateway (bench/oip_thread_site/sitecustomize.py), one round each in turn:
  0 today: `parse_request` on the loop (simdjson, which holds the GIL);
  1 the same `parse_request` in `asyncio.to_thread` (the thread hop alone: simdjson still holds the GIL);
  2 in `asyncio.to_thread`, the `data` list read by pyarrow's CSV reader (lets go of the GIL) and the rest of the
    body by orjson: the loop's thread is free while the numbers are read, at ~3x simdjson's CPU (bench.oip_parsers).
    Speed test only: variant 2 checks nothing of the JSON number grammar (it would take NaN, +1, .5, ...).
Each round: batch-1000 OIP v2 on `--connections` connections for `--seconds`; req/s, the gateway's CPU and the whole
stack's CPU a request (utime+stime from /proc), the load average.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import time
from pathlib import Path

SITE = Path(__file__).resolve().parent / "oip_thread_site"
NAMES = ["loop (today)", "thread, simdjson", "thread, pyarrow CSV"]
THREAD_FROM = 1 << 16  # bytes of body from which the variants 1 and 2 read in a thread


def install():
    """In the gateway: wraps Inference.run_oip; returns the switch (variant number -> None)."""
    import numpy as np
    import orjson
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    import services.gateway.inference as inference
    import services.gateway.oip as oip

    chosen = [0]
    today_run, today_read = inference.Inference.run_oip, oip._read_json_fast
    read_options = pa_csv.ReadOptions(column_names=["x"], use_threads=False, block_size=1 << 22)
    convert_options = pa_csv.ConvertOptions(column_types={"x": pa.float64()})

    def read_with_csv(body: bytes):
        start = body.index(b"[", body.index(b'"data"')) + 1
        end = body.index(b"]", start)
        request = orjson.loads(body[:start] + body[end:])
        values = pa_csv.read_csv(pa.py_buffer(body[start:end].replace(b",", b"\n")), read_options=read_options,
                                 convert_options=convert_options).column(0).to_numpy()
        request["inputs"][0]["data"] = np.asarray(values)
        return request

    async def run_oip(self, principal, token, model, header_length, body):  # noqa: ANN001, ANN202
        if chosen[0] == 0 or len(body) < THREAD_FROM:
            return await today_run(self, principal, token, model, header_length, body)
        route = await self.cache.reach(self.runtime, principal, token, model)
        parsed, table = await asyncio.to_thread(oip.parse_request, body, header_length)
        _, outputs = await self.cache.ask(self.runtime, route, token, table)
        return oip.encode_response(parsed, model, route.pipeline_version, outputs)

    def switch(variant: int) -> None:
        chosen[0] = variant
        oip._read_json_fast = read_with_csv if variant == 2 else today_read

    inference.Inference.run_oip = run_oip
    return switch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    import uvloop  # here, not at import: the gateway imports this module for `install` only

    from bench import loadgen
    from bench.cpu_account import _cpu
    from bench.peers.harness import ccfraud_stack, cmdline, descendants

    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (str(SITE), root, os.environ.get("PYTHONPATH", "")) if p)
    with ccfraud_stack("railyard-oipthread-", [f"PYTHONPATH={path}", "RAILYARD_BENCH_OIP_THREAD=1"]) as (stack,
                                                                                                      deployer):
        target = deployer.targets(deployer.deploy("oipthread", ["ccfraud"], {}))["OIP v2"]
        pids = descendants(stack.process.pid)
        gateways = [pid for pid in pids if "services.gateway" in cmdline(pid)]
        uvloop.run(loadgen.concurrent(target.url, target.thousand, args.connections, 2.0))  # warm
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in NAMES}
        for round_ in range(args.rounds):
            for variant, name in enumerate(NAMES):
                if variant:  # the gateway starts at variant 0 and is moved on one step a round
                    for pid in gateways:
                        os.kill(pid, signal.SIGUSR1)
                time.sleep(0.3)
                before = {pid: _cpu(pid) for pid in pids}
                rate = uvloop.run(loadgen.concurrent(target.url, target.thousand, args.connections, args.seconds))
                time.sleep(1.0)  # the log path's work after the load belongs to it
                count = max(rate * args.seconds, 1)
                gateway = sum(_cpu(pid) - before[pid] for pid in gateways) / count * 1e6
                whole = sum(_cpu(pid) - before[pid] for pid in pids) / count * 1e6
                figures[name].append((rate, gateway, whole))
                print(json.dumps({"round": round_ + 1, "variant": name, "req_s": round(rate, 1),
                                  "gateway_us": round(gateway), "stack_us": round(whole),
                                  "load": round(os.getloadavg()[0], 1)}), flush=True)
            for pid in gateways:  # back to variant 0 for the next round
                os.kill(pid, signal.SIGUSR1)
        print(f"\nOIP v2 batch-1000, {args.connections} connections, median of {args.rounds} rounds "
              "[min-max]: req/s, gateway CPU us a request, stack CPU us a request")
        for name, rows in figures.items():
            cols = list(zip(*rows, strict=True))
            print(f"  {name:22s} " + "   ".join(f"{statistics.median(c):8,.0f} [{min(c):,.0f}-{max(c):,.0f}]"
                                                 for c in cols))


if __name__ == "__main__":
    main()
