"""A training that ends checks its deployment's continuous-training trigger again at once (services/monitoring/
continuous.py recheck_after; docs/monitoring.md "Continuous training on assay alerts"): the assay alerts (or reviews)
counted while it was open open the next training then. Before, they only counted towards it, and the next training
opened at the deployment's next alert or review: a pipeline that went quiet never trained again. A run that succeeded
without registering a model version is failed on time by the training starter (NO_MODEL_GRACE after its success),
not at the deployment's next trigger check, which was the only place that failed it.

Runs the service's functions on a monitoring schema of this test's on the stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from services.monitoring import continuous
from shared.messages.tasks import TaskRunEvent
from tests.integration.continuous_setups import DEPLOYMENT, schema_fixture
from tests.integration.test_continuous_swap_once import process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_trigger_after_training")


async def alerted_training(pool, state: str, **columns) -> uuid.UUID:
    """ASSAY_ALERT continuous training of DEPLOYMENT (threshold 1) whose open training (`state`, `columns`) was
    opened at the first alert, and a second alert counted while it was open. The training's id."""
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name, pipeline_id,"
        " alerts_at_last_training) VALUES ($1, 1, 'd-42', $2, 1, $3, 'ASSAY_ALERT', 1, '{}', 'digits', 5, 1)",
        DEPLOYMENT, uuid.uuid4(), uuid.uuid4())
    for _ in range(2):
        await pool.execute(
            "INSERT INTO continuous_training_alerts (deployment_id, event_id, assay_id, assay_name, iopath, score,"
            " window_start, window_end) VALUES ($1, $2, 7, 'drift', 'input brightness_mean', 0.9, 'a', 'b')",
            DEPLOYMENT, uuid.uuid4())
    training_id = uuid.uuid4()
    names = ", ".join(columns)
    values = ", ".join(f"${i}" for i in range(4, 4 + len(columns)))
    await pool.execute(
        f"INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, trigger, alerts, {names}) VALUES"
        f" ($1, $2, 1, $3, 0, 'ASSAY_ALERT', 1, {values})", training_id, DEPLOYMENT, state, *columns.values())
    return training_id


async def next_training(pool, ended: uuid.UUID) -> dict | None:
    row = await pool.fetchrow("SELECT id, state, trigger, alerts FROM trainings WHERE deployment_id = $1 AND id <> $2",
                              DEPLOYMENT, ended)
    return dict(row) if row is not None else None


