"""What a deploy is told when a pipeline step names a model version the workspace does not have (the registry's
resolve_model): a model and version that exist with another sha, or a model without that version, were both
"model 'x' (version V) not found in the workspace", which sent the user looking for a model that is there. Seed 001's
pipelines/create takes name, version and sha (lines 3322-3345); a definition copied with a stale sha is the
common case. Still a 404 and nothing deployed."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import post
from tests.integration.test_pipelines import create_pipeline, upload_model

pytestmark = pytest.mark.integration


def _deploy(stack, account, name: str, step: dict):
    created = create_pipeline(stack, account, name, step)
    answer = post(stack, "pipelines/deploy", account.token,
                  {"deploy_id": name, "pipeline_version_pk_id": created["pipeline_variant_pk_id"],
                   "pipeline_id": created["pipeline_pk_id"]})
    pipeline = post(stack, "pipelines/get", account.token, {"pipeline_id": created["pipeline_pk_id"]}).json()
    assert not pipeline.get("deployment"), "a refused deploy started nothing"
    return answer


def test_a_wrong_sha_or_version_is_named_not_the_model_called_missing(stack, alice):
    version = upload_model(stack, alice, "resolvemsg")

    stale = _deploy(stack, alice, "stale-sha", version | {"sha": "0" * 64})
    assert stale.status_code == 404 and stale.json()["code"] == "not_found", stale.text
    assert stale.json()["msg"] == (
        f"model 'resolvemsg' version {version['model_version']} has sha {version['sha']}, not {'0' * 64!r}: give the "
        "version's sha as models/list_versions lists it, or leave sha out")

    unknown = str(uuid.uuid4())
    missing = _deploy(stack, alice, "no-such-version", version | {"model_version": unknown})
    assert missing.status_code == 404, missing.text
    assert missing.json()["msg"] == (f"model 'resolvemsg' has no version {unknown} in the workspace "
                                     "(models/list_versions lists its versions)")

    nobody = _deploy(stack, alice, "no-such-model", version | {"model_id": "nosuchmodel"})
    assert nobody.status_code == 404, nobody.text
    assert nobody.json()["msg"].startswith("model 'nosuchmodel' (version ")
    assert nobody.json()["msg"].endswith("not found in the workspace")
