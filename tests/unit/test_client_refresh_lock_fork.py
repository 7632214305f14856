"""A process that forks while another of its threads refreshes a session (holds its refresh lock: the grant's HTTP
call, the save) gives the child a lock held by a thread the child does not have: until session 43 the child's first
refresh (an expired token, a call the server refused) waited for ever. The session module makes each live session's
lock new in a forked child (os.register_at_fork, railyard_client.session._new_refresh_locks)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
import warnings

import pytest
from railyard_client.session import Session, _credentials_lock, read_credentials, save_sign_in

pytestmark = pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="POSIX: fork")


@contextlib.contextmanager
def _forked_while_another_thread_holds(lock):
    """Forks while another thread of this process is inside `lock` (a lock or a context manager) and yields fork()'s
    answer; in the parent that thread lets go as the block ends (a child leaves by os._exit)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() in a process with threads
            yield os.fork()
    finally:
        release.set()
        thread.join()


def test_a_childs_refresh_does_not_wait_for_the_parents_thread_that_held_the_lock_at_the_fork(tmp_path):
    session = Session("http://127.0.0.1:9", token="t", credentials_file=tmp_path / "credentials.json")
    refreshed: list[int] = []
    session._refresh = lambda: refreshed.append(os.getpid())  # the grant itself is not the point: the lock is
    with _forked_while_another_thread_holds(session._refreshing) as pid:  # a refresh under way in another thread
        if pid == 0:  # the child: its main thread refreshes, given 5 s by a watchdog (it takes microseconds). Not
            # a new thread: the child's first one may get the ident of the parent's thread that holds the lock (its
            # stack's address, free in the child), and an RLock takes that for its owner coming back
            code = 1
            try:
                threading.Thread(target=lambda: (time.sleep(5), os._exit(2)), daemon=True).start()
                session.refresh()
                code = 0 if refreshed == [os.getpid()] else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # was 2: the child's refresh waited on the parent's thread
    session.refresh()  # the parent's lock is its own, released: a refresh as ever
    assert refreshed == [os.getpid()]
    session.close()


def test_a_childs_save_and_the_parents_next_do_not_wait_on_the_file_lock_another_thread_held_at_the_fork(tmp_path):
    """The refresh lock is held through the save, which flocks the credentials file's `.lock`: a flock belongs to the
    open file, which the child's copy of the descriptor keeps locked once the parent's thread closes its own. So a
    fork during another thread's save made the child's save wait for ever and the parent's next save (a refresh's,
    its refresh lock held) wait for as long as the child lived. The lock is released explicitly (LOCK_UN: for every
    copy) before its descriptor is closed (railyard_client.session._credentials_lock)."""
    path = tmp_path / "credentials.json"
    sign_in = {"url": "http://127.0.0.1:9", "client_id": "api-client", "client_secret": "s", "username": "u",
               "access_token": "a", "refresh_token": "r", "expires_at": 1.0}
    save_sign_in(sign_in, path)
    saved_in_child, saved_told = os.pipe()
    with _forked_while_another_thread_holds(_credentials_lock(path)) as pid:  # a save under way in another thread
        if pid == 0:  # the child saves (its watchdog: 5 s), says so, and lives on as a pool worker would
            try:
                threading.Thread(target=lambda: (time.sleep(5), os._exit(2)), daemon=True).start()
                save_sign_in({**sign_in, "access_token": "child"}, path)
                os.write(saved_told, b"1")
                time.sleep(10)
            finally:
                os._exit(1)
        os.close(saved_told)
    try:  # the parent's save has ended
        assert os.read(saved_in_child, 1) == b"1", "the child's save waited on the lock its copy kept"  # was 2 (EOF)
        done = threading.Event()
        threading.Thread(target=lambda: (save_sign_in({**sign_in, "access_token": "parent"}, path), done.set()),
                         daemon=True).start()
        assert done.wait(3), "the parent's save waited on the lock its forked child kept"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(saved_in_child)
    assert read_credentials(path)["access_token"] == "parent"


def test_a_child_forked_inside_a_save_leaves_the_parents_lock_held(tmp_path):
    """The holder unlocks its `.lock` before closing it (the test above), but not in a child forked inside the save:
    the flock is the open file's, shared with the parent, whose save would go on unlocked."""
    path, lock = tmp_path / "credentials.json", tmp_path / "credentials.json.lock"
    saving = contextlib.ExitStack()
    saving.enter_context(_credentials_lock(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child ends the save it was forked in
        code = 1
        try:
            saving.close()
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    other = os.open(lock, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # still the parent's
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        saving.close()
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the parent's own end
    finally:
        os.close(other)
