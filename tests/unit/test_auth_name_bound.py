"""A user name or email in an auth command is at most NAME_CHARS (254: RFC 5321's longest address) characters: a
longer one is refused on the bus's validation path, 400 invalid_request naming the field, before the handler (and so
before any database statement) runs. Unbounded, a sign-in's name was lowered and hashed by PostgreSQL in each of the
sign-in's five statements: ~80 ms of them a try for a 1 MB name (session 41 review; docs/auth.md, "Brute force").
The gateway's side (the token route, the sign-in page) is tests/unit/test_gateway_auth_name_bound.py.
Likewise every password and client secret (SECRET_CHARS, 4096) and refresh token (TOKEN_CHARS, 8192): before session
42 only the 2 MiB body bounded them, and a password was pre-hashed whole by argon2 in a hashing turn. And every client
id (CLIENT_ID_CHARS), authorization code, PKCE verifier (RFC 7636's 128), scope and user id (USER_ID_CHARS, and at most
a page of them in users/query): unbounded until later in session 42."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from shared.bus import CallContext, run_command
from shared.messages import auth as m
from shared.paging import MAX_PAGE

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
    _refused_before_the_handler(model, field, body, m.NAME_CHARS, _address)


def _answers(model: type[m.Command], body: dict) -> tuple[Callable[[str, object], Any], list[m.Command]]:
    """`answer(field, value)`: the bus's answer to `model`'s `body` with `field` set to `value`, run by a handler that
    keeps each command it is called with (the list returned with it) and answers nothing."""
    called: list[m.Command] = []

    async def handler(cmd, ctx):
        called.append(cmd)
        return None

    def answer(field: str, value: object):
        return asyncio.run(run_command(handler, model, body | {field: value}, CallContext(subject="s")))

    return answer, called


def _refused_before_the_handler(model: type[m.Command], field: str, body: dict, bound: int,
                                value: Callable[[int], str]) -> None:
    """`field`'s `value` of `bound` + 1 characters is refused 400 invalid_request, naming the field and its bound in a
    short message (the value not repeated back), before the handler; one of `bound` characters is taken."""
    answer, called = _answers(model, body)
    refused = answer(field, value(bound + 1))
    assert not refused.ok and refused.status == 400 and refused.error.code == "invalid_request", refused
    assert field in refused.error.msg and str(bound) in refused.error.msg, refused.error
    assert len(refused.error.msg) < 200  # the value is not repeated back
    assert called == []  # was: taken, whatever its length
    assert answer(field, value(bound)).ok and len(called) == 1


def _fields_carried(carries: Callable[[str], bool]) -> set[tuple[type[m.Command], str]]:
    """Each (command, field) of the auth commands whose field's name `carries` says yes to."""
    commands = [c for c in vars(m).values() if isinstance(c, type) and issubclass(c, m.Command) and c is not m.Command]
    return {(c, f) for c in commands for f in c.model_fields if carries(f)}


def test_every_name_field_of_the_auth_commands_is_bounded():
    """A new command (or field) naming a user by name or email is bounded too, or this lists it."""
    listed = {(model, field) for model, field, _ in NAMES}
    named = _fields_carried(lambda f: f in ("username", "email"))
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
    _refused_before_the_handler(model, field, body, bound, lambda chars: "p" * chars)


def test_every_secret_field_of_the_auth_commands_is_bounded():
    """A new command (or field) carrying a password, client secret or refresh token is bounded too, or this lists
    it."""
    listed = {(model, field) for model, field, _, _ in SECRETS}
    carried = _fields_carried(lambda f: "password" in f or f in ("client_secret", "refresh_token"))
    assert carried == listed, carried ^ listed
    for model, field, bound, _ in SECRETS:
        assert _max_length(model, field) == bound, (model.__name__, field)


