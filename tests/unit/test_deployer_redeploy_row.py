"""A redeploy of a deployment that serves records its new version once the new replicas serve, not before
(services/deployer/handlers.py, _start_deployment; docs/inference.md "Deployments"). The row was written first: while
the new replicas loaded (up to the ready timeout), pipelines/get, status and the gateway's routes (input schema,
version) named the new version while only the old replicas answered, and after a failed redeploy the gateway's
cached route kept the failed version for a moment. Same in-memory world as test_deployer_locks.py."""

from __future__ import annotations

import asyncio

import pytest

from services.deployer import handlers
from shared.errors import InvalidRequest
from shared.messages.deployer import DeployPipeline
from tests.unit.test_deployer_locks import ALICE, PIPELINE, VERSION, _deployed_as, _until, world  # noqa: F401

NEW = VERSION + 1


@pytest.mark.parametrize(("deploy_id", "ready"), [("a", True), ("b", True), ("a", False)])
def test_the_row_names_the_new_version_once_its_replicas_serve(world, deploy_id, ready):  # noqa: F811 - the fixture
    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        old = world.backend.sets["a-5"]
        before = dict(world.store.deployments[5])
        world.store.versions[NEW] = dict(world.store.versions[VERSION], id=NEW)
        at_stop: list[tuple[int, str]] = []
        stop_set = world.backend._stop_set

        async def stopping(replica_set) -> None:  # what the row says when the old set is asked to drain
            if replica_set is old:
                row = world.store.deployments[5]
                at_stop.append((row["pipeline_version_id"], row["deploy_id"]))
            await stop_set(replica_set)

        world.backend._stop_set = stopping
        redeploy = asyncio.create_task(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
            deploy_id=deploy_id, pipeline_version_pk_id=NEW, pipeline_id=PIPELINE,
            engine_config={"replica_count": 2})))
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        # loading: the old set alone serves, and the deployment is still what it was
        assert world.store.deployments[5] == before
        route = await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert route.name == "a-5" and route.status != "Error"
        if ready:
            world.backend.waiting.pop()[1].set_result(None)
            await redeploy
            row = world.store.deployments[5]
            assert (row["pipeline_version_id"], row["deploy_id"], row["active"]) == (NEW, deploy_id, True)
            assert '"replica_count": 2' in row["engine_config"]
            assert at_stop == [(NEW, deploy_id)]  # written once the new set served, before the old one drained
            assert list(world.backend.sets) == [f"{deploy_id}-5"]
        else:
            world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
            with pytest.raises(InvalidRequest) as refused:
                await redeploy
            assert "the model did not load" in refused.value.msg  # the reason, and that nothing changed
            assert "a-5 still serves the previous version" in refused.value.msg
            assert world.store.deployments[5] == before and at_stop == []
            assert world.backend.sets == {"a-5": old} and not old.stopping
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))
