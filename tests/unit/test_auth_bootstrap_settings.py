"""The first admin's user name, its password and the first client's secret are refused at settings load when no
sign-in could use them: a name over NAME_CHARS (254) or empty, a password or secret over SECRET_CHARS (4096). Since
4b07bd6b (and session 42 for passwords and secrets) a token request takes nothing longer, so such an admin was
created on first start and could never sign in. The service stops at start with the variable named and why (exit 2,
shared.settings.load_settings), never the value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.gateway.authorize import registered_redirect_uri
from shared.messages.auth import CLIENT_ID_CHARS, NAME_CHARS, REDIRECT_URI_CHARS, SECRET_CHARS
from shared.settings import (
    ADMIN_CLIENT_ID_CHARS,
    ADMIN_NAME_CHARS,
    ADMIN_SECRET_CHARS,
    PUBLIC_URL_CHARS,
    load_settings,
)

VARIABLE = "RAILYARD_AUTH__BOOTSTRAP_{}"


def test_the_bounds_are_the_sign_ins():
    assert (ADMIN_NAME_CHARS, ADMIN_SECRET_CHARS, ADMIN_CLIENT_ID_CHARS) == (NAME_CHARS, SECRET_CHARS, CLIENT_ID_CHARS)
    assert PUBLIC_URL_CHARS == REDIRECT_URI_CHARS - len("/")  # the UI's redirect URI is the public URL and '/'


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


def test_a_public_url_longer_than_a_redirect_uri_takes_stops_the_start(monkeypatch, capsys):
    """RAILYARD_GATEWAY__PUBLIC_URL over 2047 characters (without a trailing '/'): the web UI's redirect URI (it and
    '/') passed REDIRECT_URI_CHARS, so every sign-in to the UI was refused while the gateway ran. Refused at load."""
    variable, base = "RAILYARD_GATEWAY__PUBLIC_URL", "https://railyard.example.com/"
    refused = base + "p" * (PUBLIC_URL_CHARS + 1 - len(base))
    monkeypatch.setenv(variable, refused)
    with pytest.raises(SystemExit) as stopped:  # was: loaded, and the UI's sign-in refused every time
        load_settings("railyard-gateway")
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"railyard-gateway: bad configuration: {variable}: "), line
    assert f"at most {PUBLIC_URL_CHARS}" in line and f"this one has {len(refused)}" in line and "sign in" in line, line
    taken = refused[:-1]
    for url in (taken, taken + "/", "", "http://127.0.0.1:18000"):  # the redirect URI of each is at most 2048
        monkeypatch.setenv(variable, url)
        assert load_settings("railyard-gateway").gateway.public_url == url
        if url:
            assert len(registered_redirect_uri(url, None)) <= REDIRECT_URI_CHARS, url
    assert len(registered_redirect_uri(refused, None)) > REDIRECT_URI_CHARS  # what the refused one would have been
