"""users/deactivate and users/activate name the user by email (seed 001) or by `user_id` (services/auth/handlers.py
`_user_named`). Since session 41 an email is at most NAME_CHARS (254) in every command, so a user invited before with a
longer one could be neither deactivated nor activated: an administrator could not stop them (a session kept by its
refresh tokens lives on). By id they can be; one of the two is required, and only administrators are answered
(docs/auth.md, "Users and workspaces"). The handlers run with the store faked; the real store's lookups are the
stack tests' (tests/integration/test_users_workspaces.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from services.auth import handlers
from shared.authz import Principal
from shared.bus import CallContext, run_command
from shared.errors import Forbidden, InvalidRequest, NotFound
from shared.messages.auth import NAME_CHARS, ActivateUser, DeactivateUser, UpdatePassword

LONG_EMAIL = "x" * (NAME_CHARS + 46) + "@example.com"  # invited before the bound: 312 characters
ERIN = {"id": uuid.uuid4(), "email": LONG_EMAIL, "username": LONG_EMAIL, "is_admin": False, "enabled": True}


@pytest.fixture
def changed(monkeypatch) -> list:
    """(enabled, user id) per set_enabled; Erin found by id only (no command takes her email)."""
    changed: list = []

    async def user_by_id(pool, user_id):
        return ERIN if user_id == ERIN["id"] else None

    async def user_by_login(pool, login):
        return None

    async def set_enabled(conn, user_id, enabled, revoked_before):
        changed.append((enabled, user_id))

    async def nothing(*args, **kwargs):
        return None

    for name, fake in (("user_by_id", user_by_id), ("user_by_login", user_by_login), ("set_enabled", set_enabled),
                       ("add_event", nothing), ("count_admins", nothing)):
        monkeypatch.setattr(handlers.store, name, fake)
    monkeypatch.setattr(handlers, "_published", nothing)
    return changed


class _Conn:
    async def execute(self, *args):
        return None

    @contextlib.asynccontextmanager
    async def transaction(self):
        yield


class _Pool:
    @contextlib.asynccontextmanager
    async def acquire(self):
        yield _Conn()


def _deps() -> SimpleNamespace:
    return SimpleNamespace(pool=_Pool(), events_committed=lambda: None, settings=None)


def _caller(admin: bool = True) -> Principal:
    return Principal(subject=str(uuid.uuid4()), kind="user", admin=admin, client_id="api-client", username="root",
                     issued_at=time.time())


async def test_a_user_whose_email_no_command_takes_is_deactivated_and_activated_by_id(changed):
    with pytest.raises(ValidationError) as by_email:  # the email: refused before any handler (400 on the bus)
        DeactivateUser(email=LONG_EMAIL)
    assert "254" in str(by_email.value)
    await handlers.deactivate_user(_deps(), _caller(), DeactivateUser(user_id=str(ERIN["id"])))
    await handlers.activate_user(_deps(), _caller(), ActivateUser(user_id=str(ERIN["id"])))
    assert changed == [(False, ERIN["id"]), (True, ERIN["id"])]  # was: no way to name her


@pytest.mark.parametrize("command", [DeactivateUser, ActivateUser])
async def test_one_of_email_and_user_id_and_administrators_only(changed, command):
    call = handlers.deactivate_user if command is DeactivateUser else handlers.activate_user
    for body in ({}, {"email": "erin@example.com", "user_id": str(ERIN["id"])}):
        with pytest.raises(InvalidRequest, match="email or user_id"):
            await call(_deps(), _caller(), command(**body))
    with pytest.raises(InvalidRequest, match="user_id must be a user id"):
        await call(_deps(), _caller(), command(user_id="not-a-uuid"))
    with pytest.raises(NotFound, match="no user with id"):
        await call(_deps(), _caller(), command(user_id=str(uuid.uuid4())))
    with pytest.raises(Forbidden):  # the permission first: a non-administrator is told nothing of the id
        await call(_deps(), _caller(admin=False), command(user_id=str(ERIN["id"])))
    assert changed == []


@pytest.mark.parametrize("command", [DeactivateUser, ActivateUser])
async def test_a_non_administrator_is_refused_alike_whatever_user_it_names(changed, monkeypatch, command):
    """0040927b's rule: the permission before the lookup, so a non-administrator learns nothing of an id (or email)
    from the answer: 403 for a user's id, one no user has, one that is no UUID, neither or both, with no user looked
    up. The test above names Erin, who exists: 403 whichever came first."""
    call = handlers.deactivate_user if command is DeactivateUser else handlers.activate_user
    looked_up: list = []

    async def user_by_id(pool, user_id):
        looked_up.append(user_id)
        return ERIN if user_id == ERIN["id"] else None

    async def user_by_login(pool, login):
        looked_up.append(login)
        return None

    monkeypatch.setattr(handlers.store, "user_by_id", user_by_id)
    monkeypatch.setattr(handlers.store, "user_by_login", user_by_login)
    for body in ({"user_id": str(ERIN["id"])}, {"user_id": str(uuid.uuid4())}, {"user_id": "not-a-uuid"},
                 {"email": "nobody@example.com"}, {}, {"email": "erin@example.com", "user_id": str(ERIN["id"])}):
        with pytest.raises(Forbidden, match="only administrators"):  # looked up first: 404 or 400 but for Erin's
            await call(_deps(), _caller(admin=False), command(**body))
    assert looked_up == [] and changed == []


@pytest.mark.parametrize("command", [DeactivateUser, ActivateUser])
def test_the_user_id_is_bounded_on_the_bus(command):
    async def handler(cmd, ctx):
        return None

    refused = asyncio.run(run_command(handler, command, {"user_id": "u" * 65}, CallContext(subject="s")))
    assert not refused.ok and refused.status == 400 and "user_id" in refused.error.msg, refused
    assert asyncio.run(run_command(handler, command, {"user_id": str(ERIN["id"])}, CallContext(subject="s"))).ok


@pytest.fixture
def passwords_set(changed, monkeypatch) -> list:
    """(user id, temporary) per store.set_password; nothing hashed at argon2's cost."""
    set_: list = []

    async def set_password(pool, user_id, password_hash, *, temporary, revoked_before):
        set_.append((user_id, temporary))
        return SimpleNamespace(event_id=uuid.uuid4())

    async def hash_secret(secret):
        return "hashed"

    monkeypatch.setattr(handlers.store, "set_password", set_password)
    monkeypatch.setattr(handlers, "hash_secret", hash_secret)
    return set_