FIELDS = [  # every client id, authorization code, PKCE verifier, scope and user id a command takes, with a body
    # otherwise valid (session 42: only the body limits bounded them; a code was hashed, looked up and spent, a client
    # id became the gateway's client bucket key, a user id no UUID came back whole in the 400)
    (m.IssueToken, "client_id", m.CLIENT_ID_CHARS, {"grant_type": "client_credentials", "client_secret": "s"}),
    (m.IssueToken, "code", m.CODE_CHARS, {"grant_type": "authorization_code", "client_id": "railyard-ui",
                                          "client_secret": ""}),
    (m.IssueToken, "code_verifier", m.CODE_VERIFIER_CHARS, {"grant_type": "authorization_code",
                                                            "client_id": "railyard-ui", "client_secret": "",
                                                            "code": "c"}),
    (m.IssueToken, "scope", m.SCOPE_CHARS, {"grant_type": "password", "client_id": "api-client", "client_secret": "s",
                                            "username": "alice", "password": "p"}),
    (m.EndSession, "client_id", m.CLIENT_ID_CHARS, {"client_secret": "s", "refresh_token": "a.b.c"}),
    (m.RevokeInferenceClient, "client_id", m.CLIENT_ID_CHARS, {"workspace_id": 1}),
    (m.AuthorizeUser, "client_id", m.CLIENT_ID_CHARS, {"redirect_uri": "http://h/", "code_challenge": "c" * 43,
                                                       "username": "alice", "password": "p"}),
    (m.DeactivateUser, "user_id", m.USER_ID_CHARS, {}),
    (m.ActivateUser, "user_id", m.USER_ID_CHARS, {}),
    (m.UpdatePassword, "user_id", m.USER_ID_CHARS, {"password": "a-new-password"}),
    (m.ListWorkspaces, "user_id", m.USER_ID_CHARS, {}),
    (m.RemoveWorkspaceUser, "user_id", m.USER_ID_CHARS, {"workspace_id": 1}),
    # the redirect URIs and the PKCE challenge (session 42, later): the code grant's was carried whole and compared
    # after the code was spent, AuthorizeUser's was stored with the code
    (m.IssueToken, "redirect_uri", m.REDIRECT_URI_CHARS, {"grant_type": "authorization_code",
                                                          "client_id": "railyard-ui", "client_secret": "",
                                                          "code": "c", "code_verifier": "v" * 43}),
    (m.AuthorizeUser, "redirect_uri", m.REDIRECT_URI_CHARS, {"client_id": "railyard-ui", "code_challenge": "c" * 43,
                                                             "username": "alice", "password": "p"}),
    (m.AuthorizeUser, "code_challenge", m.CODE_CHALLENGE_CHARS, {"client_id": "railyard-ui",
                                                                 "redirect_uri": "http://h/", "username": "alice",
                                                                 "password": "p"}),
]


@pytest.mark.parametrize("model, field, bound, body", FIELDS, ids=[f"{c.__name__}.{f}" for c, f, _, _ in FIELDS])
def test_a_request_field_longer_than_its_bound_is_refused_before_the_handler(model, field, bound, body):
    _refused_before_the_handler(model, field, body, bound, lambda chars: "x" * chars)


def test_the_pkce_and_id_bounds_are_the_rfcs_and_ours():
    assert m.CODE_VERIFIER_CHARS == 128  # RFC 7636 4.1: 43 to 128 characters
    assert m.CODE_CHALLENGE_CHARS == 128  # RFC 7636 4.2: likewise the challenge (S256's is 43)
    assert len(secrets.token_urlsafe(32)) < m.CODE_CHARS  # the codes auth issues (handlers.authorize)
    assert len("inference-" + secrets.token_hex(8)) < m.CLIENT_ID_CHARS  # handlers.create_inference_client's


def test_every_client_id_and_user_id_field_of_the_auth_commands_is_bounded():
    """A new command (or field) carrying a client id, code, verifier, scope, user id, redirect URI or PKCE challenge
    is bounded too, or this lists it."""
    listed = {(model, field) for model, field, _, _ in FIELDS}
    carried = _fields_carried(lambda f: f in ("client_id", "code", "code_verifier", "scope", "user_id", "redirect_uri",
                                              "code_challenge"))
    assert carried == listed, carried ^ listed
    for model, field, bound, _ in FIELDS:
        assert _max_length(model, field) == bound, (model.__name__, field)


def test_users_query_takes_at_most_a_page_of_ids_each_a_user_ids_length():
    answer, called = _answers(m.QueryUsers, {})
    for ids in (["x" * (m.USER_ID_CHARS + 1)], [str(uuid.uuid4())] * (MAX_PAGE + 1)):
        refused = answer("user_ids", ids)
        assert not refused.ok and refused.status == 400 and refused.error.code == "invalid_request", refused
        assert "user_ids" in refused.error.msg and len(refused.error.msg) < 200, refused.error
    assert called == []  # was: taken, up to the 2 MiB body
    assert (answer("user_ids", [str(uuid.uuid4())] * MAX_PAGE).ok and answer("user_ids", ["x" * m.USER_ID_CHARS]).ok
            and len(called) == 2)
