"""Deploy, undeploy and the restore after a restart of one pipeline at once (services/deployer/handlers.py,
docs/architecture.md "Commands at once"): the handlers run against an in-memory store and the real LocalBackend's
replica-set bookkeeping, whose replicas are stand-ins the test declares ready (or failed) when it chooses.
The invariant every test ends on: each replica set started is either the one the backend tracks under its name or
stopped; none runs untracked."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from services.deployer import handlers
from shared.errors import Conflict, InvalidRequest
from shared.messages.deployer import CopyPipeline, DeployPipeline
from tests.unit.deployer_world import (  # noqa: F401 - re-exported: the other deployer tests import them from here
    ALICE,
    PIPELINE,
    VERSION,
    WORKSPACE,
    HeldBackend,
    MemoryPool,
    MemoryStore,
    _deploy,
    _deployed_as,
    _lock_waiters,
    _until,
    make_world,
)


@pytest.fixture
def world(tmp_path, monkeypatch):
    return make_world(tmp_path, monkeypatch)


def test_an_undeploy_waiting_behind_a_redeploy_stops_the_name_the_redeploy_gave(world):
    """Deployment 5 runs as a-5; a redeploy as b and an undeploy arrive together. The undeploy read the row (a)
    before it waited for the lock, then stopped a-5 while b-5 kept running, with the deployment inactive."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        lock = world.deps.pipeline_lock(PIPELINE)
        await lock.acquire()  # both arrive while something else of the pipeline holds its lock
        redeploy = _deploy(world, "b")
        await _until(lambda: _lock_waiters(world.deps) == 1, "the redeploy waits for the lock")
        undeploy = asyncio.create_task(handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5))
        await _until(lambda: _lock_waiters(world.deps) == 2, "the undeploy waits for the lock")
        lock.release()
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        world.backend.waiting.pop()[1].set_result(None)
        await redeploy
        await undeploy
        assert not world.store.deployments[5]["active"]
        assert world.backend.sets == {}, world.backend.sets
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))



@pytest.mark.parametrize("ready", [True, False])
def test_a_redeploy_under_another_deploy_id_stops_the_old_names_replicas_once_the_new_serve(world, ready):
    """The backend swaps replica sets of one name; a redeploy as b never stopped a-5. It stops once b-5 serves (a-5
    serves meanwhile). When b-5 fails, nothing changes: a-5 keeps serving and the deployment is a-5 again, active
    (it used to stop a-5 too, an outage nobody asked for)."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        old = world.backend.sets["a-5"]
        redeploy = _deploy(world, "b")
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        assert not old.stopping
        world.backend.waiting.pop()[1].set_result(None) if ready else \
            world.backend.waiting.pop()[1].set_exception(TimeoutError("not ready"))
        if ready:
            await redeploy
        else:
            with pytest.raises(InvalidRequest) as refused:
                await redeploy
            assert "not ready" in refused.value.msg and "a-5 still serves" in refused.value.msg
        assert old.stopping == ready
        assert list(world.backend.sets) == (["b-5"] if ready else ["a-5"])
        row = world.store.deployments[5]
        assert row["active"] and row["deploy_id"] == ("b" if ready else "a")
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))


def test_a_failed_deploy_of_a_deployment_not_serving_leaves_it_inactive_with_nothing_running(world):
    """A deploy as a-5 after an undeploy whose replicas fail: its row (kept from before) is not put back active,
    and nothing runs. A redeploy of a deployment that serves and fails changes nothing:
    tests/unit/test_deployer_redeploy_row.py, tests/integration/test_deploy_lifecycle.py."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
        world.store.versions[VERSION + 1] = dict(world.store.versions[VERSION], id=VERSION + 1)
        redeploy = asyncio.create_task(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
            deploy_id="a", pipeline_version_pk_id=VERSION + 1, pipeline_id=PIPELINE,
            engine_config={"replica_count": 2})))
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest) as refused:
            await redeploy
        assert "the model did not load" in refused.value.msg and "still serves" not in refused.value.msg
        assert not world.store.deployments[5]["active"] and world.backend.sets == {}
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))


def test_a_deploy_during_the_restore_after_a_restart_keeps_its_replicas_tracked(world):
    """The restore after a deployer restart took no lock: a deploy of the same name (a-5) swapped its set in while
    the restore's replicas loaded, and the restore's failure cleanup (LocalBackend.start's `sets.pop`) then
    removed the deploy's live set from the backend, its replicas running with nothing to stop them."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        world.backend.sets.clear(), world.backend.started.clear()  # restarted: the row is active, nothing runs
        await handlers.restore_deployments(world.deps)
        restores = asyncio.all_tasks() - {asyncio.current_task()}
        await _until(lambda: world.backend.waiting, "the restore starts its replicas")
        restoring = world.backend.waiting.pop(0)
        deploy = _deploy(world, "a")
        await _until(lambda: world.backend.waiting or _lock_waiters(world.deps), "the deploy starts or waits")
        if world.backend.waiting:  # no lock: the deploy's set serves first, then the restore fails
            world.backend.waiting.pop(0)[1].set_result(None)
            await deploy
            restoring[1].set_exception(TimeoutError("not ready"))
        else:
            restoring[1].set_exception(TimeoutError("not ready"))
            await _until(lambda: world.backend.waiting, "the deploy starts its replicas")
            world.backend.waiting.pop(0)[1].set_result(None)
            await deploy
        await asyncio.gather(*restores)
        assert list(world.backend.sets) == ["a-5"] and world.backend.sets["a-5"] is world.backend.started[-1]
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))


def test_an_undeploy_behind_a_running_deploy_is_a_409_that_changes_nothing(world):
    """A deploy holds the pipeline's lock until its replicas serve (up to deployer.ready_timeout, 60 s); an
    undeploy waited for it past the gateway's request timeout (504) and was done later anyway. It now waits at
    most half the request timeout, then answers 409 deploy_in_progress."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        world.deps.timeout = 0.2
        redeploy = _deploy(world, "b")
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        with pytest.raises(Conflict) as refused:
            await asyncio.wait_for(handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5), 2)
        assert refused.value.code == "deploy_in_progress" and "retry the undeploy" in refused.value.msg
        world.backend.waiting.pop()[1].set_result(None)
        await redeploy
        assert world.store.deployments[5]["active"] and list(world.backend.sets) == ["b-5"]
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)  # once it finished
        assert not world.store.deployments[5]["active"] and world.backend.sets == {}

    asyncio.run(scenario(world))


