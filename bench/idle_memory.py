"""The idle embedded stack's memory per process, measured as `python -m bench.peers` measures it (issue 20).

A fresh stack (`tests/stack.py`: what `make run` starts), 3 s after it is healthy, RSS, PSS and anonymous memory
of every process (`bench.peers.harness.memory`), grouped by program: each service, the supervisor, NATS,
SeaweedFS, PostgreSQL with its backends (one line per service role holding a connection). `--later S` reads it
again S seconds later (pools close connections unused for 30 s, so the stack at rest is lower); `--json FILE`
keeps the figures.

    python -m bench.idle_memory --later 35
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.peers.harness import cmdline, descendants, memory
from tests.stack import stack_env, start_stack


def program(pid: int) -> str:
    """A process's name for the table: `services.<name>`, `supervisor`, `nats`, `seaweedfs`, `postgres`."""
    line = cmdline(pid)
    if " -m services." in line:
        return line.split(" -m ", 1)[1].split()[0]
    for key, name in (("shared.cli", "supervisor"), ("nats-server", "nats"), ("weed", "seaweedfs"),
                      ("postgres", "postgres")):
        if key in line:
            return name
    return line[:40]


def reading(root: int) -> dict:
    """Per program: [RSS, PSS, anonymous MiB, processes]; the total; the PostgreSQL backends per role."""
    pids = descendants(root)
    rows: dict[str, list[float]] = {}
    for pid in pids:
        figures = memory([pid])
        row = rows.setdefault(program(pid), [0.0, 0.0, 0.0, 0])
        for index, value in enumerate(figures):
            row[index] += value
        row[3] += 1
    backends = Counter(cmdline(p).split()[1] for p in pids if cmdline(p).startswith("postgres: railyard"))
    return {"programs": rows, "total": memory(pids), "backends": dict(backends)}


def show(title: str, figures: dict) -> None:
    print(f"--- {title}")
    for name, (rss, pss, anon, count) in sorted(figures["programs"].items(), key=lambda item: -item[1][0]):
        print(f"{name:28s} x{count:<3d} RSS {rss:7.1f}  PSS {pss:7.1f}  anon {anon:7.1f}")
    rss, pss, anon = figures["total"]
    print(f"{'total':28s}      RSS {rss:7.1f}  PSS {pss:7.1f}  anon {anon:7.1f}   (target: RSS <= 1024)")
    print("PostgreSQL backends:", ", ".join(f"{k} {v}" for k, v in sorted(figures["backends"].items())) or "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--later", type=float, default=0.0, help="read again this many seconds later")
    parser.add_argument("--json", type=Path, help="write the readings here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="railyard-idle-memory-"))
    stack = start_stack(folder / "data", stack_env(folder / "data"))
    readings = {}
    try:
        stack.wait_healthy(240)
        time.sleep(3)  # as bench.peers: the services settle (first imports done) before the idle figure
        readings["healthy + 3 s"] = reading(stack.process.pid)
        show("healthy + 3 s (the bench's moment)", readings["healthy + 3 s"])
        if args.later:
            time.sleep(args.later)
            readings[f"healthy + {3 + args.later:g} s"] = reading(stack.process.pid)
            show(f"healthy + {3 + args.later:g} s", readings[f"healthy + {3 + args.later:g} s"])
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(readings, indent=1))


if __name__ == "__main__":
    main()
