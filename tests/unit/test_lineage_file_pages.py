"""Pages of a dataset's file list (services/workflow_lineage/file_pages.py, handlers.list_files with `limit`): in
name order, bounded in count and in bytes, a cursor that neither repeats nor skips a file, and without `limit` the
answer as before paging. The SQL is stood in for (its keyset query runs in
tests/integration/test_dataset_versions_read.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.workflow_lineage import file_pages, handlers, manifest
from shared.errors import InvalidRequest, ReplyTooLarge
from shared.messages.lineage import MAX_FILES_CURSOR, NAME_MAX_CHARS, NAME_PATTERN, DatasetFile, DatasetFilesQuery

SAVED_AT = datetime(2026, 12, 1, 12, tzinfo=UTC)
NAMES = [f"{i:03d}.png" for i in range(250)] + ["é.png"]  # a non-ASCII name, last in name order


def _file(name: str, labels: Any = None) -> DatasetFile:
    return DatasetFile(name=name, sha256="ab" * 32, size=10, content_type="image/png", labels=labels,
                       created_at=SAVED_AT)


class _Pool:
    """A version's row and manifest (files saved out of name order), and the current files' keyset query."""

    def __init__(self) -> None:
        files = [{"name": n, "sha256": "ab" * 32, "size": 10, "content_type": "image/png"} for n in reversed(NAMES)]
        self.text = manifest.canonical(manifest.build([{"name": "imgs", "kind": "images", "files": files}]))

    async def fetchrow(self, sql: str, version_id: int) -> dict[str, Any] | None:
        return {"id": version_id, "project_id": 1, "number": 3, "created_at": SAVED_AT}

    async def fetchval(self, sql: str, version_id: int) -> str:
        return self.text

    async def fetch(self, sql: str, dataset_id: int, *args: Any) -> list[dict[str, Any]]:
        after, limit = args if len(args) == 2 else (None, args[0])
        names = sorted(n for n in NAMES if after is None or n > after)[:limit]
        return [{"name": n, "sha256": "ab" * 32, "size": 10, "content_type": "image/png", "labels": None,
                 "created_at": SAVED_AT} for n in names]


def _deps(monkeypatch) -> handlers.Deps:
    async def found(deps, principal, token, dataset_id):
        return {"id": dataset_id, "project_id": 1, "name": "imgs", "created_at": SAVED_AT - timedelta(days=1)}

    monkeypatch.setattr(handlers, "_dataset", found)
    return handlers.Deps(pool=_Pool(), objects=None, membership=None)


@pytest.mark.parametrize("version_id", [None, 9])
def test_pages_follow_each_other_in_name_order_to_the_end(monkeypatch, version_id):
    deps = _deps(monkeypatch)

    async def read() -> tuple[list[list[str]], list[str]]:
        pages, cursor = [], None
        while True:
            got = await handlers.list_files(deps, None, None, 5, version_id, limit=100, cursor=cursor)
            pages.append([f.name for f in got.files])
            if got.next_cursor is None:
                break
            cursor = got.next_cursor
        everything = await handlers.list_files(deps, None, None, 5, version_id)
        assert everything.next_cursor is None
        return pages, [f.name for f in everything.files]

    pages, everything = asyncio.run(read())
    assert [len(p) for p in pages] == [100, 100, 51]
    assert [n for p in pages for n in p] == sorted(NAMES) == everything


def test_a_page_stops_before_its_bytes_pass_the_budget_but_never_comes_back_empty():
    files = [_file(f"{i}.png", {"polygon": "x" * 1000}) for i in range(10)]
    each = len(files[0].model_dump_json()) + 1  # a comma
    small = file_pages.page(files, 10, max_bytes=3 * each + each // 2)
    assert [f.name for f in small.files] == ["0.png", "1.png", "2.png"]
    assert file_pages.name_of(small.next_cursor) == "2.png"
    one = file_pages.page(files, 10, max_bytes=10)  # a single file above the budget still moves the cursor on
    assert len(one.files) == 1 and file_pages.name_of(one.next_cursor) == "0.png"
    last = file_pages.page(files[:3], 3, max_bytes=1 << 20)  # exactly `limit` left: the end, no cursor
    assert len(last.files) == 3 and last.next_cursor is None
    assert file_pages.page(files, None, max_bytes=10).files == files  # no limit: the answer as before paging


def test_a_cursor_no_page_gave_is_refused():
    assert file_pages.name_of(file_pages.cursor_of("é ü.png")) == "é ü.png"
    # "AA" decodes to a NUL, which PostgreSQL refuses in a text (22021: a 500); a '/' or a control character is no
    # file's name either
    for bad in ("%%%", "A", "_-8", "+/8", "AA", file_pages.cursor_of("a\x00b"), file_pages.cursor_of("a/b"),
                file_pages.cursor_of("a\tb")):
        with pytest.raises(InvalidRequest, match="cursor: not a next_cursor"):
            file_pages.name_of(bad)


def test_a_page_ending_on_the_longest_name_gives_a_cursor_the_next_page_takes():
    """A name may be 200 characters of any non-control, non-'/' character: up to 800 UTF-8 bytes, a 1,067-character
    cursor. The cursor's limit was 400, so a page ending on a name as short as "图" * 120 + ".png" (486) gave a
    next_cursor the next call refused (400) and paging stopped there (the SDK's Lineage.files, set_training_data)."""
    longest = chr(0x1F600) * NAME_MAX_CHARS
    assert re.fullmatch(NAME_PATTERN, longest)
    assert len(file_pages.cursor_of(longest)) == MAX_FILES_CURSOR
    for name in (longest, "图" * 120 + ".png"):
        page = file_pages.page([_file(name), _file("zz.png")], 1, max_bytes=1 << 20)
        query = DatasetFilesQuery(dataset_id=1, limit=1, cursor=page.next_cursor)
        assert file_pages.name_of(query.cursor) == name


def test_a_file_too_large_for_any_reply_is_named_with_what_can_be_done(monkeypatch):
    """A file whose labels alone are near the bus limit fits no page: a list_files with `limit` answered the bus's
    reply_too_large "ask for pages: pass limit", which the caller had passed. The page names the file, the cursor
    past it, and how its content is read: download_file, which asks get_file for the file without its labels."""
    big, after = _file("mask.png", {"polygon": "7" * 3000}), _file("next.png")
    with pytest.raises(ReplyTooLarge, match=r"the file 'mask.png' alone is .* so no page can list it, whatever the "
                       r"limit .* datasets/download_file") as refused:
        file_pages.page([big, after], 10, max_bytes=1000, reply_bytes=3000)
    assert f"pass cursor {file_pages.cursor_of('mask.png')!r}" in str(refused.value)
    alone = file_pages.page([big, after], 10, max_bytes=1000, reply_bytes=8000)  # above a page's budget: alone
    assert [f.name for f in alone.files] == ["mask.png"] and file_pages.name_of(alone.next_cursor) == "mask.png"

    deps = _deps(monkeypatch)

    async def stored(pool, dataset_id, name):
        return {"name": name, "sha256": "ab" * 32, "size": 10, "content_type": "image/png",
                "labels": '{"polygon": "7"}', "created_at": SAVED_AT}

    monkeypatch.setattr(handlers.store, "dataset_file", stored)
    with_labels = asyncio.run(handlers.get_file(deps, None, None, 5, "mask.png"))
    without = asyncio.run(handlers.get_file(deps, None, None, 5, "mask.png", labels=False))
    assert with_labels.labels == {"polygon": "7"} and without.labels is None
    assert without.model_dump(exclude={"labels"}) == with_labels.model_dump(exclude={"labels"})
