"""A challenge's swap (promotion, roll-back) and a delivery whose deploy went unanswered do not leave an older
version serving over a newer delivery, and a swap auth refused for the owner is made once continuous deployment is
on again (services/monitoring/continuous.py: _apply_decision, _swap_overtaken, newest_delivered, DeployUnanswered,
redo_refused_swap; docs/monitoring.md).

Runs the service's functions on a monitoring schema of this test's (its migrations) on the stack's PostgreSQL, the
owner's token, the deployment's look-ups and the deploy replaced by stand-ins the test drives (as
test_continuous_swap_once does)."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace

import pytest

from services.monitoring import continuous
from shared.errors import NotFound, Unavailable
from shared.messages.monitoring_continuous import ToggleContinuous
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
    process,
    promotion_unanswered,
    schema_fixture,
    stand_in_deployer,
    swapped_events,
)
from tests.integration.test_continuous_swap_once import deliver_with

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

monitoring_schema = schema_fixture("monitoring_swap_race")


@pytest.mark.parametrize("policy", ["DEPLOY_AUTO", "DEPLOY_SHADOW"])
async def test_a_newer_delivery_during_a_promotion_swap_is_served_after_it(monitoring_schema, monkeypatch, policy):
    """Training 1's challenge (v1 shadowed by v2) is decided (promote) and its swap deploys v2 alone; while that
    deploy runs, another process delivers training 2 (v3), newer, whose deploy ends first. Before, the swap then
    ended with v2 serving alone in v3's place, recorded and told ('promoted'). Now its record finds the newer
    delivery: the swap is not recorded (no event of its own), v3 is served again after it (DEPLOY_AUTO: v3 alone;
    DEPLOY_SHADOW: v3 the shadow again), and the challenge is closed as superseded."""
    pool = monitoring_schema
    await continuous_deployment(pool, policy)
    older, newer = uuid.uuid4(), uuid.uuid4()
    await done(pool, older, CHALLENGER, "shadow", 600, False)
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha, min_sample,"
        " state, evidence, decided_at) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'promoting', $6, now())",
        challenge_id, DEPLOYMENT, older, json.dumps(CHAMPION), json.dumps(CHALLENGER),
        json.dumps(evidence().as_dict()))
    serving = {"model": CHAMPION, "shadow": CHALLENGER}
    serves: list[str] = []
    first, other = process(pool), process(pool)

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        served = (challenger or champion)["version"]
        serves.append(served)
        if deps is first and len(serves) == 1:  # training 2 ends and the other process delivers it meanwhile
            await done(pool, newer, NEWEST, "deployed" if policy == "DEPLOY_AUTO" else "shadow", 100, True)
            await continuous._deliver(other, await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", newer),
                                      policy)
        serving.update(model=champion, shadow=challenger)
        return str(len(serves))

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(first, challenge, "promoting", evidence())

    assert serves == ["v2", "v3", "v3"]
    shadow = serving["shadow"] and serving["shadow"]["version"]
    if policy == "DEPLOY_AUTO":
        assert (serving["model"]["version"], shadow) == ("v3", None)  # not v2
    else:
        assert shadow == "v3"  # the newer challenger under test, not v2 alone
        # with the champion of training 2's challenge (v1, what its delivery served), not the swap's v2: served
        # with v2, that challenge's pairs (v1 vs v3) were never made, and it could never decide
        opened = await pool.fetchrow("SELECT champion, challenger FROM challenges WHERE training_id = $1 AND state ="
                                     " 'running'", newer)
        assert (json.loads(opened["champion"])["version"], json.loads(opened["challenger"])["version"]) == ("v1", "v3")
        assert serving["model"]["version"] == "v1", serving
    events = await swapped_events(pool)
    assert [e["action"] for e in events] == ["deployed" if policy == "DEPLOY_AUTO" else "shadow_set"], events
    assert str(newer) in events[0]["reason"]
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert row["state"] == "superseded", dict(row)


async def test_a_swap_without_a_newer_delivery_is_recorded_once(monitoring_schema, monkeypatch):
    """The check does not stop a swap nothing overtook: promoted and told once."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    older = uuid.uuid4()
    await done(pool, older, CHALLENGER, "shadow", 600, False)
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha, min_sample,"
        " state, evidence, decided_at) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'promoting', $6, now())",
        challenge_id, DEPLOYMENT, older, json.dumps(CHAMPION), json.dumps(CHALLENGER),
        json.dumps(evidence().as_dict()))
    serving = {"model": CHAMPION, "shadow": CHALLENGER}

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serving.update(model=champion, shadow=challenger)
        return "5"

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(process(pool), challenge, "promoting", evidence())
    assert (serving["model"]["version"], serving["shadow"]) == ("v2", None)
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoted"
    assert [e["action"] for e in await swapped_events(pool)] == ["promoted"]


