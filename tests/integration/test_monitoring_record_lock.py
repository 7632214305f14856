"""Continuous deployment's record paths share one lock (services/monitoring/continuous.py RECORD_LOCK;
docs/monitoring.md "A deploy landing whenever"), the DEPLOY_SHADOW record path checks for a newer command recorded
first as the others do, and the resume sweep's prune of sent_deploys reads the rows old enough from an index
(migration 025).

Runs the service's functions on a monitoring schema of this test's on the stack's PostgreSQL, two monitoring
processes' deps on two connections racing, the deployer stood in (continuous_setups.Deployer)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from services.monitoring import continuous
from shared.db import xact_lock
from tests.integration.continuous_setups import (
    CHALLENGER,
    CHAMPION,
    DEPLOYMENT,
    NEWEST,
    Deployer,
    continuous_deployment,
    decided,
    done,
    evidence,
    make_stale,
    schema_fixture,
    stand_in_deployer,
    swapped_events,
)
from tests.integration.test_monitoring_deployed_event import deployed
from tests.integration.test_monitoring_sent_deploys import sent

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_record_lock")


async def blocked_by(pool, pid: int, within: float, what: str, given_up=None) -> int | None:
    """The server pid of a backend waiting for a lock backend `pid` holds, polled for up to `within` seconds; None
    when `given_up()` turns true first (else the wait's end fails the test)."""
    deadline = time.monotonic() + within
    while True:
        waiting = await pool.fetchval("SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)) LIMIT 1",
                                      pid)
        if waiting is not None:
            return waiting
        if given_up is not None and given_up():
            return None
        assert time.monotonic() < deadline, f"{what} never waited for backend {pid}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("older", ["delivery", "swap"])
async def test_an_older_command_s_event_racing_the_newer_command_s_own_record_is_told_first(monitoring_schema,
                                                                                           monkeypatch, older):
    """One pipeline version ('2', v2 alone) carried by a DEPLOY_AUTO delivery and a promotion's swap. The older
    command's deploy (sent a minute ago) lands and its event's handling (process A) has checked that no newer command
    is recorded; before it records, it waits for the older command's row (another connection holds it, as any
    writer of that row may for a moment). Meanwhile the newer command (process B, on other connections) sends its
    deploy of '2', gets its answer and records itself. Whichever order the two records come in, the newer command's
    is told last (model_swapped): with RECORD_LOCK, B's record waits for A's transaction (check and record), so A
    records the older command first and B the newer after it. Before, B committed its record while A waited, and A
    then recorded the older command after it (its check made before B's commit): the deployment's history ended
    with the command that was not the last one sent."""
    pool = monitoring_schema
    deployer, newer_process = stand_in_deployer(pool, monkeypatch)
    event_process = Deployer.process(pool)
    challenge_id = await decided(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    # the training older than the challenge: neither overtakes the other, only the order they were sent in counts
    await done(pool, training_id, CHALLENGER, "deployed", 600, True)
    if older == "delivery":
        await sent(pool, "2", 60, training_id=training_id)
        row_lock = "SELECT 1 FROM trainings WHERE id = $1 FOR UPDATE", training_id
        newer_record = continuous._apply_decision(newer_process, await pool.fetchrow(
            "SELECT * FROM challenges WHERE id = $1", challenge_id), "promoting", evidence())
        told = [("deployed", "v2"), ("promoted", "v2")]
    else:
        await sent(pool, "2", 60, challenge_id=challenge_id)
        row_lock = "SELECT 1 FROM challenges WHERE id = $1 FOR UPDATE", challenge_id
        newer_record = continuous._deliver(newer_process, await pool.fetchrow(
            "SELECT * FROM trainings WHERE id = $1", training_id), "DEPLOY_AUTO")
        told = [("promoted", "v2"), ("deployed", "v2")]

    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        try:
            await holder.execute(*row_lock)
            event = asyncio.create_task(continuous.on_pipeline_deployed(event_process, deployed("2")))
            event_pid = await blocked_by(pool, holder.get_server_pid(), 30.0, "the event's record")
            newer = asyncio.create_task(newer_record)
            # the newer command's record: done at once (no lock shared with the event's), or waiting for the event's
            await blocked_by(pool, event_pid, 30.0, "the newer command's record", given_up=newer.done)
        finally:
            await transaction.rollback()
        recorded, _ = await asyncio.wait_for(asyncio.gather(event, newer), 60.0)

    assert recorded == 1
    assert deployer.deploys == [(2, 1, "served")]  # the newer command's deploy of '2'
    assert [(e["action"], e["model_version"]["version"]) for e in await swapped_events(pool)] == told
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoted"
    assert await pool.fetchval("SELECT delivered_at IS NOT NULL FROM trainings WHERE id = $1", training_id)


async def test_a_shadow_delivery_resumed_after_a_newer_command_of_its_version_was_recorded_is_not_recorded(
        monitoring_schema, monkeypatch):
    """DEPLOY_SHADOW's record path keeps the rule of the others (_older_than_recorded in the transaction that would
    record it). Training A's delivery (v3 as the shadow of v1: pipeline version '2') goes unanswered; a delivery
    sent after it that carried '2' too is recorded (a training B's: made up here, as no command made today carries a
    shadow delivery's version but that delivery itself). A's resume then finds '2' serving: it is closed unrecorded
    with the reason, nothing told, no challenge opened. Before, it was recorded (its challenge opened over B's,
    its model_swapped told after B's)."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch, 1)
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    training_a, training_b = uuid.uuid4(), uuid.uuid4()
    await done(pool, training_a, NEWEST, "shadow", 600, True)
    assert not await continuous._deliver(deps, await pool.fetchrow("SELECT * FROM trainings WHERE id = $1",
                                                                   training_a), "DEPLOY_SHADOW")
    assert deployer.deploys == [(2, 1, "unanswered")]
    # B: older as a training (so it does not overtake A), its delivery of '2' sent after A's and recorded
    await done(pool, training_b, NEWEST, "shadow", 700, False)
    await pool.execute("INSERT INTO sent_deploys (pipeline_version, deployment_id, training_id, champion, sent_at)"
                       " VALUES ('2', $1, $2, $3, now() + interval '1 second')", DEPLOYMENT, training_b,
                       json.dumps(CHAMPION))
    deployer.serving = 2  # B's deploy of '2' landed
    await make_stale(pool, "trainings", "delivering_since", training_a)

    await continuous.resume_deliveries(deps)
    assert deployer.deploys == [(2, 1, "unanswered")]  # nothing deployed: '2' serves
    assert await swapped_events(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM challenges") == 0
    row = await pool.fetchrow("SELECT delivering_since, delivered_at, reason FROM trainings WHERE id = $1", training_a)
    assert (row["delivering_since"], row["delivered_at"], row["reason"]) == (
        None, None, "a newer command that carried the same pipeline version was recorded first: not delivered")


async def test_the_prune_reads_the_rows_old_enough_from_the_sent_at_index(monitoring_schema):
    """The prune (every 30 s in every process) picks its rows by sent_at: with many rows sent within the hour (a
    busy deployment's resumes) and a few old ones, its plan reads sent_at from the index migration 025 made
    (sent_deploys_sent_at), for both bounds (the retention's and the hour's), not every row of the table. Before
    that migration there was no such index (a sequential scan of the whole table every 30 s)."""
    pool = monitoring_schema
    challenge_id = await decided(pool, "DEPLOY_AUTO")
    await pool.execute(
        "INSERT INTO sent_deploys (pipeline_version, deployment_id, challenge_id, sent_at) SELECT g::text, $1, $2,"
        " now() - make_interval(secs => CASE WHEN g <= 5 THEN 40 * 86400 ELSE g % 3000 END) FROM"
        " generate_series(1, 20000) g", DEPLOYMENT, challenge_id)
    await pool.execute("ANALYZE sent_deploys")
    plan = "\n".join(r[0] for r in await pool.fetch(f"EXPLAIN {continuous.PRUNABLE}", continuous.SENT_SETTLED,
                                                    30 * 86400.0, continuous.PRUNE_BATCH))
    assert "sent_deploys_sent_at" in plan and "Seq Scan on sent_deploys s" not in plan, plan
    assert await continuous.prune_sent_deploys(Deployer.process(pool)) == 5  # the retention's (its swap is decided)


async def test_an_event_s_row_sent_again_while_its_record_waited_for_the_lock_is_read_again(monitoring_schema):
    """The deployed event of '2' reads its sent_deploys rows, then waits for RECORD_LOCK (another record under way):
    a delivery's row (sent '2' a minute ago) and a promotion's (sent '2' 30 s ago, recorded). Meanwhile the delivery
    sends '2' again (a resume: its row's sent_at moves to now), so it is the command sent last. Its record reads the
    row again under the lock: recorded (deployed, told after the promotion). Before, the row read before the lock
    (sent a minute ago) made the promotion look newer and recorded: the delivery was closed 'a newer command ... was
    recorded first', though it was sent after it and its deploy is what landed."""
    pool = monitoring_schema
    challenge_id = await decided(pool, "DEPLOY_AUTO")
    await pool.execute("UPDATE challenges SET state = 'promoted' WHERE id = $1", challenge_id)
    training_id = uuid.uuid4()
    await done(pool, training_id, CHALLENGER, "deployed", 600, True)
    await sent(pool, "2", 60, training_id=training_id)
    await sent(pool, "2", 30, challenge_id=challenge_id)

    async with pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        try:
            await xact_lock(holder, continuous.RECORD_LOCK, DEPLOYMENT)
            event = asyncio.create_task(continuous.on_pipeline_deployed(Deployer.process(pool), deployed("2")))
            await blocked_by(pool, holder.get_server_pid(), 30.0, "the event's record")
            await pool.execute("UPDATE sent_deploys SET sent_at = now() WHERE training_id = $1", training_id)
        finally:
            await transaction.rollback()
    assert await asyncio.wait_for(event, 60.0) == 1

    row = await pool.fetchrow("SELECT delivering_since, delivered_at, reason FROM trainings WHERE id = $1", training_id)
    assert row["delivered_at"] is not None and row["delivering_since"] is None, dict(row)
    assert [(e["action"], e["model_version"]["version"]) for e in await swapped_events(pool)] == [
        ("deployed", CHALLENGER["version"])]
