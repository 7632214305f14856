"""A deploy whose replicas serve (it answers 200) but whose events.pipeline.deployed the database refuses every time,
then a deployer restart whose restore fails: the undeploy writes the owed deployed event, then undeployed. The row
says its replicas served (`served`, migration 007, written when the event's write failed: store.mark_served). Before,
nothing served at the undeploy, so it wrote no deployed event (334ec66's rule for a deployment that never served)
and no undeployed either (lineage never told): a deployment that served and answered was never heard of.

On the real stack: a deferred constraint trigger the test adds on the deployer's outbox refuses, at COMMIT, every
transaction writing this pipeline's deployed event until the test drops it. After the deploy's answer the test breaks
the row's spec (the restore's start fails on it) and kills the deployer (SIGKILL); the supervisor starts another,
whose restore fails (status Error); the trigger goes, and the deployment is undeployed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import asyncpg
import httpx
import pytest

from shared import subjects
from tests.integration.bus_events import stream_events
from tests.integration.conftest import post
from tests.integration.test_deploy_restore_event import pipeline_of_one_model
from tests.integration.test_registry_events import running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_deploy_that_served_without_its_event_gets_it_at_the_undeploy_after_a_failed_restore(stack, alice):
    name = f"servedowed{os.getpid() % 10000}"
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
        CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog AS $$
        BEGIN
            IF NEW.subject = '{subjects.EVENT_PIPELINE_DEPLOYED}'
               AND (NEW.payload ->> 'pipeline_id')::bigint = {int(pipeline_id)} THEN
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
        deployment = f"{name}-{deployment_id}"
        assert post(stack, "status/get_deployment", alice.token, {"name": deployment}).json()["status"] == "Running"
        time.sleep(1.0)  # a background write or two, refused as well
        first = stack.state()["components"]["deployer"]["pid"]
        asyncio.run(sql("UPDATE deployer.deployments SET spec = '{}' WHERE id = $1", deployment_id))
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while running(first):
            assert time.monotonic() < deadline, "the deployer did not die"
            time.sleep(0.05)
        assert asyncio.run(sql("SELECT deployed_pending FROM deployer.deployments WHERE id = $1", deployment_id))
        deadline = time.monotonic() + 120  # the supervisor starts another deployer; its restore fails on the spec
        while (status := post(stack, "status/get_deployment", alice.token, {"name": deployment})).status_code != 200 \
                or status.json()["status"] != "Error":
            assert time.monotonic() < deadline, status.text
            time.sleep(0.3)
        assert "failed to restore" in status.json()["details"][0], status.text
    finally:
        asyncio.run(sql(f"DROP SCHEMA {schema} CASCADE", script=True))
    undeployed = post(stack, "pipelines/undeploy", alice.token,
                      {"pipeline_id": pipeline_id, "deployment_id": deployment_id})
    assert undeployed.status_code == 200, undeployed.text
    deadline = time.monotonic() + 30
    while (events := [(e["_subject"], e.get("deployment_id")) for e in asyncio.run(stream_events(
            stack, "events.pipeline.>", "pipeline_id", {pipeline_id}))])[-1:] != [
            (subjects.EVENT_PIPELINE_UNDEPLOYED, deployment_id)]:
        assert time.monotonic() < deadline, events
        time.sleep(0.3)
    assert events == [(subjects.EVENT_PIPELINE_VERSION_CREATED, None),
                      (subjects.EVENT_PIPELINE_DEPLOYED, deployment_id),
                      (subjects.EVENT_PIPELINE_UNDEPLOYED, deployment_id)]
    assert asyncio.run(sql("SELECT deployed_pending OR served OR active FROM deployer.deployments WHERE id = $1",
                           deployment_id)) is False
