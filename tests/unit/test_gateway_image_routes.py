"""The gateway's image routes (services/gateway/monitoring.py around http.py's JSON forwarding), without a stack:
a JSON body and a multipart upload wait as long as each other for the answer (one `Route.wait`), and a JSON body
naming the gateway's own `staged_key` is refused with a typed 400 before anything is forwarded."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from services.gateway import handlers
from services.gateway.errors import error_response
from services.gateway.http import JSON_ROUTES, _forwarding_endpoint
from services.gateway.monitoring import STAGED_KEY_FROM_CLIENT, accepting_image_uploads
from shared.authz import Principal
from shared.errors import RailyardError
from shared.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 64
PRINCIPAL = Principal(subject="00000000-0000-0000-0000-000000000001", kind="user", admin=False, client_id="c",
                      username="u", issued_at=0.0)


class Objects:
    """Staging in memory: what the multipart path puts and deletes."""

    def __init__(self) -> None:
        self.kept: dict[str, bytes] = {}

    async def put_stream(self, bucket: str, key: str, stream, length: int, content_type: str) -> None:
        self.kept[key] = stream.read()

    async def delete(self, bucket: str, key: str) -> None:
        self.kept.pop(key, None)


@pytest.fixture
def gateway(monkeypatch):
    """An app with the real predict route (JSON forwarding wrapped for uploads); `forwarded` holds each command."""
    forwarded: list[dict] = []

    async def forward(broker, subject, command, token, wait):
        forwarded.append({"subject": subject, "command": command, "wait": wait})
        return {"ok": True}

    monkeypatch.setattr(handlers, "forward", forward)
    settings = Settings(nats={"request_timeout": 7.0}, registry={"worker_timeout": 40.0})
    runtime = SimpleNamespace(settings=settings, objects=Objects(), broker=None)

    def user_caller() -> Principal:
        return PRINCIPAL

    def bearer_token(request: Request) -> str:
        return "token"

    predict = next(route for route in JSON_ROUTES if route.path == "/deployments/predict")
    app = FastAPI()
    app.add_exception_handler(RailyardError, lambda _request, exc: error_response(exc))
    for path, route in (("/long", predict), ("/short", dataclasses.replace(predict, long_running=False))):
        endpoint = accepting_image_uploads(runtime, route, _forwarding_endpoint(runtime, route, user_caller),
                                           user_caller, bearer_token)
        app.post(path)(endpoint)
    return TestClient(app, headers={"Authorization": "Bearer token"}), forwarded, runtime


def test_a_json_body_and_a_multipart_upload_wait_alike(gateway):
    client, forwarded, runtime = gateway
    for path, expected in (("/long", 47.0), ("/short", 7.0)):
        forwarded.clear()
        assert client.post(path, json={"deployment": "d", "image": "aGk="}).status_code == 200
        files = {"image": ("a.png", PNG, "image/png"), "metadata": (None, json.dumps({"deployment": "d"}))}
        assert client.post(path, files=files).status_code == 200
        assert [sent["wait"] for sent in forwarded] == [expected, expected], path
        assert forwarded[1]["command"].staged_key.startswith(f"staging/{PRINCIPAL.subject}/")
    assert not runtime.objects.kept  # the staged image is deleted once answered


@pytest.mark.parametrize("body", [
    {"deployment": "d", "staged_key": "staging/x"},
    {"deployment": "d", "image": "aGk=", "staged_key": f"staging/{PRINCIPAL.subject}/0"},
], ids=["instead-of-image", "with-image"])
def test_a_json_body_naming_the_gateways_staged_key_is_refused(gateway, body):
    client, forwarded, _ = gateway
    response = client.post("/long", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == STAGED_KEY_FROM_CLIENT
    assert "multipart/form-data" in response.json()["msg"]
    assert not forwarded  # nothing reached the monitoring service
    escaped = json.dumps(body).replace("staged_key", "staged\\u005fkey").encode()  # the same key, spelled otherwise
    response = client.post("/long", content=escaped, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == STAGED_KEY_FROM_CLIENT
    assert not forwarded


def test_a_json_body_that_merely_mentions_the_words_is_forwarded(gateway):
    client, forwarded, _ = gateway
    response = client.post("/long", json={"deployment": "d", "image": "aGk=", "source": "staged_key"})
    assert response.status_code == 200 and len(forwarded) == 1
