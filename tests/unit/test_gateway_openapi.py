"""The gateway's OpenAPI document describes every JSON route's body completely: nested models are inlined, not left
as `#/$defs/...` references that only resolve inside pydantic's own schema (Swagger UI and schemathesis read the
document from its root and skipped those bodies: 33 routes, found by `make fuzz-api`)."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from services.gateway.http import JSON_ROUTES
from services.gateway.openapi_body import request_schema


def test_no_json_route_body_keeps_an_unresolvable_reference():
    for route in JSON_ROUTES:
        text = json.dumps(request_schema(route.model))
        assert "$defs" not in text and '"$ref"' not in text, route.path


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


def test_a_model_nested_in_itself_ends_as_any_object():
    schema = request_schema(Tree)["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["name"] == {"title": "Name", "type": "string"}
    assert schema["properties"]["children"]["items"] == {}  # any value where the model would repeat


def test_every_post_route_describes_its_body_but_the_binary_and_form_ones():
    from types import SimpleNamespace

    from services.gateway.http import create_app
    from shared.settings import Settings

    app = create_app(SimpleNamespace(settings=Settings(), extras={}, broker=None, objects=None))
    while not hasattr(app, "openapi"):  # under the inference fast path and the body limits
        app = app.app
    undescribed = {path for path, operations in app.openapi()["paths"].items()
                   if "requestBody" not in operations.get("post", {"requestBody": None})}
    # form, multipart, Arrow/records or OIP bodies: fuzzed by hand (docs/testing.md)
    assert undescribed == {"/auth/realms/master/protocol/openid-connect/token",
                           "/auth/realms/master/protocol/openid-connect/logout", "/v2/models/{model}/infer",
                           "/v1/api/pipelines/infer/{deployment}/{pipeline}", "/v1/api/orchestration/upload",
                           "/v1/api/datasets/upload_rows", "/v1/api/datasets/upload_file", "/v1/api/files/upload",
                           "/v1/api/models/upload_and_convert", "/v1/api/models/upload_stream"}


def test_a_models_schema_is_made_once_and_each_route_gets_its_own_copy():
    """pydantic's model_json_schema was ~60 % of create_app's CPU, paid again for every app a process built: now once a
    model a process. Each call still answers a fresh dict: image_request_schema adds the multipart form to its copy,
    which must not reach another route's."""
    made = []

    class Counted(BaseModel):
        name: str
        child: Tree | None = None

        @classmethod
        def model_json_schema(cls, *args, **kwargs):
            made.append(cls)
            return super().model_json_schema(*args, **kwargs)

    first, second = request_schema(Counted), request_schema(Counted)
    assert made == [Counted]
    assert first == second and first is not second
    first["requestBody"]["content"]["multipart/form-data"] = {}
    first["requestBody"]["content"]["application/json"]["schema"]["properties"]["name"]["type"] = "changed"
    third = request_schema(Counted)
    assert third == second and "multipart/form-data" not in third["requestBody"]["content"]
    assert third["requestBody"]["content"]["application/json"]["schema"]["properties"]["name"]["type"] == "string"


def test_an_integer_beyond_64_bits_in_a_schema_is_described_as_it_is():
    """The cached schema went through orjson, which refuses an integer beyond 64 bits: a request model bounding or
    defaulting a field there would have stopped create_app with a TypeError (it was described before the cache)."""

    class Huge(BaseModel):
        n: int = Field(2**70, le=2**80)

    schema = request_schema(Huge)["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["n"]["default"] == 2**70 and schema["properties"]["n"]["maximum"] == 2**80