async def test_a_delivery_whose_deploy_went_unanswered_is_looked_at_again_and_not_left_serving_over_a_newer_one(
        monitoring_schema, monkeypatch):
    """Training 1's deploy of v2 (DEPLOY_AUTO) goes unanswered in time (DeployUnanswered); training 2 (v3), newer,
    is delivered and served; then the deployer, which kept going, serves v2 after all. Before, training 1 was
    recorded as failed at the timeout (its claim cleared) and nothing undid the late v2: it served in v3's place for
    good. Now training 1 stays claimed; resume_deliveries, STALE_SWAP later, finds the newer delivery and v2
    serving, and serves v3 again; training 1 is closed with the reason (not 'failed')."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, newer = uuid.uuid4(), uuid.uuid4()
    await done(pool, older, CHALLENGER, "deployed", 600, True)
    serving = {"model": CHAMPION, "shadow": None}
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append(champion["version"])
        if len(serves) == 1:
            raise continuous.DeployUnanswered("deployer did not answer within 305s")
        serving.update(model=champion, shadow=challenger)
        return str(len(serves))

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    await continuous._deliver(process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", older),
                              "DEPLOY_AUTO")
    row = await pool.fetchrow("SELECT outcome, delivering_since FROM trainings WHERE id = $1", older)
    assert row["outcome"] == "deployed" and row["delivering_since"] is not None, dict(row)  # left claimed

    await done(pool, newer, NEWEST, "deployed", 100, True)
    await continuous._deliver(process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", newer),
                              "DEPLOY_AUTO")
    assert serving["model"]["version"] == "v3"
    serving["model"] = CHALLENGER  # the unanswered deploy of v2 lands now
    await pool.execute("UPDATE trainings SET delivering_since = now() - make_interval(secs => $2) WHERE id = $1",
                       older, continuous.STALE_SWAP + 10)
    await continuous.resume_deliveries(process(pool))

    assert serves == ["v2", "v3", "v3"]
    assert serving["model"]["version"] == "v3"
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", older)
    assert row["delivering_since"] is None and row["outcome"] == "deployed", dict(row)
    assert "a newer training of the deployment was delivered since" in row["reason"]
    assert len(await swapped_events(pool)) == 1  # training 2's


async def test_a_swap_refused_for_the_owner_is_made_when_continuous_deployment_is_turned_on_again(
        monitoring_schema, monkeypatch):
    """A promotion's swap refused for the owner (auth refused their token): the challenge fails and continuous
    deployment is suspended. Before, turning it on again (the owner back) lifted the suspension but left the
    decision unmade: v1 went on serving with v2 as its shadow though the test had promoted v2. Now the refused
    decision is made then (in the background of the toggle): v2 serves alone, the challenge is promoted and told."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample, state,"
        " evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now())", challenge_id,
        DEPLOYMENT, json.dumps(CHAMPION), json.dumps(CHALLENGER), json.dumps(evidence().as_dict()))
    serving = {"model": CHAMPION, "shadow": CHALLENGER}
    refused = [True]

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        if refused[0]:
            raise continuous.OwnerRefused("the task's owner is no longer a member of workspace 1")
        serving.update(model=champion, shadow=challenger)
        return "6"

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    deps = process(pool)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(deps, challenge, "promoting", evidence())
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "failed"
    assert (await continuous.information(pool, DEPLOYMENT)).deployment.active is False

    looked_up = continuous.handlers._deployment

    async def deployment(base, principal, token, name):
        view = await looked_up(base, principal, token, name)
        view.route = SimpleNamespace(deployment_id=DEPLOYMENT)
        return view

    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    refused[0] = False  # the owner is back
    info = await continuous.toggle_deployment(deps, None, None, ToggleContinuous(deployment="d-42", active=True))
    assert info.deployment.active is True
    await asyncio.wait_for(asyncio.gather(*deps.background), 10)

    assert (serving["model"]["version"], serving["shadow"]) == ("v2", None)
    row = await pool.fetchrow("SELECT state, swap_refused FROM challenges WHERE id = $1", challenge_id)
    assert (row["state"], row["swap_refused"]) == ("promoted", None)
    assert [e["action"] for e in await swapped_events(pool)] == ["promoted"]
    # done once: turning it on again later redoes nothing
    await continuous.toggle_deployment(deps, None, None, ToggleContinuous(deployment="d-42", active=True))
    await asyncio.wait_for(asyncio.gather(*deps.background), 10)
    assert len(await swapped_events(pool)) == 1


async def test_a_resumed_swap_overtaken_already_does_not_serve_the_decided_version_again(monitoring_schema,
                                                                                         monkeypatch):
    """Training 1's promotion swap served v2 alone after training 2 (v3, newer, DEPLOY_AUTO) had been delivered, and
    its process died before its record (or before serving v3 again). The review wake-up's resume_swap, STALE_SWAP
    later: before, it deployed the decided v2 once more (v2 over v3 for another deploy) and only then found the newer
    delivery; now it checks first, serves v3 again straight away (one deploy) and closes the challenge superseded."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, newer = uuid.uuid4(), uuid.uuid4()
    await done(pool, older, CHALLENGER, "shadow", 600, False)
    await done(pool, newer, NEWEST, "deployed", 100, False)
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha, min_sample,"
        " state, evidence, decided_at) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'promoting', $6,"
        " now() - make_interval(secs => $7))", challenge_id, DEPLOYMENT, older, json.dumps(CHAMPION),
        json.dumps(CHALLENGER), json.dumps(evidence().as_dict()), continuous.STALE_SWAP + 10)
    serving = {"model": CHALLENGER, "shadow": None}  # v2 alone, in v3's place
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append((challenger or champion)["version"])
        serving.update(model=champion, shadow=challenger)
        return "8"

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    await continuous.resume_swap(process(pool), DEPLOYMENT)

    assert serves == ["v3"]
    assert (serving["model"]["version"], serving["shadow"]) == ("v3", None)
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert row["state"] == "superseded" and "newer training" in row["reason"], dict(row)
    assert await swapped_events(pool) == []


async def test_a_swap_left_decided_is_made_by_the_resumer_without_a_review(monitoring_schema, monkeypatch):
    """A promotion whose swap's deploy went unanswered (DeployUnanswered) stays decided for a resume; before, only
    the deployment's next review resumed it (on_review's resume_swap), so a deployment reviewed no more kept it
    'promoting' for good (and a late deploy of v2 served with no model_swapped). Now the delivery resumer's sweep
    swaps it too, STALE_SWAP after its decision, once: promoted and told once, also when swept twice."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample, state,"
        " evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now())", challenge_id,
        DEPLOYMENT, json.dumps(CHAMPION), json.dumps(CHALLENGER), json.dumps(evidence().as_dict()))
    serving = {"model": CHAMPION, "shadow": CHALLENGER}
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        serves.append((challenger or champion)["version"])
        if len(serves) == 1:
            raise continuous.DeployUnanswered("deployer did not answer within 305s")
        serving.update(model=champion, shadow=challenger)
        return "9"

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    deps = process(pool)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(deps, challenge, "promoting", evidence())
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoting"
    resumer = continuous.DeliveryResumer(deps)
    await resumer.sweep()  # not stale yet: left alone
    assert serves == ["v2"]

    await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                       challenge_id, continuous.STALE_SWAP + 10)
    await resumer.sweep()
    await resumer.sweep()
    assert serves == ["v2", "v2"]
    assert (serving["model"]["version"], serving["shadow"]) == ("v2", None)
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoted"
    assert [e["action"] for e in await swapped_events(pool)] == ["promoted"]


