"""The gateway waits for the deployer's long commands as long as they may take (services/gateway/http.py's
Route.wait): a copy with `deploy` answers once the copy's replicas serve, an undeploy once its replicas drained.
Both waited the bus's request timeout (5 s) and answered 504 while the deployer carried on. A deploy waited the
model check's worker_timeout whatever deployer.ready_timeout said: a ready timeout above ~300 s was a 504 while
the deploy carried on. shared.settings.deploy_wait is the one wait of a deploy, the gateway's and monitoring's; the
gateway waits one request timeout more for monitoring's set_model, set_shadow_model and delete, which call the
deployer themselves."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from services.deployer.handlers import UNDEPLOY_LOCK_WAIT
from services.gateway.http import JSON_ROUTES
from services.monitoring import app as monitoring_app
from shared import subjects
from shared.settings import Settings, deploy_wait

ROUTES = {route.subject: route for route in JSON_ROUTES}


def test_deploy_copy_and_undeploy_wait_for_the_deployers_replica_timeouts():
    settings = Settings(nats={"request_timeout": 5.0}, deployer={"ready_timeout": 70.0, "stop_timeout": 25.0})
    ready, stop, request = 70.0, 25.0, 5.0
    # a deploy or a copy: its models resolved (a request each), then up to ready_timeout for the replicas
    assert ROUTES[subjects.DEPLOYER_PIPELINES_DEPLOY].wait(settings) >= request + ready
    assert ROUTES[subjects.DEPLOYER_PIPELINES_COPY].wait(settings) >= request + ready
    # an undeploy: the pipeline's lock (at most UNDEPLOY_LOCK_WAIT of the request timeout), then its replicas drain
    assert ROUTES[subjects.DEPLOYER_PIPELINES_UNDEPLOY].wait(settings) >= request * UNDEPLOY_LOCK_WAIT + stop
    assert ROUTES[subjects.DEPLOYER_PIPELINES_LIST].wait(settings) == request  # the others are unchanged


def test_a_deploy_waits_its_ready_timeout_even_above_the_model_checks():
    deploy = ROUTES[subjects.DEPLOYER_PIPELINES_DEPLOY]
    assert deploy.wait(Settings()) == deploy_wait(Settings()) == 305.0  # 5 + the model check's 300 s
    slow = Settings(nats={"request_timeout": 5.0}, registry={"worker_timeout": 300.0},
                    deployer={"ready_timeout": 600.0})
    # the lookups (5 s), the first database step (4 s), 600 s for the replicas, what may follow their start (a
    # redeploy's record, the looks at a failed one, a set's stop: 4 + 19 + 20 s) and the answer's way back (1 s),
    # after another deploy of the pipeline held its lock (4 + 600 + 4 + 19 + 20 s): it waited 305 s and answered 504
    # (then 610 s, until the caller's wait counted what follows the start and a deploy ahead)
    assert deploy.wait(slow) == deploy_wait(slow) == pytest.approx(653.0 + 647.0)
    assert deploy_wait(Settings(registry={"worker_timeout": 400.0})) == 405.0


class Built(Exception):
    """Stops monitoring's start once it built its dependencies (what it waits for its calls to the deployer)."""


def monitoring_deploy_wait(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> float:
    """The deploy_timeout monitoring's start gives its handlers (set_model, set_shadow_model and delete wait that long
    for the deployer's deploy or undeploy), as the service builds it from `settings`."""
    built: dict[str, float] = {}

    def capture(**deps: object) -> None:
        built["deploy_timeout"] = deps["deploy_timeout"]
        raise Built

    class Feed:
        async def start(self, connection: object) -> None:
            pass

    monkeypatch.setattr(monitoring_app, "bus_verifier", lambda *args: (None, Feed()))
    monkeypatch.setattr(monitoring_app.handlers, "MonitoringDeps", capture)
    runtime = SimpleNamespace(settings=settings, db=None, objects=None, extras={},
                              broker=SimpleNamespace(config=SimpleNamespace(
                                  connection_state=SimpleNamespace(connection=None))))
    with pytest.raises(Built):
        asyncio.run(monitoring_app.start(runtime))
    return built["deploy_timeout"]


SWAPS = (subjects.MONITORING_DEPLOYMENTS_SET_MODEL, subjects.MONITORING_DEPLOYMENTS_SET_SHADOW_MODEL,
         subjects.MONITORING_DEPLOYMENTS_DELETE)


@pytest.mark.parametrize("settings", [Settings(), Settings(deployer={"ready_timeout": 600.0}),
                                      Settings(nats={"request_timeout": 2.0}, registry={"worker_timeout": 900.0})],
                         ids=["defaults", "ready_timeout_600", "worker_timeout_900"])
def test_the_gateway_waits_for_monitorings_model_swaps_longer_than_monitoring_waits_for_the_deployer(
        settings, monkeypatch):
    """set_model / set_shadow_model / delete answer after monitoring's own call to the deployer (a deploy, an
    undeploy), which it waits deploy_wait for: the gateway's rows waited request + worker_timeout, 305 s against
    monitoring's 1300 s with ready_timeout 600, a 504 while the swap carried on."""
    monitoring = monitoring_deploy_wait(settings, monkeypatch)
    assert monitoring == deploy_wait(settings) == ROUTES[subjects.DEPLOYER_PIPELINES_DEPLOY].wait(settings)
    for subject in SWAPS:
        gateway = ROUTES[subject].wait(settings)
        # one request timeout more: monitoring's own lookups around its call to the deployer
        assert gateway == monitoring + settings.nats.request_timeout, subject
    assert ROUTES[subjects.MONITORING_DEPLOYMENTS_SET_MODEL].wait(Settings()) == 310.0
    assert ROUTES[subjects.MONITORING_DEPLOYMENTS_SET_MODEL].wait(Settings(deployer={"ready_timeout": 600.0})) == \
        pytest.approx(1305.0)
