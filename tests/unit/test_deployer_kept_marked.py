"""deployments/.kept-marked (backend.DATA_DIR_MARKED) is written whole or not at all, and one that cannot be trusted
(cut short, unreadable) is taken as not there: the first sweep adopts (keeps) the unmarked folders, removes none.
Before session 37 the deployer rewrote it in place: a crash or a full disk mid-write left a part of it, whose time the
next start took for its last sweep's, so the unmarked folders older than that crash (a failed deploy's logs of a
deployer without the markers) were removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from services.deployer import backend as backend_module
from services.deployer.backend import DATA_DIR_MARKED, KEPT_MARKER, RUN_LINE, _stamp
from services.deployer.handlers import sweep_gone_folders
from tests.stack import REPO
from tests.unit.test_deployer_gone_folders import _aged, _backend, _left, _marked, _Pool


@pytest.mark.parametrize("torn", [b"", b"Since 2026-12-06T05:00:00+00:00 a deployment folder kept for the us",
                                  b"\xff\xfeSince\n"], ids=["empty", "cut-short", "not-text"])
async def test_a_marker_cut_short_is_taken_as_not_there_and_its_folders_kept(tmp_path, torn):
    """A folder written unmarked two hours ago (a failed deploy's logs, by a deployer without the markers), then the
    marker's write cut short an hour ago: the first sweep adopts the folder (before, it read the torn file's time as
    its last sweep's and removed the folder) and writes the marker again, whole; a temporary file a cut-short write
    of this version left is removed, not one written a moment ago (another deployer's on this data directory)."""
    top = tmp_path / "deployments"
    _marked(top / "failed-5", None)
    _aged(top / "failed-5", 7200.0)
    (top / DATA_DIR_MARKED).write_bytes(torn)
    (top / f"{DATA_DIR_MARKED}.0badf00d.tmp").write_text("Since")  # a write cut short a while ago
    cut_at = time.time() - 120.0
    os.utime(top / f"{DATA_DIR_MARKED}.0badf00d.tmp", (cut_at, cut_at))
    (top / f"{DATA_DIR_MARKED}.c0ffee00.tmp").write_text("Since")  # another deployer's, writing now: left alone
    torn_at = time.time() - 3600.0
    os.utime(top / DATA_DIR_MARKED, (torn_at, torn_at))
    backend = _backend(tmp_path)
    assert await sweep_gone_folders(SimpleNamespace(backend=backend, pool=_Pool({5: ("failed", False)}),
                                                    timeout=4.0)) == []
    assert (top / "failed-5" / KEPT_MARKER).exists()
    text = (top / DATA_DIR_MARKED).read_text()
    assert text.startswith("Since ") and text.endswith(f"\n{RUN_LINE}running\n"), text
    assert abs((top / DATA_DIR_MARKED).stat().st_mtime - time.time()) < 60
    await backend.swept()
    await backend.close()
    assert _left(tmp_path, "deployments") == {"failed-5", f"{DATA_DIR_MARKED}.c0ffee00.tmp"}


def test_a_write_cut_short_leaves_the_marker_as_it_was(tmp_path):
    """The stop's write ("stopped at ...") fails part-way (a file-size limit of 100 bytes: as a full disk would, or
    a crash): the marker still says what it said, whole, and no temporary file is left. Before, the file was
    truncated and 100 bytes of the new text written: the next start read a torn file."""
    stamp = tmp_path / DATA_DIR_MARKED
    before = f"Since 2026-12-06T05:00:00+00:00 a deployment folder kept for the user here has {KEPT_MARKER} in it; " \
             f"an inactive deployment's without one is removed by the deployer.\n{RUN_LINE}running\n"
    stamp.write_text(before)
    code = (
        "import resource, signal, sys, time\n"
        "from pathlib import Path\n"
        "from services.deployer.backend import _stamp\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "try:\n"
        "    _stamp(Path(sys.argv[1]), time.time(), 'stopped at now')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n")
    done = subprocess.run([sys.executable, "-c", code, str(stamp)], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.startswith("refused"), done.stdout + done.stderr
    assert stamp.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [DATA_DIR_MARKED]
    _stamp(stamp, time.time(), "stopped at now")  # without the limit: written
    assert stamp.read_text().endswith(f"\n{RUN_LINE}stopped at now\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [DATA_DIR_MARKED]


def test_the_rename_is_synced_in_its_folder(tmp_path, monkeypatch):
    """The new file is synced before the rename, and its folder after it: the rename is a change of the folder, which
    a power cut could undo (the old marker back, or none) until the folder is synced (session 37's note: the file's
    own fsync only)."""
    done: list[tuple[str, object]] = []
    fsync, replace = os.fsync, os.replace

    def synced(fd):
        done.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def renamed(source, target):
        done.append(("replace", os.path.basename(target)))
        replace(source, target)

    monkeypatch.setattr(backend_module.os, "fsync", synced)
    monkeypatch.setattr(backend_module.os, "replace", renamed)
    stamp = tmp_path / DATA_DIR_MARKED
    _stamp(stamp, time.time(), "running")
    assert stamp.read_text().endswith(f"\n{RUN_LINE}running\n")
    folder = tmp_path.stat().st_ino
    assert done[1:] == [("replace", DATA_DIR_MARKED), ("fsync", folder)], done
    assert done[0][0] == "fsync" and done[0][1] != folder  # the new file's own, before
