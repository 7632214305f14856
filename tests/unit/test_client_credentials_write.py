"""The credentials file's write (railyard_client/session.py `write_credentials`): a temporary file beside it, 0600,
renamed over it. The temporary file holds the tokens as well; before, a failure between its creation and its rename
(a value JSON cannot hold, a full disk, a Ctrl-C) left a `.credentials-XXXXXXXX` in the config folder for good, and
nothing ever removed one a killed process left."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest
from railyard_client import session
from railyard_client.session import read_credentials, write_credentials

SIGNED_IN = {"url": "http://127.0.0.1:28051", "username": "alice", "access_token": "a.b.c", "refresh_token": "r.e.f"}


def left_beside(path) -> list[str]:
    return sorted(name for name in os.listdir(path.parent) if name.startswith(".credentials-"))


def test_a_write_that_fails_before_its_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "railyard" / "credentials.json"
    write_credentials(SIGNED_IN, path)
    with pytest.raises(TypeError):  # a value JSON cannot hold: the dump fails half-way, the tokens already written
        write_credentials(SIGNED_IN | {"expires_at": object()}, path)
    assert left_beside(path) == []  # before: ['.credentials-xxxxxxxx'], 0600, holding the tokens
    assert read_credentials(path) == SIGNED_IN  # the file itself as it was

    def interrupted(*_: object) -> None:  # Ctrl-C at the rename (BaseException, not Exception)
        raise KeyboardInterrupt

    monkeypatch.setattr(session.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_credentials(SIGNED_IN | {"username": "bob"}, path)
    assert left_beside(path) == [] and read_credentials(path) == SIGNED_IN


def test_a_temporary_file_a_killed_write_left_is_removed_by_the_next_write_once_stale(tmp_path):
    path = tmp_path / "credentials.json"
    stale, fresh, other = (tmp_path / ".credentials-abcd1234", tmp_path / ".credentials-efgh5678",
                           tmp_path / ".credentials-notours.json")
    for left in (stale, fresh, other):
        left.write_text(json.dumps(SIGNED_IN))
    old = time.time() - 120  # two minutes
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    write_credentials(SIGNED_IN, path)
    # a killed process's (a minute old) goes; a younger one may be another process's write under way; a name that
    # is not write_credentials' is not ours to remove
    assert left_beside(path) == [".credentials-efgh5678", ".credentials-notours.json"]
    assert read_credentials(path) == SIGNED_IN and path.stat().st_mode & 0o777 == 0o600


def test_another_hosts_write_under_way_is_not_swept_when_this_hosts_clock_runs_ahead(tmp_path, monkeypatch):
    """A home shared between hosts (NFS): the file server stamps the files, so with this host's clock an hour ahead of
    it a temporary file another host made a moment ago looked an hour old and was removed under its write (whose
    rename then failed). The age is read against the folder's own clock: the new temporary file's time stamp."""
    path = tmp_path / "credentials.json"
    under_way = tmp_path / ".credentials-ijkl9012"
    under_way.write_text(json.dumps(SIGNED_IN))  # stamped now by the folder's clock
    ahead = time.time() + 3600
    monkeypatch.setattr(session, "time", SimpleNamespace(time=lambda: ahead, monotonic=time.monotonic,
                                                         sleep=time.sleep))
    write_credentials(SIGNED_IN, path)
    assert left_beside(path) == [".credentials-ijkl9012"]  # before: [] (removed, an hour old by this host's clock)
