"""tests/stack_stop_later.py: a session's stack sent SIGTERM at once, and a process of its own waits for the
supervisor to exit (SIGKILL after the grace) and removes its folder; the caller waits for neither."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests import stack_stop_later

# a supervisor that takes `delay` s to stop on SIGTERM (or ignores it), writing into its folder until it has
SUPERVISOR = """
import signal, sys, time
from pathlib import Path
folder, delay = Path(sys.argv[1]), float(sys.argv[2])
stopping = []
signal.signal(signal.SIGTERM, (lambda *_: stopping.append(time.monotonic())) if delay >= 0 else signal.SIG_IGN)
(folder / "ready").write_text("1")
while not stopping or time.monotonic() - stopping[0] < delay:
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "alive").write_text(str(time.monotonic()))
    time.sleep(0.02)
"""


def supervisor(folder: Path, delay: float) -> subprocess.Popen:
    folder.mkdir()
    process = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(folder), str(delay)])
    deadline = time.monotonic() + 30
    while not (folder / "ready").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return process


def until(check, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_stop_is_begun_and_the_folder_removed_only_once_the_supervisor_exited(tmp_path):
    folder = tmp_path / "railyard-test-stack-x"
    process = supervisor(folder, delay=1.0)
    reaper = stack_stop_later.stop_later(process, folder)
    assert process.poll() is None and folder.is_dir()  # the caller did not wait for the stop
    assert reaper.poll() is None  # waiting for the supervisor
    until(lambda: process.poll() is not None)
    assert process.returncode == 0  # stopped by its SIGTERM, gracefully: not killed
    assert reaper.wait(30) == 0
    assert not folder.exists()


def test_a_supervisor_that_does_not_stop_is_killed_after_the_grace(tmp_path):
    folder = tmp_path / "railyard-test-stack-y"
    process = supervisor(folder, delay=-1)  # ignores SIGTERM
    reaper = stack_stop_later.stop_later(process, folder, grace=0.5)
    until(lambda: process.poll() is not None)
    assert process.returncode == -9
    assert reaper.wait(30) == 0 and not folder.exists()


def test_a_supervisor_already_gone_has_its_folder_removed(tmp_path):
    folder = tmp_path / "railyard-test-stack-z"
    process = supervisor(folder, delay=0)
    process.terminate()
    process.wait(30)
    assert stack_stop_later.stop_later(process, folder).wait(30) == 0 and not folder.exists()


@pytest.mark.parametrize("zombie", [True, False], ids=["a zombie", "another process on its pid"])
def test_a_zombie_or_a_reused_pid_is_not_the_supervisor_running(tmp_path, zombie):
    process = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({0.2 if zombie else 30})"])
    started = psutil.Process(process.pid).create_time()
    try:
        if zombie:
            until(lambda: psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE)
            assert not stack_stop_later._running(process.pid, started)
        else:
            assert stack_stop_later._running(process.pid, started)
            assert not stack_stop_later._running(process.pid, started - 1)
    finally:
        process.kill()
        process.wait()
