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

from shared.errors import InvalidRequest
from shared.messages.lineage import NAME_PATTERN, DatasetFile, DatasetFiles


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
    # character, a '/') is no position in the list
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidRequest("cursor: not a next_cursor of datasets/list_files: pass it as the previous page "
                             "answered it")
    return name


def page(candidates: list[DatasetFile], limit: int | None, max_bytes: int) -> DatasetFiles:
    """The page of `candidates` (the files after the cursor in name order, up to `limit` + 1 of them, the extra
    one telling that more follow): the first `limit` files, fewer when their JSON passes `max_bytes` (never none,
    so paging always advances); `next_cursor` when any file is left out. Without a limit, every candidate."""
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
    return DatasetFiles(files=files, next_cursor=cursor_of(files[-1].name) if more else None)
