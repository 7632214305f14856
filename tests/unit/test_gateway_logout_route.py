"""The gateway's logout endpoint (73b2f544) before the bus: what it forwards to auth.token.logout, and what it refuses
itself in OAuth2's error shape. A refresh_token longer than EndSession takes (8192 characters) was a pydantic
ValidationError no handler caught: a 500 'internal error' (logged as unhandled) where Keycloak answers 400
invalid_grant. The session's end itself is tests/integration/test_auth_logout.py's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.gateway import handlers
from services.gateway.http import create_app
from shared.errors import UpstreamTimeout
from shared.settings import Settings
from tests.unit.gateway_sign_in_routes import gateway_app, sign_in_routes

LOGOUT = "/auth/realms/master/protocol/openid-connect/logout"


@pytest.fixture(scope="module")
def app():
    """One gateway app for the tests of the `gateway` fixture (a build is ~0.3 s of CPU), each with its own client and
    list of what reached auth (tests/unit/gateway_sign_in_routes.py); their few logouts spend nothing near its
    buckets' burst of 50. The two tests below that need other settings build their own."""
    return gateway_app()


@pytest.fixture
def gateway(monkeypatch, app):
    with sign_in_routes(monkeypatch, app) as (client, sent):
        yield client, sent


def test_a_logout_is_forwarded_with_the_clients_credentials(gateway):
    client, sent = gateway
    answer = client.post(LOGOUT, data={"refresh_token": "a.b.c"}, auth=("railyard-sdk", "s3cret"))
    assert answer.status_code == 204 and answer.headers["cache-control"] == "no-store", answer.text
    assert [(c.client_id, c.client_secret, c.refresh_token) for c in sent] == [("railyard-sdk", "s3cret", "a.b.c")]


@pytest.mark.parametrize("data, status, error", [
    ({"refresh_token": "x" * 8193}, 400, "invalid_grant"),  # before: 500 internal
    ({}, 400, "invalid_request"),
    ({"refresh_token": "a.b.c", "client_id": ""}, 401, "invalid_client"),
])
def test_a_logout_refused_at_the_gateway_answers_oauths_error(gateway, data, status, error):
    client, sent = gateway
    answer = client.post(LOGOUT, data=data, auth=("railyard-sdk", "s3cret") if data.get("client_id") is None else None)
    assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text
    assert sent == []


async def test_a_logout_the_bus_refuses_to_the_gateway_is_a_503_at_once(monkeypatch):
    """A rolling update: the gateway's NATS server is still on the permissions of the release before the logout
    endpoint, so it drops the publish to auth.token.logout and answers nothing but its permissions violation. The
    logout is a 503 (typed, with Retry-After) as soon as the violation comes, as the deployer's refused
    registry.models.exist is (PublishRefusals.unless_refused). Before, it waited out the request timeout: a 504."""
    import asyncio

    import httpx

    from shared import bus
    from shared.settings import NatsSettings

    class Broker:  # weakly referable, as make_broker's is
        pass

    broker, refusals, asked = Broker(), bus.PublishRefusals(), asyncio.Event()
    bus._REFUSALS[broker] = refusals

    async def request(broker, subject, body, *, timeout, **_):  # the publish dropped: no answer before the timeout
        asked.set()
        await asyncio.sleep(timeout)
        raise UpstreamTimeout(f"auth did not answer within {timeout:g}s")

    monkeypatch.setattr(handlers, "request", request)
    app = create_app(SimpleNamespace(settings=Settings(nats=NatsSettings(request_timeout=30)), extras={},
                                     broker=broker, objects=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        sent = asyncio.ensure_future(client.post(LOGOUT, data={"refresh_token": "a.b.c"},
                                                 auth=("api-client", "s3cret")))
        async with asyncio.timeout(5):  # before: 30 s, then 504
            await asked.wait()
            # nats-py lowercases the server's -ERR line
            refusals.note(Exception("nats: 'permissions violation for publish to \"auth.token.logout\"'"))
            answer = await sent
    body = answer.json()
    assert (answer.status_code, body["error"]) == (503, "unavailable"), answer.text
    assert "session was not ended" in body["error_description"] and answer.headers["retry-after"] == "1"


async def test_logouts_and_token_requests_of_one_source_share_its_bucket_and_no_client_bucket(monkeypatch):
    """The token and logout routes' first steps are one code (http.py `client_form`; the logout route had copied the
    token route's: `duplicates` D4): a source's sign-outs and token requests spend one bucket, and a logout counts as
    the refresh_token grant it stands for, so the login client's sign-outs from many addresses spend no bucket of
    that client (its secret is every user's: ratelimit.py's Decisions)."""
    import httpx

    from shared.settings import GatewaySettings

    async def end_session(broker, cmd, timeout):
        pass

    monkeypatch.setattr(handlers, "end_session", end_session)
    settings = Settings(gateway=GatewaySettings(trusted_proxies=["127.0.0.5"], token_rate_per_source=0.001,
                                                token_burst_per_source=3, token_rate_per_client=0.001,
                                                token_burst_per_client=2))
    app = create_app(SimpleNamespace(settings=settings, extras={}, broker=None, objects=None))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.5", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as proxy:
        async def logout(source: str, **form: str) -> httpx.Response:
            return await proxy.post(LOGOUT, headers={"X-Forwarded-For": source}, auth=("api-client", "its-secret"),
                                    data={"refresh_token": "a.b.c", **form})

        for i in range(6):  # three times the client's burst, each from its own address
            assert (await logout(f"203.0.113.{i}", grant_type="client_credentials")).status_code == 204
        # one source: a token request (stopped at the route: no grant_type) and two logouts spend its burst of 3
        token = await proxy.post("/auth/realms/master/protocol/openid-connect/token",
                                 headers={"X-Forwarded-For": "198.51.100.7"}, data={"client_id": "railyard-ui"})
        assert token.json()["error"] == "invalid_request"
        assert [(await logout("198.51.100.7")).status_code for _ in range(2)] == [204, 204]
        refused = await logout("198.51.100.7")
        assert (refused.status_code, refused.json()["error"]) == (429, "rate_limited") and refused.headers[
            "retry-after"]
        token = await proxy.post("/auth/realms/master/protocol/openid-connect/token",
                                 headers={"X-Forwarded-For": "198.51.100.7"}, data={"client_id": "railyard-ui"})
        assert token.json()["error"] == "rate_limited"
