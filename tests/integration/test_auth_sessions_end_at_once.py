"""A deactivated user's tokens are refused by the very next request after the 200: `users/deactivate` answers once
its events.user.deactivated is published, as `workspaces/revoke_inference_client` does (test_inference_scope.py),
services/auth/handlers.py `_published`. Before, it answered as soon as the change committed, with the event still
in auth's outbox, and a token kept working for a few milliseconds after the 200 (test_users_workspaces.py polled for
the refusal). The stack runs one NATS server: docs/auth.md says what holds on a cluster."""

from __future__ import annotations

import pytest

from tests.integration.conftest import make_account, post

pytestmark = pytest.mark.integration


def _works(stack, token: str) -> int:
    return post(stack, "workspaces/list", token).status_code


def test_a_deactivated_users_token_is_refused_right_after_the_200(stack, admin):
    for _ in range(3):  # three in a row: not a race the refusal won once
        account = make_account(stack, admin, "deact-now")
        assert _works(stack, account.token) == 200
        answer = post(stack, "users/deactivate", admin.token, {"email": account.email})
        assert answer.status_code == 200, answer.text
        refused = post(stack, "workspaces/list", account.token)
        assert refused.status_code == 401, refused.text

