"""The deployer's events go to its outbox (services/deployer/store.py EVENT_TYPES, shared/outbox.py) in the
transaction of the change they tell of, and only for a change that happened: events.pipeline.deployed once the
replicas serve (none while they load, none when they fail to start, and for a redeploy of a serving deployment with
the row that names its new version), events.pipeline.undeployed with the deactivation (none for a deployment that
was inactive already), events.pipeline.version_created with a new version.
The app wakes the outbox after each (`events_committed`). Before, each was published after its commit (a publish
that failed lost the event and answered an error for a stored change). Same in-memory world as
test_deployer_locks.py (its store stand-in records the outbox's rows)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.deployer import handlers
from shared import subjects
from shared.errors import InvalidRequest
from shared.messages.deployer import CreatePipeline, DeployPipeline
from tests.unit.test_deployer_locks import ALICE, PIPELINE, VERSION, WORKSPACE, _deploy, _until, world  # noqa: F401

NEW = VERSION + 1


def woken(made) -> list[int]:
    """The deps' events_committed calls (the outbox's wake-ups), each as how many events were written by then."""
    calls: list[int] = []
    made.deps.events_committed = lambda: calls.append(len(made.store.events))
    return calls


def test_a_deploy_writes_deployed_once_its_replicas_serve_and_an_undeploy_undeployed(world):  # noqa: F811
    async def scenario(world) -> None:
        calls = woken(world)
        deploy = _deploy(world, "a")
        await _until(lambda: world.backend.waiting, "the deploy starts its replicas")
        assert world.store.deployments[5]["active"]  # shown as starting
        assert world.store.events == []  # nothing told while the replicas load
        world.backend.waiting.pop()[1].set_result(None)
        assert (await deploy).id == 5
        assert [s for s, _ in world.store.events] == [subjects.EVENT_PIPELINE_DEPLOYED]
        event = world.store.events[0][1]
        assert (event.deployment_id, event.name, event.pipeline_id, event.workspace_id) == (5, "a-5", PIPELINE,
                                                                                            WORKSPACE)
        assert event.pipeline_version == str(world.store.versions[VERSION]["version"])
        assert calls and calls[-1] == 1  # woken after the event was written

        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
        assert [s for s, _ in world.store.events] == [subjects.EVENT_PIPELINE_DEPLOYED,
                                                      subjects.EVENT_PIPELINE_UNDEPLOYED]
        assert world.store.events[1][1].name == "a-5" and calls[-1] == 2
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)  # inactive already: nothing changed, no event
        assert len(world.store.events) == 2

    asyncio.run(scenario(world))


def test_a_deploy_whose_replicas_fail_writes_no_event(world):  # noqa: F811
    async def scenario(world) -> None:
        deploy = _deploy(world, "a")
        await _until(lambda: world.backend.waiting, "the deploy starts its replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest):
            await deploy
        assert not world.store.deployments[5]["active"] and world.store.events == []

    asyncio.run(scenario(world))


@pytest.mark.parametrize("ready", [True, False])
def test_a_redeploy_of_a_serving_deployment_writes_deployed_with_its_new_row(world, ready):  # noqa: F811
    async def scenario(world) -> None:
        world.backend.hold = False
        await _deploy(world, "a")
        world.backend.hold = True
        world.store.events.clear()
        world.store.versions[NEW] = dict(world.store.versions[VERSION], id=NEW)
        written_with: list[int] = []  # the row's version when the event was written
        add_event = world.store.add_event

        async def recorded(conn, subject, event) -> None:
            written_with.append(world.store.deployments[5]["pipeline_version_id"])
            await add_event(conn, subject, event)

        world.store.add_event = recorded
        redeploy = asyncio.create_task(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
            deploy_id="b", pipeline_version_pk_id=NEW, pipeline_id=PIPELINE)))
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        assert world.store.events == []
        if ready:
            world.backend.waiting.pop()[1].set_result(None)
            await redeploy
            assert [(s, e.name) for s, e in world.store.events] == [(subjects.EVENT_PIPELINE_DEPLOYED, "b-5")]
            assert written_with == [NEW]  # in record's transaction, after the row names the new version
        else:
            world.backend.waiting.pop()[1].set_exception(RuntimeError("no"))
            with pytest.raises(InvalidRequest):
                await redeploy
            assert world.store.events == []  # a-5 serves as before: nothing to tell

    asyncio.run(scenario(world))


def test_a_new_version_writes_version_created(world, monkeypatch):  # noqa: F811
    async def found(*args, **kwargs) -> None:  # the registry has the definition's models
        return None

    monkeypatch.setattr(handlers, "_check_models_exist", found)

    async def scenario(world) -> None:
        calls = woken(world)
        definition = {"steps": [{"ModelInference": {"models": [{"name": "m", "version": "v1"}]}}]}
        created = await handlers.create_pipeline(world.deps, ALICE, "t", CreatePipeline(
            pipeline_id="q", workspace_id=WORKSPACE, definition=definition))
        assert [s for s, _ in world.store.events] == [subjects.EVENT_PIPELINE_VERSION_CREATED]
        event = world.store.events[0][1]
        assert (event.pipeline_id, event.name, event.pipeline_version) == (
            created.pipeline_pk_id, "q", created.pipeline_variant_version)
        assert event.models == [{"name": "m", "version": "v1"}] and calls == [1]

    asyncio.run(scenario(world))


@pytest.mark.parametrize("restore_failed", [True, False])
def test_a_failed_deploy_tells_undeployed_only_for_a_deployment_that_was_active(world, restore_failed):  # noqa: F811
    """A deployment whose restore after a restart failed is active with nothing running; a deploy of it whose
    replicas fail too leaves it inactive, and says so (lineage kept it active otherwise). A failed deploy of a
    deployment already inactive (undeployed before) changed nothing it had told: no event."""

    async def scenario(world) -> None:
        world.backend.hold = False
        await _deploy(world, "a")
        world.backend.hold = True
        if restore_failed:  # as after a restart whose restore of a-5 failed
            world.backend.sets.pop("a-5")
            world.deps.failed_restores["a-5"] = "its engine replicas did not start"
        else:
            await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
        before = [s for s, _ in world.store.events]
        redeploy = _deploy(world, "a")
        await _until(lambda: world.backend.waiting, "the deploy starts its replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest):
            await redeploy
        assert not world.store.deployments[5]["active"]
        added = world.store.events[len(before):]
        if restore_failed:
            assert [(s, e.deployment_id, e.name) for s, e in added] == [(subjects.EVENT_PIPELINE_UNDEPLOYED, 5, "a-5")]
        else:
            assert added == []

    asyncio.run(scenario(world))


@pytest.mark.parametrize("owed", [True, False])
def test_the_restore_writes_the_deployed_event_a_dead_deployer_owed_and_no_other(world, owed):  # noqa: F811
    """A first deploy's row is active before its replicas start; a deployer dying before the commit of its deployed
    event left the row owing it (`deployed_pending`), and the restore after the restart, once the replicas serve
    again, writes it (once). A deployment whose event was written gets none from the restore."""
    async def scenario(world) -> None:
        world.backend.hold = False
        await _deploy(world, "a")  # served, its event written
        world.store.events.clear()
        if owed:  # as the dead deployer left it: active, the event not committed
            world.store.deployments[5]["deployed_pending"] = True
        world.backend.sets.clear(), world.backend.started.clear()  # the restart: its replicas died with it
        calls = woken(world)
        restore = await handlers.restore_deployments(world.deps)
        await restore._task
        assert list(world.backend.sets) == ["a-5"]
        expected = [(subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5")] if owed else []
        assert [(s, e.deployment_id, e.name) for s, e in world.store.events] == expected
        # a deployment whose event was written is named serving at the start (handlers.announce_serving, which wakes
        # the outbox); one owing it is not, its deployed event comes once it serves
        assert [(e.deployment_id, e.name, e.pipeline_name) for e in world.store.serving] == (
            [] if owed else [(5, "a-5", "p")])
        assert calls == ([1] if owed else [0])
        assert not world.store.deployments[5]["deployed_pending"]
        world.backend.sets.clear()
        await (await handlers.restore_deployments(world.deps))._task  # another restart: nothing owed any more
        assert [(s, e.deployment_id, e.name) for s, e in world.store.events] == expected

    asyncio.run(scenario(world))


def test_a_restore_that_fails_writes_no_deployed_event_and_a_later_one_that_serves_does(world):  # noqa: F811
    """The restore of a deployment still owing its deployed event (its deployer died before the commit) whose
    replicas fail to start again tells nothing: nothing serves (the deployment says its restore failed). The flag
    stays, so the next restart's restore that serves writes the event, once. Before, the failure was logged and the
    restore went on to write events.pipeline.deployed for a deployment with nothing running."""
    async def scenario(world) -> None:
        world.backend.hold = False
        await _deploy(world, "a")
        world.store.events.clear()
        world.store.deployments[5]["deployed_pending"] = True  # as the dead deployer left it
        world.backend.sets.clear(), world.backend.started.clear()
        world.backend.hold = True
        restore = await handlers.restore_deployments(world.deps)
        await _until(lambda: world.backend.waiting, "the restore starts the replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        await restore._task
        assert "a-5" in world.deps.failed_restores and "a-5" not in world.backend.sets
        assert world.store.events == [] and world.store.deployments[5]["deployed_pending"]
        world.backend.hold = False
        await (await handlers.restore_deployments(world.deps))._task  # the next restart: it serves now
        assert [(s, e.deployment_id) for s, e in world.store.events] == [(subjects.EVENT_PIPELINE_DEPLOYED, 5)]
        assert not world.store.deployments[5]["deployed_pending"]

    asyncio.run(scenario(world))


def _owing(made, case: str) -> None:
    """Deployment a-5, served and its deployed event written, then as `case` leaves it: "serving" its replicas serve
    but the event's write failed; "never served" a first deploy whose deployer died while its replicas loaded (or
    before the event's commit) and whose restore after the restart failed: never told deployed; "told before" the
    same for a redeploy of a deployment told deployed at an earlier version (lineage has it active); "served" its
    replicas served but the event's write failed (the row says they served: store.mark_served), then a restart whose
    restore failed."""
    row = made.store.deployments[5]
    row["deployed_pending"] = True  # its (latest) deployed event never committed
    row["served"] = case == "served"
    if case != "told before":
        row["announced"] = False
    if case != "serving":  # as after a restart whose restore of a-5 failed: nothing of it runs
        made.backend.sets.pop("a-5")
        made.deps.failed_restores["a-5"] = "its engine replicas did not start"


OWING = {"serving": [(subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5"), (subjects.EVENT_PIPELINE_UNDEPLOYED, 5, "a-5")],
         "never served": [], "told before": [(subjects.EVENT_PIPELINE_UNDEPLOYED, 5, "a-5")],
         "served": [(subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5"), (subjects.EVENT_PIPELINE_UNDEPLOYED, 5, "a-5")]}


@pytest.mark.parametrize("case", list(OWING))
def test_an_undeploy_of_a_deployment_owing_its_deployed_event_writes_it_only_if_it_serves(world, case):  # noqa: F811
    """A deployment still owing its events.pipeline.deployed (`deployed_pending`) that is undeployed: when its
    replicas serve (the deploy's own write of the event failed) the owed event is written first, with the undeploy
    (store.deactivate): lineage otherwise saw a deployment undeployed that it was never told was deployed. When
    nothing of it serves (its deployer died while the replicas loaded and the restore failed) nothing tells that it
    ever served: no deployed event, and no undeployed either unless lineage was told of it (an earlier version's
    deployed: `announced`). When the row says its replicas served ("served": the event's write failed, then the
    restore after a restart failed), the owed event is written too. Once: the row owes nothing afterwards. Before
    334ec66, the owed deployed event (and undeployed) was written for a deployment that never served; after it and
    before the `served` mark, none for one that served before the restart."""
    async def scenario(world) -> None:
        world.backend.hold = False
        await _deploy(world, "a")
        world.store.events.clear()
        _owing(world, case)
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
        assert [(s, e.deployment_id, e.name) for s, e in world.store.events] == OWING[case]
        if case in ("serving", "served"):
            deployed, undeployed = (e for _, e in world.store.events)
            assert deployed.pipeline_version == "v" and deployed.occurred_at < undeployed.occurred_at
        row = world.store.deployments[5]
        assert not row["active"] and not row["deployed_pending"] and not row["announced"]
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)  # inactive already: nothing more
        assert len(world.store.events) == len(OWING[case])

    asyncio.run(scenario(world))


@pytest.mark.parametrize("told_before", [False, True])
def test_a_failed_deploy_of_a_deployment_owing_its_deployed_event_never_writes_it(world, told_before):  # noqa: F811
    """The failed deploy that leaves an owing deployment (its restore failed: nothing of it serves) inactive writes
    no deployed event for it (nothing tells it ever served), and undeployed only if lineage was told it was deployed
    (at an earlier version). Before, the owed deployed event, then undeployed."""
    async def scenario(world) -> None:
        world.backend.hold = False
        await _deploy(world, "a")
        world.store.events.clear()
        _owing(world, "told before" if told_before else "never served")
        world.backend.hold = True
        world.store.versions[NEW] = dict(world.store.versions[VERSION], id=NEW, version=uuid.uuid4())
        redeploy = asyncio.create_task(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
            deploy_id="a", pipeline_id=PIPELINE, pipeline_version_pk_id=NEW)))
        await _until(lambda: world.backend.waiting, "the deploy starts its replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest):
            await redeploy
        assert [(s, e.deployment_id, e.name) for s, e in world.store.events] == OWING[
            "told before" if told_before else "never served"]
        assert not world.store.deployments[5]["deployed_pending"] and not world.store.deployments[5]["active"]

    asyncio.run(scenario(world))


@pytest.mark.parametrize("failures", [1, 3])
def test_a_deployed_event_whose_write_fails_is_written_in_the_background_once(world, monkeypatch, failures):  # noqa: F811
    """A deploy whose replicas serve but whose write of events.pipeline.deployed fails answers (the deployment
    serves) and the owed event is written again in the background until the database takes it (OwedDeployed),
    once: the row owes nothing afterwards and nothing writes it again (a restore after a restart neither). Before, the
    deploy failed with the database's error and the event waited for the next restart or redeploy."""
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (0.01,) * 5)

    async def scenario(world) -> None:
        world.backend.hold = False
        record_deployed, refused = world.store.record_deployed, []

        async def flaky(conn, event, *, if_pending=False):
            if len(refused) < failures:
                refused.append(if_pending)
                raise ConnectionResetError("the commit was lost")
            return await record_deployed(conn, event, if_pending=if_pending)

        world.store.record_deployed = flaky
        calls = woken(world)
        assert (await _deploy(world, "a")).id == 5
        assert world.store.events == [] and world.store.deployments[5]["deployed_pending"]
        await _until(lambda: world.store.events, "the owed event is written")
        await _until(lambda: not world.deps.owed.tasks, "the retry is over")
        assert refused == [False] + [True] * (failures - 1)
        assert [(s, e.deployment_id, e.name) for s, e in world.store.events] == [(subjects.EVENT_PIPELINE_DEPLOYED, 5,
                                                                                  "a-5")]
        assert not world.store.deployments[5]["deployed_pending"] and calls[-1] == 1
        world.backend.sets.clear()
        await (await handlers.restore_deployments(world.deps))._task  # a restart: nothing owed any more
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
        assert [s for s, _ in world.store.events] == [subjects.EVENT_PIPELINE_DEPLOYED,
                                                      subjects.EVENT_PIPELINE_UNDEPLOYED]

    asyncio.run(scenario(world))


