"""An engine replica's request and log path in one process, without a stack: what batch-1000 load costs it in
CPU and in memory (RSS), for comparing allocator settings and log-path changes in alternated runs.

    python -m bench.log_memory [--rate 250] [--seconds 6] [--model seed-mlp|ccfraud] [--variants 'a=;b=NAME=v ...']
                               [--rounds 3]

Each run is a fresh child process (so `MALLOC_...` variables apply from its start, as the deployer starts a
replica with `ARROW_DEFAULT_MEMORY_POOL=system MALLOC_ARENA_MAX=1`): at `--rate` requests a second it copies a
1,000-row Arrow request into new bytes (as the bus client hands a message over), decodes it, runs the model,
encodes the answer and hands the record to a real `LogBatcher` (segments on: Parquet written in its thread; the
PUT is a 40 ms wait, the publish a no-op), while the replica's idle trim (`Replica.trim_memory`) runs. It prints
the process's CPU per request, its RSS under load (mean and largest of samples every 0.1 s), right after the load
and 5 s later. Variants are `label=NAME=value NAME=value` (environment of the child), alternated `--rounds`
times; `BENCH_LOGBATCHER_FROM=<file>` / `BENCH_LOG_SEGMENTS_FROM=<file>` in a variant's environment load another
version of services/engine/logbatcher.py / shared/log_segments.py (e.g. `git show HEAD:<path>` saved to a file),
for an A/B of code in one sitting; `BENCH_NO_LOG=1` logs nothing.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.replica_memory import smaps_split


def rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo() -> dict[str, float]:
    """glibc's heap figures (MiB): in use, free, mmapped, and the top's releasable part (main arena)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {"used": info.uordblks / 2**20, "free": info.fordblks / 2**20, "mmapped": info.hblkhd / 2**20,
            "top": info.keepcost / 2**20}


class _Store:
    async def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        len(data)
        await asyncio.sleep(0.04)


class _Stream:
    async def publish(self, subject: str, payload: bytes, headers: dict) -> None:
        return None


async def child(rate: float, seconds: float, model: str) -> dict:
    from shared.lean_imports import decline_unused

    decline_unused()
    for name, variable in (("shared.log_segments", "BENCH_LOG_SEGMENTS_FROM"),
                           ("services.engine.logbatcher", "BENCH_LOGBATCHER_FROM")):
        if os.environ.get(variable):  # another version of a module (an A/B of code): its file stands for it
            import importlib.util

            spec = importlib.util.spec_from_file_location(name, os.environ[variable])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa

    from bench.peers.harness import MODELS
    from services.engine.logbatcher import LogBatcher
    from services.engine.replica import Replica
    from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
    from shared.logrecords import InferenceRecord
    from shared.settings import LogSettings
    from tests.models import sample_rows

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(MODELS[model](), options, providers=["CPUExecutionProvider"])
    request = to_ipc_stream(pa.table({"tensor": tensor_array(sample_rows(1000))}))
    deployment = {"workspace_id": 1, "pipeline": "mem", "name": "mem", "pipeline_version": "v1"}
    batcher = LogBatcher(_Stream(), deployment, LogSettings(), 8 << 20, _Store())
    replica = Replica.__new__(Replica)  # only what trim_memory reads
    replica.served, replica.batcher = 0, batcher
    log = os.environ.get("BENCH_NO_LOG") != "1"
    tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(replica.trim_memory())]

    def serve() -> None:
        table = from_ipc(bytes(memoryview(request)))  # a message's own bytes, as the bus client hands them over
        values = table.column(0).combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        out = session.run(None, {"tensor": values})[0]
        output = pa.table({"out": tensor_array(np.ascontiguousarray(out))})
        to_ipc_stream(output)
        if log:
            batcher.add(InferenceRecord(int(time.time() * 1000), table, output, "m", (1, 2)))
        replica.served += 1

    for _ in range(20):  # warm: the model, the codecs, a first segment
        serve()
    await asyncio.sleep(1.0)
    samples: list[float] = []
    started, spent, count = time.monotonic(), cpu(), 0
    next_sample = started
    while (now := time.monotonic()) - started < seconds:
        serve()
        count += 1
        if now >= next_sample:
            samples.append(rss())
            next_sample = now + 0.1
        await asyncio.sleep(max(0.0, started + count / rate - time.monotonic()))
    wall = time.monotonic() - started
    right_after = rss()
    heap = _mallinfo()
    held = batcher.held_bytes / 2**20
    split = smaps_split(os.getpid())
    await asyncio.sleep(1.5)  # the log path's work after the load is the load's
    spent = cpu() - spent
    await asyncio.sleep(3.5)
    later = rss()
    for task in tasks:
        task.cancel()
    return {"cpu_us": spent / count * 1e6, "rate": count / wall, "mean": statistics.mean(samples),
            "max": max(samples), "after": right_after, "later": later, "split": split,
            "lost": batcher.lost_rows, "heap": heap, "held": held}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--model", default="seed-mlp")
    parser.add_argument("--variants", default="base=")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    args = parser.parse_args()
    if args.child:
        import uvloop

        print(json.dumps(uvloop.run(child(args.rate, args.seconds, args.model))))
        return
    variants = []
    for spec in args.variants.split(";"):
        label, _, env = spec.partition("=")
        variants.append((label, dict(item.split("=", 1) for item in env.split())))
    base = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"} | os.environ
    results: dict[str, list[dict]] = {label: [] for label, _ in variants}
    for round_ in range(args.rounds):
        for label, env in variants:
            out = subprocess.run([sys.executable, "-m", "bench.log_memory", "--child", "--rate", str(args.rate),
                                  "--seconds", str(args.seconds), "--model", args.model],
                                 env=base | env, capture_output=True, text=True, check=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            results[label].append(figures)
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"round {round_ + 1} {label:14s} CPU {figures['cpu_us']:6,.0f} us/request at "
                  f"{figures['rate']:.0f}/s; RSS under load mean {figures['mean']:.1f} max {figures['max']:.1f}, "
                  f"right after {figures['after']:.1f} (" + ", ".join(
                      f"{k} {v:.1f}" for k, v in figures["split"].items()) +
                  f"), 5 s later {figures['later']:.1f}; malloc " + ", ".join(
                      f"{k} {v:.1f}" for k, v in figures["heap"].items()) + f", log buffer {figures['held']:.1f}; "
                  f"load {load}", flush=True)
    for label, runs in results.items():
        print(f"{label:14s} CPU " + "/".join(f"{r['cpu_us']:.0f}" for r in runs) + " us; mean RSS "
              + "/".join(f"{r['mean']:.0f}" for r in runs) + "; right after "
              + "/".join(f"{r['after']:.0f}" for r in runs) + "; 5 s later "
              + "/".join(f"{r['later']:.0f}" for r in runs))


if __name__ == "__main__":
    main()
