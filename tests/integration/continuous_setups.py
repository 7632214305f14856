"""Set-ups the continuous-deployment tests share (test_monitoring_swap_race, test_monitoring_given_up_landed,
test_monitoring_deployed_event, test_monitoring_sent_deploys, test_continuous_drift, ...): a monitoring schema of
the test's own, the deployer stood in (`Deployer`: pipeline versions, the one serving, pipelines/deploy's
precondition), trainings and challenges as the service leaves them, a row made stale for the resume sweep, and a
durable consumer of the running stack caught up with the EVENTS stream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from types import SimpleNamespace

import nats as nats_client
import pytest

from services.monitoring import continuous
from shared import subjects
from shared.errors import Conflict, Unavailable, UpstreamTimeout
from tests.integration.conftest import service_schema
from tests.integration.test_continuous_swap_once import (
    CHALLENGER,
    CHAMPION,
    DEPLOYMENT,
    MONITORING_MIGRATIONS,
    continuous_deployment,
    evidence,
    process,
)

NEWEST = {"name": "digits", "version": "v3", "sha": "c"}


def schema_fixture(schema: str):
    """A `monitoring_schema` fixture: a monitoring schema named `schema` (the service's migrations) on the stack's
    PostgreSQL, and a pool on it. A test module sets `monitoring_schema = schema_fixture("...")`."""
    @pytest.fixture(name="monitoring_schema")
    async def monitoring_schema(stack):
        async with service_schema(stack, schema, MONITORING_MIGRATIONS) as pool:
            yield pool

    return monitoring_schema


async def done(pool, training_id: uuid.UUID, version: dict, outcome: str, created: int, delivering: bool) -> None:
    """A training of DEPLOYMENT as advance leaves it (created `created` s ago), delivering or delivered (recorded:
    delivered_at, as _delivered sets it)."""
    await pool.execute(
        "INSERT INTO trainings (id, deployment_id, workspace_id, state, outcome, reviews, task_id, model_version,"
        " model_status, created_at, delivering_since, delivered_at) VALUES ($1, $2, 1, 'done', $3, 1, $4, $5, 'ready',"
        " now() - make_interval(secs => $6), CASE WHEN $7 THEN now() END, CASE WHEN NOT $7 THEN now() END)",
        training_id, DEPLOYMENT, outcome, uuid.uuid4(), json.dumps(version), created, delivering)


async def swapped_events(pool) -> list[dict]:
    return [json.loads(r["payload"]) for r in await pool.fetch(
        "SELECT payload FROM outbox WHERE subject = $1 ORDER BY id", subjects.EVENT_MONITORING_MODEL_SWAPPED)]


class Deployer:
    """The deployer as _serve sees it (through the real _serve, with the deployer's requests stood in): pipeline
    versions by pk id, the one serving, and pipelines/deploy's precondition (only_if_serving: refused with 409
    serving_changed unless that version serves, as services/deployer/handlers.py _check_serving). `on_create` runs
    when a version is created (after the caller's look, before its deploy): another deploy landing then."""

    def __init__(self, definition: dict) -> None:
        self.versions = {1: definition}
        self.serving = 1
        self.deploys: list[tuple[int, int | None, str]] = []  # (version, only_if_serving, what became of it)
        self.on_create = lambda: None
        self.unanswered = 0  # deploys to leave unanswered (UpstreamTimeout), not served
        self.held_up = 0  # deploys refused with 409 deploy_in_progress (behind another deploy past its lock wait)
        self.unavailable = 0  # deploys refused with 503 unavailable (the deployer's database failed or did not answer)
        self.out_of_time = 0  # deploys refused with 503 deploy_out_of_time (replicas could not be ready in the wait)

    @staticmethod
    def model(version: dict, shadow: dict | None = None) -> dict:
        """A definition serving `version` (shadowed by `shadow`)."""
        if shadow is not None:
            return {"steps": [{"ShadowDeploy": {"champion": version, "challengers": [shadow]}}]}
        return {"steps": [{"ModelInference": {"models": [version]}}]}

    def serves(self) -> tuple[str, str | None]:
        definition = self.versions[self.serving]
        model = continuous.handlers.current_model(definition)
        shadow = continuous.handlers._current_shadow(definition)
        return model.version, shadow and shadow.version

    def install(self, monkeypatch) -> None:
        async def act_as(deps, owner_id, workspace_id, purpose):
            return SimpleNamespace(user_id=str(owner_id)), "token"

        async def deployment(base, principal, token, name):
            return SimpleNamespace(definition=self.versions[self.serving], deploy_id="d", pipeline_id=5,
                                   route=SimpleNamespace(name=name, pipeline_name="p", deployment_id=DEPLOYMENT,
                                                         pipeline_version=str(self.serving)),
                                   engine_config=None, version_pk_id=self.serving)

        async def request(broker, subject, cmd, **kwargs):
            if subject == subjects.DEPLOYER_DEPLOYMENTS_RESOLVE:
                return SimpleNamespace(name=cmd.name)
            if subject == subjects.REGISTRY_MODELS_RESOLVE:
                return SimpleNamespace(name=cmd.name, model_version=cmd.version, sha="b")
            if subject == subjects.DEPLOYER_PIPELINES_CREATE:
                pk = next((pk for pk, d in self.versions.items() if d == cmd.definition), None)
                if pk is None:
                    pk = max(self.versions) + 1
                    self.versions[pk] = cmd.definition
                self.on_create()
                return SimpleNamespace(pipeline_variant_pk_id=pk, pipeline_variant_version=str(pk))
            if subject == subjects.DEPLOYER_PIPELINES_GET:
                return SimpleNamespace(deployment={"pipeline_version_pk_id": self.serving})
            assert subject == subjects.DEPLOYER_PIPELINES_DEPLOY, subject
            wanted = cmd.pipeline_version_pk_id
            if self.held_up:  # the deployer's lock wait (handlers.deploy_lock_wait) ran out: nothing made
                self.held_up -= 1
                self.deploys.append((wanted, cmd.only_if_serving, "held_up"))
                raise Conflict("another deploy or undeploy of pipeline 5 is under way and did not end within 228 s;"
                               " nothing of this deploy was made: deploy again when it finishes",
                               code="deploy_in_progress")
            if self.unavailable:  # handlers._deploy_step's 503: nothing of it made
                self.unavailable -= 1
                self.deploys.append((wanted, cmd.only_if_serving, "unavailable"))
                raise Unavailable("the deploy of pipeline 5 was not made: the database did not answer within 4 s;"
                                  " nothing of it runs, and what served before serves as before. Deploy again once"
                                  " the database answers")
            if self.out_of_time:  # handlers._out_of_time's 503: nothing of it made
                self.out_of_time -= 1
                self.deploys.append((wanted, cmd.only_if_serving, "out_of_time"))
                raise Unavailable("the deploy of pipeline 5 ran out of time: what its caller waits (5 s from its"
                                  " start) left its replicas 0.5 s to serve after its model lookups, its wait for"
                                  " another deploy of the pipeline and its database steps, less than"
                                  " deployer.ready_timeout (60 s); nothing of it was made. Deploy again (once another"
                                  " deploy of the pipeline ended), or lower deployer.ready_timeout",
                                  code="deploy_out_of_time")
            if self.unanswered:
                self.unanswered -= 1
                self.deploys.append((wanted, cmd.only_if_serving, "unanswered"))
                raise UpstreamTimeout("deployer did not answer within 305s")
            if cmd.only_if_serving is not None and cmd.only_if_serving != self.serving:
                self.deploys.append((wanted, cmd.only_if_serving, "refused"))
                raise Conflict(f"only_if_serving: version {cmd.only_if_serving} does not serve: version"
                               f" {self.serving} serves now", code="serving_changed")
            self.deploys.append((wanted, cmd.only_if_serving, "served"))
            self.serving = wanted
            return None

        monkeypatch.setattr(continuous, "act_as", act_as)
        monkeypatch.setattr(continuous, "request", request)
        monkeypatch.setattr(continuous.handlers, "_deployment", deployment)

    @staticmethod
    def process(pool) -> continuous.ContinuousDeps:
        """One monitoring process's deps (test_continuous_swap_once's), with the deploy's timeout _serve waits."""
        deps = process(pool)
        deps.base.deploy_timeout = 5.0
        return deps

    def person_deploys(self, definition: dict) -> None:
        """A person's deploy (no precondition) of a new version."""
        pk = max(self.versions) + 1
        self.versions[pk] = definition
        self.serving = pk


async def decided(pool, policy: str = "DEPLOY_SHADOW", decided_ago: float = 0) -> uuid.UUID:
    """Continuous deployment under `policy` and a challenge (v1 shadowed by v2) decided: promote."""
    await continuous_deployment(pool, policy)
    challenge_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO challenges (id, deployment_id, workspace_id, champion, challenger, alpha, min_sample, state,"
        " evidence, decided_at) VALUES ($1, $2, 1, $3, $4, 0.05, 10, 'promoting', $5, now() - make_interval(secs =>"
        " $6))", challenge_id, DEPLOYMENT, json.dumps(CHAMPION), json.dumps(CHALLENGER),
        json.dumps(evidence().as_dict()), decided_ago)
    return challenge_id


def stand_in_deployer(pool, monkeypatch, unanswered: int = 0) -> tuple[Deployer, continuous.ContinuousDeps]:
    """The stand-in deployer (v1 shadowed by v2 serving, pipeline version 1) installed, leaving its first
    `unanswered` deploys unanswered, and one monitoring process's deps."""
    deployer = Deployer(Deployer.model(CHAMPION, CHALLENGER))
    deployer.install(monkeypatch)
    deployer.unanswered = unanswered
    return deployer, Deployer.process(pool)


async def make_stale(pool, table: str, column: str, row_id: uuid.UUID) -> None:
    """Row `row_id` of `table` as if its `column` (when set) had been set STALE_SWAP + 10 s ago: due for the resume
    sweep (delivering_since, decided_at) or for the one more look after a give-up (updated_at, decided_at)."""
    await pool.execute(f"UPDATE {table} SET {column} = now() - make_interval(secs => $2) WHERE id = $1 AND {column}"
                       " IS NOT NULL", row_id, continuous.STALE_SWAP + 10)


async def stale_row(pool, what: str) -> uuid.UUID:
    """What the resume sweep takes up: a DEPLOY_AUTO delivery of v3 under way (`what` 'delivery') or a challenge
    decided (promote; 'swap'); its row's id."""
    if what == "delivery":
        await continuous_deployment(pool, "DEPLOY_AUTO")
        row_id = uuid.uuid4()
        await done(pool, row_id, NEWEST, "deployed", 100, True)
        return row_id
    return await decided(pool)


async def promotion_unanswered(pool, deps: continuous.ContinuousDeps) -> uuid.UUID:
    """A challenge decided (promote) whose swap was made once (_apply_decision) with the stand-in deployer: the
    deploy left unanswered or served as the deployer was told. Its id."""
    challenge_id = await decided(pool)
    await continuous._apply_decision(deps, await pool.fetchrow("SELECT * FROM challenges WHERE id = $1",
                                                                challenge_id), "promoting", evidence())
    return challenge_id


async def consumer_caught_up(stack, durable: str, seq: int, within: float, what: str) -> None:
    """Wait until the durable consumer `durable` of the EVENTS stream has acknowledged every event up to stream
    sequence `seq` (`what`: the event, for the failure's message)."""
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + within
        while True:
            info = await js.consumer_info(subjects.EVENTS_STREAM, durable)
            if info.delivered.stream_seq >= seq and not info.num_ack_pending and not info.num_pending:
                return
            assert time.monotonic() < deadline, f"monitoring never handled the {what} at {seq}: {info}"
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


__all__ = ["CHALLENGER", "CHAMPION", "DEPLOYMENT", "MONITORING_MIGRATIONS", "NEWEST", "Deployer", "make_stale",
           "consumer_caught_up", "continuous_deployment", "decided", "done", "evidence", "process",
           "promotion_unanswered", "schema_fixture", "stale_row", "stand_in_deployer", "swapped_events"]