def test_an_undeploy_before_the_background_write_of_the_owed_event_writes_it_once(world, monkeypatch):  # noqa: F811
    """An undeploy while the owed event waits for its background write writes it itself (store.deactivate); the
    background write then finds nothing owed: one deployed event, then undeployed, and no other."""
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (0.2, 0.01))

    async def scenario(world) -> None:
        world.backend.hold = False
        record_deployed = world.store.record_deployed

        async def refused_once(conn, event, *, if_pending=False):
            world.store.record_deployed = record_deployed
            raise ConnectionResetError("the commit was lost")

        world.store.record_deployed = refused_once
        await _deploy(world, "a")
        assert world.deps.owed.tasks
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
        await asyncio.gather(*world.deps.owed.tasks.values())
        assert [(s, e.deployment_id) for s, e in world.store.events] == [(subjects.EVENT_PIPELINE_DEPLOYED, 5),
                                                                         (subjects.EVENT_PIPELINE_UNDEPLOYED, 5)]

    asyncio.run(scenario(world))


def test_a_deployed_event_whose_write_fails_after_the_stop_starts_no_background_write(world):  # noqa: F811
    """A deploy still running when the deployer stops (the command drain waits 15 s, a deploy up to its replicas'
    ready timeout) whose write of its deployed event fails after OwedDeployed.stop starts no background write: it
    would outlive the stop, writing through the pool the service closes next. The row keeps owing the event (the
    next start's restore writes it). Before, owe() made a task after stop() had cancelled the others."""
    async def scenario(world) -> None:
        world.backend.hold = False
        record_deployed = world.store.record_deployed

        async def refused_once(conn, event, *, if_pending=False):
            world.store.record_deployed = record_deployed
            raise ConnectionResetError("the commit was lost")

        world.store.record_deployed = refused_once
        await world.deps.owed.stop()
        assert (await _deploy(world, "a")).id == 5
        assert world.deps.owed.tasks == {}
        assert world.store.events == [] and world.store.deployments[5]["deployed_pending"]

    asyncio.run(scenario(world))