async def refused_then_changed(pool, monkeypatch) -> SimpleNamespace:
    """A promotion's swap refused for the owner (continuous deployment suspended, the challenge failed keeping its
    decision), then a person's deploy of v5 alone; the deployment's look-up stand-in given its route. What the two
    tests below turn continuous deployment on again over: `deps`, `challenge_id`, `serving` (what the deployment
    serves), `serves` (what the swap stand-in served since), `refused` ([True] while auth refuses the owner)."""
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample, state,"
        " evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now())", challenge_id,
        DEPLOYMENT, json.dumps(CHAMPION), json.dumps(CHALLENGER), json.dumps(evidence().as_dict()))
    serving = {"model": CHAMPION, "shadow": CHALLENGER}
    refused = [True]
    serves: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        if refused[0]:
            raise continuous.OwnerRefused("the task's owner is no longer a member of workspace 1")
        serves.append((challenger or champion)["version"])
        serving.update(model=champion, shadow=challenger)
        return "10"

    deliver_with(monkeypatch, lambda: serving["model"], serve, lambda: serving["shadow"])
    deps = process(pool)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(deps, challenge, "promoting", evidence())
    assert await pool.fetchval("SELECT swap_refused FROM challenges WHERE id = $1", challenge_id) == "promoting"

    serving.update(model={"name": "digits", "version": "v5", "sha": "e"}, shadow=None)  # a person's deploy
    looked_up = continuous.handlers._deployment

    async def deployment(base, principal, token, name):
        view = await looked_up(base, principal, token, name)
        view.route = SimpleNamespace(deployment_id=DEPLOYMENT)
        return view

    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    return SimpleNamespace(deps=deps, challenge_id=challenge_id, serving=serving, serves=serves, refused=refused)


async def test_a_refused_swap_is_not_made_over_a_change_made_since(monitoring_schema, monkeypatch):
    """A promotion's swap refused for the owner, then a person deploys another version (v5 alone) while continuous
    deployment is suspended. Before, turning it on again made the old decision over that change in the background
    (v2 alone in v5's place, told as promoted). Now the redo first looks at what serves: not the challenge's champion
    shadowed by its challenger, the decision is not made (the challenge stays failed, not redone at a later toggle)."""
    pool = monitoring_schema
    state = await refused_then_changed(pool, monkeypatch)
    deps, challenge_id, serving, serves, refused = (state.deps, state.challenge_id, state.serving, state.serves,
                                                    state.refused)

    refused[0] = False  # the owner is back
    for _ in range(2):  # and once more later: nothing
        await continuous.toggle_deployment(deps, None, None, ToggleContinuous(deployment="d-42", active=True))
        await asyncio.wait_for(asyncio.gather(*deps.background), 10)

    assert serves == []
    assert (serving["model"]["version"], serving["shadow"]) == ("v5", None)
    row = await pool.fetchrow("SELECT state, swap_refused, reason FROM challenges WHERE id = $1", challenge_id)
    assert (row["state"], row["swap_refused"]) == ("failed", None), dict(row)
    assert "no longer serves" in row["reason"]
    assert await swapped_events(pool) == []


async def test_a_redo_that_cannot_look_at_what_serves_puts_the_refusal_back(monitoring_schema, monkeypatch):
    """A promotion's swap refused for the owner, a person's deploy (v5 alone) while continuous deployment is
    suspended, then the redo's look at what serves fails with an error of the process's own (the database away for a
    moment). Before, the redo's claim left the challenge decided ('promoting', swap_refused cleared), and the
    delivery resumer's resume_swap made it STALE_SWAP later without that look: v2 alone over v5, told as promoted.
    Now the refusal is put back (failed, swap_refused kept) for the next set-up or toggle (review of 27a92ea)."""
    pool = monitoring_schema
    state = await refused_then_changed(pool, monkeypatch)
    deps, challenge_id, serving, serves, refused = (state.deps, state.challenge_id, state.serving, state.serves,
                                                    state.refused)

    async def cannot_look(deps, challenge) -> bool:
        raise ConnectionError("the database went away for a moment")

    monkeypatch.setattr(continuous, "_still_challenged", cannot_look)
    refused[0] = False  # the owner is back
    await continuous.toggle_deployment(deps, None, None, ToggleContinuous(deployment="d-42", active=True))
    await asyncio.wait_for(asyncio.gather(*deps.background), 10)  # its failure logged

    row = await pool.fetchrow("SELECT state, swap_refused FROM challenges WHERE id = $1", challenge_id)
    assert (row["state"], row["swap_refused"]) == ("failed", "promoting"), dict(row)
    # STALE_SWAP later the delivery resumer's sweep does not make it over the person's v5
    await pool.execute("UPDATE challenges SET decided_at = now() - interval '1 hour' WHERE id = $1", challenge_id)
    await continuous.resume_swaps(deps)
    assert serves == []
    assert (serving["model"]["version"], serving["shadow"]) == ("v5", None)
    assert await swapped_events(pool) == []


async def test_a_swap_whose_deploy_finds_a_person_s_version_serving_is_refused_and_superseded(monitoring_schema,
                                                                                               monkeypatch):
    """A promotion's swap looks at the deployment (v1 shadowed by v2, pipeline version 1) and creates its version (v2
    alone); a person's deploy of v5 lands before the swap's deploy gets its turn. Before, the swap's deploy replaced
    whatever served: v2 alone over the person's v5, told as promoted. Now it is made only if version 1 still serves
    (only_if_serving): the deployer refuses it (409 serving_changed), the challenge is closed superseded with the
    reason, no model_swapped, and v5 keeps serving."""
    pool = monitoring_schema
    challenge_id = await decided(pool)
    deployer = Deployer(Deployer.model(CHAMPION, CHALLENGER))
    deployer.install(monkeypatch)
    person = {"name": "digits", "version": "v5", "sha": "e"}
    deployer.on_create = lambda: deployer.person_deploys(deployer.model(person))
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(Deployer.process(pool), challenge, "promoting", evidence())

    assert deployer.deploys == [(2, 1, "refused")]
    assert deployer.serves() == ("v5", None)
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert row["state"] == "superseded" and "what the deployment serves changed" in row["reason"], dict(row)
    assert "version 3 serves now" in row["reason"]
    assert await swapped_events(pool) == []


