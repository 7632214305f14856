"""The deploys continuous deployment sent (sent_deploys, migration 024; services/monitoring/continuous.py
prune_sent_deploys, on_pipeline_deployed; docs/monitoring.md "A deploy landing whenever"): a row is deleted once it
can no longer matter, and one pipeline version that both a delivery and a swap carried is recorded in the order the
two commands were sent.

Runs the service's functions on a monitoring schema of this test's; nothing is deployed (the deployer's event is
handed to on_pipeline_deployed as its consumer does)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.monitoring import continuous
from tests.integration.continuous_setups import (
    CHALLENGER,
    DEPLOYMENT,
    NEWEST,
    decided,
    done,
    evidence,
    make_stale,
    process,
    schema_fixture,
    stand_in_deployer,
    swapped_events,
)
from tests.integration.test_monitoring_deployed_event import deployed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_sent_deploys")

HOUR_AND_A_BIT = continuous.SENT_SETTLED + 60


async def sent(pool, version: str, ago: float, *, training_id: uuid.UUID | None = None,
               challenge_id: uuid.UUID | None = None) -> None:
    """A sent_deploys row: `version` sent `ago` seconds ago for the training's delivery or the challenge's swap."""
    await pool.execute(
        "INSERT INTO sent_deploys (pipeline_version, deployment_id, training_id, challenge_id, sent_at) VALUES ($1, $2,"
        " $3, $4, now() - make_interval(secs => $5))", version, DEPLOYMENT, training_id, challenge_id, ago)


async def training(pool, how: str) -> uuid.UUID:
    """A DEPLOY_AUTO training of DEPLOYMENT as the service leaves it: `how` 'recorded' (delivered_at), 'claimed'
    (its delivery under way), 'closed' (closed unrecorded: a newer one delivered during it), 'given_up' (failed by
    its last resume, its deploy may still land)."""
    training_id = uuid.uuid4()
    await done(pool, training_id, NEWEST, "deployed", 600, how == "claimed")
    if how == "closed":
        await pool.execute("UPDATE trainings SET delivered_at = NULL, reason = 'a newer training of the deployment was"
                           " delivered during its delivery: not delivered' WHERE id = $1", training_id)
    elif how == "given_up":
        await pool.execute("UPDATE trainings SET outcome = 'failed', delivered_at = NULL, reason = 'DEPLOY_AUTO failed:"
                           " its delivery did not finish after 7 tries' WHERE id = $1", training_id)
    return training_id


async def challenge(pool, state: str) -> uuid.UUID:
    challenge_id = await decided(pool, "DEPLOY_AUTO") if state == "promoting" else uuid.uuid4()
    if state != "promoting":
        await pool.execute(
            "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample, state,"
            " evidence, decided_at) SELECT $1, deployment_id, workspace_id, champion, challenger, alpha, min_sample,"
            " $2, evidence, decided_at FROM challenges LIMIT 1", challenge_id, state)
    return challenge_id


async def test_a_sent_deploy_is_deleted_once_it_can_no_longer_matter(monitoring_schema, monkeypatch):
    """The resume sweep (DeliveryResumer) deletes a row SENT_SETTLED (1 h) after it was sent once its delivery or
    swap is settled for good (recorded, closed, superseded), and any row after the retention (the EVENTS stream's
    events_max_age); it keeps a settled one sent within the hour and, until the retention, every one whose delivery
    or swap a late deploy may still record (claimed, given up; decided, failed), whose event then still records it.
    Two processes pruning at once delete each row once; no retention (events kept for good) keeps them as long.
    Before, no row was ever deleted."""
    pool = monitoring_schema
    owners: dict[str, tuple[float, dict]] = {}  # name: (sent ago, its training or challenge)
    promoting = await challenge(pool, "promoting")  # continuous deployment (DEPLOY_AUTO) and a decided challenge
    for how in ("recorded", "claimed", "closed", "given_up"):
        owners[f"{how} delivery"] = (HOUR_AND_A_BIT, {"training_id": await training(pool, how)})
    owners["recorded delivery, just sent"] = (10, owners["recorded delivery"][1])
    owners["given_up delivery past the retention"] = (40 * 86400, {"training_id": await training(pool, "given_up")})
    for state in ("promoting", "failed", "promoted", "rolled_back", "superseded"):
        owners[f"{state} swap"] = (HOUR_AND_A_BIT, {
            "challenge_id": promoting if state == "promoting" else await challenge(pool, state)})
    versions = {name: str(index) for index, name in enumerate(owners)}  # each its own pipeline version
    for name, (ago, owner) in owners.items():
        await sent(pool, versions[name], ago, **owner)
    deps = process(pool)
    deps.sent_retention = 30 * 86400.0
    monkeypatch.setattr(continuous, "PRUNE_BATCH", 3)  # a sweep deletes at most this many: the rest at the next

    await continuous.DeliveryResumer(deps).sweep()
    assert await pool.fetchval("SELECT count(*) FROM sent_deploys") == len(owners) - 3
    pruned = await asyncio.gather(*(continuous.prune_sent_deploys(process(pool)) for _ in range(2)))
    assert sum(pruned) == 3  # the other 3 (two processes at once: each row once)
    assert await continuous.prune_sent_deploys(deps) == 0

    left = {r["pipeline_version"] for r in await pool.fetch("SELECT pipeline_version FROM sent_deploys")}
    assert {name for name, version in versions.items() if version in left} == {
        "claimed delivery", "given_up delivery", "recorded delivery, just sent", "promoting swap", "failed swap"}
    # what is kept still does its work: the given-up delivery's deploy lands, its event records it
    given_up = owners["given_up delivery"][1]["training_id"]
    assert await continuous.on_pipeline_deployed(deps, deployed(versions["given_up delivery"])) == 1
    assert await pool.fetchval("SELECT outcome FROM trainings WHERE id = $1", given_up) == "deployed"
    # past the retention: its row gone, a deploy landing that late is not recorded
    assert await continuous.on_pipeline_deployed(deps, deployed(versions["given_up delivery past the retention"])) == 0
    assert await continuous.prune_sent_deploys(deps) == 1  # the given-up one's, recorded now: settled
    # a stream keeping its events for good (events_max_age 0: no retention) keeps such a row as long
    await sent(pool, "old", 40 * 86400, training_id=await training(pool, "given_up"))
    forever = process(pool)
    forever.sent_retention = None
    assert await continuous.prune_sent_deploys(forever) == 0
    assert await continuous.prune_sent_deploys(deps) == 1


@pytest.mark.parametrize("case", ["both_land", "the_newer_delivery_recorded_already",
                                  "the_newer_swap_recorded_already"])
async def test_one_version_of_a_delivery_and_a_swap_is_recorded_in_the_order_they_were_sent(monitoring_schema,
                                                                                           monkeypatch, case):
    """A promotion's swap (v2 alone) and a DEPLOY_AUTO delivery of v2 (alone: the same definition, so the same
    pipeline version '2'), one sent a minute after the other; the delivery's row lies first in the table and in its
    index. The event naming '2' records them in the order they were sent, and never the older after the newer.

    both_land: the swap sent first, both unanswered: the swap is recorded, then the delivery (the newer command last;
    the training newer than the challenge). Before, the delivery came first and made the swap overtaken: left
    decided, its promotion never told though v2 served alone as it decided.
    the_newer_delivery_recorded_already: the delivery, sent after the swap (its training older than the challenge),
    was recorded by its own answer: the swap is not recorded after it but superseded with the reason, and its resume
    records nothing either. Before, it was recorded promoted, told after the newer delivery.
    the_newer_swap_recorded_already: the delivery (claimed) sent first, the swap sent after it and recorded: the
    delivery is closed unrecorded with the reason. Before, it was recorded deployed, told after the newer swap."""
    pool = monitoring_schema
    challenge_id = await decided(pool, "DEPLOY_AUTO")
    training_id = uuid.UUID(int=1)  # the smallest: first in sent_deploys_once's order
    await done(pool, training_id, CHALLENGER, "deployed", 600 if case == "the_newer_delivery_recorded_already" else 0,
               case == "the_newer_swap_recorded_already")
    if case == "both_land":
        await pool.execute("UPDATE trainings SET outcome = 'failed', delivered_at = NULL, reason = 'DEPLOY_AUTO"
                           " failed: its delivery did not finish after 7 tries' WHERE id = $1", training_id)
    if case == "the_newer_swap_recorded_already":
        await pool.execute("UPDATE challenges SET state = 'promoted' WHERE id = $1", challenge_id)
        await sent(pool, "2", 60, training_id=training_id)
        await sent(pool, "2", 0, challenge_id=challenge_id)
    else:
        await sent(pool, "2", 0, training_id=training_id)
        await sent(pool, "2", 60, challenge_id=challenge_id)

    # the deployer stood in, v2 (the challenger alone) serving: a resume of the swap would find its version serving
    # and record it (without it, the resume below failed on the missing deployer and could not record anything)
    deployer, deps = stand_in_deployer(pool, monkeypatch)
    deployer.person_deploys(continuous._serving(deployer.versions[1], CHALLENGER, None))
    recorded = await continuous.on_pipeline_deployed(deps, deployed("2"))
    challenge = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    training = await pool.fetchrow("SELECT outcome, reason, delivering_since, delivered_at FROM trainings WHERE id ="
                                   " $1", training_id)
    events = [(e["action"], e["model_version"]["version"]) for e in await swapped_events(pool)]
    if case == "both_land":
        assert (recorded, challenge["state"], training["outcome"]) == (2, "promoted", "deployed")
        assert events == [("promoted", "v2"), ("deployed", "v2")]
    elif case == "the_newer_delivery_recorded_already":
        assert (recorded, challenge["state"], events) == (0, "superseded", [])
        assert challenge["reason"] == ("promote decided, but a newer command that carried the same pipeline version was"
                                       " recorded first: not recorded")
        await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                           challenge_id, continuous.STALE_SWAP + 10)
        await continuous.resume_swaps(deps)  # nothing left to resume
        assert await swapped_events(pool) == [] and deployer.deploys == []
    else:
        assert (recorded, events) == (0, [])
        assert (training["delivering_since"], training["delivered_at"]) == (None, None), dict(training)
        assert training["reason"] == ("a newer command that carried the same pipeline version was recorded first: not"
                                      " delivered")


@pytest.mark.parametrize("older", ["swap", "delivery"])
async def test_a_recorded_row_is_kept_while_an_older_one_of_its_version_may_still_be_recorded(monitoring_schema,
                                                                                           older):
    """One pipeline version ('2') carried by a swap and a DEPLOY_AUTO delivery, both sent more than SENT_SETTLED
    ago: the older one given up (failed, its late deploy may still record it: kept for the retention), the newer
    one recorded (settled). The newer row is what keeps the older from being recorded after it
    (on_pipeline_deployed's _newer_recorded), so the prune keeps it as long as the older row: an event naming '2'
    after the prune (a dead letter replayed, the same definition deployed again, hours later) still records
    nothing, and once the older row is gone (the retention) the newer one goes at the next prune. Before, the
    newer row was deleted an hour after its send and that event recorded the older command over the newer one
    (the swap promoted after the newer delivery, or the delivery deployed after the newer swap)."""
    pool = monitoring_schema
    challenge_id = await decided(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    # the delivery's training older than the challenge: only the rows' order tells which command is the newer one
    await done(pool, training_id, CHALLENGER, "deployed", 600, older == "delivery")
    if older == "swap":  # its last resume gave up; the delivery sent after it was recorded by its own answer
        await pool.execute("UPDATE challenges SET state = 'failed', reason = 'promote decided, but its swap did not"
                           " finish after 7 tries' WHERE id = $1", challenge_id)
        await sent(pool, "2", HOUR_AND_A_BIT + 60, challenge_id=challenge_id)
        await sent(pool, "2", HOUR_AND_A_BIT, training_id=training_id)
    else:  # the delivery given up; the swap sent after it recorded (promoted)
        await pool.execute("UPDATE trainings SET outcome = 'failed', delivering_since = NULL, reason = 'DEPLOY_AUTO"
                           " failed: its delivery did not finish after 7 tries' WHERE id = $1", training_id)
        await pool.execute("UPDATE challenges SET state = 'promoted' WHERE id = $1", challenge_id)
        await sent(pool, "2", HOUR_AND_A_BIT + 60, training_id=training_id)
        await sent(pool, "2", HOUR_AND_A_BIT, challenge_id=challenge_id)
    deps = process(pool)
    deps.sent_retention = 30 * 86400.0

    assert await continuous.prune_sent_deploys(deps) == 0  # both kept: the older may be recorded, the newer guards it
    assert await continuous.on_pipeline_deployed(deps, deployed("2")) == 0
    assert await swapped_events(pool) == []
    if older == "swap":
        assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "failed"
    else:
        assert await pool.fetchval("SELECT outcome FROM trainings WHERE id = $1", training_id) == "failed"
    # the older one's retention passed: its row goes, then the newer one's (settled, nothing older left to guard)
    await pool.execute("UPDATE sent_deploys SET sent_at = now() - interval '31 days' WHERE COALESCE(training_id,"
                       " challenge_id) = $1", challenge_id if older == "swap" else training_id)
    assert await continuous.prune_sent_deploys(deps) == 1
    assert await continuous.prune_sent_deploys(deps) == 1
    assert await pool.fetchval("SELECT count(*) FROM sent_deploys") == 0


@pytest.mark.parametrize("older", ["swap", "delivery"])
async def test_a_given_up_command_whose_newer_one_was_recorded_first_is_not_recorded_by_its_one_more_look(
        monitoring_schema, monkeypatch, older):
    """As the_newer_*_recorded_already above, the older command given up by its last resume (failed, its one more look
    due STALE_SWAP later): the event naming '2' leaves it failed, and its one more look (look_again_at_given_up_swaps
    / look_again_at_given_up), finding v2 (the challenger alone) serving, does not record it either: '2' serves
    because the newer command's deploy landed, and that one is recorded. Before, the event left the failure, the
    look then recorded the older command after the newer one (promoted after the newer delivery, or deployed after
    the newer swap), which the event's handling had just declined to do."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch)
    challenge_id = await decided(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    await done(pool, training_id, CHALLENGER, "deployed", 600, older == "delivery")  # older than the challenge
    if older == "swap":  # given up by its last resume; the delivery sent after it recorded by its own answer
        await pool.execute(
            "UPDATE challenges SET state = 'failed', swap_resumes = $2, reason = 'promote decided, but its swap did not"
            " finish after 6 tries, 300 s apart: given up' WHERE id = $1", challenge_id, continuous.MAX_RESUMES + 1)
        await make_stale(pool, "challenges", "decided_at", challenge_id)
        await sent(pool, "2", 60, challenge_id=challenge_id)
        await sent(pool, "2", 0, training_id=training_id)
    else:  # the delivery given up by its last resume; the swap sent after it recorded (promoted)
        await pool.execute(
            "UPDATE trainings SET outcome = 'failed', delivering_since = NULL, delivery_resumes = $2, reason ="
            " 'DEPLOY_AUTO failed: its delivery did not finish after 6 tries, 300 s apart: given up' WHERE id = $1",
            training_id, continuous.MAX_RESUMES + 1)
        await make_stale(pool, "trainings", "updated_at", training_id)
        await pool.execute("UPDATE challenges SET state = 'promoted' WHERE id = $1", challenge_id)
        await sent(pool, "2", 60, training_id=training_id)
        await sent(pool, "2", 0, challenge_id=challenge_id)
    deployer.person_deploys(continuous._serving(deployer.versions[1], CHALLENGER, None))  # v2 alone serves

    assert await continuous.on_pipeline_deployed(deps, deployed("2")) == 0
    await continuous.resume_swaps(deps)  # the one more look at a given-up swap
    await continuous.resume_deliveries(deps)  # and at a given-up delivery
    assert await swapped_events(pool) == []
    if older == "swap":
        assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "failed"
    else:
        assert await pool.fetchval("SELECT outcome FROM trainings WHERE id = $1", training_id) == "failed"
    assert deployer.deploys == []  # nothing deployed either


@pytest.mark.parametrize("older", ["swap", "delivery"])
async def test_an_older_command_resumed_after_its_newer_one_was_recorded_is_not_recorded(monitoring_schema,
                                                                                        monkeypatch, older):
    """The older command's first deploy of v2 (the challenger alone) unanswered; the newer command (sent after it,
    the same version) recorded by its own answer, v2 serving; then, before any event, the older one's resume
    (STALE_SWAP later) looks, finds v2 serving and would record it as its swap or delivery done. It is closed as
    on_pipeline_deployed closes it (the swap superseded, the delivery closed unrecorded, with the reason), not
    recorded after the newer one. Before, only the event's handling checked for the newer record: the resume
    recorded the older command last (promoted after the newer delivery, deployed after the newer swap)."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch, 1)
    challenge_id = await decided(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    if older == "swap":
        await continuous._apply_decision(deps, await pool.fetchrow("SELECT * FROM challenges WHERE id = $1",
                                                                    challenge_id), "promoting", evidence())
        # the delivery (its training older than the challenge) sent after it and recorded: v2 serves
        await done(pool, training_id, CHALLENGER, "deployed", 600, False)
        await sent(pool, "2", 0, training_id=training_id)
        await make_stale(pool, "challenges", "decided_at", challenge_id)
    else:
        await done(pool, training_id, CHALLENGER, "deployed", 600, True)
        assert not await continuous._deliver(deps, await pool.fetchrow("SELECT * FROM trainings WHERE id = $1",
                                                                       training_id), "DEPLOY_AUTO")
        await pool.execute("UPDATE challenges SET state = 'promoted' WHERE id = $1", challenge_id)
        await sent(pool, "2", 0, challenge_id=challenge_id)
        await make_stale(pool, "trainings", "delivering_since", training_id)
    assert deployer.deploys == [(2, 1, "unanswered")]
    deployer.serving = 2  # the newer command's deploy landed

    await continuous.resume_swaps(deps)
    await continuous.resume_deliveries(deps)
    assert await swapped_events(pool) == []
    assert deployer.deploys == [(2, 1, "unanswered")]  # nothing deployed: v2 serves
    reason = "a newer command that carried the same pipeline version was recorded first"
    if older == "swap":
        row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
        assert (row["state"], row["reason"]) == ("superseded", f"promote decided, but {reason}: not recorded")
    else:
        row = await pool.fetchrow("SELECT delivering_since, delivered_at, reason FROM trainings WHERE id = $1",
                                  training_id)
        assert (row["delivering_since"], row["delivered_at"], row["reason"]) == (None, None,
                                                                                f"{reason}: not delivered")
