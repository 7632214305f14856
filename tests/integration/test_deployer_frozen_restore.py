"""A PostgreSQL that took the connection and stopped answering (tests/integration/pg_proxy.py FreezingProxy) while
the deployer restores its deployments at its start, or while a pipelines/create's COMMIT it gave up on is still under
way (services/deployer/handlers.py _restart, _created_in_time)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.deployer import handlers, store
from shared import subjects
from shared.errors import Unavailable
from shared.messages.deployer import CreatePipeline
from tests.integration.conftest import service_schema
from tests.integration.test_deployer_crash import (
    WORKSPACE,
    StandInBackend,
    an_active_deployment,
    deps_over,
    frozen_later,
    until,
)
from tests.unit.deployer_world import ALICE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_a_restore_whose_row_the_database_does_not_give_lets_the_pipelines_lock_go(stack, monkeypatch):
    """The deployer starts (DeploymentRestore) while the database stopped answering: each try of a deployment's
    restore gives its row's read up after READ_ANSWERS_WITHIN of the request timeout and lets the pipeline's lock go
    before the next (RESTORE_READ_DELAYS), so a deploy or undeploy of the pipeline gets it; once the database answers,
    the deployment is restored. Before, the read waited under the lock as long as the database did not answer: every
    deploy of the pipeline a 409 deploy_in_progress after its lock wait, every undeploy after its own."""
    monkeypatch.setattr(handlers, "RESTORE_READ_DELAYS", (0.0,) + (0.3,) * 100)
    async with service_schema(stack, "deployerrestore", Path("services/deployer/migrations")) as pool:
        pipeline_id, deployment_id = await an_active_deployment(pool)
        backend = StandInBackend()
        async with frozen_later(stack, pool) as (proxy, proxied):
            deps = deps_over(proxied, backend)
            lock = deps.pipeline_lock(pipeline_id)  # held here: the deps keep a lock only while it is used
            proxy.freeze()
            restore = handlers.DeploymentRestore(deps, [{"pipeline_id": pipeline_id, "id": deployment_id}])
            restore.start()
            try:
                await asyncio.sleep(0.1)  # its first try holds the lock and waits for the row
                # a try is given up after 0.8 s: the lock is had by then (+ 3 s: a loaded machine; before: never)
                async with asyncio.timeout(0.8 + 3.0):
                    await lock.acquire()
                lock.release()
                assert backend.started == []
                proxy.thaw()

                async def restored() -> bool:
                    return f"a-{deployment_id}" in backend.sets

                await until(restored, "restored once the database answers")
                assert list(backend.sets) == [f"a-{deployment_id}"]
            finally:
                await restore.stop()


async def test_a_create_given_up_on_at_its_commit_wakes_the_outbox_when_the_commit_lands(stack):
    """pipelines/create whose COMMIT the server takes and never answers: a 503 after READ_ANSWERS_WITHIN; its work is
    left to end (shared.db.within), and once the server answers, the outbox is woken (events_committed) to send the
    version's events.pipeline.version_created, committed all the same. Before, the left work, cancelled, never reached
    the wake: the event waited for the outbox's idle round (60 s)."""
    async with service_schema(stack, "deployercreate", Path("services/deployer/migrations")) as pool:
        async with frozen_later(stack, pool) as (proxy, proxied):
            deps = deps_over(proxied, StandInBackend())
            woken = asyncio.Event()
            deps.events_committed = woken.set
            proxy.freeze_once_sent(b"COMMIT")
            with pytest.raises(Unavailable, match="creating it again is safe"):
                await asyncio.wait_for(handlers.create_pipeline(deps, ALICE, "t", CreatePipeline(
                    workspace_id=WORKSPACE, pipeline_id="q", definition={"steps": []})), 10)
            assert not woken.is_set()
            proxy.thaw()
            # + the server's answer to the cancel and the connection's reset (before: never)
            await asyncio.wait_for(woken.wait(), 20)
        # committed all the same: the version and its event, which the woken outbox sends
        assert await store.pipeline_by_name(pool, WORKSPACE, "q") is not None
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE subject = $1",
                                   subjects.EVENT_PIPELINE_VERSION_CREATED) == 1


async def test_a_create_whose_connection_is_lost_at_its_commit_wakes_the_outbox(stack):
    """pipelines/create whose COMMIT reached the server, then its connection was lost (the proxy closes both ends):
    the work ends with the connection's error within its bound, a 503 saying the version may have been created all
    the same, and the outbox is woken (events_committed) at once for the version's events.pipeline.version_created,
    committed all the same. Before (ef44f28), only work given up on (still running at the bound) woke it: work that
    ended with an error had run its wake's `finally` before the command knew to ask for it, and the event waited for
    the outbox's idle round (60 s)."""
    async with service_schema(stack, "deployercreatelost", Path("services/deployer/migrations")) as pool:
        async with frozen_later(stack, pool) as (proxy, proxied):
            deps = deps_over(proxied, StandInBackend(), timeout=5.0)  # the create's bound: 4 s
            woken = asyncio.Event()
            deps.events_committed = woken.set
            proxy.freeze_once_sent(b"COMMIT")

            async def cut_once_committed() -> None:
                for _ in range(1000):  # frozen in the step the COMMIT was sent
                    if not proxy.thawed.is_set():
                        break
                    await asyncio.sleep(0.01)
                for writer in proxy.writers:
                    writer.close()

            cut = asyncio.create_task(cut_once_committed())
            started = asyncio.get_running_loop().time()
            with pytest.raises(Unavailable, match=r"failed \(.*creating it again is safe"):
                await asyncio.wait_for(handlers.create_pipeline(deps, ALICE, "t", CreatePipeline(
                    workspace_id=WORKSPACE, pipeline_id="q", definition={"steps": []})), 10)
            # ended with the lost connection's error, not given up at the 4 s bound
            assert asyncio.get_running_loop().time() - started < 4.0
            await cut
            assert woken.is_set()  # at once (before: never, but by the outbox's idle round)
        assert await store.pipeline_by_name(pool, WORKSPACE, "q") is not None
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE subject = $1",
                                   subjects.EVENT_PIPELINE_VERSION_CREATED) == 1
