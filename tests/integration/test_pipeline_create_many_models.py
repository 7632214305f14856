"""pipelines/create of a definition naming ~4,000 models (what its 64 KiB holds with short names): the deployer asked
the registry about each one (registry.models.resolve, 8 at a time) and passed the look-ups' bound, half the request
timeout: a 504 and nothing created, for a definition whose models all exist (measured on a test stack at load 5-7:
504 after 2.6-3.1 s, whether the models existed or not). Now registry.models.exist answers up to 1,000 references a
request with one query (tests/unit/test_pipeline_create_models_exist.py counts the requests); here the registry's
query on a real database: names, a pinned version and sha, a wrong sha said why."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.integration.conftest import Account, post
from tests.integration.test_pipelines import upload_model

pytestmark = pytest.mark.integration

COUNT = 4000


async def _copies(stack, account: Account, source: str, names: list[str]) -> None:
    """Models `names` in the account's workspace, each with a copy of `source`'s version (as rows: 3,999 uploads
    would take minutes)."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await conn.execute(
            "WITH made AS (INSERT INTO registry.models (workspace_id, name, owner_id) SELECT m.workspace_id, n,"
            " m.owner_id FROM registry.models m, unnest($3::text[]) n WHERE m.workspace_id = $1 AND m.name = $2"
            " RETURNING id) INSERT INTO registry.model_versions (model_id, model_version, owner_id, file_name,"
            " framework, runtime, status, sha, source_sha, size) SELECT made.id, gen_random_uuid(), v.owner_id,"
            " v.file_name, v.framework, v.runtime, v.status, v.sha, v.source_sha, v.size FROM made,"
            " registry.model_versions v JOIN registry.models m ON m.id = v.model_id WHERE m.workspace_id = $1"
            " AND m.name = $2", account.workspace_id, source, names)
    finally:
        await conn.close()


def test_a_definition_naming_4000_models_is_created(stack, alice):
    names = [f"{i:x}" for i in range(COUNT)]  # '0' ... 'f9f': a definition just under 64 KiB
    version = upload_model(stack, alice, names[0])
    asyncio.run(_copies(stack, alice, names[0], names[1:]))
    pinned = {"name": names[0], "version": version["model_version"], "sha": version["sha"]}
    wrong = {**pinned, "sha": "0" * 64}

    def create(extra: list[dict]) -> tuple[float, object]:
        definition = {"steps": [{"ModelInference": {"models": [{"name": n} for n in names] + extra}}]}
        started = time.monotonic()
        answer = post(stack, "pipelines/create", alice.token, {"pipeline_id": "many-models",
                                                               "workspace_id": alice.workspace_id,
                                                               "definition": definition})
        return time.monotonic() - started, answer

    took, refused = create([pinned, wrong])
    assert refused.status_code == 400, (took, refused.text[:300])
    assert refused.json()["msg"].startswith(
        f"the definition names 1 model version the workspace does not have, so nothing was created: "
        f"definition.steps[0].ModelInference: model '0' version {version['model_version']} has sha {version['sha']}, "
        f"not '{'0' * 64}'"), refused.text[:500]
    took, created = create([pinned])
    assert created.status_code == 200, (took, created.text[:300])
    print(f"pipelines/create of {COUNT + 1} models: {took:.2f} s")
