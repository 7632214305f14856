"""shared/pg_text.py: the one place NULs are removed from what a row keeps of a bus message (PostgreSQL refuses U+0000
in text and jsonb), used by the dead letters (shared/consumers.py) and the log store's quarantine. The function is
checked against PostgreSQL's own rule: no NUL in the text, and the headers' JSON free of the \\u0000 escape jsonb
refuses, while every other character (a header's own backslash-u0000 text among them) is kept as it was."""

from __future__ import annotations

import json

from services.log_store import handlers as log_store_handlers
from shared import consumers
from shared.pg_text import headers_jsonb, no_nul


def test_no_nul_removes_nuls_only():
    assert no_nul("a\x00b\x00\x00c") == "abc"
    assert no_nul("\x00") == ""
    assert no_nul("a\\u0000b") == "a\\u0000b"  # the six characters backslash-u0000 are text, not a NUL
    assert no_nul("é\x01\x7f\U0001f600") == "é\x01\x7f\U0001f600"  # other control and non-ASCII characters kept
    assert no_nul(12) == "12" and no_nul(None) == "None"  # text of what is not a string, as str() writes it


def test_headers_jsonb_removes_nuls_from_the_strings_not_the_json_text():
    headers = {"k\x00ey": "v\x00alue", "path": "C:\\u0000", "text": "a\\u0000b", "n": 3, "quote": 'say "hi"\x00'}
    text = headers_jsonb(headers)
    assert "\\u0000" not in text.replace("\\\\u0000", "")  # no NUL escape left for jsonb to refuse
    assert json.loads(text) == {"key": "value", "path": "C:\\u0000", "text": "a\\u0000b", "n": "3",
                                "quote": 'say "hi"'}
    assert headers_jsonb(None) == "{}" and headers_jsonb({}) == "{}"


def test_the_dead_letters_and_the_log_store_use_the_one_function():
    """No copy left to drift: both modules call these (a fix of one was not made in the other before)."""
    assert consumers.headers_jsonb is headers_jsonb and consumers.no_nul is no_nul
    assert log_store_handlers.headers_jsonb is headers_jsonb and log_store_handlers.no_nul is no_nul
    for module in (consumers, log_store_handlers):
        source = open(module.__file__).read()
        assert '.replace("\\x00", "")' not in source, module.__name__
