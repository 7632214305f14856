"""The first admin's user name, its password and the first client's secret are refused at settings load when no
sign-in could use them: a name over NAME_CHARS (254) or empty, a password or secret over SECRET_CHARS (4096). Since
4b07bd6b (and session 42 for passwords and secrets) a token request takes nothing longer, so such an admin was
created on first start and could never sign in. The service stops at start with the variable named and why (exit 2,
shared.settings.load_settings), never the value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.messages.auth import CLIENT_ID_CHARS, NAME_CHARS, SECRET_CHARS
from shared.settings import ADMIN_CLIENT_ID_CHARS, ADMIN_NAME_CHARS, ADMIN_SECRET_CHARS, load_settings

VARIABLE = "RAILYARD_AUTH__BOOTSTRAP_{}"


def test_the_bounds_are_the_sign_ins():
    assert (ADMIN_NAME_CHARS, ADMIN_SECRET_CHARS, ADMIN_CLIENT_ID_CHARS) == (NAME_CHARS, SECRET_CHARS, CLIENT_ID_CHARS)


MARK = "Q7zX"  # no message's word holds it: any part of a value printed shows it


def _value(length: int) -> str:
    return (MARK * (length // len(MARK) + 1))[:length]


@pytest.mark.parametrize("setting, refused, taken", [
    ("ADMIN_USERNAME", _value(NAME_CHARS + 1), _value(NAME_CHARS)),
    ("ADMIN_USERNAME", "", "admin"),
    ("ADMIN_PASSWORD", _value(SECRET_CHARS + 1), _value(SECRET_CHARS)),
    ("CLIENT_SECRET", _value(SECRET_CHARS + 1), _value(SECRET_CHARS)),
    ("CLIENT_ID", _value(CLIENT_ID_CHARS + 1), _value(CLIENT_ID_CHARS)),
    ("CLIENT_ID", "", "api-client"),
], ids=["username-long", "username-empty", "password", "client-secret", "client-id-long", "client-id-empty"])
def test_a_bootstrap_credential_no_sign_in_takes_stops_the_start(monkeypatch, capsys, setting, refused, taken):
    variable = VARIABLE.format(setting)
    monkeypatch.setenv(variable, refused)
    with pytest.raises(SystemExit) as stopped:  # was: loaded, and the admin created who could never sign in
        load_settings("railyard-auth")
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"railyard-auth: bad configuration: {variable}: "), line
    bound = {"ADMIN_USERNAME": NAME_CHARS, "CLIENT_ID": CLIENT_ID_CHARS}.get(setting, SECRET_CHARS)
    assert str(bound) in line and f"this one has {len(refused)}" in line and "never" in line, line
    assert len(line) < 300 and MARK not in line, line  # no part of the value printed (a password, a secret)
    if setting in ("ADMIN_PASSWORD", "CLIENT_SECRET"):  # and the variable an operator sets, docker-compose.yml's
        compose = (Path(__file__).parents[2] / "docker-compose.yml").read_text()
        (operators,) = re.findall(rf"{variable}: \$\{{(\w+):", compose)
        assert f"docker-compose.yml sets it from {operators})" in line, line
    monkeypatch.setenv(variable, taken)
    assert getattr(load_settings("railyard-auth").auth, f"bootstrap_{setting.lower()}") == taken
