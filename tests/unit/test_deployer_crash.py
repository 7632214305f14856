"""The deployer's crash windows (services/deployer/handlers.py, docs/inference.md "Deployments"): a redeploy of a
deployment that serves records its new row once the new replicas answer (`record`, LocalBackend.start's `serving`
step), and the backend stops the new set when that step raises. A commit that took effect but whose answer was lost
(the connection dropped after COMMIT, a command timeout) raised all the same: the new replicas were stopped while
the row named them (their version, a renamed deployment's new name) and the outbox held their deployed event; an
undeploy's likewise left the replicas running with the row inactive. Same in-memory world as the other deployer
tests (tests/unit/deployer_world.py), with a pool whose transactions can lose their commit's answer or be refused."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sys
import uuid
from types import SimpleNamespace

import asyncpg
import pytest

from services.deployer import handlers
from shared import subjects
from shared.errors import InvalidRequest, RailyardError, Unavailable
from shared.messages.deployer import DeployPipeline
from tests.unit.deployer_world import ALICE, PIPELINE, VERSION, _deploy, _deployed_as, _until, world  # noqa: F401
from tests.unit.test_bus_database_unavailable import asyncpg_outage

NEW = VERSION + 1


class CommitPool:
    """The in-memory world's pool, whose next transaction (`fail_next`) ends in an error: "lost", its writes took
    effect (committed) but the answer never came; "refused", nothing of it took effect (the store's rows put back)."""

    def __init__(self, store) -> None:
        self.store = store
        self.fail_next: str | None = None
        self.failed: list[str] = []  # the transactions failed so far, as fail_next said
        self.error: Exception = asyncpg.exceptions.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation")  # what a failed transaction raises

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield SimpleNamespace(transaction=self._transaction)

    @contextlib.asynccontextmanager
    async def _transaction(self):
        deployments, events = copy.deepcopy(self.store.deployments), list(self.store.events)
        yield
        fail, self.fail_next = self.fail_next, None
        if fail is not None:
            self.failed.append(fail)
        if fail == "refused":
            self.store.deployments.clear(), self.store.deployments.update(deployments)
            self.store.events[:] = events
        if fail is not None:
            raise self.error


@pytest.fixture
def crash(world, monkeypatch):  # noqa: F811 - the fixture
    world.deps.pool = CommitPool(world.store)
    monkeypatch.setattr(handlers, "RECORD_CHECK_DELAYS", (0.0, 0.002, 0.002))  # of the 5 s request timeout: 10 ms
    return world


async def _redeploying(made, deploy_id: str, commit: str):
    """Deployment 5 serving as a-5 is redeployed at version NEW as `deploy_id`; its new replicas answer, and the
    transaction recording its new row ends as `commit` says. The redeploy's task, the old set and the new one."""
    await _deployed_as(made, "a")
    old = made.backend.sets["a-5"]
    made.store.events.clear()
    made.store.versions[NEW] = dict(made.store.versions[VERSION], id=NEW, version=uuid.uuid4())
    redeploy = asyncio.create_task(handlers.deploy(made.deps, ALICE, "t", DeployPipeline(
        deploy_id=deploy_id, pipeline_version_pk_id=NEW, pipeline_id=PIPELINE, engine_config={"replica_count": 2})))
    await _until(lambda: made.backend.waiting, "the redeploy starts its replicas")
    new, answer = made.backend.waiting.pop()
    made.deps.pool.fail_next = commit  # the next transaction is the one recording the new row
    answer.set_result(None)
    return redeploy, old, new


@pytest.mark.parametrize("deploy_id", ["a", "b"])
@pytest.mark.parametrize("commit", ["lost", "refused"])
def test_a_redeploy_whose_record_raises_keeps_the_replicas_its_commit_names(crash, deploy_id, commit):
    """"lost": the row names the new version (and name), so the new replicas serve and the old ones stop, as after
    a commit that answered; the deploy answers, its deployed event (committed) is not written again. Before, the new
    set was stopped and the deploy failed, the old replicas serving the previous version (as a-5, a name no row had
    any more, when renamed). "refused": nothing changed, as before: the error, the old set serving, the row as it
    was, no event."""

    async def scenario(made) -> None:
        redeploy, old, new = await _redeploying(made, deploy_id, commit)
        if commit == "lost":
            assert (await redeploy).id == 5
            row = made.store.deployments[5]
            assert (row["pipeline_version_id"], row["deploy_id"], row["active"], row["deployed_pending"]) == (
                NEW, deploy_id, True, False)
            assert made.backend.sets == {f"{deploy_id}-5": new} and not new.stopping and old.stopping
            assert [(s, e.name, e.pipeline_version) for s, e in made.store.events] == [
                (subjects.EVENT_PIPELINE_DEPLOYED, f"{deploy_id}-5", str(made.store.versions[NEW]["version"]))]
        else:
            with pytest.raises(Unavailable, match="nothing changed"):
                await redeploy
            row = made.store.deployments[5]
            assert (row["pipeline_version_id"], row["deploy_id"], row["active"], row["deployed_pending"]) == (
                VERSION, "a", True, False)
            assert made.backend.sets == {"a-5": old} and not old.stopping and new.stopping
            assert made.store.events == []
        assert made.backend.untracked() == []

    asyncio.run(scenario(crash))


@pytest.mark.parametrize("error", ["timeout", "connection"])
def test_a_redeploy_whose_record_was_not_committed_is_a_503_saying_nothing_changed(crash, error):
    """The record raised and the row read again is not the new activation: the database failed, not the replicas,
    and nothing changed. A 503 (Unavailable) saying so, naming the set that still serves; before, a command timeout
    (TimeoutError, as the pool's command_timeout raises it) was taken for the replicas' own and answered a 400
    InvalidRequest "the deployment failed to start: " (a bad request: not to be retried), and a dropped connection
    a 500 "internal error"."""

    async def scenario(made) -> None:
        made.deps.pool.error = TimeoutError() if error == "timeout" else \
            asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        redeploy, old, new = await _redeploying(made, "b", "refused")
        with pytest.raises(Unavailable) as failed:
            await redeploy
        assert failed.value.status == 503 and failed.value.code == "unavailable"
        assert "was not recorded" in failed.value.msg and "nothing changed, a-5 still serves" in failed.value.msg
        assert ("TimeoutError" if error == "timeout" else "ConnectionDoesNotExistError") in failed.value.msg
        assert made.backend.sets == {"a-5": old} and new.stopping and not old.stopping
        assert made.store.deployments[5]["pipeline_version_id"] == VERSION and made.store.events == []
        assert made.backend.untracked() == []

    asyncio.run(scenario(crash))


@pytest.mark.parametrize("unanswered", [2, 3])
def test_a_redeploy_whose_record_raises_asks_the_row_again_and_says_when_it_cannot_tell(crash, unanswered):
    """The row's re-read fails too (the database still away): it is asked again (RECORD_CHECK_DELAYS, three looks
    here). Answered at the last look: the commit took effect, the new replicas serve. Never answered: the deploy is a
    503 saying that it is not known whether the new version was recorded (the new set stopped, the old one kept, as
    the backend does for a failed `serving` step), not an error claiming that nothing changed."""

    async def scenario(made) -> None:
        pipeline_deployment, looks = made.store.pipeline_deployment, []

        async def away(conn, pipeline_id):  # after the record's transaction failed, the first `unanswered` looks
            if made.deps.pool.failed and len(looks) < unanswered:
                looks.append(pipeline_id)
                raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)
            return await pipeline_deployment(conn, pipeline_id)

        made.store.pipeline_deployment = away
        redeploy, old, new = await _redeploying(made, "b", "lost")
        if unanswered < 3:
            assert (await redeploy).id == 5
            assert made.backend.sets == {"b-5": new} and old.stopping
        else:
            with pytest.raises(Unavailable) as unknown:
                await redeploy
            assert "not known whether" in unknown.value.msg and "b-5" in unknown.value.msg
            assert made.backend.sets == {"a-5": old} and new.stopping and not old.stopping
        assert len(looks) == unanswered
        assert made.backend.untracked() == []

    asyncio.run(scenario(crash))


