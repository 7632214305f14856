"""Password sign-ins through the whole stack (gateway -> NATS -> auth -> argon2 -> PostgreSQL) at argon2-cffi's
default cost (argon2id, 64 MiB, 3 passes, 4 lanes: what a deployment runs; the test stack lowers it), closed loop on
loopback: C connections each sign one user of its own in, again and again, for a bounded time. The gateway's
per-source bucket is raised for the run (every connection is 127.0.0.1) so the auth service's capacity is what is
measured. Each answer's status is counted: 200, the gateway's 504 after `nats.request_timeout` (5 s), 503/429 (after
which a connection waits the 1 s Retry-After, as a well-behaved client does, unless --no-retry-after).

    .venv/bin/python -m bench.sign_in [--connections 1,2,4,8,16,32] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import uvloop

from bench.loadgen import Connection, build_request
from tests.stack import stack_env, start_stack

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
PASSWORD = "bench-password-1"


def _users(stack, count: int) -> list[str]:
    from shared.client import RailyardClient

    secrets = stack.secrets()
    admin = RailyardClient(stack.base_url, secrets["client_id"], secrets["client_secret"])
    admin.login(secrets["admin_username"], secrets["admin_password"])
    emails = []
    for i in range(count):
        email = f"bench-{i}@example.com"
        admin.post("users/invite", {"email": email, "password": PASSWORD})
        emails.append(email)
    admin.close()
    return emails


async def _closed_loop(url: str, requests: list[bytes], seconds: float, honor_retry_after: bool) -> dict:
    """Each request on its own connection, sent again as soon as it is answered (after the Retry-After of a 429 or
    503 when `honor_retry_after`), until `seconds` pass."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    examples: dict[int, str] = {}
    deadline = time.perf_counter() + seconds

    async def worker(request: bytes) -> None:
        connection = await Connection(url).open()
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status, body = await connection.send(request)
                statuses[status] += 1
                examples.setdefault(status, body[:160].decode(errors="replace"))
                if status in (429, 503) and honor_retry_after:
                    await asyncio.sleep(1.0)  # what the answer's Retry-After says (1 s for both)
                if status == 200:
                    latencies.append(time.perf_counter() - started)
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(r) for r in requests))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (lambda q: 0)
    return {"ok_per_s": len(latencies) / elapsed, "p50_ms": p(0.5), "p99_ms": p(0.99),
            "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0.0, "statuses": dict(statuses),
            "examples": examples}


def run(connections: list[int], seconds: float, honor_retry_after: bool = True) -> str:
    with tempfile.TemporaryDirectory(prefix="railyard-bench-") as folder:
        data = Path(folder) / "data"
        env = stack_env(data)
        for cost in ("TIME_COST", "MEMORY_KIB", "PARALLELISM"):  # argon2-cffi's defaults, as deployed
            env.pop(f"RAILYARD_AUTH__PASSWORD_HASH_{cost}", None)
        env["RAILYARD_GATEWAY__TOKEN_RATE_PER_SOURCE"] = "100000"
        env["RAILYARD_GATEWAY__TOKEN_BURST_PER_SOURCE"] = "100000"
        stack = start_stack(data, env)
        try:
            stack.wait_healthy()
            secrets = stack.secrets()
            emails = _users(stack, max(connections))
            url = f"{stack.base_url}{TOKEN_PATH}"
            requests = [build_request(url, urllib.parse.urlencode({
                "grant_type": "password", "client_id": secrets["client_id"],
                "client_secret": secrets["client_secret"], "username": email, "password": PASSWORD}).encode(),
                {"Content-Type": "application/x-www-form-urlencoded"}) for email in emails]
            rows = []
            for count in connections:
                load = os.getloadavg()[0]
                result = uvloop.run(_closed_loop(url, requests[:count], seconds, honor_retry_after))
                rows.append((count, result, load))
                print(count, result, f"load {load:.1f}", flush=True)
        finally:
            stack.stop()
    lines = ["| connections | sign-ins/s (200) | p50 | p99 | answers | load before |", "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {r['ok_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
              f"{', '.join(f'{k}: {v}' for k, v in sorted(r['statuses'].items()))} | {load:.1f} |"
              for c, r, load in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1,2,4,8,16,32")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-retry-after", action="store_true", help="send again at once after a 429 or 503")
    args = parser.parse_args()
    print(run([int(c) for c in args.connections.split(",")], args.seconds, not args.no_retry_after))


if __name__ == "__main__":
    main()
