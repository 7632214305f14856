"""Threads sharing one railyard_client Session refresh its token once (session.py `Session.refresh`): a refresh token
works once, and 8 threads on one client whose token had expired made 8 refresh grants with the same refresh token (a
real server refuses 7: those threads' calls failed, and one rotating refresh tokens may end the session)."""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
from urllib.parse import parse_qsl

import httpx
import pytest
from railyard_client import session
from railyard_client.session import read_credentials, write_credentials

THREADS = 8
SIGNED_IN = {"url": "http://gateway.test", "client_id": "api-client", "client_secret": "s", "username": "alice",
             "access_token": "access-0", "refresh_token": "refresh-0"}


@pytest.fixture
def server(monkeypatch):
    """A token endpoint as the server's: each refresh token works once (a spent one is refused 401 invalid_grant),
    and a grant takes 50 ms, so that threads asking at once overlap; an API route that answers 401 to any token but
    the newest. The grants' forms, in order."""
    grants: list[dict[str, str]] = []
    lock = threading.Lock()
    current = {"access": "none-yet", "refresh": "refresh-0"}  # access-0, the file's, is refused

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == session.TOKEN_PATH:
            form = dict(parse_qsl(request.content.decode()))
            time.sleep(0.05)
            with lock:
                grants.append(form)
                if form.get("refresh_token") != current["refresh"]:
                    return httpx.Response(401, json={"error": "invalid_grant", "error_description": "token spent"})
                number = len(grants)
                current.update(access=f"access-{number}", refresh=f"refresh-{number}")
                return httpx.Response(200, json={"access_token": current["access"],
                                                 "refresh_token": current["refresh"], "expires_in": 300})
        if request.headers["authorization"] != f"Bearer {current['access']}":
            return httpx.Response(401, json={"code": "unauthorized", "msg": "token expired"})
        return httpx.Response(200, json={"workspaces": []})

    real = httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(answer),
                                                                          **kwargs))
    return grants, current


def _at_once(work) -> list[object]:
    """`work()` in THREADS threads started together; each one's result (or the exception it raised)."""
    results: list[object] = [None] * THREADS
    start = threading.Barrier(THREADS)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = work()
        except Exception as exc:  # noqa: BLE001 - asserted by the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@contextlib.contextmanager
def _two_sessions(path):
    """Two Sessions of the credentials file at `path` (SIGNED_IN, its access token expired), as two processes reading
    it, closed at the end: the first refreshed, so it spent refresh-0 and the second's refresh is refused."""
    write_credentials(SIGNED_IN | {"expires_at": 0}, path)
    first, second = session.Session(credentials_file=path), session.Session(credentials_file=path)
    try:
        assert first.token == "access-1"  # spends refresh-0: second's refresh is refused from now on
        yield first, second
    finally:
        first.close()
        second.close()


def test_threads_sharing_an_expired_session_refresh_it_once(tmp_path, server):
    grants, _ = server
    path = tmp_path / "credentials.json"
    write_credentials(SIGNED_IN | {"expires_at": 0}, path)  # expired: the first call refreshes
    shared = session.Session(credentials_file=path)
    try:
        results = _at_once(lambda: shared.token)
    finally:
        shared.close()
    assert results == ["access-1"] * THREADS, results  # before: AuthenticationError in 7 threads
    assert [form["refresh_token"] for form in grants] == ["refresh-0"]  # before: 8 grants with refresh-0
    assert read_credentials(path)["refresh_token"] == "refresh-1"


def test_threads_whose_calls_the_server_refused_retry_with_one_refresh(tmp_path, server):
    """The token not expired by the session's clock but refused by the server (revoked, or a clock ahead): each
    thread's call got a 401 and refreshed; now the threads that waited use the one refresh's token."""
    grants, _ = server
    path = tmp_path / "credentials.json"
    write_credentials(SIGNED_IN | {"expires_at": time.time() + 3600}, path)
    shared = session.Session(credentials_file=path)
    try:
        results = _at_once(lambda: shared.post("workspaces/list", {}))
    finally:
        shared.close()
    assert results == [{"workspaces": []}] * THREADS, results
    assert len(grants) == 1, grants


