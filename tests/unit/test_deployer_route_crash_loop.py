"""A deployment whose replicas all crash-loop has the route `Error`, with the deployer's reason and the seconds until
it starts a replica again (services/deployer/handlers.py, route_state and resolve_deployment): the gateway answers
its inferences 503 `deployment_crash_loop` saying so (tests/unit/test_gateway_crash_loop.py). Before 2026-12-05 the
route said `Starting` for as long as the loop lasted, and the gateway 'deployment X is starting; retry shortly'.
Not for a replica that merely exited (replaced within a pass) nor a first failed replacement: no loop yet. The crash
world of tests/unit/test_deployer_crash_status.py (stand-in processes and bus, fake clock)."""

from __future__ import annotations

import asyncio

from services.deployer import handlers
from services.deployer.handlers import ROUTE_REASON_MAX, route_state
from tests.unit.deployer_world import ALICE, _deployed_as, world  # noqa: F401 - the fixture
from tests.unit.test_deployer_crash_status import LAST_LINE, _run_for, _world, clock  # noqa: F401 - the fixture
from tests.unit.test_deployer_replica_status import RUNNING


async def test_every_replica_in_a_crash_loop_is_an_error_route_with_the_reason(tmp_path, monkeypatch,
                                                                              clock):  # noqa: F811 - the fixture
    crash = _world(tmp_path, monkeypatch, clock)
    for replica in crash.set.replicas:  # both came up, then exit: replaced at once, then the loop
        replica.process.returncode = 1
    await _run_for(crash.backend, clock, 0.2)
    assert route_state(await crash.backend.status("d-1"))[0] == "Starting"  # replaced once: a restart, no loop
    await _run_for(crash.backend, clock, 1.2)  # the replacements exited once each: still no loop
    assert route_state(await crash.backend.status("d-1"))[0] == "Starting"
    await _run_for(crash.backend, clock, 2.4)  # exited again: a loop, each waiting its back-off
    engines = await crash.backend.status("d-1")
    status, reason, retry_after = route_state(engines)
    assert status == "Error", engines
    assert reason.startswith("CrashLoopBackOff: ") and LAST_LINE in reason, reason
    assert retry_after == min(e["restart_in"] for e in engines) and 0 < retry_after <= 4, engines

    crash.mode[0] = "load"  # its next replacements start and load: nothing to wait for, the loop's reason kept
    await _run_for(crash.backend, clock, 4.0)
    engines = await crash.backend.status("d-1")
    assert [e["status"] for e in engines] == ["Starting", "Starting"], engines
    status, reason, retry_after = route_state(engines)
    assert status == "Error" and LAST_LINE in reason and retry_after is None, (status, reason, retry_after)

    crash.bus.answers[crash.set.replicas[1].replica_id] = RUNNING  # one comes up: it serves
    assert route_state(await crash.backend.status("d-1")) == ("Running", None, None)


async def test_one_replica_serving_beside_a_loop_is_running(tmp_path, monkeypatch, clock):  # noqa: F811 - the fixture
    crash = _world(tmp_path, monkeypatch, clock)
    crash.set.replicas[0].process.returncode = 1
    await _run_for(crash.backend, clock, 8)
    engines = await crash.backend.status("d-1")
    assert engines[0]["crashes"] >= 2 and route_state(engines) == ("Running", None, None)


def test_a_long_reason_is_cut_and_none_is_said_without_one():
    looping = {"status": "Error", "crashes": 3, "reason": "x" * 9000, "restart_in": 2.5}
    assert route_state([looping]) == ("Error", "x" * ROUTE_REASON_MAX, 2.5)
    status, reason, retry_after = route_state([{"status": "Starting", "crashes": 2}])
    assert status == "Error" and reason == "1 replica(s) exiting soon after their start" and retry_after is None
    assert route_state([]) == ("Starting", None, None)
    assert route_state([{"status": "Error", "crashes": 1, "reason": "r", "restart_in": 1.0}])[0] == "Starting"


def test_the_resolve_carries_the_reason_and_the_wait(world, monkeypatch):  # noqa: F811 - the fixture
    async def scenario(world) -> None:
        await _deployed_as(world, "a")
        engines = [{"name": "engine-a-5-x", "status": "Error", "crashes": 4, "restart_in": 7.5,
                    "reason": f"CrashLoopBackOff: {LAST_LINE} (4 exits in a row soon after start); restarted in 8 s"}]

        async def status(name: str) -> list[dict]:
            return engines

        monkeypatch.setattr(world.backend, "status", status)
        monkeypatch.setattr(world.backend, "serving_now", lambda name: False)
        route = await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert (route.status, route.reason, route.retry_after) == ("Error", engines[0]["reason"], 7.5)
        engines[0] |= {"status": "Running"}
        route = await handlers.resolve_deployment(world.deps, ALICE, "t", "a-5")
        assert (route.status, route.reason, route.retry_after) == ("Running", None, None)

    asyncio.run(scenario(world))


def test_a_route_without_a_crash_loop_reads_as_it_did_for_an_older_gateway():
    """Messages refuse unknown fields: a gateway (monitoring, lineage) older than `reason` and `retry_after` could read
    no route of a newer deployer during a rolling update if they were always sent (null). They are left out unset, so
    only a crash loop's Error route carries them (it was a 503 for that gateway anyway)."""
    from shared.messages.deployer import DeploymentRoute

    older = set(DeploymentRoute.model_fields) - {"reason", "retry_after"}  # the fields before 9c82caad
    running = DeploymentRoute(deployment_id=1, name="d", pipeline_name="p", workspace_id=1, status="Running",
                              pipeline_version="1", input_schema=None)
    for route in (running, running.model_copy(update={"status": "Starting"})):
        assert set(route.model_dump(mode="json", by_alias=True)) <= older, route
        assert DeploymentRoute.model_validate_json(route.model_dump_json()) == route
    looping = running.model_copy(update={"status": "Error", "reason": "CrashLoopBackOff: x", "retry_after": 2.5})
    dumped = looping.model_dump(mode="json", by_alias=True)
    assert (dumped["reason"], dumped["retry_after"]) == ("CrashLoopBackOff: x", 2.5)
    assert DeploymentRoute.model_validate(dumped) == looping
    starting_again = looping.model_copy(update={"retry_after": None})
    assert "retry_after" not in starting_again.model_dump(mode="json") and \
        DeploymentRoute.model_validate(starting_again.model_dump(mode="json")) == starting_again
