"""deployments/get_prediction_image (services/gateway/monitoring_feedback.py) reads its own body: a bad one is a
400 naming the field. It answered pydantic's first detail without its field, "get_prediction_image takes {deployment,
prediction_id}: Field required", whichever of the two was missing, and for a JSON array pydantic's class name
("Input should be a valid dictionary or instance of PredictionImageQuery"). Nothing is forwarded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.gateway import handlers
from services.gateway.errors import error_response
from services.gateway.monitoring_feedback import add_feedback_routes
from shared.authz import Principal
from shared.errors import RailyardError
from shared.settings import Settings

PRINCIPAL = Principal(subject="00000000-0000-0000-0000-000000000001", kind="user", admin=False, client_id="c",
                      username="u", issued_at=0.0)
TAKES = "get_prediction_image takes {deployment, prediction_id}: "


@pytest.fixture
def client(monkeypatch):
    async def forward(*args):
        raise AssertionError("forwarded a refused body")

    monkeypatch.setattr(handlers, "forward", forward)
    app = FastAPI()
    app.add_exception_handler(RailyardError, lambda _request, exc: error_response(exc))
    add_feedback_routes(app, SimpleNamespace(settings=Settings(), objects=None, broker=None), lambda: PRINCIPAL,
                        lambda request: "token")
    return TestClient(app)


@pytest.mark.parametrize(("sent", "said"), [
    ({"json": {"deployment": "digits-2"}}, "prediction_id: Field required"),
    ({"json": {"prediction_id": "00000000-0000-0000-0000-000000000000"}}, "deployment: Field required"),
    ({"json": {}}, "deployment: Field required; prediction_id: Field required"),
    ({"content": b""}, "deployment: Field required; prediction_id: Field required"),
    ({"json": {"deployment": "d", "prediction_id": "x"}}, "prediction_id: Input should be a valid UUID"),
    ({"json": [1]}, "the request body must be a JSON object"),
    ({"content": b"{nope"},
     "the request body is not valid JSON: unexpected character, expected a string key: line 1 column 2"),
], ids=["no-prediction", "no-deployment", "empty-object", "no-body", "bad-uuid", "array", "not-json"])
def test_a_bad_body_is_a_400_naming_the_field(client, sent, said):
    refused = client.post("/v1/api/deployments/get_prediction_image", **sent)
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_request"
    assert refused.json()["msg"].startswith(TAKES + said), refused.json()
