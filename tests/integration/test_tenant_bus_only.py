"""Token-checked commands that only the bus front door offers (no HTTP route of their own, so test_isolation.py's
HTTP sweep never sends them): another workspace's model (resolved, or looked up with registry.models.exist), dataset
file and saved dataset are not found for bob, a user of another workspace, exactly as for a name that does not
exist, while alice gets them."""

from __future__ import annotations

import json

import nats
import pytest

from shared import subjects
from shared.messages import Reply
from shared.sealed import sealed_request
from tests.integration.test_lineage import make_project, ok
from tests.integration.test_pipelines import upload_model

pytestmark = pytest.mark.integration


async def test_bus_only_commands_keep_another_workspaces_things_out_of_reach(stack, alice, bob):
    import asyncio

    from tests.integration.conftest import post

    await asyncio.to_thread(upload_model, stack, alice, "busmodel")
    made = await asyncio.to_thread(make_project, stack, alice)
    version = ok(await asyncio.to_thread(post, stack, "projects/create_version", alice.token,
                                         {"project_id": made["project"]["id"]}))
    images = made["images"]["id"]
    asks = {
        subjects.REGISTRY_MODELS_RESOLVE: {"workspace_id": alice.workspace_id, "name": "busmodel"},
        subjects.REGISTRY_MODELS_EXIST: {"workspace_id": alice.workspace_id, "models": [{"name": "busmodel"}]},
        subjects.LINEAGE_DATASETS_GET_FILE: {"dataset_id": images, "name": "cat.png"},
        subjects.LINEAGE_DATASETS_SAVED: {"dataset_id": images, "version_id": version["id"]},
    }
    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")  # the front door identity
    try:
        async def ask(subject: str, body: dict, token: str) -> Reply:
            message = await sealed_request(nc, subject, json.dumps(body).encode(), timeout=10,
                                           headers={"authorization": f"Bearer {token}"})
            return Reply.model_validate_json(message.data)

        for subject, body in asks.items():
            assert (await ask(subject, body, alice.token)).ok, subject
            refused = await ask(subject, body, bob.token)
            assert not refused.ok and refused.status == 404, (subject, refused)
            assert refused.error.code == "not_found", (subject, refused)
        # bob naming alice's model from his own workspace: his workspace has none of that name
        own = await ask(subjects.REGISTRY_MODELS_RESOLVE, {"workspace_id": bob.workspace_id, "name": "busmodel"},
                        bob.token)
        assert not own.ok and own.status == 404, own
        # and in one registry.models.exist (pipelines/create's look-up, session 37): alice's model is found in her
        # workspace only, her workspace is not found for bob, his own has no such model
        exist = {"models": [{"name": "busmodel"}, {"name": "busmodel", "sha": "0" * 64}]}
        mine = await ask(subjects.REGISTRY_MODELS_EXIST, {"workspace_id": alice.workspace_id, **exist}, alice.token)
        assert mine.ok and [m["index"] for m in mine.data["missing"]] == [1], mine
        own = await ask(subjects.REGISTRY_MODELS_EXIST, {"workspace_id": bob.workspace_id, **exist}, bob.token)
        assert own.ok and own.data["missing"] == [
            {"index": 0, "why": "model 'busmodel' (version latest) not found in the workspace"},
            {"index": 1, "why": "model 'busmodel' (version latest) not found in the workspace"}], own
    finally:
        await nc.close()
