"""A continuous-deployment deploy the deployer refuses with 409 deploy_in_progress (it waited behind another deploy
of the pipeline past the deployer's lock wait, handlers.deploy_lock_wait: nothing of it made) is not done yet, as an
unanswered deploy is (services/monitoring/continuous.py DeployHeldUp): the delivery stays claimed, the challenge
decided, and the resume STALE_SWAP later makes it. Before, only 409 serving_changed was handled and this one failed
the delivery / the swap for good; before the deployer bounded that wait (56a6ff5), the same deploy went unanswered
(DeployUnanswered) and was resumed.

A deploy the deployer answers 503 unavailable (its database failed or did not answer the deploy's steps, 33bf5e5:
nothing of it runs, or a redeploy's record it could not confirm, rechecked in the background; or the deployer is not
running) is not done yet either (DeployUnavailable): before, it failed the delivery / the swap for good, where a
database that did not answer used to leave the deploy unanswered and resumed. So is a 503 deploy_out_of_time (the
deploy's replicas could not be ready within what its caller waits, nothing of it made), whose WARNING names that code
and the deployer's message (it blamed the deployer's database for every 503).

Runs the service's functions on a monitoring schema of this test's, the deployer stood in (continuous_setups'
Deployer, which refuses its first `held_up`, `unavailable` or `out_of_time` deploys so)."""

from __future__ import annotations

import pytest

from services.monitoring import continuous
from tests.integration.continuous_setups import (
    DEPLOYMENT,
    make_stale,
    promotion_unanswered,
    schema_fixture,
    stale_row,
    stand_in_deployer,
    swapped_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_deploy_held_up")


NOT_DONE = {  # how the deployer refuses the first deploy -> what the WARNING says became of it (continuous._not_done)
    "held_up": "held up behind another deploy of the pipeline: nothing of it made",
    "unavailable": "was refused 503 unavailable for now",
    # its replicas could not be ready in the time the caller waits: the WARNING names that code and the deployer's
    # message, not the database (it said "the deployer's database, or the deployer, away" for every 503)
    "out_of_time": "was refused 503 deploy_out_of_time for now (the deploy of pipeline 5 ran out of time",
}


def not_done_logged(caplog, refusal: str) -> bool:
    """The WARNING says what became of the deploy (not 'it may still be served', an unanswered one's)."""
    return any(r.levelname == "WARNING" and NOT_DONE[refusal] in r.getMessage() and "may still be served" not in
               r.getMessage() for r in caplog.records)


refusals = pytest.mark.parametrize("refusal", list(NOT_DONE))


@refusals
async def test_a_swap_whose_deploy_was_held_up_is_made_at_its_resume(monitoring_schema, monkeypatch, caplog,
                                                                    refusal):
    """A promotion's swap (v2 alone) refused with deploy_in_progress: the challenge stays decided (was failed, 'the
    swap failed: another deploy ... under way'), then its resume makes it: promoted, told once."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch)
    setattr(deployer, refusal, 1)
    challenge_id = await promotion_unanswered(pool, deps)
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert (row["state"], row["reason"]) == ("promoting", None), dict(row)
    assert deployer.deploys == [(2, 1, refusal)] and deployer.serves() == ("v1", "v2")
    assert await swapped_events(pool) == []
    assert not_done_logged(caplog, refusal)

    await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                       challenge_id, continuous.STALE_SWAP + 10)
    await continuous.resume_swap(deps, DEPLOYMENT)
    assert deployer.deploys == [(2, 1, refusal), (2, 1, "served")] and deployer.serves() == ("v2", None)
    assert (await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id)) == "promoted"
    assert [e["action"] for e in await swapped_events(pool)] == ["promoted"]


@refusals
async def test_a_delivery_whose_deploy_was_held_up_is_made_at_its_resume(monitoring_schema, monkeypatch, caplog,
                                                                        refusal):
    """A DEPLOY_AUTO delivery (v3) refused with deploy_in_progress stays claimed (was failed: 'DEPLOY_AUTO failed:
    another deploy ... under way'), then the next resume serves it: delivered, told once."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch)
    setattr(deployer, refusal, 1)
    training_id = await stale_row(pool, "delivery")
    await make_stale(pool, "trainings", "delivering_since", training_id)
    await continuous.resume_deliveries(deps)
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since, delivered_at FROM trainings WHERE id = $1",
                              training_id)
    assert (row["outcome"], row["reason"], row["delivered_at"]) == ("deployed", None, None), dict(row)
    assert row["delivering_since"] is not None  # still claimed: the resume's to make
    assert not_done_logged(caplog, refusal)
    assert deployer.deploys == [(2, 1, refusal)] and deployer.serves() == ("v1", "v2")

    await make_stale(pool, "trainings", "delivering_since", training_id)
    await continuous.resume_deliveries(deps)
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since, delivered_at FROM trainings WHERE id = $1",
                              training_id)
    assert (row["outcome"], row["reason"], row["delivering_since"]) == ("deployed", None, None), dict(row)
    assert row["delivered_at"] is not None
    assert deployer.deploys == [(2, 1, refusal), (2, 1, "served")] and deployer.serves() == ("v3", None)
    assert [e["action"] for e in await swapped_events(pool)] == ["deployed"]
