"""A user name or email in an auth command is at most NAME_CHARS (254: RFC 5321's longest address) characters: a
longer one is refused on the bus's validation path, 400 invalid_request naming the field, before the handler (and so
before any database statement) runs. Unbounded, a sign-in's name was lowered and hashed by PostgreSQL in each of the
sign-in's five statements: ~80 ms of them a try for a 1 MB name (session 41 review; docs/auth.md, "Brute force").
The gateway's side (the token route, the sign-in page) is tests/unit/test_gateway_auth_name_bound.py.
Likewise every password and client secret (SECRET_CHARS, 4096) and refresh token (TOKEN_CHARS, 8192): before session
42 only the 2 MiB body bounded them, and a password was pre-hashed whole by argon2 in a hashing turn."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from shared.bus import CallContext, run_command
from shared.messages import auth as m

NAMES = [  # every user name or email a command takes, with a body otherwise valid
    (m.IssueToken, "username", {"grant_type": "password", "client_id": "api-client", "client_secret": "s",
                                "password": "p"}),
    (m.AuthorizeUser, "username", {"client_id": "railyard-ui", "redirect_uri": "http://127.0.0.1:18000/",
                                   "code_challenge": "c" * 43, "password": "p"}),
    (m.InviteUser, "email", {}),
    (m.DeactivateUser, "email", {}),
    (m.ActivateUser, "email", {}),
    (m.UpdatePassword, "email", {"password": "a-new-password"}),
    (m.AddWorkspaceUser, "email", {"workspace_id": 1}),
    (m.RemoveWorkspaceUser, "email", {"workspace_id": 1}),
]


def _address(chars: int) -> str:
    return "a" * (chars - len("@example.com")) + "@example.com"


@pytest.mark.parametrize("model, field, body", NAMES, ids=[f"{c.__name__}.{f}" for c, f, _ in NAMES])
def test_a_name_longer_than_the_bound_is_refused_before_the_handler(model, field, body):
    called = []

    async def handler(cmd, ctx):
        called.append(cmd)
        return None

    def answer(name: str):
        return asyncio.run(run_command(handler, model, body | {field: name}, CallContext(subject="s")))

    refused = answer(_address(m.NAME_CHARS + 1))
    assert not refused.ok and refused.status == 400 and refused.error.code == "invalid_request", refused
    assert field in refused.error.msg and str(m.NAME_CHARS) in refused.error.msg, refused.error
    assert len(refused.error.msg) < 200  # the name is not repeated back
    assert called == []  # was: taken, whatever its length
    assert answer(_address(m.NAME_CHARS)).ok and len(called) == 1


def test_every_name_field_of_the_auth_commands_is_bounded():
    """A new command (or field) naming a user by name or email is bounded too, or this lists it."""
    listed = {(model, field) for model, field, _ in NAMES}
    commands = [c for c in vars(m).values() if isinstance(c, type) and issubclass(c, m.Command) and c is not m.Command]
    named = {(c, f) for c in commands for f in c.model_fields if f in ("username", "email")}
    assert named == listed, named ^ listed
    for model, field in named:
        assert _max_length(model, field) == m.NAME_CHARS, (model.__name__, field)


def _max_length(model: type[BaseModel], field: str) -> int | None:
    return next((getattr(c, "max_length", None) for c in model.model_fields[field].metadata
                 if getattr(c, "max_length", None) is not None), None)


SECRETS = [  # every password, client secret and refresh token a command takes, with a body otherwise valid
    (m.IssueToken, "password", m.SECRET_CHARS, {"grant_type": "password", "client_id": "api-client",
                                                "client_secret": "s", "username": "alice"}),
    (m.IssueToken, "client_secret", m.SECRET_CHARS, {"grant_type": "client_credentials", "client_id": "c"}),
    (m.IssueToken, "refresh_token", m.TOKEN_CHARS, {"grant_type": "refresh_token", "client_id": "c",
                                                    "client_secret": "s"}),
    (m.EndSession, "client_secret", m.SECRET_CHARS, {"client_id": "c", "refresh_token": "a.b.c"}),
    (m.EndSession, "refresh_token", m.TOKEN_CHARS, {"client_id": "c", "client_secret": "s"}),
    (m.AuthorizeUser, "password", m.SECRET_CHARS, {"client_id": "railyard-ui", "redirect_uri": "http://h/",
                                                   "code_challenge": "c" * 43, "username": "alice"}),
    (m.InviteUser, "password", m.SECRET_CHARS, {"email": "bob@example.com"}),
    (m.UpdatePassword, "password", m.SECRET_CHARS, {}),
    (m.UpdatePassword, "current_password", m.SECRET_CHARS, {"password": "a-new-password"}),
]


@pytest.mark.parametrize("model, field, bound, body", SECRETS, ids=[f"{c.__name__}.{f}" for c, f, _, _ in SECRETS])
def test_a_secret_longer_than_its_bound_is_refused_before_the_handler(model, field, bound, body):
    called = []

    async def handler(cmd, ctx):
        called.append(cmd)
        return None

    def answer(value: str):
        return asyncio.run(run_command(handler, model, body | {field: value}, CallContext(subject="s")))

    refused = answer("p" * (bound + 1))
    assert not refused.ok and refused.status == 400 and refused.error.code == "invalid_request", refused
    assert field in refused.error.msg and str(bound) in refused.error.msg, refused.error
    assert len(refused.error.msg) < 200  # the secret is not repeated back
    assert called == []  # was: taken, whatever its length
    assert answer("p" * bound).ok and len(called) == 1


def test_every_secret_field_of_the_auth_commands_is_bounded():
    """A new command (or field) carrying a password, client secret or refresh token is bounded too, or this lists
    it."""
    listed = {(model, field) for model, field, _, _ in SECRETS}
    commands = [c for c in vars(m).values() if isinstance(c, type) and issubclass(c, m.Command) and c is not m.Command]
    carried = {(c, f) for c in commands for f in c.model_fields
               if "password" in f or f in ("client_secret", "refresh_token")}
    assert carried == listed, carried ^ listed
    for model, field, bound, _ in SECRETS:
        assert _max_length(model, field) == bound, (model.__name__, field)
