"""The embedded stack end to end: every service healthy through the gateway and on the bus, the
CLI's status, docs, crash recovery (a killed service restarted at once and healthy again), and graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import nats
import pytest

from shared import subjects
from shared.messages import HealthReport, Reply
from tests.stack import REPO

pytestmark = pytest.mark.integration


def test_all_ten_services_healthy_through_the_gateway(stack):
    status, body = stack.health()
    assert status == 200
    assert body["status"] == "ok"
    assert sorted(body["services"]) == sorted(subjects.SERVICES)
    for name, report in body["services"].items():
        assert report["status"] == "ok", (name, report)
        assert report["version"]
        deps = {d["name"]: d["ok"] for d in report["dependencies"]}
        assert deps.get("nats") is True
        assert all(deps.values()), (name, deps)
    # services that own tables report PostgreSQL; those using artifacts report S3
    assert {d["name"] for d in body["services"]["registry"]["dependencies"]} == {"nats", "postgres", "s3"}
    assert {d["name"] for d in body["services"]["auth"]["dependencies"]} == {"nats", "postgres"}


@pytest.mark.parametrize("service", subjects.SERVICES)
async def test_request_reply_round_trip_to_every_service(stack, service):
    nc = await nats.connect(stack.settings().nats.url)
    try:
        response = await nc.request(subjects.health(service), b"{}", timeout=5)
        reply = Reply.model_validate_json(response.data)
        assert reply.ok and reply.error is None
        report = HealthReport.model_validate(reply.data)
        assert report.name == service and report.pid > 0
        # a malformed command gets a typed error reply, not silence
        bad = Reply.model_validate_json((await nc.request(subjects.health(service), b"{nope", timeout=5)).data)
        assert not bad.ok and bad.error.code == "invalid_request" and bad.status == 400
        extra = Reply.model_validate_json((await nc.request(subjects.health(service), b'{"x": 1}', timeout=5)).data)
        assert not extra.ok and extra.error.code == "invalid_request" and "x" in extra.error.msg
    finally:
        await nc.close()


def test_docs_and_openapi_are_served(stack):
    docs = httpx.get(f"{stack.api}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(f"{stack.api}/openapi.json").json()
    assert "/v1/api/health" in spec["paths"]
    ui = httpx.get(stack.api.removesuffix("/v1/api") + "/")
    assert ui.status_code == 200 and "/v1/api/" in ui.text and "API + 'health'" in ui.text  # the health page


def test_unknown_route_is_a_typed_404(stack):
    response = httpx.get(f"{stack.api}/no/such/route")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_status_command_lists_every_component(stack):
    result = subprocess.run([sys.executable, "-m", "shared.cli", "status"], cwd=REPO, env=stack.env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("nats", "postgres", "s3", *subjects.SERVICES):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{name} "))
        assert "running" in line and " ok " in line, line


def _pid_of(stack, name: str) -> int:
    return stack.state()["components"][name]["pid"]


BACK_WITHIN = 60.0
"""Seconds a killed service has to serve again. How fast it comes back is a speed, for the benches, not asserted
here: at load ~15 (2026-12-05) 2.1-3.9 s for most services but 6.2 s for the gateway, 9.6 s for auth and 10.0 s for
the deployer, past the 5 s this test asserted until then. This bound catches a service that never comes back (a
back-off loop, a start that hangs), six times the slowest loaded figure."""


async def _answers_again(stack, service: str, old_pid: int, until: float) -> None:
    """Returns once a process of `service` other than old_pid answers its health subject on the bus, or at `until`
    (time.monotonic()); what the test asserts is still read from the gateway's health report after this."""
    nc = await nats.connect(stack.settings().nats.url)
    try:
        while time.monotonic() < until:
            try:
                reply = Reply.model_validate_json((await nc.request(subjects.health(service), b"{}",
                                                                    timeout=0.25)).data)
                if reply.ok and HealthReport.model_validate(reply.data).pid != old_pid:
                    return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                pass  # the old process gone, the new one not subscribed or not answering yet
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


def _restart_lines(stack, service: str, since: int) -> list[str]:
    """The supervisor's lines about `service` written to the stack's output after byte `since`."""
    with open(stack.output, "rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    return [line for line in text.splitlines() if f" {service} " in f" {line} "]


@pytest.mark.parametrize("service", subjects.SERVICES)
def test_killed_service_is_restarted_at_once_and_healthy_again(stack, service):
    healthy = stack.wait_healthy(30)  # every service answered: each report has its uptime
    old_pid = _pid_of(stack, service)
    # a service that ran 10 s or more (shared/embedded/stack.py: STABLE_AFTER) is restarted without a back-off;
    # its uptime counts from when it began serving, so it ran at least that long (read from the report that had
    # every service ok: a second health call could find this one silent, a report without its uptime)
    stable = healthy["services"][service]["uptime_s"] >= 10.0
    output_at = stack.output.stat().st_size
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # when it came back is read from its own uptime, not from when a poll saw it: a health call made just as
    # the old process died waits out the aggregator's 2 s timeout, which says nothing about the restart. So the
    # gateway is asked only once the new process answers its own health subject (looked at every ~0.1 s): the
    # first call otherwise sat out those 2 s while the service was back after ~1 s (0.7-1.3 s at load ~10)
    asyncio.run(_answers_again(stack, service, old_pid, killed_at + BACK_WITHIN))
    while time.monotonic() - killed_at < BACK_WITHIN:
        status, body = stack.health()
        seen_at = time.monotonic()
        report = body.get("services", {}).get(service, {})
        new_pid = _pid_of(stack, service)
        new_process = new_pid != old_pid and report.get("uptime_s", 1e9) < seen_at - killed_at
        if status == 200 and report.get("status") == "ok" and new_process:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"{service} not back within {BACK_WITHIN:.0f} s: {stack.health()}")
    assert stack.state()["components"][service]["restarts"] >= 1
    lines = _restart_lines(stack, service, output_at)
    assert f"railyard: {service} exited with code -9; restarting in {0.0 if stable else ''}" in "\n".join(lines), lines
    assert f"railyard: restarted {service} (pid {new_pid}," in "\n".join(lines), lines
    print(f"{service} serving again {seen_at - report['uptime_s'] - killed_at:.2f}s after the kill")
