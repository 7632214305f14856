"""Base message models: commands are imperative, events past tense, replies carry data or an error."""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.errors import ErrorBody, describe_pattern
from shared.omit_unset import omit_when_unset as omit_when_unset  # the messages' helper (there: shared.errors uses it)


class Message(BaseModel):
    """Base of every bus message: unknown fields are refused."""

    # A model's validator and serializer are built at its first use, not when its module is imported: a process
    # imports every model of the modules it touches (auth 152, the lineage service 121) and uses a few of them.
    # 20-55 ms of CPU less at each service's start and 0.2-1.5 MiB less RSS; a message type's first use in a process
    # pays its build once, 0.15-0.9 ms (docs/performance.md item 72). tests/unit/test_message_imports.py builds
    # every model, so a model that cannot be built still fails a test, not a service's first request.
    model_config = ConfigDict(extra="forbid", defer_build=True)


INT64 = (-(2**63), 2**63 - 1)  # what a PostgreSQL bigint (every id column) holds
INT32 = (-(2**31), 2**31 - 1)  # what a PostgreSQL integer holds: a field stored in one is bounded by it (a 400 first)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str only unpaired: a pair decodes to one character
MAX_DEPTH = 64  # levels of nesting in a field; pydantic cannot serialize past ~250 (the bus message would fail)

CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
"""A character class's range of Unicode's control characters (category Cc: C0, DEL and C1), which no user-visible
name holds: a lineage name's rule said "no control characters" and let DEL (\\x7f) and C1 (\\x80-\\x9f) through."""
WITHOUT_CONTROLS = describe_pattern(rf"^[^{CONTROL_CHARACTERS}]*$",
                                    "use no control characters (tab, newline, DEL and the like)")
"""The pattern of a free-text name (an assay's, an orchestration's, a task's): any characters but control ones; a
refusal says so in words (shared.errors.describe_pattern), not by the expression."""


MAX_JSON_OBJECT = 64 * 1024
"""Bytes (UTF-8, compact JSON) of a free-form object a user sets and the platform stores and shows back (a pipeline's
definition, a continuous training's parameters) at most: as a task's arguments and a connection's details already
were. Under the gateway's 2 MiB JSON limit one such object fitted a reply, but a pipeline answers with every version's
definition, so a few versions made pipelines/get and pipelines/list larger than the bus carries."""


def json_at_most(value: Any, limit: int = MAX_JSON_OBJECT) -> Any:
    """`value` when its compact JSON takes at most `limit` bytes; a ValueError naming both sizes otherwise."""
    if value is not None:
        try:  # a lone surrogate or nesting past the recursion limit: Command's own check refuses them, with its words
            size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
        except RecursionError:
            return value
        if size > limit:
            raise ValueError(f"must take at most {limit} bytes of JSON, not {size}")
    return value


class Command(Message):
    """A request to a service to do something; answered with a Reply."""

    # Every field is checked for what no service can store: an integer outside the 64-bit range (asyncpg cannot
    # send it as a bigint), a NUL character in a string, a key or a nested value (PostgreSQL's text and jsonb
    # refuse it), a lone surrogate ("\ud800": not UTF-8, so not text anywhere) and a NaN or infinite float (jsonb
    # refuses them; the bus's JSON decoder accepts both, the gateway's never does), and nesting deeper than
    # MAX_DEPTH. Such a command is refused at validation, so the gateway answers 400 naming the field instead of the
    # service failing with a 500 (found by `make fuzz-api`, docs/testing.md). Integers inside free-form objects (a
    # task's args, a definition) are data and keep their size.
    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = _unstorable(value) or _time_without_utc(value, "")
        if problem:
            raise ValueError(problem)
        return value


class Event(Message):
    """Something that happened; published to JetStream, never answered."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Unique id, used for de-duplication.")
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Reply(Message):
    """The envelope of every command reply: `data` when ok, `error` otherwise."""

    ok: bool
    data: dict[str, Any] | None = None
    error: ErrorBody | None = None
    status: int = Field(200, description="HTTP status the gateway answers with.")


def _unstorable(value: Any) -> str | None:
    """Why `value` cannot be stored (None when it can): a NUL or a lone surrogate in any string, a NaN or infinite
    float, an int beyond 64 bits outside free-form objects, or nesting deeper than MAX_DEPTH. Iterative: a deep body
    must not end in a RecursionError."""
    low, high = INT64
    pending: list[tuple[Any, bool, int]] = [(value, False, 0)]  # (value, inside a free-form object, depth)
    while pending:
        item, in_object, depth = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL (\\u0000) characters"
            if not item.isascii() and _LONE_SURROGATE.search(item):
                return "must not contain a lone surrogate (\\ud800 to \\udfff): it is not a character"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"must be a finite number: {item} cannot be stored"
        elif isinstance(item, int) and not isinstance(item, bool):
            if not in_object and not low <= item <= high:
                return f"must be between {low} and {high}"
        elif depth >= MAX_DEPTH and isinstance(item, dict | list | tuple | set | frozenset | BaseModel):
            return f"is nested deeper than {MAX_DEPTH} levels"
        elif isinstance(item, dict):
            pending.extend((part, True, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend((part, in_object, depth + 1) for part in item)
        elif isinstance(item, BaseModel) and not isinstance(item, Command):  # a Command checked its own fields
            pending.extend((part, in_object, depth + 1) for part in item.__dict__.values())
    return None


def _time_without_utc(value: Any, path: str) -> str | None:
    """Why a datetime in `value` (a field's value: a datetime, or one inside nested models and lists) has no UTC form
    (None when every one has). `0001-01-01T00:00+05:00` has none: the services compare and store times in UTC, and
    the conversion raised OverflowError, a 500 (found by hand after `make fuzz-api`). Called after `_unstorable`, so
    the nesting is at most MAX_DEPTH deep; free-form objects hold no datetimes (JSON has none)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                where = f"{path}: " if path else ""
                return (f"{where}{value.isoformat()} is out of range once in UTC: a time from 0001-01-01 to "
                        "9999-12-31 (UTC)")
        return None
    if isinstance(value, BaseModel) and not isinstance(value, Command):
        fields = type(value).model_fields
        items = [((fields[k].alias or k) if k in fields else k, v) for k, v in value.__dict__.items()]
    elif isinstance(value, list | tuple):
        items = [(str(i), v) for i, v in enumerate(value) if isinstance(v, datetime | BaseModel | list | tuple)]
    else:
        return None
    for key, item in items:
        problem = _time_without_utc(item, f"{path}.{key}" if path else key)
        if problem:
            return problem
    return None
