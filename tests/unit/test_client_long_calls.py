"""The SDK waits for the deployer's long commands as long as the gateway does (railyard_client.session's
ROUTE_TIMEOUTS): a deploy, a copy with `deploy` and an undeploy used the client's 60 s, so a deploy whose replicas took
longer was a ConnectionFailed in the SDK and the CLI while the platform carried on. Other calls keep Client(timeout)."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from railyard_client.errors import ConnectionFailed
from railyard_client.session import ROUTE_TIMEOUTS, UPLOAD_TIMEOUTS, Session

from services.gateway.http import JSON_ROUTES
from shared.settings import Settings

SLOW = 0.15  # seconds the stand-in gateway takes on every answer (3x the clients' own timeout, SLOW / 3)


class SlowGateway(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(SLOW)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "9")
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client that gave up
            self.wfile.write(b'{"id": 5}')

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowGateway)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)  # shutdown() waits a poll
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_deploy_copy_and_undeploy_wait_past_the_clients_timeout_and_other_calls_do_not(gateway, tmp_path):
    session = Session(gateway, token="t", timeout=SLOW / 3, credentials_file=tmp_path / "none.json")
    sent: list[tuple[str, float]] = []
    session.http.event_hooks["request"].append(
        lambda request: sent.append((request.url.path, request.extensions["timeout"]["read"])))
    for route in ("pipelines/deploy", "/pipelines/copy", "pipelines/undeploy", "deployments/set_model",
                  "deployments/set_shadow_model", "deployments/delete"):
        assert session.post(route, {"pipeline_id": 1}) == {"id": 5}, route
    with pytest.raises(ConnectionFailed, match="did not answer"):
        session.post("pipelines/list", {"workspace_id": 1})
    assert sent == [("/v1/api/pipelines/deploy", 315.0), ("/v1/api/pipelines/copy", 323.0),
                    ("/v1/api/pipelines/undeploy", 35.0), ("/v1/api/deployments/set_model", 320.0),
                    ("/v1/api/deployments/set_shadow_model", 320.0), ("/v1/api/deployments/delete", 320.0),
                    ("/v1/api/pipelines/list", SLOW / 3)]
    session.timeout = 900.0  # a larger Client(timeout) wins everywhere
    session.post("pipelines/undeploy", {})
    assert sent[-1] == ("/v1/api/pipelines/undeploy", 900.0)


def test_the_client_waits_longer_than_the_gateway_on_every_long_route():
    """The gateway answers (its 400 or its 504) before the client gives up, with the gateway's default settings; and
    every route whose gateway wait follows the deployer's replica timeouts (a deploy, a copy, an undeploy, and
    monitoring's set_model, set_shadow_model and delete, which deploy or undeploy themselves) is in ROUTE_TIMEOUTS:
    the three deployments/ routes were missing, so the client gave up at 60 s while the gateway waited 310 s."""
    settings = Settings()
    waits = {route.path.strip("/"): route.wait(settings) for route in JSON_ROUTES
             if route.path.strip("/") in ROUTE_TIMEOUTS}
    assert set(waits) == set(ROUTE_TIMEOUTS) - set(UPLOAD_TIMEOUTS), waits  # the uploads: not JSON routes
    for route, gateway_wait in waits.items():
        assert gateway_wait + 5 <= ROUTE_TIMEOUTS[route], (route, gateway_wait)
    slow = Settings(deployer={"ready_timeout": 600.0, "stop_timeout": 200.0})
    on_the_deployer = {route.path.strip("/") for route in JSON_ROUTES if route.wait(slow) > route.wait(settings)}
    assert on_the_deployer == {
        "pipelines/deploy", "pipelines/copy", "pipelines/undeploy",
        "deployments/set_model", "deployments/set_shadow_model", "deployments/delete"}
    assert on_the_deployer <= set(ROUTE_TIMEOUTS)


def test_every_route_the_gateway_waits_on_past_the_clients_default_timeout_is_in_route_timeouts(tmp_path):
    """Every route whose gateway wait (default settings) is above Client(timeout)'s default 60 s is waited for past
    the gateway's wait: a deployment's predict, monitor and get_stats (and the other long-running routes) wait
    305 s at the gateway while the client gave up at 60 s, a ConnectionFailed while the platform carried on."""
    settings = Settings()
    session = Session("http://h:1", token="t", credentials_file=tmp_path / "none.json")
    default = session.timeout
    assert default == 60.0
    long = {route.path.strip("/"): route.wait(settings) for route in JSON_ROUTES if route.wait(settings) > default}
    assert {"deployments/predict", "deployments/predict_bytes", "deployments/monitor", "deployments/monitor_bytes",
            "deployments/get_stats"} <= set(long)
    missing = {route: wait for route, wait in long.items() if route not in ROUTE_TIMEOUTS}
    assert not missing, missing
    for route, gateway_wait in long.items():
        assert session.wait_for(route) >= gateway_wait + 5, (route, gateway_wait)
    assert session.wait_for("deployments/review_prediction") == default  # a short route keeps Client(timeout)


def test_a_large_image_sent_as_multipart_waits_as_long_as_the_json_route(gateway, tmp_path, monkeypatch):
    """predict_bytes above the inline limit goes as a multipart upload (Session.send): it waits ROUTE_TIMEOUTS' too."""
    from railyard_client import monitoring_predictions

    session = Session(gateway, token="t", timeout=SLOW / 3, credentials_file=tmp_path / "none.json")
    sent: list[tuple[str, float]] = []
    session.http.event_hooks["request"].append(
        lambda request: sent.append((request.url.path, request.extensions["timeout"]["read"])))
    monkeypatch.setattr(monitoring_predictions, "INLINE_IMAGE_BYTES", 4)
    deployment = monitoring_predictions.DeploymentPredictions.__new__(monitoring_predictions.DeploymentPredictions)
    deployment._session, deployment.name = session, "d"
    assert deployment.predict_bytes("a.png", b"\x89PNG0123456789") == {"id": 5}
    assert sent == [("/v1/api/deployments/predict_bytes", ROUTE_TIMEOUTS["deployments/predict_bytes"])]


