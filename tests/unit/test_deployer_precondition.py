"""pipelines/deploy's precondition `only_if_serving` is checked under the pipeline's lock (services/deployer/handlers.py
_activate, _check_serving): a deploy that waited for the lock behind another deploy of the pipeline, which changed
what serves, is refused (409 serving_changed) and changes nothing; an active deployment whose restore failed serves
nothing. The handlers run against deployer_world's in-memory store and the real LocalBackend's bookkeeping with
stand-in replicas; the HTTP contract on the real stack: tests/integration/test_deploy_precondition.py."""

from __future__ import annotations

import asyncio

import pytest

from services.deployer import handlers
from shared.errors import Conflict
from tests.unit.deployer_world import VERSION, _deploy, _deployed_as, _lock_waiters, _until, make_world

NEWER = VERSION + 1


@pytest.fixture
def world(tmp_path, monkeypatch):
    return make_world(tmp_path, monkeypatch)


def test_a_deploy_waiting_behind_one_that_changes_what_serves_is_refused(world):
    """Version 10 serves as a-5. A deploy of version 11 (no precondition) holds the pipeline's lock while its replicas
    start; a deploy only if version 10 serves arrives meanwhile and waits for the lock. When it gets the lock, 11
    serves: it is refused, names what serves, starts no replicas and writes nothing; 11 keeps serving. Without the
    check under the lock (checked on arrival, or not at all) it deployed over 11."""

    async def scenario(world) -> None:
        world.store.versions[NEWER] = dict(world.store.versions[VERSION], id=NEWER)
        await _deployed_as(world, "a")
        newer = _deploy(world, "a", NEWER)
        await _until(lambda: world.backend.waiting, "the newer deploy starts its replicas (holding the lock)")
        late = _deploy(world, "a", VERSION, only_if_serving=VERSION)
        await _until(lambda: _lock_waiters(world.deps) == 1, "the deploy only if 10 serves waits for the lock")
        world.backend.waiting.pop()[1].set_result(None)
        await newer
        events = list(world.store.events)
        started = list(world.backend.started)
        with pytest.raises(Conflict) as refused:
            await late
        assert refused.value.code == handlers.SERVING_CHANGED
        assert refused.value.status == 409
        assert f"version {NEWER} serves now (deployment 'a-5')" in refused.value.msg
        assert world.store.deployments[5]["pipeline_version_id"] == NEWER and world.store.deployments[5]["active"]
        assert world.backend.started == started and not world.backend.waiting  # no replicas started for it
        assert world.store.events == events  # no event written
        assert list(world.backend.sets) == ["a-5"] and world.backend.untracked() == []

    asyncio.run(scenario(world))


def test_a_deploy_whose_version_serves_deploys(world):
    async def scenario(world) -> None:
        world.store.versions[NEWER] = dict(world.store.versions[VERSION], id=NEWER)
        await _deployed_as(world, "a")
        world.backend.hold = False
        await _deploy(world, "a", NEWER, only_if_serving=VERSION)
        assert world.store.deployments[5]["pipeline_version_id"] == NEWER
        assert world.backend.untracked() == []

    asyncio.run(scenario(world))


def test_an_active_deployment_whose_restore_failed_serves_nothing(world):
    """The row is active with version 10, but its restore after a restart failed: nothing runs, so a deploy only if
    10 serves is refused (its caller's premise, 10 serving, is false) and says why."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        world.backend.sets.pop("a-5")
        world.deps.failed_restores["a-5"] = "its engine replicas did not start"
        with pytest.raises(Conflict) as refused:
            await _deploy(world, "a", VERSION, only_if_serving=VERSION)
        assert refused.value.code == handlers.SERVING_CHANGED
        assert "is active but its engine replicas do not run" in refused.value.msg
        assert world.deps.failed_restores == {"a-5": "its engine replicas did not start"}  # nothing changed

    asyncio.run(scenario(world))
