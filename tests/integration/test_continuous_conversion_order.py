"""A training's converting model version whose conversion ended before its upload was recorded
(services/monitoring/continuous.py on_model_uploaded / on_model_finished, migration 026).

The registry sends `events.model.uploaded` and then `events.model.version_finished` (its outbox, in order per
version), but monitoring reads them with two durable consumers, each at its own pace: after a restart with a
backlog, or with a conversion faster than the uploads' consumer, the finished event is handled first. It found no
training with that version and changed nothing; the upload then recorded the version `converting` on the training,
which waited for a conversion already over: `succeeded` for good, and no later training of its deployment opened
(the starter's modelless sweep only looks at trainings without a model version). Now the finished event's status is
kept for the upload, which takes it.

Also the modelless failure's reason (_fail_modelless): it advised uploading a model version with the run's token,
which after the failure delivers nothing.

Runs the service's functions on a monitoring schema of this test's on the stack's PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.monitoring import continuous
from shared.messages.registry import ModelUploaded, ModelVersionFinished
from shared.messages.tasks import TaskRunEvent
from tests.integration.continuous_setups import DEPLOYMENT, schema_fixture
from tests.integration.test_continuous_swap_once import process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_conversion_order")


async def running_training(pool) -> tuple[uuid.UUID, uuid.UUID]:
    """A training of DEPLOYMENT whose run is recorded (running); its id and its task's."""
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name) VALUES ($1, 1, 'd-42', $2, 1, $3,"
        " 'FEEDBACK_LOOP', 1, '{}', 'digits') ON CONFLICT DO NOTHING", DEPLOYMENT, uuid.uuid4(), uuid.uuid4())
    training_id, task_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, task_id) VALUES ($1,"
                       " $2, 1, 'running', 1, $3)", training_id, DEPLOYMENT, task_id)
    return training_id, task_id


def uploaded(version: uuid.UUID, task_id: uuid.UUID) -> ModelUploaded:
    return ModelUploaded(workspace_id=1, model_id=3, model_version=version, name="digits", framework="onnx",
                         status="converting", sha256="c" * 64, task_id=str(task_id))


async def run_ended(deps, training_id: uuid.UUID, task_id: uuid.UUID) -> None:
    await continuous.on_run_ended(deps, TaskRunEvent(
        run_id=uuid.uuid4(), task_id=task_id, name=f"continuous training of d-42 ({training_id})",
        orch_id=uuid.uuid4(), orch_sha="0" * 64, workspace_id=1, owner_id="someone", status="success"),
        succeeded=True)


@pytest.mark.parametrize("run_first", [False, True], ids=["run ends after", "run ended before"])
@pytest.mark.parametrize("status", ["ready", "error"])
async def test_a_conversion_finished_before_its_upload_was_recorded_ends_the_training(monitoring_schema, status,
                                                                                     run_first):
    """version_finished handled before model.uploaded: the training ends (done, or failed for the conversion's
    error), whether its run ended before those events or after. Old code: `succeeded`, model_status 'converting'."""
    pool = monitoring_schema
    deps = process(pool)
    training_id, task_id = await running_training(pool)
    version = uuid.uuid4()
    if run_first:
        await run_ended(deps, training_id, task_id)
    await continuous.on_model_finished(deps, ModelVersionFinished(workspace_id=1, model_id=3, model_version=version,
                                                                  status=status))
    await continuous.on_model_uploaded(deps, uploaded(version, task_id))
    if not run_first:
        await run_ended(deps, training_id, task_id)

    row = await pool.fetchrow("SELECT state, outcome, model_status, model_version, reason FROM trainings WHERE id = $1",
                              training_id)
    assert row["model_status"] == status, dict(row)
    assert continuous._json(row["model_version"])["version"] == str(version)
    if status == "ready":
        assert (row["state"], row["outcome"]) == ("done", "pending"), dict(row)
    else:
        assert row["state"] == "failed" and "failed its conversion" in row["reason"], dict(row)
    # taken by the upload: nothing kept
    assert await pool.fetchval("SELECT count(*) FROM finished_conversions WHERE model_version = $1", version) == 0