async def test_a_swap_seeing_a_person_s_version_serving_is_not_made(monitoring_schema, monkeypatch):
    """The swap's look finds a person's v5 serving already (a resumed swap, STALE_SWAP after its decision): the
    decision compared v1 and v2, so nothing is deployed and the challenge is closed superseded. Before, the swap
    deployed v2 alone over v5, told as promoted."""
    pool = monitoring_schema
    challenge_id = await decided(pool, decided_ago=continuous.STALE_SWAP + 10)
    deployer = Deployer(Deployer.model({"name": "digits", "version": "v5", "sha": "e"}))
    deployer.install(monkeypatch)
    await continuous.resume_swap(Deployer.process(pool), DEPLOYMENT)

    assert deployer.deploys == []
    assert deployer.serves() == ("v5", None)
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "superseded"
    assert await swapped_events(pool) == []


async def test_a_resumed_swap_refused_because_its_own_late_deploy_landed_is_recorded(monitoring_schema, monkeypatch):
    """A promotion's deploy goes unanswered (the deployer keeps it); STALE_SWAP later the resumed swap looks (version
    1 still serves), creates its version (the same: version 2), and the first deploy lands just then. The resumed
    deploy, only if version 1 serves, is refused; the swap then finds its own version serving: promoted, told once
    (not closed as overtaken)."""
    pool = monitoring_schema
    challenge_id = await decided(pool)
    deployer, deps = stand_in_deployer(pool, monkeypatch, 1)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(deps, challenge, "promoting", evidence())
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoting"

    def late_deploy_lands() -> None:
        deployer.serving = 2
        deployer.on_create = lambda: None

    deployer.on_create = late_deploy_lands
    await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                       challenge_id, continuous.STALE_SWAP + 10)
    await continuous.resume_swap(deps, DEPLOYMENT)

    assert deployer.deploys == [(2, 1, "unanswered"), (2, 1, "refused")]
    assert deployer.serves() == ("v2", None)
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoted"
    assert [e["action"] for e in await swapped_events(pool)] == ["promoted"]


