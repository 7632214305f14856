"""What the deployer's commands wait for, bounded under what their callers wait: a read's (and pipelines/create's)
membership check and database reads (handlers.READ_ANSWERS_WITHIN, a 503; the integration test
test_deployer_read_bounds.py freezes PostgreSQL itself), and a deploy's wait for its pipeline's lock while another
deploy of it runs (DeployerDeps.lock_wait, a 409 deploy_in_progress)."""

from __future__ import annotations

import asyncio
import re
import typing
from collections.abc import Coroutine
from typing import Any

import pytest

from services.deployer import handlers
from services.gateway.http import JSON_ROUTES
from shared import db, subjects
from shared.errors import Conflict, Unavailable
from shared.messages.deployer import CopyPipeline, CreatePipeline, DeployPipeline
from shared.settings import (
    COPY_STEPS_TAKE,
    DEPLOY_HOLDS_LOCK,
    DEPLOY_STEPS_TAKE,
    DeployerSettings,
    NatsSettings,
    RegistrySettings,
    Settings,
    copy_wait,
    deploy_wait,
)
from tests.unit.deployer_world import ALICE, PIPELINE, VERSION, WORKSPACE, _deploy, _deployed_as, _until, make_world


@pytest.fixture
def world(tmp_path, monkeypatch):
    return make_world(tmp_path, monkeypatch)


ROUTES = ["get", "list", "status", "resolve", "external_url", "create"]


def _read(deps, route: str):
    return {
        "get": lambda: handlers.get_pipeline(deps, ALICE, "t", PIPELINE),
        "list": lambda: handlers.list_pipelines(deps, ALICE, "t", WORKSPACE),
        "status": lambda: handlers.deployment_status(deps, ALICE, "t", "a-5"),
        "resolve": lambda: handlers.resolve_deployment(deps, ALICE, "t", "a-5"),
        "external_url": lambda: handlers.external_url(deps, ALICE, "t", WORKSPACE, "p"),
        "create": lambda: handlers.create_pipeline(deps, ALICE, "t", CreatePipeline(
            workspace_id=WORKSPACE, pipeline_id="q", definition={"steps": []})),
    }[route]()


@pytest.mark.parametrize("route", ROUTES)
def test_a_read_whose_membership_check_does_not_answer_is_a_503_within_its_bound(world, route):
    """The membership check (a request to auth, up to the request timeout, the caller's whole wait) does not answer:
    the command is a 503 that names it, within READ_ANSWERS_WITHIN of the request timeout. Before, it waited the
    check's own timeout, as long as the gateway waits: the caller got a 504."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        world.deps.timeout = 0.1

        async def silent(user_id, workspace_id):
            await asyncio.Event().wait()

        world.deps.membership = lambda token: silent
        with pytest.raises(Unavailable, match=r"the database \(or the membership check\) did not answer within "
                                              r"0\.08 s") as unavailable:
            await asyncio.wait_for(_read(world.deps, route), 2)
        assert unavailable.value.code == "unavailable" and unavailable.value.status == 503
        assert list(world.store.pipelines) == [PIPELINE]  # create: nothing created

    asyncio.run(scenario(world))


def test_a_deploy_behind_another_deploy_of_its_pipeline_past_its_lock_wait_is_a_409_that_changes_nothing(world):
    """A redeploy holds the pipeline's lock while its replicas load (up to deployer.ready_timeout); a second deploy
    waits for it at most DeployerDeps.lock_wait, then is a 409 deploy_in_progress that changes nothing (the first
    goes on and serves). Before, it waited as long as the first took, past its caller's wait (a 504), and deployed
    later anyway."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        world.deps.lock_wait = 0.1
        redeploy = _deploy(world, "b")
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        with pytest.raises(Conflict) as refused:
            await asyncio.wait_for(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
                deploy_id="c", pipeline_version_pk_id=VERSION, pipeline_id=PIPELINE)), 2)
        assert refused.value.code == "deploy_in_progress" and refused.value.status == 409
        assert "did not end within 0.1 s" in refused.value.msg and "deploy again when it finishes" in refused.value.msg
        assert world.deps.pipeline_lock(PIPELINE).waiting == 0
        world.backend.waiting.pop()[1].set_result(None)
        await redeploy
        assert list(world.backend.sets) == ["b-5"] and world.store.deployments[5]["deploy_id"] == "b"
        assert not world.deps.pipeline_lock(PIPELINE).locked()

    asyncio.run(scenario(world))


