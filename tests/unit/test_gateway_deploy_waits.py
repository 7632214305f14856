"""The gateway waits for the deployer's long commands as long as they may take (services/gateway/http.py's
Route.wait): a copy with `deploy` answers once the copy's replicas serve, an undeploy once its replicas drained.
Both waited the bus's request timeout (5 s) and answered 504 while the deployer carried on. A deploy waited the
model check's worker_timeout whatever deployer.ready_timeout said: a ready timeout above ~300 s was a 504 while
the deploy carried on. shared.settings.deploy_wait is the one wait of a deploy, the gateway's and monitoring's."""

from __future__ import annotations

import inspect

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
    # the lookups (5 s), then 600 s for the replicas, then the reply: it waited 305 s and answered 504
    assert deploy.wait(slow) == deploy_wait(slow) == 610.0
    assert deploy_wait(Settings(registry={"worker_timeout": 400.0})) == 405.0


def test_monitoring_waits_for_its_model_swaps_deploys_as_long_as_the_gateway():
    # monitoring's set_model/set_shadow_model deploy a new version: it built the same wait by hand (without ready)
    assert "deploy_timeout=deploy_wait(settings)" in inspect.getsource(monitoring_app.start)