def test_a_refresh_asked_for_outright_is_still_made(tmp_path, server):
    """`Session.refresh()` itself always refreshes (one at a time): only `token` and a refused call's retry skip a
    refresh another thread made while they waited."""
    grants, current = server
    path = tmp_path / "credentials.json"
    write_credentials(SIGNED_IN | {"expires_at": time.time() + 3600}, path)
    shared = session.Session(credentials_file=path)
    try:
        shared.refresh()
        shared.refresh()
        assert shared.token == current["access"] == "access-2" and len(grants) == 2
    finally:
        shared.close()


def test_a_session_whose_refresh_token_another_process_spent_takes_the_files_newer_tokens(tmp_path, server):
    """Two processes read the same credentials file (two `railyard` commands at once; here two Sessions): the first
    to refresh spends the refresh token and writes its tokens (the other's later save never writes over them); the
    other's refresh is refused, and it said "the session expired: run `railyard login` again" while the file held a
    valid sign-in. Now it takes the file's tokens, and refreshes them itself once they are about to expire."""
    grants, _ = server
    path = tmp_path / "credentials.json"
    with _two_sessions(path) as (first, second):
        assert second.token == "access-1"  # before: AuthenticationError, the session expired
        assert second.post("workspaces/list", {}) == {"workspaces": []}
        first.expires_at = 0
        assert first.token == "access-3"
        write_credentials(read_credentials(path) | {"expires_at": 0}, path)  # the file's tokens about to expire too
        second.expires_at = 0
        assert second.token == "access-5"  # refresh-1 refused, the file's refresh-3 taken and refreshed
        assert read_credentials(path)["refresh_token"] == "refresh-5"
        assert [form["refresh_token"] for form in grants] == ["refresh-0", "refresh-0", "refresh-1", "refresh-1",
                                                              "refresh-3"]


@pytest.mark.parametrize("other", [{"username": "bob"}, {"url": "http://elsewhere.test"},
                                   {"client_id": "inference-0123456789abcdef"}, {"username": None}],
                         ids=["another user", "another server", "another client", "no user"])
def test_a_refused_session_never_takes_another_sign_ins_tokens_from_the_file(tmp_path, server, other):
    """The file's newer tokens are taken only when the file's own sign-in is this session's server, user and client
    (`_take_newer_sign_in`): a `railyard login` as bob (or to another server, or as another client) after alice's
    session read the file must not turn alice's refused refresh into bob's session. The file's tokens here are ones
    the server takes, so only that check stands between them and the session; the same file as alice's is taken."""
    grants, _ = server
    path = tmp_path / "credentials.json"
    with _two_sessions(path) as (_, second):
        newer = read_credentials(path)
        write_credentials(newer | other, path)  # valid tokens, another sign-in's
        with pytest.raises(session.AuthenticationError, match="the session expired"):
            second.token  # noqa: B018 - the property refreshes
        assert (second.access_token, second.refresh_token) == ("access-0", "refresh-0")
        assert read_credentials(path) == newer | other  # nothing written over the other sign-in
        write_credentials(newer, path)  # alice's again: taken
        assert second.token == "access-1"
        assert [form["refresh_token"] for form in grants] == ["refresh-0", "refresh-0", "refresh-0"]


def test_threads_that_waited_through_a_failed_refresh_raise_its_error_not_grant_again(tmp_path, monkeypatch):
    """Under the lock, each thread that waited for a refresh that failed (the server not answering) made the grant
    again after it, one after another: 8 threads, 8 grants, the last thread's call failing after 8 of the client's
    timeouts (60 s each by default), where without the lock each had failed after one. Now the threads that waited
    raise that refresh's error (ConnectionFailed) and the grant is made once. The lock counts the threads that came
    to it, and the grant fails only once all of them wait there."""
    path = tmp_path / "credentials.json"
    write_credentials(SIGNED_IN | {"expires_at": 0}, path)
    grants: list[str] = []
    came = threading.Semaphore(0)

    def unreachable(request: httpx.Request) -> httpx.Response:
        grants.append(request.url.path)
        for _ in range(THREADS if len(grants) == 1 else 0):
            assert came.acquire(timeout=10)  # every thread at the lock (the first holds it)
        raise httpx.ConnectTimeout("timed out", request=request)

    real = httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(unreachable),
                                                                          **kwargs))
    shared = session.Session(credentials_file=path)
    lock = shared._refreshing

    class Counted:
        def __enter__(self) -> None:
            came.release()
            lock.acquire()

        def __exit__(self, *exc: object) -> None:
            lock.release()

    shared._refreshing = Counted()
    try:
        results = _at_once(lambda: shared.token)
    finally:
        shared.close()
    assert all(isinstance(result, session.ConnectionFailed) for result in results), results
    assert len(grants) == 1, grants  # before: 8, one after another


