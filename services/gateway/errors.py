"""The one place a `RailyardError` becomes an HTTP answer, for every edge of the gateway: the FastAPI routes, the
token endpoint (OAuth2's error shape), the raw ASGI inference fast path and body limit, and the Open Inference
Protocol (its `error` field). Status, headers (`WWW-Authenticate` on 401, `Retry-After` on 429 and retryable 503s)
and the typed `{"code", "msg"}` body are decided here and nowhere else."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import orjson
from fastapi.responses import Response

from shared.errors import RailyardError, TooManyRequests

Shape = Literal["api", "oauth", "oip"]
# OAuth2 errors always answered with 401: a client that failed to authenticate (RFC 6749 5.2, as Keycloak does). A
# refused grant (`invalid_grant`, `account_locked`) keeps the status the auth service gave it: 401 for a password or
# refresh token (what released SDKs and CLIs read as "sign in again", docs/auth.md), 400 for an authorization code
# (RFC 6749 5.2 and Keycloak; it was forced to 401 here until session 37). The others keep their own status too.
OAUTH_401 = {"invalid_client"}
OAUTH_CODES = OAUTH_401 | {"invalid_grant", "account_locked", "unsupported_grant_type", "unauthorized_client",
                           "rate_limited"}
# 503s that a retry cannot mend (the deployer's code for a deployment whose restore failed: it needs a redeploy),
# answered without the `Retry-After` that invites clients and proxies to try again
NOT_RETRYABLE_503 = {"deployment_failed"}
# the Open Inference Protocol's routes (services/gateway/oip.py): every answer under them, a refused token or body and
# an unknown path or method included, carries OIP's `error` field, which its clients read (tritonclient's HTTP client
# fails with "an exception occurred in the client while decoding the response: 'error'" on a body without it)
OIP_ROOT = "/v2"


def shape_of(path: str) -> Shape:
    """The error shape of a request's path: OIP's under /v2, the API's elsewhere (the token route picks its own)."""
    return "oip" if path == OIP_ROOT or path.startswith(OIP_ROOT + "/") else "api"


def error_parts(exc: RailyardError, shape: Shape = "api", *, close: bool = False) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, JSON body) of the answer to `exc`."""
    status, code, msg = exc.status, exc.code, exc.msg
    headers: dict[str, str] = {}
    if shape == "oauth":
        status = 401 if code in OAUTH_401 else status
        code = code if code in OAUTH_CODES else ("invalid_request" if status == 400 else code)
        body = {"error": code, "error_description": msg, "code": code, "msg": msg}
        headers["Cache-Control"] = "no-store"
    elif shape == "oip":
        body = {"error": msg, "code": code, "msg": msg}
    else:
        body = {"code": code, "msg": msg}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif status == 503 and code not in NOT_RETRYABLE_503:
        # a 503 that knows when to come back (a deployment in a crash loop: the deployer's back-off) says so
        headers["Retry-After"] = str(max(1, math.ceil(getattr(exc, "retry_after", 1))))
    if close:
        headers["Connection"] = "close"
    return status, headers, orjson.dumps(body)


def error_response(exc: RailyardError, shape: Shape = "api", *, close: bool = False) -> Response:
    """The answer to `exc` as a Starlette response."""
    status, headers, body = error_parts(exc, shape, close=close)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def send_error(send: Callable, exc: RailyardError, shape: Shape = "api", *, close: bool = False) -> None:
    """The answer to `exc` on a raw ASGI `send` (for code that runs outside the web framework)."""
    status, headers, body = error_parts(exc, shape, close=close)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
