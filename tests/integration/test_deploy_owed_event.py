"""A deploy whose replicas serve but whose commit of events.pipeline.deployed fails: the deployer writes the owed
event again in the background (services/deployer/handlers.py OwedDeployed) and the deploy answers, since the
deployment serves. Before, the deploy answered the database's error and the event waited for the next restart of
the deployer or a redeploy (lineage and auth never told it was deployed meanwhile).

On the real stack: a deferred constraint trigger the test adds on the deployer's outbox refuses, at COMMIT, the
transactions writing this pipeline's deployed event, the first REFUSED times (counted by a sequence, which a refused
transaction does not roll back): the deploy's own commit and the first background write. Then exactly one deployed
event reaches the stream, and the undeploy's undeployed after it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import httpx
import pytest

from shared import subjects
from tests.integration.bus_events import stream_events
from tests.integration.conftest import post
from tests.integration.test_deploy_restore_event import pipeline_of_one_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REFUSED = 2


async def pipeline_events(stack, pipeline_id: int) -> list[dict]:
    return await stream_events(stack, "events.pipeline.>", "pipeline_id", {pipeline_id})


def test_a_deployed_event_whose_commit_fails_is_written_in_the_background_once(stack, alice):
    name = f"oweddeploy{os.getpid() % 10000}"
    version = pipeline_of_one_model(stack, alice, name)
    pipeline_id = version["pipeline_pk_id"]
    schema = f"refuse_{uuid.uuid4().hex[:8]}"

    async def sql(query: str, *args, script: bool = False):
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            return await (conn.execute(query) if script else conn.fetchval(query, *args))
        finally:
            await conn.close()

    asyncio.run(sql(f"""
        CREATE SCHEMA {schema};
        CREATE SEQUENCE {schema}.attempts;
        CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog AS $$
        BEGIN
            IF NEW.subject = '{subjects.EVENT_PIPELINE_DEPLOYED}'
               AND (NEW.payload ->> 'pipeline_id')::bigint = {int(pipeline_id)}
               AND nextval('{schema}.attempts') <= {REFUSED} THEN
                RAISE EXCEPTION 'commit refused by the test';
            END IF;
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER {schema}_refuse AFTER INSERT ON deployer.outbox
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {schema}.refuse();""", script=True))
    try:
        deployed = httpx.post(f"{stack.api}/pipelines/deploy", timeout=300, json={
            "deploy_id": name, "pipeline_id": pipeline_id, "pipeline_version_pk_id": version["pipeline_variant_pk_id"]},
            headers={"Authorization": f"Bearer {alice.token}"})
        assert deployed.status_code == 200, deployed.text  # the deployment serves: the deploy happened
        deployment_id = deployed.json()["id"]
        deadline = time.monotonic() + 60  # the background writes: 0.5 s (refused), then 1 s later
        while not [e for e in asyncio.run(pipeline_events(stack, pipeline_id))
                   if e["_subject"] == subjects.EVENT_PIPELINE_DEPLOYED]:
            assert time.monotonic() < deadline, "the owed deployed event never reached the stream: " + (
                stack.data_dir / "logs" / "deployer.log").read_text()[-3000:]
            time.sleep(0.2)
        assert asyncio.run(sql(f"SELECT last_value FROM {schema}.attempts")) == REFUSED + 1
        assert asyncio.run(sql("SELECT deployed_pending FROM deployer.deployments WHERE id = $1",
                               deployment_id)) is False
        status = post(stack, "status/get_deployment", alice.token, {"name": f"{name}-{deployment_id}"})
        assert status.status_code == 200 and status.json()["status"] == "Running", status.text
        undeployed = post(stack, "pipelines/undeploy", alice.token,
                          {"pipeline_id": pipeline_id, "deployment_id": deployment_id})
        assert undeployed.status_code == 200, undeployed.text
        deadline = time.monotonic() + 30
        while (events := [(e["_subject"], e["deployment_id"]) for e in asyncio.run(pipeline_events(
                stack, pipeline_id)) if e["_subject"] != subjects.EVENT_PIPELINE_VERSION_CREATED])[-1:] != [
                (subjects.EVENT_PIPELINE_UNDEPLOYED, deployment_id)]:
            assert time.monotonic() < deadline, events
            time.sleep(0.2)
        assert events == [(subjects.EVENT_PIPELINE_DEPLOYED, deployment_id),
                          (subjects.EVENT_PIPELINE_UNDEPLOYED, deployment_id)]
    finally:
        asyncio.run(sql(f"DROP SCHEMA {schema} CASCADE", script=True))
