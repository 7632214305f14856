"""A route's resolve (services/deployer/handlers.py, resolve_deployment) answers `Running` from what the deployer
knows (backend.serving_now: a replica answered `Running` to a status probe within SILENT_KEPT_FOR, none of its
probes unanswered since, not exited) instead of probing every replica; otherwise it probes them as before. Before
2026-12-05 (session 30) every resolve, the gateway's refresh of a running deployment's route every ROUTE_TTL (2 s)
per gateway process included, sent each replica a status probe answered on its event loop beside its requests.
Same in-memory world as test_deployer_locks.py (its store over dicts, the real LocalBackend's bookkeeping)."""

from __future__ import annotations

import asyncio
import json
import time

from services.deployer import handlers
from services.deployer.backend import SILENT_KEPT_FOR
from tests.unit.deployer_world import ALICE, _deployed_as, world  # noqa: F401 - the fixture
from tests.unit.test_deployer_replica_status import RUNNING


def test_a_resolve_answers_from_a_fresh_answer_and_probes_otherwise(world):  # noqa: F811 - the fixture
    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        probes: list[str] = []
        answer: list[object] = [RUNNING]

        async def request(subject: str, payload: bytes, wait: float) -> bytes:
            probes.append(subject)
            if isinstance(answer[0], BaseException):
                raise answer[0]
            return json.dumps(answer[0]).encode()

        world.backend.request = request
        [replica] = world.backend.sets["a-5"].replicas
        route = await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert route.status == "Running" and len(probes) == 1  # nothing known yet: asked, as before
        for _ in range(3):  # it answered just now: known, no probe
            assert (await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")).status == "Running"
        assert len(probes) == 1, probes

        replica.answered_at = time.monotonic() - SILENT_KEPT_FOR - 1  # its last answer too old: asked again
        assert (await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")).status == "Running"
        assert len(probes) == 2
        assert (await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")).status == "Running"
        assert len(probes) == 2  # and that answer is known again

        replica.silent_probes = 1  # a probe of it went unanswered since: asked (the silence rule decides)
        answer[0] = TimeoutError()
        await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert len(probes) == 3
        replica.silent_probes, replica.answered_at = 0, time.monotonic()

        replica.answered = {"status": "Starting"}  # its last answer was not Running: asked
        answer[0] = RUNNING
        await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert len(probes) == 4

        replica.process.returncode = 1  # exited since its answer: not known to run; its state says Error
        route = await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert route.status == "Starting" and len(probes) == 4  # an exited replica is not probed
        replica.process.returncode = None
        replica.gave_up = "it did not answer within 60 s of its start (deployer.ready_timeout)"
        assert not world.backend.serving_now("a-5")

    asyncio.run(scenario(world))
