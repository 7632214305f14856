"""A JSON request body's description in the gateway's OpenAPI document, for routes whose endpoints read the body
themselves (so FastAPI cannot infer it): the model's JSON Schema with its nested models inlined."""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import BaseModel


def request_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body of `model` (optional: an empty body is `{}`). A fresh copy each call
    (image_request_schema adds to it; FastAPI may share its parts with the document it builds)."""
    schema = json.loads(_schema_json(model))
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": schema}}}}


@functools.cache
def _schema_json(model: type[BaseModel]) -> str:
    """`model`'s JSON Schema with its definitions inlined, made once a process: pydantic's model_json_schema for the
    ~135 routes described was ~60 % of create_app's CPU (0.13-0.24 s of 0.22-0.36 s), paid again by every app a
    process builds (the unit tests build one per test in several files); reading the JSON back is ~50x cheaper. The
    standard json, not orjson: orjson refuses an integer beyond 64 bits (a Field bound or default), which would stop
    create_app; json.loads costs ~1.5 ms an app for all the routes (orjson ~0.6)."""
    return json.dumps(inline_definitions(model.model_json_schema()))


def inline_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `#/$defs/...` references replaced by the definitions: pydantic puts them under the model's
    own `$defs`, which an OpenAPI document resolves from its root, so Swagger UI and schemathesis could not read the
    nested models (33 routes). A model nested in itself becomes any object at the second level."""
    definitions = schema.pop("$defs", {})

    def inline(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            rest = inline({k: v for k, v in node.items() if k != "$ref"}, seen)
            return rest if name in seen else {**inline(definitions[name], seen | {name}), **rest}
        return {key: inline(value, seen) for key, value in node.items()}

    return inline(schema, frozenset())
