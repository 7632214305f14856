"""An assay of a workspace the caller is not in does not exist for them: `assays/get_results` and
`assays/set_active` answer it in the words of an assay id that was never created. Before (session 37's walk-through:
a second user asking for the admin's assay 1), they answered "workspace 2 not found", where an unused id answered
"assay 999 not found": an outsider learned which assay ids exist and the workspace each belongs to."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.assay_runner import handlers, store
from shared.authz import Principal
from shared.errors import NotFound
from shared.messages.assays import GetAssayResults, SetAssayActive

OUTSIDER = Principal(subject="bob", kind="user", admin=False, client_id="api-client", username="bob", issued_at=0)
ROWS = {1: {"id": 1, "workspace_id": 2, "pipeline_id": 7}}


@pytest.fixture
def deps(monkeypatch):
    async def get(pool, assay_id):
        return ROWS.get(assay_id)

    async def no_role(user_id, workspace_id):
        return None  # bob is a member of no workspace here

    monkeypatch.setattr(store, "get", get)
    return SimpleNamespace(pool=None, membership=lambda token: no_role)


async def message(call) -> str:
    with pytest.raises(NotFound) as refused:
        await call
    return refused.value.msg


async def test_another_workspaces_assay_reads_as_one_that_does_not_exist(deps):
    for assay_id in (1, 999):  # 1 exists in workspace 2; 999 does not exist
        said = await message(handlers.get_results(deps, OUTSIDER, "t", GetAssayResults(assay_id=assay_id)))
        assert said == f"assay {assay_id} not found"
        said = await message(handlers.set_active(deps, OUTSIDER, "t", SetAssayActive(id=assay_id, active=False)))
        assert said == f"assay {assay_id} not found"
        assert "workspace" not in said
