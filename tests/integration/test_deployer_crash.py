"""What a redeploy's failed record committed, read against PostgreSQL (services/deployer/handlers.py _recorded; the
in-memory world's version: tests/unit/test_deployer_crash.py): the row read again is the redeploy's own activation
(migration 009) or not, and the read waits for a record transaction that the server still runs (its client gone),
under the pipeline's advisory lock, so it tells how that one ended. Likewise an undeploy's failed deactivation; a
failed first deploy's late clean-up deactivates only its own activation; an undeploy whose row's lock is held (the
database not answering it) is a 503 within the request timeout.

Runs the deployer's handlers in the test's process on a schema of the test's own (conftest.service_schema)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.deployer import handlers, store
from shared import db, subjects
from shared.db import load_migrations, migrate
from shared.errors import InvalidRequest, Unavailable
from shared.messages.deployer import DeployPipeline
from shared.messages.engine import ReplicaDeployment, ReplicaSpec, ReplicaStep
from tests.integration import conftest
from tests.integration.conftest import service_schema
from tests.integration.pg_proxy import FreezingProxy, through_a_proxy
from tests.integration.test_deployer_list_queries import WORKSPACE as LISTED
from tests.integration.test_deployer_list_queries import make_pipeline
from tests.unit.deployer_world import ALICE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORKSPACE = 7


def activation(pipeline_id: int, version_id: int, version: uuid.UUID, deploy_id: str,
               replicas: int) -> tuple:
    """activate_deployment's arguments for a deploy (handlers._start_deployment's `row`)."""
    config = handlers._engine_config({"replica_count": replicas, "cpus": 0.5, "memory": "512Mi",
                                      "log_policy": {"mode": "sampled", "fraction": 0.25}})
    model = {"model_id": 1, "name": "m", "model_version": "v1", "sha": "0" * 64, "runtime": "onnx",
             "framework": "onnx", "input_schema": "x: float32"}
    spec = ReplicaSpec(deployment=ReplicaDeployment(pipeline="p", pipeline_version=str(version),
                                                    workspace_id=WORKSPACE),
                       steps=[ReplicaStep(kind="RandomSplit", models=[model, model], weights=[1.5, 1e-07])],
                       engine_config=config)
    return pipeline_id, version_id, deploy_id, config, spec.model_dump(mode="json")


async def record(conn, row: tuple, deployment_id: int, name: str, made: uuid.UUID) -> None:
    """handlers._activate's record(): the new activation `made` and its deployed event, in the caller's
    transaction."""
    existing = await store.pipeline_deployment(conn, row[0])
    await store.activate_deployment(conn, existing, *row, activation=made)
    await store.record_deployed(conn, handlers.deployed_event(deployment_id, name, row[0], WORKSPACE, uuid.uuid4(),
                                                              "p"))


@pytest.mark.parametrize("ends", ["committed", "rolled back"])
async def test_a_failed_records_outcome_is_read_once_its_transaction_ended(stack, ends):
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        async with pool.acquire() as conn, conn.transaction():
            pipeline_id, old_id, old_version, _ = await store.create_pipeline_version(
                conn, WORKSPACE, "p", uuid.uuid4(), {"steps": [], "n": 1})
            _, new_id, new_version, _ = await store.create_pipeline_version(
                conn, WORKSPACE, "p", uuid.uuid4(), {"steps": [], "n": 2})
            first, first_made = activation(pipeline_id, old_id, old_version, "a", 1), uuid.uuid4()
            deployment_id = await store.activate_deployment(conn, None, *first, activation=first_made)
            await store.record_deployed(conn, handlers.deployed_event(deployment_id, f"a-{deployment_id}",
                                                                      pipeline_id, WORKSPACE, old_version, "p"))
        deps = handlers.DeployerDeps(pool=pool, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        name = f"b-{deployment_id}"
        redeploy, made = activation(pipeline_id, new_id, new_version, "b", 2), uuid.uuid4()
        error = ConnectionResetError("the answer to COMMIT was lost")
        # what serves (a-N, the old version) is not the new activation; nor is it a redeploy identical to it (same
        # version, deploy_id, config and spec), whose record was refused: that one's activation is its own
        assert not await handlers._recorded(deps, pipeline_id, deployment_id, name, made, error)
        assert await handlers._recorded(deps, pipeline_id, deployment_id, f"a-{deployment_id}", first_made, error)
        assert not await handlers._recorded(deps, pipeline_id, deployment_id, f"a-{deployment_id}", uuid.uuid4(),
                                            error)

        # the record's transaction, still running on the server when the deployer reads the row again
        conn = await pool.acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
            await record(conn, redeploy, deployment_id, name, made)
            reading = asyncio.create_task(handlers._recorded(deps, pipeline_id, deployment_id, name, made, error))
            await asyncio.sleep(0.5)
            assert not reading.done()  # it waits for the pipeline's advisory lock, which the record holds
            await (transaction.commit() if ends == "committed" else transaction.rollback())
        finally:
            await pool.release(conn)
        assert await asyncio.wait_for(reading, 30) is (ends == "committed")
        # and read with nothing running: the same answer
        assert await handlers._recorded(deps, pipeline_id, deployment_id, name, made, error) is (
            ends == "committed")


@pytest.mark.parametrize("ends", ["committed", "rolled back"])
async def test_a_failed_undeploys_outcome_is_read_once_its_transaction_ended(stack, ends):
    """handlers._deactivated: the row's `active` read FOR SHARE waits for a deactivation the server still runs."""
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        async with pool.acquire() as conn, conn.transaction():
            pipeline_id, version_id, version, _ = await store.create_pipeline_version(
                conn, WORKSPACE, "p", uuid.uuid4(), {"steps": []})
            deployment_id = await store.activate_deployment(conn, None, *activation(pipeline_id, version_id, version,
                                                                                    "a", 1))
        deps = handlers.DeployerDeps(pool=pool, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        error = ConnectionResetError("the answer to COMMIT was lost")
        assert not await handlers._deactivated(deps, deployment_id, "a-1", error)
        conn = await pool.acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("UPDATE deployments SET active = false WHERE id = $1", deployment_id)
            reading = asyncio.create_task(handlers._deactivated(deps, deployment_id, "a-1", error))
            await asyncio.sleep(0.5)
            assert not reading.done()  # FOR SHARE waits for the deactivation's row lock
            await (transaction.commit() if ends == "committed" else transaction.rollback())
        finally:
            await pool.release(conn)
        assert await asyncio.wait_for(reading, 30) is (ends == "committed")


async def test_a_late_clean_up_deactivates_only_its_own_activation(stack):
    """store.deactivate with `activation` (a failed first deploy's clean-up made late, handlers.Deactivations): the
    row is made inactive only while it holds that activation; a later deploy's is left as it is."""
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        async with pool.acquire() as conn, conn.transaction():
            pipeline_id, version_id, version, _ = await store.create_pipeline_version(
                conn, WORKSPACE, "p", uuid.uuid4(), {"steps": []})
            failed, later = uuid.uuid4(), uuid.uuid4()
            deployment_id = await store.activate_deployment(
                conn, None, *activation(pipeline_id, version_id, version, "a", 1), activation=failed)
            await store.activate_deployment(conn, await store.pipeline_deployment(conn, pipeline_id),
                                            *activation(pipeline_id, version_id, version, "b", 1), activation=later)
        assert not await store.deactivate(pool, deployment_id, activation=failed)
        assert (await store.deployment(pool, deployment_id))["active"]
        assert await store.deactivate(pool, deployment_id, activation=later)
        assert not (await store.deployment(pool, deployment_id))["active"]


async def an_active_deployment(pool) -> tuple[int, int]:
    """A pipeline "p" of WORKSPACE with an active deployment "a" (its replicas not started: the undeploy tests' row);
    (pipeline id, deployment id)."""
    async with pool.acquire() as conn, conn.transaction():
        pipeline_id, version_id, version, _ = await store.create_pipeline_version(
            conn, WORKSPACE, "p", uuid.uuid4(), {"steps": []})
        return pipeline_id, await store.activate_deployment(
            conn, None, *activation(pipeline_id, version_id, version, "a", 1))


class StandInBackend:
    """The deployer's backend as the handlers use it (sets, start, stop): a started set serves at once unless
    `on_start` (called first, with the set's name) raises; a redeploy's `serving` record is awaited before the set is
    kept, as LocalBackend.start does (its error stops the set)."""

    def __init__(self, on_start: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.sets: dict[str, SimpleNamespace] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.on_start = on_start

    ready_timeout, stop_timeout = 60.0, 20.0  # settings.deployer's defaults (a deploy's time left counts them)

    async def start(self, name, spec, replicas, bounds, utilization, *, serving=None, ready_within=None) -> None:
        self.started.append(name)
        if self.on_start is not None:
            await self.on_start(name)
        if serving is not None:
            await serving()
        self.sets[name] = SimpleNamespace(ready=True)

    async def stop(self, name, every_name=False) -> None:
        self.stopped.append(name)
        self.sets.pop(name, None)


def deps_over(pool, backend: StandInBackend, timeout: float = 1.0) -> handlers.DeployerDeps:
    """The handlers' deps over `pool` and `backend`, every caller an owner of the workspace."""

    async def member(user_id, workspace_id):
        return "owner"

    return handlers.DeployerDeps(pool=pool, broker=None, backend=backend, membership=lambda token: member,
                                 public_url="http://x", timeout=timeout)


async def test_an_undeploy_whose_row_is_locked_is_a_503_within_the_request_timeout(stack):
    """The deployment's row locked by a transaction the database does not end (a database that does not answer the
    undeploy's deactivation): the undeploy is a 503 unavailable within the request timeout (the gateway waits that and
    the stop timeout), the pipeline's lock let go; once the lock is gone, an undeploy goes through. Before, it waited
    for the pool's command timeout (30 s) and the looks after it: a 504 from the gateway, then a 500."""
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        pipeline_id, deployment_id = await an_active_deployment(pool)
        backend = StandInBackend()
        stopped = backend.stopped
        deps = deps_over(pool, backend)
        holder = await pool.acquire()
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("SELECT 1 FROM deployments WHERE id = $1 FOR UPDATE", deployment_id)
            # the deployer's bound (0.8 s) fired, and its 503 came before its caller gives up: the wait_for is the
            # caller's (the gateway waits the request timeout and stop_timeout for an undeploy, 21 s here). A speed
            # bound near 0.8 s failed under a load of 18 (4.1 s); a `took` below 21 s after a wait_for of 20 s (then
            # 10 s) could not fail. Before the bound, the pool's command timeout (30 s) or never: a TimeoutError
            with pytest.raises(Unavailable, match="did not answer within") as unavailable:
                await asyncio.wait_for(handlers.undeploy(deps, ALICE, "t", pipeline_id, deployment_id),
                                       deps.timeout + backend.stop_timeout)
            assert unavailable.value.status == 503 and "within 0.8 s" in unavailable.value.msg, unavailable.value.msg
            assert not deps.pipeline_lock(pipeline_id).locked() and stopped == []
            await transaction.rollback()
        finally:
            await pool.release(holder)
        assert (await store.deployment(pool, deployment_id))["active"]
        assert await handlers.undeploy(deps, ALICE, "t", pipeline_id, deployment_id) == {}
        assert stopped == [f"a-{deployment_id}"] and not (await store.deployment(pool, deployment_id))["active"]


@contextlib.asynccontextmanager
async def frozen_later(stack, pool) -> AsyncIterator[tuple[FreezingProxy, object]]:
    """A FreezingProxy and a pool through it on `pool`'s schema, one connection of it open (taken and answered before
    the server stops answering); the deployer's work given up on ended once the server answers again."""
    before = set(db.LEFT)  # work another test left (its loop closed first) is not this test's
    async with through_a_proxy(stack, pool) as (proxy, proxied):
        try:
            assert await proxied.fetchval("SELECT 1") == 1
            yield proxy, proxied
        finally:
            proxy.thaw()
            for _ in range(300):  # the work given up on ends once the server answers its cancel request
                if not db.LEFT - before:
                    break
                await asyncio.sleep(0.1)
            assert not db.LEFT - before, db.LEFT - before


async def test_an_undeploy_while_the_database_stopped_answering_is_a_503_within_the_request_timeout(stack):
    """The database took the connection, then stopped answering (the proxy passes nothing, asyncpg's cancel request
    included): the undeploy is a 503 within the request timeout, nothing stopped, the lock let go; once the database
    answers, an undeploy goes through. Before, the bound (asyncio.timeout) cancelled the query and then waited for the
    cancelled query's end, which asyncpg holds until the server answers its cancel request and the connection's reset
    (the pool's release has no timeout of its own): the undeploy answered only when the database did."""
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        pipeline_id, deployment_id = await an_active_deployment(pool)
        backend = StandInBackend()
        stopped = backend.stopped
        async with frozen_later(stack, pool) as (proxy, proxied):
            deps = deps_over(proxied, backend)
            proxy.freeze()
            # the deployer's bound (0.8 s) fired, and its 503 came before its caller gives up: the wait_for is the
            # caller's (the gateway waits the request timeout and stop_timeout for an undeploy, 21 s here). A speed
            # bound near 0.8 s failed under a load of 18 (4.1 s); a `took` below 21 s after a wait_for of 20 s (then
            # 10 s) could not fail. Before the bound, the pool's command timeout (30 s) or never: a TimeoutError
            with pytest.raises(Unavailable, match="did not answer within") as unavailable:
                await asyncio.wait_for(handlers.undeploy(deps, ALICE, "t", pipeline_id, deployment_id),
                                       deps.timeout + backend.stop_timeout)
            assert unavailable.value.status == 503 and "within 0.8 s" in unavailable.value.msg, unavailable.value.msg
            assert not deps.pipeline_lock(pipeline_id).locked() and stopped == []
            proxy.thaw()
            assert await asyncio.wait_for(handlers.undeploy(deps, ALICE, "t", pipeline_id, deployment_id), 20) == {}
        assert stopped == [f"a-{deployment_id}"] and not (await store.deployment(pool, deployment_id))["active"]


DEFINITION = {"steps": [{"ModelInference": {"models": [{"name": "m"}]}}]}


async def resolved(deps, token, workspace_id, name, version, sha, model_id=None) -> dict:
    """handlers._resolve's stand-in: every model resolves as itself (the registry is not asked)."""
    return {"model_id": 1, "name": name, "model_version": "v1", "sha": "0" * 64, "runtime": "onnx",
            "framework": "onnx"}


async def answered(work: Awaitable, proxy: FreezingProxy, seconds: float) -> asyncio.Task:
    """`work`'s task once it ended within `seconds`; else the server answers again (the work given up on) and the
    test fails: still waiting then (before: until the server answered)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait((task,), timeout=seconds)
    if not done:
        proxy.thaw()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)
        pytest.fail(f"still waiting after {seconds} s for a database that stopped answering")
    return task


async def until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds * 10)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{what}: not within {seconds} s")


@pytest.mark.parametrize("stops", ["before_the_reads", "at_the_activations_commit", "as_the_replicas_start",
                                   "as_the_replicas_fail", "at_a_redeploys_record", "at_a_redeploys_commit"])
async def test_a_deploy_while_the_database_stopped_answering_answers_within_its_bound(stack, monkeypatch, stops):
    """A deploy whose database takes the connection, then stops answering (the proxy passes nothing), at each of the
    deploy's own database steps: the deploy answers within its bound (DEPLOY_STEP_ANSWERS_WITHIN of the request
    timeout a step; one step, or the record and its looks), and no replica serves that the row does not name nor does
    a row stay active for replicas not running, once the database answers:
    - before the reads: a 503, nothing started; once the server answers, the deploy goes through;
    - at the activation's COMMIT (the server commits it, its answer never comes): a 503 that says it may have been
      recorded, nothing started; once the server answers, the row (found by its activation: the id never came back)
      is made inactive in the background (Deactivations);
    - as the replicas start: they serve and the deploy answers (the row active since before the start); the deployed
      event, not written, is written once in the background (OwedDeployed);
    - as the replicas fail: the replicas' 400 saying the row is made inactive once the database answers; it is;
    - at a redeploy's record: a 503 (not known whether recorded), the new set not kept, the previous one serves and
      the row still names it once the server answers;
    - at a redeploy's COMMIT (the server commits the record, its answer never comes): the same 503; once the server
      answers, the row names the redeploy, so its replicas are started again and the previous ones stopped
      (RecordRechecks).
    Before, each waited until the server answered again (the pool's timeouts, then the cancelled query's clean-up)."""
    monkeypatch.setattr(handlers, "_resolve", resolved)
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.2,) * 150)
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (0.2,) * 150)
    monkeypatch.setattr(handlers, "RECORD_CHECK_DELAYS", (0.0, 0.1))  # of deps_over's 1 s request timeout
    monkeypatch.setattr(handlers, "RECORD_CHECK_ANSWERS_WITHIN", 0.5)
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        async with pool.acquire() as conn, conn.transaction():
            pipeline_id, version_id, _, _ = await store.create_pipeline_version(conn, WORKSPACE, "p", uuid.uuid4(),
                                                                                DEFINITION)
        armed = asyncio.Event()  # the deploy under test started
        once: list[str] = []  # its replicas' start (a restart of them after it is left alone)

        async def on_start(name: str) -> None:
            if not armed.is_set() or once:
                return
            once.append(name)
            if stops in ("as_the_replicas_start", "as_the_replicas_fail", "at_a_redeploys_record"):
                proxy.freeze()
            if stops == "at_a_redeploys_commit":
                proxy.freeze_once_sent(b"COMMIT")  # the record's, once the new set serves
            if stops == "as_the_replicas_fail":
                raise RuntimeError("the model did not load")

        backend = StandInBackend(on_start)

        def command(deploy_id: str) -> DeployPipeline:
            return DeployPipeline(deploy_id=deploy_id, pipeline_version_pk_id=version_id, pipeline_id=pipeline_id)

        async def row() -> dict | None:  # read past the proxy
            found = await pool.fetchrow("SELECT id, deploy_id, active, deployed_pending FROM deployments"
                                        " WHERE pipeline_id = $1", pipeline_id)
            return None if found is None else dict(found)

        async with frozen_later(stack, pool) as (proxy, proxied):
            deps = deps_over(proxied, backend)
            if stops in ("at_a_redeploys_record", "at_a_redeploys_commit"):
                first = await handlers.deploy(deps, ALICE, "t", command("a"))
                assert list(backend.sets) == [f"a-{first.id}"]
            armed.set()
            if stops == "before_the_reads":
                proxy.freeze()
            elif stops == "at_the_activations_commit":
                proxy.freeze_once_sent(b"COMMIT")
            loop = asyncio.get_running_loop()
            started = loop.time()
            deploying = await answered(handlers.deploy(deps, ALICE, "t", command("b")), proxy, 20)
            took = loop.time() - started
            # a step is 0.8 s, the record 0.8 s and its looks 2 x 0.5 s; + 4 s: a loaded machine
            assert took < 0.8 + 0.8 + 1.1 + 4.0, took
            if stops == "before_the_reads":
                with pytest.raises(Unavailable, match="did not answer within 0.8 s; nothing of it runs"):
                    deploying.result()
                assert backend.started == []
                proxy.thaw()
                deployed = await asyncio.wait_for(handlers.deploy(deps, ALICE, "t", command("b")), 20)
                assert list(backend.sets) == [f"b-{deployed.id}"] and (await row())["active"]
            elif stops == "at_the_activations_commit":
                with pytest.raises(Unavailable, match="may have been recorded all the same"):
                    deploying.result()
                assert backend.started == [] and (await row())["active"]  # committed, its answer never came
                proxy.thaw()
                await until(lambda: _inactive(row), "the row made inactive in the background")
            elif stops == "as_the_replicas_start":
                deployment_id = deploying.result().id
                assert list(backend.sets) == [f"b-{deployment_id}"] and (await row())["active"]
                proxy.thaw()
                await until(lambda: _event_written(row), "the owed deployed event written")
                assert await pool.fetchval("SELECT count(*) FROM outbox WHERE subject = $1",
                                           subjects.EVENT_PIPELINE_DEPLOYED) == 1
            elif stops == "as_the_replicas_fail":
                with pytest.raises(InvalidRequest, match="made inactive once the database answers"):
                    deploying.result()
                assert backend.sets == {}
                proxy.thaw()
                await until(lambda: _inactive(row), "the row made inactive in the background")
            elif stops == "at_a_redeploys_record":
                with pytest.raises(Unavailable, match="could not be confirmed"):
                    deploying.result()
                assert list(backend.sets) == [f"a-{first.id}"]  # the new set was not kept
                proxy.thaw()
                await asyncio.wait_for(asyncio.gather(*deps.rechecks.tasks), 30)
                assert (await row())["deploy_id"] == "a" and (await row())["active"]
                assert list(backend.sets) == [f"a-{first.id}"]
            else:
                with pytest.raises(Unavailable, match="could not be confirmed"):
                    deploying.result()
                assert list(backend.sets) == [f"a-{first.id}"]  # the new set was not kept
                assert (await row())["deploy_id"] == "b"  # committed: the row names it, and nothing of it runs
                proxy.thaw()

                async def swapped() -> bool:
                    return list(backend.sets) == [f"b-{first.id}"]

                await until(swapped, "the recorded redeploy's replicas started again")
                assert f"a-{first.id}" in backend.stopped
                assert (await row())["deploy_id"] == "b" and (await row())["active"]
            assert not deps.pipeline_lock(pipeline_id).locked()
            await deps.deactivations.stop()
            await deps.rechecks.stop()
            await deps.owed.stop()


async def test_a_record_recheck_waits_for_an_undeploy_the_server_still_runs(stack, monkeypatch):
    """A redeploy of a-N as b-N whose record was committed though no look could tell (a 503: a-N serves, the row names
    b-N, a recheck owed), then an undeploy whose deactivation the server still runs, its client gone (its 503 said it
    may be recorded): the recheck (RecordRechecks) reads the row once that deactivation ended, so it starts nothing
    under a row made inactive, and stops a-N, which no active row names. Before, it read the row active past the
    deactivation's row lock (it takes no advisory lock), started b-N and stopped a-N; the deactivation then committed:
    b-N ran with no active row."""
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.0,))
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        pipeline_id, deployment_id = await an_active_deployment(pool)
        version_id = await pool.fetchval("SELECT pipeline_version_id FROM deployments WHERE id = $1", deployment_id)
        made, old, name = uuid.uuid4(), f"a-{deployment_id}", f"b-{deployment_id}"
        async with pool.acquire() as conn, conn.transaction():
            await record(conn, activation(pipeline_id, version_id, uuid.uuid4(), "b", 1), deployment_id, name, made)
        backend = StandInBackend()
        backend.sets[old] = SimpleNamespace(ready=True)  # the previous set serves
        deps = deps_over(pool, backend)
        holder = await pool.acquire()
        try:
            transaction = holder.transaction()
            await transaction.start()
            # the undeploy's deactivation, run by the server and not committed yet
            await holder.execute("UPDATE deployments SET active = false WHERE id = $1", deployment_id)
            deps.rechecks.owe(deps, pipeline_id, deployment_id, old, made)
            holder_pid = holder.get_server_pid()
            for _ in range(100):  # until the recheck waits for the row (or, not waiting, ended)
                if all(task.done() for task in deps.rechecks.tasks) or await pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", holder_pid):
                    break
                await asyncio.sleep(0.1)
            await transaction.commit()
        finally:
            await pool.release(holder)
        await asyncio.wait_for(asyncio.gather(*deps.rechecks.tasks), 20)
        assert name not in backend.started, "the recheck started replicas under a row made inactive"
        assert backend.sets == {} and backend.stopped == [old]
        assert not (await store.deployment(pool, deployment_id))["active"]


async def _inactive(row: Callable[[], Awaitable[dict | None]]) -> bool:
    found = await row()
    return found is not None and not found["active"]


async def _event_written(row: Callable[[], Awaitable[dict | None]]) -> bool:
    found = await row()
    return found is not None and found["active"] and not found["deployed_pending"]


async def test_a_look_at_a_failed_commit_gives_up_on_a_database_that_stopped_answering(stack, monkeypatch):
    """_look_again (a failed record's or deactivation's re-read): each look is given up after record_check_within
    when the server stopped answering, so the looks end within their bound. Before, asyncio.timeout cancelled the
    look, then waited as long as the server did not answer the cancel (see above): a redeploy's _recorded held the
    deploy, and the pipeline's lock, that long."""
    monkeypatch.setattr(handlers, "RECORD_CHECK_DELAYS", (0.0, 0.02))  # of the 5 s request timeout: 0.1 s
    monkeypatch.setattr(handlers, "RECORD_CHECK_ANSWERS_WITHIN", 0.1)  # 0.5 s
    async with service_schema(stack, "deployercrash", Path("services/deployer/migrations")) as pool:
        async with pool.acquire() as conn, conn.transaction():
            pipeline_id, version_id, version, _ = await store.create_pipeline_version(
                conn, WORKSPACE, "p", uuid.uuid4(), {"steps": []})
            made = uuid.uuid4()
            deployment_id = await store.activate_deployment(
                conn, None, *activation(pipeline_id, version_id, version, "a", 1), activation=made)
        async with frozen_later(stack, pool) as (proxy, proxied):
            deps = handlers.DeployerDeps(pool=proxied, broker=None, backend=None, membership=lambda token: None,
                                         public_url="http://x", timeout=5)
            error = ConnectionResetError("the answer to COMMIT was lost")
            proxy.freeze()
            started = asyncio.get_running_loop().time()
            with pytest.raises(Unavailable, match="not known whether"):
                await asyncio.wait_for(handlers._recorded(deps, pipeline_id, deployment_id, "a-1", made, error), 10)
            assert not await asyncio.wait_for(handlers._deactivated(deps, deployment_id, "a-1", error), 10)
            took = asyncio.get_running_loop().time() - started
            assert took < 2 * (0.1 + 2 * 0.5) + 4.0, took  # two looks each, + 4 s: a loaded machine (before: never)
            proxy.thaw()
            assert await asyncio.wait_for(handlers._recorded(deps, pipeline_id, deployment_id, "a-1", made, error),
                                          10) is False  # owes its deployed event: not a committed record
            assert await asyncio.wait_for(handlers._deactivated(deps, deployment_id, "a-1", error), 10) is False


async def test_a_deployment_activated_before_migration_009_is_not_taken_for_a_later_activation(stack, monkeypatch):
    """Migration 009 on a database with a deployment that serves (activated by the deployer before it: `activation`
    NULL). After the upgrade, a redeploy whose record was refused (the row as it was) does not read as committed, a
    failed first deploy's late clean-up (store.deactivate with an activation) leaves the row as it is, a redeploy's
    record that was committed reads as committed, and an undeploy (no activation) deactivates it."""
    migrations = load_migrations(Path("services/deployer/migrations"))
    monkeypatch.setattr(conftest, "load_migrations", lambda directory: [m for m in migrations if m.version < 9])
    async with service_schema(stack, "deployer009", Path("services/deployer/migrations")) as pool:
        await make_pipeline(pool, "old", 1, deployed=1)
        await pool.execute("UPDATE deployments SET deployed_pending = false")  # it served, its event written
        schema = await pool.fetchval("SELECT current_schema()")
        monkeypatch.undo()
        assert await migrate(stack.settings().postgres, schema, migrations) == [
            m.version for m in migrations if m.version >= 9]  # the upgrade
        row = await pool.fetchrow("SELECT id, pipeline_id, pipeline_version_id, activation FROM deployments")
        assert row["activation"] is None
        deps = handlers.DeployerDeps(pool=pool, broker=None, backend=None, membership=lambda token: None,
                                     public_url="http://x", timeout=5)
        name, error = f"old-{row['id']}", ConnectionResetError("the answer to COMMIT was lost")
        assert not await handlers._recorded(deps, row["pipeline_id"], row["id"], name, uuid.uuid4(), error)
        assert not await store.deactivate(pool, row["id"], activation=uuid.uuid4())
        assert (await store.deployment(pool, row["id"]))["active"]
        made = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            existing = await store.pipeline_deployment(conn, row["pipeline_id"])
            await store.activate_deployment(conn, existing, row["pipeline_id"], row["pipeline_version_id"], "old",
                                            {"replica_count": 1}, {"steps": []}, activation=made)
            await store.record_deployed(conn, handlers.deployed_event(row["id"], name, row["pipeline_id"], LISTED,
                                                                      uuid.uuid4(), "old"))
        assert await handlers._recorded(deps, row["pipeline_id"], row["id"], name, made, error)
        assert await store.deactivate(pool, row["id"])
        assert not (await store.deployment(pool, row["id"]))["active"]