def test_a_served_deployment_whose_restore_fails_keeps_owing_its_event_until_a_restore_serves(world):  # noqa: F811
    """A deployment whose replicas served but whose deployed event was never written (the row says so: `served`),
    then a restart whose restore fails: nothing serves, and the event stays owed, not written and not named serving
    (announce_serving); the undeploy or the next deploy would write it (test_deployer_events). Pinned here: a later
    restart whose restore serves writes it, once, and the start after that names the deployment serving."""

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        made.store.events.clear()
        made.store.deployments[5].update(deployed_pending=True, served=True, announced=False)
        made.backend.sets.clear(), made.backend.started.clear()  # the restart: its replicas died with it
        made.backend.hold = True
        restore = await handlers.restore_deployments(made.deps)
        await _until(lambda: made.backend.waiting, "the restore starts the replicas")
        made.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        await restore._task
        row = made.store.deployments[5]
        assert "a-5" in made.deps.failed_restores and made.store.events == [] and made.store.serving == []
        assert row["active"] and row["deployed_pending"] and row["served"]
        made.backend.hold = False
        await (await handlers.restore_deployments(made.deps))._task  # the next restart: it serves
        assert [(s, e.deployment_id, e.name) for s, e in made.store.events] == [
            (subjects.EVENT_PIPELINE_DEPLOYED, 5, "a-5")]
        assert made.store.serving == [] and not made.store.deployments[5]["deployed_pending"]
        made.backend.sets.clear()
        await (await handlers.restore_deployments(made.deps))._task  # another: named, nothing written again
        assert [e.name for e in made.store.serving] == ["a-5"] and len(made.store.events) == 1

    asyncio.run(scenario(world))


def _deactivations_raise(made, *commits: str) -> None:
    """The next store.deactivate calls, one per `commits`, raise a dropped connection: "lost" after taking effect (the
    commit's answer lost), "refused" without; the calls after them are the store's own."""
    deactivate, left = made.store.deactivate, list(commits)

    async def raising(pool, deployment_id, *args, **kwargs):
        commit = left.pop(0)
        if not left:
            made.store.deactivate = deactivate
        if commit == "lost":
            await deactivate(pool, deployment_id, *args, **kwargs)
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    made.store.deactivate = raising


