"""At each start the deployer names every deployment it serves (events.pipeline.serving, through its outbox) before
its restore starts the replicas again: the log store takes a deployment's log batches only once it knows whose the
deployment is, and the events.pipeline.deployed that told it may be older than EVENTS' retention (an upgrade, a log
store started on an empty table). Only active deployments whose deployed event was written (`announced`) are named:
one still owing its deployed event gets that when its replicas serve (the restore), an inactive one none.

Runs the deployer's handlers in the test's process on a schema of the test's own (the backend a stand-in that already
runs every deployment, so the restore starts nothing)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.deployer import handlers, store
from shared import subjects
from shared.messages.deployer import PipelineServing
from tests.integration.conftest import service_schema
from tests.integration.test_deployer_list_queries import WORKSPACE, make_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_starting_deployer_names_the_deployments_it_serves_in_its_outbox(stack):
    async with service_schema(stack, "deployerserving", Path("services/deployer/migrations")) as pool:
        for name, active in (("serving", True), ("owing", True), ("undeployed", False)):
            await make_pipeline(pool, name, 2, deployed=2, active=active)
        # "serving" had its deployed event written; "owing" still owes it (its deployer died while it loaded)
        await pool.execute("UPDATE deployments SET deployed_pending = false, announced = true, served = true"
                           " WHERE deploy_id = 'serving'")
        await pool.execute("DELETE FROM outbox")  # the versions' events
        rows = {row["deploy_id"]: row for row in await pool.fetch(
            "SELECT d.id, d.deploy_id, d.pipeline_id, v.version FROM deployments d"
            " JOIN pipeline_versions v ON v.id = d.pipeline_version_id")}
        woken = []
        backend = SimpleNamespace(sets={f"{r['deploy_id']}-{r['id']}" for r in rows.values()})
        deps = SimpleNamespace(pool=pool, backend=backend, failed_restores={}, events_committed=lambda: woken.append(1),
                               pipeline_lock=lambda pipeline_id: asyncio.Lock())
        restore = await handlers.restore_deployments(deps)  # type: ignore[arg-type]
        await restore.stop()
        outbox = await pool.fetch("SELECT subject, payload FROM outbox ORDER BY id")
        assert [r["subject"] for r in outbox] == [subjects.EVENT_PIPELINE_SERVING], outbox
        serving = rows["serving"]
        # what the outbox sends (store.EVENT_TYPES decodes it) names the deployment, its workspace and version
        event = store.EVENT_TYPES[outbox[0]["subject"]].model_validate(json.loads(outbox[0]["payload"]))
        assert isinstance(event, PipelineServing)
        assert (event.deployment_id, event.name, event.pipeline_id, event.workspace_id, event.pipeline_version,
                event.pipeline_name) == (serving["id"], f"serving-{serving['id']}", serving["pipeline_id"], WORKSPACE,
                                         str(serving["version"]), "serving")
        assert woken  # the outbox is told to send it now


async def test_a_deployer_restarted_in_a_loop_names_a_deployment_once_an_hour(stack):
    """Each start named every active deployment: a deployer restarted in a loop (a crash soon after its start,
    restarted within seconds) wrote one event per deployment per start into EVENTS, whose size limit (`discard: new`)
    then refuses every service's events, and as many rows into lineage's event log. A start now names a deployment
    only when its last naming is NAMED_AGAIN_AFTER old (`named_at`, migration 008). On the old code the second start
    wrote a second serving event."""
    async with service_schema(stack, "deployernamedat", Path("services/deployer/migrations")) as pool:
        await make_pipeline(pool, "looping", 2, deployed=2, active=True)
        await pool.execute("UPDATE deployments SET deployed_pending = false, announced = true, served = true")
        await pool.execute("DELETE FROM outbox")
        name = await pool.fetchval("SELECT deploy_id || '-' || id FROM deployments")
        backend = SimpleNamespace(sets={name})
        deps = SimpleNamespace(pool=pool, backend=backend, failed_restores={}, events_committed=lambda: None,
                               pipeline_lock=lambda pipeline_id: asyncio.Lock())

        async def start() -> list[str]:  # a start of the deployer; the serving events its outbox holds since
            await (await handlers.restore_deployments(deps)).stop()  # type: ignore[arg-type]
            return [json.loads(r["payload"])["name"] for r in await pool.fetch(
                "SELECT payload FROM outbox WHERE subject = $1 ORDER BY id", subjects.EVENT_PIPELINE_SERVING)]

        assert await start() == [name]
        for _ in range(3):  # restarted again and again within the hour
            assert await start() == [name]
        # an hour later, named again
        await pool.execute("UPDATE deployments SET named_at = named_at - make_interval(secs => $1)",
                           handlers.NAMED_AGAIN_AFTER)
        assert await start() == [name, name]
