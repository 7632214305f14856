"""How a program filters the SDK's TokensNotSaved warning (decided in session 43, client/README and the session
module's doc): by its category, `warnings.filterwarnings("ignore", category=railyard_client.TokensNotSaved)` or
`-W ignore::railyard_client.TokensNotSaved`. A filter by `module="railyard_client"` does not match it: since session
42 it is attributed to the program's own line that led to the refresh (`_warn_each_time`: its module, file and line,
so that it points where the program called), no longer to the SDK's module."""

from __future__ import annotations

import errno
import warnings

import pytest
from railyard_client import TokensNotSaved, session
from railyard_client.session import Session


@pytest.fixture
def unsaved(tmp_path, monkeypatch):
    """A session from the credentials file whose save of refreshed tokens fails (a full disk): each call warns."""
    client = Session("http://127.0.0.1:9", token="t", credentials_file=tmp_path / "credentials.json")
    client.persist = True

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(session, "save_refreshed", full)

    def refreshed() -> None:
        client.unsaved = None  # saved until now: this failed save warns
        client._save()

    yield refreshed
    client.close()


def shown(refreshed, *filters: str) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for option in filters:
            warnings._setoption(option)  # as `python -W <option>` reads it
        refreshed()
    return seen


def test_the_category_filters_it_and_a_module_filter_does_not(unsaved):
    (warning,) = shown(unsaved)
    assert warning.category is TokensNotSaved and warning.filename == __file__  # the program's line
    assert shown(unsaved, "ignore::railyard_client.TokensNotSaved") == []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=TokensNotSaved)
        unsaved()
    assert seen == []
    with warnings.catch_warnings(record=True) as seen:  # the module filter: the SDK's module is not where it is shown
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", module="railyard_client")
        unsaved()
    assert [w.category for w in seen] == [TokensNotSaved]
    with pytest.raises(TokensNotSaved), warnings.catch_warnings():
        warnings.filterwarnings("error", category=TokensNotSaved)
        unsaved()
