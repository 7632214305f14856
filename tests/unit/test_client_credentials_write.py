"""The credentials file's write (railyard_client/session.py `write_credentials`): a temporary file beside it, 0600,
renamed over it. The temporary file holds the tokens as well; before, a failure between its creation and its rename
(a value JSON cannot hold, a full disk, a Ctrl-C) left a `.credentials-XXXXXXXX` in the config folder for good, and
nothing ever removed one a killed process left."""

from __future__ import annotations

import json
import os
import re
import stat
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


FROM_LOGIN = {"url": "http://gateway.test", "client_id": "api-client", "client_secret": "s", "username": "alice",
              "access_token": "access-0", "refresh_token": "refresh-0", "expires_at": 0}  # expired: refreshed at once


@pytest.fixture
def token_endpoint(monkeypatch):
    """Every httpx.Client the SDK makes answers the token endpoint with access-N/refresh-N (spending refresh-(N-1):
    a refresh token works once, as the server's do) and workspaces/list with one workspace. The forms it was sent."""
    import httpx

    forms: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == session.TOKEN_PATH:
            forms.append(request.content.decode())
            spent = f"refresh_token=refresh-{len(forms) - 1}"
            assert spent in forms[-1], f"refreshed with a spent or unknown token: {forms[-1]}"
            return httpx.Response(200, json={"access_token": f"access-{len(forms)}",
                                             "refresh_token": f"refresh-{len(forms)}", "expires_in": 300})
        assert request.headers["authorization"] == f"Bearer access-{len(forms)}"
        return httpx.Response(200, json={"workspaces": [{"id": 1, "name": "default"}]})

    real = httpx.Client
    monkeypatch.setattr(session.httpx, "Client", lambda **kwargs: real(transport=httpx.MockTransport(answer),
                                                                          **kwargs))
    return forms


def disk_full(*_: object) -> None:
    raise OSError(28, "No space left on device")


def test_a_refreshed_token_that_cannot_be_saved_is_kept_for_the_session_and_said_once(tmp_path, token_endpoint,
                                                                                      monkeypatch):
    """A session from the credentials file refreshed its token (spending the file's refresh token) and could not
    write the new tokens back (a full disk at the rename): the OSError came out of the call and the refreshed tokens
    were lost with it, the user signed out. Now the session goes on with them, warns once (TokensNotSaved), and
    saves them at a later refresh once the file can be written."""
    import warnings

    path = tmp_path / "credentials.json"
    write_credentials(FROM_LOGIN, path)
    client = session.Session(credentials_file=path)
    try:
        with monkeypatch.context() as full:
            full.setattr(session.os, "replace", disk_full)
            with pytest.warns(session.TokensNotSaved, match="could not be saved .*No space left on device"):
                assert client.token == "access-1"  # before: OSError, access-1 and refresh-1 lost
            assert isinstance(client.unsaved, OSError) and read_credentials(path) == FROM_LOGIN
            client.expires_at = 0  # the next refresh, the disk still full: the kept refresh token, no second warning
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert client.token == "access-2"
            assert read_credentials(path) == FROM_LOGIN and left_beside(path) == []
        client.expires_at = 0  # the disk has room again: the refresh writes over the tokens the file still holds
        assert client.token == "access-3" and client.unsaved is None
        assert read_credentials(path) == FROM_LOGIN | {"access_token": "access-3", "refresh_token": "refresh-3",
                                                       "expires_at": client.expires_at}
    finally:
        client.close()
    assert len(token_endpoint) == 3


