"""workspaces/list_inference_clients' cursor (shared/paging.py name_key_cursor: created_at in microseconds, a dot, the
client id), the one paged route using it. What a caller sends that no page answered, too long or malformed, is a
typed 400 `invalid_request` whichever check meets it first: the command's `cursor` field (60 characters at most)
or after_name_key (a key of NAME_KEY_MAX characters at most); never a 500. And the maker checks the parser reads
back what it makes: before, name_key_cursor made a cursor of any key, and a key past NAME_KEY_MAX made a next cursor
the next page refused as "not a next cursor" (a 400 blaming the caller for the server's own cursor)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared import paging
from shared.errors import InvalidRequest, validation_message
from shared.messages.auth import ListInferenceClients

COMMAND = "workspaces/list_inference_clients"
AT = datetime(2026, 12, 4, 3, 50, 0, 123456, tzinfo=UTC)
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
KEY_MAX = 39
"""A key's characters at most: the parser's (paging.NAME_KEY_MAX), with the microseconds the field's 60."""


def answer_to(cursor: str) -> tuple[datetime, str] | None:
    """What the route answers for `cursor`, as the gateway and the bus read a command: the model, then the handler's
    after_name_key (both raise InvalidRequest, a 400 invalid_request, for what they refuse)."""
    try:
        command = ListInferenceClients.model_validate({"workspace_id": 1, "limit": 2, "cursor": cursor})
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors())) from None
    return paging.after_name_key(command.cursor, COMMAND)


# A fixed id (not secrets.token_hex at import): pytest-xdist workers must collect the same test ids.
@pytest.mark.parametrize("key", ["inference-72d7b827d16a7ff8", "i" * KEY_MAX])
@pytest.mark.parametrize("at", [AT, EARLIEST, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)])
def test_every_cursor_it_makes_reads_back(at, key):
    """An inference client's id as auth makes it (`inference-` and 16 hex digits) and the longest key, at the
    earliest and latest times: the cursor passes the command's field and reads back whole."""
    assert getattr(paging, "NAME_KEY_MAX", KEY_MAX) == KEY_MAX
    assert answer_to(paging.name_key_cursor(at, key)) == (at, key)


@pytest.mark.parametrize("key", ["i" * (KEY_MAX + 1), "inference-" + "0" * 32, "", "-ab", "a b", "a/b",
                                 "a\x00b", "ä"])
def test_a_key_it_could_not_read_back_is_refused_where_it_is_made(key):
    """On the old code: a cursor the next page answered 400 "not a next cursor" for."""
    with pytest.raises(ValueError, match="a name_key_cursor cannot hold the key"):
        paging.name_key_cursor(AT, key)


@pytest.mark.parametrize("cursor", [
    "1." + "a" * KEY_MAX + "b",  # one past the key's limit, the cursor within the field's 60
    "-" + "9" * 18 + "." + "a" * (KEY_MAX + 1),  # 60 characters: the field takes it, the parser not
    "1." + "a" * 58, "1." + "a" * 500, "9" * 61, "x" * 100_000,  # past the field's 60
    "", "1.", ".a", "1.a.b c", "1,a", "1.\u0430", "\u0661.a", "1.a\n", "1.a\x00", "-62135596800000001.a",
    "253402300800000000.a", "99999999999999999999.a"])
def test_an_over_long_or_malformed_cursor_is_a_typed_400(cursor):
    with pytest.raises(InvalidRequest) as refused:
        answer_to(cursor)
    assert refused.value.status == 400 and refused.value.code == "invalid_request"
    assert "cursor" in refused.value.msg
