"""Monitoring's challenge swaps and trainings are finished, and told (their outbox event), once when two paths
finish them (services/monitoring/continuous.py).

- A decided challenge whose swap has not finished STALE_SWAP (300 s) after the decision is swapped again by whichever
  process gets a review wake-up (`resume_swap`), for a process that died mid-swap. A swap is a deploy the process
  waits up to deploy_wait for (305 s with the defaults): a slow one is still under way when another process resumes
  it, and both finish the challenge (`_apply_decision`). Before, each finish wrote its model_swapped (each with its
  own event_id: lineage drew two swaps), and a first process whose swap failed after the other's had succeeded
  marked the promoted challenge failed. Now only the finish that moves the challenge out of promoting / rolling_back
  records it and writes its event.
- A training whose run ended (recorded from the run's end event) before tasks/run_once answered, too late, is not
  failed again as "could not start" (`_start_run`).
- A training whose tasks/run_once went unanswered (the task made, its answer lost) is not failed while its run goes
  on: a starter's resume asks again with the task id the training chose at its claim and gets that task (no second
  run), and the training follows the run (`TrainingStarter.resume`).
- A DEPLOY_AUTO swap whose process died between the deployer serving the version and the commit of its model_swapped
  (the event was lost) is delivered again once stale and told once (`resume_deliveries`).

Runs the service's functions on a monitoring schema of this test's (its migrations) on the stack's PostgreSQL, the
deploy and the task scheduler replaced by stand-ins the test drives."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.monitoring import continuous, sequential
from shared import subjects
from shared.errors import NotFound, Unavailable, UpstreamTimeout
from shared.messages.assays import AssayThresholdCrossed
from shared.messages.monitoring_continuous import ToggleContinuous
from shared.messages.tasks import TaskCreated, TaskRunEvent
from tests.integration.conftest import service_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MONITORING_MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "monitoring" / "migrations"
DEPLOYMENT = 42
CHAMPION = {"name": "digits", "version": "v1", "sha": "a"}
CHALLENGER = {"name": "digits", "version": "v2", "sha": "b"}


@pytest.fixture
async def monitoring_schema(stack):
    """A monitoring schema of this test's (the service's migrations) on the stack's PostgreSQL, and a pool on it."""
    async with service_schema(stack, "monitoring_swap", MONITORING_MIGRATIONS) as pool:
        yield pool


def evidence() -> sequential.Evidence:
    return sequential.Evidence(decision=sequential.Decision.PROMOTE, pairs=40, n11=10, n10=2, n01=20, n00=8,
                               champion_accuracy=0.3, challenger_accuracy=0.75, log_evidence=4.0, threshold=3.0,
                               p_lower=0.7, p_upper=0.95, alpha=0.05, min_sample=10)


def process(pool) -> continuous.ContinuousDeps:
    """One monitoring process's deps (its own in-process locks), its outbox wake-ups ignored."""
    return continuous.ContinuousDeps(base=SimpleNamespace(pool=pool, broker=None, timeout=5.0), verify=None,
                                     events_committed=lambda: None,
                                     max_task_timeout=3600)


async def continuous_deployment(pool, policy: str) -> None:
    """The continuous deployment of DEPLOYMENT ('d-42') with `policy` (alpha 0.05, min_sample 10)."""
    await pool.execute("INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id, policy,"
                       " alpha, min_sample) VALUES ($1, 1, 'd-42', $2, $3, 0.05, 10)", DEPLOYMENT, uuid.uuid4(),
                       policy)


def deliver_with(monkeypatch, served: Callable[[], dict], serve, shadow: Callable[[], dict | None] = lambda: None
                 ) -> None:
    """A delivery's stand-ins: the owner's token, the deployment under its own name (deployed_name), a model
    version resolved as itself, the deployment's definition serving `served()`'s model (shadowed by `shadow()`'s
    when there is one), and `serve` as the deploy."""

    async def act_as(deps, owner_id, workspace_id, purpose):
        return SimpleNamespace(user_id=str(owner_id)), "token"

    async def request(broker, subject, cmd, **kwargs):
        if subject == subjects.DEPLOYER_DEPLOYMENTS_RESOLVE:
            return SimpleNamespace(name=cmd.name)
        assert subject == subjects.REGISTRY_MODELS_RESOLVE
        return SimpleNamespace(name=cmd.name, model_version=cmd.version, sha="b")

    async def deployment(base, principal, token, name):
        if shadow() is not None:
            return SimpleNamespace(definition={"steps": [{"ShadowDeploy": {"champion": served(),
                                                                           "challengers": [shadow()]}}]})
        return SimpleNamespace(definition={"steps": [{"ModelInference": {"models": [served()]}}]})

    monkeypatch.setattr(continuous, "act_as", act_as)
    monkeypatch.setattr(continuous, "request", request)
    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    monkeypatch.setattr(continuous, "_serve", serve)


@pytest.mark.parametrize("first_swap", ["serves", "fails"])
async def test_a_swap_resumed_while_the_first_still_runs_is_recorded_and_told_once(monitoring_schema, monkeypatch,
                                                                                   first_swap):
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    challenge_id = uuid.uuid4()
    # decided more than STALE_SWAP ago, its swap (the first process's) still under way
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample, state,"
        " evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now() - make_interval(secs =>"
        " $6))", challenge_id, DEPLOYMENT, json.dumps(CHAMPION), json.dumps(CHALLENGER),
        json.dumps(evidence().as_dict()), continuous.STALE_SWAP + 10)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)

    swapping, release = asyncio.Event(), asyncio.Event()
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(champion["version"])
        if len(serves) == 1:  # the first process's deploy is slow
            swapping.set()
            await release.wait()
            if first_swap == "fails":
                raise NotFound("pipeline 5 was deleted")  # a 503 is resumed, not failed
        return "7"

    monkeypatch.setattr(continuous, "_serve", serve)
    first = asyncio.create_task(continuous._apply_decision(process(pool), challenge, "promoting", evidence()))
    try:
        await asyncio.wait_for(swapping.wait(), 10)
        await continuous.resume_swap(process(pool), DEPLOYMENT)  # another process, on a review wake-up
    finally:
        release.set()
        await asyncio.wait_for(first, 10)

    assert serves == ["v2", "v2"]  # both swapped (serving what serves already makes no new version)
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert row["state"] == "promoted", row["reason"]  # the resumed swap served it; a late failure changes nothing
    swapped = await pool.fetch("SELECT payload FROM outbox WHERE subject = $1", subjects.EVENT_MONITORING_MODEL_SWAPPED)
    assert len(swapped) == 1, [json.loads(r["payload"]) for r in swapped]
    assert json.loads(swapped[0]["payload"])["action"] == "promoted"


