"""Where an engine replica's memory sits right after batch-1000 load, and what the load cost it in CPU.

    python -m bench.replica_memory [--forms records,Arrow,OIP v2] [--seconds 4] [--env NAME=value ...]
                                   [--label A] [--singles]

Starts a fresh embedded stack (`--env` settings for the whole stack: the deployer passes its environment to the
replicas, so `MALLOC_...` variables reach them), deploys both bench models (ccfraud and the seed-like MLP, as
`make bench-peers`) and, for each form in turn and each model, sends three batch-1000 requests and then
batch-1000 requests on 4 connections for `--seconds` (`--singles` first adds the bench's batch-1 loads). Right
after the last load (as `bench/peers/harness.py` reads memory) and 5 s later it prints each replica's RSS split by
kind of mapping from /proc/<pid>/smaps:

- `heap`: glibc's main arena ([heap], grown by brk: the event loop's thread);
- `arenas`: glibc's thread arenas (64 MiB-aligned anonymous heaps: threads that malloc'd);
- `pyarenas`: 1 MiB anonymous mappings (CPython's object allocator);
- `stacks`: 8 MiB anonymous mappings (thread stacks);
- `anon`: other anonymous mappings (glibc's mmapped chunks above its mmap threshold, onnxruntime's, ...);
- `files`: mapped files (code, shared between processes).

and the replicas' CPU per request during the loads (utime+stime). The last line is one JSON object of the
figures, for scripts that alternate variants.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from pathlib import Path

import uvloop

from bench import loadgen
from bench.peers.harness import MODELS, ccfraud_stack, cmdline, descendants

TICK = os.sysconf("SC_CLK_TCK")
ARENA_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: a thread arena's heaps are aligned to it
HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def smaps_split(pid: int) -> dict[str, float]:
    """RSS MiB of a process by kind of mapping (see the module docstring)."""
    kinds = dict.fromkeys(("heap", "arenas", "pyarenas", "stacks", "anon", "files"), 0.0)
    kind = "files"
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return kinds
    for line in lines:
        header = HEADER.match(line)
        if header:
            start, end, _, name = int(header[1], 16), int(header[2], 16), header[3], header[4]
            size = end - start
            if name == "[heap]":
                kind = "heap"
            elif name == "[stack]":
                kind = "stacks"
            elif name.startswith("/") or name.startswith("[v"):
                kind = "files"
            elif start % ARENA_ALIGN == 0 and size <= ARENA_ALIGN:
                kind = "arenas"
            elif size == 1 << 20:
                kind = "pyarenas"
            elif size == 8 << 20:
                kind = "stacks"
            else:
                kind = "anon"
        elif line.startswith("Rss:"):
            kinds[kind] += int(line.split()[1]) / 1024
    return kinds


def top_files(pid: int, count: int = 25) -> list[tuple[str, float]]:
    """The mapped files holding most of a process's RSS (MiB), all mappings of a file together."""
    files: dict[str, float] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        header = HEADER.match(line)
        if header:
            name = header[4] if header[4].startswith("/") else ""
        elif name and line.startswith("Rss:"):
            files[name] = files.get(name, 0.0) + int(line.split()[1]) / 1024
    return sorted(files.items(), key=lambda item: -item[1])[:count]


def rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def show(label: str, replicas: dict[str, int]) -> dict[str, dict[str, float]]:
    figures = {}
    for model, pid in replicas.items():
        split = smaps_split(pid)
        figures[model] = {"rss": rss(pid), **split}
        print(f"  {label} {model:9s} RSS {figures[model]['rss']:6.1f} MiB: "
              + ", ".join(f"{k} {v:.1f}" for k, v in split.items()), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forms", default="records,Arrow,OIP v2")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the whole stack")
    parser.add_argument("--label", default="")
    parser.add_argument("--singles", action="store_true", help="the bench's batch-1 loads before each batch-1000")
    parser.add_argument("--files", action="store_true", help="the mapped files holding most of a replica's RSS")
    args = parser.parse_args()
    with ccfraud_stack("railyard-mem-", args.env) as (stack, deployer):
        deployer.upload("seed-mlp", MODELS["seed-mlp"]())
        targets = {model: deployer.targets(deployer.deploy(f"mem-{model}", [model])) for model in MODELS}
        found = [p for p in descendants(stack.process.pid) if "services.engine.replica" in cmdline(p)]
        replicas = {model: next(p for p in found if f"mem-{model}" in Path(f"/proc/{p}/cmdline").read_text()
                                or f"mem-{model}" in _spec_name(p)) for model in MODELS}
        before = {model: cpu(pid) for model, pid in replicas.items()}
        requests = 0
        under: dict[str, list[float]] = {}
        for form in args.forms.split(","):
            for model in MODELS:
                target = targets[model][form]
                if args.singles:
                    uvloop.run(loadgen.sequential(target.url, target.one, 300))
                    uvloop.run(loadgen.concurrent(target.url, target.one, 8, 1.5))
                    uvloop.run(loadgen.concurrent(target.url, target.one, 32, 1.5))
                uvloop.run(loadgen.sequential(target.url, target.thousand, 3))
                samples: list[dict[str, float]] = []
                done = threading.Event()
                sampler = threading.Thread(target=_sample, args=(replicas[model], samples, done))
                sampler.start()
                rate = uvloop.run(loadgen.concurrent(target.url, target.thousand, 4, args.seconds))
                done.set()
                sampler.join()
                requests += round(rate * args.seconds)
                peak = {k: max(s[k] for s in samples) for k in samples[0]} if samples else {}
                mean = sum(s["rss"] for s in samples) / max(len(samples), 1)
                print(f"{args.label} {form} / {model}: {rate * 1000:,.0f} rows/s; under load RSS mean {mean:.1f}, "
                      "peaks " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()), flush=True)
                under.setdefault(model, []).append(mean)
        after = show(f"{args.label} right after", replicas)
        if args.files:
            for model, pid in replicas.items():
                print(f"  {model}'s mapped files (MiB): " + ", ".join(
                    f"{Path(name).name} {mib:.1f}" for name, mib in top_files(pid)))
        spent = {model: cpu(pid) - before[model] for model, pid in replicas.items()}
        time.sleep(5.0)
        later = show(f"{args.label} 5 s later", replicas)
        per_request = sum(spent.values()) / max(requests, 1) * 1e6
        print(f"  {args.label} replicas' CPU {per_request:,.0f} us a batch-1000 request ({requests} requests); "
              f"load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)
        print(json.dumps({"label": args.label, "after": after, "later": later, "cpu_us": per_request,
                          "requests": requests, "under": under, "load": Path("/proc/loadavg").read_text().split()[0]}))


def _sample(pid: int, samples: list[dict[str, float]], done: threading.Event) -> None:
    """A replica's RSS split every 0.2 s while the load runs (after its first second)."""
    done.wait(1.0)
    while not done.is_set():
        samples.append({"rss": rss(pid), **smaps_split(pid)})
        done.wait(0.2)


def _spec_name(pid: int) -> str:
    """The deployment a replica serves, from its spec file (its first argument)."""
    parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for part in parts:
        if part.endswith(b".json"):
            try:
                return Path(part.decode()).read_text()[:4000]
            except OSError:
                return ""
    return ""


if __name__ == "__main__":
    main()