def test_a_copy_whose_replicas_fail_to_start_is_kept_undeployed_as_a_deploy_leaves_its_version(world):
    """What a copy with `deploy` cannot check before it creates the copy (the integration test checks the rest):
    replicas that fail to start. As pipelines/deploy: a 400 with their reason, nothing runs, the deployment
    inactive; the copy stays, and the answer names it (a retry of the copy would be a 409)."""

    async def scenario(world) -> None:
        copy = asyncio.create_task(handlers.copy_pipeline(world.deps, ALICE, "t", CopyPipeline(
            name="copied", workspace_id=WORKSPACE, source_pipeline=PIPELINE, deploy="c")))
        await _until(lambda: world.backend.waiting, "the copy starts its replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest) as refused:
            await copy
        assert "the model did not load" in refused.value.msg and "pipeline 2" in refused.value.msg
        assert world.store.pipelines[2]["name"] == "copied"
        assert not world.store.deployments[5]["active"] and world.backend.sets == {}
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))


def test_the_deployers_stop_cancels_and_awaits_the_restore_and_stops_its_replicas(world):
    """restore_deployments created its restarts with asyncio.create_task and kept no reference: the loop holds
    tasks weakly (they could be garbage-collected mid-flight), and the deployer's stop could neither cancel nor await
    them, so a restart still loading models outlived stop(), its replicas started after the backend closed. Now one
    task owns them (handlers.DeploymentRestore) and app.stop cancels it first: nothing is left running or tracked."""
    from services.deployer import app

    async def scenario(world) -> None:
        world.backend.hold = False
        for deploy_id, pipeline in (("a", PIPELINE), ("b", 2)):
            world.store.pipelines[pipeline] = dict(world.store.pipelines[PIPELINE], id=pipeline)
            world.store.deployments[pipeline + 4] = {"id": pipeline + 4, "pipeline_id": pipeline, "active": True,
                                                     "deploy_id": deploy_id, "engine_config": "{}", "spec": json.dumps(
                                                         {"deployment": {"pipeline": "p", "pipeline_version": "v",
                                                                         "workspace_id": WORKSPACE}, "steps": []})}
        world.backend.hold = True
        runtime = SimpleNamespace(extras={"deps": world.deps})
        runtime.extras["restore"] = await handlers.restore_deployments(world.deps)
        await _until(lambda: len(world.backend.waiting) == 2, "both restarts load their replicas")
        loading = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await asyncio.wait_for(app.stop(runtime), 5)
        assert all(task.done() for task in loading), loading
        assert world.backend.sets == {} and all(s.stopping for s in world.backend.started)
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))


@pytest.mark.parametrize("order", ["handed_over_then_cancelled", "cancelled_then_handed_over"])
def test_an_undeploy_cancelled_as_the_lock_is_handed_to_it_does_nothing_and_leaves_the_lock_free(world, order):
    """The undeploy waits for the pipeline's lock; the lock is handed to it and, in the same step of the loop, it is
    cancelled (what its answer's bound, UNDEPLOY_ANSWERS_WITHIN, or the deployer's stop does). It waited with
    asyncio.wait_for(lock.acquire()), which on Python 3.11 runs the acquire as a task of its own and, cancelled after
    that task took the lock, returns the lock instead of the cancellation: the undeploy went on, past its bound, and
    made the undeploy its caller had given up on (handed_over_then_cancelled: deactivated, replicas stopped, {}
    answered). Now the acquire is awaited in the undeploy's own task under asyncio.timeout: cancelled, it ends
    cancelled having changed nothing, and the lock is free (asyncio.Lock passes it on), never held by nobody."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        serving = world.backend.sets["a-5"]
        lock = world.deps.pipeline_lock(PIPELINE)
        await lock.acquire()  # a deploy of the pipeline holds it
        undeploy = asyncio.create_task(handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5))
        await _until(lambda: _lock_waiters(world.deps) == 1, "the undeploy waits for the lock")
        if order == "handed_over_then_cancelled":
            lock.release()
            undeploy.cancel()
        else:
            undeploy.cancel()
            lock.release()
        with pytest.raises(asyncio.CancelledError):
            await undeploy
        assert not lock.locked() and lock.waiting == 0
        assert world.store.deployments[5]["active"] and world.backend.sets == {"a-5": serving}
        assert not serving.stopping
        # nobody holds the lock: the next undeploy takes it at once and goes through
        assert await asyncio.wait_for(handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5), 2) == {}
        assert not world.store.deployments[5]["active"] and world.backend.sets == {} and serving.stopping
        assert not lock.locked() and lock.waiting == 0 and world.backend.untracked() == []

    asyncio.run(scenario(world))