@pytest.mark.parametrize("commit", ["lost", "refused"])
def test_an_undeploy_whose_deactivation_raises_stops_the_replicas_when_it_was_committed(world, monkeypatch,  # noqa: F811
                                                                                        commit):
    """An undeploy whose deactivation's commit took effect but whose answer was lost ("lost"): the row is inactive,
    so its replicas stop and the undeploy answers, as after a commit that answered. Before, the error was answered
    and the replicas ran on with no active row (status Stopped, the gateway routing nothing to them) until a retried
    undeploy or a restart. "refused" (nothing committed): a 503 saying nothing changed (before, the error as it was:
    a 500), the deployment active and serving."""
    monkeypatch.setattr(handlers, "RECORD_CHECK_DELAYS", (0.0, 0.002))  # of the 5 s request timeout: 10 ms

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        serving = made.backend.sets["a-5"]
        _deactivations_raise(made, commit)

        async def deployment_active(conn, deployment_id):
            row = made.store.deployments.get(deployment_id)
            return None if row is None else row["active"]

        made.store.deployment_active = deployment_active
        if commit == "lost":
            assert await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5) == {}
            assert made.backend.sets == {} and serving.stopping
            assert [s for s, _ in made.store.events] == [subjects.EVENT_PIPELINE_DEPLOYED,
                                                         subjects.EVENT_PIPELINE_UNDEPLOYED]
        else:
            with pytest.raises(Unavailable, match="ConnectionDoesNotExistError.*serves as before"):
                await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5)
            assert made.backend.sets == {"a-5": serving} and not serving.stopping
            assert made.store.deployments[5]["active"]
        assert made.backend.untracked() == []

    asyncio.run(scenario(world))


@pytest.mark.parametrize("command", ["redeploy", "undeploy"])
def test_a_look_at_a_failed_commit_that_never_answers_is_given_up(crash, monkeypatch, command):
    """The row's re-read after a failed record (redeploy) or deactivation (undeploy) hangs (a database that takes the
    connection and never answers, or a lock held by a transaction it never ends): each look gives up after
    record_check_within and counts as one not answered, so the command answers within the looks' bound (the redeploy
    a 503, the undeploy one too) and the pipeline's lock is let go. Before, a look waited for as long as the pool's
    own timeouts (a connection's 60 s, a command's 30 s: for ever in this world), holding the pipeline's lock."""
    monkeypatch.setattr(handlers, "RECORD_CHECK_ANSWERS_WITHIN", 0.01)  # of the 5 s request timeout: 50 ms
    looks: list[int] = []

    async def never(conn, key):  # every look after the failed commit
        looks.append(key)
        await asyncio.Event().wait()

    async def scenario(made) -> None:
        if command == "redeploy":
            pipeline_deployment = made.store.pipeline_deployment

            async def hanging(conn, pipeline_id):
                if made.deps.pool.failed:
                    await never(conn, pipeline_id)
                return await pipeline_deployment(conn, pipeline_id)

            made.store.pipeline_deployment = hanging
            redeploy, old, new = await _redeploying(made, "b", "lost")
            with pytest.raises(Unavailable, match="not known whether"):
                await asyncio.wait_for(redeploy, 10)
            assert made.backend.sets == {"a-5": old} and new.stopping
        else:
            await _deployed_as(made, "a")

            async def refused(pool, deployment_id, *args, **kwargs):
                raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")

            made.store.deactivate, made.store.deployment_active = refused, never
            with pytest.raises(Unavailable, match="did not answer whether it was recorded"):
                await asyncio.wait_for(handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5), 10)
            assert "a-5" in made.backend.sets and made.store.deployments[5]["active"]
        assert len(looks) == len(handlers.RECORD_CHECK_DELAYS)
        assert not made.deps.pipeline_lock(PIPELINE).locked()

    asyncio.run(scenario(crash))


@pytest.mark.parametrize("commit", ["lost", "refused"])
def test_an_undeploy_whose_deactivation_raised_and_no_look_answered_does_not_say_it_was_not_made(world, monkeypatch,  # noqa: F811
                                                                                                commit):
    """The deactivation raised (its answer lost: "lost" committed it, "refused" did not) and no look at the row
    answered: the 503 says it is not known whether the deactivation was recorded, and that the replicas still run.
    Before, it said the undeploy "was not made" and the deployment "serves as before" whichever it was, while the row
    of a "lost" one was inactive. A retried undeploy, the database back, stops the replicas either way."""
    monkeypatch.setattr(handlers, "RECORD_CHECK_DELAYS", (0.0, 0.002))

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        serving = made.backend.sets["a-5"]
        _deactivations_raise(made, commit)

        async def unanswered(conn, deployment_id):
            raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)

        made.store.deployment_active = unanswered
        with pytest.raises(Unavailable) as unavailable:
            await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5)
        message = unavailable.value.msg
        assert unavailable.value.status == 503 and "did not answer whether it was recorded" in message, message
        assert "ConnectionDoesNotExistError" in message and "its replicas still run" in message
        assert "was not made" not in message and "serves as before" not in message
        assert made.store.deployments[5]["active"] is (commit == "refused")
        assert made.backend.sets == {"a-5": serving} and not made.deps.pipeline_lock(PIPELINE).locked()
        assert await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5) == {}
        assert made.backend.sets == {} and serving.stopping and not made.store.deployments[5]["active"]
        assert made.backend.untracked() == []

    asyncio.run(scenario(world))


