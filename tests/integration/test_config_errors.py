"""Bad configuration ends with one clear line naming the problem, never a traceback; SIGTERM drains."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import nats
import nats.errors
import pytest

from shared import subjects
from tests.stack import REPO, free_ports, stack_env

pytestmark = pytest.mark.integration


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


def test_port_in_use_is_one_clear_line(tmp_path):
    env = stack_env(tmp_path / "data")
    port = int(env["RAILYARD_STACK__NATS_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = subprocess.run([sys.executable, "-m", "shared.cli", "up"], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert f"port {port}" in line and "already in use" in line and "RAILYARD_STACK__NATS_PORT" in line


def _service_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    env.update(overrides)
    return env


def test_unreachable_nats_is_one_clear_line():
    port = free_ports(1)[0]
    env = _service_env(RAILYARD_NATS__URL=f"nats://127.0.0.1:{port}")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "services.auth"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("railyard-auth: cannot reach NATS at 127.0.0.1:") and str(port) in line
    assert time.monotonic() - started < 15


def test_invalid_setting_is_one_clear_line():
    env = _service_env(RAILYARD_GATEWAY__PORT="eighty")
    result = subprocess.run([sys.executable, "-m", "services.gateway"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "bad configuration" in _one_line(result.stderr)


def _stack_service_env(stack) -> dict[str, str]:
    settings = stack.settings()
    env = _service_env()
    env.update({
        "RAILYARD_NATS__URL": settings.nats.url,
        "RAILYARD_POSTGRES__DSN": settings.postgres.dsn,
        "RAILYARD_S3__ENDPOINT": settings.s3.endpoint,
        "RAILYARD_S3__ACCESS_KEY": settings.s3.access_key,
        "RAILYARD_S3__SECRET_KEY": settings.s3.secret_key,
    })
    return env


def test_unreachable_postgres_is_one_clear_line(stack):
    port = free_ports(1)[0]
    env = _stack_service_env(stack)
    env["RAILYARD_POSTGRES__DSN"] = f"postgresql://railyard:x@127.0.0.1:{port}/railyard"
    result = subprocess.run([sys.executable, "-m", "services.registry"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in _one_line(result.stderr)


def test_wrong_postgres_password_is_one_clear_line(stack):
    env = _stack_service_env(stack)
    env["RAILYARD_POSTGRES__DSN"] = env["RAILYARD_POSTGRES__DSN"].replace("railyard:", "railyard:wrong", 1)
    result = subprocess.run([sys.executable, "-m", "services.deployer"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "password authentication failed" in _one_line(result.stderr)


@pytest.fixture
def deployer_replica(stack, tmp_path):
    log = tmp_path / "replica.log"
    with open(log, "wb") as handle:
        replica = subprocess.Popen([sys.executable, "-m", "services.deployer"], cwd=REPO,
                                   env=_stack_service_env(stack), stdout=handle, stderr=subprocess.STDOUT)
    yield replica, log
    if replica.poll() is None:
        replica.kill()
        replica.wait(10)


async def test_extra_replica_joins_the_queue_group_and_drains_on_sigterm(stack, deployer_replica):
    replica, log = deployer_replica
    nc = await nats.connect(stack.settings().nats.url)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            try:
                reply = await nc.request(subjects.health("deployer"), b"{}", timeout=5)
            except nats.errors.TimeoutError:
                continue
            pids.add(json.loads(reply.data)["data"]["pid"])
            await asyncio.sleep(0.02)
        assert replica.pid in pids and len(pids) == 2, "both replicas answer from one queue group"
    finally:
        await nc.close()
    replica.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(replica.wait, 20) == 0
    text = log.read_text()
    assert "draining subscriptions" in text and "deployer stopped" in text
