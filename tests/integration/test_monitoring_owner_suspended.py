"""Continuous deployment and the feedback loop are suspended, as continuous training is (migration 017), when auth
refuses the token of the user they act as (the owner left the workspace or was deactivated): turned off with a
reason the deployment's answers show (continuous settings' `deployment.suspended_reason`, check_feedback_loop_status'
`suspended_reason`), logged once, the other deployments' loops going on; set up again or turned on again, the
suspension is lifted (migration 020; services/monitoring/continuous.py, feedback.py).

Runs the service's functions on a monitoring schema of this test's (its migrations) on the stack's PostgreSQL, auth,
the deployer, the registry and lineage replaced by stand-ins the test drives."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.monitoring import continuous, feedback, sequential
from shared import subjects
from shared.errors import NotFound
from shared.messages.monitoring_continuous import ToggleContinuous
from shared.messages.monitoring_feedback import ToggleFeedbackLoop
from tests.integration.conftest import service_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MONITORING_MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "monitoring" / "migrations"
DEPLOYMENT = 42
REFUSAL = "the task's owner is no longer a member of workspace 1"


@pytest.fixture
async def monitoring_schema(stack):
    async with service_schema(stack, "monitoring_owner", MONITORING_MIGRATIONS) as pool:
        yield pool


async def succeeded(pool, version: str) -> uuid.UUID:
    """A training of DEPLOYMENT whose run succeeded with model version `version`, ready (advance delivers it)."""
    training_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, reviews, task_id, model_version, model_status)"
        " VALUES ($1, $2, 1, 'succeeded', 1, $3, $4, 'ready')", training_id, DEPLOYMENT, uuid.uuid4(),
        json.dumps({"name": "digits", "version": version, "sha": version}))
    return training_id


async def test_a_deployment_whose_owner_left_suspends_continuous_deployment_once(monitoring_schema, monkeypatch,
                                                                                  caplog):
    """DEPLOY_AUTO continuous deployment whose owner has left the workspace: auth refuses the owner's token. Before,
    every new model version's delivery failed the same way, and the policy stayed on. Now the first delivery fails and
    suspends continuous deployment (inactive, with the reason shown under `deployment`, logged once): the next
    version waits for a person (pending, as under DEPLOY_MANUAL) and nothing is asked as anyone. Turning it on again
    lifts the suspension."""
    pool = monitoring_schema
    owner = uuid.uuid4()
    await pool.execute("INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id, policy,"
                       " alpha, min_sample) VALUES ($1, 1, 'd-42', $2, 'DEPLOY_AUTO', 0.05, 10)", DEPLOYMENT, owner)
    deps = continuous.ContinuousDeps(base=SimpleNamespace(pool=pool, broker=None, timeout=5.0), verify=None,
                                     events_committed=lambda: None, max_task_timeout=3600)
    asked: list[str] = []

    async def request(broker, subject, cmd, **kwargs):
        asked.append(subject)
        assert subject == subjects.AUTH_TOKEN_ISSUE_TASK, subject  # nothing is asked as anyone else
        assert cmd.user_id == str(owner)
        raise NotFound(REFUSAL)

    monkeypatch.setattr(continuous, "request", request)
    caplog.set_level(logging.WARNING, logger="railyard.monitoring.continuous")
    first = await succeeded(pool, "v2")
    await continuous.advance(deps, DEPLOYMENT, first)
    second = await succeeded(pool, "v3")
    await continuous.advance(deps, DEPLOYMENT, second)

    assert asked == [subjects.AUTH_TOKEN_ISSUE_TASK]
    rows = {r["id"]: r for r in await pool.fetch("SELECT id, outcome, reason FROM trainings")}
    assert rows[first]["outcome"] == "failed" and REFUSAL in rows[first]["reason"]
    assert rows[second]["outcome"] == "pending", dict(rows[second])
    info = await continuous.information(pool, DEPLOYMENT)
    assert info.deployment.active is False
    assert "owner's token was refused" in info.deployment.suspended_reason
    assert REFUSAL in info.deployment.suspended_reason
    assert info.pending_model_version.version == "v3"
    assert len([r for r in caplog.records if "continuous deployment of deployment" in r.getMessage()
                and "suspended" in r.getMessage()]) == 1

    async def deployment(base, principal, token, name):
        return SimpleNamespace(route=SimpleNamespace(deployment_id=DEPLOYMENT))

    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    info = await continuous.toggle_deployment(deps, None, None, ToggleContinuous(deployment="d-42", active=True))
    assert info.deployment.active is True and info.deployment.suspended_reason is None


class Objects:
    async def get_bytes(self, bucket, key):
        return b"png"

    async def put_bytes(self, bucket, key, data, content_type=None):
        return None


async def test_a_feedback_loop_whose_owner_left_is_suspended_once_and_the_others_go_on(monitoring_schema,
                                                                                       monkeypatch, caplog):
    """Two feedback loops with a review to write each (the first with two datasets); auth refuses the first loop's
    owner. Before, every export round of each of its datasets asked auth again and logged the failure (backing off,
    for ever). Now the loop is suspended at once (inactive, suspended_reason in its status, logged once), later
    sweeps leave it out, the other loop writes its review and makes its version; turned on again, it is lifted."""
    pool = monitoring_schema
    refused, member = uuid.uuid4(), uuid.uuid4()
    loops = {1: (refused, (11, 12)), 2: (member, (21,))}
    for deployment_id, (owner, datasets) in loops.items():
        await pool.execute("INSERT INTO feedback_loops (deployment_id, workspace_id, owner_id) VALUES ($1, 1, $2)",
                           deployment_id, owner)
        prediction = uuid.uuid4()
        await pool.execute(
            "INSERT INTO predictions (id, deployment_id, workspace_id, origin, kind, prediction, height, width,"
            " content_type, image_sha256, features, predicted_at) VALUES ($1, $2, 1, 'monitor', 'classification',"
            " $3, 8, 8, 'image/png', 'ab', '{}', now())", prediction, deployment_id,
            json.dumps({"detection_classes": [0]}))
        await pool.execute("INSERT INTO reviews (id, prediction_id, deployment_id, workspace_id, decision,"
                           " ground_truth) VALUES ($1, $2, $3, 1, 'accepted', $4)", uuid.uuid4(), prediction,
                           deployment_id, json.dumps({"detection_classes": [0]}))
        for dataset_id in datasets:
            await pool.execute("INSERT INTO feedback_loop_datasets (deployment_id, dataset_id, project_id,"
                               " dataset_name) VALUES ($1, $2, 7, 'images')", deployment_id, dataset_id)
    asked: list[str] = []
    written: list[int] = []

    async def request(broker, subject, cmd, **kwargs):
        if subject == subjects.AUTH_TOKEN_ISSUE_TASK:
            asked.append(cmd.user_id)
            if cmd.user_id == str(refused):
                raise NotFound(REFUSAL)
            return SimpleNamespace(access_token="token", expires_in=900)
        if subject == subjects.LINEAGE_DATASETS_ADD_FILE:
            written.append(cmd.dataset_id)
            return None
        assert subject == subjects.LINEAGE_VERSIONS_CREATE, subject
        return SimpleNamespace(id=5, number=1)

    monkeypatch.setattr(feedback, "request", request)
    caplog.set_level(logging.WARNING, logger=feedback.log.name)
    deps = feedback.FeedbackDeps(monitoring=SimpleNamespace(pool=pool, broker=None, timeout=5.0), objects=Objects())
    for _ in range(2):
        await feedback.Exporter(deps).sweep()  # a new exporter each time: no back-off hides a retry

    assert asked.count(str(refused)) == 1, asked
    assert written == [21]
    assert await pool.fetchval("SELECT last_version_id FROM feedback_loop_datasets WHERE dataset_id = 21") == 5
    row = await pool.fetchrow("SELECT active, suspended_reason FROM feedback_loops WHERE deployment_id = 1")
    assert row["active"] is False and REFUSAL in row["suspended_reason"], dict(row)
    assert await pool.fetchval("SELECT active FROM feedback_loops WHERE deployment_id = 2") is True
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "deployment 1" in m]) == 1, messages

    async def deployment(base, principal, token, name):
        return SimpleNamespace(route=SimpleNamespace(deployment_id=1, name="d-1"))

    monkeypatch.setattr(feedback.handlers, "_deployment", deployment)
    principal = SimpleNamespace(user_id=str(member), kind="user")
    monkeypatch.setattr(feedback, "require_user", lambda principal: None)
    status = await feedback._status(deps, await deployment(None, None, None, "d-1"))
    assert status.active is False and "owner's token was refused" in status.suspended_reason
    status = await feedback.toggle_feedback_loop(deps, principal, None,
                                                 ToggleFeedbackLoop(deployment="d-1", active=True))
    assert status.active is True and status.suspended_reason is None


async def test_a_swap_whose_owner_left_suspends_continuous_deployment(monitoring_schema, monkeypatch):
    """A challenge decided (promoting) whose swap acts as continuous deployment's owner, who has left the workspace:
    the swap fails (the challenge 'failed' with the reason, as before) and continuous deployment is suspended with
    the reason in the same transaction; before, it stayed on."""
    pool = monitoring_schema
    owner = uuid.uuid4()
    await pool.execute("INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id, policy,"
                       " alpha, min_sample) VALUES ($1, 1, 'd-42', $2, 'DEPLOY_SHADOW', 0.05, 10)", DEPLOYMENT, owner)
    evidence = sequential.Evidence(decision=sequential.Decision.PROMOTE, pairs=40, n11=10, n10=2, n01=20, n00=8,
                                   champion_accuracy=0.3, challenger_accuracy=0.75, log_evidence=4.0, threshold=3.0,
                                   p_lower=0.7, p_upper=0.95, alpha=0.05, min_sample=10)
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample, state,"
        " evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now())", challenge_id,
        DEPLOYMENT, json.dumps({"name": "digits", "version": "v1", "sha": "a"}),
        json.dumps({"name": "digits", "version": "v2", "sha": "b"}), json.dumps(evidence.as_dict()))

    async def request(broker, subject, cmd, **kwargs):
        assert subject == subjects.AUTH_TOKEN_ISSUE_TASK, subject
        raise NotFound(REFUSAL)

    monkeypatch.setattr(continuous, "request", request)
    deps = continuous.ContinuousDeps(base=SimpleNamespace(pool=pool, broker=None, timeout=5.0), verify=None,
                                     events_committed=lambda: None, max_task_timeout=3600)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(deps, challenge, "promoting", evidence)

    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert row["state"] == "failed" and REFUSAL in row["reason"], dict(row)
    info = await continuous.information(pool, DEPLOYMENT)
    assert info.deployment.active is False and REFUSAL in info.deployment.suspended_reason
