"""Reading a dataset as a project version saved it (services/workflow_lineage/saved_files.py and the handlers that
use it: files, benchmarks, evaluation links), with the SQL stood in for: a version's manifest is fetched and parsed
once per version and dataset, however many files are read from it or benchmarks and links name it; the check that
a version holds a dataset answers a few numbers whatever the dataset's size; a version saved before the dataset was
created is not found even when it holds a dataset of the same name."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.workflow_lineage import benchmark_runs, handlers, links, manifest
from services.workflow_lineage.saved_files import SavedFilesCache
from shared.errors import InvalidRequest, NotFound
from shared.messages import lineage as m

FILES = 10_000
SAVED_AT = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _manifest(files: int = FILES) -> str:
    return manifest.canonical(manifest.build([
        {"name": "imgs", "kind": "images", "files": [
            {"name": f"{i:05d}.png", "sha256": f"{i:064x}", "size": 1000 + i, "content_type": "image/png",
             "labels": {"label": str(i % 10), "prediction_id": f"p-{i}"}} for i in range(files)]},
        {"name": "other", "kind": "tabular", "rows_sha256": "ab" * 32, "row_count": 7}]))


class _Pool:
    """The two version reads the handlers make (the row without its manifest, the manifest), counted."""

    def __init__(self, text: str) -> None:
        self.text, self.manifest_reads = text, 0

    async def fetchrow(self, sql: str, version_id: int) -> dict[str, Any] | None:
        assert ", manifest FROM" not in sql  # the row alone: the manifest's megabytes only on a miss
        return {"id": version_id, "project_id": 1, "number": 3, "created_at": SAVED_AT} if version_id == 9 else None

    async def fetchval(self, sql: str, version_id: int) -> str:
        assert "SELECT manifest FROM project_versions" in sql
        self.manifest_reads += 1
        return self.text


def _deps(monkeypatch, created_at: datetime = SAVED_AT - timedelta(days=1)) -> handlers.Deps:
    dataset = {"id": 5, "project_id": 1, "name": "imgs", "created_at": created_at}

    async def found(deps, principal, token, dataset_id):
        return dataset | {"id": dataset_id}

    monkeypatch.setattr(handlers, "_dataset", found)
    return handlers.Deps(pool=_Pool(_manifest()), objects=None, membership=None)


def test_a_versions_files_are_parsed_once_however_many_are_read(monkeypatch):
    deps = _deps(monkeypatch)

    async def read() -> None:
        listed = await handlers.list_files(deps, None, None, 5, 9)
        assert len(listed.files) == FILES and listed.files[0].name == "00000.png"
        assert listed.files[0].created_at == SAVED_AT
        for i in range(0, FILES, 100):  # a training run downloads file after file of the version
            got = await handlers.get_file(deps, None, None, 5, f"{i:05d}.png", 9)
            assert got.sha256 == f"{i:064x}" and got.labels == {"label": str(i % 10), "prediction_id": f"p-{i}"}
        with pytest.raises(NotFound, match="had no file 'nope.png' in version 9"):
            await handlers.get_file(deps, None, None, 5, "nope.png", 9)
        assert len((await handlers.list_files(deps, None, None, 5, 9)).files) == FILES

    asyncio.run(read())
    assert deps.saved_files.parses == 1 and deps.pool.manifest_reads == 1


def test_the_check_that_a_version_holds_a_dataset_answers_a_few_numbers(monkeypatch):
    deps = _deps(monkeypatch)
    held = asyncio.run(handlers.saved_dataset(deps, None, None, 5, 9))
    assert (held.dataset_id, held.version_id, held.number, held.file_count) == (5, 9, 3, FILES)
    assert len(held.model_dump_json()) < 200  # the file list of the same version is megabytes
    assert len(handlers.DatasetFiles(files=list(deps.saved_files._entries[(9, "imgs")].files.values()))
               .model_dump_json()) > 2_000_000
    with pytest.raises(NotFound, match="is not a version of project 1"):
        asyncio.run(handlers.saved_dataset(deps, None, None, 5, 10))


def test_a_version_saved_before_the_dataset_was_created_is_not_found_even_under_its_name(monkeypatch):
    # "imgs" saved in version 9, deleted, created again later: the version holds the old dataset's files, not these
    deps = _deps(monkeypatch, created_at=SAVED_AT + timedelta(seconds=1))
    for read in (handlers.list_files(deps, None, None, 5, 9), handlers.get_file(deps, None, None, 5, "00001.png", 9),
                 handlers.saved_dataset(deps, None, None, 5, 9)):
        with pytest.raises(NotFound, match="saved before the dataset had been created"):
            asyncio.run(read)
    assert deps.pool.manifest_reads == 0


def test_the_cache_is_bounded_by_files_and_keeps_the_newest_entry_whatever_its_size():
    cache = SavedFilesCache(max_files=15, max_entries=3)
    texts = {version: _manifest(files) for version, files in ((1, 5), (2, 5), (3, 5), (4, 20))}

    async def get(version: int, name: str = "imgs"):
        async def text() -> str:
            return texts[version]
        return await cache.get(version, name, SAVED_AT, text)

    async def run() -> None:
        for version in (1, 2, 3):
            await get(version)
        assert await get(1, "nope") is None  # a version without that dataset: cached too
        assert [key[0] for key in cache._entries] == [2, 3, 1]  # at most 3 entries: version 1's imgs went first
        assert len((await get(4)).files) == 20  # above max_files alone: kept, the others dropped
        assert list(cache._entries) == [(4, "imgs")] and cache._files == 20

    asyncio.run(run())
    assert cache.parses == 5


class _Heads(_Pool):
    """_Pool with the columns a benchmark and a link read from the version's row."""

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        row = await super().fetchrow(sql, args[0])
        return row and row | {"workspace_id": 1, "manifest_sha256": "f" * 64}


