"""How long a killed service takes to serve again on the embedded stack: the figure tests/integration/test_stack.py
no longer asserts (it checks what the supervisor does; a speed belongs here).

    python -m bench.restart_time [--rounds 3] [--services auth,deployer]

Starts a fresh stack (`tests/stack.py`: what `make run` starts); for each service and round, waits until the
service has run 10 s (the supervisor then restarts it without a back-off, shared/embedded/stack.py), kills it with
SIGKILL and asks its own health subject on NATS every 20 ms until a new process answers. Prints per service the
seconds from the kill to that answer (min / median / max over the rounds), with the machine's load: on 2 shared
cores the figure is mostly the load's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import nats

from shared import subjects
from shared.messages import HealthReport, Reply
from tests.stack import RunningStack, stack_env, start_stack

STABLE = 10.0  # seconds a service runs before the supervisor restarts it at once (STABLE_AFTER)


async def _report(nc: nats.NATS, service: str) -> HealthReport | None:
    try:
        message = await nc.request(subjects.health(service), b"{}", timeout=0.5)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
        return None
    reply = Reply.model_validate_json(message.data)
    return HealthReport.model_validate(reply.data) if reply.ok else None


async def one_restart(nc: nats.NATS, service: str) -> float:
    """Seconds from the kill to the new process's first health answer."""
    while True:
        report = await _report(nc, service)
        if report is not None and report.uptime_s >= STABLE:
            break
        await asyncio.sleep(0.5)
    os.kill(report.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 120.0:
        answer = await _report(nc, service)
        if answer is not None and answer.pid != report.pid:
            return time.monotonic() - killed_at
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{service} not back within 120 s")


async def measure(stack: RunningStack, services: list[str], rounds: int) -> None:
    nc = await nats.connect(stack.nats_url("ops"))
    try:
        for service in services:
            backs, loads = [], []
            for _ in range(rounds):
                backs.append(await one_restart(nc, service))
                loads.append(os.getloadavg()[0])
            print(f"{service:17s} kill -> serving {min(backs):5.2f} / {statistics.median(backs):5.2f} / "
                  f"{max(backs):5.2f} s (min / median / max of {rounds}); load {min(loads):.1f}-{max(loads):.1f}",
                  flush=True)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--services", default=",".join(subjects.SERVICES))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="railyard-restart-time-"))
    stack = start_stack(folder / "data", stack_env(folder / "data"))
    try:
        stack.wait_healthy(240)
        asyncio.run(measure(stack, args.services.split(","), args.rounds))
    finally:
        stack.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
