"""A restore after a deployer restart whose replicas fail to start (services/deployer/handlers.py, _restart;
docs/inference.md "Deployments"): the deployment stays active with nothing running, and it said "Starting" forever
(inference: 503 "starting; retry shortly"). Its status is now Error with the reason, and its inference a 503
`deployment_failed` saying to redeploy, until a deploy or an undeploy ends it. Same in-memory world as
test_deployer_locks.py: its store over dicts and the real LocalBackend's bookkeeping with stand-in replicas."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.deployer import handlers
from shared.errors import NotFound, Unavailable
from tests.unit.test_bus_database_unavailable import asyncpg_outage
from tests.unit.test_deployer_locks import ALICE, PIPELINE, _deploy, _deployed_as, _until, world  # noqa: F401

REASON = "railyard-engine: cached artifact 3f1e2d does not match its sha256; refusing to load it"


async def _restarted_and_failed(state) -> None:
    """Deployment 5 runs as a-5; the deployer restarts (its replicas die with it) and the restore's replicas fail."""
    await _deployed_as(state, "a")
    state.backend.sets.clear(), state.backend.started.clear()
    restore = await handlers.restore_deployments(state.deps)
    await _until(lambda: state.backend.waiting, "the restore starts its replicas")
    state.backend.waiting.pop()[1].set_exception(RuntimeError(REASON))
    await restore._task  # the restore ends (its failure logged)


@pytest.mark.parametrize("then", ["redeploy", "undeploy"])
def test_a_failed_restore_says_so_until_a_deploy_or_an_undeploy(world, then):  # noqa: F811 - the fixture
    async def scenario(world) -> None:
        await _restarted_and_failed(world)
        assert world.store.deployments[5]["active"] and world.backend.sets == {}
        status = await handlers.deployment_status(world.deps, ALICE, "t", "a-5")
        assert status.status == "Error" and status.engines == []
        assert len(status.details) == 1 and REASON in status.details[0] and "redeploy" in status.details[0]
        with pytest.raises(Unavailable) as refused:
            await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert refused.value.code == handlers.DEPLOYMENT_FAILED and refused.value.status == 503
        assert "failed to restore" in refused.value.msg and REASON in refused.value.msg
        assert "redeploy it (pipelines/deploy)" in refused.value.msg
        if then == "redeploy":
            redeploy = _deploy(world, "a")
            await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
            # while its replicas load, it is starting again, not failed
            assert (await handlers.deployment_status(world.deps, ALICE, "t", "a-5")).status == "Starting"
            world.backend.waiting.pop()[1].set_result(None)
            await redeploy
            route = await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
            assert route.name == "a-5" and route.pipeline_id == PIPELINE and list(world.backend.sets) == ["a-5"]
        else:
            await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
            assert (await handlers.deployment_status(world.deps, ALICE, "t", "a-5")).status == "Stopped"
            with pytest.raises(NotFound):
                await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert world.deps.failed_restores == {}

    asyncio.run(scenario(world))


def test_a_later_restart_tries_the_restore_again(world):  # noqa: F811 - the fixture
    async def scenario(world) -> None:
        await _restarted_and_failed(world)
        world.backend.hold = False  # the next restart's replicas start
        restore = await handlers.restore_deployments(world.deps)
        await restore._task
        assert "a-5" in world.backend.sets
        assert world.deps.failed_restores == {}
        assert (await handlers.deployment_status(world.deps, ALICE, "t", "a-5")).status != "Error"

    asyncio.run(scenario(world))


def test_a_restore_that_never_read_its_row_says_so_once_the_database_answers(world, monkeypatch):  # noqa: F811
    """The restore after a restart read its rows (store.active_deployments), then the database stopped giving a
    deployment's row through every try of its restore (RESTORE_READ_DELAYS): once the database answers again, the
    deployment's status is Error saying its restore failed and to redeploy it (inference: 503 deployment_failed),
    not "Starting" with nothing left to start it. Before, the given-up restore was logged only: the row active,
    nothing running, its status Starting until a deploy, an undeploy or a restart."""
    monkeypatch.setattr(handlers, "RESTORE_READ_DELAYS", (0.0, 0.01, 0.01))

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        world.backend.sets.clear(), world.backend.started.clear()  # the deployer restarted
        row_of = world.store.deployment
        tries: list[int] = []

        async def refused(pool, deployment_id):
            tries.append(deployment_id)
            raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)

        world.store.deployment = refused
        restore = await handlers.restore_deployments(world.deps)
        await restore._task  # every try refused: the restore gives up (logged)
        assert tries == [5, 5, 5] and world.backend.started == []
        world.store.deployment = row_of  # the database answers again
        status = await handlers.deployment_status(world.deps, ALICE, "t", "a-5")
        assert status.status == "Error", status
        assert "failed to restore" in status.details[0] and "its row" in status.details[0], status.details
        with pytest.raises(Unavailable) as refused_route:
            await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert refused_route.value.code == handlers.DEPLOYMENT_FAILED
        # a redeploy mends it
        world.backend.hold = False
        await _deploy(world, "a")
        assert list(world.backend.sets) == ["a-5"] and world.deps.failed_restores == {}

    asyncio.run(scenario(world))


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),  # a role's setting
    KeyError("deploy_id"),  # a bug of ours
], ids=lambda exc: type(exc).__name__)
def test_a_restore_whose_row_read_raises_what_no_retry_gets_past_says_so(world, error):  # noqa: F811
    """The restore's read of its row raises what is not the database failing (handlers.database_failed: asked
    again, the same): not retried, and the deployment's status is Error saying its restore failed and to redeploy
    it (inference: 503 deployment_failed), not "Starting" with nothing left to start it. Before, since 359ab981
    narrowed the deployer's tuple, nothing marked it (a 57014 had been _RowUnread: retried, then marked)."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        world.backend.sets.clear(), world.backend.started.clear()  # the deployer restarted
        row_of = world.store.deployment
        tries: list[int] = []

        async def failing(pool, deployment_id):
            tries.append(deployment_id)
            raise error

        world.store.deployment = failing
        restore = await handlers.restore_deployments(world.deps)
        await restore._task  # raised at once (logged)
        assert tries == [5] and world.backend.started == []
        world.store.deployment = row_of
        status = await handlers.deployment_status(world.deps, ALICE, "t", "a-5")
        assert status.status == "Error", status  # before: Starting
        assert "failed to restore" in status.details[0] and type(error).__name__ in status.details[0], status.details
        with pytest.raises(Unavailable) as refused_route:
            await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert refused_route.value.code == handlers.DEPLOYMENT_FAILED
        world.backend.hold = False  # a redeploy mends it
        await _deploy(world, "a")
        assert list(world.backend.sets) == ["a-5"] and world.deps.failed_restores == {}

    asyncio.run(scenario(world))