@pytest.mark.skipif(os.name != "posix", reason="owners and modes are POSIX's")
def test_a_refused_session_does_not_take_tokens_from_a_file_others_may_write(tmp_path, server):
    """Since aaf10f6b a session whose refresh was refused reads the credentials file again mid-run and takes its
    newer tokens; the file was read whatever its mode, so whoever could write it (here its group) chose the sign-in
    the session went on with. Now such a file is refused, saying what to do, and nothing of it is taken."""
    grants, _ = server
    path = tmp_path / "credentials.json"
    with _two_sessions(path) as (_, second):
        path.chmod(0o660)
        with pytest.raises(session.UnsafeCredentials, match="its group may write it"):
            second.token  # noqa: B018 - the property refreshes; before: access-1, the file's
        assert (second.access_token, second.refresh_token) == ("access-0", "refresh-0")
        path.chmod(0o600)
        assert second.token == "access-1"


def test_a_session_takes_the_files_client_secret_with_its_newer_tokens(tmp_path, monkeypatch):
    """The client's secret was rotated and `railyard login` run again with the new one while a session (a notebook's
    Client) held the old: its refresh is refused, it takes the file's newer tokens (`_take_newer_sign_in`), but it
    kept its own, rotated-out secret, so the grant that refreshes them was refused too: "the session expired". Now
    the file's secret (same client id) comes with its tokens."""
    secrets = {"now": "s"}
    grants: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        secret = base64.b64decode(request.headers["authorization"].split()[1]).decode().partition(":")[2]
        grants.append((form.get("refresh_token", ""), secret))
        if secret != secrets["now"]:
            return httpx.Response(401, json={"error": "invalid_client", "error_description": "bad client secret"})
        if form.get("refresh_token") != "refresh-9":
            return httpx.Response(401, json={"error": "invalid_grant", "error_description": "token spent"})
        return httpx.Response(200, json={"access_token": "access-10", "refresh_token": "refresh-10",
                                         "expires_in": 300})

    real = httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(answer),
                                                                          **kwargs))
    path = tmp_path / "credentials.json"
    write_credentials(SIGNED_IN | {"expires_at": 0}, path)
    notebook = session.Session(credentials_file=path)
    try:
        secrets["now"] = "s2"  # rotated; then `railyard login` with the new secret (its tokens about to expire)
        write_credentials(SIGNED_IN | {"client_secret": "s2", "access_token": "access-9",
                                       "refresh_token": "refresh-9", "expires_at": 0}, path)
        assert notebook.token == "access-10"  # before: AuthenticationError, the session expired
        assert grants == [("refresh-0", "s"), ("refresh-9", "s2")]  # before: refresh-9 with s, refused
        assert notebook.client_secret == "s2" and read_credentials(path)["refresh_token"] == "refresh-10"
    finally:
        notebook.close()


@pytest.mark.skipif(os.name != "posix", reason="owners and modes are POSIX's")
def test_tokens_refreshed_while_the_file_is_unsafe_are_kept_in_memory_not_written(tmp_path, server):
    """A file made writable by its group after the session read it: the refresh works, its tokens are not written
    there (the save reads the file under its lock, and refuses it), and the session goes on with them, warning
    TokensNotSaved as for an unwritable file, rather than fail the call that refreshed."""
    path = tmp_path / "credentials.json"
    write_credentials(SIGNED_IN | {"expires_at": 0}, path)
    shared = session.Session(credentials_file=path)
    try:
        path.chmod(0o660)
        with pytest.warns(session.TokensNotSaved, match="its group may write it"):
            assert shared.token == "access-1"
        assert isinstance(shared.unsaved, PermissionError)
        assert read_credentials(path, checked=False)["refresh_token"] == "refresh-0"  # nothing written into it
    finally:
        shared.close()