def test_a_deploys_lock_wait_is_what_its_callers_wait_leaves_after_its_own_work():
    """deploy_lock_wait: what a deploy answers within (deploy_answers_within: the caller's wait, shared.settings
    .deploy_wait, less the answer's way back) less the request timeout (reads, model lookups), its first database step,
    the replicas' ready_timeout and what may follow their start; never below the undeploy's half request timeout (a
    ready_timeout that leaves nothing)."""
    # 304: what a deploy answers within (its caller's 305 s less 0.2 of the request timeout for the answer's way
    # back); 5: its reads and lookups; 4: its first step; 60: its replicas' start; 4 + 19 + 20: a redeploy's record,
    # the looks at a failed one (3.8 of the request timeout) and a set's stop (deployer.stop_timeout)
    assert handlers.deploy_lock_wait(Settings()) == pytest.approx(304 - 5 - 4 - 60 - 4 - 19 - 20)
    assert handlers.deploy_answers_within(Settings()) == pytest.approx(304)
    # a ready_timeout above the model check's: the caller waits for one deploy of the pipeline ahead (its first step,
    # its replicas' 600 s, its record, looks and stop: 3.2 + 600 + 3.2 + 15.2 + 20 s), which the lock wait covers.
    # Before, 2 s (the undeploy's floor): the caller's wait counted no deploy ahead, a 409 for any deploy behind one
    long = Settings(deployer=DeployerSettings(ready_timeout=600.0), nats=NatsSettings(request_timeout=4.0))
    assert handlers.deploy_lock_wait(long) == pytest.approx(3.2 + 600 + 3.2 + 15.2 + 20)


def test_a_deploy_whose_lookups_took_long_waits_for_the_lock_only_what_its_callers_wait_leaves(world, monkeypatch):
    """deploy_lock_wait counts the deploy's reads and model lookups as the request timeout: lookups that took longer
    (a model each, a slow registry) come out of the lock's wait, so the 409 comes by the request timeout plus
    lock_wait after the command's start (2.1 s here), not lock_wait after the lookups (3.5 s: before, the caller's
    wait ran out first, a 504, and the deploy went on)."""

    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        redeploy = _deploy(world, "b")
        await _until(lambda: world.backend.waiting, "the redeploy starts its replicas")
        world.deps.timeout, world.deps.lock_wait = 0.1, 2.0
        resolve = handlers._resolve

        async def slow_registry(*args, **kwargs):
            await asyncio.sleep(1.5)
            return await resolve(*args, **kwargs)

        monkeypatch.setattr(handlers, "_resolve", slow_registry)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Conflict) as refused:
            await asyncio.wait_for(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
                deploy_id="c", pipeline_version_pk_id=VERSION, pipeline_id=PIPELINE)), 10)
        took = loop.time() - started
        assert refused.value.code == "deploy_in_progress"
        assert "what its caller waits left after its model lookups" in refused.value.msg, refused.value.msg
        # the lock was waited for what was left of 2.1 s after 1.5 s of lookups (0.6 s, less on a loaded machine),
        # not lock_wait (2.0) after them: the wait the refusal names, not the wall time (a bound of 6 s could fail
        # under load and did not tell 2.1 from 3.5 either). Not before the 2.1 s were up: a bound load cannot break
        waited = float(re.search(r"did not end within ([0-9.]+) s", refused.value.msg).group(1))
        assert waited <= 0.6, refused.value.msg
        assert took >= 2.0, took
        assert world.deps.pipeline_lock(PIPELINE).waiting == 0
        world.backend.waiting.pop()[1].set_result(None)
        await redeploy
        assert list(world.backend.sets) == ["b-5"]

    asyncio.run(scenario(world))