def test_railyard_token_prints_a_refreshed_token_that_cannot_be_saved(tmp_path, token_endpoint, monkeypatch, capsys):
    """`railyard token` (the SDK's command) with a file it cannot write: before, 'railyard: error: unexpected
    OSError', exit 1, nothing on stdout and the refreshed token lost. Now as the server's `python -m shared.cli token`
    (09d31676): the token on stdout, the failure on stderr, exit 0. Another command goes on with the refreshed token
    and says it once as a warning line of its own."""
    from railyard_client import cli

    path = tmp_path / "credentials.json"
    for name in ("RAILYARD_CLIENT_URL", "RAILYARD_CLIENT_TOKEN", "RAILYARD_CLIENT_ID", "RAILYARD_CLIENT_SECRET",
                 "RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD", "RAILYARD_CLIENT_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(path))
    write_credentials(FROM_LOGIN, path)
    monkeypatch.setattr(session.os, "replace", disk_full)
    assert cli.main(["token"]) == 0
    said = capsys.readouterr()
    assert said.out == "access-1\n"
    assert "could not be saved" in said.err and "No space left on device" in said.err
    assert "railyard login" in said.err and "access-1" not in said.err and said.err.count("\n") == 1

    path.write_text(json.dumps(FROM_LOGIN | {"refresh_token": "refresh-1"}))  # as if saved: the next refresh spends it
    assert cli.main(["workspaces", "list", "--json"]) == 0  # refreshed to access-2, used, not saved
    said = capsys.readouterr()
    assert json.loads(said.out)[0]["name"] == "default"
    assert said.err.startswith("railyard: warning: the refreshed tokens could not be saved") and said.err.count(
        "\n") == 1


def _unsaved_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, session.TokensNotSaved)]


