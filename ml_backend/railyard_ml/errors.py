"""Errors of the ML backend server, each with an HTTP status and a code.

    MLBackendError (500 internal)
    ├── InvalidRequest        400 invalid_request
    │   └── InvalidLabelConfig 400 invalid_label_config
    ├── Unauthorized          401 unauthorized
    ├── PayloadTooLarge       413 payload_too_large
    └── BadModelOutput        500 bad_model_output   (the model's predict answered something Label Studio can't use)

Answers are `{"code": ..., "msg": ...}`, the same envelope as Railyard's API.
"""

from __future__ import annotations


class MLBackendError(Exception):
    """Base of every error the server answers with."""

    status: int = 500
    code: str = "internal"

    def __init__(self, msg: str = "internal error") -> None:
        super().__init__(msg)
        self.msg = msg


class InvalidRequest(MLBackendError):
    """The request is malformed; nothing was changed."""

    status = 400
    code = "invalid_request"


class InvalidLabelConfig(InvalidRequest):
    """The labeling config is not a parsable Label Studio config."""

    code = "invalid_label_config"


class Unauthorized(MLBackendError):
    """Basic auth is on and the request did not carry the right credentials."""

    status = 401
    code = "unauthorized"


class PayloadTooLarge(MLBackendError):
    """The body is above the server's limit (RAILYARD_ML_MAX_BODY bytes)."""

    status = 413
    code = "payload_too_large"


class BadModelOutput(MLBackendError):
    """`predict` returned something that is not one prediction per task."""

    code = "bad_model_output"
