"""ASGI servers side by side on a raw ASGI app (issue 20: "a faster ASGI server if it measures faster").

    python -m bench.asgi_servers --python /path/to/venv/bin/python [--rounds 3]

The venv given must have uvicorn, httptools, uvloop and granian (kept out of the project's own environment: the
gateway runs uvicorn). Each server serves `app` below (reads the body, answers a batch-1 records answer's bytes)
on a free loopback port, one at a time, in alternating rounds; the project's load generator measures batch-1
p50/p99 on one connection, req/s on 8 connections and a 570 KB body on 4 connections, and the server's own CPU
per request is read from /proc. What the server adds per request is what a switch could save.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ANSWER = (b'[{"time":1764600000000,"in":{"tensor":[' + b",".join(b"0.123456" for _ in range(29))
          + b']},"out":{"dense_1":[0.0012]},"check_failures":[],"metadata":{"last_model":"{}",'
          b'"pipeline_version":"v","elapsed":[1,2]}}]')


async def app(scope, receive, send):  # noqa: ANN001, ANN201 - a raw ASGI callable
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _servers(python: str, port: int) -> dict[str, list[str]]:
    return {
        "uvicorn": [python, "-m", "uvicorn", "bench.asgi_servers:app", "--port", str(port), "--loop", "uvloop",
                    "--http", "httptools", "--no-access-log", "--log-level", "warning", "--no-proxy-headers"],
        "granian": [python, "-m", "granian", "--interface", "asgi", "--port", str(port), "--loop", "uvloop",
                    "--workers", "1", "--runtime-threads", "1", "--no-ws", "--log-level", "warning",
                    "bench.asgi_servers:app"],
    }


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants_cpu(pid: int) -> float:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return _cpu(pid) + sum(_descendants_cpu(int(child)) for child in found)


def measure(name: str, argv: list[str], port: int) -> str:
    import uvloop

    from bench import loadgen

    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen(argv, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/infer"
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.1)
        small = loadgen.build_request(url, b'[{"tensor":[' + b",".join(b"0.1234567" for _ in range(29)) + b']}]',
                                      {"Content-Type": "application/json"})
        big = loadgen.build_request(url, b"x" * 570_000, {"Content-Type": "application/json"})
        uvloop.run(loadgen.sequential(url, small, 300))
        latencies = sorted(uvloop.run(loadgen.sequential(url, small, 3000)))
        before = _descendants_cpu(server.pid)
        rate8 = uvloop.run(loadgen.concurrent(url, small, 8, 3.0))
        cpu8 = (_descendants_cpu(server.pid) - before) / (rate8 * 3) * 1e6
        before = _descendants_cpu(server.pid)
        rate_big = uvloop.run(loadgen.concurrent(url, big, 4, 3.0))
        cpu_big = (_descendants_cpu(server.pid) - before) / (rate_big * 3) * 1e6
        return (f"{name:8s} batch-1 p50 {latencies[1500] * 1e3:.3f} ms, p99 {latencies[2970] * 1e3:.3f} ms | "
                f"8 connections {rate8:,.0f} req/s, {cpu8:.0f} us CPU a request | 570 KB x 4 connections "
                f"{rate_big:,.0f} req/s, {cpu_big:.0f} us CPU a request")
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", required=True, help="a venv's python with uvicorn, httptools, uvloop, granian")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.rounds):
        port = _free_port()
        for name, argv in _servers(args.python, port).items():
            print(measure(name, argv, port), flush=True)
            time.sleep(0.5)
    sys.exit(0)


if __name__ == "__main__":
    main()