async def test_a_delivery_refused_because_a_person_s_deploy_landed_is_made_on_what_serves_now(monitoring_schema,
                                                                                            monkeypatch):
    """DEPLOY_AUTO delivers v3: it looks (v1 serving, version 1) and creates v3's version; a person's deploy (v1
    with another engine set-up: a version of its own) lands before the delivery's deploy. Before, the delivery's
    version (built on version 1) replaced the person's. Now the deployer refuses it; no newer training was
    delivered, so the delivery is made again on what serves now: v3 serves, from the person's version, told once."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    await done(pool, training_id, NEWEST, "deployed", 100, True)
    deployer = Deployer(Deployer.model(CHAMPION))
    deployer.install(monkeypatch)
    persons = {"steps": [{"ModelInference": {"models": [CHAMPION], "note": "the person's"}}]}

    def person_deploys_once() -> None:
        deployer.person_deploys(persons)
        deployer.on_create = lambda: None

    deployer.on_create = person_deploys_once
    await continuous._deliver(Deployer.process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1",
                                                                 training_id), "DEPLOY_AUTO")

    assert [(only, what) for _, only, what in deployer.deploys] == [(1, "refused"), (3, "served")]
    assert deployer.serves() == ("v3", None)
    assert deployer.versions[deployer.serving]["steps"][0]["ModelInference"]["note"] == "the person's"
    row = await pool.fetchrow("SELECT outcome, delivering_since FROM trainings WHERE id = $1", training_id)
    assert (row["outcome"], row["delivering_since"]) == ("deployed", None)
    assert [e["action"] for e in await swapped_events(pool)] == ["deployed"]


@pytest.mark.parametrize("late", ["never", "lands_before_the_last_resume"])
async def test_a_swap_whose_deploy_never_answers_is_failed_after_max_resumes(monitoring_schema, monkeypatch, late):
    """A promotion whose deploy the deployer never answers (DeployUnanswered each time). Before, it stayed decided
    and was swapped again every STALE_SWAP without end. Now the resume that would be the (MAX_RESUMES + 1)th deploys
    nothing more: it looks, and fails the challenge with the reason (migration 022's swap_resumes) unless the
    decided version serves. Its last deploy landing late, before that look (`lands_before_the_last_resume`): before,
    the challenge was failed while v2 served alone (a record contradicting what serves); now promoted, told once."""
    pool = monitoring_schema
    challenge_id = await decided(pool)
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(deps, challenge, "promoting", evidence())
    for attempt in range(continuous.MAX_RESUMES + 2):
        if attempt == continuous.MAX_RESUMES and late != "never":
            deployer.serving = 2  # the last unanswered deploy (v2 alone) lands now
        await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                           challenge_id, continuous.STALE_SWAP + 10)
        await continuous.resume_swap(deps, DEPLOYMENT)

    assert deployer.deploys == [(2, 1, "unanswered")] * (1 + continuous.MAX_RESUMES)
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    if late == "never":
        assert deployer.serves() == ("v1", "v2")
        assert row["state"] == "failed", dict(row)
        assert f"did not finish after {continuous.MAX_RESUMES + 1} tries" in row["reason"]
        assert await swapped_events(pool) == []
    else:
        assert deployer.serves() == ("v2", None)
        assert row["state"] == "promoted", dict(row)
        assert [e["action"] for e in await swapped_events(pool)] == ["promoted"]


@pytest.mark.parametrize("late", ["never", "lands_before_the_last_resume"])
async def test_a_delivery_whose_deploy_never_answers_is_failed_after_max_resumes(monitoring_schema, monkeypatch,
                                                                                 late):
    """The same for a delivery (DEPLOY_AUTO): before, resume_deliveries delivered it again every STALE_SWAP without
    end; now the (MAX_RESUMES + 1)th resume deploys nothing: it records it failed with the reason
    (delivery_resumes), its claim cleared, unless its version serves: its last deploy landing late, before that
    look, is recorded as delivered (before: failed while v3 served), told once."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    training_id = uuid.uuid4()
    await done(pool, training_id, NEWEST, "deployed", 100, True)
    deployer = Deployer(Deployer.model(CHAMPION))
    deployer.install(monkeypatch)
    deployer.unanswered = 100
    for attempt in range(continuous.MAX_RESUMES + 2):
        if attempt == continuous.MAX_RESUMES and late != "never":
            deployer.serving = 2  # the last unanswered deploy (v3) lands now
        await make_stale(pool, "trainings", "delivering_since", training_id)
        await continuous.resume_deliveries(Deployer.process(pool))

    assert deployer.deploys == [(2, 1, "unanswered")] * continuous.MAX_RESUMES
    row = await pool.fetchrow("SELECT outcome, reason, delivering_since FROM trainings WHERE id = $1", training_id)
    assert row["delivering_since"] is None, dict(row)
    if late == "never":
        assert deployer.serves() == ("v1", None)
        assert row["outcome"] == "failed", dict(row)
        assert f"did not finish after {continuous.MAX_RESUMES + 1} tries" in row["reason"]
        assert await swapped_events(pool) == []
    else:
        assert deployer.serves() == ("v3", None)
        assert (row["outcome"], row["reason"]) == ("deployed", None), dict(row)
        assert [e["action"] for e in await swapped_events(pool)] == ["deployed"]

@pytest.mark.parametrize("what", ["swap", "delivery"])
async def test_a_last_resume_whose_look_fails_is_failed_with_the_look_s_error(monitoring_schema, monkeypatch, what):
    """The last resume (past MAX_RESUMES) looks at what serves before failing a swap or a delivery whose deploys
    went unanswered; the deployer unreachable for that look (pipelines/get: Unavailable), it is failed all the same,
    once, the look's error in the reason, and nothing is deployed. The delivery (DEPLOY_AUTO) leaves the running
    challenge running (its champion and challenger still serve). Only the never-answered and landed-late cases were
    tested: a look that failed could have left the swap decided, or the delivery claimed, for ever."""
    pool = monitoring_schema
    deployer, deps = stand_in_deployer(pool, monkeypatch, 100)
    if what == "swap":
        challenge_id = await promotion_unanswered(pool, deps)
    else:
        await continuous_deployment(pool, "DEPLOY_AUTO")
        older, training_id = uuid.uuid4(), uuid.uuid4()
        await done(pool, older, CHALLENGER, "shadow", 600, False)
        challenge_id = uuid.uuid4()
        await pool.execute(
            "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha,"
            " min_sample, state) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'running')", challenge_id, DEPLOYMENT,
            older, json.dumps(CHAMPION), json.dumps(CHALLENGER))
        await done(pool, training_id, NEWEST, "deployed", 100, True)
        await continuous._deliver(deps, await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", training_id),
                                  "DEPLOY_AUTO")
    looks = 0
    unreachable = False

    async def deployment(base, principal, token, name):
        nonlocal looks
        looks += 1
        if unreachable:
            raise Unavailable("the deployer is not reachable")
        return SimpleNamespace(definition=deployer.versions[deployer.serving], deploy_id="d", pipeline_id=5,
                               route=SimpleNamespace(name=name, pipeline_name="p", deployment_id=DEPLOYMENT,
                                                     pipeline_version=str(deployer.serving)),
                               engine_config=None, version_pk_id=deployer.serving)

    monkeypatch.setattr(continuous.handlers, "_deployment", deployment)
    for attempt in range(continuous.MAX_RESUMES + 2):
        unreachable = attempt >= continuous.MAX_RESUMES
        if what == "swap":
            await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                               challenge_id, continuous.STALE_SWAP + 10)
            await continuous.resume_swap(deps, DEPLOYMENT)
        else:
            await pool.execute("UPDATE trainings SET delivering_since = now() - make_interval(secs => $1) WHERE"
                               " delivering_since IS NOT NULL", continuous.STALE_SWAP + 10)
            await continuous.resume_deliveries(deps)

    assert looks == continuous.MAX_RESUMES + 1  # one look each; the failed one not looked at again
    assert deployer.deploys == [(2, 1, "unanswered")] * (1 + continuous.MAX_RESUMES)  # none at the last resume
    assert deployer.serves() == ("v1", "v2")
    assert await swapped_events(pool) == []
    if what == "swap":
        row = await pool.fetchrow("SELECT state, reason, swap_refused FROM challenges WHERE id = $1", challenge_id)
        assert (row["state"], row["swap_refused"]) == ("failed", None), dict(row)
        assert f"did not finish after {continuous.MAX_RESUMES + 1} tries" in row["reason"]
        # what held its tries up, then the look's own error, each with its status and code (migration 027)
        assert row["reason"].endswith("; its last held-up try met 504 upstream_timeout: deployer did not answer within"
                                      " 305s; its last look failed: 503 unavailable: the deployer is not reachable")
    else:
        row = await pool.fetchrow("SELECT outcome, reason, delivering_since, delivered_at FROM trainings WHERE id = $1",
                                  training_id)
        assert (row["outcome"], row["delivering_since"], row["delivered_at"]) == ("failed", None, None), dict(row)
        assert f"did not finish after {continuous.MAX_RESUMES + 1} tries" in row["reason"]
        assert row["reason"].endswith("; its last held-up try met 504 upstream_timeout: deployer did not answer within"
                                      " 305s; its last look at what serves failed: 503 unavailable: the deployer is"
                                      " not reachable"), row["reason"]
        assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "running"


