"""projects/list_versions rows carry no `created`: that flag is create_version's (False when the call returned an
identical existing version, seed 000: "you'll receive the ID of that backup instead of creating a duplicate"). Until
2026-12-05 every listed row said `created: true` (the list was built of create_version's answer model, whose default
is True), though no call of the lister's created it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

from services.workflow_lineage import handlers
from shared.messages.lineage import ListProjectVersions, ProjectVersionInfo, ProjectVersions

ROW_KEYS = {"id", "project_id", "workspace_id", "number", "title", "description", "manifest_sha256", "created_by",
            "created_at"}


def _row(number: int) -> dict:
    return {"id": 10 + number, "project_id": 7, "workspace_id": 3, "number": number, "title": f"v{number}",
            "description": None, "manifest_sha256": "ab" * 32, "created_by": uuid.UUID(int=1),
            "created_at": datetime(2026, 12, 5, number, tzinfo=UTC)}


def test_listed_versions_have_the_rows_keys_and_no_created(monkeypatch):
    async def project(deps, principal, token, project_id):
        return {"id": project_id, "workspace_id": 3}

    async def versions_of(pool, project_id):
        return [_row(1), _row(2)]

    monkeypatch.setattr(handlers, "_project", project)
    monkeypatch.setattr(handlers.store, "versions_of", versions_of)
    principal = SimpleNamespace(user_id=str(uuid.UUID(int=1)))  # checked by _project (replaced here)
    answer = asyncio.run(handlers.list_versions(SimpleNamespace(pool=None), principal, None,
                                                ListProjectVersions(project_id=7)))
    rows = answer.model_dump(mode="json")["versions"]
    assert [r["number"] for r in rows] == [1, 2]
    assert [set(r) for r in rows] == [ROW_KEYS, ROW_KEYS]
    # the list's own model has no such field either (what protos/ and the gateway's answer describe)
    assert "created" not in ProjectVersions.model_json_schema()["$defs"]["ProjectVersionRecord"]["properties"]


def test_create_version_answers_still_say_whether_they_created():
    assert set(ProjectVersionInfo.model_fields) == ROW_KEYS | {"created"}
    assert ProjectVersionInfo(**{k: v for k, v in _row(1).items() if k != "created_by"}, created_by="u",
                              created=False).created is False
