"""A dataset's files as a project version saved them, read from the version's manifest once.

A version never changes (its manifest is hashed; a deleted version's id is never reused), so the files one dataset
had in one version are parsed from the manifest once and kept, by (version id, dataset name), in a bounded LRU. The
manifest is the whole project's: 10,000 files are a 3.9 MB document and ~130 ms of `json.loads`, which used to run
on the event loop for every `list_files` and `get_file` with a `version_id` (a training run downloads each file of
a version: N parses of an O(N) document). A miss fetches the manifest and parses it in a thread; a hit reads
neither the manifest's text from PostgreSQL nor parses it.

The cache holds at most `max_files` file entries over all its entries (the newest entry stays whatever its size, so
a big dataset read file by file is parsed once) and at most `max_entries` entries."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from shared.messages.lineage import DatasetFile

MAX_FILES = 50_000
MAX_ENTRIES = 64


@dataclass(frozen=True)
class SavedDataset:
    """One dataset as a version saved it: its files by name (in the manifest's order), its row count, its kind, its
    rows' hash and its file names sorted (computed once in `parse`, off the event loop: list_files pages bisect on
    them instead of sorting every page)."""

    files: dict[str, DatasetFile]
    row_count: int
    kind: str = ""
    rows_sha256: str | None = None
    names: tuple[str, ...] = ()


def parse(manifest_text: str, dataset_name: str, saved_at: datetime) -> SavedDataset | None:
    """The dataset named `dataset_name` in a version's manifest (None when the version has no such dataset)."""
    saved = json.loads(manifest_text)
    entry = next((d for d in saved["datasets"] if d["name"] == dataset_name), None)
    if entry is None:
        return None
    files = {f["name"]: DatasetFile(name=f["name"], sha256=f["sha256"], size=f["size"],
                                    content_type=f["content_type"], labels=f.get("labels"), created_at=saved_at)
             for f in entry["files"]}
    rows = entry.get("rows") or {}
    return SavedDataset(files=files, row_count=int(rows.get("count") or 0), kind=entry["kind"],
                        rows_sha256=rows.get("sha256"), names=tuple(sorted(files)))


class SavedFilesCache:
    """Parsed datasets of versions, by (version id, dataset name); bounded, least recently used out first."""

    def __init__(self, max_files: int = MAX_FILES, max_entries: int = MAX_ENTRIES) -> None:
        self.max_files, self.max_entries = max_files, max_entries
        self._entries: OrderedDict[tuple[int, str], SavedDataset | None] = OrderedDict()
        self._files = 0
        self.parses = 0  # manifests parsed so far (tests and the benchmark read it)

    async def get(self, version_id: int, dataset_name: str, saved_at: datetime,
                  manifest_text: Callable[[], Awaitable[str]]) -> SavedDataset | None:
        """The dataset as the version saved it (None: the version has no dataset of that name); on a miss the
        manifest is fetched with `manifest_text()` and parsed in a thread."""
        key = (version_id, dataset_name)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        text = await manifest_text()
        found = await asyncio.to_thread(parse, text, dataset_name, saved_at)
        self.parses += 1
        self._put(key, found)
        return found

    def _put(self, key: tuple[int, str], found: SavedDataset | None) -> None:
        if key in self._entries:  # two readers missed at once: keep one
            return
        self._entries[key] = found
        self._files += len(found.files) if found else 0
        while len(self._entries) > 1 and (self._files > self.max_files or len(self._entries) > self.max_entries):
            _, dropped = self._entries.popitem(last=False)
            self._files -= len(dropped.files) if dropped else 0
