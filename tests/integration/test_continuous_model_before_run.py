"""A training's model version uploaded before the training recorded its run is still its output
(services/monitoring/continuous.py on_model_uploaded).

tasks/run_once creates the task with the id the training chose at its claim (`run_task_id`) and queues its run; when
its answer does not come in time (UpstreamTimeout) the training stays `starting`, its `task_id` unset, until a
starter's resume (RESUME_START, 60 s, after the claim) or the run's end event (found by the task's name) records it.
The run goes on meanwhile and may register its model version in that time: `events.model.uploaded` names the task
(`task_id`) and was matched against the training's `task_id` only, so it found no training and was dropped; the
run's success then left the training `succeeded` without a model version, and NO_MODEL_GRACE later the starter
failed it ("registered no model version") although its run had registered one. Now the upload is matched by the
task id the training chose too, while its run is not recorded yet.

Runs the service's functions on a monitoring schema of this test's on the stack's PostgreSQL, the task scheduler
replaced by a stand-in that creates the task but whose answer is lost."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from services.monitoring import continuous
from shared import subjects
from shared.errors import UpstreamTimeout
from shared.messages.registry import ModelUploaded, ModelVersionFinished
from shared.messages.tasks import TaskRunEvent
from tests.integration.continuous_setups import DEPLOYMENT, schema_fixture
from tests.integration.test_continuous_swap_once import process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_model_before_run")


@pytest.mark.parametrize("converted", [False, True], ids=["ready", "converted meanwhile"])
async def test_a_model_uploaded_before_the_run_was_recorded_is_the_trainings_output(monitoring_schema, monkeypatch,
                                                                                   converted):
    """`converted`: the upload converts, and its conversion ends while the run is still not recorded (its
    events.model.version_finished found no training `running` or `succeeded`: the training then waited for a
    conversion already over, open for good, and no other training of the deployment could open)."""
    pool = monitoring_schema
    await pool.execute(
        "INSERT INTO continuous_training (deployment_id, workspace_id, deployment, owner_id, project_id,"
        " orchestration_id, trigger, threshold, experiment_parameters, model_name) VALUES ($1, 1, 'd-42', $2, 1, $3,"
        " 'FEEDBACK_LOOP', 1, '{}', 'digits')", DEPLOYMENT, uuid.uuid4(), uuid.uuid4())
    training_id = uuid.uuid4()
    await pool.execute("INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews) VALUES ($1, $2, 1,"
                       " 'starting', 1)", training_id, DEPLOYMENT)
    deps = process(pool)

    async def act_as(deps, owner_id, workspace_id, purpose):
        return SimpleNamespace(user_id=str(owner_id)), "token"

    async def request(broker, subject, cmd, **kwargs):
        if subject == subjects.DEPLOYER_DEPLOYMENTS_RESOLVE:
            return SimpleNamespace(name=cmd.name)
        assert subject == subjects.TASKS_RUN_ONCE and cmd.id is not None
        raise UpstreamTimeout("task_scheduler did not answer within 5s")  # the task made, its answer lost

    monkeypatch.setattr(continuous, "act_as", act_as)
    monkeypatch.setattr(continuous, "request", request)
    assert await continuous.start_training(deps, training_id)
    row = await pool.fetchrow("SELECT state, task_id, run_task_id FROM trainings WHERE id = $1", training_id)
    assert (row["state"], row["task_id"]) == ("starting", None), dict(row)
    task_id = row["run_task_id"]

    # the run registers its model version (its token names its task) before anything recorded the run
    version = uuid.uuid4()
    await continuous.on_model_uploaded(deps, ModelUploaded(
        workspace_id=1, model_id=3, model_version=version, name="digits", framework="onnx",
        status="converting" if converted else "ready", sha256="c" * 64, task_id=str(task_id)))
    if converted:
        await continuous.on_model_finished(deps, ModelVersionFinished(workspace_id=1, model_id=3,
                                                                      model_version=version, status="ready"))
    assert await pool.fetchval("SELECT model_version->>'version' FROM trainings WHERE id = $1",
                               training_id) == str(version)
    # the run's end, found by the task's name (run_once's answer never came)
    await continuous.on_run_ended(deps, TaskRunEvent(
        run_id=uuid.uuid4(), task_id=task_id, name=f"continuous training of d-42 ({training_id})",
        orch_id=uuid.uuid4(), orch_sha="0" * 64, workspace_id=1, owner_id="someone", status="success"),
        succeeded=True)

    row = await pool.fetchrow("SELECT state, outcome, task_id, model_version, reason FROM trainings WHERE id = $1",
                              training_id)
    assert (row["state"], row["outcome"], row["task_id"]) == ("done", "pending", task_id), dict(row)
    assert continuous._json(row["model_version"])["version"] == str(version)
    # nothing left for the starter to fail for want of a model version
    await continuous.TrainingStarter(deps).sweep()
    assert await pool.fetchval("SELECT state FROM trainings WHERE id = $1", training_id) == "done"


async def test_an_upload_of_another_workspace_naming_the_chosen_task_id_is_not_the_output(monitoring_schema):
    """The match by the chosen task id keeps the workspace check of the match by the recorded one."""
    pool = monitoring_schema
    task_id = uuid.uuid4()
    training_id = uuid.uuid4()
    await pool.execute("INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, run_task_id,"
                       " run_claimed_at) VALUES ($1, $2, 1, 'starting', 1, $3, now())", training_id, DEPLOYMENT,
                       task_id)
    deps = process(pool)
    await continuous.on_model_uploaded(deps, ModelUploaded(
        workspace_id=2, model_id=3, model_version=uuid.uuid4(), name="digits", framework="onnx", status="ready",
        task_id=str(task_id)))
    assert await pool.fetchval("SELECT model_version FROM trainings WHERE id = $1", training_id) is None