async def test_a_training_whose_run_ended_before_run_once_answered_is_finished_once(monitoring_schema, monkeypatch):
    """tasks/run_once creates the run but its answer comes too late (the task scheduler busy: UpstreamTimeout), and
    the run, which failed at once, was already recorded from its end event (`on_run_ended` finds the training by the
    task's name). The starter's failure ("could not start") no longer fails that ended training a second time: before,
    it overwrote the run's failure reason and wrote a second training_finished (another event_id)."""
    pool = monitoring_schema
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name) VALUES ($1, 1, 'd-42', $2, 1, $3,"
        " 'FEEDBACK_LOOP', 1, '{}', 'digits')", DEPLOYMENT, uuid.uuid4(), uuid.uuid4())
    training_id = uuid.uuid4()
    await pool.execute("INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, run_claimed_at)"
                       " VALUES ($1, $2, 1, 'starting', 1, now())", training_id, DEPLOYMENT)
    deps = process(pool)

    async def act_as(deps, owner_id, workspace_id, purpose):
        return SimpleNamespace(user_id=str(owner_id)), "token"

    async def request(broker, subject, cmd, **kwargs):
        if subject == subjects.DEPLOYER_DEPLOYMENTS_RESOLVE:  # the deployment's name now (deployed_name)
            return SimpleNamespace(name=cmd.name)
        assert subject == subjects.TASKS_RUN_ONCE
        task_id = uuid.uuid4()
        await continuous.on_run_ended(deps, TaskRunEvent(  # its end event, handled before the late answer
            run_id=uuid.uuid4(), task_id=task_id, name=cmd.name, orch_id=cmd.orch_id, orch_sha="0" * 64,
            workspace_id=1, owner_id="someone", status="failure", reason="the recipe failed"), succeeded=False)
        raise UpstreamTimeout("task_scheduler did not answer within 5s")

    monkeypatch.setattr(continuous, "act_as", act_as)
    monkeypatch.setattr(continuous, "request", request)
    ct = await pool.fetchrow("SELECT * FROM continuous_training WHERE deployment_id = $1", DEPLOYMENT)
    training = await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", training_id)
    await continuous._start_run(deps, ct, [], training)

    row = await pool.fetchrow("SELECT state, reason FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["reason"]) == ("failed", "the training run failed: the recipe failed")
    finished = await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                                subjects.EVENT_MONITORING_TRAINING_FINISHED)
    assert [json.loads(r["payload"])["reason"] for r in finished] == ["the training run failed: the recipe failed"]


