"""Pages of a dataset's file list (datasets/list_files with `limit`).

The list of a dataset's files grows with the dataset and with its labels (a segmentation mask's polygons are tens
of KB per file), so one answer cannot hold every list: a command's reply must fit the bus (8 MiB in the embedded
stack), and a list that does not is answered 422 reply_too_large (shared/bus.py). A page holds at most `limit`
files in name order, and fewer when their JSON would pass `max_bytes` (half the bus limit: the page's envelope and
headers fit whatever the labels), so following `next_cursor` always reaches the end. The cursor is the page's last
name, base64url-encoded: keyset paging, so a file added or deleted between two pages neither repeats nor skips
another one."""

from __future__ import annotations

import base64
import binascii
import re

import pydantic_core

from shared.bus import byte_size
from shared.errors import InvalidRequest, ReplyTooLarge
from shared.messages.lineage import STORED_NAME_PATTERN, DatasetFile, DatasetFiles


def cursor_of(name: str) -> str:
    """The cursor naming the files after `name`."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def name_of(cursor: str | None) -> str | None:
    """The file name a cursor continues after (None: from the first file); 400 for what no page answered."""
    if cursor is None:
        return None
    try:
        name = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        name = ""
    # a page's cursor is always a file's name: anything else (a NUL, which PostgreSQL refuses in a text, a control
    # character, a '/') is no position in the list. A stored name's rule: one added before session 38 may hold DEL
    # or C1, and a page ending at it was refused its next one
    if not re.fullmatch(STORED_NAME_PATTERN, name):
        raise InvalidRequest("cursor: not a next_cursor of datasets/list_files: pass it as the previous page "
                             "answered it")
    return name


def page(candidates: list[DatasetFile], limit: int | None, max_bytes: int,
         reply_bytes: int | None = None) -> DatasetFiles:
    """The page of `candidates` (the files after the cursor in name order, up to `limit` + 1 of them, the extra
    one telling that more follow): the first `limit` files, fewer when their JSON passes `max_bytes` (never none,
    so paging always advances); `next_cursor` when any file is left out. Without a limit, every candidate. A file
    that alone passes `reply_bytes` (what a reply may carry on the bus) fits no page: 422 naming it (too_large)."""
    if limit is None:
        return DatasetFiles(files=candidates)
    files: list[DatasetFile] = []
    size = 0
    for file in candidates[:limit]:
        size += len(pydantic_core.to_json(file)) + 1
        if files and size > max_bytes:
            break
        files.append(file)
    more = len(files) < len(candidates)
    cursor = cursor_of(files[-1].name) if more else None
    if reply_bytes is not None and len(files) == 1 and size > max_bytes:
        alone = size + len(cursor or "") + REPLY_ENVELOPE
        if alone > reply_bytes:
            raise too_large(files[0].name, alone, reply_bytes)
    return DatasetFiles(files=files, next_cursor=cursor)


REPLY_ENVELOPE = 256
"""Bytes a page's reply adds around its files and cursor (the envelope's fields, `next_cursor`'s key)."""


def too_large(name: str, size: int, reply_bytes: int) -> ReplyTooLarge:
    """The 422 for a file whose labels make it too large for any reply: which file, and what can be done."""
    return ReplyTooLarge(
        f"the file {name!r} alone is {byte_size(size)} with its labels, above the {byte_size(reply_bytes)} a reply "
        "may carry on the bus, so no page can list it, whatever the limit (nor datasets/get_file_info answer it): "
        "its labels cannot be read through the API. Its content can: datasets/download_file. The files after it: "
        f"pass cursor {cursor_of(name)!r}. To list it again, upload it under the same name with smaller labels, or "
        "delete it (datasets/delete_file)")