async def test_a_conversion_finishing_after_its_upload_is_not_kept(monitoring_schema):
    """The usual order is unchanged: the finished event moves the training on and keeps nothing; a conversion no
    training has is kept until the events' retention (prune_finished_conversions), then deleted."""
    pool = monitoring_schema
    deps = process(pool)
    training_id, task_id = await running_training(pool)
    version, other = uuid.uuid4(), uuid.uuid4()
    await continuous.on_model_uploaded(deps, uploaded(version, task_id))
    await run_ended(deps, training_id, task_id)
    assert await pool.fetchval("SELECT state FROM trainings WHERE id = $1", training_id) == "succeeded"
    await continuous.on_model_finished(deps, ModelVersionFinished(workspace_id=1, model_id=3, model_version=version,
                                                                  status="ready"))
    assert await pool.fetchval("SELECT state FROM trainings WHERE id = $1", training_id) == "done"
    assert await pool.fetchval("SELECT count(*) FROM finished_conversions WHERE model_version = $1", version) == 0

    # another workspace's conversion, of no training: kept, and again (a redelivery) once
    for _ in range(2):
        await continuous.on_model_finished(deps, ModelVersionFinished(workspace_id=2, model_id=4, model_version=other,
                                                                      status="ready"))
    assert await pool.fetchval("SELECT status FROM finished_conversions WHERE model_version = $1", other) == "ready"
    assert await continuous.prune_finished_conversions(deps) == 0  # within the retention (30 days)
    await pool.execute("UPDATE finished_conversions SET finished_at = now() - interval '31 days' WHERE model_version"
                       " = $1", other)
    assert await continuous.prune_finished_conversions(deps) == 1
    assert await pool.fetchval("SELECT count(*) FROM finished_conversions WHERE model_version = $1", other) == 0


async def test_the_modelless_failure_does_not_advise_an_upload_that_changes_nothing(monitoring_schema):
    """_fail_modelless's reason said 'upload one with the run's token'; an upload after the failure is written on
    the failed training and delivers nothing. The reason now says the run has to upload before it ends."""
    pool = monitoring_schema
    deps = process(pool)
    training_id, task_id = await running_training(pool)
    await run_ended(deps, training_id, task_id)
    await pool.execute("UPDATE trainings SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.NO_MODEL_GRACE + 1)
    await continuous.TrainingStarter(deps).sweep()
    reason = await pool.fetchval("SELECT reason FROM trainings WHERE id = $1 AND state = 'failed'", training_id)
    assert reason is not None and "before it ends" in reason and "upload one" not in reason, reason
    # what the reason says: a later upload delivers nothing (the training stays failed)
    version = uuid.uuid4()
    await continuous.on_model_uploaded(deps, ModelUploaded(
        workspace_id=1, model_id=3, model_version=version, name="digits", framework="onnx", status="ready",
        sha256="c" * 64, task_id=str(task_id)))
    row = await pool.fetchrow("SELECT state, outcome FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["outcome"]) == ("failed", "failed"), dict(row)


async def test_a_conversion_finishing_while_its_upload_is_being_recorded_is_not_lost(monitoring_schema):
    """The two handlers at once: the upload has looked for a kept status (none) and waits to write the training (a
    row lock held here), when the finished event comes. Without the version's lock (CONVERSION_LOCK) the finished
    event found no training with the version (the upload not committed), kept its status for nobody and the upload
    then wrote 'converting': the training open for good. With it, the finished event waits for the upload's commit
    and finds the training."""
    pool = monitoring_schema
    deps = process(pool)
    training_id, task_id = await running_training(pool)
    await run_ended(deps, training_id, task_id)
    version = uuid.uuid4()
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM trainings WHERE id = $1 FOR UPDATE", training_id)
        upload = asyncio.create_task(continuous.on_model_uploaded(deps, uploaded(version, task_id)))
        for _ in range(200):  # bounded: until the upload's UPDATE waits for the row lock held here
            if await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query"
                                   " LIKE 'UPDATE trainings SET model_version%'"):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the upload's UPDATE never waited for the row lock")
        finished = asyncio.create_task(continuous.on_model_finished(deps, ModelVersionFinished(
            workspace_id=1, model_id=3, model_version=version, status="ready")))
        await asyncio.wait({finished}, timeout=1.0)  # without the version's lock it ends here, keeping its status
        await tx.commit()
    await asyncio.wait_for(asyncio.gather(upload, finished), 30)
    row = await pool.fetchrow("SELECT state, model_status FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["model_status"]) == ("done", "ready"), dict(row)