def test_no_timeout_and_an_httpx_timeout_are_taken_as_before(tmp_path):
    """Client(timeout=None) and Client(timeout=httpx.Timeout(...)) worked before the long routes' waits: every
    post raised TypeError (max() of a number and None or a Timeout)."""
    import httpx

    unlimited = Session("http://h:1", token="t", timeout=None, credentials_file=tmp_path / "none.json")
    assert unlimited.wait_for("pipelines/deploy") is None and unlimited.wait_for("pipelines/list") is None
    given = httpx.Timeout(7.0, connect=2.0)
    session = Session("http://h:1", token="t", timeout=given, credentials_file=tmp_path / "none.json")
    assert session.wait_for("pipelines/list") is given
    deploy = session.wait_for("pipelines/deploy")
    assert (deploy.connect, deploy.read, deploy.write) == (2.0, ROUTE_TIMEOUTS["pipelines/deploy"], 7.0)
    assert Session("http://h:1", token="t", timeout=5.0,
                   credentials_file=tmp_path / "none.json").wait_for("pipelines/undeploy") == 35.0


def test_a_user_sets_route_timeouts_by_argument_or_variable(gateway, tmp_path, monkeypatch):
    """ROUTE_TIMEOUTS were fixed at the gateway's defaults: a server whose gateway waits longer (a larger
    deployer.ready_timeout) had its clients give up first unless every call got the larger Client(timeout). Now
    Client(route_timeouts=) and RAILYARD_CLIENT_ROUTE_TIMEOUTS replace a route's wait (the argument's routes over the
    variable's, both over the defaults), another route included; a wait that is no positive number of seconds is a
    ConfigurationError before anything is sent."""
    from railyard_client import Client
    from railyard_client.errors import ConfigurationError
    from railyard_client.session import ENV_ROUTE_TIMEOUTS

    monkeypatch.setenv(ENV_ROUTE_TIMEOUTS, " pipelines/deploy=900 , /v1/api/pipelines/list=2.5,")
    client = Client(gateway, token="t", credentials_file=tmp_path / "none.json", timeout=SLOW / 3,
                    route_timeouts={"pipelines/copy": 910, "/pipelines/list/": 3})
    session = client._session
    sent: list[tuple[str, float]] = []
    session.http.event_hooks["request"].append(
        lambda request: sent.append((request.url.path, request.extensions["timeout"]["read"])))
    assert session.post("pipelines/list", {"workspace_id": 1}) == {"id": 5}  # past timeout: its own wait
    session.post("pipelines/deploy", {})
    session.post("pipelines/copy", {})
    session.post("pipelines/undeploy", {})
    assert sent == [("/v1/api/pipelines/list", 3.0), ("/v1/api/pipelines/deploy", 900.0),
                    ("/v1/api/pipelines/copy", 910.0),
                    ("/v1/api/pipelines/undeploy", ROUTE_TIMEOUTS["pipelines/undeploy"])]
    assert ROUTE_TIMEOUTS["pipelines/deploy"] == 315.0  # the defaults are not changed for other clients
    assert Session(gateway, token="t", credentials_file=tmp_path / "none.json",
                   timeout=1000.0).wait_for("pipelines/deploy") == 1000.0  # a larger timeout still wins

    for variable, message in [("pipelines/deploy", "is not route=seconds"), ("pipelines/deploy=0", "positive"),
                              ("pipelines/deploy=nan", "positive"), ("pipelines/deploy=ten", "positive"),
                              ("=5", "is not a route name")]:
        monkeypatch.setenv(ENV_ROUTE_TIMEOUTS, variable)
        with pytest.raises(ConfigurationError, match=message) as refused:
            Session(gateway, token="t", credentials_file=tmp_path / "none.json")
        assert ENV_ROUTE_TIMEOUTS in str(refused.value)
    monkeypatch.delenv(ENV_ROUTE_TIMEOUTS)
    for given in ({"pipelines/deploy": -1}, {"pipelines/deploy": float("inf")}, {"pipelines/deploy": True},
                  {"pipelines/deploy": "x"}, {7: 10}):
        with pytest.raises(ConfigurationError, match="route_timeouts"):
            Client(gateway, token="t", credentials_file=tmp_path / "none.json", route_timeouts=given)
    assert sent[4:] == []  # nothing sent by the refused ones