def test_a_restores_deployed_event_whose_write_fails_is_written_in_the_background_once(world, monkeypatch):  # noqa: F811
    """The restore after a restart whose replicas serve but whose write of the deployed event the dead deployer
    owed fails hands the event to the background write (OwedDeployed), as a deploy does: written once, and nothing
    writes it again. Before, the error ended the restart (logged) and the event waited for the next restart."""
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (0.01,) * 5)

    async def scenario(world) -> None:
        world.backend.hold = False
        await _deploy(world, "a")
        world.store.events.clear()
        world.store.deployments[5]["deployed_pending"] = True  # as the dead deployer left it
        world.backend.sets.clear(), world.backend.started.clear()
        record_deployed = world.store.record_deployed

        async def refused_once(conn, event, *, if_pending=False):
            world.store.record_deployed = record_deployed
            raise ConnectionResetError("the commit was lost")

        world.store.record_deployed = refused_once
        calls = woken(world)
        await (await handlers.restore_deployments(world.deps))._task
        assert list(world.backend.sets) == ["a-5"] and world.deps.owed.tasks
        await _until(lambda: not world.deps.owed.tasks, "the background write is over")
        assert [(s, e.deployment_id, e.name) for s, e in world.store.events] == [
            (subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5")]
        assert not world.store.deployments[5]["deployed_pending"] and calls == [1]
        world.backend.sets.clear()
        await (await handlers.restore_deployments(world.deps))._task  # another restart: nothing owed any more
        assert len(world.store.events) == 1

    asyncio.run(scenario(world))


def _refused(made) -> list[bool]:
    """Every write of the deployed event fails (the database refuses its commit) until the test puts it back; the
    answer lists them (their `if_pending`)."""
    record_deployed, refused = made.store.record_deployed, []

    async def refusing(conn, event, *, if_pending=False):
        refused.append(if_pending)
        raise ConnectionResetError("the commit was lost")

    made.store.record_deployed = refusing
    made.record_deployed = record_deployed
    return refused


SERVED_THEN = {
    "undeploy": [(subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5", "old"), (subjects.EVENT_PIPELINE_UNDEPLOYED, 5, "a-5",
                                                                       None)],
    "failed redeploy": [(subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5", "old"),
                        (subjects.EVENT_PIPELINE_UNDEPLOYED, 5, "a-5", None)],
    "redeploy": [(subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5", "old"), (subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5",
                                                                       "new")]}


@pytest.mark.parametrize(("then", "mark_fails"), [("undeploy", False), ("undeploy", True),
                                                  ("failed redeploy", False), ("redeploy", False)])
def test_a_deploy_that_served_but_never_got_its_event_written_gets_it_after_a_failed_restore(world, monkeypatch,  # noqa: F811
                                                                                              then, mark_fails):
    """A deploy whose replicas serve (it answered) but whose deployed event's write fails through every background
    attempt, then a restart whose restore fails: the undeploy, or the next deploy, writes the owed deployed event
    (then the undeployed, or the new activation's deployed). The row said so when the write failed
    (store.mark_served; when the deploy's own mark fails too, the background write's). Before, the undeploy or
    deploy saw nothing serving and wrote no deployed event for it (nor an undeployed: lineage was never told), as
    for a deployment that never served."""
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (0.01,) * 3)

    async def scenario(world) -> None:
        world.backend.hold = False
        refused = _refused(world)
        if mark_fails:
            mark_served = world.store.mark_served

            async def mark_refused_once(conn, deployment_id):
                world.store.mark_served = mark_served
                raise ConnectionResetError("the commit was lost")

            world.store.mark_served = mark_refused_once
        assert (await _deploy(world, "a")).id == 5  # it serves, and answers
        await _until(lambda: not world.deps.owed.tasks, "the background write gives up")
        assert refused == [False, True, True, True] and world.store.events == []
        world.store.record_deployed = world.record_deployed  # the database takes it again
        # the restart: a new deployer (no background writes, no replicas), whose restore fails
        world.deps = handlers.DeployerDeps(pool=world.deps.pool, broker=None, backend=world.backend,
                                           membership=world.deps.membership, public_url="http://x", timeout=5.0)
        world.backend.sets.clear(), world.backend.started.clear()
        world.backend.hold = True
        restore = await handlers.restore_deployments(world.deps)
        await _until(lambda: world.backend.waiting, "the restore starts the replicas")
        world.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        await restore._task
        assert "a-5" in world.deps.failed_restores and world.store.events == []
        if then == "undeploy":
            await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)
        else:
            world.store.versions[NEW] = dict(world.store.versions[VERSION], id=NEW, version=uuid.uuid4())
            redeploy = asyncio.create_task(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
                deploy_id="a", pipeline_id=PIPELINE, pipeline_version_pk_id=NEW)))
            await _until(lambda: world.backend.waiting, "the deploy starts its replicas")
            answer = world.backend.waiting.pop()[1]
            if then == "redeploy":
                answer.set_result(None)
                await redeploy
            else:
                answer.set_exception(RuntimeError("the model did not load"))
                with pytest.raises(InvalidRequest):
                    await redeploy
        versions = {str(world.store.versions[VERSION]["version"]): "old", "v": "old"} | (
            {str(world.store.versions[NEW]["version"]): "new"} if NEW in world.store.versions else {})
        assert [(s, e.deployment_id, e.name, versions.get(getattr(e, "pipeline_version", None)))
                for s, e in world.store.events] == SERVED_THEN[then]
        assert not world.store.deployments[5]["deployed_pending"]

    asyncio.run(scenario(world))


