"""Kubernetes pieces that need real servers, against the embedded stack: the probe files of a real service process
(shared/probe_files.py, wired in shared/service.py; what deploy/kubernetes/services.yaml's probes read) and the
fetch step of a rendered task-run pod (services/task_scheduler/fetch_orchestration.py) against the S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.task_scheduler.fetch_orchestration import fetch
from shared.objectstore import BUCKET_ORCHESTRATIONS, MinioObjectStore, content_key
from shared.probe_files import LIVE, READY


def _until(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the service exited with {process.returncode}"
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_a_serving_service_is_live_and_ready_then_not_ready_from_its_drain(stack, tmp_path):
    """A second engine service process (nothing but its health subscriber; it joins the engine's queue group for
    its few seconds) with RAILYARD_PROBE_DIR: `live` and `ready` appear once it serves, and SIGTERM
    removes `ready` before the process exits cleanly."""
    secrets = stack.secrets()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    env |= {"RAILYARD_NATS__URL": f"nats://127.0.0.1:{stack.env['RAILYARD_STACK__NATS_PORT']}",
            "RAILYARD_NATS__USER": "engine", "RAILYARD_NATS__PASSWORD": secrets["nats_password_engine"],
            "RAILYARD_S3__ENDPOINT": f"127.0.0.1:{stack.env['RAILYARD_STACK__S3_PORT']}",
            "RAILYARD_S3__ACCESS_KEY": secrets["s3_access_key"], "RAILYARD_S3__SECRET_KEY": secrets["s3_secret_key"],
            "RAILYARD_STACK__DATA_DIR": str(tmp_path / "data"), "RAILYARD_PROBE_DIR": str(tmp_path / "probes")}
    process = subprocess.Popen([sys.executable, "-m", "services.engine"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    probes = tmp_path / "probes"
    try:
        _until(lambda: (probes / READY).exists(), 60, process)
        assert (probes / LIVE).exists()  # rewritten every 5 s: tests/unit/test_probe_files.py
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stderr.read().decode()[-2000:]
        assert not (probes / READY).exists() and (probes / LIVE).exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_the_fetch_step_downloads_an_orchestration_and_refuses_one_that_does_not_match_its_sha(stack, tmp_path):
    settings = stack.settings()
    data = os.urandom(4096)
    sha = hashlib.sha256(data).hexdigest()
    wrong = hashlib.sha256(b"another zip").hexdigest()
    store = MinioObjectStore(settings.s3)
    asyncio.run(store.put_bytes(BUCKET_ORCHESTRATIONS, content_key(sha), data))
    asyncio.run(store.put_bytes(BUCKET_ORCHESTRATIONS, content_key(wrong), data))  # stored under another's sha
    try:
        assert asyncio.run(fetch(settings, sha, tmp_path / "orchestration.zip")) == len(data)
        assert (tmp_path / "orchestration.zip").read_bytes() == data
        with pytest.raises(RuntimeError, match="does not match"):
            asyncio.run(fetch(settings, wrong, tmp_path / "other.zip"))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["orchestration.zip"]  # no partial file left
    finally:
        for key in (sha, wrong):
            asyncio.run(store.delete(BUCKET_ORCHESTRATIONS, content_key(key)))