class _Caller:
    user_id = "00000000-0000-0000-0000-000000000001"


def test_benchmarks_and_evaluation_links_parse_a_versions_manifest_once():
    deps = handlers.Deps(pool=_Heads(_manifest(200)), objects=None, membership=None)
    images = m.DatasetChoice(workspace_id=1, name="r", version_id=9, dataset_name="imgs")
    tabular = m.ProjectLink(workspace_id=1, project_id=1, version_id=9, evaluation=m.EvaluationSpec(
        dataset_name="other", output_column="y"))

    async def run() -> None:
        for _ in range(3):
            chosen = await benchmark_runs.choose(deps, images)
            assert chosen["kind"] == "images" and chosen["rows_sha256"] is None and len(chosen["files"]) == 200
            with pytest.raises(InvalidRequest, match="file '00000.png' has no labels.boxes"):
                benchmark_runs.detection_truth(chosen)  # the saved labels reach the benchmark
            declared = await links._evaluation(deps, deps.pool, "input", tabular, _Caller())
            assert declared["data"] == {"version_id": 9, "dataset_name": "other"}
        tab = await benchmark_runs.choose(deps, images.model_copy(update={"dataset_name": "other"}))
        assert (tab["kind"], tab["rows_sha256"], tab["files"]) == ("tabular", "ab" * 32, [])
        with pytest.raises(NotFound, match="has no dataset 'nope'"):
            await benchmark_runs.choose(deps, images.model_copy(update={"dataset_name": "nope"}))
        with pytest.raises(InvalidRequest, match="has no dataset 'nope'"):
            await links._evaluation(deps, deps.pool, "input", tabular.model_copy(update={"evaluation": m.EvaluationSpec(
                dataset_name="nope", output_column="y")}), _Caller())

    asyncio.run(run())
    assert deps.pool.manifest_reads == deps.saved_files.parses == 3  # imgs, other, nope: once each
