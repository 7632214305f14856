"""A process that forks while another of its threads refreshes a session (holds its refresh lock: the grant's HTTP
call, the save) gives the child a lock held by a thread the child does not have: until session 43 the child's first
refresh (an expired token, a call the server refused) waited for ever. The session module makes each live session's
lock new in a forked child (os.register_at_fork, railyard_client.session._new_refresh_locks)."""

from __future__ import annotations

import os
import threading
import time
import warnings

import pytest
from railyard_client.session import Session

pytestmark = pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="POSIX: fork")


def test_a_childs_refresh_does_not_wait_for_the_parents_thread_that_held_the_lock_at_the_fork(tmp_path):
    session = Session("http://127.0.0.1:9", token="t", credentials_file=tmp_path / "credentials.json")
    refreshed: list[int] = []
    session._refresh = lambda: refreshed.append(os.getpid())  # the grant itself is not the point: the lock is
    holding, release = threading.Event(), threading.Event()

    def refreshing() -> None:  # a refresh under way in another thread when the process forks
        with session._refreshing:
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=refreshing)
    thread.start()
    assert holding.wait(10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() in a process with threads
            pid = os.fork()
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
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0  # was 2: the child's refresh waited on the parent's thread
    session.refresh()  # the parent's lock is its own, released: a refresh as ever
    assert refreshed == [os.getpid()]
    session.close()