@pytest.mark.parametrize("refusal", ["too_many_connections", "read_only", "disk_full"])
def test_an_undeploy_the_database_cannot_take_is_a_503_that_changes_nothing(world, monkeypatch, caplog,  # noqa: F811
                                                                            refusal):
    """A database with no connection left (53300), a standby after a failover (a read-only transaction refuses the
    deactivation, 25006) or a full disk (53100): a 503 unavailable naming the error, logged, nothing changed. Before,
    only connection, interface and operator-intervention errors were a 503; these were the 500 'internal error' of a
    bug."""
    monkeypatch.setattr(handlers, "RECORD_CHECK_DELAYS", (0.0,))
    error = {"too_many_connections": asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
             "read_only": asyncpg.exceptions.ReadOnlySQLTransactionError(
                 "cannot execute UPDATE in a read-only transaction"),
             "disk_full": asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")}[refusal]

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        serving = made.backend.sets["a-5"]

        async def refused(*args, **kwargs):
            raise error

        async def deployment_active(conn, deployment_id):  # the looks read: a standby answers them
            return made.store.deployments[deployment_id]["active"]

        if refusal == "too_many_connections":
            made.store.pipeline = refused
        else:
            made.store.deactivate, made.store.deployment_active = refused, deployment_active
        with pytest.raises(Unavailable) as unavailable:
            await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5)
        assert unavailable.value.status == 503 and type(error).__name__ in unavailable.value.msg
        assert "was not made" in unavailable.value.msg
        assert made.store.deployments[5]["active"] and made.backend.sets == {"a-5": serving}
        assert not made.deps.pipeline_lock(PIPELINE).locked()
        assert any(type(error).__name__ in record.getMessage() for record in caplog.records)

    asyncio.run(scenario(world))


@pytest.mark.parametrize("commit", ["lost", "refused"])
def test_a_redeploy_identical_to_what_serves_is_read_by_its_own_activation(crash, commit):
    """A redeploy identical to what serves (same version, deploy_id, config and spec), whose record raises: the row
    read again looks the same whether its commit took effect or not, and the redeploy's own activation (the row's
    `activation`, migration 009) tells. "refused": a 503 saying nothing changed, the old set serving, no event.
    Before, it read as committed: the new set served, the deploy answered, and its deployed event (rolled back with
    the record) was never written. "lost": it serves, its event written once (by the commit)."""

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        old, before = made.backend.sets["a-5"], made.store.deployments[5]["activation"]
        made.store.events.clear()
        redeploy = asyncio.create_task(handlers.deploy(made.deps, ALICE, "t", DeployPipeline(
            deploy_id="a", pipeline_version_pk_id=VERSION, pipeline_id=PIPELINE)))
        await _until(lambda: made.backend.waiting, "the redeploy starts its replicas")
        new, answer = made.backend.waiting.pop()
        made.deps.pool.fail_next = commit
        answer.set_result(None)
        if commit == "refused":
            with pytest.raises(Unavailable, match="nothing changed, a-5 still serves"):
                await redeploy
            row = made.store.deployments[5]  # the rows as they were put back
            assert made.backend.sets == {"a-5": old} and new.stopping and not old.stopping
            assert made.store.events == [] and row["activation"] == before
        else:
            assert (await redeploy).id == 5
            row = made.store.deployments[5]
            assert made.backend.sets == {"a-5": new} and old.stopping and row["activation"] != before
            assert [(s, e.name) for s, e in made.store.events] == [(subjects.EVENT_PIPELINE_DEPLOYED, "a-5")]
        assert made.backend.untracked() == []

    asyncio.run(scenario(crash))


@pytest.mark.parametrize("meanwhile", ["nothing", "a_deploy", "an_undeploy"])
def test_a_failed_first_deploys_clean_up_the_database_refused_is_made_later(world, monkeypatch, meanwhile):  # noqa: F811
    """A first deploy whose replicas fail to start, and whose clean-up (store.deactivate) the database refuses: the
    deploy is the 400 of its replicas, saying the row is made inactive once the database answers, and the row is, in
    the background (Deactivations). Before, the database's error was the answer (a 500) and the row stayed active
    with nothing running ("Starting") until a deploy, an undeploy or a restart. A deploy that serves or an undeploy
    made meanwhile is left as it is: the clean-up touches only the failed deploy's activation."""
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.0, 0.01, 0.01, 0.01), raising=False)

    async def scenario(made) -> None:
        deactivate, tries = made.store.deactivate, []
        gate = asyncio.Event()  # the database answers again

        async def away_until_the_gate(pool, deployment_id, *args, **kwargs):
            if not gate.is_set():
                tries.append(deployment_id)
                raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)
            return await deactivate(pool, deployment_id, *args, **kwargs)

        made.store.deactivate = away_until_the_gate
        first = _deploy(made, "a")
        await _until(lambda: made.backend.waiting, "the deploy starts its replicas")
        made.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest, match="the model did not load; it is made inactive once the database"):
            await first
        assert made.store.deployments[5]["active"] and made.backend.sets == {}
        await _until(lambda: len(tries) >= 2, "the clean-up is tried again")
        if meanwhile == "a_deploy":
            gate.set()  # the database is back: a deploy (that serves) may run before the clean-up's next try
            await _deployed_as(made, "b")
        elif meanwhile == "an_undeploy":
            gate.set()
            await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5)
        else:
            gate.set()
        await asyncio.wait_for(asyncio.gather(*made.deps.deactivations.tasks), 5)
        row = made.store.deployments[5]
        assert row["active"] is (meanwhile == "a_deploy")
        assert list(made.backend.sets) == (["b-5"] if meanwhile == "a_deploy" else [])
        assert [s for s, _ in made.store.events] == (
            [subjects.EVENT_PIPELINE_DEPLOYED] if meanwhile == "a_deploy" else [])
        assert made.backend.untracked() == []

    asyncio.run(scenario(world))


