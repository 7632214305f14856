"""users/query over HTTP as seed 001's users/query example reads it: the first admin, who has no email, is a row
without `email`, `firstName` and `lastName` keys (the seed's `'username': 'admin'` row), an invited user's row has its
`email` and no null `firstName`/`lastName`. Before, both rows carried those keys as null (j2's contract journey,
session 27): `'email' in row` was true for the admin."""

from __future__ import annotations

import base64
import json

import pytest

from tests.integration.conftest import post

pytestmark = pytest.mark.integration


def subject(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def test_users_rows_leave_absent_attributes_out(stack, admin, alice):
    admin_id = subject(admin.token)
    response = post(stack, "users/query", admin.token, {"user_ids": [admin_id, alice.user_id]})
    assert response.status_code == 200, response.text
    users = response.json()["users"]
    assert set(users) == {admin_id, alice.user_id}
    first_admin, invited = users[admin_id], users[alice.user_id]
    assert first_admin["username"] == stack.secrets()["admin_username"]
    assert not {"email", "firstName", "lastName"} & set(first_admin), first_admin
    assert invited["email"] == alice.email and not {"firstName", "lastName"} & set(invited), invited
    assert None not in first_admin.values() and None not in invited.values()
    # the seed's users/query by workspace (alice's, as its owner): the same keys (`access` is the viewer's)
    members = post(stack, "users/query", alice.token, {"workspace_id": alice.workspace_id}).json()["users"]
    assert list(members) == [alice.user_id] and list(members[alice.user_id]) == list(invited)
