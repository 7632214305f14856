"""The idle embedded stack's memory per process, measured as `python -m bench.peers` measures it (issue 20).

A fresh stack (`tests/stack.py`: what `make run` starts), 3 s after it is healthy, RSS, PSS and anonymous memory
of every process (`bench.peers.harness.memory`), grouped by program: each service, the supervisor, NATS,
SeaweedFS, PostgreSQL with its backends (one line per service role holding a connection). `--later S` reads it
again S seconds later (pools close connections unused for 30 s, so the stack at rest is lower); `--at 30 60` reads
it again at those seconds after healthy; `--activity` lists, at each reading, every PostgreSQL backend a service
holds (pg_stat_activity: its role, state, age and last query), read after the memory figures so the listing's own
connection is not counted; `--json FILE` keeps the figures.

    python -m bench.idle_memory --at 30 60 --activity
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncpg

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


async def _activity(dsn: str) -> list[dict]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT application_name, state, extract(epoch FROM now() - backend_start) AS age,"
            " extract(epoch FROM now() - state_change) AS idle, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
            " AS query FROM pg_stat_activity WHERE usename LIKE 'railyard_%' ORDER BY application_name, backend_start")
    finally:
        await conn.close()
    return [{"role": r["application_name"], "state": r["state"], "age": round(float(r["age"]), 1),
             "idle": round(float(r["idle"] or 0), 1), "query": r["query"]} for r in rows]


def activity(dsn: str) -> list[dict]:
    """The services' PostgreSQL backends now (the superuser's own connections left out)."""
    return asyncio.run(_activity(dsn))


def show(title: str, figures: dict) -> None:
    print(f"--- {title}")
    for name, (rss, pss, anon, count) in sorted(figures["programs"].items(), key=lambda item: -item[1][0]):
        print(f"{name:28s} x{count:<3d} RSS {rss:7.1f}  PSS {pss:7.1f}  anon {anon:7.1f}")
    rss, pss, anon = figures["total"]
    print(f"{'total':28s}      RSS {rss:7.1f}  PSS {pss:7.1f}  anon {anon:7.1f}   (target: RSS <= 1024)")
    print("PostgreSQL backends:", ", ".join(f"{k} {v}" for k, v in sorted(figures["backends"].items())) or "none")
    for row in figures.get("activity", []):
        print(f"  {row['role']:22s} {row['state'] or '-':8s} open {row['age']:6.1f} s  idle {row['idle']:6.1f} s  "
              f"{row['query']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--later", type=float, default=0.0, help="read again this many seconds later")
    parser.add_argument("--at", type=float, nargs="*", default=[], help="read again at these seconds after healthy")
    parser.add_argument("--activity", action="store_true", help="list the services' PostgreSQL backends too")
    parser.add_argument("--json", type=Path, help="write the readings here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="railyard-idle-memory-"))
    stack = start_stack(folder / "data", stack_env(folder / "data"))
    readings = {}
    try:
        stack.wait_healthy(240)
        healthy = time.monotonic()
        dsn = stack.settings().postgres.dsn
        moments = sorted({3.0, *args.at, *([3 + args.later] if args.later else [])})
        for moment in moments:
            time.sleep(max(0.0, healthy + moment - time.monotonic()))
            title = f"healthy + {moment:g} s"
            readings[title] = reading(stack.process.pid)
            if args.activity:
                readings[title]["activity"] = activity(dsn)
            show(title + (" (the bench's moment)" if moment == 3.0 else ""), readings[title])
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(readings, indent=1))


if __name__ == "__main__":
    main()
