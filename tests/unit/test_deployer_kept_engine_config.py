"""A redeploy that sends back the engine_config its deployment has stored is taken, even with a value the deployer's
checks refuse since: monitoring's set_model, set_shadow_model and a challenge's promotion redeploy with the
deployment's own config (pipelines/get's `engine_config`). 13688bb1 and d66d1079 (session 37) refused a
replica_autoscale_min_max bound or a batch_max_rows of 2.5 or `true`, which the deployer stored before: every such
redeploy of a deployment nobody changed became a 400. A config that is not the stored one is checked as any."""

from __future__ import annotations

import json

import pytest

from services.deployer import handlers
from shared.errors import InvalidRequest
from shared.messages.deployer import DeployPipeline
from tests.unit.deployer_world import ALICE, PIPELINE, VERSION, make_world

# as the deployer stored them before session 37: replica_count and cpus read, the rest as given
STORED = {"replica_autoscale_min_max": {"minimum": True, "maximum": 3}, "batch_max_rows": 2.5,
          "batch_max_delay_ms": 5, "cpus": 1.0, "replica_count": 1}


@pytest.fixture
def world(tmp_path, monkeypatch):
    world = make_world(tmp_path, monkeypatch)
    world.store.deployments[5] = {
        "id": 5, "pipeline_id": PIPELINE, "pipeline_name": "p", "workspace_id": 7, "pipeline_version": "v",
        "pipeline_version_id": VERSION, "deploy_id": "p", "active": True, "deployed_pending": False, "served": True,
        "announced": True, "engine_config": json.dumps(STORED), "spec": "{}", "activation": None}

    async def active_deployment(pool, pipeline_id):
        return next((dict(row) for row in world.store.deployments.values()
                     if row["pipeline_id"] == pipeline_id and row["active"]), None)

    world.store.active_deployment = active_deployment
    world.backend.hold = False
    return world


def deploy(world, engine_config):
    return handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
        deploy_id="p", pipeline_version_pk_id=VERSION, pipeline_id=PIPELINE, engine_config=engine_config))


async def test_the_stored_config_sent_back_unchanged_is_deployed_as_it_was(world):
    deployed = await deploy(world, json.loads(json.dumps(STORED)))  # what monitoring read from pipelines/get
    assert [s.name for s in world.backend.started] == [f"p-{deployed.id}"]
    assert json.loads(world.store.deployments[5]["engine_config"]) == STORED


@pytest.mark.parametrize("changed", [
    STORED | {"batch_max_rows": 3.5},
    STORED | {"replica_autoscale_min_max": {"minimum": True, "maximum": 4}},
    {"batch_max_rows": 2.5},
])
async def test_another_config_is_checked_as_any(world, changed):
    with pytest.raises(InvalidRequest, match="must be an integer"):
        await deploy(world, changed)
    assert json.loads(world.store.deployments[5]["engine_config"]) == STORED


async def test_a_first_deploy_is_checked_as_any(world):
    world.store.deployments.clear()
    with pytest.raises(InvalidRequest, match="must be an integer"):
        await deploy(world, STORED)
