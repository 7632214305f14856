"""pipelines/deploy's precondition `only_if_serving` over HTTP on the real stack (services/deployer/handlers.py
_check_serving, docs/inference.md "Deployments"): a deploy given the pk id of the version that serves deploys; given
another one, or when nothing serves, it is refused with 409 `serving_changed`, names what serves now, and changes
nothing (the same version serves, no deployed event). Before the field, a deploy replaced whatever served, so a deploy
that the deployer served late (its caller gone, a newer version served meanwhile) put an older version back. A
deploy waiting for the pipeline's lock behind another that changes what serves:
tests/unit/test_deployer_precondition.py."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from shared import subjects
from tests.integration.bus_events import stream_events
from tests.integration.conftest import post, query
from tests.integration.test_deploy_restore_event import pipeline_of_one_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _deploy(stack, account, pipeline_id: int, version_id: int, deploy_id: str, only_if_serving: int | None = None):
    body = {"deploy_id": deploy_id, "pipeline_id": pipeline_id, "pipeline_version_pk_id": version_id}
    if only_if_serving is not None:
        body["only_if_serving"] = only_if_serving
    return post(stack, "pipelines/deploy", account.token, body)


def _deployed_events(stack, pipeline_id: int, count: int = 0, version_created: str | None = None) -> list[dict]:
    """The pipeline's events.pipeline.deployed on the stream, once there are `count`, or once the events.pipeline.
    version_created of its version `version_created` is there (or 10 s). The deployer's outbox sends a pipeline's
    events in order (services/deployer/store.py): a deployed event written before that version was created is on the
    stream by then, so one that must not have been written is looked for without waiting out a timer for it."""
    deadline = time.monotonic() + 10
    while True:
        found = asyncio.run(stream_events(stack, "events.pipeline.>", "pipeline_id", {pipeline_id}))
        deployed = [e for e in found if e["_subject"] == subjects.EVENT_PIPELINE_DEPLOYED]
        if version_created is None and len(deployed) >= count or time.monotonic() > deadline or \
                any(e["_subject"] == subjects.EVENT_PIPELINE_VERSION_CREATED and
                    e["pipeline_version"] == version_created for e in found):
            return deployed
        time.sleep(0.2)


def test_a_deploy_only_if_a_version_serves(stack, alice):
    name = f"onlyif{os.getpid() % 10000}"
    first = pipeline_of_one_model(stack, alice, name)
    pipeline_id, v1 = first["pipeline_pk_id"], first["pipeline_variant_pk_id"]
    second = post(stack, "pipelines/create", alice.token, {
        "pipeline_id": name, "workspace_id": alice.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [{"name": name}]}}], "note": "second"}})
    assert second.status_code == 200, second.text
    v2 = second.json()["pipeline_variant_pk_id"]
    assert v2 != v1

    # nothing serves (never deployed): refused, and nothing is deployed
    refused = _deploy(stack, alice, pipeline_id, v1, name, only_if_serving=v1)
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "serving_changed"
    assert "nothing serves now (the pipeline is not deployed)" in refused.json()["msg"]
    assert post(stack, "pipelines/get", alice.token, {"pipeline_id": pipeline_id}).json()["deployment"] is None
    assert query(stack, "SELECT count(*) AS n FROM deployer.deployments WHERE pipeline_id = $1",
                 pipeline_id)[0]["n"] == 0

    deployed = _deploy(stack, alice, pipeline_id, v1, name)  # the seed's deploy, no precondition
    assert deployed.status_code == 200, deployed.text
    deployment = f"{name}-{deployed.json()['id']}"
    assert len(_deployed_events(stack, pipeline_id, 1)) == 1

    # v2 does not serve (v1 does): refused, v1 keeps serving, no new deployed event
    refused = _deploy(stack, alice, pipeline_id, v2, name, only_if_serving=v2)
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["code"] == "serving_changed"
    assert f"version {v1} serves now (deployment {deployment!r})" in body["msg"], body
    record = post(stack, "pipelines/get", alice.token, {"pipeline_id": pipeline_id}).json()
    assert record["deployment"]["pipeline_version_pk_id"] == v1
    assert post(stack, "status/get_deployment", alice.token, {"name": deployment}).json()["status"] == "Running"
    assert query(stack, "SELECT count(*) AS n FROM deployer.outbox WHERE payload->>'pipeline_id' = $1",
                 str(pipeline_id))[0]["n"] == 0
    # and no deployed event: looked for below, behind a later event of the pipeline (it waited 10 s here)

    # v1 serves: the precondition holds, v2 is deployed in its place
    swapped = _deploy(stack, alice, pipeline_id, v2, name, only_if_serving=v1)
    assert swapped.status_code == 200, swapped.text
    record = post(stack, "pipelines/get", alice.token, {"pipeline_id": pipeline_id}).json()
    assert record["deployment"]["pipeline_version_pk_id"] == v2
    # a version created after it all: the deployed events written before it are the first deploy's and the swap's,
    # none of the refusals'
    marker = post(stack, "pipelines/create", alice.token, {
        "pipeline_id": name, "workspace_id": alice.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [{"name": name}]}}], "note": "marker"}})
    assert marker.status_code == 200, marker.text
    events = _deployed_events(stack, pipeline_id, version_created=marker.json()["pipeline_variant_version"])
    assert [e["pipeline_version"] for e in events] == [first["pipeline_variant_version"],
                                                       second.json()["pipeline_variant_version"]], events
