"""The errors the SDK raises. Every answer of the server with an error status becomes one of these, carrying
the server's typed `code` and its `message`:

    RailyardError
    ├── ConfigurationError      the client lacks a URL or credentials (nothing was sent)
    ├── ConnectionFailed        the server could not be reached
    ├── WaitTimeout             a wait (deploy until Running, conversion) ran out of time
    ├── DeploymentFailed        a deployment waited on reports Error (replicas exited, a failed restore)
    ├── ConversionFailed        an uploaded model's conversion ended in error
    └── APIError                the server answered with an error status
        ├── InvalidRequest      400 (and 422)
        │   └── InvalidInput    the SDK refused the input before sending it (missing file, bad rows)
        ├── AuthenticationError 401 (bad credentials, expired or missing token)
        ├── PermissionDenied    403
        ├── NotFound            404
        ├── NotAcceptable       406 (an Accept header listing none of the types the route answers)
        ├── Conflict            409
        ├── PayloadTooLarge     413
        └── Unavailable         503 (a deployment still starting, a service down; deployment_failed,
                                deployment_crash_loop)
"""

from __future__ import annotations

from typing import Any


class RailyardError(Exception):
    """Base of every error the SDK raises; `message` is one line meant for a person."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigurationError(RailyardError):
    """The client has no server URL or no credentials; nothing was sent."""

    code = "configuration"


class ConnectionFailed(RailyardError):
    """The server could not be reached (refused, DNS, TLS, network timeout)."""

    code = "connection_failed"


class WaitTimeout(RailyardError):
    """A wait for a state (a deployment Running, a model version ready) ran out of time."""

    code = "timeout"


class DeploymentFailed(RailyardError):
    """A deployment being waited on reports `Error` and keeps reporting it (every replica exited or is in a crash
    loop, or its restore after a deployer restart failed): waiting longer cannot help; the message carries the
    server's reasons."""

    code = "deployment_failed"


class ConversionFailed(RailyardError):
    """An uploaded model could not be converted or checked; the message is the server's reason."""

    code = "conversion_failed"


class APIError(RailyardError):
    """The server answered with an error status; `status`, `code` and `message` are the server's own."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message or code, code=code)
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})"


class InvalidRequest(APIError):
    """400: the request is malformed or breaks a rule; the server changed nothing."""


class InvalidInput(InvalidRequest):
    """The input was refused before anything was sent (a missing or unreadable file, rows that are not a table)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "invalid_input", message)

    def __str__(self) -> str:
        return self.message


class AuthenticationError(APIError):
    """401: wrong credentials, or a token that is missing, expired or revoked; also the token endpoint's
    `invalid_grant`, `invalid_client` and `account_locked` whatever their status (RFC 6749 answers a refused grant
    400)."""


class PermissionDenied(APIError):
    """403: the caller is known but may not do this."""


class NotFound(APIError):
    """404: no such resource, or one the caller may not see."""


class NotAcceptable(APIError):
    """406: the route answers none of the types the request's `Accept` header lists (datasets/get_rows,
    pipelines/get_logs and inference answer JSON or Arrow, get_rows also Parquet). The SDK's own calls ask for
    types these answer: a request with an Accept header of the caller's meets it."""


class Conflict(APIError):
    """409: the request conflicts with the current state (a duplicate, still in use)."""


class PayloadTooLarge(APIError):
    """413: the body is above the server's limit."""


class Unavailable(APIError):
    """503: a service is down or a deployment is still starting; retrying later may work (inference retries
    for 15 s). Not with `code` `deployment_failed`: the deployment failed to restore, and only a redeploy
    (or an undeploy) ends that; nor with `code` `deployment_crash_loop`: its replicas keep exiting soon after
    they start (the message says why to a workspace member), and inference raises it at once."""


# the token endpoint's refusals of the credentials themselves: AuthenticationError whatever their status. The gateway
# answers a refused password or refresh token 401, an authorization code (the web UI's) 400 as RFC 6749 5.2 says; a
# server that answers the refresh 400 as well still has the session sign in again (refresh's fallback), not fail
OAUTH_SIGN_IN_REFUSED = {"invalid_grant", "invalid_client", "account_locked"}
_BY_STATUS: dict[int, type[APIError]] = {400: InvalidRequest, 422: InvalidRequest, 401: AuthenticationError,
                                         403: PermissionDenied, 404: NotFound, 406: NotAcceptable, 409: Conflict,
                                         413: PayloadTooLarge, 503: Unavailable}


def error_from_answer(status: int, body: Any) -> APIError:
    """The typed error for an error answer: `{"code", "msg"}` (the API) or `{"error", "error_description"}`
    (the OAuth2 token endpoint)."""
    body = body if isinstance(body, dict) else {}
    code = str(body.get("code") or body.get("error") or f"http_{status}")
    message = str(body.get("msg") or body.get("error_description") or body.get("message") or code)
    if "error" in body and code in OAUTH_SIGN_IN_REFUSED:  # OAuth's shape: the token endpoint's own answer
        return AuthenticationError(status, code, message)
    return _BY_STATUS.get(status, APIError)(status, code, message)


def boolean_input(value: object, what: str) -> bool:
    """A boolean parameter as the API takes it (JSON true or false): bool() of what was given (1, 0, numpy's bool_),
    but a string is InvalidInput: bool("false") is True, so set_active("false") resumed an assay and
    delete(force_delete="false") forced a delete, where the API (before it took only true or false) read "false" as
    false and since answers a 400."""
    if isinstance(value, (str, bytes)):
        raise InvalidInput(f"{what} must be True or False, not {value!r}")
    return bool(value)
