"""Project-level checks: service layout, compose file, protos, migrations on disk, no network on import."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared import subjects
from shared.db import load_migrations
from shared.protos import stale_files
from shared.settings import env_names

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", subjects.SERVICES)
def test_every_service_has_the_same_rooms(service):
    folder = REPO / "services" / service
    for room in ("__init__.py", "__main__.py", "app.py", "handlers.py", "store.py"):
        assert (folder / room).is_file(), f"{service} lacks {room}"
    spec = importlib.import_module(f"services.{service}.app").SPEC
    assert spec.name == service
    if spec.migrations is not None:
        assert load_migrations(spec.migrations), f"{service} has a migrations folder without migrations"


def test_importing_every_service_touches_no_network():
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('network touched at import time')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import importlib\n"
        f"for name in {list(subjects.SERVICES)!r}:\n"
        "    importlib.import_module(f'services.{name}.app')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_compose_runs_every_service_with_only_settings_the_code_reads():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    for infra in ("nats", "postgres", "minio"):
        assert infra in services
    assert "--jetstream" in services["nats"]["command"]
    known = env_names()
    for name in subjects.SERVICES:
        entry = services[name.replace("_", "-")]
        assert entry["command"] == ["python", "-m", f"services.{name}"]
        env = entry["environment"]
        unknown = {k for k in env if k.startswith("RAILYARD_")} - known
        assert not unknown, f"{name} sets settings nothing reads: {unknown}"
        assert {"RAILYARD_NATS__URL"} <= set(env)
    # only the image's own command picks the service: one Dockerfile for all
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)


def test_protos_are_current():
    stale = stale_files()
    assert not stale, f"protos/ is stale, run `make protos`: {stale}"


def test_makefile_and_ci_use_the_two_commands():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
