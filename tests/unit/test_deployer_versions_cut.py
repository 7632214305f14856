"""A pipeline record whose versions pass VERSIONS_BYTES lists the newest and always the deployed one
(services/deployer/handlers.py, docs/api-paging.md): the monitoring service finds a deployment's definition in the
record's versions, so a deployed version older than the listed ones must still be there, and reading the older ones
with versions_cursor must not list it again."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import SimpleNamespace

from services.deployer import handlers, store

NOW = datetime(2026, 12, 3, tzinfo=UTC)
ROW = {"id": 9, "name": "p", "workspace_id": 1, "created_at": NOW, "updated_at": NOW}


def version(key: int) -> dict:
    return {"id": key, "version": f"00000000-0000-0000-0000-{key:012d}", "definition": json.dumps({"n": key}),
            "created_at": NOW}


def record(monkeypatch, deployed: int | None, before: int | None = None, fits: int = 3, count: int = 10):
    """The record of a pipeline of versions 1..count of which the newest `fits` (the deployed one aside) fit."""
    async def newest(pool, pipeline_id, below, without, budget):
        assert budget == handlers.VERSIONS_BYTES
        rest = [key for key in range(1, count + 1) if key != without and (below is None or key < below)]
        return [version(key) for key in rest[-fits:]], len(rest)

    async def active(pool, pipeline_id):
        return None if deployed is None else {"id": 5, "deploy_id": "d", "pipeline_version_id": deployed,
                                              "engine_config": "{}"}

    async def one(pool, key):
        return version(key)

    monkeypatch.setattr(store, "newest_versions", newest)
    monkeypatch.setattr(store, "active_deployment", active)
    monkeypatch.setattr(store, "version_row", one)
    return asyncio.run(handlers._pipeline_record(SimpleNamespace(pool=None), ROW, before)).model_dump(mode="json")


def test_an_old_deployed_version_is_listed_with_the_newest_and_not_read_again(monkeypatch):
    first = record(monkeypatch, deployed=2)
    assert [v["id"] for v in first["versions"]] == [2, 8, 9, 10]
    assert first["versions_cursor"] == "8" and first["versions_omitted"] == 6  # 1, 3..7
    older = record(monkeypatch, deployed=2, before=8)
    assert [v["id"] for v in older["versions"]] == [5, 6, 7]
    assert older["versions_cursor"] == "5" and older["versions_omitted"] == 4  # 1..4: the deployed 2 among them
    last = record(monkeypatch, deployed=2, before=5)
    assert [v["id"] for v in last["versions"]] == [2, 3, 4] and last["versions_cursor"] == "2"
    first = record(monkeypatch, deployed=2, before=2)
    assert [v["id"] for v in first["versions"]] == [1] and "versions_cursor" not in first


def test_a_version_deployed_between_two_reads_is_in_the_older_part(monkeypatch):
    """The record answered with version 2 deployed (listed there); version 6 is deployed before its versions_cursor is
    read: leaving the deployed one out of the older parts lost 6 (in neither answer). Merged by id, as the SDK's
    Pipeline.versions() does, every version is there once."""
    first = record(monkeypatch, deployed=2)
    found = {v["id"] for v in first["versions"]}
    cursor = first["versions_cursor"]
    while cursor:
        part = record(monkeypatch, deployed=6, before=int(cursor))
        found |= {v["id"] for v in part["versions"]}
        cursor = part.get("versions_cursor")
    assert found == set(range(1, 11))


def test_versions_that_fit_are_answered_as_before(monkeypatch):
    whole = record(monkeypatch, deployed=4, fits=10, count=5)
    assert [v["id"] for v in whole["versions"]] == [1, 2, 3, 4, 5]
    assert list(whole) == ["id", "name", "workspace_id", "created_at", "updated_at", "versions", "deployment"]