def _ready_withins(world) -> list[float | None]:
    """The `ready_within` each start of replicas is given (the seconds they have to serve), in order."""
    given: list[float | None] = []
    start = world.backend.start

    async def recorded(*args, **kwargs):
        given.append(kwargs.get("ready_within"))
        return await start(*args, **kwargs)

    world.backend.start = recorded
    return given


def _short_clock(world, deploy_within: float) -> None:
    """A deploy answers within `deploy_within` s of its start, its steps bounded by a 0.1 s request timeout and its
    sets' stop by 0.5 s (the world's stops are at once): what follows its replicas' start (handlers._after_start)
    takes at most 0.66 s for a first deploy, 0.96 s for a redeploy."""
    world.deps.timeout, world.deps.deploy_within, world.backend.stop_timeout = 0.1, deploy_within, 0.5


@pytest.mark.parametrize("deploy", ["first", "redeploy"])
def test_a_deploy_whose_replicas_do_not_serve_within_what_its_caller_waits_is_a_503_that_leaves_nothing(world, deploy):
    """The whole deploy is bounded, not only each step: its replicas have what its caller's wait leaves after what
    follows their start (less than deployer.ready_timeout, 60 s here), and replicas that did not serve by then are a
    503 deploy_out_of_time, undone as replicas that failed: a first deploy's row made inactive and nothing running, a
    redeploy's previous set serving under its row as it was. Before, they had their whole ready_timeout after the lock
    wait and every step, and the deploy answered past its caller's wait (never, in this world: its replicas never
    answer)."""

    async def scenario(world) -> None:
        if deploy == "redeploy":
            await _deployed_as(world, "a")
            old = world.backend.sets["a-5"]
        _short_clock(world, 2.5)
        given = _ready_withins(world)
        with pytest.raises(Unavailable) as late:
            await asyncio.wait_for(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
                deploy_id="b", pipeline_version_pk_id=VERSION, pipeline_id=PIPELINE)), 10)
        assert late.value.code == "deploy_out_of_time" and late.value.status == 503
        assert "ran out of time" in late.value.msg and "Deploy again" in late.value.msg, late.value.msg
        # its replicas had what 2.5 s leave after what follows their start (0.96 s, or 0.66), not their ready_timeout
        # (60 s): the time the deploy gave them, not its wall time (a bound of 5.5 s could fail under load; on a
        # loaded machine the deploy may be refused before their start, for too little time left, in the same words)
        after = handlers._after_start(0.1, 0.5, serving=deploy == "redeploy")
        assert all(within is not None and within <= 2.5 - after for within in given), given
        row = world.store.deployments[5]
        if deploy == "redeploy":
            assert "a-5 still serves" in late.value.msg
            assert world.backend.sets == {"a-5": old} and not old.stopping
            assert (row["deploy_id"], row["active"]) == ("a", True)
        else:
            assert "nothing of it runs: the deployment is inactive" in late.value.msg
            assert world.backend.sets == {} and not row["active"]
        assert world.backend.untracked() == [] and not world.deps.pipeline_lock(PIPELINE).locked()

    asyncio.run(scenario(world))


def test_a_copy_whose_replicas_do_not_serve_within_what_its_caller_waits_is_a_503_that_keeps_the_copy(world):
    """A copy with `deploy` is bounded as a whole as a deploy is, from its command's start: its deploy's bound
    (deploy_within) and COPY_STEPS_TAKE of the request timeout for the copy's own steps (2.66 s here). Its replicas
    that did not serve by then are a 503 deploy_out_of_time: the copy is kept and named, its deployment inactive,
    nothing running. Before, its deploy had no `by`: its replicas had their whole ready_timeout (60 s here) after the
    copy's steps, and its caller (the gateway's 70 s) got a 504 while it went on."""

    async def scenario(world) -> None:
        _short_clock(world, 2.5)
        given = _ready_withins(world)
        with pytest.raises(Unavailable) as late:
            await asyncio.wait_for(handlers.copy_pipeline(world.deps, ALICE, "t", CopyPipeline(
                name="copied", workspace_id=WORKSPACE, source_pipeline=PIPELINE, deploy="c")), 10)
        assert late.value.code == "deploy_out_of_time" and late.value.status == 503
        assert "ran out of time" in late.value.msg and "the copy was created: pipeline 2" in late.value.msg, \
            late.value.msg
        # its replicas had what the copy's 2.5 + COPY_STEPS_TAKE x 0.1 s leave after what follows their start, not
        # their ready_timeout (60 s): given, not timed (a bound of the wall time + 3 s could fail under load)
        after = handlers._after_start(0.1, 0.5, serving=False)
        assert all(within is not None and within <= 2.5 + COPY_STEPS_TAKE * 0.1 - after for within in given), given
        assert world.store.pipelines[2]["name"] == "copied"
        assert not world.store.deployments[5]["active"] and world.backend.sets == {}
        assert world.backend.untracked() == [] and not world.deps.pipeline_lock(2).locked()

    asyncio.run(scenario(world))