def test_each_later_failure_to_save_the_tokens_is_said_under_pythons_default_filter(tmp_path, token_endpoint,
                                                                                     monkeypatch):
    """A long-running SDK process: the tokens could not be saved (said), a later refresh saved them, then the file
    failed again with the same error. Python's default filter shows a warning once per place and text, and the
    warning came from one line with the same words: the second failure, the sign-in lost again, was silent. So was
    the first failure of a second Client in the same process. Now each change from saved to not saved is said (and
    not each refresh while the file stays unwritable)."""
    import warnings

    path = tmp_path / "credentials.json"
    write_credentials(FROM_LOGIN, path)
    client = session.Session(credentials_file=path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            with monkeypatch.context() as full:
                full.setattr(session.os, "replace", disk_full)
                assert client.token == "access-1"
                client.expires_at = 0
                assert client.token == "access-2"  # still unwritable: not said again
            assert len(_unsaved_warnings(caught)) == 1
            client.expires_at = 0
            assert client.token == "access-3" and client.unsaved is None  # saved
            with monkeypatch.context() as full:
                full.setattr(session.os, "replace", disk_full)
                client.expires_at = 0
                assert client.token == "access-4"
            said = _unsaved_warnings(caught)
            assert len(said) == 2, said  # before: 1, the second failure silent
            assert said[0] == said[1]  # the same words: what the default filter's record kept out
            # another session of the same process, from the same file, failing the same way is said as well
            path.write_text(json.dumps(FROM_LOGIN | {"access_token": "access-4", "refresh_token": "refresh-4"}))
            other = session.Session(credentials_file=path)
            try:
                with monkeypatch.context() as full:
                    full.setattr(session.os, "replace", disk_full)
                    assert other.token == "access-5"
            finally:
                other.close()
            assert len(_unsaved_warnings(caught)) == 3
    finally:
        client.close()
    # a program's own filter still decides: ignored, none is shown
    path.write_text(json.dumps(FROM_LOGIN | {"access_token": "access-5", "refresh_token": "refresh-5"}))
    ignoring = session.Session(credentials_file=path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore", session.TokensNotSaved)
            with monkeypatch.context() as full:
                full.setattr(session.os, "replace", disk_full)
                assert ignoring.token == "access-6"
            assert _unsaved_warnings(caught) == [] and ignoring.unsaved is not None
    finally:
        ignoring.close()


def test_the_warning_points_at_the_sdk_users_own_line(tmp_path, token_endpoint, monkeypatch):
    """The warning's place is the caller's line outside railyard_client (here: this test), not the SDK's own."""
    import warnings

    path = tmp_path / "credentials.json"
    write_credentials(FROM_LOGIN, path)
    client = session.Session(credentials_file=path)
    try:
        monkeypatch.setattr(session.os, "replace", disk_full)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            assert client.token == "access-1"
        [warning] = [w for w in caught if issubclass(w.category, session.TokensNotSaved)]
        assert warning.filename == __file__
    finally:
        client.close()


def test_a_client_says_its_tokens_are_not_saved_publicly(tmp_path, token_endpoint, monkeypatch):
    """`Client.tokens_not_saved`: `railyard token` read `client._session.unsaved` and `_session.credentials_file`, a
    private attribute of another module; an SDK user had no public way to ask. A TokensNotSaved with the file and the
    OSError while the tokens are not saved, None once a refresh saved them."""
    import warnings

    import railyard_client
    from railyard_client import Client

    path = tmp_path / "credentials.json"
    for name in ("RAILYARD_CLIENT_URL", "RAILYARD_CLIENT_TOKEN", "RAILYARD_CLIENT_ID", "RAILYARD_CLIENT_SECRET",
                 "RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD", "RAILYARD_CLIENT_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    write_credentials(FROM_LOGIN, path)
    with Client(credentials_file=path) as client:
        with monkeypatch.context() as full, warnings.catch_warnings():
            warnings.simplefilter("ignore", railyard_client.TokensNotSaved)
            full.setattr(session.os, "replace", disk_full)
            assert client.token == "access-1"
            not_saved = client.tokens_not_saved  # before: AttributeError
            assert isinstance(not_saved, railyard_client.TokensNotSaved)
            assert not_saved.path == path and isinstance(not_saved.error, OSError)
            assert "No space left on device" in str(not_saved) and str(path) in str(not_saved)
        client._session.expires_at = 0  # the next refresh saves them
        assert client.token == "access-2" and client.tokens_not_saved is None


def test_tokens_not_saved_is_exported_and_documented_as_the_errors_are():
    """`from railyard_client import TokensNotSaved` (a filter a program sets names it): importable only from
    railyard_client.session before, and docs/sdk.md's errors did not name it."""
    from pathlib import Path

    import railyard_client
    from railyard_client import _docgen

    assert railyard_client.TokensNotSaved is session.TokensNotSaved  # before: AttributeError
    assert "TokensNotSaved" in railyard_client.__all__
    page = (Path(__file__).resolve().parents[2] / "docs" / "sdk.md").read_text()
    warnings_part = page[page.index("\n## Errors\n"):page.index("\n## The `railyard` command\n")]
    assert "\n- `TokensNotSaved`: " in warnings_part
    assert _docgen.exported_warnings() == ["TokensNotSaved"]


def test_tokens_not_saved_holds_when_the_programs_filter_makes_the_warning_an_error(tmp_path, token_endpoint,
                                                                                   monkeypatch):
    """A program run with `-W error` (or `warnings.simplefilter("error")`) has the TokensNotSaved raised out of the
    call that refreshed, as it asked. The session recorded why only after warning, so the raise skipped it:
    `Client.tokens_not_saved` said None (saved) while the file held the spent refresh token, and each later refresh
    raised again. Now it is recorded first: said (raised) once, and said by `not_saved` until a save works."""
    import warnings

    path = tmp_path / "credentials.json"
    write_credentials(FROM_LOGIN, path)
    client = session.Session(credentials_file=path)
    try:
        monkeypatch.setattr(session.os, "replace", disk_full)
        with warnings.catch_warnings():
            warnings.simplefilter("error", session.TokensNotSaved)
            with pytest.raises(session.TokensNotSaved):
                client.token  # noqa: B018 - the property refreshes
            assert client.not_saved is not None and client.access_token == "access-1"  # before: None
            client.expires_at = 0
            assert client.token == "access-2"  # still not saved: not raised again
            assert isinstance(client.not_saved.error, OSError)
    finally:
        client.close()


def test_tokens_not_saved_is_copied_and_pickled_with_its_file_and_error():
    """TokensNotSaved takes the file and the error (79c061c7): BaseException's copy and pickle call the class with its
    message alone, a TypeError (copy.copy; unpickling one a ProcessPoolExecutor's worker raised under `-W error`)."""
    import copy
    import pickle
    from pathlib import Path

    warning = session.TokensNotSaved(Path("~/.config/railyard/credentials.json"),
                                     OSError(28, "No space left on device"))
    for again in (copy.copy(warning), pickle.loads(pickle.dumps(warning))):  # before: TypeError, 'error' missing
        assert type(again) is session.TokensNotSaved and str(again) == str(warning)
        assert again.path == warning.path and again.error.args == warning.error.args


posix_only = pytest.mark.skipif(os.name != "posix", reason="owners and modes are POSIX's")


@posix_only
def test_a_credentials_file_of_another_user_or_that_others_may_write_is_refused(tmp_path, monkeypatch, capsys):
    """Whoever can write the credentials file chooses the server the session's tokens and client secret are sent to
    and the user its commands run as; it was read whatever its owner and mode (and, since aaf10f6b, again mid-run).
    Now, as ssh refuses such a key, a file that is not the user's or that its group or others may write is refused,
    with what to do; our own save writes it 0600 whatever the umask."""
    from railyard_client import cli
    from railyard_client.errors import ConfigurationError

    folder = tmp_path / "railyard"
    path = folder / "credentials.json"
    old_umask = os.umask(0o002)  # a umask that leaves new files group-writable (a CI host's may)
    try:
        write_credentials(SIGNED_IN, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_credentials(path) == SIGNED_IN
    for mode, who in ((0o620, "its group may write it (mode 0620)"), (0o602, "others may write it (mode 0602)"),
                      (0o666, "its group and others may write it (mode 0666)")):
        path.chmod(mode)
        with pytest.raises(session.UnsafeCredentials, match=re.escape(who) + ".*" + re.escape(f"`chmod 600 {path}`")):
            read_credentials(path)  # before: SIGNED_IN
    path.chmod(0o640)  # readable by its group: the rule is about who may write it
    assert read_credentials(path) == SIGNED_IN
    path.chmod(0o600)
    folder.chmod(0o777)  # decision: a folder others may write is not refused (what is checked is the file opened)
    assert read_credentials(path) == SIGNED_IN
    assert read_credentials(path, checked=False) == SIGNED_IN
    real_uid = os.getuid()
    monkeypatch.setattr(session.os, "getuid", lambda: real_uid + 1)  # the file is now another user's
    theirs = re.escape(f"another user's (uid {real_uid}, you are {real_uid + 1})")
    with pytest.raises(session.UnsafeCredentials, match=theirs + ".*remove it and run `railyard login` again"):
        read_credentials(path)
    assert read_credentials(path, checked=False) == SIGNED_IN  # the stack's own files, read by login
    with pytest.raises(ConfigurationError, match="refusing the credentials file"):
        session.Session(credentials_file=path)  # before: signed in as the file said
    for name in ("RAILYARD_CLIENT_URL", "RAILYARD_CLIENT_TOKEN", "RAILYARD_CLIENT_ID", "RAILYARD_CLIENT_SECRET",
                 "RAILYARD_CLIENT_USERNAME", "RAILYARD_CLIENT_PASSWORD", "RAILYARD_CLIENT_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAILYARD_CLIENT_CREDENTIALS", str(path))
    assert cli.main(["token"]) == 3  # ConfigurationError's code, one line naming the file
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith(f"railyard: error: refusing the credentials file {path}: it is "
                                                  "another user's") and said.err.count("\n") == 1, said

    def signed_in(self, form):  # the server's answer to railyard login's password grant
        self.access_token, self.refresh_token, self.expires_at = "access-9", "refresh-9", 9e99

    monkeypatch.setattr(session.Session, "_grant", signed_in)
    assert cli.main(["login", "--url", "http://127.0.0.1:28051", "--username", "alice", "--password", "password1",
                     "--client-secret", "s"]) == 1  # the tokens not saved: not written into another user's file
    said = capsys.readouterr().err
    assert said.startswith(f"railyard: error: signed in, but the tokens could not be saved in {path}: refusing the "
                           f"credentials file {path}: it is another user's") and said.count("\n") == 1, said
    assert read_credentials(path, checked=False) == SIGNED_IN