def test_a_redeploy_of_a_serving_deployment_owing_its_deployed_event_writes_it_first(world, monkeypatch):  # noqa: F811
    """A deployment serving whose deployed event's write failed (the background write not done yet), redeployed at
    another version: the new row is recorded with the owed event first, then the new activation's, in one
    transaction; the background write then finds nothing owed. Before, only the new version's deployed was written:
    lineage never heard of the version that served."""
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (3600.0,))  # the background write stays out of the way

    async def scenario(world) -> None:
        world.backend.hold = False
        _refused(world)
        await _deploy(world, "a")
        world.store.record_deployed = world.record_deployed
        assert world.deps.owed.tasks and world.store.deployments[5]["served"]
        world.store.versions[NEW] = dict(world.store.versions[VERSION], id=NEW, version=uuid.uuid4())
        await handlers.deploy(world.deps, ALICE, "t", DeployPipeline(deploy_id="a", pipeline_id=PIPELINE,
                                                                     pipeline_version_pk_id=NEW))
        assert [(s, e.name, e.pipeline_version) for s, e in world.store.events] == [
            (subjects.EVENT_PIPELINE_DEPLOYED, "a-5", str(world.store.versions[VERSION]["version"])),
            (subjects.EVENT_PIPELINE_DEPLOYED, "a-5", str(world.store.versions[NEW]["version"]))]
        assert not world.deps.owed.tasks  # the background write is over (OwedDeployed.forget)
        assert await handlers.OwedDeployed._write_once(world.deps, PIPELINE, handlers.deployed_event(
            5, "a-5", PIPELINE, WORKSPACE, "v")) is False  # owed no more
        await world.deps.owed.stop()
        assert len(world.store.events) == 2

    asyncio.run(scenario(world))


