"""Pages of a list command whose items are rows with an id (assays/list, pipelines/list): docs/api-paging.md.

A list that grows with what users create (a pipeline's assays, a workspace's pipelines with every version's
definition) cannot always be one reply: a command's reply must fit the bus (8 MiB), and one that does not is answered
422 `reply_too_large` (shared/bus.py). Such a command takes an optional `limit` (MAX_PAGE at most) and `cursor`:
without `limit` it answers the whole list as before; with it, at most `limit` items in the list's own order, fewer
when their JSON passes PAGE_BYTES (never none, so paging always advances), and `next_cursor` when more follow. The
cursor is the page's last id (keyset paging: an item created or deleted between two pages neither repeats nor skips
another one)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, Field

from shared.errors import InvalidRequest
from shared.omit_unset import omit_when_unset

MAX_PAGE = 1000
"""Items a page holds at most (`limit`)."""
PAGE_BYTES = 4 * 1024 * 1024
"""JSON bytes of a page's items after which it stops (half the bus's 8 MiB: the envelope and headers fit)."""
_CURSOR = re.compile(r"[0-9]{1,19}")
_KEY_CURSOR = re.compile(r"(-?[0-9]{1,19})\.([0-9a-f]{32})")
NAME_KEY_MAX = 39
"""Characters of a name_key_cursor's key at most (with the microseconds, a cursor of 60 at most: key_cursor_field).
An inference client's id is `inference-` and 16 hex digits: 26."""
_NAME_KEY_CURSOR = re.compile(rf"(-?[0-9]{{1,19}})\.([A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_KEY_MAX - 1}}})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

T = TypeVar("T")


class NextCursor(BaseModel):
    """The `next_cursor` of a paged list's answer object (models/list, ...): absent without one, so the answer of a
    whole list stays as the seed writes it. Mixed into the answer's Message."""

    next_cursor: str | None = Field(None, description="Set when more items follow this page: pass it as `cursor`.")

    _without_empty_cursor = omit_when_unset("next_cursor")  # the answer of a whole list stays as it was


def limit_field(what: str) -> Any:
    return Field(None, ge=1, le=MAX_PAGE, description=f"Railyard: answer a page of at most this many {what} (fewer "
                 f"when they pass {PAGE_BYTES // 1024**2} MiB of JSON) and `next_cursor` when more follow; without it, "
                 "the whole list (422 reply_too_large when it does not fit a reply).")


def cursor_field(command: str) -> Any:
    return Field(None, min_length=1, max_length=19, description=f"Railyard: the `next_cursor` a previous page of "
                 f"{command} answered (with `limit`): the page after it.")


def after(cursor: str | None, command: str) -> int | None:
    """The id a cursor continues after (None: from the first item); 400 for what no page answered."""
    if cursor is None:
        return None
    if not _CURSOR.fullmatch(cursor):
        raise InvalidRequest(f"cursor: not a next_cursor of {command}: pass it as the previous page answered it")
    return int(cursor)


def key_cursor_field(command: str) -> Any:
    """`cursor` of a list in (created_at, id) order whose ids are UUIDs (task/list, orchestration/list)."""
    return Field(None, min_length=1, max_length=60, description=f"Railyard: the next cursor a previous page of "
                 f"{command} answered (with `limit`): the page after it.")


def key_cursor(row: Any) -> str:
    """The cursor after a row of a list in (created_at, id) order with UUID ids: its created_at in microseconds since
    the epoch (PostgreSQL's precision: exact) and its id."""
    return f"{(row['created_at'] - _EPOCH) // timedelta(microseconds=1)}.{row['id'].hex}"


def after_key(cursor: str | None, command: str) -> tuple[datetime, uuid.UUID] | None:
    """The (created_at, id) a key_cursor continues after (None: from the first item); 400 for what no page answered."""
    if cursor is None:
        return None
    found = _KEY_CURSOR.fullmatch(cursor)
    try:
        if found:
            return _EPOCH + timedelta(microseconds=int(found.group(1))), uuid.UUID(hex=found.group(2))
    except OverflowError:
        pass
    raise InvalidRequest(f"cursor: not a next cursor of {command}: pass it as the previous page answered it")


def name_key_cursor(created_at: datetime, key: str) -> str:
    """The cursor after a row of a list in (created_at, key) order whose key is a name, not a UUID
    (workspaces/list_inference_clients: a client id, `inference-<hex>`): its created_at in microseconds, a dot, the
    key. ValueError for a key after_name_key would not read back (longer than NAME_KEY_MAX, or other characters than
    its letters, digits, '.', '_' and '-'): that page's answer fails, rather than answering a next cursor the next page
    refuses as "not a next cursor" (a 400 blaming the caller for the server's own cursor)."""
    cursor = f"{(created_at - _EPOCH) // timedelta(microseconds=1)}.{key}"
    if not _NAME_KEY_CURSOR.fullmatch(cursor):
        raise ValueError(f"a name_key_cursor cannot hold the key {key[:60]!r}: 1-{NAME_KEY_MAX} letters, digits, '.',"
                         " '_' or '-', starting with a letter or digit")
    return cursor


def after_name_key(cursor: str | None, command: str) -> tuple[datetime, str] | None:
    """The (created_at, key) a name_key_cursor continues after (None: from the first item); 400 for what no page
    answered."""
    if cursor is None:
        return None
    found = _NAME_KEY_CURSOR.fullmatch(cursor)
    try:
        if found:
            return _EPOCH + timedelta(microseconds=int(found.group(1))), found.group(2)
    except OverflowError:
        pass
    raise InvalidRequest(f"cursor: not a next cursor of {command}: pass it as the previous page answered it")


async def page(rows: Sequence[Any], limit: int | None, item: Callable[[Any], Awaitable[T] | T],
               cursor_of: Callable[[Any], str] = lambda row: str(row["id"])) -> tuple[list[T], str | None]:
    """The items of `rows` (those after the cursor, in the list's order; each with an "id") for one page: every row's
    item without `limit`; else the first `limit`, fewer once their JSON passes PAGE_BYTES (at least one), and the
    next cursor when rows are left. An item that is bytes is taken for its JSON."""
    items: list[T] = []
    size = 0
    for index, row in enumerate(rows):
        if limit is not None and index >= limit:
            break
        made = item(row)
        made = await made if isinstance(made, Awaitable) else made
        if limit is not None:  # an item may be its JSON already (bytes: auth's users/query)
            size += (len(made) if isinstance(made, bytes) else len(pydantic_core.to_json(
                made.model_dump(mode="json") if isinstance(made, BaseModel) else made))) + 1
            if items and size > PAGE_BYTES:
                break
        items.append(made)
    more = limit is not None and len(items) < len(rows)
    return items, cursor_of(rows[len(items) - 1]) if more else None


def too_large_hint(command: str, header: bool = False) -> str:
    """What a reply_too_large of a pageable list tells the caller to do."""
    where = "the x-next-cursor header over HTTP, next_cursor on the bus" if header else "next_cursor"
    return (f"ask {command} for pages: pass limit (at most {MAX_PAGE}), then each page's cursor ({where}) as cursor "
            "(docs/api-paging.md)")


class RepeatedCursor(RuntimeError):
    """A paged list answered a cursor it answered before: it does not advance (a bug, a proxy that caches)."""


async def pages(ask: Callable[[str | None], Awaitable[Any]], cursor_key: str = "next_cursor") -> AsyncIterator[Any]:
    """Every page of a paged list, first to last: `ask(cursor)` answers one (a reply with its next cursor in
    `cursor_key`: `next_cursor`, or pipelines/get's `versions_cursor`). For the services that read a whole list (the
    monitoring service and the log store read pipelines/list): asked whole, a workspace's list past a reply was a 422
    relayed to their caller, whatever the caller asked. RepeatedCursor at a cursor answered before (any earlier page,
    not only the last: a cycle A, B, A too)."""
    cursor, seen = None, set()
    while True:
        page = await ask(cursor)
        yield page
        cursor = getattr(page, cursor_key)
        if cursor is None:
            return
        if cursor in seen:  # a list that does not advance: stop rather than ask for the same pages for ever
            raise RepeatedCursor(f"a paged list answered cursor {cursor!r} again")
        seen.add(cursor)