@pytest.mark.parametrize("database", ["hangs", "refuses"])
def test_an_undeploy_while_the_database_is_away_is_a_503_within_the_request_timeout(world, database):  # noqa: F811
    """An undeploy while PostgreSQL does not answer (the connection taken and never answered, or a row lock held by a
    transaction it never ends) or refuses connections: a 503 unavailable (retryable) within the request timeout, the
    pipeline's lock let go, the deployment serving as before. The gateway waits the request timeout and the stop
    timeout for an undeploy: before, the undeploy waited for the pool's own timeouts (for ever in this world: a
    504 from the gateway), and a refused connection was a 500 internal error."""

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        serving = made.backend.sets["a-5"]
        made.deps.timeout = 0.5

        async def away(pool, pipeline_id):
            if database == "refuses":
                raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)
            await asyncio.Event().wait()

        made.store.pipeline = away
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable) as unavailable:
            await asyncio.wait_for(handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5), 10)
        # its bound is 0.4 s (the message says so, below); + 2 s for a loaded machine's timers (before: never, the
        # wait_for's 10 s)
        assert asyncio.get_running_loop().time() - started < made.deps.timeout + 2.0
        assert unavailable.value.status == 503 and unavailable.value.code == "unavailable"
        assert ("did not answer within 0.4 s" if database == "hangs" else "ConnectionRefusedError") in \
            unavailable.value.msg
        assert made.backend.sets == {"a-5": serving} and not serving.stopping
        assert made.store.deployments[5]["active"] and not made.deps.pipeline_lock(PIPELINE).locked()

    asyncio.run(scenario(world))


def test_an_undeploy_whose_deactivation_hangs_answers_within_the_request_timeout(world):  # noqa: F811
    """The database answers the reads, then the deactivation hangs (the row's lock held): the undeploy is a 503 within
    the request timeout, the lock let go; a retried undeploy, the database back, stops the replicas."""

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        serving = made.backend.sets["a-5"]
        made.deps.timeout = 0.5
        deactivate = made.store.deactivate

        async def hanging(pool, deployment_id, *args, **kwargs):
            made.store.deactivate = deactivate
            await asyncio.Event().wait()

        made.store.deactivate = hanging
        with pytest.raises(Unavailable, match="did not answer within"):
            await asyncio.wait_for(handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5), 10)
        assert made.backend.sets == {"a-5": serving} and not made.deps.pipeline_lock(PIPELINE).locked()
        assert await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5) == {}
        assert made.backend.sets == {} and serving.stopping and not made.store.deployments[5]["active"]

    asyncio.run(scenario(world))


def test_a_background_deactivation_whose_earlier_try_took_effect_says_so(world, monkeypatch, caplog):  # noqa: F811
    """A failed first deploy's clean-up refused, then the background deactivation's first try committed with its
    answer lost: the next try finds the row inactive and logs that an earlier try's commit took effect. Before, it
    logged "deployed or undeployed since its replicas failed to start: left as it is", of a row nobody touched."""
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.0, 0.01, 0.01, 0.01))

    async def scenario(made) -> None:
        _deactivations_raise(made, "refused", "lost")
        first = _deploy(made, "a")
        await _until(lambda: made.backend.waiting, "the deploy starts its replicas")
        made.backend.waiting.pop()[1].set_exception(RuntimeError("the model did not load"))
        with pytest.raises(InvalidRequest, match="made inactive once the database answers"):
            await first
        await asyncio.wait_for(asyncio.gather(*made.deps.deactivations.tasks), 5)
        assert not made.store.deployments[5]["active"] and made.backend.sets == {}

    with caplog.at_level("INFO", logger="railyard.deployer"):
        asyncio.run(scenario(world))
    said = [r.getMessage() for r in caplog.records if "deployment a-5: " in r.getMessage()]
    assert any("already inactive: an earlier try's commit took effect" in m for m in said), said
    assert not any("deployed or undeployed since" in m for m in said), said


@pytest.mark.parametrize("error", ["refused",  # asyncpg's own ConnectionRefusedError (asyncpg_outage)
                                   asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")],
                         ids=["refused", "too_many_connections"])
def test_a_deploy_whose_reads_the_database_fails_is_a_503_that_starts_nothing(world, error):  # noqa: F811
    """The pipeline's read refused (or no connection left): a 503 unavailable naming the error, nothing started, and
    the deploy goes through once the database answers. Before, the error as it was: a 500 'internal error'."""

    async def scenario(made) -> None:
        pipeline = made.store.pipeline

        failure = await asyncpg_outage(error) if isinstance(error, str) else error
        named = type(failure).__name__

        async def failing(pool, pipeline_id):
            raise failure

        made.store.pipeline = failing
        with pytest.raises(Unavailable, match=f"the database failed \\({named}\\); nothing of it runs"):
            await handlers.deploy(made.deps, ALICE, "t", DeployPipeline(deploy_id="a", pipeline_version_pk_id=VERSION,
                                                                         pipeline_id=PIPELINE))
        assert made.backend.sets == {} and made.store.deployments == {}
        made.store.pipeline = pipeline
        await _deployed_as(made, "a")

    asyncio.run(scenario(world))


@pytest.mark.parametrize("commit", ["lost", "refused"])
def test_a_first_deploy_whose_activation_raised_is_a_503_and_leaves_no_row_active(crash, monkeypatch, commit):
    """A first deploy whose activation's transaction raised: "lost", committed with its answer lost (the row active,
    its id never returned); "refused", nothing committed. A 503 saying the activation may have been recorded, no
    replica started, and the row, if any, made inactive in the background (found by its activation); a deploy
    afterwards serves. Before, the error as it was (a 500), and a "lost" one left the row active with nothing running
    ("Starting") until a deploy, an undeploy or a restart's restore started it."""
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.0, 0.01, 0.01))

    async def scenario(made) -> None:
        made.deps.pool.fail_next = commit  # the deploy's first transaction
        with pytest.raises(Unavailable, match="may have been recorded all the same"):
            await handlers.deploy(made.deps, ALICE, "t", DeployPipeline(deploy_id="a", pipeline_version_pk_id=VERSION,
                                                                         pipeline_id=PIPELINE))
        assert made.backend.sets == {} and made.backend.started == []
        assert list(made.store.deployments) == ([5] if commit == "lost" else [])
        await asyncio.wait_for(asyncio.gather(*made.deps.deactivations.tasks), 5)
        assert all(not row["active"] for row in made.store.deployments.values())
        assert made.store.events == []
        await _deployed_as(made, "a")
        assert list(made.backend.sets) == ["a-5"] and made.store.deployments[5]["active"]

    asyncio.run(scenario(crash))


