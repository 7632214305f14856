"""A continuous-deployment delivery, or a challenge's swap, its last resume gave up on (past MAX_RESUMES, migration
022) whose last deploy lands later still is recorded as delivered / swapped at the resume sweep STALE_SWAP after the
failure (services/monitoring/continuous.py look_again_at_given_up, look_again_at_given_up_swaps; docs/monitoring.md).
Before, it stayed failed while its version served, and under DEPLOY_AUTO the old challenge stayed running with no
shadow left to pair.

Runs the service's functions on a monitoring schema of this test's, the deployer stood in (test_monitoring_swap_race's
Deployer, with its deploy precondition)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest

from services.monitoring import continuous
from shared import subjects
from shared.errors import UpstreamTimeout
from tests.integration.continuous_setups import (
    CHALLENGER,
    CHAMPION,
    DEPLOYMENT,
    NEWEST,
    Deployer,
    continuous_deployment,
    done,
    make_stale,
    promotion_unanswered,
    schema_fixture,
    stale_row,
    stand_in_deployer,
    swapped_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_given_up")
HELD_UP_BY = "504 upstream_timeout: deployer did not answer within 305s"
"""What held each try up (the stand-in deployer's UpstreamTimeout), as noted (migration 027)."""
HELD_UP = f"; its last held-up try met {HELD_UP_BY}"
"""The end of a give-up's reason when every try's deploy went unanswered."""


async def shown(pool, record: str) -> dict:
    """retrieve_information's `continuous.<record>` (last_training, challenge) as it is sent."""
    return (await continuous.information(pool, DEPLOYMENT)).model_dump(mode="json")[record]


@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
@pytest.mark.parametrize("lands", [True, False], ids=["lands_after_the_give_up", "never"])
async def test_a_given_up_delivery_whose_deploy_lands_later_is_recorded_delivered(monitoring_schema, monkeypatch,
                                                                                  caplog, lands, policy):
    """A delivery (v3) whose deploys all went unanswered is failed by its last resume; then its last deploy lands
    (or never does). The resume sweep STALE_SWAP after the failure looks once more: v3 serving, the training is
    recorded delivered (DEPLOY_AUTO: v3 alone, the old challenge superseded; DEPLOY_SHADOW: v3 the shadow, its
    challenge opened in the old one's place), told once; not serving, nothing changes, and the look does not log
    the failure at WARNING again (the give-up did: before, _delivery_failed logged it whether or not it wrote it).
    Nothing is deployed."""
    pool = monitoring_schema
    await continuous_deployment(pool, policy)
    older, training_id, challenge_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await done(pool, older, CHALLENGER, "shadow", 600, False)
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha,"
        " min_sample, state) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'running')", challenge_id, DEPLOYMENT, older,
        json.dumps(CHAMPION), json.dumps(CHALLENGER))
    await done(pool, training_id, NEWEST, "deployed" if policy == "DEPLOY_AUTO" else "shadow", 100, True)
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    for taken in range(continuous.MAX_RESUMES + 1):  # every resume's deploy unanswered, then the last look: given up
        await make_stale(pool, "trainings", "delivering_since", training_id)
        await continuous.resume_deliveries(deps)
        if taken == 0:  # left for the next resume: what held it up shown while it is (before, at the give-up only)
            assert (await shown(pool, "last_training"))["delivery_held_up"] == HELD_UP_BY
    row = await pool.fetchrow("SELECT outcome, reason FROM trainings WHERE id = $1", training_id)
    assert row["outcome"] == "failed" and "did not finish after" in row["reason"], dict(row)
    # what held its tries up, in the reason users read (migration 027; before, in the WARNING log only)
    assert row["reason"].endswith(HELD_UP), row["reason"]
    assert "delivery_held_up" not in await shown(pool, "last_training")  # ended: its reason says it
    deploys = list(deployer.deploys)

    await continuous.resume_deliveries(deps)  # too soon after the give-up: not looked at again yet
    assert (await pool.fetchval("SELECT outcome FROM trainings WHERE id = $1", training_id)) == "failed"
    if lands:
        deployer.serving = 2  # the last unanswered deploy (v3) lands after the give-up's look
    await pool.execute("UPDATE trainings SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.STALE_SWAP + 10)
    caplog.clear()
    with caplog.at_level("INFO", logger="railyard.monitoring.continuous"):
        for _ in range(2):  # looked at once
            await continuous.resume_deliveries(deps)
    failure_logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
                      and f"training {training_id} failed" in r.getMessage()]
    assert failure_logged == []  # the give-up logged it; the look wrote nothing

    assert deployer.deploys == deploys  # nothing deployed by the look
    row = await pool.fetchrow("SELECT outcome, reason, delivered_at, delivering_since, delivery_held_up FROM trainings"
                              " WHERE id = $1", training_id)
    challenge = await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id)
    assert row["delivering_since"] is None
    # recorded delivered: its note cleared by that record's statement (before, kept for good); failed: kept, unshown
    assert row["delivery_held_up"] == (None if lands else HELD_UP_BY)
    assert "delivery_held_up" not in await shown(pool, "last_training")
    if lands:
        auto = policy == "DEPLOY_AUTO"
        assert deployer.serves() == (("v3", None) if auto else ("v1", "v3"))
        assert (row["outcome"], row["reason"]) == ("deployed" if auto else "shadow", None), dict(row)  # was failed
        assert row["delivered_at"] is not None
        assert challenge == "superseded"  # was running, its challenger no longer served
        assert [e["action"] for e in await swapped_events(pool)] == ["deployed" if auto else "shadow_set"]
        opened = await pool.fetchval("SELECT count(*) FROM challenges WHERE training_id = $1 AND state = 'running'",
                                     training_id)
        assert opened == (0 if auto else 1)
    else:
        assert deployer.serves() == ("v1", "v2")
        assert row["outcome"] == "failed" and "did not finish after" in row["reason"], dict(row)
        assert challenge == "running"  # its champion and challenger still serve
        assert await swapped_events(pool) == []