@pytest.mark.parametrize("outcome", ["refused", "failed", "unanswered", "unavailable"])
async def test_a_deploy_auto_delivery_that_serves_nothing_leaves_the_running_challenge_running(monitoring_schema,
                                                                                              monkeypatch, outcome):
    """A challenge runs (v1 shadowed by v2, training 1's) when the policy is DEPLOY_AUTO and training 2 (v3) is
    delivered; its deploy serves nothing: refused twice (a person's deploy, keeping v1 shadowed by v2 with another
    set-up, lands before each try), failed (its pipeline deleted: a 4xx), unanswered, or its pipelines/create
    answered 503 (the deployer's database away: `unavailable`, left claimed for the resume, which delivers it;
    before session 31 it failed for good). Before, the delivery superseded the running challenge before its deploy:
    the challenge was closed though its champion and challenger went on serving and nothing was delivered (never
    decided, its pairs no longer compared). Now the challenge ends with the delivery's record, so it stays running;
    recorded once the deploy serves (a resume finding v3 served, or serving it), it is superseded then."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, training_id = uuid.uuid4(), uuid.uuid4()
    await done(pool, older, CHALLENGER, "shadow", 600, False)
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha, min_sample,"
        " state) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'running')", challenge_id, DEPLOYMENT, older,
        json.dumps(CHAMPION), json.dumps(CHALLENGER))
    await done(pool, training_id, NEWEST, "deployed", 100, True)
    deployer = Deployer(Deployer.model(CHAMPION, CHALLENGER))
    deployer.install(monkeypatch)
    if outcome == "refused":
        def person_deploys() -> None:
            definition = Deployer.model(CHAMPION, CHALLENGER)
            definition["steps"][0]["ShadowDeploy"]["note"] = f"the person's {len(deployer.versions)}"
            deployer.person_deploys(definition)
        deployer.on_create = person_deploys
    elif outcome == "failed":
        def pipeline_deleted() -> None:
            raise NotFound("pipeline 5 was deleted")  # a 503 is resumed, not failed
        deployer.on_create = pipeline_deleted
    elif outcome == "unavailable":
        def database_away() -> None:
            deployer.on_create = lambda: None  # once
            raise Unavailable("the database did not answer within 4 s")
        deployer.on_create = database_away
    else:
        deployer.unanswered = 1
    training = await pool.fetchrow("SELECT * FROM trainings WHERE id = $1", training_id)
    await continuous._deliver(Deployer.process(pool), training, "DEPLOY_AUTO")

    assert deployer.serves() == ("v1", "v2")
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "running"
    row = await pool.fetchrow("SELECT outcome, delivering_since FROM trainings WHERE id = $1", training_id)
    assert row["outcome"] == ("failed" if outcome == "failed" else "deployed"), dict(row)
    assert await swapped_events(pool) == []
    if outcome not in ("unanswered", "unavailable"):
        return
    assert row["delivering_since"] is not None  # left claimed for the resume
    if outcome == "unanswered":
        deployer.serving = 2  # the unanswered deploy lands late; the resume finds it serving and records it
    await pool.execute("UPDATE trainings SET delivering_since = now() - make_interval(secs => $2) WHERE id = $1",
                       training_id, continuous.STALE_SWAP + 10)
    await continuous.resume_deliveries(Deployer.process(pool))
    assert deployer.serves() == ("v3", None)
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "superseded"
    assert [e["action"] for e in await swapped_events(pool)] == ["deployed"]


@pytest.mark.parametrize("delivery", ["fails", "serves"])
async def test_a_swap_is_made_while_a_newer_delivery_is_still_under_way(monitoring_schema, monkeypatch, delivery):
    """Training 1's challenge (v1 shadowed by v2) is decided (promote) while training 2's delivery (v3, DEPLOY_AUTO)
    is claimed but not recorded. Before, the swap counted that delivery as overtaking it: nothing was deployed and
    the challenge closed superseded; when the delivery then failed (its pipeline deleted) the decision was lost, v1
    shadowed by v2 serving on with no challenge. Now only a recorded delivery overtakes a swap (the deployer's
    precondition orders the two deploys): v2 is promoted, told once; the delivery then fails (v2 keeps serving) or
    serves v3 over it from what serves now (promoted, then deployed)."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_AUTO")
    older, newer = uuid.uuid4(), uuid.uuid4()
    await done(pool, older, CHALLENGER, "shadow", 600, False)
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, training_id, champion, challenger, alpha, min_sample,"
        " state, evidence, decided_at) VALUES ($1, $2, 1, $3, $4, $5, 0.05, 10, 'promoting', $6, now())",
        challenge_id, DEPLOYMENT, older, json.dumps(CHAMPION), json.dumps(CHALLENGER),
        json.dumps(evidence().as_dict()))
    await done(pool, newer, NEWEST, "deployed", 100, True)
    deployer = Deployer(Deployer.model(CHAMPION, CHALLENGER))
    deployer.install(monkeypatch)
    challenge = await pool.fetchrow("SELECT * FROM challenges WHERE id = $1", challenge_id)
    await continuous._apply_decision(Deployer.process(pool), challenge, "promoting", evidence())

    assert deployer.serves() == ("v2", None)
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoted"
    if delivery == "fails":
        def pipeline_deleted() -> None:
            raise NotFound("pipeline 5 was deleted")  # a 503 is resumed, not failed
        deployer.on_create = pipeline_deleted
    await continuous._deliver(Deployer.process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1",
                                                                 newer), "DEPLOY_AUTO")
    assert deployer.serves() == (("v2", None) if delivery == "fails" else ("v3", None))
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoted"
    assert [e["action"] for e in await swapped_events(pool)] == (
        ["promoted"] if delivery == "fails" else ["promoted", "deployed"])


@pytest.mark.parametrize("what", ["deliveries", "swaps"])
async def test_one_slow_deploy_does_not_hold_back_other_deployments_resumes(monitoring_schema, monkeypatch, what):
    """The delivery resumer's sweep finds an unfinished delivery (or decided swap) on two deployments; the first's
    deploy is answered only once the second's deploy was made (a slow deployer answer: up to deploy_wait, 305 s).
    Before, the sweep resumed one after the other: the second waited behind the first (here the first gives up
    after 5 s, failing unexpectedly, and stays unfinished). Now deployments are resumed at once (up to
    RESUME_CONCURRENCY): both are made and recorded in the one sweep."""
    pool = monitoring_schema
    policy = "DEPLOY_AUTO" if what == "deliveries" else "DEPLOY_SHADOW"
    await continuous_deployment(pool, policy)
    await pool.execute("INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id, policy,"
                       " alpha, min_sample) VALUES ($1, 1, 'd-43', $2, $3, 0.05, 10)", DEPLOYMENT + 1, uuid.uuid4(),
                       policy)
    for deployment_id, age in ((DEPLOYMENT, 200), (DEPLOYMENT + 1, 100)):  # DEPLOYMENT's first (oldest first)
        if what == "deliveries":
            await pool.execute(
                "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id,"
                " model_version, model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed',"
                " 1, $3, $4, 'ready', now() - make_interval(secs => $5), now() - make_interval(secs => $6))",
                uuid.uuid4(), deployment_id, uuid.uuid4(), json.dumps(NEWEST), age, continuous.STALE_SWAP + age)
        else:
            await pool.execute(
                "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample,"
                " state, evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now() -"
                " make_interval(secs => $6))", uuid.uuid4(), deployment_id, json.dumps(CHAMPION),
                json.dumps(CHALLENGER), json.dumps(evidence().as_dict()), continuous.STALE_SWAP + age)
    second_made = asyncio.Event()
    made: list[str] = []

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        if deployment == "d-42":
            await asyncio.wait_for(second_made.wait(), 5)
        else:
            second_made.set()
        made.append(deployment)
        return "7"

    deliver_with(monkeypatch, lambda: CHAMPION, serve, lambda: CHALLENGER if what == "swaps" else None)
    await continuous.DeliveryResumer(process(pool)).sweep()

    assert made == ["d-43", "d-42"]
    if what == "deliveries":
        rows = await pool.fetch("SELECT outcome, delivering_since FROM trainings ORDER BY deployment_id")
        assert [(r["outcome"], r["delivering_since"]) for r in rows] == [("deployed", None)] * 2
    else:
        states = await pool.fetch("SELECT state FROM challenges ORDER BY deployment_id")
        assert [r["state"] for r in states] == ["promoted"] * 2
    assert len(await swapped_events(pool)) == 2