def test_a_background_write_of_an_owed_event_is_over_once_its_activation_is(world, monkeypatch):  # noqa: F811
    """The background write of an owed deployed event belongs to the activation whose replicas served: once an
    undeploy wrote it (store.deactivate) the write is over (OwedDeployed.forget). Before, it kept trying, and
    record_deployed's `if_pending` checks only that the row owes an event, not which: a deploy of the pipeline
    that activated the row again (same id) and then failed without undoing it (its replicas failed, and so did the
    deactivation, the database away: the row left active and owing its own event, the lock released) had the old
    event written a second time, for an activation that never served."""
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (0.2, 0.01))

    async def scenario(world) -> None:
        world.backend.hold = False
        record_deployed = world.store.record_deployed

        async def refused_once(conn, event, *, if_pending=False):
            world.store.record_deployed = record_deployed
            raise ConnectionResetError("the commit was lost")

        world.store.record_deployed = refused_once
        await _deploy(world, "a")
        assert world.deps.owed.tasks
        tasks = list(world.deps.owed.tasks.values())
        await handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5)

        async def no_replica(replica_set, replica_id):
            raise RuntimeError("the replica did not start")

        async def no_database(*args, **kwargs):
            raise ConnectionResetError("the database went away")

        world.backend._spawn, world.store.deactivate = no_replica, no_database
        with pytest.raises(InvalidRequest, match="made inactive once the database answers"):
            await _deploy(world, "b")
        row = world.store.deployments[5]
        assert row["active"] and row["deployed_pending"] and row["deploy_id"] == "b"
        await world.deps.deactivations.stop()  # its clean-up left to the background (test_deployer_crash)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert [(s, e.deployment_id, e.name) for s, e in world.store.events] == [
            (subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5"), (subjects.EVENT_PIPELINE_UNDEPLOYED, 5, "a-5")]
        assert not row["served"]

    asyncio.run(scenario(world))


def test_a_first_deploy_failing_with_an_error_of_the_deployers_own_leaves_nothing_active(world):  # noqa: F811
    """A deploy whose start fails with an error other than its replicas' (an OSError writing the spec or spawning a
    replica: ENOSPC, EMFILE) is raised as it is (an internal error) and undoes its activation, as a failed start
    does: the row inactive and owing nothing, no event. Before, only RuntimeError and TimeoutError were undone: the
    row of a first deploy stayed active and owing its deployed event with nothing running ("Starting" until a
    restart's restore started it, serving a deploy that had answered an error)."""
    async def scenario(world) -> None:
        world.backend.hold = False

        async def no_process(replica_set, replica_id):
            raise OSError("too many open files")

        world.backend._spawn = no_process
        with pytest.raises(OSError):
            await _deploy(world, "a")
        row = world.store.deployments[5]
        assert not row["active"] and not row["deployed_pending"] and world.store.events == []
        assert world.backend.sets == {} and await world.store.active_deployments(None) == []

    asyncio.run(scenario(world))
