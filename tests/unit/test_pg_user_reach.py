"""As root, the embedded PostgreSQL runs as the system user `pgserver` (shared/embedded/servers.py, `_pg_user`),
who must reach pgserver's installation whatever the umask the checkout and its venv were made with: a copy of the
installation made under umask 077 (every folder 0700, every file 0600 or 0700), below a private folder."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from shared.embedded import servers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as a user of its own only as root")


def _private(path: Path) -> None:
    for folder, _, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            file = Path(folder) / name
            if not file.is_symlink():
                file.chmod(stat.S_IMODE(file.stat().st_mode) & 0o700)


def test_the_postgres_user_runs_initdb_of_an_installation_made_under_umask_077(monkeypatch):
    installed = servers._pgserver_commands().POSTGRES_BIN_PATH.parent
    outer = Path(tempfile.mkdtemp(prefix="railyard-umask-"))  # not pytest's folder: its modes are changed here
    try:
        site = outer / "clone" / ".venv" / "site-packages"  # the wheel's layout: the binaries' RPATH finds libpq
        copy = site / "pgserver" / "pginstall"
        shutil.copytree(installed, copy, symlinks=True, ignore=shutil.ignore_patterns("include", "*.a"))
        shutil.copytree(installed.parent.parent / "pgserver.libs", site / "pgserver.libs", symlinks=True)
        _private(outer)
        monkeypatch.setattr(servers._pgserver_commands(), "POSTGRES_BIN_PATH", copy / "bin")
        assert servers._pg_user() == servers.PG_SYSTEM_USER
        data = outer / "data"
        data.mkdir(mode=0o700)
        entry = __import__("pwd").getpwnam(servers.PG_SYSTEM_USER)
        os.chown(data, entry.pw_uid, entry.pw_gid)
        done = subprocess.run([str(copy / "bin" / "initdb"), "-D", str(data / "pg"), "-U", "railyard", "-A", "trust",
                               "-E", "UTF8", "--no-locale", "--no-sync"], user=servers.PG_SYSTEM_USER,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert not stat.S_IMODE((outer / "clone").stat().st_mode) & (stat.S_IROTH | stat.S_IRGRP)  # traversed only
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def test_a_folder_the_postgres_user_passes_already_or_that_cannot_be_changed_is_left_as_it_is(monkeypatch):
    """A parent the user may traverse as "other" (0701) is not changed, and one whose mode cannot be changed (a
    read-only or root-squashed mount: chmod refused) does not end the start; initdb says it if the user cannot pass."""
    installed = servers._pgserver_commands().POSTGRES_BIN_PATH.parent
    outer = Path(tempfile.mkdtemp(prefix="railyard-umask-"))
    try:
        site = outer / "clone" / ".venv" / "site-packages"
        copy = site / "pgserver" / "pginstall"
        shutil.copytree(installed / "bin", copy / "bin", symlinks=True)
        (copy / "lib").mkdir()
        (copy / "share").mkdir()
        (outer / "clone").chmod(0o701)
        refused = outer / "clone" / ".venv"
        real_chmod = Path.chmod

        def chmod(path: Path, mode: int, **kwargs) -> None:
            if path == refused:
                raise PermissionError(1, "Operation not permitted", str(path))
            real_chmod(path, mode, **kwargs)

        refused.chmod(0o700)
        monkeypatch.setattr(Path, "chmod", chmod)
        monkeypatch.setattr(servers._pgserver_commands(), "POSTGRES_BIN_PATH", copy / "bin")
        assert servers._pg_user() == servers.PG_SYSTEM_USER
        assert stat.S_IMODE((outer / "clone").stat().st_mode) == 0o701
        assert stat.S_IMODE(refused.stat().st_mode) == 0o700
        assert stat.S_IMODE(site.stat().st_mode) & stat.S_IXOTH  # the others below it are still opened
    finally:
        shutil.rmtree(outer, ignore_errors=True)
