"""The gateway waits for the deployer's long commands as long as they may take (services/gateway/http.py's
Route.wait): a copy with `deploy` answers once the copy's replicas serve, an undeploy once its replicas drained.
Both waited the bus's request timeout (5 s) and answered 504 while the deployer carried on."""

from __future__ import annotations

from services.deployer.handlers import UNDEPLOY_LOCK_WAIT
from services.gateway.http import JSON_ROUTES
from shared import subjects
from shared.settings import Settings

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
