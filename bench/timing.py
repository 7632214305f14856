"""What the A/B benches share (bench/users_page.py, bench/monitoring_prediction_write.py): the machine's load, calls
timed one by one or a round at a time, and the PostgreSQL they run on (a given DSN, or a scratch pgserver)."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any


def load(places: int = 1) -> str:
    """The 1-minute load average, as the benches print it beside their figures."""
    return f"{os.getloadavg()[0]:.{places}f}"


async def timed(call: Callable[[], Awaitable[Any]], calls: int) -> list[float]:
    """Milliseconds each of `calls` awaited calls took, one by one."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    return times


async def per_call_ms(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Milliseconds a call took on average over `calls` awaited calls, timed as one round (no clock read between
    them)."""
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1000


def ms(times: list[float]) -> str:
    """`median ms (min, max)` of `timed`'s figures."""
    return f"{statistics.median(times):.2f} ms (min {min(times):.2f}, max {max(times):.2f})"


@contextlib.contextmanager
def postgres(dsn: str | None, prefix: str) -> Iterator[str]:
    """The DSN of the PostgreSQL a bench runs on: `dsn` when given, else a scratch pgserver's in a temporary directory
    named from `prefix` (its Unix socket), removed afterwards."""
    if dsn is not None:
        yield dsn
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns about XDG_RUNTIME_DIR on import
        import pgserver
    server = pgserver.get_server(tempfile.mkdtemp(prefix=prefix), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
