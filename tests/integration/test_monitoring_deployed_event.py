"""A continuous-deployment deploy that lands after monitoring stopped waiting for it is recorded from the deployer's
`events.pipeline.deployed` (services/monitoring/continuous.py on_pipeline_deployed, migration 024 sent_deploys;
docs/monitoring.md). Before, only the resumes (STALE_SWAP apart) and the one more look after the give-up saw a late
deploy: one landing after that look stayed failed for good while its version served.

The first tests run the service's functions on a monitoring schema of this test's, the deployer stood in
(test_monitoring_swap_race's Deployer, with its deploy precondition): the deploy's pipeline version is written
before its command, and its event records it once, whenever it comes. The last one goes through the real stack:
the running monitoring service's durable consumer (its bus permissions, the event's decoding, redelivered copies)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid

import asyncpg
import nats as nats_client
import pytest

from services.monitoring import continuous
from shared import subjects
from shared.messages.deployer import PipelineDeployed
from tests.integration.bus_events import stream_events
from tests.integration.continuous_setups import (
    CHALLENGER,
    CHAMPION,
    DEPLOYMENT,
    NEWEST,
    Deployer,
    consumer_caught_up,
    continuous_deployment,
    done,
    make_stale,
    promotion_unanswered,
    schema_fixture,
    stand_in_deployer,
    swapped_events,
)
from tests.integration.test_continuous_drift import second_monitoring

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_deployed_event")


def deployed(version: str, workspace_id: int = 1, deployment_id: int = DEPLOYMENT) -> PipelineDeployed:
    """The deployer's event for a deploy of the stand-in's pipeline version `version` (its pk id, as text)."""
    return PipelineDeployed(deployment_id=deployment_id, name=f"d-{deployment_id}", pipeline_id=5,
                            workspace_id=workspace_id, pipeline_version=version)


@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
@pytest.mark.parametrize("stage", ["unanswered", "after_the_one_more_look"])
async def test_a_delivery_s_deploy_landing_late_is_recorded_from_its_event(monitoring_schema, monkeypatch, policy,
                                                                           stage):
    """A delivery (v3) whose deploy goes unanswered: its pipeline version is written before the command. Its event
    comes while it is still claimed (before the resume), or only after the resumes gave up and the one more look
    found nothing serving. Events naming versions monitoring did not send, or of another workspace, change nothing;
    the delivery's records it delivered (DEPLOY_AUTO: the old challenge superseded; DEPLOY_SHADOW: its challenge
    opened), told once: the same event again, or handled by a second process, records nothing more, and the resume
    after it deploys nothing. Before, the unanswered case waited for the resume; the late case stayed failed."""
    pool = monitoring_schema
    await continuous_deployment(pool, policy)
    older, training_id, challenge_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await done(pool, older, CHALLENGER, "shadow", 600, False)
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha,"
        " min_sample, state) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'running')", challenge_id, DEPLOYMENT, older,
        json.dumps(CHAMPION), json.dumps(CHALLENGER))
    await done(pool, training_id, NEWEST, "deployed" if policy == "DEPLOY_AUTO" else "shadow", 100, True)
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    tries = 1 if stage == "unanswered" else continuous.MAX_RESUMES + 1
    for _ in range(tries):
        await make_stale(pool, "trainings", "delivering_since", training_id)
        await continuous.resume_deliveries(deps)
    if stage != "unanswered":  # given up, then looked at once more: still not serving
        await make_stale(pool, "trainings", "updated_at", training_id)
        await continuous.resume_deliveries(deps)
        row = await pool.fetchrow("SELECT outcome, delivery_resumes FROM trainings WHERE id = $1", training_id)
        assert row["outcome"] == "failed" and row["delivery_resumes"] == continuous.MAX_RESUMES + 2, dict(row)
    else:
        assert (await pool.fetchval("SELECT delivering_since FROM trainings WHERE id = $1", training_id)) is not None
    sent = [r["pipeline_version"] for r in await pool.fetch(
        "SELECT pipeline_version FROM sent_deploys WHERE training_id = $1", training_id)]
    assert sent == ["2"]  # the stand-in's pipeline version 2: v3 (shadowing v1 under DEPLOY_SHADOW)
    deploys = list(deployer.deploys)

    assert await continuous.on_pipeline_deployed(deps, deployed("1")) == 0  # a version monitoring did not send
    assert await continuous.on_pipeline_deployed(deps, deployed("2", workspace_id=2)) == 0  # another workspace's
    assert await continuous.on_pipeline_deployed(deps, deployed("2", deployment_id=DEPLOYMENT + 1)) == 0
    assert await swapped_events(pool) == []
    deployer.serving = 2  # the deploy lands
    assert await continuous.on_pipeline_deployed(deps, deployed("2")) == 1
    assert await continuous.on_pipeline_deployed(deps, deployed("2")) == 0  # redelivered
    assert await continuous.on_pipeline_deployed(Deployer.process(pool), deployed("2")) == 0  # a second process

    auto = policy == "DEPLOY_AUTO"
    row = await pool.fetchrow("SELECT outcome, reason, delivered_at, delivering_since FROM trainings WHERE id = $1",
                              training_id)
    assert (row["outcome"], row["reason"]) == ("deployed" if auto else "shadow", None), dict(row)
    assert row["delivered_at"] is not None and row["delivering_since"] is None
    assert (await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id)) == "superseded"
    opened = await pool.fetch("SELECT champion, challenger FROM challenges WHERE training_id = $1 AND state ="
                              " 'running'", training_id)
    assert [(json.loads(r["champion"])["version"], json.loads(r["challenger"])["version"]) for r in opened] == (
        [] if auto else [("v1", "v3")])  # the champion the delivery looked at, shadowed by the new version
    events = await swapped_events(pool)
    assert [(e["action"], e["pipeline_version"]) for e in events] == [("deployed" if auto else "shadow_set", "2")]

    for _ in range(2):  # the resume and the look after it find nothing to do: nothing deployed, nothing told
        await make_stale(pool, "trainings", "delivering_since", training_id)
        await make_stale(pool, "trainings", "updated_at", training_id)
        await continuous.resume_deliveries(deps)
    assert deployer.deploys == deploys
    assert len(await swapped_events(pool)) == 1


@pytest.mark.parametrize("stage", ["unanswered", "after_the_one_more_look"])
async def test_a_swap_s_deploy_landing_late_is_recorded_from_its_event(monitoring_schema, monkeypatch, stage):
    """A promotion's swap (v2 alone) whose deploy goes unanswered: its event, while the challenge is still decided or
    after its give-up and the one more look, records it promoted, told once (the same event again, a second
    process: nothing more); the resume after it deploys nothing. A version monitoring did not send changes nothing.
    Before, a swap's deploy landing after the one more look left the challenge failed while v2 served alone."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    challenge_id = await promotion_unanswered(pool, deps)
    if stage != "unanswered":
        for _ in range(continuous.MAX_RESUMES + 2):  # the resumes, the give-up, then the one more look
            await make_stale(pool, "challenges", "decided_at", challenge_id)
            await continuous.resume_swaps(deps)
        row = await pool.fetchrow("SELECT state, swap_resumes FROM challenges WHERE id = $1", challenge_id)
        assert (row["state"], row["swap_resumes"]) == ("failed", continuous.MAX_RESUMES + 2), dict(row)
    else:
        assert (await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id)) == "promoting"
    assert [r["pipeline_version"] for r in await pool.fetch(
        "SELECT pipeline_version FROM sent_deploys WHERE challenge_id = $1", challenge_id)] == ["2"]
    deploys = list(deployer.deploys)

    assert await continuous.on_pipeline_deployed(deps, deployed("1")) == 0
    deployer.serving = 2  # the swap's deploy (v2 alone) lands
    assert await continuous.on_pipeline_deployed(deps, deployed("2")) == 1
    assert await continuous.on_pipeline_deployed(deps, deployed("2")) == 0
    assert await continuous.on_pipeline_deployed(Deployer.process(pool), deployed("2")) == 0

    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert row["state"] == "promoted" and row["reason"].startswith("promote:"), dict(row)
    assert [(e["action"], e["pipeline_version"]) for e in await swapped_events(pool)] == [("promoted", "2")]
    await make_stale(pool, "challenges", "decided_at", challenge_id)
    await continuous.resume_swaps(deps)
    assert deployer.deploys == deploys and len(await swapped_events(pool)) == 1