@pytest.mark.parametrize("meanwhile", ["an_undeploy", "a_deploy", "a_restore"])
def test_a_recheck_of_a_record_no_look_confirmed_leaves_running_only_what_the_row_names(crash, monkeypatch,
                                                                                        meanwhile):
    """A redeploy of a-5 as b-5 whose record was committed, its answer lost, and no look could tell (a 503; a-5 kept
    serving, the row naming b-5); then, before the background recheck (RecordRechecks) reads the row: an undeploy (it
    stops b-5, the row's name, which does not run), a deploy of b again (it starts b-5, and a-5 is no name of the
    row's) or a restore (it starts b-5 from the row). Once the recheck reads the row, a-5 is stopped and b-5 started
    once. Before, a-5 ran on with no row naming it after the undeploy and the deploy (the recheck saw the row not
    holding the redeploy's activation and changed nothing), and after the restore b-5 was started a second time."""
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.0,))
    released = asyncio.Event()

    async def scenario(made) -> None:
        pipeline_deployment, looks = made.store.pipeline_deployment, []

        async def away(conn, pipeline_id):
            if made.deps.pool.failed and len(looks) < 3:  # the record's looks: none answered
                looks.append(pipeline_id)
                raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)
            if asyncio.current_task().get_name().startswith("deployer.record_recheck"):  # the recheck's first read
                await released.wait()
            return await pipeline_deployment(conn, pipeline_id)

        made.store.pipeline_deployment = away
        redeploy, old, new = await _redeploying(made, "b", "lost")
        with pytest.raises(Unavailable, match="not known whether"):
            await redeploy
        assert made.backend.sets == {"a-5": old} and made.store.deployments[5]["deploy_id"] == "b"
        made.backend.hold = False
        if meanwhile == "an_undeploy":
            assert await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5) == {}
            assert not made.store.deployments[5]["active"]
        elif meanwhile == "a_deploy":
            await handlers.deploy(made.deps, ALICE, "t", DeployPipeline(deploy_id="b", pipeline_version_pk_id=NEW,
                                                                         pipeline_id=PIPELINE))
        else:
            await handlers._restart(made.deps, PIPELINE, 5, asyncio.Semaphore(1))
        assert "a-5" in made.backend.sets  # what the row names was decided without it
        released.set()
        await asyncio.wait_for(asyncio.gather(*made.deps.rechecks.tasks), 5)
        assert sorted(made.backend.sets) == ([] if meanwhile == "an_undeploy" else ["b-5"]) and old.stopping
        assert [s.name for s in made.backend.started].count("b-5") == (1 if meanwhile == "an_undeploy" else 2)
        assert made.backend.untracked() == []

    asyncio.run(scenario(crash))


def test_a_deploy_whose_membership_check_does_not_answer_is_a_503_that_says_so(world):  # noqa: F811
    """The pipeline's read answers but the membership check (a request to auth, up to the request timeout) does not
    within the read's bound: the 503 names the membership check too, as the undeploy's does, not the database alone
    (an operator looked at a PostgreSQL that was fine). Nothing started."""

    async def scenario(made) -> None:
        made.deps.timeout = 0.1

        async def silent(user_id, workspace_id):
            await asyncio.Event().wait()

        made.deps.membership = lambda token: silent
        with pytest.raises(Unavailable, match="the database \\(or the membership check\\) did not answer within"):
            await handlers.deploy(made.deps, ALICE, "t", DeployPipeline(deploy_id="a", pipeline_version_pk_id=VERSION,
                                                                         pipeline_id=PIPELINE))
        assert made.backend.sets == {} and made.store.deployments == {}

    asyncio.run(scenario(world))


