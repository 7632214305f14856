"""An install waiting for its environment's file lock (services/task_scheduler/packaging.py, _lock: another process on
the machine installs the same requirements) leaves nothing behind when it is cancelled (its claim taken over, the
service's stop). Before, a thread of the default executor waited in a blocking flock: the cancel ended the await
only, the thread waited on until the other install let the lock go (then took it, dropped by nobody's), and a
process's exit (asyncio's shutdown of the default executor) waited for that thread."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import sys
import threading

import pytest

from services.task_scheduler import packaging
from shared.settings import TaskSettings

SHA = "6" * 64


@contextlib.contextmanager
def another_install(root):
    """The environment's file lock held as another process's install holds it (an open file of its own: flock
    excludes it from the installer's, in this process too)."""
    lock_path = packaging.env_dir(root, SHA).parent / f"{SHA}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def waiting_in_packaging() -> list[str]:
    """The threads (other than this one) whose stack is in packaging.py now."""
    here = threading.get_ident()
    found = []
    for ident, frame in sys._current_frames().items():
        while frame is not None and ident != here:
            if frame.f_code.co_filename == packaging.__file__:
                found.append(f"{ident}: {frame.f_code.co_name}")
                break
            frame = frame.f_back
    return found


class _Tries:
    """packaging's fcntl, counting the install's tries of the lock (the old code's blocking flock too)."""

    def __init__(self) -> None:
        self.count = 0
        self.LOCK_EX, self.LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

    def flock(self, handle, operation) -> None:
        self.count += 1
        fcntl.flock(handle, operation)


async def tried(tries: _Tries, at_least: int, within: float = 20.0) -> None:
    """Until the install has tried the lock `at_least` times (bounded): a bare sleep of 2 LOCK_POLLs let a loaded
    machine cancel the install before it reached the lock, where the old thread could not be seen."""
    async with asyncio.timeout(within):
        while tries.count < at_least:  # noqa: ASYNC110 - counted on a thread too (the old code's blocking flock)
            await asyncio.sleep(0.01)


async def test_an_install_cancelled_while_another_holds_the_lock_leaves_no_thread_waiting(tmp_path, monkeypatch):
    tries = _Tries()
    monkeypatch.setattr(packaging, "fcntl", tries)
    with another_install(tmp_path):
        install = asyncio.create_task(packaging.install_env(tmp_path, SHA, "x==1\n", TaskSettings()))
        await tried(tries, 1)  # tried the lock, waiting for it (the old code: a thread in flock)
        await asyncio.sleep(0.05)
        assert not install.done()
        install.cancel()
        with pytest.raises(asyncio.CancelledError):
            await install
        await asyncio.sleep(0.2)  # the old thread stays in flock: time enough to see it
        assert waiting_in_packaging() == []  # was: ['<id>: _lock'], a thread in flock until the lock was let go


async def test_an_install_waits_for_the_lock_and_takes_it_once_let_go(tmp_path, monkeypatch):
    installed: list[str] = []

    async def pip(env, scratch, wheelhouse, settings):
        installed.append((scratch / packaging.REQUIREMENTS).read_text())
        env.mkdir(parents=True, exist_ok=True)
        return True, ""

    monkeypatch.setattr(packaging, "_pip", pip)
    tries = _Tries()
    monkeypatch.setattr(packaging, "fcntl", tries)
    with another_install(tmp_path):
        install = asyncio.create_task(packaging.install_env(tmp_path, SHA, "x==1\n", TaskSettings()))
        await tried(tries, 2)  # refused once, tried again: waiting for it
        assert not install.done() and installed == []
    async with asyncio.timeout(10):
        assert await install == (True, None)
    assert installed == ["x==1\n"]
    with another_install(tmp_path):  # let go at the install's end (else BlockingIOError)
        pass


async def test_the_lock_is_held_for_the_whole_install_a_collection_included(tmp_path, monkeypatch):
    """The install's handle of the lock file is the lock (flock goes with the open file): held by install_env until
    its end, however long the installer runs and whatever the garbage collector does meanwhile; a handle nobody
    held would be closed by a collection, and another process would install the same environment at once."""
    during: list[str] = []

    def another_tries() -> str:
        with open(packaging.env_dir(tmp_path, SHA).parent / f"{SHA}.lock", "a") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "held"
            return "taken by another"

    async def pip(env, scratch, wheelhouse, settings):
        gc.collect()
        during.append(another_tries())
        env.mkdir(parents=True, exist_ok=True)
        return True, ""

    monkeypatch.setattr(packaging, "_pip", pip)
    async with asyncio.timeout(10):
        assert await packaging.install_env(tmp_path, SHA, "x==1\n", TaskSettings()) == (True, None)
    assert during == ["held"]
    with another_install(tmp_path):  # let go at the end
        pass
