"""What a signed-in user is told about whether an email is a user's (services/auth/handlers.py). Sign-ins answer alike
for any name (docs/auth.md, "Brute force"); until session 41 two routes still told any signed-in user: a
non-administrator's users/update_password naming another email answered 404 when no user had it and 403 otherwise,
and a collaborator's workspaces/remove_user by email 404 before the role check's 403. The permission is now checked
first: the same 403 whatever the email. Administrators and owners, who may act on the user, are still told 404
(docs/auth.md, "Who is told whether an email is a user's")."""

from __future__ import annotations

import time
import uuid

import pytest

from services.auth import handlers
from shared.authz import Principal
from shared.errors import Forbidden, NotFound
from shared.messages.auth import RemoveWorkspaceUser, UpdatePassword

CAROL = uuid.uuid4()  # the caller
DAVE = uuid.uuid4()  # another user
USERS = {"carol@example.com": {"id": CAROL}, "dave@example.com": {"id": DAVE}}
NOBODY = "nobody@example.com"


@pytest.fixture
def roles(monkeypatch) -> dict[int, str]:
    """The caller's role per workspace; users by email from USERS. Nothing else of the store is reachable: a call
    past the permission check fails on the pool (None)."""
    roles: dict[int, str] = {}

    async def user_by_login(pool, login):
        return USERS.get(login)

    async def role_in(pool, user_id, workspace_id):
        return roles.get(workspace_id) if user_id == CAROL else None

    monkeypatch.setattr(handlers.store, "user_by_login", user_by_login)
    monkeypatch.setattr(handlers.store, "role_in", role_in)
    return roles


def _deps():
    from types import SimpleNamespace

    return SimpleNamespace(pool=None, settings=SimpleNamespace(lockout_after=10, lockout_seconds=900))


def _carol(admin: bool = False) -> Principal:
    return Principal(subject=str(CAROL), kind="user", admin=admin, client_id="api-client", username="carol",
                     issued_at=time.time())


async def _answer(call) -> tuple[type, str]:
    with pytest.raises((Forbidden, NotFound)) as refused:
        await call
    return type(refused.value), refused.value.msg


async def test_a_non_administrator_setting_another_email_s_password_gets_403_whether_or_not_it_is_a_users(roles):
    answers = [await _answer(handlers.update_password(_deps(), _carol(), UpdatePassword(
        password="a-new-password", email=email))) for email in ("dave@example.com", NOBODY)]
    assert answers[0] == answers[1], answers  # was: (Forbidden, ...) then (NotFound, 'no user with email ...')
    assert answers[0][0] is Forbidden
    # an administrator may set it, so is told there is no such user
    admin = await _answer(handlers.update_password(_deps(), _carol(admin=True), UpdatePassword(
        password="a-new-password", email=NOBODY)))
    assert admin[0] is NotFound


async def test_a_collaborator_removing_by_email_gets_403_whether_or_not_it_is_a_users(roles):
    roles[7] = "COLLABORATOR"
    answers = [await _answer(handlers.remove_workspace_user(_deps(), _carol(), RemoveWorkspaceUser(
        workspace_id=7, email=email))) for email in ("dave@example.com", NOBODY)]
    assert answers[0] == answers[1], answers  # was: (Forbidden, ...) then (NotFound, 'no user with email ...')
    assert answers[0][0] is Forbidden
    # an owner may remove users, so is told there is no such user; a non-member is told there is no such workspace
    roles[7] = "OWNER"
    owner = await _answer(handlers.remove_workspace_user(_deps(), _carol(), RemoveWorkspaceUser(
        workspace_id=7, email=NOBODY)))
    assert owner == (NotFound, f"no user with email {NOBODY}")
    outsider = await _answer(handlers.remove_workspace_user(_deps(), _carol(), RemoveWorkspaceUser(
        workspace_id=8, email="dave@example.com")))
    assert outsider == (NotFound, "workspace 8 not found")