async def test_a_run_that_registered_no_model_is_failed_on_time_and_the_alerts_of_meanwhile_open_the_next(
        monitoring_schema, monkeypatch):
    """The run succeeded; no model version came. The starter's wait ends at that training's deadline (before: its
    idle minute, nothing about that training), its sweep then fails it and opens the next training for the alert
    that came while it was open, and starts it in the same sweep. Before, the training stayed open (succeeded) until
    the deployment's next alert, and the alert of meanwhile opened nothing."""
    pool = monitoring_schema
    deps = process(pool)
    training_id = await alerted_training(pool, "succeeded", task_id=uuid.uuid4())
    await pool.execute("UPDATE trainings SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.NO_MODEL_GRACE - 20)
    starter = continuous.TrainingStarter(deps)
    assert await starter.next_due() <= 21  # its deadline, ~20 s on

    started: list[uuid.UUID] = []

    async def start_training(deps, training_id, late=False):
        started.append(training_id)
        return True

    monkeypatch.setattr(continuous, "start_training", start_training)
    await pool.execute("UPDATE trainings SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.NO_MODEL_GRACE + 5)
    await starter.sweep()

    row = await pool.fetchrow("SELECT state, reason FROM trainings WHERE id = $1", training_id)
    assert row["state"] == "failed" and "registered no model version" in row["reason"], dict(row)
    opened = await next_training(pool, training_id)
    assert opened is not None, "the alert counted while the training was open opened nothing"
    assert (opened["state"], opened["trigger"], opened["alerts"]) == ("starting", "ASSAY_ALERT", 2)
    assert started == [opened["id"]]
    assert await pool.fetchval("SELECT alerts_at_last_training FROM continuous_training") == 2


async def test_the_starter_does_not_wait_behind_a_deploy_under_way_on_the_deployment(monitoring_schema, monkeypatch):
    """The deployment's in-process lock is held by a deploy of this process under way (a delivery or a swap waits up
    to deploy_wait, 305 s, holding it): the starter's check of the trigger after the no-model failure does not wait
    for it (the row lock on continuous_training makes the check once), so the sweep, and every other deployment's
    training start, is not held up behind that deploy."""
    pool = monitoring_schema
    deps = process(pool)
    training_id = await alerted_training(pool, "succeeded", task_id=uuid.uuid4())
    await pool.execute("UPDATE trainings SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.NO_MODEL_GRACE + 5)

    async def start_training(deps, training_id, late=False):
        return True

    monkeypatch.setattr(continuous, "start_training", start_training)
    async with deps.lock(DEPLOYMENT):
        with deps.deploying_to(DEPLOYMENT):
            await asyncio.wait_for(continuous.TrainingStarter(deps).sweep(), 30)
    opened = await next_training(pool, training_id)
    assert opened is not None and (opened["state"], opened["alerts"]) == ("starting", 2), opened


@pytest.mark.parametrize("end", ["run_failed", "done", "model_failed"])
async def test_a_training_that_ends_opens_the_next_for_the_alerts_of_meanwhile(monitoring_schema, end):
    """The training's run fails (events.task_run.failed), or its model version is ready (done: DEPLOY_MANUAL, pending)
    or failed its conversion: the alert that came while it was open opens the next training at once. Before, it
    opened one only at the deployment's next alert."""
    pool = monitoring_schema
    deps = process(pool)
    task_id = uuid.uuid4()
    if end == "run_failed":
        training_id = await alerted_training(pool, "running", task_id=task_id)
        await continuous.on_run_ended(deps, TaskRunEvent(
            run_id=uuid.uuid4(), task_id=task_id, name="continuous training", orch_id=uuid.uuid4(), orch_sha="0" * 64,
            workspace_id=1, owner_id="someone", status="failure", reason="the recipe failed"), succeeded=False)
        ended = "failed"
    else:
        training_id = await alerted_training(
            pool, "succeeded", task_id=task_id, model_version=json.dumps({"name": "digits", "version": "v9"}),
            model_status="ready" if end == "done" else "error")
        await continuous.advance(deps, DEPLOYMENT, training_id)
        ended = "done" if end == "done" else "failed"

    assert await pool.fetchval("SELECT state FROM trainings WHERE id = $1", training_id) == ended
    opened = await next_training(pool, training_id)
    assert opened is not None, "the alert counted while the training was open opened nothing"
    assert (opened["state"], opened["alerts"]) == ("starting", 2)


async def test_reviews_of_meanwhile_open_the_next_training_when_a_set_up_again_opened_one_at_once(monitoring_schema):
    """The review trigger (FEEDBACK_LOOP) the way test_monitoring_loop*.py meets it: set up again, continuous
    training keeps the count of its last training, so the reviews made since (while it was inactive) open a training
    at the set-up itself; the reviews made while that one runs count towards the next, which opens when its run
    fails. Before, it opened only at the deployment's next review: a loop whose reviewers had stopped never trained
    again. (The loop tests made their threshold's reviews after such a set-up: the training that followed theirs was
    what failed the CI of e53d6b9.)"""
    pool = monitoring_schema
    deps = process(pool)
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name, reviews_at_last_training) VALUES"
        " ($1, 1, 'd-42', $2, 1, $3, 'FEEDBACK_LOOP', 2, '{}', 'digits', 0)", DEPLOYMENT, uuid.uuid4(), uuid.uuid4())

    async def review() -> None:
        prediction = uuid.uuid4()
        await pool.execute(
            "INSERT INTO predictions (id, deployment_id, workspace_id, origin, kind, prediction, height, width,"
            " content_type, image_sha256, features, predicted_at) VALUES ($1, $2, 1, 'monitor', 'classification',"
            " $3, 8, 8, 'image/png', 'ab', '{}', now())", prediction, DEPLOYMENT,
            json.dumps({"detection_classes": [0]}))
        await pool.execute("INSERT INTO reviews (id, prediction_id, deployment_id, workspace_id, decision,"
                           " ground_truth) VALUES ($1, $2, $3, 1, 'accepted', $4)", uuid.uuid4(), prediction,
                           DEPLOYMENT, json.dumps({"detection_classes": [0]}))

    for _ in range(5):  # made since the last training (its count 0)
        await review()
    first = await continuous.check_trigger(deps, DEPLOYMENT)  # the set-up's check: at once
    assert first is not None
    task_id = uuid.uuid4()
    await pool.execute("UPDATE trainings SET state = 'running', task_id = $2 WHERE id = $1", first, task_id)
    for _ in range(2):  # while it runs: the threshold's reviews, towards the next
        await review()
    assert await continuous.check_trigger(deps, DEPLOYMENT) is None  # one training at a time

    await continuous.on_run_ended(deps, TaskRunEvent(
        run_id=uuid.uuid4(), task_id=task_id, name="continuous training", orch_id=uuid.uuid4(), orch_sha="0" * 64,
        workspace_id=1, owner_id="someone", status="failure", reason="the recipe failed"), succeeded=False)

    assert await pool.fetchval("SELECT state FROM trainings WHERE id = $1", first) == "failed"
    opened = await next_training(pool, first)
    assert opened is not None, "the reviews made while the training ran opened nothing"
    assert opened["state"] == "starting" and opened["trigger"] == "FEEDBACK_LOOP"
    assert await pool.fetchval("SELECT reviews FROM trainings WHERE id = $1", opened["id"]) == 7
    assert await pool.fetchval("SELECT reviews_at_last_training FROM continuous_training") == 7
