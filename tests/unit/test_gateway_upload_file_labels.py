"""`datasets/upload_file`'s `labels` part is free JSON, an object or an array (lin.AddDatasetFile; a detection
benchmark reads `{"boxes": [{"bbox": [x, y, w, h], "category": ...}]}`): anything else is a 400 saying so, before the
file is staged. Before, a bare `5` or `"cat"` was refused by the command's union in pydantic's words
("labels.dict[str,any]: Input should be a valid dictionary; labels.list[any]: Input should be a valid list"), and a
wrong `dataset_id` or `name` too, each after the file had been uploaded to object storage (then removed). The route
before the bus: the lineage service's answer is faked."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.gateway import handlers
from services.gateway.http import create_app
from shared.authz import Principal
from shared.settings import Settings

USER = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="cli", username="alice",
                 issued_at=0.0)


@pytest.fixture(scope="module")
def gateway_app():
    """The gateway app; `staged` lists every key put in object storage (a removed one too), `asked` the commands
    forwarded to the lineage service."""
    staged: list = []
    asked: list = []

    class Verifier:
        async def verify(self, token):
            return USER

    class Objects:
        async def put_stream(self, bucket, key, data, length=-1):
            staged.append(key)

        async def delete(self, bucket, key):
            assert key in staged

    async def forward(broker, subject, cmd, token, timeout):
        asked.append(cmd)
        return {"name": cmd.name, "sha256": "0" * 64, "size": 3, "content_type": "image/png", "labels": cmd.labels,
                "created_at": "2026-12-06T14:00:00Z"}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handlers, "forward", forward)
        app = create_app(SimpleNamespace(settings=Settings(), extras={"verifier": Verifier()}, broker=None,
                                         objects=Objects()))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, staged, asked


@pytest.fixture
def gateway(gateway_app):
    client, staged, asked = gateway_app
    staged.clear()
    asked.clear()
    return client, staged, asked


def post(client, data: dict):
    return client.post("/v1/api/datasets/upload_file", data=data, files={"file": ("a.png", b"abc")},
                       headers={"Authorization": "Bearer t"})


@pytest.mark.parametrize(("labels", "said"), [
    ('"cat"', "labels must be a JSON object or array (e.g. {\"boxes\": [...]}), not a string"),
    ("5", "labels must be a JSON object or array (e.g. {\"boxes\": [...]}), not a number"),
    ("true", "labels must be a JSON object or array (e.g. {\"boxes\": [...]}), not true"),
    ("{boxes", "labels must be JSON: an object or an array"),
])
def test_upload_files_labels_are_an_object_or_an_array_said_before_staging(gateway, labels, said):
    client, staged, asked = gateway
    answer = post(client, {"dataset_id": "2", "labels": labels})
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_request" and answer.json()["msg"].startswith(said)
    assert staged == [] and asked == []  # before: staged (and removed) first


def test_upload_files_fields_are_checked_before_staging_and_good_ones_pass(gateway):
    client, staged, asked = gateway
    answer = post(client, {"dataset_id": "two"})
    assert answer.status_code == 400 and answer.json()["msg"].startswith("dataset_id: ")
    assert staged == [] and asked == []
    for labels in ('{"boxes": [{"bbox": [0, 0, 4, 4], "category": "cat"}]}', "[1, 2]", "null"):
        answer = post(client, {"dataset_id": "2", "labels": labels})
        assert answer.status_code == 200, answer.text
        assert asked[-1].dataset_id == 2 and asked[-1].labels == json.loads(labels)