def test_a_deploy_left_too_little_by_its_lookups_is_a_503_before_anything_of_it_is_made(world, monkeypatch):
    """A deploy whose model lookups took what its caller waits, all but less than its first step, the least its
    replicas need and what follows their start, is refused with the pipeline's lock in hand, before its first write:
    a 503 deploy_out_of_time, nothing started, no row. Before, it went on, its replicas given their whole
    ready_timeout: it answered past its caller's wait (never, in this world)."""

    async def scenario(world) -> None:
        _short_clock(world, 1.5)
        resolve = handlers._resolve

        async def slow_registry(*args, **kwargs):
            await asyncio.sleep(1.0)
            return await resolve(*args, **kwargs)

        monkeypatch.setattr(handlers, "_resolve", slow_registry)
        with pytest.raises(Unavailable) as late:
            await asyncio.wait_for(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
                deploy_id="b", pipeline_version_pk_id=VERSION, pipeline_id=PIPELINE)), 10)
        assert late.value.code == "deploy_out_of_time" and "nothing of it was made" in late.value.msg
        assert world.backend.started == [] and world.store.deployments == {}
        assert not world.deps.pipeline_lock(PIPELINE).locked()

    asyncio.run(scenario(world))


# A request timeout of 60 s (the rest default): the deployer's own steps after its replicas' start (a redeploy's
# record, 3.8 of it in looks, a set's stop: 296 s) outgrew what its caller waited (360 s, before deploy_wait counted
# them); a short worker_timeout with a short ready_timeout (ready_timeout dominated deploy_wait, 40 s); the test
# stack's (tests/stack.py: a 45 s worker_timeout, so deploy_wait was ready_timeout's 70 s, now a deploy's own 113 s
# after one ahead of it, 220 s)
SHORT_CALLER_WAITS = {
    "request_timeout_60": Settings(nats=NatsSettings(request_timeout=60.0)),
    "ready_30_worker_30": Settings(deployer=DeployerSettings(ready_timeout=30.0),
                                   registry=RegistrySettings(worker_timeout=30.0)),
    "test_stack": Settings(registry=RegistrySettings(worker_timeout=45.0)),
}


