"""The gateway's JSON reader for command bodies: orjson, and no integer silently changed.

orjson reads an integer literal beyond 64 bits (below -2**63 or above 2**64 - 1) as the nearest float, so a task's
argument or a pipeline definition holding `123456789012345678901234567890` would reach the service as
`1.2345678901234568e+29`, and come back that way. Every integer that fits 64 bits (signed or unsigned) is kept
exactly all the way (the bus, PostgreSQL's json/jsonb and the answers carry it as written); a bigger one is
refused with a 400 naming where it is, since the engine, Arrow and orjson elsewhere could not carry it either.
Send such a number as a string.

The check walks the parsed values looking for what such an integer becomes: a whole float at or beyond 2**64 (or
at or below -2**63). Only a body holding one is read a second time, by the standard library, which keeps integers
exact, to tell an integer the client wrote from a float it wrote (`1e20` stays a float). A walk rather than a scan
of the bytes: a 2 MB image in base64 is one string to the walk (microseconds), 2.5-26 ms to a scan for digit runs.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from shared.errors import InvalidRequest
from shared.request_values import refuse_lax_scalars as refuse_lax_scalars  # the routes' check, the bus's too

LOW, HIGH = -(2**63), 2**64 - 1  # what orjson (and Arrow's int64/uint64) hold exactly
_FLOAT_LOW, _FLOAT_HIGH = float(LOW), float(2**64)  # what orjson reads an integer beyond them as, at the nearest


def loads(raw: bytes | str, where: str = "") -> Any:
    """`orjson.loads(raw)`; raises InvalidRequest naming the place (`where` prefixes it: "metadata") of an integer
    beyond 64 bits, which orjson would have turned into a float. Invalid JSON raises orjson's ValueError."""
    value = orjson.loads(raw)
    if not _may_hold_a_lost_integer(value):
        return value
    path = _too_big_integer(raw.encode() if isinstance(raw, str) else raw)
    if path is not None:
        place, number = path
        named = ".".join(p for p in (where, place) if p) or "body"
        digits = str(number)
        shown = digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
        raise InvalidRequest(f"{named}: the integer {shown} is beyond 64 bits: integers must be between {LOW} and "
                             f"{HIGH} to be kept exactly; send a bigger one as a string")
    return value


def _may_hold_a_lost_integer(value: Any) -> bool:
    """Whether a parsed value holds a whole float at or beyond 2**64 or at or below -2**63: what orjson makes of an
    integer literal beyond 64 bits (or a float the client wrote so)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if (item >= _FLOAT_HIGH or item <= _FLOAT_LOW) and item.is_integer():
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _too_big_integer(data: bytes) -> tuple[str, int] | None:
    """The dotted place and value of the first integer beyond 64 bits in the (valid) JSON `data`, else None."""
    try:
        # the standard library keeps integers exact; orjson already refused what it would accept and we would not
        # (NaN, lone surrogates), and its depth limit (1024) keeps this parse near Python's recursion limit
        tree = json.loads(data)
    except (ValueError, RecursionError):
        return None
    pending: list[tuple[str, Any]] = [("", tree)]
    while pending:
        place, item = pending.pop()
        if isinstance(item, int) and not isinstance(item, bool) and not LOW <= item <= HIGH:
            return place, item
        if isinstance(item, dict):
            pending.extend((f"{place}.{k}" if place else str(k), v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            pending.extend((f"{place}.{i}" if place else str(i), v) for i, v in reversed(list(enumerate(item))))
    return None