async def test_the_running_service_records_a_given_up_delivery_from_the_deployer_s_event(stack, tmp_path):
    """On the real stack: a DEPLOY_AUTO delivery failed by its give-up (and its one more look), the pipeline version
    its last deploy carried in sent_deploys, as the service leaves them, in the service's own schema. The deployer's
    events.pipeline.deployed naming that version, put on EVENTS eight times at once (no Nats-Msg-Id: copies the
    consumer is handed as redeliveries) while a second monitoring process shares the durable consumer, and one naming
    a version monitoring did not send: the delivery is recorded deployed once, its model_swapped published once."""
    deployment_id = random.randint(10**8, 2 * 10**8)  # a deployment of this test's alone
    workspace_id = random.randint(10**8, 2 * 10**8)
    training_id, version = uuid.uuid4(), str(uuid.uuid4())
    give_up = f"DEPLOY_AUTO failed: its delivery did not finish after {continuous.MAX_RESUMES + 1} tries: given up"
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await conn.execute(
            "INSERT INTO monitoring.continuous_deployment (deployment_id, workspace_id, deployment, owner_id, policy,"
            " alpha, min_sample) VALUES ($1, $2, $3, $4, 'DEPLOY_AUTO', 0.05, 10)", deployment_id, workspace_id,
            f"landed-{deployment_id}", uuid.uuid4())
        await conn.execute(
            "INSERT INTO monitoring.trainings (id, deployment_id, workspace_id, state, outcome, reason, reviews,"
            " task_id, model_version, model_status, delivery_resumes) VALUES ($1, $2, $3, 'done', 'failed', $4, 1, $5,"
            " $6, 'ready', $7)", training_id, deployment_id, workspace_id, give_up, uuid.uuid4(),
            json.dumps(NEWEST), continuous.MAX_RESUMES + 2)
        await conn.execute("INSERT INTO monitoring.sent_deploys (pipeline_version, deployment_id, training_id) VALUES"
                           " ($1, $2, $3)", version, deployment_id, training_id)

        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            js = nc.jetstream()

            async def send(event: PipelineDeployed) -> int:
                ack = await js.publish(subjects.EVENT_PIPELINE_DEPLOYED, event.model_dump_json().encode(),
                                       stream=subjects.EVENTS_STREAM)
                return ack.seq

            with second_monitoring(stack, tmp_path):  # both processes pull from the durable
                sequences = [await send(deployed(str(uuid.uuid4()), workspace_id, deployment_id))]  # not monitoring's
                sequences += await asyncio.gather(*(send(deployed(version, workspace_id, deployment_id))
                                                    for _ in range(8)))
                await consumer_caught_up(stack, continuous.DEPLOYED_DURABLE, max(sequences), 30.0, "event")
        finally:
            await nc.close()

        row = await conn.fetchrow("SELECT outcome, reason, delivered_at FROM monitoring.trainings WHERE id = $1",
                                  training_id)
        assert (row["outcome"], row["reason"]) == ("deployed", None) and row["delivered_at"] is not None, dict(row)
        deadline = time.monotonic() + 20
        while await conn.fetchval("SELECT count(*) FROM monitoring.outbox WHERE subject = $1 AND payload::jsonb"
                                  " ->> 'deployment_id' = $2", subjects.EVENT_MONITORING_MODEL_SWAPPED,
                                  str(deployment_id)):
            assert time.monotonic() < deadline, "monitoring's outbox never sent the model_swapped"
            await asyncio.sleep(0.1)
        events = await stream_events(stack, subjects.EVENT_MONITORING_MODEL_SWAPPED, "deployment_id", {deployment_id})
        assert [(e["action"], e["pipeline_version"]) for e in events] == [("deployed", version)]
    finally:
        await conn.execute("DELETE FROM monitoring.trainings WHERE deployment_id = $1", deployment_id)
        await conn.execute("DELETE FROM monitoring.continuous_deployment WHERE deployment_id = $1", deployment_id)
        await conn.close()


