"""The one error hierarchy, with its HTTP mapping and wire envelope.

    RailyardError (500 internal)
    ├── InvalidRequest      400 invalid_request
    ├── Unauthorized        401 unauthorized
    ├── Forbidden           403 forbidden
    ├── NotFound            404 not_found
    ├── NotAcceptable       406 not_acceptable
    ├── RequestTimeout      408 request_timeout
    ├── Conflict            409 conflict
    ├── PayloadTooLarge     413 payload_too_large
    ├── ReplyTooLarge       422 reply_too_large
    ├── TooManyRequests     429 rate_limited
    ├── Unavailable         503 unavailable
    └── UpstreamTimeout     504 upstream_timeout

Services reply with `ErrorBody` inside a `Reply`; the gateway turns it back into the same class and
answers `{"code": ..., "msg": ...}` with the class's status. Messages never carry stack traces, SQL,
object keys or internal hosts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.omit_unset import omit_when_unset

RETRY_AFTER_MAX = 3600.0
"""Seconds of a retry_after an error read from the bus keeps at most (as shared/not_serving.py's crash loop)."""


class ErrorBody(BaseModel):
    """A typed error as it travels on the bus and over HTTP."""

    model_config = ConfigDict(extra="forbid")

    code: str
    msg: str
    retry_after: float | None = Field(
        None, description="Railyard: seconds the caller should wait before trying again (the gateway's Retry-After), "
        "when the service knows more than a reader assumes (1 s for a 429 or a retryable 503): a deployment in a "
        "crash loop, the deployer's back-off. Absent otherwise, so an error body without it is what it was before "
        "the field (a reader older than it, which refuses unknown fields, still reads every other error).")

    _without_unset_retry = omit_when_unset("retry_after")

    @field_validator("retry_after")
    @classmethod
    def _bounded(cls, value: float | None) -> float | None:
        # read, not refused: a reply that says a strange wait is still the error it carries (its code and words)
        if value is None or not math.isfinite(value):
            return None
        return min(max(1.0, value), RETRY_AFTER_MAX)


class RailyardError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    code: str = "internal"

    def __init__(self, msg: str = "internal error", *, code: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        if code is not None:
            self.code = code

    def body(self) -> ErrorBody:
        """The error as it travels on the bus: its code and words, and its `retry_after` (TooManyRequests, a crash
        loop's shared.not_serving.CrashLoop) when a reader's default (1 s) would not say it: 1 s or less, or none,
        leaves it out, so such an error's bytes are what an older reader reads."""
        retry = getattr(self, "retry_after", None)
        carried = retry if isinstance(retry, int | float) and math.isfinite(retry) and math.ceil(retry) > 1 else None
        return ErrorBody(code=self.code, msg=self.msg, retry_after=carried)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, msg={self.msg!r})"


class InvalidRequest(RailyardError):
    """The request is malformed or breaks a rule; nothing was changed."""

    status = 400
    code = "invalid_request"


class Unauthorized(RailyardError):
    """No valid credentials were presented."""

    status = 401
    code = "unauthorized"


class Forbidden(RailyardError):
    """The caller is known but may not do this."""

    status = 403
    code = "forbidden"


class NotFound(RailyardError):
    """No such resource, or not visible to the caller."""

    status = 404
    code = "not_found"


class NotAcceptable(RailyardError):
    """The route has none of the answer types the request's Accept lists."""

    status = 406
    code = "not_acceptable"


class RequestTimeout(RailyardError):
    """The client did not send its request body in time."""

    status = 408
    code = "request_timeout"


class Conflict(RailyardError):
    """The request conflicts with the current state (duplicate, still in use)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(RailyardError):
    """The request body is above the configured limit."""

    status = 413
    code = "payload_too_large"


class ReplyTooLarge(RailyardError):
    """The request is valid but its answer is above the bus payload limit; ask for less (a page, filters).

    422, not 413 (the request itself is small) nor 5xx (the caller can fix it by narrowing the query)."""

    status = 422
    code = "reply_too_large"


class TooManyRequests(RailyardError):
    """The caller sent too many requests; retry after `retry_after` seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, msg: str = "too many requests", *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(msg, code=code)
        self.retry_after = retry_after


class Unavailable(RailyardError):
    """A dependency is not ready; retry later."""

    status = 503
    code = "unavailable"


class UpstreamTimeout(RailyardError):
    """A service did not answer in time."""

    status = 504
    code = "upstream_timeout"


_BY_CODE: dict[str, type[RailyardError]] = {
    cls.code: cls
    for cls in (
        RailyardError,
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        NotAcceptable,
        RequestTimeout,
        Conflict,
        PayloadTooLarge,
        ReplyTooLarge,
        TooManyRequests,
        Unavailable,
        UpstreamTimeout,
    )
}


def error_from_body(body: ErrorBody, status: int | None = None) -> RailyardError:
    """Rebuild the error a service raised; unknown codes keep their code and map by status."""
    cls = _BY_CODE.get(body.code)
    if cls is None:
        cls = next((c for c in _BY_CODE.values() if c.status == status), RailyardError)
    exc = cls(body.msg, code=body.code)
    if body.retry_after is not None:  # the gateway's Retry-After (services/gateway/errors.py), else its default
        exc.retry_after = body.retry_after  # type: ignore[attr-defined]
    return exc


# pydantic puts these before the sentence a validator raised ("Value error, must be a finite number: nan"): noise
# to a caller, who reads the sentence we wrote
_VALIDATOR_PREFIXES = {"value_error": "Value error, ", "assertion_error": "Assertion failed, "}


PATTERN_WORDS: dict[str, str] = {}
"""A field pattern's rule in words, by the pattern (`describe_pattern`): pydantic's own refusal shows the regular
expression ("name: String should match pattern '^[^/\\x00-\\x1f]{1,200}$'"), which a caller must decode."""


def describe_pattern(pattern: str, words: str) -> str:
    """Register the words a refusal by `pattern` says instead of the expression; answers `pattern` (for Field)."""
    PATTERN_WORDS[pattern] = words
    return pattern


def validation_detail(error: Mapping[str, Any]) -> str:
    """What one of pydantic's validation errors (an item of `ValidationError.errors()`) says is wrong: pydantic's
    own words ("Field required"), a pattern's rule in words with the value refused (`describe_pattern`), or a
    validator's sentence without the "Value error, " pydantic puts before it."""
    if error.get("type") == "string_pattern_mismatch":
        words = PATTERN_WORDS.get(str((error.get("ctx") or {}).get("pattern")))
        if words is not None:
            value = error.get("input")
            return f"{words}; got {echo(value)}" if isinstance(value, str) else words
    msg = str(error.get("msg") or "invalid")
    prefix = _VALIDATOR_PREFIXES.get(str(error.get("type")))
    return msg[len(prefix):] if prefix and msg.startswith(prefix) else msg


# How many of a body's validation errors a 400 names: the same everywhere (the bus, every gateway route), so one bad
# body gets one answer whichever way it came; enough to fix several fields in one round, short enough to read
VALIDATION_ERRORS_SHOWN = 5


def validation_message(errors: Sequence[Mapping[str, Any]], where: str = "body",
                       limit: int = VALIDATION_ERRORS_SHOWN) -> str:
    """The message of the 400 for pydantic's validation errors: the first `limit`, joined by "; ", each as
    `field.path: what is wrong` (`validation_detail`; a leading "body" of FastAPI's locations left out). An error
    about the whole of it reads as the validator's sentence alone; pydantic's own words about it ("Input should be a
    valid dictionary") are prefixed with `where` ("body", "metadata"), which says what they are about."""
    parts = []
    for error in list(errors)[:limit]:
        loc = list(error.get("loc") or ())
        if loc[:1] == ["body"]:
            loc = loc[1:]
        detail = validation_detail(error)
        if loc:
            parts.append(f"{'.'.join(str(part) for part in loc)}: {detail}")
        elif str(error.get("type")) in _VALIDATOR_PREFIXES:
            parts.append(detail)
        else:
            parts.append(f"{where}: {detail}")
    return "; ".join(parts) or f"{where}: invalid"


ECHO_CHARS = 64
"""Characters of a refused value an error message repeats at most (`echo`)."""


def echo(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` quoted for an error message, cut to its first `limit` characters with '…' and its length when longer:
    a refused 1 MB name must not come back as a 1 MB error (and the log line, and the bus reply, that carry it)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def rows_changed(step: str | None, answered: int, requested: int) -> InvalidRequest:
    """The refusal of a pipeline whose answer has another number of rows than the request (the seed's equal rows
    constraint, every format alike): the engine's (services/engine/handlers.py `rows_changed`, naming `step`, the
    last step that changed the number) and the gateway's for an engine that answered such rows (older engines did;
    None: the step is not known, "the pipeline")."""
    who = f"step {step!r}" if step is not None else "the pipeline"
    return InvalidRequest(
        f"{who} returned {answered} row{'s' * (answered != 1)} for a request of {requested}: a pipeline answers one "
        f"row for each row of the request (the answer and the inference log pair them); a step may drop or add rows "
        f"for the steps after it, but the last must give back {requested} (to filter, mark rows instead of dropping "
        "them)")
