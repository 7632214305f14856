"""The gateway's token buckets, body limits by route, its one error mapping, and the decoded-size bound of Arrow
IPC bodies."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from services.gateway.errors import error_parts
from services.gateway.limits import Limits, is_multipart
from services.gateway.ratelimit import TokenBuckets, TokenEndpointLimits
from shared.arrow_codec import from_ipc, to_ipc_file, to_ipc_stream
from shared.errors import InvalidRequest, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable
from shared.ipc_size import ipc_decoded_bytes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # another key has its own bucket
    clock.now = 1.0
    assert buckets.take("a") == 0.0


def test_the_bucket_table_is_bounded():
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=10, clock=Clock())
    for i in range(100):
        buckets.take(str(i))
    assert len(buckets._buckets) == 10


def test_token_endpoint_limits_per_source_and_per_client():
    clock = Clock()
    limits = TokenEndpointLimits(TokenBuckets(1.0, 2, clock=clock), TokenBuckets(1.0, 3, clock=clock))
    limits.check_source("10.0.0.1")
    limits.check_source("10.0.0.1")
    with pytest.raises(TooManyRequests, match="address"):
        limits.check_source("10.0.0.1")
    limits.check_source("10.0.0.2")
    for _ in range(3):
        limits.check_client("inference-1", "its-secret", "client_credentials")
    limits.check_client("inference-1", "made-up", "client_credentials")  # another secret: not the real callers'
    with pytest.raises(TooManyRequests, match="client") as raised:
        limits.check_client("inference-1", "its-secret", "client_credentials")
    status, headers, _ = error_parts(raised.value, "oauth")
    assert status == 429 and headers["Retry-After"] == "1"


def test_one_mapping_for_every_edge():
    status, headers, body = error_parts(Unauthorized("no"), "api")
    assert (status, headers["WWW-Authenticate"], body) == (401, "Bearer", b'{"code":"unauthorized","msg":"no"}')
    status, headers, body = error_parts(Unauthorized("bad", code="invalid_grant"), "oauth")
    assert status == 401 and b'"error":"invalid_grant"' in body and headers["Cache-Control"] == "no-store"
    assert error_parts(PayloadTooLarge("big"), "oip", close=True)[1]["Connection"] == "close"
    assert b'"error":"big"' in error_parts(PayloadTooLarge("big"), "oip")[2]
    assert error_parts(Unavailable("starting"), "api")[1]["Retry-After"] == "1"
    # a deployment whose restore failed needs a redeploy: no Retry-After inviting retries that cannot help
    assert "Retry-After" not in error_parts(Unavailable("failed", code="deployment_failed"), "oip")[1]


def test_routes_get_the_limit_of_what_they_carry():
    limits = Limits(max_json_bytes=1, max_body_bytes=2, max_upload_bytes=3, body_timeout=1)
    assert limits.for_path("/v1/api/models/upload_from_registry") == (1, False)
    assert limits.for_path("/v1/api/workspaces/list") == (1, False)
    assert limits.for_path("/v1/api/pipelines/infer/d-1/p") == (2, False)
    assert limits.for_path("/v2/models/d-1/infer") == (2, False)
    assert limits.for_path("/v1/api/models/upload_stream") == (3, True)
    # the image routes: a multipart body (image + JSON metadata) gets the image limit, a JSON body the JSON one
    images = Limits(max_json_bytes=1, max_body_bytes=2, max_upload_bytes=3, body_timeout=1, max_image_bytes=10)
    for verb in ("predict", "predict_bytes", "monitor", "monitor_bytes"):
        assert images.for_path(f"/v1/api/deployments/{verb}", multipart=True) == (11, True)
        assert images.for_path(f"/v1/api/deployments/{verb}") == (1, False)
    assert images.for_path("/v1/api/deployments/update", multipart=True) == (1, False)
    multipart = {"headers": [(b"content-type", b"multipart/form-data; boundary=x")]}
    assert is_multipart(multipart) and not is_multipart({"headers": [(b"content-type", b"application/json")]})


@pytest.mark.parametrize("compression", ["zstd", "lz4", None])
@pytest.mark.parametrize("encode", ["file", "stream"])
def test_decoded_size_is_read_without_decoding(compression, encode):
    table = pa.table({"x": pa.array(np.zeros(1 << 20)), "i": pa.array(np.ones(1 << 20, dtype=np.int32))})
    sink = pa.BufferOutputStream()
    new = pa.ipc.new_file if encode == "file" else pa.ipc.new_stream
    with new(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
        writer.write_table(pa.table({"x": pa.array(np.zeros(10)), "i": pa.array(np.ones(10, dtype=np.int32))}))
    data = sink.getvalue().to_pybytes()
    assert abs(ipc_decoded_bytes(data) - table.nbytes) < 1024
    with pytest.raises(PayloadTooLarge, match="decodes to"):
        from_ipc(data, max_decoded_bytes=table.nbytes // 2)
    assert from_ipc(data, max_decoded_bytes=table.nbytes * 2).num_rows == table.num_rows + 10


def test_dictionary_batches_count_too():
    table = pa.table({"s": pa.array(["x" * 1000, "y" * 1000] * 100).dictionary_encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    assert ipc_decoded_bytes(sink.getvalue().to_pybytes()) >= 2000


def test_malformed_bodies_are_invalid_not_crashes():
    small = pa.table({"x": [1.0, 2.0]})
    for body in (b"ARROW1 but not really", b"\xff\xff\xff\xff\x10\x00\x00\x00garbage",
                 to_ipc_file(small)[:-20], to_ipc_stream(small)[:30]):
        with pytest.raises(InvalidRequest):
            from_ipc(body, max_decoded_bytes=1 << 20)


async def test_an_ipv6_source_is_counted_by_its_64():
    """The gateway's token route in process: every address of a /64 is free to whoever holds it, so they share one
    bucket (an IPv4 address keeps its own, mapped or not). The route counts the source (counted_as) once, for the
    bucket and the auth service alike. Nothing reaches the bus: each request stops at the route (no grant_type)."""
    from types import SimpleNamespace

    import httpx

    from services.gateway.http import create_app
    from shared.settings import GatewaySettings, Settings

    settings = Settings(gateway=GatewaySettings(trusted_proxies=["127.0.0.5"], token_rate_per_source=0.001,
                                                token_burst_per_source=2))
    app = create_app(SimpleNamespace(settings=settings, extras={}, broker=None, objects=None))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.5", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as proxy:
        async def error(source: str) -> str:
            response = await proxy.post("/auth/realms/master/protocol/openid-connect/token",
                                        headers={"X-Forwarded-For": source}, data={"client_id": "railyard-ui"})
            return response.json()["error"]

        assert await error("2001:db8:1:2::1") == "invalid_request"
        assert await error("2001:db8:1:2:ffff:ffff:ffff:fffe") == "invalid_request"
        assert await error("2001:db8:1:2:abcd::9") == "rate_limited"
        assert await error("2001:db8:1:3::1") == "invalid_request"  # the next /64
        assert await error("192.0.2.1") == "invalid_request"
        assert await error("::ffff:192.0.2.1") == "invalid_request"  # the same IPv4 address, mapped
        assert await error("192.0.2.1") == "rate_limited"


async def test_the_public_client_spends_no_shared_bucket():
    """The gateway's token route in process: requests naming the web UI's public client (no secret) never spend a
    bucket of that client id, so they cannot use up every user's sign-ins (an inference client's client_credentials
    requests still share theirs: the next test). Nothing reaches the bus: each request stops at the route (no
    grant_type)."""
    from types import SimpleNamespace

    import httpx

    from services.gateway.http import create_app
    from shared.settings import GatewaySettings, Settings

    settings = Settings(gateway=GatewaySettings(trusted_proxies=["127.0.0.5"], token_rate_per_client=0.001,
                                                token_burst_per_client=2))
    app = create_app(SimpleNamespace(settings=settings, extras={}, broker=None, objects=None))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.5", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as proxy:
        async def error(source: str, **client) -> str:
            response = await proxy.post("/auth/realms/master/protocol/openid-connect/token", headers={
                "X-Forwarded-For": source}, **client)
            return response.json()["error"]

        for i in range(10):
            assert await error(f"203.0.113.{i}", data={"client_id": "railyard-ui"}) == "invalid_request"
        assert await error("203.0.113.3", data={"client_id": "railyard-ui"}) == "invalid_request"


async def test_the_login_clients_sign_ins_spend_no_shared_bucket():
    """`api-client`'s secret is every user's (the CLI ships it), so one bucket for its sign-ins was every user's
    allowance: one user from a few addresses emptied it and everyone's `railyard login` got 429. Its password and
    refresh grants now count per source only; the gateway's route in process, nothing reaches the bus."""
    from types import SimpleNamespace

    import httpx

    from services.gateway.http import create_app
    from shared.settings import GatewaySettings, Settings

    settings = Settings(gateway=GatewaySettings(trusted_proxies=["127.0.0.5"], token_rate_per_client=0.001,
                                                token_burst_per_client=2))
    app = create_app(SimpleNamespace(settings=settings, extras={}, broker=None, objects=None))
    # no bus here: a request the limits let through fails there (500), one they stop is a 429
    transport = httpx.ASGITransport(app=app, client=("127.0.0.5", 40000), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as proxy:
        async def status(source: str, grant_type: str) -> int:
            response = await proxy.post("/auth/realms/master/protocol/openid-connect/token", headers={
                "X-Forwarded-For": source}, auth=("api-client", "its-secret"), data={
                "grant_type": grant_type, "username": "someone", "password": "x", "refresh_token": "x"})
            return response.status_code

        for i in range(10):  # five times the client's burst, from ten addresses
            assert await status(f"203.0.113.{i}", "password") == 500
            assert await status(f"203.0.113.{i}", "refresh_token") == 500
        # the client_credentials grant (an inference client's) still shares the client's bucket
        assert await status("203.0.113.1", "client_credentials") == 500
        assert await status("203.0.113.2", "client_credentials") == 500
        assert await status("203.0.113.3", "client_credentials") == 429
        # made-up secrets get buckets of their own: they cannot spend the real callers'
        response = await proxy.post("/auth/realms/master/protocol/openid-connect/token", auth=("api-client", "made-up"),
                                    headers={"X-Forwarded-For": "203.0.113.4"},
                                    data={"grant_type": "client_credentials"})
        assert response.status_code == 500


def test_a_mistyped_path_or_method_says_what_to_do():
    """A GET on a POST route (curl without -d) answered a bare "Method Not Allowed", an unknown path (the printed
    API base URL itself) "no such route": both now say what was asked, what to use, and where routes are listed."""
    from types import SimpleNamespace

    from starlette.testclient import TestClient

    from services.gateway.http import create_app
    from shared.settings import Settings

    client = TestClient(create_app(SimpleNamespace(settings=Settings(), extras={}, broker=None, objects=None)))
    answer = client.get("/v1/api/pipelines/list")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert answer.json() == {"code": "method_not_allowed",
                             "msg": "GET is not allowed on /v1/api/pipelines/list: use POST (routes: /v1/api/docs)"}
    answer = client.get("/v1/api")
    assert answer.status_code == 404 and answer.json() == {
        "code": "not_found", "msg": "no such route: GET /v1/api (the routes are listed at /v1/api/docs)"}


@pytest.mark.parametrize(("exc", "status"), [
    # an authorization code refused: 400 (RFC 6749 5.2, as Keycloak answers it); it was forced to 401
    (InvalidRequest("authorization code unknown or already used; sign in again", code="invalid_grant"), 400),
    # a password or refresh token refused: the auth service's 401, what released SDKs and CLIs read as "sign in again"
    (Unauthorized("invalid user credentials", code="invalid_grant"), 401),
    (Unauthorized("invalid refresh token", code="invalid_grant"), 401),
    (Unauthorized("account temporarily locked", code="account_locked"), 401),
    # a client that failed to authenticate: 401 whatever the service raised
    (Unauthorized("invalid client credentials", code="invalid_client"), 401),
    (InvalidRequest("not a client that signs in here", code="invalid_client"), 401),
    (InvalidRequest("unsupported grant_type 'x'", code="unsupported_grant_type"), 400),
    (InvalidRequest("grant_type is required"), 400),
])
def test_the_token_endpoints_errors_keep_the_status_of_their_grant(exc, status):
    answered, headers, body = error_parts(exc, "oauth")
    assert answered == status, (exc.code, answered)
    assert ("WWW-Authenticate" in headers) == (status == 401)
    assert orjson.loads(body)["error"] == exc.code
    assert orjson.loads(body)["error_description"] == exc.msg