@pytest.mark.parametrize("deploy", ["first", "redeploy"])
@pytest.mark.parametrize("settings", list(SHORT_CALLER_WAITS))
def test_a_deploy_nothing_holds_up_has_its_replicas_whole_ready_timeout(tmp_path, monkeypatch, settings, deploy):
    """A deploy that waited for no other deploy of its pipeline, its lookups quick, gives its replicas their whole
    deployer.ready_timeout, whatever the settings: what it answers within (deploy_answers_within) is at least what
    its own steps take (_deploy_takes), which its caller's wait (shared.settings.deploy_wait) counts. Before
    (5d54c8b), the worst case of what follows their start came out of their time: with a 60 s request timeout every
    deploy was a 503 deploy_out_of_time before anything of it was made, likewise with ready_timeout 30 s and
    worker_timeout 30 s; on the test stack's settings a redeploy's replicas had 26 s of their 60."""
    chosen = SHORT_CALLER_WAITS[settings]
    world = make_world(tmp_path, monkeypatch)
    world.deps.timeout = chosen.nats.request_timeout
    world.deps.deploy_within = handlers.deploy_answers_within(chosen)
    world.deps.lock_wait = handlers.deploy_lock_wait(chosen)
    world.backend.ready_timeout = chosen.deployer.ready_timeout
    world.backend.stop_timeout = chosen.deployer.stop_timeout
    given: list[float | None] = []
    start = world.backend.start

    async def start_noting(*args, ready_within=None, **kwargs):
        given.append(ready_within)
        return await start(*args, ready_within=ready_within, **kwargs)

    world.backend.start = start_noting

    async def scenario() -> None:
        if deploy == "redeploy":
            await _deployed_as(world, "a")
            given.clear()
        world.backend.hold = False
        deployed = await asyncio.wait_for(handlers.deploy(world.deps, ALICE, "t", DeployPipeline(
            deploy_id="b", pipeline_version_pk_id=VERSION, pipeline_id=PIPELINE)), 10)
        assert deployed.id == 5 and list(world.backend.sets) == ["b-5"]
        assert given == [pytest.approx(chosen.deployer.ready_timeout)], given

    asyncio.run(scenario())


CALLERS_SETTINGS = {**SHORT_CALLER_WAITS, "defaults": Settings(),
                    "ready_600": Settings(deployer=DeployerSettings(ready_timeout=600.0)),
                    "request_1_stop_60": Settings(nats=NatsSettings(request_timeout=1.0),
                                                  deployer=DeployerSettings(stop_timeout=60.0)),
                    "worker_900": Settings(registry=RegistrySettings(worker_timeout=900.0))}


@pytest.mark.parametrize("settings", list(CALLERS_SETTINGS))
def test_a_deploys_caller_waits_for_all_the_deployer_may_take(settings):
    """What a deploy answers within (deploy_answers_within, from its command's start), its answer's way back
    (DEPLOY_ANSWER_MARGIN) added, is within what its caller waits (shared.settings.deploy_wait: the gateway's route
    and monitoring's model swaps): a deploy's worst case (its lookups, its first step, its replicas' whole
    ready_timeout, a failed record's looks, a set's stop) is answered before its caller gives up, whatever the
    settings. Before, deploy_wait counted the lookups and ready_timeout only: with the test stack's 45 s
    worker_timeout the gateway waited 70 s (a 504) for a deploy the deployer answered, and carried out, up to 112 s
    after its start; with a 60 s request timeout 360 s for 464 s, with ready_timeout 600 s 610 s for 652 s."""
    chosen = CALLERS_SETTINGS[settings]
    request = chosen.nats.request_timeout
    answered = handlers.deploy_answers_within(chosen) + handlers.DEPLOY_ANSWER_MARGIN * request
    assert answered <= deploy_wait(chosen) + 1e-9, (answered, deploy_wait(chosen))
    # shared.settings counts the deployer's own steps (it cannot import them) as DEPLOY_STEPS_TAKE of the request
    # timeout: the two sums are one
    own = DEPLOY_STEPS_TAKE * request + chosen.deployer.ready_timeout + chosen.deployer.stop_timeout
    assert handlers._deploy_takes(chosen) + handlers.DEPLOY_ANSWER_MARGIN * request == pytest.approx(own)


@pytest.mark.parametrize("settings", list(CALLERS_SETTINGS))
def test_a_deploy_behind_another_of_its_pipeline_waits_as_long_as_that_one_may_hold_the_lock(settings):
    """A deploy sent with another deploy of its pipeline under way waits for the pipeline's lock (deploy_lock_wait)
    at least as long as that one may hold it (its first database step, its replicas' ready_timeout, what follows their
    start), whatever the settings: its caller's wait (deploy_wait) counts one deploy ahead (DEPLOY_HOLDS_LOCK). Before,
    on the test stack's settings and wherever ready_timeout or the request timeout outgrew worker_timeout, what the
    caller's wait left was nothing, the lock wait its floor (half the request timeout, 2.5 s): two deploys of one
    pipeline sent together were a 409 deploy_in_progress for the second once the first's replicas took longer than
    that (tests/integration/test_deploy_lifecycle.py's two deploys at once, under load)."""
    chosen = CALLERS_SETTINGS[settings]
    request, stop = chosen.nats.request_timeout, chosen.deployer.stop_timeout
    holds = handlers.DEPLOY_STEP_ANSWERS_WITHIN * request + chosen.deployer.ready_timeout + \
        handlers._after_start(request, stop, serving=True)
    assert handlers.deploy_lock_wait(chosen) >= holds - 1e-9, (handlers.deploy_lock_wait(chosen), holds)
    assert holds == pytest.approx(DEPLOY_HOLDS_LOCK * request + chosen.deployer.ready_timeout + stop)


