"""Errors of the ML backend server, each with an HTTP status and a code.

    MLBackendError (500 internal)
    ├── InvalidRequest        400 invalid_request
    │   ├── InvalidLabelConfig 400 invalid_label_config
    │   ├── LabelConfigRequired 400 label_config_required (the model reads a labeling config; none was sent or set up)
    │   └── LabelConfigUnfit  400 label_config_mismatch (the config sent lacks the control the model asks for)
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


class LabelConfigRequired(InvalidRequest):
    """Building the model, or its predict, asked the labeling config for a control and there was no config: none was
    sent with the request and none was set up for the project. The request could have carried it."""

    code = "label_config_required"


class LabelConfigUnfit(InvalidRequest):
    """The labeling config sent (or set up) lacks the control the model asks for (`get_first_tag_occurence`,
    `get_control`): the project's config and the model do not fit together."""

    code = "label_config_mismatch"


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