@pytest.mark.parametrize("what", ["deliveries", "swaps"])
async def test_a_resume_sweep_makes_at_most_resume_concurrency_deployments_at_once(monitoring_schema, monkeypatch,
                                                                                     what):
    """Six deployments each with an unfinished delivery (or decided swap), their deploys all slow (held until the
    test lets them go): the sweep takes up RESUME_CONCURRENCY (4) deployments, and a fifth only once one of those
    is done. Nothing else tested the bound: without the semaphore all six were taken up at once (each started its
    look-ups, a PostgreSQL connection and a deploy), which a sweep finding hundreds would do for hundreds."""
    pool = monitoring_schema
    policy = "DEPLOY_AUTO" if what == "deliveries" else "DEPLOY_SHADOW"
    deployments = [DEPLOYMENT + n for n in range(continuous.RESUME_CONCURRENCY + 2)]
    for deployment_id in deployments:
        await pool.execute("INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id,"
                           " policy, alpha, min_sample) VALUES ($1, 1, $2, $3, $4, 0.05, 10)", deployment_id,
                           f"d-{deployment_id}", uuid.uuid4(), policy)
        if what == "deliveries":
            await pool.execute(
                "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id,"
                " model_version, model_status, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4,"
                " 'ready', now() - make_interval(secs => $5))", uuid.uuid4(), deployment_id, uuid.uuid4(),
                json.dumps(NEWEST), continuous.STALE_SWAP + 10)
        else:
            await pool.execute(
                "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample,"
                " state, evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now() -"
                " make_interval(secs => $6))", uuid.uuid4(), deployment_id, json.dumps(CHAMPION),
                json.dumps(CHALLENGER), json.dumps(evidence().as_dict()), continuous.STALE_SWAP + 10)
    # taken up: a deployment's resume entered (all at once when unbounded: each enters before its first await)
    taken_up: list[int] = []
    entry = "_deliver" if what == "deliveries" else "resume_swap"
    real_entry = getattr(continuous, entry)

    async def counted(deps, first, *args, **kwargs):
        taken_up.append(first["deployment_id"] if what == "deliveries" else first)
        return await real_entry(deps, first, *args, **kwargs)

    monkeypatch.setattr(continuous, entry, counted)
    deploying: list[str] = []
    all_deploying, release = asyncio.Event(), asyncio.Event()

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        deploying.append(deployment)
        if len(deploying) == continuous.RESUME_CONCURRENCY:
            all_deploying.set()
        await release.wait()
        return "7"

    deliver_with(monkeypatch, lambda: CHAMPION, serve, lambda: CHALLENGER if what == "swaps" else None)
    sweep = asyncio.create_task((continuous.resume_deliveries if what == "deliveries" else continuous.resume_swaps)(
        process(pool)))
    try:
        await asyncio.wait_for(all_deploying.wait(), 30)
        at_once = list(taken_up)
    finally:
        release.set()
        await asyncio.wait_for(sweep, 30)

    assert len(at_once) == continuous.RESUME_CONCURRENCY, at_once
    assert sorted(taken_up) == deployments
    if what == "deliveries":
        rows = await pool.fetch("SELECT outcome, delivering_since, delivered_at IS NOT NULL AS recorded FROM trainings")
        assert {(r["outcome"], r["delivering_since"], r["recorded"]) for r in rows} == {("deployed", None, True)}
    else:
        states = await pool.fetch("SELECT state FROM challenges")
        assert [r["state"] for r in states] == ["promoted"] * len(deployments)
    assert len(await swapped_events(pool)) == len(deployments)


