"""SIGTERM or SIGINT stops the embedded stack within seconds and leaves nothing behind, also in the middle of its
start, whether it reaches the supervisor alone (`railyard down`) or its whole process group (Ctrl-C in a
terminal, a CI job killed). Before, a signal during the start waited for the start to finish (and started every
service), and a group's SIGTERM left SeaweedFS in its 15 s graceful stop with the supervisor waiting on it.
A healthy stack's stop is checked by test_restart.py (RunningStack.leftovers)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import urllib.request

import psutil
import pytest

from tests.stack import stack_directory, stack_env, start_stack

pytestmark = pytest.mark.integration

PROMPT = 10.0  # seconds; ~2 s measured (SeaweedFS gets 1 s before it is killed), 12-15 s before the fix


def servers_answer(env: dict[str, str]) -> bool:
    """NATS and PostgreSQL answer (SeaweedFS, started with them, takes longer; the services start after it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{env['RAILYARD_STACK__NATS_MONITOR_PORT']}/healthz",
                                    timeout=1) as response:
            assert response.status == 200
        socket.create_connection(("127.0.0.1", int(env["RAILYARD_STACK__POSTGRES_PORT"])), timeout=1).close()
    except (OSError, AssertionError):
        return False
    return True


def test_a_signal_in_the_middle_of_a_start_stops_everything_promptly():
    with stack_directory() as data_dir:
        env = stack_env(data_dir)
        # signalled once NATS and PostgreSQL answer: SeaweedFS is starting, no service yet (they start once S3
        # answers); the later starts, in the same data directory, also show that a stop left it usable
        for target, sig in (("group", signal.SIGTERM), ("supervisor", signal.SIGINT), ("supervisor", signal.SIGHUP)):
            stack = start_stack(data_dir, env, own_group=True)
            try:
                deadline = time.monotonic() + 60
                while not servers_answer(env) and time.monotonic() < deadline and stack.process.poll() is None:
                    time.sleep(0.05)
                assert servers_answer(env), stack.output.read_text()
                # the supervisor starts the three servers one after another: PostgreSQL may answer before a loaded
                # supervisor has started SeaweedFS (a moment later, and long before S3 answers)
                deadline = time.monotonic() + 10
                while True:
                    children = psutil.Process(stack.process.pid).children(recursive=True)
                    names = set()
                    for child in children:  # a short-lived helper (PostgreSQL's start-up) may be gone by now
                        with contextlib.suppress(psutil.NoSuchProcess):
                            names.add(child.name())
                    if {"nats-server", "postgres", "weed"} <= names or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                s3_log = data_dir / "logs" / "s3.log"  # why SeaweedFS is not there (a port taken: tests/stack.py)
                assert {"nats-server", "postgres", "weed"} <= names, \
                    (children, s3_log.read_text()[-3000:] if s3_log.exists() else "no s3.log")
                assert not (data_dir / "logs" / "gateway.log").exists(), "too late: the services had started"
                signalled = time.monotonic()
                if target == "group":
                    os.killpg(stack.process.pid, sig)
                else:
                    stack.process.send_signal(sig)
                code = stack.process.wait(60)
                took = time.monotonic() - signalled
            finally:
                if stack.process.poll() is None:
                    os.killpg(stack.process.pid, signal.SIGKILL)
                    stack.process.wait()
            output = stack.output.read_text()
            assert code == 0, output
            assert took < PROMPT, f"{target} {sig.name}: stopped after {took:.1f}s\n{output}"
            _, alive = psutil.wait_procs(children, timeout=1)
            assert alive == [], f"{target} {sig.name}: still running: {alive}"
            assert not (data_dir / "logs" / "gateway.log").exists(), f"{target} {sig.name}: services were started"
            assert stack.leftovers() == [], target
            # the supervisor stopped PostgreSQL (SIGINT: fast); the group's SIGTERM no longer reaches it (smart: it
            # waited for every client to leave, and the services connected to it were stopping at the same time)
            shutdowns = [line.split("LOG:")[-1].strip() for line in
                         (data_dir / "logs" / "postgres.log").read_text().splitlines() if "shutdown request" in line]
            assert shutdowns[-1] == "received fast shutdown request", (target, shutdowns)
            print(f"{target} {sig.name}: stopped in {took:.2f}s")
