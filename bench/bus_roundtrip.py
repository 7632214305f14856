"""Command round trip over a real nats-server: Railyard's typed command (FastStream subscriber, pydantic
validation, Reply envelope, `shared.bus.request`) against a bare nats-py request/reply echo, same server."""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import nats
from faststream.nats import NatsBroker

from shared.bus import CallContext, command, request
from shared.embedded.servers import find_binary
from shared.messages import CheckHealth, Message

N = 3000
WARMUP = 300


class Pong(Message):
    ok: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_up(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise RuntimeError("nats-server did not start")


async def _time(call, n: int) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


def _row(name: str, samples: list[float], base_p50: float) -> str:
    p50 = statistics.median(samples) * 1e6
    p99 = statistics.quantiles(samples, n=100)[98] * 1e6
    return f"| {name} | {p50:.0f} | {p99:.0f} | {1 / statistics.mean(samples):,.0f} | {p50 / base_p50:.2f}x |"


async def _measure(url: str, port: int) -> tuple[list[float], list[float]]:
    await _wait_up(port)
    raw = await nats.connect(url)

    async def echo(msg):
        await msg.respond(b'{"ok":true,"data":{"ok":true}}')

    await raw.subscribe("bench.raw", queue="bench", cb=echo)
    broker = NatsBroker(url, log_level=10)

    @command(broker, "bench.typed", service="gateway")
    async def ping(cmd: CheckHealth, ctx: CallContext) -> Pong:
        return Pong(ok=True)

    await broker.start()
    client = NatsBroker(url, log_level=10)
    await client.connect()
    baseline = await _time(lambda: raw.request("bench.raw", b"{}", timeout=2), N)
    typed = await _time(lambda: request(client, "bench.typed", CheckHealth(), reply_model=Pong), N)
    await client.stop()
    await broker.stop()
    await raw.close()
    return baseline, typed


def run() -> str:
    port = _free_port()
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen([find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js",
                                   "-sd", str(Path(store))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            baseline, typed = asyncio.run(_measure(f"nats://127.0.0.1:{port}", port))
        finally:
            server.terminate()
            server.wait(10)
    base_p50 = statistics.median(baseline) * 1e6
    return "\n".join([
        "## Bus command round trip (one client, sequential, loopback)",
        "",
        f"{N} requests after {WARMUP} warm-up ones. Baseline: bare nats-py request/reply echo on the same server.",
        "",
        "| path | p50 µs | p99 µs | req/s | p50 vs baseline |",
        "|---|---|---|---|---|",
        _row("nats-py request/reply (baseline)", baseline, base_p50),
        _row("Railyard typed command (`shared.bus.request`)", typed, base_p50),
        "",
    ])