async def test_a_delivery_waiting_behind_the_bound_is_not_claimed_until_its_turn(monitoring_schema, monkeypatch):
    """Six deployments with an unfinished DEPLOY_AUTO delivery; the four oldest's deploys hang (held until the test
    lets them go), so the other two wait behind RESUME_CONCURRENCY. Before, the sweep claimed all six at its start
    (delivering_since, delivery_resumes + 1) though it had begun two of them only once a slot freed: no other
    process took them meanwhile, and one delivery whose turn came after STALE_SWAP (four deploys answered slowly,
    up to 305 s) was taken by another process's sweep as well, each try counted twice towards MAX_RESUMES. Now a
    deployment's deliveries are claimed when its turn comes: another process's sweep delivers the two at once
    while the four hang, each counted once, told once."""
    pool = monitoring_schema
    deployments = [DEPLOYMENT + n for n in range(continuous.RESUME_CONCURRENCY + 2)]
    hanging = {f"d-{deployment_id}" for deployment_id in deployments[:continuous.RESUME_CONCURRENCY]}
    for age, deployment_id in enumerate(deployments):  # the four hanging ones the oldest: taken up first
        await pool.execute("INSERT INTO continuous_deployment (deployment_id, workspace_id, deployment, owner_id,"
                           " policy, alpha, min_sample) VALUES ($1, 1, $2, $3, 'DEPLOY_AUTO', 0.05, 10)",
                           deployment_id, f"d-{deployment_id}", uuid.uuid4())
        await pool.execute(
            "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
            " model_status, created_at, delivering_since) VALUES ($1, $2, 1, 'done', 'deployed', 1, $3, $4, 'ready',"
            " now() - make_interval(secs => $5), now() - make_interval(secs => $6))", uuid.uuid4(),
            deployment_id, uuid.uuid4(), json.dumps(NEWEST), 1000.0 - age, continuous.STALE_SWAP + 10)
    deploying: list[str] = []
    all_hanging, release = asyncio.Event(), asyncio.Event()

    async def serve(deps, owner_id, workspace_id, deployment, champion, challenger, purpose, **_) -> str:
        deploying.append(deployment)
        if deployment in hanging:
            if hanging <= set(deploying):
                all_hanging.set()
            await release.wait()
        return "7"

    deliver_with(monkeypatch, lambda: CHAMPION, serve)
    first = asyncio.create_task(continuous.resume_deliveries(process(pool)))
    try:
        await asyncio.wait_for(all_hanging.wait(), 30)
        await continuous.resume_deliveries(process(pool))  # another process's sweep, meanwhile
        meanwhile = {r["deployment_id"]: r for r in await pool.fetch(
            "SELECT deployment_id, delivering_since, delivered_at FROM trainings")}
    finally:
        release.set()
        await asyncio.wait_for(first, 30)

    assert {d for d, r in meanwhile.items() if r["delivered_at"] is not None} == set(deployments[-2:])
    rows = await pool.fetch("SELECT deployment_id, outcome, delivering_since, delivered_at IS NOT NULL AS recorded,"
                            " delivery_resumes FROM trainings")
    assert {(r["outcome"], r["delivering_since"], r["recorded"], r["delivery_resumes"]) for r in rows} == {
        ("deployed", None, True, 1)}
    assert sorted(deploying) == sorted(f"d-{d}" for d in deployments)  # each deployed once
    assert len(await swapped_events(pool)) == len(deployments)


async def test_a_redo_stopped_between_its_claim_and_its_look_is_not_made_over_a_change(monitoring_schema,
                                                                                        monkeypatch):
    """A promotion's swap refused for the owner; a person's deploy (v5 alone) since; the redo (at a toggle) claims
    the challenge (decided again) and the service stops before its look at what serves (_still_challenged: the
    background task cancelled, or the process dying), so nothing puts the refusal back. STALE_SWAP later the
    resumer's resume_swap takes the decided challenge: its swap looks at what serves before deploying (_serve's
    `expect`) and the deployer would refuse it anyway (only_if_serving): nothing is deployed over v5, the challenge
    is closed superseded, no model_swapped. A regression test of session 22's closing note (the crash between the
    redo's claim and its check): the swap's own look (ec3a759) covers it; on 355cae3's _serve (no look, no
    precondition) v2 was deployed over v5."""
    pool = monitoring_schema
    challenge_id = await decided(pool)
    await pool.execute("UPDATE challenges SET state = 'failed', swap_refused = 'promoting' WHERE id = $1", challenge_id)
    deployer = Deployer(Deployer.model({"name": "digits", "version": "v5", "sha": "e"}))  # the person's deploy
    deployer.install(monkeypatch)

    async def stopped(deps, challenge) -> bool:
        raise asyncio.CancelledError

    monkeypatch.setattr(continuous, "_still_challenged", stopped)
    deps = Deployer.process(pool)
    with pytest.raises(asyncio.CancelledError):
        await continuous.redo_refused_swap(deps, DEPLOYMENT)
    assert await pool.fetchval("SELECT state FROM challenges WHERE id = $1", challenge_id) == "promoting"

    await pool.execute("UPDATE challenges SET decided_at = now() - make_interval(secs => $2) WHERE id = $1",
                       challenge_id, continuous.STALE_SWAP + 10)
    await continuous.resume_swaps(deps)
    assert deployer.deploys == []
    assert deployer.serves() == ("v5", None)
    row = await pool.fetchrow("SELECT state, reason FROM challenges WHERE id = $1", challenge_id)
    assert row["state"] == "superseded" and "what the deployment serves changed" in row["reason"], dict(row)
    assert await swapped_events(pool) == []


async def test_a_shadow_delivery_during_a_promotion_swap_compares_with_the_promoted_version(monitoring_schema,
                                                                                           monkeypatch):
    """DEPLOY_SHADOW delivers v3 while a promotion's swap runs: the delivery looks (v1 shadowed by v2, version 1)
    and creates v1 shadowed by v3; the swap's deploy (v2 alone) lands before the delivery's. Before the precondition
    the delivery's deploy then replaced the swap's and recorded a challenge of v3 against v1, the pre-swap champion
    that the swap had just replaced (session 22's closing note). Now it is refused and made again on what serves:
    v2 shadowed by v3, the challenge opened v2 vs v3. A regression test: the precondition (ec3a759) covers it."""
    pool = monitoring_schema
    await continuous_deployment(pool, "DEPLOY_SHADOW")
    training_id = uuid.uuid4()
    await done(pool, training_id, NEWEST, "shadow", 100, True)
    deployer = Deployer(Deployer.model(CHAMPION, CHALLENGER))
    deployer.install(monkeypatch)

    def swap_lands_once() -> None:
        deployer.person_deploys(Deployer.model(CHALLENGER))  # the swap's v2 alone, deployed without a precondition
        deployer.on_create = lambda: None

    deployer.on_create = swap_lands_once
    await continuous._deliver(Deployer.process(pool), await pool.fetchrow("SELECT * FROM trainings WHERE id = $1",
                                                                 training_id), "DEPLOY_SHADOW")

    assert [(only, what) for _, only, what in deployer.deploys] == [(1, "refused"), (3, "served")]
    assert deployer.serves() == ("v2", "v3")
    opened = await pool.fetchrow("SELECT champion, challenger FROM challenges WHERE training_id = $1 AND state ="
                                 " 'running'", training_id)
    assert (json.loads(opened["champion"])["version"], json.loads(opened["challenger"])["version"]) == ("v2", "v3")
