"""A deployer that dies between a first deploy's replicas serving and the commit of its events.pipeline.deployed:
the row was made active before the replicas started, so the restore after the restart brings the deployment back,
and it now also writes the event it owes (the row's `deployed_pending`, migration 004) to the outbox. Before, the
restore brought it back without the event: lineage and auth never heard that it was deployed (no deployment card,
a stale active flag, no automatic benchmark).

On the real stack: the test holds a lock on the deployer's outbox table, so the deploy's write of the event waits
once the replicas serve (it is the only write there then); the deployer is killed (SIGKILL) right then and its waiting
PostgreSQL backends ended, as a dead client's are; the supervisor starts another deployer process, whose restore
brings the deployment back.
"""

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
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.conftest import post
from tests.integration.test_registry_events import running
from tests.models import ccfraud_onnx

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WAITING_WRITE = ("SELECT pid FROM pg_locks WHERE NOT granted AND relation = 'deployer.outbox'::regclass"
                 " AND mode = 'RowExclusiveLock' AND $1 = ANY(pg_blocking_pids(pid))")
"""A write to the outbox waiting for the test's lock (an INSERT: the outbox's sender reads with FOR UPDATE, a
RowShareLock, and deletes only what it read). pg_stat_activity's query is no help: a prepared statement's Bind
waits for the lock before the backend reports its text (it still shows the connection's previous query)."""


WAITING = "SELECT pid, query, wait_event_type FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"


def upload(stack, account, name: str) -> None:
    import requests

    uploaded = requests.post(f"{stack.api}/models/upload_stream", files={"file": (name, ccfraud_onnx())},
                             data={"name": name, "workspace_id": account.workspace_id},
                             headers={"Authorization": f"Bearer {account.token}"}, timeout=60)
    assert uploaded.status_code == 200, uploaded.text


def pipeline_of_one_model(stack, account, name: str) -> dict:
    """An ONNX model `name` uploaded and a pipeline `name` of one step serving it: its first version's answer."""
    upload(stack, account, name)
    version = post(stack, "pipelines/create", account.token, {
        "pipeline_id": name, "workspace_id": account.workspace_id,
        "definition": {"steps": [{"ModelInference": {"models": [{"name": name}]}}]}})
    assert version.status_code == 200, version.text
    return version.json()


def test_a_first_deploy_whose_deployer_died_before_its_deployed_event_gets_it_from_the_restore(stack, alice):
    name = f"diedeploy{os.getpid() % 10000}"
    version = pipeline_of_one_model(stack, alice, name)
    pipeline_id = version["pipeline_pk_id"]

    answered: list = []

    def deploy() -> None:
        with contextlib.suppress(Exception):
            answered.append(httpx.post(f"{stack.api}/pipelines/deploy", timeout=300, json={
                "deploy_id": name, "pipeline_id": pipeline_id,
                "pipeline_version_pk_id": version["pipeline_variant_pk_id"]},
                headers={"Authorization": f"Bearer {alice.token}"}))

    async def died_before_the_event() -> int:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            deadline = time.monotonic() + 30  # version_created sent: the outbox is empty of this pipeline's rows
            while await conn.fetchval("SELECT count(*) FROM deployer.outbox"):
                assert time.monotonic() < deadline, "the deployer's outbox never emptied"
                await asyncio.sleep(0.1)
            me = await conn.fetchval("SELECT pg_backend_pid()")
            async with conn.transaction():
                await conn.execute("LOCK TABLE deployer.outbox IN EXCLUSIVE MODE")
                threading.Thread(target=deploy, daemon=True).start()  # it never answers: the deployer dies
                deadline = time.monotonic() + 120
                while not await conn.fetch(WAITING_WRITE, me):  # the replicas serve: the event's write waits
                    assert not answered and time.monotonic() < deadline, (
                        "the deploy never came to write its deployed event: "
                        f"{answered and answered[0].text} {await conn.fetch(WAITING, me)} "
                        f"{(stack.data_dir / 'logs' / 'deployer.log').read_text()[-3000:]}")
                    await asyncio.sleep(0.05)
                killed_at = await conn.fetchval("SELECT clock_timestamp()")
                first = stack.state()["components"]["deployer"]["pid"]
                os.kill(first, signal.SIGKILL)
                deadline = time.monotonic() + 30
                while running(first):
                    assert time.monotonic() < deadline, "the deployer did not die"
                    await asyncio.sleep(0.05)
                # the dead deployer's backends waiting on the lock end without a commit, as PostgreSQL ends a dead
                # client's once it notices (the new process's, started after the kill, are left alone)
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE $1 ="
                                   " ANY(pg_blocking_pids(pid)) AND backend_start < $2", me, killed_at)
            deployment = await conn.fetchrow("SELECT id, active FROM deployer.deployments WHERE pipeline_id = $1",
                                             pipeline_id)
            assert deployment["active"], deployment  # active since before its replicas started
            assert await pipeline_deployed(stack, pipeline_id) == []  # its event was never committed
            deadline = time.monotonic() + 60
            while stack.state()["components"]["deployer"]["pid"] == first:  # the supervisor starts another
                assert time.monotonic() < deadline, "the supervisor did not start another deployer"
                await asyncio.sleep(0.1)
            return deployment["id"]
        finally:
            await conn.close()

    deployment_id = asyncio.run(died_before_the_event())
    deadline = time.monotonic() + 180  # the restore starts the replicas again, then writes the event
    while not (events := asyncio.run(pipeline_deployed(stack, pipeline_id))):
        assert time.monotonic() < deadline, "the restored deployment's deployed event never reached the stream"
        time.sleep(0.5)
    asyncio.run(outbox_sent(stack, "deployer", "pipeline_id", {pipeline_id}))  # a copy would be on it too
    events = asyncio.run(pipeline_deployed(stack, pipeline_id))
    assert [(e["deployment_id"], e["name"]) for e in events] == [(deployment_id, f"{name}-{deployment_id}")]
    assert events[0]["_msg_id"] == events[0]["event_id"]
    status = post(stack, "status/get_deployment", alice.token, {"name": f"{name}-{deployment_id}"})
    assert status.status_code == 200 and status.json()["status"] == "Running", status.text
    undeployed = post(stack, "pipelines/undeploy", alice.token,
                      {"pipeline_id": pipeline_id, "deployment_id": deployment_id})
    assert undeployed.status_code == 200, undeployed.text


async def pipeline_deployed(stack, pipeline_id: int) -> list[dict]:
    """The pipeline's events.pipeline.deployed on the EVENTS stream."""
    return [e for e in await stream_events(stack, "events.pipeline.>", "pipeline_id", {pipeline_id})
            if e["_subject"] == subjects.EVENT_PIPELINE_DEPLOYED]
