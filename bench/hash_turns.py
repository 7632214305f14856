"""The auth service's hashing turns under a flood, in-process (services/auth/hashing_turns.py): F flood tasks each
checking a wrong password again and again from sources that keep failing (as a flood past the gateway's per-source
buckets is: one attempt at a time per source, every one a failure), and one person signing in from a clean source
every --every seconds, through handlers.secret_matches at argon2-cffi's default cost (64 MiB, 3 passes, 4 lanes) on
HASHING_AT_ONCE turns with the 2 s wait. Two arms alternated: 'fifo' (every check priority 0: arrival order, what the
asyncio.Semaphore before session 32 did) and 'priority' (the source's recent failures). Per arm: the person's check
time (wait + hash) p50 / p90 / max, how many of theirs were refused 503 (no turn within 2 s) or took longer than the
gateway's 5 s would allow the rest of a sign-in (> 4 s), and the flood's checks made a second.

    .venv/bin/python -m bench.hash_turns [--flood 16] [--seconds 20] [--rounds 2] [--every 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from argon2 import PasswordHasher

from bench.timing import load
from services.auth import handlers
from services.auth.hashing_turns import HashingTurns, SourceFailures
from shared.errors import Unavailable


async def _arm(name: str, flood: int, seconds: float, every: float) -> dict:
    handlers._hasher = PasswordHasher()  # argon2-cffi's default cost
    handlers._hashing = HashingTurns(handlers.HASHING_AT_ONCE)
    handlers._source_failures = SourceFailures()
    stored = handlers._hasher.hash("the-password")
    fifo = name == "fifo"
    deadline = time.monotonic() + seconds
    person: list[float] = []
    refused = 0
    flood_checks = 0

    def priority(source: str) -> int:
        return 0 if fifo else handlers._priority(source)

    async def attacker(i: int) -> None:
        nonlocal flood_checks
        source = f"198.51.100.{i}"
        while time.monotonic() < deadline:
            try:
                await handlers.secret_matches(stored, "wrong", priority(source))
                flood_checks += 1
            except Unavailable:  # refused before its hash: auth counts no failure for it (handlers._password_login)
                await asyncio.sleep(1.0)  # Retry-After
            else:
                handlers._source_failures.failed(source)

    async def someone() -> None:
        nonlocal refused
        n = 0
        while time.monotonic() < deadline - 5:
            n += 1
            source = f"192.0.2.{n % 250}"  # a person: a source with no failure
            started = time.monotonic()
            try:
                assert await handlers.secret_matches(stored, "the-password", priority(source))
                person.append(time.monotonic() - started)
            except Unavailable:
                refused += 1
            await asyncio.sleep(every)

    await asyncio.gather(someone(), *(attacker(i) for i in range(flood)))
    person.sort()
    return {"arm": name, "person_n": len(person) + refused, "refused_503": refused,
            "over_4s": sum(t > 4.0 for t in person),
            "p50_ms": round(statistics.median(person) * 1000) if person else None,
            "p90_ms": round(person[int(len(person) * 0.9)] * 1000) if person else None,
            "max_ms": round(person[-1] * 1000) if person else None,
            "flood_checks_per_s": round(flood_checks / seconds, 1), "load": load()}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.5)
    args = parser.parse_args()
    print(f"cores {os.cpu_count()}, flood {args.flood}, {args.seconds:.0f} s an arm")
    for _ in range(args.rounds):
        for name in ("fifo", "priority"):
            print(await _arm(name, args.flood, args.seconds, args.every), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
