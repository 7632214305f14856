"""A bad setting stops a service's start and `railyard up` with every problem on stderr, one line each naming the
environment variable and why, exit status 2 and no traceback. Before, only pydantic's first line came out
("3 validation errors for Settings"): no variable, no reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import configuration_errors, load_settings

REPO = Path(__file__).resolve().parents[2]
BAD = {
    "RAILYARD_ENV": "prod",
    "RAILYARD_NATS__CONSUMER_BACKOFF": "-1",
    "RAILYARD_GATEWAY__PORT": "eighty",
    "RAILYARD_POSTGRES__DSN": "postgresql://railyard:s3cret-value@127.0.0.1:1/railyard",  # valid: not printed
}
EXPECTED = [
    "bad configuration: RAILYARD_ENV: Input should be 'development' or 'production'",
    "bad configuration: RAILYARD_NATS__CONSUMER_BACKOFF: Input should be greater than 0",
    "bad configuration: RAILYARD_GATEWAY__PORT: Input should be a valid integer, unable to parse string as an integer",
]


def _run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    env.update(BAD, RAILYARD_STACK__DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, program", [
    ([sys.executable, "-m", "services.auth"], "railyard-auth"),
    ([sys.executable, "-m", "shared.cli", "up"], "railyard"),
    ([str(Path(sys.executable).with_name("railyard")), "up"], "railyard"),  # the client's command, its plugin
    ([sys.executable, "-m", "shared.bus_streams"], "railyard-bus-streams"),  # the compose / Kubernetes one-shot
], ids=["service", "cli", "railyard", "bus-streams"])
def test_every_bad_setting_is_named_with_its_reason(argv, program, tmp_path):
    result = _run(argv, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"{program}: {line}" for line in EXPECTED]
    assert "s3cret" not in result.stderr
    assert not (tmp_path / "data").exists(), "nothing started"


def test_a_model_check_and_a_list_item_name_their_variables(monkeypatch, capsys):
    monkeypatch.setenv("RAILYARD_NATS__CONSUMER_BACKOFF", "600")
    monkeypatch.setenv("RAILYARD_GATEWAY__TRUSTED_PROXIES", "10.0.0.0/8,nonsense")
    with pytest.raises(SystemExit) as stopped:
        load_settings("railyard-x")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "railyard-x: bad configuration: RAILYARD_NATS: RAILYARD_NATS__CONSUMER_BACKOFF (600 s) is above "
        "RAILYARD_NATS__CONSUMER_BACKOFF_MAX (300 s): the first redelivery delay cannot be longer than the longest; "
        "lower it or raise the max",
        "railyard-x: bad configuration: RAILYARD_GATEWAY__TRUSTED_PROXIES: 'nonsense' is not an IP address or CIDR "
        "(e.g. 10.0.0.0/8, 2001:db8::/32)",
    ]


def test_a_list_item_error_names_the_variable_and_the_item():
    from pydantic import BaseModel, ValidationError

    class Probe(BaseModel):
        items: list[int]

    try:
        Probe(items=["x"])
    except ValidationError as exc:
        error = exc.errors()[0]
    # as if the error were at a list setting's second item: the variable, then the item
    patched = [dict(error, loc=("gateway", "trusted_proxies", 1))]
    raised = ValidationError.from_exception_data("Settings", patched)
    assert configuration_errors(raised) == [
        "RAILYARD_GATEWAY__TRUSTED_PROXIES[1]: Input should be a valid integer, unable to parse string as an integer"]


def test_a_nested_setting_that_is_not_json_says_why(monkeypatch, capsys):
    monkeypatch.setenv("RAILYARD_NATS", "{bad")
    with pytest.raises(SystemExit):
        load_settings("railyard")
    err = capsys.readouterr().err
    assert err.startswith('railyard: bad configuration: error parsing value for field "nats"')
    assert "Expecting property name" in err and err.count("\n") == 1