async def test_a_training_whose_run_once_went_unanswered_follows_the_run_it_started(monitoring_schema, monkeypatch):
    """tasks/run_once creates the task (its run under way) but its answer never comes (UpstreamTimeout). Before, the
    training was failed at once ('could not start') while its run went on, and the run's end was then ignored. Now
    the training stays claimed; a starter's resume (RESUME_START after the claim) asks again with the task id the
    training chose at its claim, the task scheduler answers the task the first call made (no second run), and the
    training follows that run to its end."""
    pool = monitoring_schema
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name) VALUES ($1, 1, 'd-42', $2, 1, $3,"
        " 'FEEDBACK_LOOP', 1, '{}', 'digits')", DEPLOYMENT, uuid.uuid4(), uuid.uuid4())
    training_id = uuid.uuid4()
    await pool.execute("INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews) VALUES ($1, $2, 1,"
                       " 'starting', 1)", training_id, DEPLOYMENT)
    deps = process(pool)
    asked: list[uuid.UUID | None] = []
    tasks: dict[uuid.UUID, str] = {}  # the task scheduler's tasks (each with one run), by id

    async def act_as(deps, owner_id, workspace_id, purpose):
        return SimpleNamespace(user_id=str(owner_id)), "token"

    async def request(broker, subject, cmd, **kwargs):
        if subject == subjects.DEPLOYER_DEPLOYMENTS_RESOLVE:
            return SimpleNamespace(name=cmd.name)
        assert subject == subjects.TASKS_RUN_ONCE
        asked.append(cmd.id)
        task_id = cmd.id or uuid.uuid4()
        tasks.setdefault(task_id, cmd.name)  # run_once with a task id again: that task, no second one
        if len(asked) == 1:
            raise UpstreamTimeout("task_scheduler did not answer within 5s")  # created, but the answer is lost
        return TaskCreated(id=task_id)

    monkeypatch.setattr(continuous, "act_as", act_as)
    monkeypatch.setattr(continuous, "request", request)
    assert await continuous.start_training(deps, training_id)
    row = await pool.fetchrow("SELECT state, task_id, reason, run_task_id FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["task_id"], row["reason"]) == ("starting", None, None), dict(row)
    assert asked == [row["run_task_id"]] and list(tasks) == asked

    starter = continuous.TrainingStarter(deps)
    await starter.resume()  # too early: the first call's process may still be waiting for its answer
    assert len(asked) == 1
    await pool.execute("UPDATE trainings SET run_claimed_at = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.RESUME_START + 1)
    await starter.resume()
    assert asked == [row["run_task_id"]] * 2 and len(tasks) == 1  # the same task asked for: one run
    row = await pool.fetchrow("SELECT state, task_id FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["task_id"]) == ("running", asked[0])
    started = await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                               subjects.EVENT_MONITORING_TRAINING_STARTED)
    assert [json.loads(r["payload"])["task_id"] for r in started] == [str(asked[0])]

    # the run's end is the training's
    await continuous.on_run_ended(deps, TaskRunEvent(
        run_id=uuid.uuid4(), task_id=asked[0], name=tasks[asked[0]], orch_id=uuid.uuid4(), orch_sha="0" * 64,
        workspace_id=1, owner_id="someone", status="failure", reason="the recipe failed"), succeeded=False)
    row = await pool.fetchrow("SELECT state, reason FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["reason"]) == ("failed", "the training run failed: the recipe failed")


class Died(BaseException):
    """The process stops here (nothing after it runs, no handler catches it)."""


async def test_a_deploy_auto_swap_whose_process_died_before_its_event_is_delivered_again_and_told_once(
        monitoring_schema, monkeypatch):
    """DEPLOY_AUTO: the deployer serves the training's version, and the process dies before the commit of its
    model_swapped. Before, that event was lost for good (the training said 'deployed', nothing told the swap). Now the
    training's delivery stays open (delivering_since) until the commit that writes the event; once stale
    (STALE_SWAP) another process delivers it again: serving what already serves changes nothing, and the swap is told
    once (a second resume finds nothing open)."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, task_id, model_version, model_status)"
        " VALUES ($1, $2, 1, 'succeeded', 1, $3, $4, 'ready')", training_id, DEPLOYMENT, uuid.uuid4(),
        json.dumps(CHALLENGER))
    serving = {"model": CHAMPION}
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(champion["version"])
        serving["model"] = champion  # the deployer serves it (again: no change)
        if len(serves) == 1:
            raise Died()  # before the model_swapped's commit
        return "7"

    deliver_with(monkeypatch, lambda: serving["model"], serve)

    async def swapped() -> list[dict]:
        return [json.loads(r["payload"]) for r in await pool.fetch(
            "SELECT payload FROM outbox WHERE subject = $1 ORDER BY id", subjects.EVENT_MONITORING_MODEL_SWAPPED)]

    with pytest.raises(Died):
        await continuous.advance(process(pool), DEPLOYMENT, training_id)
    row = await pool.fetchrow("SELECT state, outcome, delivering_since FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["outcome"]) == ("done", "deployed") and row["delivering_since"] is not None
    assert serving["model"] == CHALLENGER and await swapped() == []  # served, not told

    other = process(pool)  # another process's starter sweep
    await continuous.resume_deliveries(other)
    assert serves == ["v2"]  # not stale yet: the first process may still be deploying
    await pool.execute("UPDATE trainings SET delivering_since = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.STALE_SWAP + 1)
    await continuous.resume_deliveries(other)
    assert serves == ["v2", "v2"]
    events = await swapped()
    assert [(e["action"], e["model_version"]["version"], e["pipeline_version"]) for e in events] == [
        ("deployed", "v2", "7")], events
    row = await pool.fetchrow("SELECT outcome, delivering_since FROM trainings WHERE id = $1", training_id)
    assert (row["outcome"], row["delivering_since"]) == ("deployed", None)
    await continuous.resume_deliveries(other)
    assert serves == ["v2", "v2"] and len(await swapped()) == 1


@pytest.mark.parametrize("failing", ["first", "resumed"])
async def test_a_delivery_that_fails_after_the_other_recorded_it_changes_nothing(monitoring_schema, monkeypatch,
                                                                                 failing):
    """DEPLOY_SHADOW: a delivery open past STALE_SWAP while its first process's deploy still runs (a deploy may take
    deploy_wait, 305 s) is delivered again by another process; one of the two fails after the other has served the
    challenger and opened its challenge (`failing`: the slow first, or the resumed one whose own deploy was slow).
    Before, that late failure marked the delivered training failed and the running challenge failed (nothing would
    decide the serving shadow). Now a delivery's failure applies only while its own claim of the delivery holds
    (delivering_since as it set or found it)."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    training_id = uuid.uuid4()
    # done (shadow) STALE_SWAP ago, its first delivery still under way
    training = await pool.fetchrow(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, delivering_since) VALUES ($1, $2, 1, 'done', 'shadow', 1, $3, $4, 'ready', now() -"
        " make_interval(secs => $5)) RETURNING *", training_id, DEPLOYMENT, uuid.uuid4(), json.dumps(CHALLENGER),
        continuous.STALE_SWAP + 10)

    slow, release = asyncio.Event(), asyncio.Event()
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(challenger["version"])
        if len(serves) == 1:  # the one started first is slow, and fails once the other has recorded the delivery
            slow.set()
            await release.wait()
            raise NotFound("pipeline 5 was deleted")  # a 503 is resumed, not failed
        return "7"

    deliver_with(monkeypatch, lambda: CHAMPION, serve)
    if failing == "first":
        started = continuous._deliver(process(pool), training, "DEPLOY_SHADOW")
        other = continuous.resume_deliveries(process(pool))
    else:
        started = continuous.resume_deliveries(process(pool))
        other = continuous._deliver(process(pool), training, "DEPLOY_SHADOW")
    first = asyncio.create_task(started)
    try:
        await asyncio.wait_for(slow.wait(), 10)
        await other
    finally:
        release.set()
        await asyncio.wait_for(first, 10)

    assert serves == ["v2", "v2"]
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", training_id)
    assert (row["outcome"], row["delivering_since"]) == ("shadow", None), row["reason"]
    challenges = await pool.fetch("SELECT state, reason FROM challenges WHERE training_id = $1", training_id)
    assert [(c["state"], c["reason"]) for c in challenges] == [("running", None)]
    swapped = await pool.fetch("SELECT payload FROM outbox WHERE subject = $1", subjects.EVENT_MONITORING_MODEL_SWAPPED)
    assert [json.loads(r["payload"])["action"] for r in swapped] == ["shadow_set"]


async def test_an_unfinished_delivery_is_not_delivered_again_over_a_newer_one(monitoring_schema, monkeypatch):
    """DEPLOY_AUTO: training 1's delivery did not finish (its process died around the serving of v2), and training 2,
    newer, has been delivered since (v3 serves). Before, the resumed delivery of training 1 served v2 again in place of
    v3 and told it (a rollback to the older model nobody asked for). Now it is closed without serving or event, with
    the reason."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, newer = uuid.uuid4(), uuid.uuid4()
    newest = {"name": "digits", "version": "v3", "sha": "c"}
    for training_id, version, created, delivering in ((older, CHALLENGER, 600, continuous.STALE_SWAP + 10),
                                                       (newer, newest, 100, None)):
        await pool.execute(
            "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
            " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4, 'ready',"
            " now() - make_interval(secs => $5), now() - make_interval(secs => $6))", training_id, DEPLOYMENT,
            uuid.uuid4(), json.dumps(version), created, delivering)
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(champion["version"])
        return "8"

    deliver_with(monkeypatch, lambda: newest, serve)
    await continuous.resume_deliveries(process(pool))

    assert serves == []  # v3 still serves
    assert await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                            subjects.EVENT_MONITORING_MODEL_SWAPPED) == []
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", older)
    assert (row["outcome"], row["delivering_since"]) == ("deployed", None)
    assert "a newer training of the deployment was delivered since" in row["reason"]


async def test_a_slow_delivery_resumed_does_not_hold_back_training_starts(monitoring_schema, monkeypatch):
    """A stale delivery is delivered again by the DeliveryResumer, not in the training starter's sweep: its deploy
    may take deploy_wait (305 s), and before, that sweep started no training of the process meanwhile."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    stale, waiting = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4, 'ready',"
        " now() - interval '1 hour', now() - make_interval(secs => $5))", stale, DEPLOYMENT, uuid.uuid4(),
        json.dumps(CHALLENGER), continuous.STALE_SWAP + 10)
    await pool.execute("INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews) VALUES ($1, $2, 1,"
                       " 'starting', 1)", waiting, DEPLOYMENT)

    deploying, release = asyncio.Event(), asyncio.Event()

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        deploying.set()
        await release.wait()  # a deploy that takes its time
        return "7"

    started: list[uuid.UUID] = []

    async def start_training(deps, training_id, late=False) -> bool:
        started.append(training_id)
        return True

    deliver_with(monkeypatch, lambda: CHAMPION, serve)
    monkeypatch.setattr(continuous, "start_training", start_training)
    deps = process(pool)
    resumer = asyncio.create_task(continuous.DeliveryResumer(deps).sweep())
    try:
        await asyncio.wait_for(deploying.wait(), 10)
        await asyncio.wait_for(continuous.TrainingStarter(deps).sweep(), 10)  # while the deploy runs
        assert started == [waiting]
    finally:
        release.set()
        await asyncio.wait_for(resumer, 10)
    swapped = await pool.fetch("SELECT payload FROM outbox WHERE subject = $1", subjects.EVENT_MONITORING_MODEL_SWAPPED)
    assert [json.loads(r["payload"])["action"] for r in swapped] == ["deployed"]


async def test_a_slow_delivery_that_serves_after_the_resumed_one_failed_is_recorded(monitoring_schema, monkeypatch):
    """DEPLOY_SHADOW: the first delivery's deploy is slower than STALE_SWAP, the resumed one fails at once (its claim
    holds: its failure is recorded), and then the first one serves the challenger. Before, that serving was ignored
    (the delivery closed by the failure): the training said failed, no challenge opened and no model_swapped told
    the shadow that serves. Now the serving overrules the other's failure: one challenge, one shadow_set."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    training_id = uuid.uuid4()
    training = await pool.fetchrow(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, delivering_since) VALUES ($1, $2, 1, 'done', 'shadow', 1, $3, $4, 'ready', now() -"
        " make_interval(secs => $5)) RETURNING *", training_id, DEPLOYMENT, uuid.uuid4(), json.dumps(CHALLENGER),
        continuous.STALE_SWAP + 10)

    slow, release = asyncio.Event(), asyncio.Event()
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(challenger["version"])
        if len(serves) == 1:  # the first delivery's deploy: slow, and it serves
            slow.set()
            await release.wait()
            return "7"
        raise NotFound("pipeline 5 was deleted")  # a 503 is resumed, not failed  # the resumed one fails

    deliver_with(monkeypatch, lambda: CHAMPION, serve)
    first = asyncio.create_task(continuous._deliver(process(pool), training, "DEPLOY_SHADOW"))
    try:
        await asyncio.wait_for(slow.wait(), 10)
        await continuous.resume_deliveries(process(pool))
        row = await pool.fetchrow("SELECT outcome FROM trainings WHERE id = $1", training_id)
        assert row["outcome"] == "failed"  # the resumed delivery's failure, while the first still deploys
    finally:
        release.set()
        await asyncio.wait_for(first, 10)

    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", training_id)
    assert (row["outcome"], row["reason"], row["delivering_since"]) == ("shadow", None, None)
    challenges = await pool.fetch("SELECT state FROM challenges WHERE training_id = $1", training_id)
    assert [c["state"] for c in challenges] == ["running"]
    swapped = await pool.fetch("SELECT payload FROM outbox WHERE subject = $1", subjects.EVENT_MONITORING_MODEL_SWAPPED)
    assert [json.loads(r["payload"])["action"] for r in swapped] == ["shadow_set"]


async def test_a_training_whose_owner_left_suspends_continuous_training_once(monitoring_schema, monkeypatch):
    """ASSAY_ALERT continuous training whose owner has left the workspace: auth refuses the owner's token
    (auth.token.issue_task: 'no longer a member'). Before, every new assay alert opened a training that failed
    'could not start' (one failed training, and its training_finished, per alert). Now the first one fails and
    suspends continuous training (inactive, with the reason): the next alert opens nothing, and nothing acts as
    anyone else. Turning it on again lifts the suspension."""
    pool = monitoring_schema
    owner = uuid.uuid4()
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name, pipeline_id, updated_at)"
        " VALUES ($1, 1, 'd-42', $2, 1, $3, 'ASSAY_ALERT', 1, '{}', 'digits', 9, now() - interval '1 minute')",
        DEPLOYMENT, owner, uuid.uuid4())
    deps = process(pool)
    asked: list[str] = []

    async def request(broker, subject, cmd, **kwargs):
        asked.append(subject)
        assert subject == subjects.AUTH_TOKEN_ISSUE_TASK, subject  # nothing is asked as anyone else
        assert cmd.user_id == str(owner)
        raise NotFound("the task's owner is no longer a member of workspace 1")

    monkeypatch.setattr(continuous, "request", request)

    def alert() -> AssayThresholdCrossed:
        return AssayThresholdCrossed(assay_id=1, name="drift", workspace_id=1, pipeline_id=9, pipeline_name="p",
                                     iopath="input.0", status="Alert", score=0.9, warning_threshold=None,
                                     alert_threshold=0.5, window_start="a", window_end="b")

    starter = continuous.TrainingStarter(deps)
    for _ in range(3):
        await continuous.on_assay_alert(deps, alert())
        await starter.sweep()
    trainings = await pool.fetch("SELECT state, reason FROM trainings WHERE deployment_id = $1", DEPLOYMENT)
    assert [(t["state"], t["reason"]) for t in trainings] == [
        ("failed", "could not start: the task's owner is no longer a member of workspace 1")], trainings
    finished = await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                                subjects.EVENT_MONITORING_TRAINING_FINISHED)
    assert len(finished) == 1
    info = await continuous.information(pool, DEPLOYMENT)
    assert info.training.active is False
    assert "owner's token was refused" in info.training.suspended_reason
    assert "no longer a member" in info.training.suspended_reason

    async def deployment(base, principal, token, name):
        return SimpleNamespace(route=SimpleNamespace(deployment_id=DEPLOYMENT))

    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    info = await continuous.toggle_training(deps, None, None, ToggleContinuous(deployment="d-42", active=True))
    assert info.training.active is True and info.training.suspended_reason is None


@pytest.mark.parametrize("error", [UpstreamTimeout("auth did not answer within 5s"),
                                   Unavailable("auth is not running")], ids=["timeout", "auth away"])
async def test_an_owner_token_not_issued_for_a_passing_reason_suspends_nothing(monitoring_schema, monkeypatch,
                                                                              error):
    """Auth not answering (a timeout) or away is no refusal of the owner: each training it stops fails alone, and
    continuous training stays on without a suspended_reason (the next alert opens the next training)."""
    pool = monitoring_schema
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name, pipeline_id, updated_at)"
        " VALUES ($1, 1, 'd-42', $2, 1, $3, 'ASSAY_ALERT', 1, '{}', 'digits', 9, now() - interval '1 minute')",
        DEPLOYMENT, uuid.uuid4(), uuid.uuid4())
    deps = process(pool)

    async def request(broker, subject, cmd, **kwargs):
        assert subject == subjects.AUTH_TOKEN_ISSUE_TASK, subject
        raise error

    monkeypatch.setattr(continuous, "request", request)
    starter = continuous.TrainingStarter(deps)
    for _ in range(2):
        await continuous.on_assay_alert(deps, AssayThresholdCrossed(
            assay_id=1, name="drift", workspace_id=1, pipeline_id=9, pipeline_name="p", iopath="input.0",
            status="Alert", score=0.9, warning_threshold=None, alert_threshold=0.5, window_start="a", window_end="b"))
        await starter.sweep()
    trainings = await pool.fetch("SELECT state, reason FROM trainings WHERE deployment_id = $1", DEPLOYMENT)
    assert [(t["state"], t["reason"]) for t in trainings] == [("failed", f"could not start: {error.msg}")] * 2
    info = await continuous.information(pool, DEPLOYMENT)
    assert info.training.active is True and info.training.suspended_reason is None


@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
async def test_a_resumed_delivery_checks_it_is_still_due_before_serving(monitoring_schema, monkeypatch, policy):
    """A stale delivery is resumed; during its look-ups (the owner's token, the deployment, the model) a newer
    training of the deployment is delivered as the shadow challenger (DEPLOY_SHADOW), its challenge running.
    Before, a resumed DEPLOY_AUTO delivery superseded that challenge before checking anything, then served its older
    version over it; a resumed DEPLOY_SHADOW one served its older version as the challenger over it, then superseded
    the newer challenge with its own. Now the check (nothing newer delivered; DEPLOY_AUTO: and its claim holds) comes
    before the serving (DEPLOY_AUTO: in the transaction that would supersede): the newer challenge keeps running,
    nothing is served, the old delivery is closed with the reason."""
    pool = monitoring_schema
    await continuous_deployment(pool, policy)
    older, newer = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', $6, 1, $3, $4, 'ready',"
        " now() - interval '1 hour', now() - make_interval(secs => $5))", older, DEPLOYMENT, uuid.uuid4(),
        json.dumps(CHALLENGER), continuous.STALE_SWAP + 10, "deployed" if policy == "DEPLOY_AUTO" else "shadow")
    serves: list[tuple] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append((champion, challenger))
        return "7"

    deliver_with(monkeypatch, lambda: CHAMPION, serve)
    challenge_id = uuid.uuid4()

    async def deployment(base, principal, token, name):  # meanwhile, the newer training is delivered as shadow
        await pool.execute(
            "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
            " model_status) VALUES ($1, $2, 1, 'done', 'shadow', 1, $3, $4, 'ready')", newer, DEPLOYMENT,
            uuid.uuid4(), json.dumps({"name": "digits", "version": "v3", "sha": "c"}))
        await pool.execute(
            "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha,"
            " min_sample, state) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'running')", challenge_id, DEPLOYMENT,
            newer, json.dumps(CHAMPION), json.dumps({"name": "digits", "version": "v3", "sha": "c"}))
        return SimpleNamespace(definition={"steps": [{"ModelInference": {"models": [CHAMPION]}}]})

    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    await continuous.resume_deliveries(process(pool))

    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "running"
    assert serves == []
    assert await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                            subjects.EVENT_MONITORING_MODEL_SWAPPED) == []
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", older)
    assert row["delivering_since"] is None and "a newer training" in row["reason"], dict(row)


async def test_an_unexpected_error_in_one_resumed_delivery_does_not_hold_back_the_others(monitoring_schema,
                                                                                         monkeypatch):
    """Two stale DEPLOY_AUTO deliveries (two deployments), resumed by one sweep; the first one's deploy raises an
    error that is not a Railyard one (a bug, a dropped connection). Before, it ended the sweep: the other, claimed
    with it, waited STALE_SWAP (300 s) more. Now it is logged and the other is delivered in the same sweep; the
    failing one stays open, to be delivered again later. The two deployments are resumed at once (RESUME_CONCURRENCY,
    9a795a4), so which of their deploys comes first is not fixed: both are made, in either order."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    other = DEPLOYMENT + 1
    await pool.execute("INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id, policy,"
                       " alpha, min_sample) VALUES ($1, 1, 'd-43', $2, 'DEPLOY_AUTO', 0.05, 10)", other,
                       uuid.uuid4())
    failing, delivered = uuid.uuid4(), uuid.uuid4()
    for training_id, deployment_id, age in ((failing, DEPLOYMENT, 7200), (delivered, other, 3600)):
        await pool.execute(
            "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
            " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4, 'ready',"
            " now() - make_interval(secs => $5), now() - make_interval(secs => $6))", training_id, deployment_id,
            uuid.uuid4(), json.dumps(CHALLENGER), age, continuous.STALE_SWAP + 10)
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(deployment)
        if deployment == "d-42":
            raise RuntimeError("connection dropped")
        return "7"

    deliver_with(monkeypatch, lambda: CHAMPION, serve)
    await continuous.resume_deliveries(process(pool))

    assert sorted(serves) == ["d-42", "d-43"]
    swapped = [json.loads(r["payload"]) for r in await pool.fetch(
        "SELECT payload FROM outbox WHERE subject = $1", subjects.EVENT_MONITORING_MODEL_SWAPPED)]
    assert [(e["deployment_id"], e["action"]) for e in swapped] == [(other, "deployed")]
    rows = {r["id"]: r for r in await pool.fetch("SELECT id, delivering_since FROM trainings")}
    assert rows[delivered]["delivering_since"] is None
    assert rows[failing]["delivering_since"] is not None  # claimed again: delivered again STALE_SWAP later


@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
async def test_a_delivery_looks_the_owner_and_the_deployment_up_once(monitoring_schema, monkeypatch, policy):
    """A delivery looks up the owner's token, the deployment's current name and the deployment (deployments/resolve
    and pipelines/get) in _deliver, and its swap (_serve) used to look all three up again; it now serves with what
    _deliver found: one of each, and the same requests to the registry and the deployer as before."""
    pool = monitoring_schema
    await continuous_deployment(pool, policy)
    training = await pool.fetchrow(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, delivering_since) VALUES ($1, $2, 1, 'done', $3, 1, $4, $5, 'ready', now()) RETURNING *",
        uuid.uuid4(), DEPLOYMENT, "deployed" if policy == "DEPLOY_AUTO" else "shadow", uuid.uuid4(),
        json.dumps(CHALLENGER))
    looked_up: list[str] = []
    asked: list[str] = []

    async def act_as(deps, owner_id, workspace_id, purpose):
        looked_up.append("act_as")
        return SimpleNamespace(user_id=str(owner_id)), "token"

    async def deployed_name(deps, token, name):
        looked_up.append("deployed_name")
        return name

    async def deployment(base, principal, token, name):
        looked_up.append("deployment")
        return SimpleNamespace(definition={"steps": [{"ModelInference": {"models": [CHAMPION]}}]},
                               route=SimpleNamespace(pipeline_name="p", pipeline_version="3",
                                                     deployment_id=DEPLOYMENT), deploy_id="d",
                               pipeline_id=5, engine_config=None, version_pk_id=9)

    async def request(broker, subject, cmd, **kwargs):
        asked.append(subject)
        if subject == subjects.REGISTRY_MODELS_RESOLVE:
            return SimpleNamespace(name=cmd.name, model_version=cmd.version, sha="b")
        if subject == subjects.DEPLOYER_PIPELINES_CREATE:
            assert cmd.pipeline_id == "p" and cmd.workspace_id == 1
            return SimpleNamespace(pipeline_variant_pk_id=11, pipeline_variant_version="4")
        assert subject == subjects.DEPLOYER_PIPELINES_DEPLOY, subject
        # only if the version looked at (pk id 9) still serves: its deploy never lands over one served since
        assert (cmd.deploy_id, cmd.pipeline_version_pk_id, cmd.pipeline_id, cmd.only_if_serving) == ("d", 11, 5, 9)
        return None

    monkeypatch.setattr(continuous, "act_as", act_as)
    monkeypatch.setattr(continuous, "deployed_name", deployed_name)
    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    monkeypatch.setattr(continuous, "request", request)
    deps = process(pool)
    deps.base.deploy_timeout = 5.0
    await continuous._deliver(deps, training, policy)

    assert looked_up == ["act_as", "deployed_name", "deployment"]
    # the new version, then the served one (its inputs compared: model_inputs.py), before anything is created
    assert asked == [subjects.REGISTRY_MODELS_RESOLVE, subjects.REGISTRY_MODELS_RESOLVE,
                     subjects.DEPLOYER_PIPELINES_CREATE, subjects.DEPLOYER_PIPELINES_DEPLOY]
    swapped = [json.loads(r["payload"]) for r in await pool.fetch(
        "SELECT payload FROM outbox WHERE subject = $1", subjects.EVENT_MONITORING_MODEL_SWAPPED)]
    assert [(e["action"], e["pipeline_version"]) for e in swapped] == [
        ("deployed" if policy == "DEPLOY_AUTO" else "shadow_set", "4")]


@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
async def test_a_newer_delivery_during_a_deploy_is_served_after_it(monitoring_schema, monkeypatch, policy):
    """Training 1's delivery passed its still-due check and deploys v2; while that deploy runs, another process
    delivers training 2 (v3), newer, and its deploy ends first. Before, training 1's deploy then ended with v2 serving
    in v3's place (DEPLOY_SHADOW: v2 the challenger over v3's challenge), recorded and told as if due. Now training 1's
    record finds the newer delivery: it is closed unrecorded (no event of its own, with the reason) and v3 is served
    again after it; v3's delivery is told once."""
    pool = monitoring_schema
    await continuous_deployment(pool, policy)
    outcome = "deployed" if policy == "DEPLOY_AUTO" else "shadow"
    older, newer = uuid.uuid4(), uuid.uuid4()
    newest = {"name": "digits", "version": "v3", "sha": "c"}

    async def done(training_id: uuid.UUID, version: dict, created: int) -> None:  # as advance leaves it
        await pool.execute(
            "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
            " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', $5, 1, $3, $4, 'ready',"
            " now() - make_interval(secs => $6), now())", training_id, DEPLOYMENT, uuid.uuid4(),
            json.dumps(version), outcome, created)

    await done(older, CHALLENGER, 600)
    serving = {"model": CHAMPION, "shadow": None}
    serves: list[str] = []
    first, other = process(pool), process(pool)

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        served = (challenger or champion)["version"]
        serves.append(served)
        if deps is first and served == "v2":  # training 2 ends and the other process delivers it during this deploy
            await done(newer, newest, 100)
            row = await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", newer)
            await continuous._deliver(other, row, policy)
        serving.update(model=champion, shadow=challenger)
        return str(len(serves))

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    await continuous._deliver(first, await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", older), policy)

    assert serves == ["v2", "v3", "v3"]
    shadow = serving["shadow"] and serving["shadow"]["version"]
    if policy == "DEPLOY_AUTO":
        assert (serving["model"]["version"], shadow) == ("v3", None)  # not v2
    else:
        assert (serving["model"]["version"], shadow) == ("v1", "v3")
        challenges = await pool.fetch("SELECT training_id, state FROM challenges WHERE deployment_id = $1",
                                      DEPLOYMENT)
        assert [(c["training_id"], c["state"]) for c in challenges] == [(newer, "running")]
    swapped = [json.loads(r["payload"]) for r in await pool.fetch(
        "SELECT payload FROM outbox WHERE subject = $1", subjects.EVENT_MONITORING_MODEL_SWAPPED)]
    assert len(swapped) == 1 and str(newer) in swapped[0]["reason"], swapped
    row = await pool.fetchrow("SELECT delivering_since, reason FROM trainings WHERE id = $1", older)
    assert row["delivering_since"] is None and "delivered during its deploy" in row["reason"], dict(row)
    assert await pool.fetchval("SELECT delivering_since FROM trainings WHERE id = $1", newer) is None


async def _stale_older_and_recorded_newer(pool, policy: str) -> tuple[uuid.UUID, uuid.UUID, dict]:
    """Training 1 (v2) delivering since more than STALE_SWAP ago (its process died), training 2 (v3), newer, delivered
    and recorded: the two trainings' ids and v3."""
    outcome = "deployed" if policy == "DEPLOY_AUTO" else "shadow"
    older, newer = uuid.uuid4(), uuid.uuid4()
    newest = {"name": "digits", "version": "v3", "sha": "c"}
    for training_id, version, created, delivering in ((older, CHALLENGER, 600, continuous.STALE_SWAP + 10),
                                                       (newer, newest, 100, None)):
        await pool.execute(
            "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
            " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', $7, 1, $3, $4, 'ready',"
            " now() - make_interval(secs => $5), now() - make_interval(secs => $6))", training_id, DEPLOYMENT,
            uuid.uuid4(), json.dumps(version), created, delivering, outcome)
    return older, newer, newest


@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
async def test_an_older_deploy_that_ended_last_before_its_process_died_is_undone_when_resumed(monitoring_schema,
                                                                                                monkeypatch, policy):
    """Training 1's deploy of v2 ended after training 2's of v3 (recorded by another process), and training 1's
    process died before its record (or before serving v3 again, _overtaken): v2 serves in v3's place. Before, the
    resumed delivery of training 1 was only closed (a newer one delivered) and v2 kept serving for good; now v3 is
    served again (no second event: training 2's delivery was told), and training 1 is closed with the reason."""
    pool = monitoring_schema
    await continuous_deployment(pool, policy)
    older, newer, newest = await _stale_older_and_recorded_newer(pool, policy)
    if policy == "DEPLOY_AUTO":
        serving = {"model": CHALLENGER, "shadow": None}  # v2 in v3's place
    else:
        serving = {"model": CHAMPION, "shadow": CHALLENGER}
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append((challenger or champion)["version"])
        serving.update(model=champion, shadow=challenger)
        return "9"

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    await continuous.resume_deliveries(process(pool))

    assert serves == ["v3"]
    assert (serving["model"]["version"], serving["shadow"] and serving["shadow"]["version"]) == (
        ("v3", None) if policy == "DEPLOY_AUTO" else ("v1", "v3"))
    assert await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                            subjects.EVENT_MONITORING_MODEL_SWAPPED) == []
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", older)
    assert row["delivering_since"] is None and "a newer training of the deployment was delivered since" in row[
        "reason"], dict(row)
    assert await pool.fetchval("SELECT reason FROM trainings WHERE id = $1", newer) is None


@pytest.mark.parametrize("again", ["dies", "fails"])
async def test_an_older_delivery_overtaken_stays_claimed_until_the_newest_serves_again(monitoring_schema,
                                                                                       monkeypatch, again):
    """_overtaken: training 2 (v3), newer, is delivered and recorded by another process during training 1's deploy of
    v2, which ends last; training 1's process dies while serving v3 again, or that deploy fails (the deployer away).
    Before, training 1's delivery was closed before that, so nothing served v3 again: v2 kept serving. Now it stays
    claimed until v3 serves again, and once stale the resumed sweep (another process) serves v3."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, newer = uuid.uuid4(), uuid.uuid4()
    newest = {"name": "digits", "version": "v3", "sha": "c"}
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4, 'ready',"
        " now() - make_interval(secs => 600), now())", older, DEPLOYMENT, uuid.uuid4(), json.dumps(CHALLENGER))
    serving = {"model": CHAMPION, "shadow": None}
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(champion["version"])
        if serves == ["v2"]:  # training 2 served and recorded by another process during this deploy
            await pool.execute(
                "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id,"
                " model_version, model_status, created_at) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4, 'ready',"
                " now() - make_interval(secs => 100))", newer, DEPLOYMENT, uuid.uuid4(), json.dumps(newest))
        if serves == ["v2", "v3"]:  # serving v3 again: the process dies, or the deploy fails
            raise asyncio.CancelledError if again == "dies" else Unavailable("deployer is not running")
        serving.update(model=champion, shadow=challenger)
        return str(len(serves))

    deliver_with(monkeypatch, lambda: serving["model"], serve)
    delivery = continuous._deliver(process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", older),
                                   "DEPLOY_AUTO")
    if again == "dies":
        with pytest.raises(asyncio.CancelledError):
            await delivery
    else:
        await delivery
        assert await pool.fetchval("SELECT outcome FROM trainings WHERE id = $1", newer) == "deployed"  # recorded
    assert serves == ["v2", "v3"] and serving["model"]["version"] == "v2"
    assert await pool.fetchval("SELECT delivering_since FROM trainings WHERE id = $1", older) is not None

    await pool.execute("UPDATE trainings SET delivering_since = now() - make_interval(secs => $2) WHERE id = $1",
                       older, continuous.STALE_SWAP + 10)
    await continuous.resume_deliveries(process(pool))  # another process, once stale
    assert serves == ["v2", "v3", "v3"] and serving["model"]["version"] == "v3"
    assert await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                            subjects.EVENT_MONITORING_MODEL_SWAPPED) == []
    assert await pool.fetchval("SELECT delivering_since FROM trainings WHERE id = $1", older) is None


def _overtaking(pool, newer: uuid.UUID, newest: dict, serves: list[str], serving: dict, error: Callable[[], Exception],
                failures: int, *, newer_in_flight: bool = False):
    """A deploy stand-in: during the first deploy (v2, training 1's) training 2 (v3), newer, is delivered by another
    process (recorded, or `newer_in_flight`: its own delivery still under way, claimed); the first `failures` deploys
    of v3 raise `error()`."""

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(champion["version"])
        if serves == ["v2"]:
            await pool.execute(
                "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id,"
                " model_version, model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed',"
                " 1, $3, $4, 'ready', now() - make_interval(secs => 100), CASE WHEN $5 THEN now() END)", newer,
                DEPLOYMENT, uuid.uuid4(), json.dumps(newest), newer_in_flight)
        elif champion["version"] == "v3" and serves.count("v3") <= failures:
            raise error()
        serving.update(model=champion, shadow=challenger)
        return str(len(serves))

    return serve


async def _older_claimed(pool) -> uuid.UUID:
    """Training 1 (v2, DEPLOY_AUTO), its delivery claimed now (as advance leaves it)."""
    older = uuid.uuid4()
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4, 'ready',"
        " now() - make_interval(secs => 600), now())", older, DEPLOYMENT, uuid.uuid4(), json.dumps(CHALLENGER))
    return older


@pytest.mark.parametrize("error", ["unexpected", "railyard"])
async def test_serving_the_newest_again_is_tried_twice_then_the_older_delivery_is_closed(monitoring_schema,
                                                                                         monkeypatch, error):
    """_overtaken, and serving v3 again fails each time. A Railyard error: left claimed after the first try, closed
    after the resumed one (980c63d). An unexpected (non-Railyard) error: before, the first try's left training 1's
    delivery (_deliver raised it), and the resumed sweep's left it claimed again (`continue`), so it was tried every
    STALE_SWAP for ever; now the first try is logged (ERROR, with its traceback) and leaves it claimed, and the resumed
    sweep's second try closes it whatever happens, the failure in its reason."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, newer = await _older_claimed(pool), uuid.uuid4()
    newest = {"name": "digits", "version": "v3", "sha": "c"}
    serving = {"model": CHAMPION, "shadow": None}
    serves: list[str] = []
    fault = (lambda: RuntimeError("boom")) if error == "unexpected" else (lambda: Unavailable("deployer is away"))
    deliver_with(monkeypatch, lambda: serving["model"], _overtaking(pool, newer, newest, serves, serving, fault, 2))

    await continuous._deliver(process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", older),
                              "DEPLOY_AUTO")
    assert serves == ["v2", "v3"]
    assert await pool.fetchval("SELECT delivering_since FROM trainings WHERE id = $1", older) is not None

    for _ in range(2):  # stale, and once more: nothing left to try
        await pool.execute("UPDATE trainings SET delivering_since = now() - make_interval(secs => $2) WHERE id = $1"
                           " AND delivering_since IS NOT NULL", older, continuous.STALE_SWAP + 10)
        await continuous.resume_deliveries(process(pool))
    assert serves == ["v2", "v3", "v3"]  # the second try, the last
    row = await pool.fetchrow("SELECT delivering_since, reason FROM trainings WHERE id = $1", older)
    assert row["delivering_since"] is None, dict(row)
    assert "serving the newer one again failed: " + (
        "unexpected error RuntimeError" if error == "unexpected" else "deployer is away") in row["reason"], dict(row)
    newer_row = await pool.fetchrow("SELECT outcome, reason FROM trainings WHERE id = $1", newer)
    assert (newer_row["outcome"], newer_row["reason"]) == ("deployed", None)  # its own delivery was recorded


@pytest.mark.parametrize("error", ["unavailable", "owner_refused"])
async def test_serving_the_newest_again_fails_without_failing_the_newest_own_delivery(monitoring_schema,
                                                                                      monkeypatch, error):
    """_overtaken: training 2 (v3) is delivered by another process during training 1's deploy of v2, and its own
    delivery is still under way there (claimed) when serving v3 again for training 1 fails. Before, that failure was
    recorded on training 2's delivery (its claim the one read): training 2 marked failed and its claim cleared, so its
    own delivery, on reaching its still-due check, found its claim gone and served nothing. Now training 2 is left to
    its own delivery (which serves and records it); the owner refused still suspends continuous deployment."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, newer = await _older_claimed(pool), uuid.uuid4()
    newest = {"name": "digits", "version": "v3", "sha": "c"}
    serving = {"model": CHAMPION, "shadow": None}
    serves: list[str] = []
    fault = ((lambda: Unavailable("deployer is away")) if error == "unavailable" else
             (lambda: continuous.OwnerRefused("user is not a member of the workspace")))
    deliver_with(monkeypatch, lambda: serving["model"],
                 _overtaking(pool, newer, newest, serves, serving, fault, 1, newer_in_flight=True))

    await continuous._deliver(process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", older),
                              "DEPLOY_AUTO")
    assert serves == ["v2", "v3"]
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", newer)
    assert (row["outcome"], row["reason"]) == ("deployed", None) and row["delivering_since"] is not None, dict(row)
    assert await pool.fetchval("SELECT delivering_since FROM trainings WHERE id = $1", older) is not None
    active = await pool.fetchval("SELECT active FROM continuous_deployment WHERE deployment_id = $1", DEPLOYMENT)
    assert active is (error != "owner_refused")

    # training 2's own delivery (the other process) goes on: served, recorded and told once
    await continuous._deliver(process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", newer),
                              "DEPLOY_AUTO")
    assert serves == ["v2", "v3", "v3"] and serving["model"]["version"] == "v3"
    assert await pool.fetchval("SELECT delivering_since FROM trainings WHERE id = $1", newer) is None
    assert len(await pool.fetch("SELECT payload FROM outbox WHERE subject = $1",
                                subjects.EVENT_MONITORING_MODEL_SWAPPED)) == 1