@pytest.mark.parametrize("newer", ["under_way", "recorded"])
async def test_a_given_up_delivery_s_event_during_a_newer_delivery_is_recorded_unless_that_one_was(monitoring_schema,
                                                                                                  newer):
    """Training 1's delivery (version '7') was given up; its deploy lands after all, and its event comes while
    training 2, newer, is being delivered (claimed, its deploy under way, nothing recorded yet): training 1's version
    served, so it is recorded delivered now (training 2, when its own deploy lands, is recorded after it; refused,
    version '7' is what serves and training 1's record says so). Before, any newer training being delivered
    counted as overtaking it, the event was acknowledged unused, and training 1 stayed failed while its version
    served, for good if training 2's delivery then did not land. A newer training already recorded delivered
    overtook it: left failed, nothing told."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    given_up, later = uuid.uuid4(), uuid.uuid4()
    await done(pool, given_up, NEWEST, "deployed", 600, False)
    await pool.execute("UPDATE trainings SET outcome = 'failed', delivered_at = NULL, reason = 'DEPLOY_AUTO failed:"
                       " its delivery did not finish after 4 tries' WHERE id = $1", given_up)
    await pool.execute("INSERT INTO sent_deploys (pipeline_version, deployment_id, training_id) VALUES ('7', $1, $2)",
                       DEPLOYMENT, given_up)
    await done(pool, later, {**NEWEST, "version": "v4"}, "deployed", 100, newer == "under_way")
    deps = Deployer.process(pool)

    recorded = await continuous.on_pipeline_deployed(deps, deployed("7"))
    row = await pool.fetchrow("SELECT outcome, delivered_at FROM trainings WHERE id = $1", given_up)
    events = [(e["action"], e["pipeline_version"]) for e in await swapped_events(pool)]
    if newer == "under_way":
        assert (recorded, row["outcome"], row["delivered_at"] is not None) == (1, "deployed", True), dict(row)
        assert events == [("deployed", "7")]
    else:
        assert (recorded, row["outcome"], row["delivered_at"]) == (0, "failed", None), dict(row)
        assert events == []
