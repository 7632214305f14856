"""Text PostgreSQL can hold. It refuses the NUL character (U+0000) in `text` and in `jsonb` ("invalid byte sequence
for encoding UTF8: 0x00", "unsupported Unicode escape sequence"), so a row holding one is never written. What comes
off the bus as it was sent (a message's subject and headers, an error's text) may carry one; the rows that keep such
a message (a dead letter, shared/consumers.py; a quarantined log batch, services/log_store) remove NULs with these."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def no_nul(value: Any) -> str:
    """`value` as text without its NUL characters (everything else kept as it is)."""
    return str(value).replace("\x00", "")


def headers_jsonb(headers: Mapping[Any, Any] | None) -> str:
    """Message headers as a jsonb object's JSON text: each key and value as text, NULs removed from the strings
    themselves. Removing the `\\u0000` escape from the JSON text instead also cut a header's own backslash-u0000
    text (six characters, not a NUL), corrupting it or leaving a backslash escaping the next character: not JSON,
    so the row was never written."""
    return json.dumps({no_nul(k): no_nul(v) for k, v in (headers or {}).items()})
