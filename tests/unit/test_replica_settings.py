"""An engine replica (`python -m services.engine.replica SPEC ID`, started by the deployer or as a pod) reads its
settings as the services, `railyard` and the bus bootstrap do (shared.settings.load_settings): every bad setting on
stderr, one line each naming its variable and why, exit status 2, no traceback and no value. Before, `Settings()` in
main_async raised pydantic's ValidationError: a traceback with the input values and no variable names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_replica_names_every_bad_setting_and_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    env.update({
        "RAILYARD_NATS__CONSUMER_BACKOFF": "-1",
        "RAILYARD_STACK__NATS_PORT": "fourteen",
        "RAILYARD_NATS__PASSWORD": "s3cret-engine-password",  # valid: never printed
        "RAILYARD_STACK__DATA_DIR": str(tmp_path / "data"),
    })
    result = subprocess.run([sys.executable, "-m", "services.engine.replica", str(tmp_path / "spec.json"), "r0"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert result.stderr.splitlines() == [
        "railyard-engine: bad configuration: RAILYARD_NATS__CONSUMER_BACKOFF: Input should be greater than 0",
        "railyard-engine: bad configuration: RAILYARD_STACK__NATS_PORT: Input should be a valid integer, unable to"
        " parse string as an integer",
    ]
    assert not (tmp_path / "data").exists(), "nothing started"