def test_an_unknown_route_or_a_route_timeouts_that_is_no_mapping_is_refused(tmp_path, monkeypatch):
    """review of smallfix (session 28): `route_timeouts={"pipelines/deplyo": 900}` was taken and had no effect (the
    deploy still gave up at 315 s), and `route_timeouts=[("pipelines/deploy", 900)]` raised AttributeError. Both are
    a ConfigurationError now: the misspelt route naming the close one and the API's routes, from the argument or the
    variable; an inference route (path parameters) says where its wait is given."""
    from railyard_client import Client
    from railyard_client.errors import ConfigurationError
    from railyard_client.session import API_ROUTES, ENV_ROUTE_TIMEOUTS

    monkeypatch.delenv(ENV_ROUTE_TIMEOUTS, raising=False)
    none = tmp_path / "none.json"
    with pytest.raises(ConfigurationError) as refused:
        Client("http://h:1", token="t", credentials_file=none, route_timeouts={"pipelines/deplyo": 900})
    message = str(refused.value)
    assert "route_timeouts: 'pipelines/deplyo' is not a route of the API" in message, message
    assert "did you mean pipelines/deploy" in message and "API_ROUTES lists the routes" in message, message
    assert "datasets/upload_rows" not in message, message  # the close matches only, not all 142 routes
    with pytest.raises(ConfigurationError, match="Pipeline.infer its timeout"):
        Client("http://h:1", token="t", credentials_file=none, route_timeouts={"pipelines/infer/d/p": 900})
    for given in ([("pipelines/deploy", 900)], "pipelines/deploy=900", 900):
        with pytest.raises(ConfigurationError, match="route_timeouts must be a mapping of route to seconds"):
            Client("http://h:1", token="t", credentials_file=none, route_timeouts=given)
    monkeypatch.setenv(ENV_ROUTE_TIMEOUTS, "pipelines/deploy=900,pipeline/copy=910")
    with pytest.raises(ConfigurationError, match=f"{ENV_ROUTE_TIMEOUTS}: 'pipeline/copy' is not a route"):
        Client("http://h:1", token="t", credentials_file=none)
    monkeypatch.delenv(ENV_ROUTE_TIMEOUTS)
    assert set(ROUTE_TIMEOUTS) <= API_ROUTES


