"""A deactivated user's tokens, and a user's tokens after a password change, are refused by the very next request
after the 200: `users/deactivate` and `users/update_password` answer once their event (events.user.deactivated,
events.auth.tokens_revoked) is published, as `workspaces/revoke_inference_client` does (test_inference_scope.py),
services/auth/handlers.py `_published`. Before, they answered as soon as the change committed, with the event still
in auth's outbox, and a token kept working for a few milliseconds after the 200 (test_auth.py and
test_users_workspaces.py polled for the refusal). The stack runs one NATS server: docs/auth.md says what holds on a
cluster."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import PASSWORD, make_account, post

pytestmark = pytest.mark.integration


def _works(stack, token: str) -> int:
    return post(stack, "workspaces/list", token).status_code


def test_a_deactivated_users_token_is_refused_right_after_the_200(stack, admin):
    for by in ("email", "email", "user_id"):  # three in a row: not a race the refusal won once
        account = make_account(stack, admin, "deact-now")
        assert _works(stack, account.token) == 200
        # the user by seed 001's email, or by its id (session 42: a user whose email is over 254 characters,
        # invited before that bound, is named so; tests/unit/test_auth_user_by_id.py)
        answer = post(stack, "users/deactivate", admin.token, {by: getattr(account, by)})
        assert answer.status_code == 200, answer.text
        refused = post(stack, "workspaces/list", account.token)
        assert refused.status_code == 401, refused.text


def test_a_password_change_ends_the_users_tokens_right_after_the_200(stack, admin):
    for who in ("own", "administrator", "own"):  # the user's own change, and a reset: the sessions end all the same
        account = make_account(stack, admin, "pw-now")
        assert _works(stack, account.token) == 200
        new = f"changed-{uuid.uuid4().hex[:8]}"
        if who == "own":
            answer = post(stack, "users/update_password", account.token,
                          {"password": new, "current_password": PASSWORD})
        else:
            answer = post(stack, "users/update_password", admin.token, {"email": account.email, "password": new})
        assert answer.status_code == 200, (who, answer.text)
        refused = post(stack, "workspaces/list", account.token)
        assert refused.status_code == 401, (who, refused.text)