@pytest.mark.parametrize("since", ["lands_after_the_give_up", "never", "a_person_s_deploy", "a_newer_delivery"])
async def test_a_given_up_swap_whose_deploy_lands_later_is_recorded_promoted(monitoring_schema, monkeypatch, since):
    """A promotion whose swap's deploys all went unanswered is failed by its last resume; then its last deploy (v2
    alone) lands, or never does, or something else serves since (a person's deploy of v5; a newer training's
    delivery, recorded: v1 shadowed by v3). The resume sweep STALE_SWAP later looks once more: v2 alone serving, the
    challenge is promoted after all, told once; anything else leaves it failed with its give-up's reason. Nothing
    is deployed. Before (fce651b), the look closed it 'superseded' when something else served (the swap's
    ServingChanged), or when a newer delivery was recorded, with a reason saying that newer one was served again
    after its swap, minutes after its failure had been recorded."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    challenge_id = await promotion_unanswered(pool, deps)
    assert (await shown(pool, "challenge"))["swap_held_up"] == HELD_UP_BY  # its first try's, left for the resume
    for _ in range(continuous.MAX_RESUMES + 1):
        await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                           challenge_id, continuous.STALE_SWAP + 10)
        await continuous.resume_swap(deps, DEPLOYMENT)
    assert (await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id)) == "failed"
    assert "swap_held_up" not in await shown(pool, "challenge")  # ended: its reason says it

    await continuous.resume_swaps(deps)  # too soon after the give-up
    given_up = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert given_up["state"] == "failed"
    assert given_up["reason"].endswith(HELD_UP), given_up["reason"]  # migration 027
    serving = {"lands_after_the_give_up": ("v2", None), "never": ("v1", "v2"), "a_person_s_deploy": ("v5", None),
               "a_newer_delivery": ("v1", "v3")}[since]
    if since == "lands_after_the_give_up":
        deployer.serving = 2  # the last unanswered deploy (v2 alone) lands after the give-up's look
    elif since == "a_person_s_deploy":
        deployer.person_deploys(Deployer.model({"name": "digits", "version": "v5", "sha": "e"}))
    elif since == "a_newer_delivery":
        await done(pool, uuid.uuid4(), NEWEST, "shadow", 0, False)  # recorded (delivered_at)
        deployer.person_deploys(Deployer.model(CHAMPION, NEWEST))  # what that delivery served
    deploys = list(deployer.deploys)
    await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                       challenge_id, continuous.STALE_SWAP + 10)
    for _ in range(2):  # looked at once
        await continuous.resume_swaps(deps)

    assert deployer.deploys == deploys  # nothing deployed by the look
    assert deployer.serves() == serving
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    held_up = await pool.fetchval("SELECT swap_held_up FROM challenges WHERE id = $1", challenge_id)
    if since == "lands_after_the_give_up":
        assert row["state"] == "promoted", dict(row)  # was failed while v2 served alone
        assert held_up is None  # cleared by the statement that records it (before, kept for good)
        assert [e["action"] for e in await swapped_events(pool)] == ["promoted"]
    else:  # was 'superseded' for a person's deploy or a newer delivery
        assert dict(row) == dict(given_up), dict(row)
        assert "did not finish after" in row["reason"]
        assert await swapped_events(pool) == []


async def test_a_newer_delivery_during_the_look_at_a_given_up_one_leaves_its_failure_as_it_was(monitoring_schema,
                                                                                               monkeypatch):
    """A delivery (v3) given up by its last resume is looked at once more; another process delivers a newer training
    (v4) between that look's claim and its check (_still_due): the look stops there, and the given-up training keeps
    its outcome and reason. Before, the check closed it as a delivery under way ('a newer training of the deployment
    was delivered during its delivery: not delivered'), over the give-up's reason, which says the deployer may still
    serve its last deploy."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    await done(pool, training_id, NEWEST, "deployed", 100, True)
    deployer = Deployer(Deployer.model(CHAMPION))
    deployer.install(monkeypatch)
    deployer.unanswered = 100
    deps = Deployer.process(pool)
    for _ in range(continuous.MAX_RESUMES + 1):
        await make_stale(pool, "trainings", "delivering_since", training_id)
        await continuous.resume_deliveries(deps)
    given_up = await pool.fetchrow("SELECT outcome, reason, delivering_since, delivered_at FROM trainings WHERE id ="
                                   " $1", training_id)
    assert given_up["outcome"] == "failed" and "did not finish after" in given_up["reason"], dict(given_up)
    await pool.execute("UPDATE trainings SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.STALE_SWAP + 10)
    looked = continuous.act_as

    async def newer_delivered_meanwhile(*args):  # the look's first step after its claim
        monkeypatch.setattr(continuous, "act_as", looked)
        await done(pool, uuid.uuid4(), {"name": "digits", "version": "v4", "sha": "d"}, "deployed", 0, True)
        return await looked(*args)

    monkeypatch.setattr(continuous, "act_as", newer_delivered_meanwhile)
    deploys = list(deployer.deploys)
    await continuous.look_again_at_given_up(deps)

    assert continuous.act_as is looked  # the look was made (claimed)
    assert deployer.deploys == deploys
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since, delivered_at FROM trainings WHERE id = $1",
                              training_id)
    assert dict(row) == dict(given_up), dict(row)  # was reason 'a newer training ... during its delivery: not ...'
    assert await swapped_events(pool) == []


@contextlib.asynccontextmanager
async def deploy_under_way(deps: continuous.ContinuousDeps, monkeypatch):
    """A delivery or swap of this process under way on the deployment: its lock held and its _serve (the real one)
    waiting for the deployer's answer to its deploy, held until the block ends (then unanswered)."""
    held, release = asyncio.Event(), asyncio.Event()
    answer = continuous.request

    async def request(broker, subject, cmd, **kwargs):
        if subject == subjects.DEPLOYER_PIPELINES_DEPLOY and not held.is_set():
            held.set()
            await release.wait()
            raise UpstreamTimeout("deployer did not answer within 305s")
        return await answer(broker, subject, cmd, **kwargs)

    monkeypatch.setattr(continuous, "request", request)
    async with deps.lock(DEPLOYMENT):
        serving = asyncio.create_task(continuous._serve(deps, uuid.uuid4(), 1, f"d-{DEPLOYMENT}",
                                                        {**CHAMPION, "version": "9"}, None, "a delivery under way"))
        await asyncio.wait_for(held.wait(), 10)
        try:
            yield
        finally:
            release.set()
            with pytest.raises(continuous.DeployUnanswered):
                await serving
            monkeypatch.setattr(continuous, "request", answer)


def resumed(what: str) -> tuple[str, tuple[str, ...], str, object]:
    """The table, its stale columns, its resume count and the sweep, for a delivery or a swap."""
    if what == "delivery":
        return "trainings", ("delivering_since", "updated_at"), "delivery_resumes", continuous.resume_deliveries
    return "challenges", ("decided_at",), "swap_resumes", continuous.resume_swaps


@pytest.mark.parametrize("what", ["delivery", "swap"])
async def test_the_resume_sweep_leaves_a_deployment_under_way_here_for_its_next_look(monitoring_schema, monkeypatch,
                                                                                     what):
    """While this process delivers or swaps on the deployment (its in-process lock held: a deploy waited for up to
    deploy_wait, 305 s), the resume sweep neither waits for it nor claims its stale delivery / decided swap: each
    resume, the give-up and the one more look after it are left unclaimed and made at the next sweep once the lock
    is free. Before, the sweep claimed them and waited on the lock, holding every deployment after them (and the
    swaps' sweep, and the next sweep) back behind that deploy: with the lock held, the sweep did not end in 10 s."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    row_id = await stale_row(pool, what)
    table, stale, count, sweep = resumed(what)

    for taken in range(continuous.MAX_RESUMES + 2):  # the resumes, the give-up, then the one more look
        for column in stale:
            await make_stale(pool, table, column, row_id)
        async with deploy_under_way(deps, monkeypatch):  # a delivery or swap of this process under way on it
            await asyncio.wait_for(sweep(deps), 10)
            assert await pool.fetchval(f"SELECT {count} FROM {table} WHERE id = $1", row_id) == taken  # not claimed
        await sweep(deps)  # the next sweep, the lock free
        assert await pool.fetchval(f"SELECT {count} FROM {table} WHERE id = $1", row_id) == taken + 1
    state = await pool.fetchval(f"SELECT {'outcome' if what == 'delivery' else 'state'} FROM {table} WHERE id = $1",
                                row_id)
    assert state == "failed"  # given up, looked at once more: nothing ever served


@pytest.mark.parametrize("what", ["delivery", "swap"])
async def test_the_resume_sweep_waits_for_a_lock_held_without_a_deploy(monitoring_schema, monkeypatch, what):
    """The deployment's lock held by something short (a review's trigger check or sequential test, a training's
    advance: a transaction or two; 2 s here) is no deploy under way: the sweep waits for it and resumes the stale
    delivery / decided swap at this look. Before (303d780's busy(): every deployment whose lock was held at that
    moment), it was skipped for the next sweep, 30 s later, and a deployment whose reviews kept coming, its lock held
    most of the time, was skipped sweep after sweep."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    row_id = await stale_row(pool, what)
    table, stale, count, sweep = resumed(what)
    for column in stale:
        await make_stale(pool, table, column, row_id)

    taken, release = asyncio.Event(), asyncio.Event()

    async def trigger_check() -> None:  # a review's: the lock for a moment, no deploy
        async with deps.lock(DEPLOYMENT):
            taken.set()
            await release.wait()

    holder = asyncio.create_task(trigger_check())
    await taken.wait()
    sweeping = asyncio.create_task(sweep(deps))
    await asyncio.wait({sweeping}, timeout=2)  # it waits for the lock (303d780's skipped it and ended at once)
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, sweeping), 30)
    assert await pool.fetchval(f"SELECT {count} FROM {table} WHERE id = $1", row_id) == 1  # was 0: left for later
