"""Every error under the Open Inference Protocol's `/v2` carries OIP's `error` field, as docs/inference.md says
("Its errors are `{"error", "code", "msg"}`"), not only the errors of a route's own work: a missing or refused token,
an oversize body, an unknown path or method. tritonclient's HTTP client reads `error` from any answer that is not a
200 and, without it, hides the server's words behind "an exception occurred in the client while decoding the
response: 'error'" (found by session 37's walk-through: a wrong token on `/v2/models/<deployment>` said only that).
The gateway in process, no bus: each request stops at the token or the path."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from services.gateway.http import create_app
from shared.errors import Unauthorized
from shared.settings import GatewaySettings, Settings


class RefusingVerifier:
    async def verify(self, token: str):
        raise Unauthorized("malformed token")


@pytest.fixture(scope="module")
def app():
    """One app for the module (a build is ~0.35 s of CPU): every request here stops at the token or the path, and
    nothing of it is kept (no token route, whose buckets an app keeps, is asked)."""
    settings = Settings(gateway=GatewaySettings(max_body_bytes=1024, max_json_bytes=1024))
    return create_app(SimpleNamespace(settings=settings, extras={"verifier": RefusingVerifier()}, broker=None,
                                      objects=None))


@pytest.fixture
async def gateway(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        yield client


def oip_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert body["error"] == body["msg"]  # OIP's field, the same words as the typed message
    return body["msg"]


async def test_a_refused_token_is_an_oip_error_on_every_v2_route(gateway):
    for method, path in [("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2/models/fraud-1"),
                         ("GET", "/v2/models/fraud-1/ready"), ("POST", "/v2/models/fraud-1/infer")]:
        missing = await gateway.request(method, path, json={"inputs": []} if method == "POST" else None)
        assert "missing bearer token" in oip_error(missing, 401, "unauthorized"), path
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await gateway.request(method, path, headers={"Authorization": "Bearer abc"},
                                      json={"inputs": []} if method == "POST" else None)
        assert oip_error(wrong, 401, "unauthorized") == "malformed token", path


async def test_an_unknown_path_a_wrong_method_and_an_oversize_body_are_oip_errors(gateway):
    headers = {"Authorization": "Bearer abc"}
    assert "no such route" in oip_error(await gateway.get("/v2/nosuch", headers=headers), 404, "not_found")
    assert "use POST" in oip_error(await gateway.get("/v2/models/fraud-1/infer", headers=headers), 405,
                                   "method_not_allowed")
    big = await gateway.post("/v2/models/fraud-1/infer", headers=headers, content=b"x" * 4096)
    oip_error(big, 413, "payload_too_large")


async def test_the_api_keeps_its_own_shape(gateway):
    response = await gateway.post("/v1/api/workspaces/list", json={})
    assert response.status_code == 401
    assert response.json() == {"code": "unauthorized",
                               "msg": "missing bearer token (Authorization: Bearer <token>)"}
    response = await gateway.post("/v1/api/pipelines/infer/fraud-1/fraud", headers={"Authorization": "Bearer abc"},
                                  json=[])
    assert response.status_code == 401 and "error" not in response.json()
    assert "error" not in (await gateway.get("/v1/api/nosuch")).json()
