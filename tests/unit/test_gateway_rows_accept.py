"""datasets/get_rows answers the type its Accept header asks among those it has (JSON, Arrow file or stream, Parquet),
and 406 `not_acceptable` when the header lists none of them. Session 38's QA walk: `Accept: text/csv` was answered
JSON with a 200. The route before the bus: the lineage service's answer is faked (a dataset without rows)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.gateway import handlers
from services.gateway.http import create_app
from services.gateway.lineage import rows_type
from shared.authz import Principal
from shared.errors import NotAcceptable
from shared.settings import Settings

ROWS = "/v1/api/datasets/get_rows"
USER = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="cli", username="alice",
                 issued_at=0.0)


@pytest.fixture(scope="module")
def gateway_app():
    """The gateway app and its client, built once for the module (a build took ~0.3 s of CPU, for each test; nothing
    of a request stays in the app); each test gets the lineage service's requests list emptied (`gateway`)."""
    asked: list = []

    class Verifier:
        async def verify(self, token):
            return USER

    async def forward(broker, subject, cmd, token, timeout):
        asked.append(cmd)
        return {"dataset_id": cmd.dataset_id, "row_count": 0, "rows_sha256": None}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(handlers, "forward", forward)
        app = create_app(SimpleNamespace(settings=Settings(), extras={"verifier": Verifier()}, broker=None,
                                         objects=None))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client, asked


@pytest.fixture
def gateway(gateway_app):
    client, asked = gateway_app
    asked.clear()
    client.cookies.clear()
    return client, asked


@pytest.mark.parametrize("accept", ["text/csv", "text/html", "text/csv, text/plain;q=0.5", "image/*"])
def test_an_accept_listing_no_type_it_has_is_a_406_before_the_service_is_asked(gateway, accept):
    client, asked = gateway
    answer = client.post(ROWS, json={"dataset_id": 3}, headers={"Accept": accept, "Authorization": "Bearer t"})
    assert answer.status_code == 406, answer.text
    assert answer.json()["code"] == "not_acceptable" and "application/json" in answer.json()["msg"]
    assert asked == []


@pytest.mark.parametrize("accept, answered", [
    (None, "application/json"),
    ("*/*", "application/json"),
    ("application/json", "application/json"),
    ("text/csv, application/*;q=0.1", "application/json"),
    ("text/html, application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.stream"),
    ("application/vnd.apache.arrow.file", "application/vnd.apache.arrow.file"),
    ("application/vnd.apache.parquet", "application/vnd.apache.parquet"),
])
def test_a_type_it_has_is_answered(gateway, accept, answered):
    client, asked = gateway
    headers = {"Authorization": "Bearer t"} | ({"Accept": accept} if accept else {})
    answer = client.post(ROWS, json={"dataset_id": 3}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].split(";")[0] == answered and len(asked) == 1


def test_the_first_type_listed_that_it_has_decides():
    assert rows_type("application/json, application/vnd.apache.parquet") == "application/json"
    assert rows_type("") == "application/json"
    with pytest.raises(NotAcceptable):
        rows_type("text/csv")
