"""What a user is told when a pipeline names a model version the workspace does not have (the registry's
resolve_model): a model and version that exist with another sha, or a model without that version, were both
"model 'x' (version V) not found in the workspace", which sent the user looking for a model that is there. Seed 001's
pipelines/create takes name, version and sha (lines 3322-3345); a definition copied with a stale sha is the
common case.

Since 2026-12-06 pipelines/create looks its definition's models up (registry.models.resolve with exists_only) and
refuses such a definition with one 400 naming every reference it does not find, in these words, creating nothing
(before, it answered 200 and the deploy was the 404). A deploy still resolves what it deploys: a version pinned by
its `models` parameter that the workspace does not have is the 404 in the same words, and nothing is deployed."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import post
from tests.integration.test_pipelines import create_pipeline, upload_model

pytestmark = pytest.mark.integration


def _ref(version: dict) -> dict:
    return {"name": version["model_id"], "version": version["model_version"], "sha": version["sha"]}


def _pipelines(stack, account) -> list[str]:
    listed = post(stack, "pipelines/list", account.token, {"workspace_id": account.workspace_id}).json()
    return [p["name"] for p in listed["pipelines"]]


def test_a_wrong_sha_or_version_is_named_not_the_model_called_missing(stack, alice):
    version = upload_model(stack, alice, "resolvemsg")
    good, unknown = _ref(version), str(uuid.uuid4())
    stale = good | {"sha": "0" * 64}

    # every reference the workspace lacks named in one 400 (a good one beside them, and one named twice, asked once)
    refused = post(stack, "pipelines/create", alice.token, {
        "pipeline_id": "resolvemsg", "workspace_id": alice.workspace_id, "definition": {"steps": [
            {"ModelInference": {"models": [good]}}, {"ModelInference": {"models": [stale]}},
            {"RandomSplit": {"weights": [1, 1], "models": [good | {"version": unknown}, {"name": "nosuchmodel"}]}},
            {"ModelInference": {"models": [stale]}}]}})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_request", refused.text
    assert refused.json()["msg"] == (
        "the definition names 3 model versions the workspace does not have, so nothing was created: "
        f"definition.steps[1].ModelInference: model 'resolvemsg' version {version['model_version']} has sha "
        f"{version['sha']}, not {'0' * 64!r}: give the version's sha as models/list_versions lists it, or leave sha "
        f"out; definition.steps[2].RandomSplit: model 'resolvemsg' has no version {unknown} in the workspace "
        "(models/list_versions lists its versions); definition.steps[2].RandomSplit: model 'nosuchmodel' (version "
        "latest) not found in the workspace. Upload the model (models/upload_and_convert) or correct the reference's "
        "name, version or sha (models/list lists the workspace's models, models/list_versions their versions), then "
        "create the pipeline again")
    assert "resolvemsg" not in _pipelines(stack, alice)  # nothing created

    # a deploy pinning a version the workspace lacks (its `models`): the registry's 404 in the same words
    created = create_pipeline(stack, alice, "resolvemsg", version)
    answer = post(stack, "pipelines/deploy", alice.token, {
        "deploy_id": "resolvemsg", "pipeline_version_pk_id": created["pipeline_variant_pk_id"],
        "pipeline_id": created["pipeline_pk_id"], "models": [stale]})
    assert answer.status_code == 404 and answer.json()["code"] == "not_found", answer.text
    assert answer.json()["msg"] == (
        f"model 'resolvemsg' version {version['model_version']} has sha {version['sha']}, not {'0' * 64!r}: give the "
        "version's sha as models/list_versions lists it, or leave sha out")
    pipeline = post(stack, "pipelines/get", alice.token, {"pipeline_id": created["pipeline_pk_id"]}).json()
    assert not pipeline.get("deployment"), "a refused deploy started nothing"
