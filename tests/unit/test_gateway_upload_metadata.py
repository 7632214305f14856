"""A multipart upload whose metadata does not validate is a 400 whose message is shared.errors.validation_message's,
said once: `field: what is wrong`, or `metadata: ...` for pydantic's words about the whole part, never the
"metadata metadata: ..." / "metadata workspace_id: ..." the routes made by putting "metadata " before it. Over the
real routes of services/gateway/orchestrations.py and monitoring.py (http.py's model upload calls it alike), no stack:
the metadata is refused before anything is staged or forwarded."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.gateway import handlers
from services.gateway.errors import error_response
from services.gateway.http import JSON_ROUTES, _forwarding_endpoint
from services.gateway.monitoring import accepting_image_uploads
from services.gateway.orchestrations import UPLOAD_PATH, add_orchestration_routes
from shared.authz import Principal
from shared.errors import RailyardError, validation_message
from shared.messages import registry as reg
from shared.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 64
PRINCIPAL = Principal(subject="00000000-0000-0000-0000-000000000001", kind="user", admin=False, client_id="c",
                      username="u", issued_at=0.0)


class Untouched:
    """Object storage that fails the test if an upload with bad metadata reaches it."""

    def __getattr__(self, name: str):
        raise AssertionError(f"object storage was used ({name}) for metadata that does not validate")


@pytest.fixture
def client(monkeypatch):
    async def forward(*_args, **_kwargs):
        raise AssertionError("forwarded metadata that does not validate")

    monkeypatch.setattr(handlers, "forward", forward)
    runtime = SimpleNamespace(settings=Settings(), objects=Untouched(), broker=None)

    def user_caller() -> Principal:
        return PRINCIPAL

    def bearer_token(_request: Request) -> str:
        return "token"

    app = FastAPI()
    app.add_exception_handler(RailyardError, lambda _request, exc: error_response(exc))
    add_orchestration_routes(app, runtime, user_caller, bearer_token)
    predict = next(route for route in JSON_ROUTES if route.path == "/deployments/predict")
    app.post("/predict")(accepting_image_uploads(runtime, predict, _forwarding_endpoint(runtime, predict, user_caller),
                                                 user_caller, bearer_token))
    return TestClient(app)


def refused(response) -> str:
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request"
    return response.json()["msg"]


def test_an_orchestration_uploads_metadata_is_named_once(client):
    zip_part = ("o.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip")
    for metadata, expected in (({}, "workspace_id: Field required"),
                               ({"workspace_id": "one"},
                                "workspace_id: Input should be a valid integer, unable to parse string as an integer")):
        files = {"file": zip_part, "metadata": (None, json.dumps(metadata))}
        assert refused(client.post(UPLOAD_PATH, files=files)) == expected


def test_an_image_uploads_metadata_is_named_once(client):
    files = {"image": ("a.png", PNG, "image/png"), "metadata": (None, json.dumps({"deployment": "d", "top": "x"}))}
    assert refused(client.post("/predict", files=files)) == "top: Extra inputs are not permitted"


def test_pydantics_words_about_the_whole_metadata_say_metadata_once():
    with pytest.raises(ValidationError) as caught:
        reg.UploadModel.model_validate([1])
    assert validation_message(caught.value.errors(), "metadata") == (
        "metadata: Input should be a valid dictionary or instance of UploadModel")