def test_a_restore_does_not_start_a_row_a_failed_deploy_is_making_inactive(crash, monkeypatch):
    """Deployment 5 active as a-5 with nothing running (its restore after the deployer's start has not run yet); a
    deploy of b meanwhile has its activation's commit answer lost (a 503 saying it may have been recorded, the row
    made inactive in the background). The restore, reaching the pipeline before that deactivation's try, leaves the
    row alone: once it is inactive, nothing runs. Before, the restore started b-5 from the row (it named it: the
    commit took effect) and the deactivation then made the row inactive under it, b-5 running with no active row."""
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.0,))
    released = asyncio.Event()

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        await made.backend.stop("a-5")  # as after a start: active, its restore still to come
        deactivate = made.store.deactivate

        async def later(*args, **kwargs):  # the background deactivation's try, once the restore ran
            await released.wait()
            return await deactivate(*args, **kwargs)

        made.store.deactivate = later
        made.deps.pool.fail_next = "lost"  # the deploy's first transaction
        with pytest.raises(Unavailable, match="may have been recorded all the same"):
            await handlers.deploy(made.deps, ALICE, "t", DeployPipeline(deploy_id="b", pipeline_version_pk_id=VERSION,
                                                                         pipeline_id=PIPELINE))
        assert made.store.deployments[5]["deploy_id"] == "b" and made.store.deployments[5]["active"]
        made.backend.hold = False
        await handlers._restart(made.deps, PIPELINE, 5, asyncio.Semaphore(1))
        released.set()
        await asyncio.wait_for(asyncio.gather(*made.deps.deactivations.tasks), 5)
        assert not made.store.deployments[5]["active"]
        assert made.backend.sets == {} and made.backend.untracked() == []
        await _deployed_as(made, "b")  # a deploy afterwards serves
        assert list(made.backend.sets) == ["b-5"] and made.store.deployments[5]["active"]

    asyncio.run(scenario(crash))


def test_a_recheck_leaves_the_previous_set_to_a_later_rechecks_of_the_same_set(crash, monkeypatch):
    """Two redeploys of a-5 whose records no look could tell (two 503s, a-5 serving through both): b's was refused,
    c's committed (the row names c-5, nothing of it runs). b's recheck (RecordRechecks) reads the row first: not its
    activation, and a-5 runs while the row names c-5; but c's recheck, still to read, decides about a-5 (it starts c-5,
    then stops a-5). b's leaves a-5 serving; c's then swaps it for c-5. Before, b's stopped a-5 at once: the row active
    with nothing running until c's recheck started c-5, and for good if that start failed or its database never
    answered (c's would have left a-5 serving)."""
    monkeypatch.setattr(handlers, "DEACTIVATION_RETRY_DELAYS", (0.0,))
    gates: dict[str, asyncio.Event] = {}

    async def scenario(made) -> None:
        pipeline_deployment, unanswered = made.store.pipeline_deployment, [1, 2, 3]

        async def away(conn, pipeline_id):
            if made.deps.pool.failed and unanswered:  # a redeploy's record failed: none of its looks answered
                unanswered.pop()
                raise await asyncpg_outage("refused")  # asyncpg's own (shared.data_errors)
            task = asyncio.current_task().get_name()
            if task.startswith("deployer.record_recheck"):  # each recheck's reads wait for the test
                await gates.setdefault(task, asyncio.Event()).wait()
            return await pipeline_deployment(conn, pipeline_id)

        made.store.pipeline_deployment = away
        redeploy, old, new = await _redeploying(made, "b", "refused")
        with pytest.raises(Unavailable, match="not known whether"):
            await redeploy
        assert made.backend.sets == {"a-5": old} and made.store.deployments[5]["deploy_id"] == "a"
        newer = asyncio.create_task(handlers.deploy(made.deps, ALICE, "t", DeployPipeline(
            deploy_id="c", pipeline_version_pk_id=NEW, pipeline_id=PIPELINE)))
        await _until(lambda: made.backend.waiting, "the second redeploy starts its replicas")
        c_set, answer = made.backend.waiting.pop()
        made.deps.pool.failed.clear()
        unanswered[:] = [1, 2, 3]
        made.deps.pool.fail_next = "lost"
        answer.set_result(None)
        with pytest.raises(Unavailable, match="not known whether"):
            await newer
        assert made.backend.sets == {"a-5": old} and made.store.deployments[5]["deploy_id"] == "c"
        await _until(lambda: len(gates) == 2, "both rechecks read the row")
        first, second = sorted(made.deps.rechecks.tasks, key=lambda t: list(gates).index(t.get_name()))
        gates[first.get_name()].set()
        await asyncio.wait_for(first, 5)
        assert made.backend.sets == {"a-5": old} and not old.stopping  # left to c's recheck
        made.backend.hold = False
        gates[second.get_name()].set()
        await asyncio.wait_for(second, 5)
        assert list(made.backend.sets) == ["c-5"] and old.stopping
        assert [s.name for s in made.backend.started].count("c-5") == 2  # the redeploy's, the recheck's
        assert made.backend.untracked() == []

    asyncio.run(scenario(crash))


def test_a_deactivation_cancelled_before_it_ran_leaves_no_pending_entry():
    """The deployer's stop cancels a deactivation owed a moment before, whose task had not run yet: its activation
    leaves `pending` all the same (a done callback). Before, the discard was in the coroutine's finally, which a task
    cancelled before its first step never runs: the entry stayed (and this process's restore would go on leaving the
    row alone)."""

    async def scenario() -> None:
        deactivations = handlers.Deactivations()
        activation = uuid.uuid4()
        deactivations.owe(SimpleNamespace(), 5, "a-5", None, activation, PIPELINE)
        assert deactivations.pending == {activation}
        await deactivations.stop()  # in the same step: the task never ran
        assert deactivations.pending == set() and not deactivations.tasks

    asyncio.run(scenario())


