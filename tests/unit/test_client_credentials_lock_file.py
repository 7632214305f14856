"""The credentials file's lock (`credentials.json.lock` beside it, flocked around each read-change-write) is held to
the credentials file's rule: another user's, one its group or others may write, or a symbolic link in its place is
refused (UnsafeCredentials, a ConfigurationError) before it is locked. Whoever can open it can flock it: until session
43 a lock file another user made and held in a folder others may write (RAILYARD_CLIENT_CREDENTIALS in a shared
folder) stopped every save for good (`railyard login` hung, a refresh's save waited with the session's lock held)."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest
from railyard_client import session
from railyard_client.session import UnsafeCredentials, read_credentials, save_sign_in, update_credentials

SIGN_IN = {"url": "http://127.0.0.1:9", "client_id": "api-client", "client_secret": "s", "username": "u",
           "access_token": "a", "refresh_token": "r", "expires_at": 1.0}


def saved_within(path, seconds: float = 3.0) -> BaseException | None:
    """What save_sign_in raised, None when it saved; a save still waiting after `seconds` fails the test."""
    outcome: list[BaseException | None] = []

    def save() -> None:
        try:
            save_sign_in(SIGN_IN, path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=save, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, "the save waited for a lock file someone else holds"  # before session 43: for ever
    return outcome[0]


@pytest.mark.skipif(os.name != "posix", reason="POSIX owners and flock")
def test_a_lock_file_others_may_write_and_hold_is_refused_not_waited_for(tmp_path):
    path = tmp_path / "credentials.json"
    lock = tmp_path / "credentials.json.lock"
    lock.touch()
    lock.chmod(0o666)  # made by someone else for everyone, and held by them
    held = os.open(lock, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        refused = saved_within(path)
    finally:
        os.close(held)
    assert isinstance(refused, UnsafeCredentials), refused
    assert f"refusing the lock file {lock}: its group and others may write it (mode 0666)" in str(refused), refused
    assert not path.exists()  # nothing written
    lock.chmod(0o600)  # the lock file made as the SDK makes it (0600): saves as before
    assert saved_within(path) is None and read_credentials(path)["access_token"] == "a"


@pytest.mark.skipif(os.name != "posix", reason="POSIX owners")
def test_another_users_lock_file_or_a_link_in_its_place_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "credentials.json"
    lock = tmp_path / "credentials.json.lock"
    lock.touch(mode=0o600)
    uid = os.getuid()
    with monkeypatch.context() as patch:  # the lock file is then another user's (no file of credentials yet)
        patch.setattr(session.os, "getuid", lambda: uid + 1)
        with pytest.raises(UnsafeCredentials, match=f"refusing the lock file {lock}: it is another user's"):
            update_credentials(lambda saved: {**saved, "workspaces": {}}, path)
    assert not path.exists()
    lock.unlink()
    lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeCredentials, match="it is a symbolic link"):
        save_sign_in(SIGN_IN, path)
    assert not path.exists() and not (tmp_path / "elsewhere").exists()  # the link's target not made either


@pytest.mark.skipif(os.name != "posix", reason="POSIX owners")
def test_another_users_lock_file_this_user_may_not_open_is_refused_not_saved_around(tmp_path, monkeypatch):
    """Another user's lock file that this user may not open (theirs, 0600, in a folder others may write): the save
    went on without the lock, so two processes' saves could undo each other's (a spent refresh token written back)
    whenever that user chose. Refused as their lock file that may be opened is. A lock file this user may not open
    but owns, or none that can be made (a read-only folder), is saved around as before."""
    path = tmp_path / "credentials.json"
    lock = tmp_path / "credentials.json.lock"
    lock.touch(mode=0o600)
    real_open = session.os.open

    def refused(name, *args, **kwargs):  # the tests may run as root, whom no mode refuses
        if str(name) == str(lock):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(session.os, "open", refused)
    uid = os.getuid()
    with monkeypatch.context() as patch:
        patch.setattr(session.os, "getuid", lambda: uid + 1)  # the lock file is then another user's
        with pytest.raises(UnsafeCredentials, match=f"refusing the lock file {lock}: it is another user's"):
            save_sign_in(SIGN_IN, path)
    assert not path.exists()
    assert saved_within(path) is None and read_credentials(path)["access_token"] == "a"  # this user's own: as before
