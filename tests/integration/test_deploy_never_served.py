"""A deployer that dies while a first deploy's replicas still load, and whose restore after the restart fails: the
deployment never served, and its undeploy tells nothing of it. The row was made active (owing its deployed event,
`deployed_pending`) before the replicas started; nothing tells that they ever served, so the undeploy writes no
events.pipeline.deployed, and no events.pipeline.undeployed either, as lineage was never told it was deployed (the
row's `announced`, migration 006). Before, the undeploy wrote the owed deployed event and then undeployed, for a
deployment that never served (services/deployer/store.py deactivate).

On the real stack: once the deploy's row is active (its replicas starting), the test breaks the row's spec (the
restore's start fails on it: the running deploy started from its own copy) and kills the deployer (SIGKILL); the
supervisor starts another, whose restore fails (status Error), then the deployment is undeployed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time

import asyncpg
import httpx
import pytest

from shared import subjects
from tests.integration.bus_events import stream_events
from tests.integration.conftest import post
from tests.integration.test_deploy_restore_event import pipeline_of_one_model
from tests.integration.test_registry_events import running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_deployment_whose_deployer_died_while_it_loaded_and_whose_restore_failed_is_undeployed_untold(stack, alice):
    name = f"neverserved{os.getpid() % 10000}"
    version = pipeline_of_one_model(stack, alice, name)
    pipeline_id = version["pipeline_pk_id"]

    def deploy() -> None:
        with contextlib.suppress(Exception):  # it never answers: the deployer dies
            httpx.post(f"{stack.api}/pipelines/deploy", timeout=120, json={
                "deploy_id": name, "pipeline_id": pipeline_id,
                "pipeline_version_pk_id": version["pipeline_variant_pk_id"]},
                headers={"Authorization": f"Bearer {alice.token}"})

    async def died_while_loading() -> int:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            first = stack.state()["components"]["deployer"]["pid"]
            threading.Thread(target=deploy, daemon=True).start()
            deadline = time.monotonic() + 60
            while (row := await conn.fetchrow("SELECT id, active, deployed_pending FROM deployer.deployments"
                                              " WHERE pipeline_id = $1", pipeline_id)) is None:
                assert time.monotonic() < deadline, "the deploy never activated its row"
                await asyncio.sleep(0.02)
            await conn.execute("UPDATE deployer.deployments SET spec = '{}' WHERE id = $1", row["id"])
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while running(first):
                assert time.monotonic() < deadline, "the deployer did not die"
                await asyncio.sleep(0.05)
            row = await conn.fetchrow("SELECT id, active, deployed_pending, announced FROM deployer.deployments"
                                      " WHERE id = $1", row["id"])
            # killed before its replicas served (their start takes seconds): its deployed event never written
            assert row["active"] and row["deployed_pending"] and not row["announced"], dict(row)
            deadline = time.monotonic() + 60
            while stack.state()["components"]["deployer"]["pid"] == first:  # the supervisor starts another
                assert time.monotonic() < deadline, "the supervisor did not start another deployer"
                await asyncio.sleep(0.1)
            return row["id"]
        finally:
            await conn.close()

    deployment_id = asyncio.run(died_while_loading())
    deployment = f"{name}-{deployment_id}"
    deadline = time.monotonic() + 120  # the restore fails on the spec
    while (status := post(stack, "status/get_deployment", alice.token, {"name": deployment})).status_code != 200 or \
            status.json()["status"] != "Error":
        assert time.monotonic() < deadline, status.text
        time.sleep(0.3)
    assert "failed to restore" in status.json()["details"][0], status.text
    undeployed = post(stack, "pipelines/undeploy", alice.token,
                      {"pipeline_id": pipeline_id, "deployment_id": deployment_id})
    assert undeployed.status_code == 200, undeployed.text

    async def outbox_rows() -> int:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            return await conn.fetchval("SELECT count(*) FROM deployer.outbox")
        finally:
            await conn.close()

    deadline = time.monotonic() + 30  # whatever the undeploy wrote is sent
    while asyncio.run(outbox_rows()):
        assert time.monotonic() < deadline, "the deployer's outbox never emptied"
        time.sleep(0.2)
    # (a row is deleted once JetStream acknowledged its event: whatever the undeploy wrote is on the stream now)
    events = asyncio.run(stream_events(stack, "events.pipeline.>", "pipeline_id", {pipeline_id}))
    assert [e["_subject"] for e in events] == [subjects.EVENT_PIPELINE_VERSION_CREATED], events
    assert post(stack, "status/get_deployment", alice.token, {"name": deployment}).json()["status"] == "Stopped"