async def test_an_administrator_sets_the_password_of_a_user_whose_email_no_command_takes_by_id(passwords_set):
    """users/update_password named another user by email only: Erin's (312 characters) is refused on the bus, so no
    administrator could reset her password (5b5800da gave deactivate and activate a user_id; this is the third)."""
    with pytest.raises(ValidationError):
        UpdatePassword(password="a-new-password", email=LONG_EMAIL)
    await handlers.update_password(_deps(), _caller(), UpdatePassword(password="a-new-password",
                                                                       user_id=str(ERIN["id"])))
    assert passwords_set == [(ERIN["id"], True)]  # temporary, as by email; was: no user_id field (400)


async def test_update_password_by_id_is_one_of_the_two_and_the_permission_comes_first(passwords_set, monkeypatch):
    with pytest.raises(InvalidRequest, match="email or user_id, not both"):
        await handlers.update_password(_deps(), _caller(), UpdatePassword(
            password="a-new-password", email="erin@example.com", user_id=str(ERIN["id"])))
    with pytest.raises(NotFound, match="no user with id"):
        await handlers.update_password(_deps(), _caller(), UpdatePassword(password="a-new-password",
                                                                           user_id=str(uuid.uuid4())))
    looked_up: list = []

    async def user_by_id(pool, user_id):
        looked_up.append(user_id)
        return ERIN if user_id == ERIN["id"] else None

    monkeypatch.setattr(handlers.store, "user_by_id", user_by_id)
    # a user's id, one no user has, one that is no UUID: 403 alike, nothing looked up (as users/deactivate); the third
    # was 400 and the others looked up first
    for user_id in (str(ERIN["id"]), str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(Forbidden, match="only administrators"):
            await handlers.update_password(_deps(), _caller(admin=False), UpdatePassword(password="a-new-password",
                                                                                          user_id=user_id))
    assert looked_up == [] and passwords_set == []


@pytest.mark.parametrize("admin", [True, False], ids=["administrator", "user"])
async def test_your_own_user_id_needs_your_current_password_as_your_own_email_does(passwords_set, monkeypatch,
                                                                                   admin):
    """An administrator resets another user's password without theirs; naming itself by id is its own password,
    which needs the current one (checked and counted), or a stolen administrator's token would change it."""
    caller = _caller(admin=admin)
    me = {"id": uuid.UUID(caller.user_id), "email": "me@example.com", "username": "me", "is_admin": admin,
          "enabled": True, "password_hash": "the-hash"}
    failed: list = []

    async def user_by_id(pool, user_id):
        return me if user_id == me["id"] else None

    async def login_failures(pool, user_id, source):
        return None

    async def record_failed_login(pool, user_id, source, after, seconds):
        failed.append(user_id)

    async def secret_matches(hashed, secret):
        return secret == "the-current-one"

    @contextlib.asynccontextmanager
    async def one_at_a_time(*args, **kwargs):
        yield

    for name, fake in (("user_by_id", user_by_id), ("login_failures", login_failures),
                       ("record_failed_login", record_failed_login)):
        monkeypatch.setattr(handlers.store, name, fake)
    monkeypatch.setattr(handlers, "secret_matches", secret_matches)
    monkeypatch.setattr(handlers, "_one_at_a_time", one_at_a_time)
    deps = SimpleNamespace(pool=_Pool(), settings=SimpleNamespace(lockout_after=5, lockout_seconds=60))
    for user_id in (caller.user_id, caller.user_id.upper()):
        for current in (None, "a-wrong-one"):
            with pytest.raises(Forbidden, match="current_password"):
                await handlers.update_password(deps, caller, UpdatePassword(
                    password="a-new-password", user_id=user_id, current_password=current))
    assert passwords_set == [] and failed == [me["id"]] * 4  # each counted as a wrong current password
    await handlers.update_password(deps, caller, UpdatePassword(password="a-new-password", user_id=caller.user_id,
                                                                current_password="the-current-one"))
    assert passwords_set == [(me["id"], False)]  # your own: not temporary


@pytest.mark.parametrize("length", [41, 64, 2 * 1024 * 1024])
def test_a_user_id_that_is_no_uuid_is_not_repeated_whole(length):
    """handlers._uuid's 400 repeated the whole value: 64 characters now that the commands bound it, up to the 2 MiB
    body before (and from any caller that does not bound it). At most UUID_ECHO_CHARS of it now, and its length."""
    value = "z" * length
    with pytest.raises(InvalidRequest) as refused:
        handlers._uuid(value, "user_id")
    assert "user_id" in refused.value.msg and f"({length} characters)" in refused.value.msg, refused.value.msg
    assert "z" * (handlers.UUID_ECHO_CHARS + 1) not in refused.value.msg and len(refused.value.msg) < 120
    with pytest.raises(InvalidRequest, match="got 'not-a-uuid'$"):  # a short one is shown whole, as before
        handlers._uuid("not-a-uuid", "user_id")
