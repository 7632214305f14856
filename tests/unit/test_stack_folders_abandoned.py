"""tests/stack.py's removal of earlier runs' test stack folders that nothing uses any more: a run killed before its
session's end (a CI job's time-out, its processes killed while tests/stack_stop_later.py waited) left its stack's
folder in the temporary directory for good, one more each such run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests import stack


def _folder(root, name, age=None, supervisor=None, log_age=None):
    folder = root / f"{stack.STACK_FOLDER_PREFIX}{name}"
    (folder / "data" / "logs").mkdir(parents=True)
    (folder / "data" / "run").mkdir()
    (folder / "data-up.log").write_text("railyard: ...\n")
    if supervisor is not None:
        (folder / "data" / "run" / "stack.json").write_text(json.dumps({"supervisor_pid": supervisor}))
    log = folder / "data" / "logs" / "gateway.log"
    log.write_text("serving\n")
    if log_age is not None:
        os.utime(log, (time.time() - log_age,) * 2)
    if age is not None:
        for path in (folder / "data-up.log", folder):
            os.utime(path, (time.time() - age,) * 2)
        if log_age is None:
            os.utime(log, (time.time() - age,) * 2)
    return folder


def test_only_folders_no_stack_uses_are_removed(tmp_path):
    hour = stack.ABANDONED_AFTER
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed = _folder(tmp_path, "killed", age=2 * hour, supervisor=dead.pid)  # its supervisor gone
    stopped = _folder(tmp_path, "stopped", age=2 * hour)  # stopped, never removed: no state file
    running = _folder(tmp_path, "running", age=2 * hour, supervisor=os.getpid())  # a live supervisor: in use
    fresh = _folder(tmp_path, "fresh", supervisor=dead.pid)  # just made (a start before its state file is right)
    logging = _folder(tmp_path, "logging", age=2 * hour, log_age=60)  # a service wrote a minute ago
    named = _folder(tmp_path, "named", age=2 * hour)  # a process runs from it
    other = tmp_path / "railyard-something-else"
    other.mkdir()
    os.utime(other, (time.time() - 2 * hour,) * 2)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(named / "data")])
    try:
        removed = stack.remove_abandoned_stack_folders(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == sorted([killed, stopped])
    assert not killed.exists() and not stopped.exists()
    assert all(path.exists() for path in (running, fresh, logging, named, other))
    assert stack.remove_abandoned_stack_folders(tmp_path) == [named]  # its process gone