@pytest.mark.parametrize("settings", list(CALLERS_SETTINGS))
def test_a_copys_caller_waits_for_all_the_deployer_may_take(settings):
    """A copy with `deploy` answers within its deploy's bound and COPY_STEPS_TAKE of the request timeout from its
    command's start (copy_pipeline's `by`): its caller (shared.settings.copy_wait, the gateway's route) waits that and
    the answer's way back. Before, the gateway waited the request timeout twice and ready_timeout (70 s by default,
    for a copy the deployer may answer 312 s after its start)."""
    chosen = CALLERS_SETTINGS[settings]
    request = chosen.nats.request_timeout
    answered = handlers.deploy_answers_within(chosen) + COPY_STEPS_TAKE * request + \
        handlers.DEPLOY_ANSWER_MARGIN * request
    assert answered <= copy_wait(chosen) + 1e-9, (answered, copy_wait(chosen))
    gateway = {route.subject: route for route in JSON_ROUTES}[subjects.DEPLOYER_PIPELINES_COPY].wait(chosen)
    assert gateway == pytest.approx(copy_wait(chosen))


def test_a_copy_whose_deploy_waits_past_its_lock_wait_is_a_409_that_names_the_copy(world):
    """A copy with `deploy` whose new pipeline's lock another deploy holds (one sent for it as soon as its id was
    listed) past the lock wait: a 409 deploy_in_progress that names the copy, kept, as its 503s do (copy_pipeline
    catches Conflict since 6e10fc1; that branch had no test). Before 6e10fc1 the 409 went out with the deploy's
    words only, and a caller retrying the copy met a 409 for its name taken without being told the copy existed."""

    async def scenario(world) -> None:
        world.deps.lock_wait = 0.2
        lock = world.deps.pipeline_lock(2)  # the copy's pipeline (the world's next id), held by "another deploy"
        await lock.acquire()
        try:
            with pytest.raises(Conflict) as held:
                await asyncio.wait_for(handlers.copy_pipeline(world.deps, ALICE, "t", CopyPipeline(
                    name="copied", workspace_id=WORKSPACE, source_pipeline=PIPELINE, deploy="c")), 10)
        finally:
            lock.release()
        assert held.value.code == handlers.DEPLOY_IN_PROGRESS and held.value.status == 409
        assert "did not end within" in held.value.msg and "the copy was created: pipeline 2" in held.value.msg, \
            held.value.msg
        assert world.store.pipelines[2]["name"] == "copied" and world.backend.sets == {}
        assert not any(row["pipeline_id"] == 2 for row in world.store.deployments.values())  # nothing of it made

    asyncio.run(scenario(world))


@pytest.mark.parametrize("step", ["_answered_within", "_deploy_step", "_answered_in_time", "_created_in_time"])
def test_the_deployers_bounded_steps_take_only_what_shared_db_within_takes(step):
    """The deployer's bounded steps hand `work` to shared.db.within, which takes a coroutine or a task shared.db.begin
    made, and refuses any other awaitable (a TypeError: its connections could not be noted, nor cut once given up
    on). They declared any Awaitable (h5's finding, session 27), so a future or an awaitable object passed the
    annotation and failed at run time; they now declare the coroutine every caller passes."""
    hints = typing.get_type_hints(getattr(handlers, step))
    assert hints["work"] == Coroutine[Any, Any, handlers._T], hints["work"]
    assert Coroutine[Any, Any, db._T] in typing.get_args(typing.get_type_hints(db.within)["work"])