def test_the_looks_at_a_failed_record_are_bounded_by_the_request_timeout(world, monkeypatch):  # noqa: F811
    """The looks at a redeploy's record that raised (RECORD_CHECK_DELAYS, RECORD_CHECK_ANSWERS_WITHIN) are fractions
    of the request timeout: with a 0.1 s one (what the deploy's callers then wait), three looks that never answer end
    within 0.38 s. Before, they were 5 s each, 1 and 3 s apart, whatever the request timeout: 19 s."""
    world.deps.pool = CommitPool(world.store)
    looks: list[int] = []
    pipeline_deployment = world.store.pipeline_deployment

    async def hanging(conn, pipeline_id):
        if world.deps.pool.failed:  # every look after the failed commit
            looks.append(pipeline_id)
            await asyncio.Event().wait()
        return await pipeline_deployment(conn, pipeline_id)

    # what the looks wait, each: the pause before it and the bound it is given (called from _look_again)
    paused: list[float] = []
    bounded: list[float] = []
    sleep, answered_within = asyncio.sleep, handlers._answered_within

    def recorded_sleep(delay, *args, **kwargs):
        if sys._getframe(1).f_code.co_name == "_look_again":
            paused.append(delay)
        return sleep(delay, *args, **kwargs)

    def recorded_bound(seconds, work):
        if sys._getframe(1).f_code.co_name == "_look_again":
            bounded.append(seconds)
        return answered_within(seconds, work)

    async def scenario(made) -> None:
        made.store.pipeline_deployment = hanging
        redeploy, old, new = await _redeploying(made, "b", "lost")
        made.deps.timeout = 0.1  # before the record runs (the task has not run since its replicas answered)
        monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
        monkeypatch.setattr(handlers, "_answered_within", recorded_bound)
        with pytest.raises(Unavailable, match="not known whether"):
            await asyncio.wait_for(redeploy, 10)
        assert len(looks) == len(handlers.RECORD_CHECK_DELAYS) == 3
        # 0, 0.02 and 0.06 s apart, each given 0.1 s: 0.38 s at most (before: 1 and 3 s apart, 5 s each, 19 s). The
        # waits the looks were given, not the wall time (a bound of 0.38 + 1.5 s could fail on a loaded machine)
        assert paused == pytest.approx([0.0, 0.02, 0.06]) and bounded == pytest.approx([0.1] * 3), (paused, bounded)
        assert made.backend.sets == {"a-5": old} and new.stopping

    asyncio.run(scenario(world))


def test_a_redeploys_record_failing_with_the_deployers_own_error_is_a_500_not_the_databases(crash, caplog):
    """The record of a redeploy raises an error that is not the database's (a bug: a KeyError), nothing committed: a
    500 internal error (typed) that says nothing changed, logged with its traceback; the previous set serves as
    before. Before, the catch-all called any error "the database failed (KeyError)": a 503 telling the user to retry
    once the database answers, which it did all along, and no traceback to find the bug by."""

    async def scenario(made) -> None:
        made.deps.pool.error = KeyError("engine_config")
        redeploy, old, new = await _redeploying(made, "b", "refused")
        with pytest.raises(RailyardError) as failed:
            await asyncio.wait_for(redeploy, 10)
        assert type(failed.value) is RailyardError and (failed.value.status, failed.value.code) == (500, "internal")
        assert "internal error" in failed.value.msg and "database" not in failed.value.msg, failed.value.msg
        assert "a-5 still serves the previous version" in failed.value.msg
        assert made.backend.sets == {"a-5": old} and not old.stopping and new.stopping
        assert made.store.deployments[5]["deploy_id"] == "a"
        assert any(record.exc_info and record.exc_info[0] is KeyError for record in caplog.records
                   if record.name == "railyard.deployer")

    asyncio.run(scenario(crash))


NOT_THE_DATABASES = [
    ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 9000)"),  # not asyncpg's: object storage's, a URL's
    asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),  # a misuse
]


@pytest.mark.parametrize("error", NOT_THE_DATABASES, ids=lambda exc: type(exc).__name__)
def test_a_deploy_step_failing_otherwise_than_the_database_is_not_a_503(world, error):  # noqa: F811
    """DATABASE_ERRORS took any OSError and any asyncpg InterfaceError for the database failing: a 503 'deploy again
    once the database answers' that no retry got past. They are raised as they are (shared.bus.run_command's 500,
    logged with the traceback); nothing started."""

    async def scenario(made) -> None:
        pipeline = made.store.pipeline

        async def failing(pool, pipeline_id):
            raise error

        made.store.pipeline = failing
        with pytest.raises(type(error)):
            await handlers.deploy(made.deps, ALICE, "t", DeployPipeline(deploy_id="a", pipeline_version_pk_id=VERSION,
                                                                         pipeline_id=PIPELINE))
        assert made.backend.sets == {} and made.store.deployments == {}
        made.store.pipeline = pipeline
        await _deployed_as(made, "a")

    asyncio.run(scenario(world))


@pytest.mark.parametrize("error", NOT_THE_DATABASES, ids=lambda exc: type(exc).__name__)
def test_an_undeploy_failing_otherwise_than_the_database_raises_it_and_lets_the_lock_go(world, error):  # noqa: F811
    """As a deploy's step: raised as it is (was a 503 'the database failed'), the pipeline's lock let go, the
    deployment serving as before."""

    async def scenario(made) -> None:
        await _deployed_as(made, "a")
        serving = made.backend.sets["a-5"]
        deployment = made.store.deployment

        async def failing(pool, deployment_id):  # inside the pipeline's lock
            raise error

        made.store.deployment = failing
        with pytest.raises(type(error)):
            await asyncio.wait_for(handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5), 10)
        assert made.backend.sets == {"a-5": serving} and not serving.stopping
        assert made.store.deployments[5]["active"] and not made.deps.pipeline_lock(PIPELINE).locked()
        made.store.deployment = deployment
        assert await handlers.undeploy(made.deps, ALICE, "t", PIPELINE, 5) == {}

    asyncio.run(scenario(world))