def test_the_clients_routes_are_the_gateways_post_routes():
    """API_ROUTES (what route_timeouts may name) are the gateway's POST routes without path parameters: a route
    added to the API without it would be refused by the client."""
    from types import SimpleNamespace

    from railyard_client.session import API_ROUTES

    from services.gateway.http import create_app

    app = create_app(SimpleNamespace(settings=Settings(), extras={}, broker=None, objects=None))
    while not hasattr(app, "openapi"):  # under the inference fast path and the body limits
        app = app.app
    routes = {path.removeprefix("/v1/api/") for path, operations in app.openapi()["paths"].items()
              if "post" in operations and path.startswith("/v1/api/") and "{" not in path}
    assert API_ROUTES == routes, (routes - API_ROUTES, API_ROUTES - routes)


def test_uploads_wait_past_the_gateways_wait_and_their_route_timeouts(gateway, tmp_path):
    """The uploads go through Session.send (multipart, or a dataset's Arrow rows), not post: they used
    Client(timeout) whatever ROUTE_TIMEOUTS or route_timeouts said, so a model whose check took longer than 60 s
    was a ConnectionFailed while the gateway waited 305 s for the registry (closing28: 'route_timeouts for
    multipart routes are accepted but those calls don't use per-route waits')."""
    settings = Settings()
    gateway_waits = {  # services/gateway: _stage_and_register's, lineage.py's upload_timeout, orchestrations.py's
        "models/upload_and_convert": settings.registry.worker_timeout + settings.nats.request_timeout,
        "models/upload_stream": settings.registry.worker_timeout + settings.nats.request_timeout,
        **dict.fromkeys(("datasets/upload_file", "datasets/upload_rows", "files/upload", "orchestration/upload"),
                        settings.nats.request_timeout + 60.0)}
    assert set(gateway_waits) == set(UPLOAD_TIMEOUTS)
    for route, gateway_wait in gateway_waits.items():
        assert gateway_wait + 5 <= ROUTE_TIMEOUTS[route], (route, gateway_wait)

    session = Session(gateway, token="t", timeout=SLOW / 3, credentials_file=tmp_path / "none.json",
                      route_timeouts={"files/upload": 42.0})
    sent: list[tuple[str, float]] = []
    session.http.event_hooks["request"].append(
        lambda request: sent.append((request.url.path, request.extensions["timeout"]["read"])))
    for route in ("models/upload_and_convert", "orchestration/upload", "files/upload"):
        answer = session.send("POST", f"/v1/api/{route}", files={"file": ("m.onnx", b"bytes", "application/zip")})
        assert answer.json() == {"id": 5}, route  # answered after SLOW: past the client's own timeout
    with pytest.raises(ConnectionFailed, match="did not answer"):  # a route with no wait of its own
        session.send("POST", "/v1/api/files/download", json={"workspace_id": 1, "path": "/a"})
    assert sent == [("/v1/api/models/upload_and_convert", 315.0), ("/v1/api/orchestration/upload", 75.0),
                    ("/v1/api/files/upload", 42.0), ("/v1/api/files/download", SLOW / 3)]
    session.send("POST", "/v1/api/files/upload", files={"file": ("a", b"b")}, timeout=900.0)  # its own: kept
    assert sent[-1] == ("/v1/api/files/upload", 900.0)
