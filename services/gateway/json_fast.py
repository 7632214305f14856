"""What the gateway's simdjson readers (OIP bodies: services/gateway/oip.py; pandas-records bodies:
services/gateway/records_parse.py) share: one kept simdjson parser, and a count of a body's `[` that stops early."""

from __future__ import annotations

from typing import Any

import numpy as np

_parser: list[Any] = []  # one simdjson parser, reused (`parse`)
# bytes: a larger body gets a parser of its own, dropped after it. The kept parser's buffers never shrink (~8x the
# largest body it read: a 4 MB body left ~32 MB for good, rev1); a 1,000-row ccfraud body is ~600 KB
PARSER_KEPT_BELOW = 1 << 20


def parse(body: bytes) -> Any:
    """The simdjson document of `body`, from one parser kept between requests: a fresh parser allocated its
    buffers (~15x the body: the padded copy, structural indexes, tape) per request, and glibc gave them back to
    the kernel and took them again, zeroed, every time: ~185 page faults a 1,000-row request, ~7 % of the
    gateway's CPU under OIP batch-1000 load. Reuse is safe: pysimdjson refuses (RuntimeError) to parse while an
    Object or Array of the parser's previous document is alive; then that parser is left to it and a new one
    taken. The caller must let go of the document's Objects and Arrays before it returns."""
    import simdjson

    if len(body) >= PARSER_KEPT_BELOW:
        return simdjson.Parser().parse(body)
    if not _parser:
        _parser.append(simdjson.Parser())
    try:
        return _parser[0].parse(body)
    except RuntimeError:  # a document of the kept parser still referenced somewhere
        _parser[0] = simdjson.Parser()
        return _parser[0].parse(body)


def count_brackets(body: bytes, limit: int) -> int:
    """How many `[` the body holds, counted up to `limit` + 1 (a larger count is given as `limit` + 1). An OIP body
    of flat tensors holds a few: a memchr each (~7 us for 600 KB). A records body, and an OIP body of nested
    tensors, holds one a row or more: past the first `_FOUND_ONE_BY_ONE` the rest is counted by numpy in 64 KiB
    pieces (~45 us for 600 KB, where a find per bracket took ~140). (Counting with numpy at once made a bool array
    the body's size: fresh memory in a busy gateway, ~120 us of its CPU a 1,000-row request, more when that memory
    faulted in.)"""
    count, at = 0, body.find(b"[")
    while at >= 0 and count <= limit:
        count += 1
        if count == _FOUND_ONE_BY_ONE:
            return _count_rest(body, at + 1, count, limit)
        at = body.find(b"[", at + 1)
    return count


_FOUND_ONE_BY_ONE = 32
_PIECE = 1 << 16  # bytes a bool array of numpy's count holds (below malloc's mmap threshold: reused heap memory)


def _count_rest(body: bytes, start: int, count: int, limit: int) -> int:
    view = memoryview(body)
    for at in range(start, len(body), _PIECE):
        if count > limit:
            break
        count += int(np.count_nonzero(np.frombuffer(view[at:at + _PIECE], np.uint8) == _OPENING))
    return min(count, limit + 1)


_OPENING = ord("[")
