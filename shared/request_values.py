"""A request's booleans are JSON booleans and its numbers are not booleans: the check beside pydantic's lax mode.

pydantic (lax, every request model) reads `true`/`false` as 1 and 0 where a field is a number, so
`{"workspace_id": true}` listed workspace 1's models, and reads words and numbers as booleans where a field is a
boolean (`"yes"`, `"on"`, `"t"`, `1` as true; `"no"`, `"off"`, `"false"`, `0` as false; any other string refused), so
`{"active": "yes"}` resumed an assay and `{"dry_run": 0}` collected objects: a client's wrongly typed value chose
silently, by a table of words the API documents nowhere. Both are a 400 `invalid_request` naming the field, as any
other wrong type.

`refuse_lax_scalars` walks what the client sent beside what it was validated into. It runs where a request comes
in: the gateway's JSON bodies and multipart metadata (services/gateway/json_body.py) and every bus command
(shared/bus.py run_command). It is not a model setting (`strict=True` on each field) because the same models read
back what services stored: a stored assay's AssayConfig, a pipeline definition's ImageConfig (`flatten`,
`box_normalized`) read as written before this check, and must keep reading it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.errors import InvalidRequest


def refuse_lax_scalars(payload: Any, validated: Any, place: str = "") -> None:
    """InvalidRequest naming the field (`place` prefixes it: "metadata") where `payload` (the parsed JSON) holds a
    boolean that `validated` holds as a number, or anything but a boolean that `validated` holds as a boolean.
    Walks nested models, lists and dicts of them (a detection's score in {"image.png": [{"score": true}]}); a field
    of type Any keeps what was sent and is left alone, a free-form object's booleans and strings too."""
    if isinstance(payload, dict) and isinstance(validated, BaseModel):
        fields = type(validated).model_fields
        for key, value in payload.items():
            if key in fields:
                _refuse_at(value, getattr(validated, key, None), f"{place}.{key}" if place else key)
    elif isinstance(payload, dict) and isinstance(validated, dict):
        for key, value in payload.items():
            if key in validated:
                _refuse_at(value, validated[key], f"{place}.{key}" if place else key)
    elif isinstance(payload, list) and isinstance(validated, list) and len(payload) == len(validated):
        for index, (value, kept) in enumerate(zip(payload, validated, strict=True)):
            _refuse_at(value, kept, f"{place}.{index}")


def _refuse_at(value: Any, kept: Any, place: str) -> None:
    if kept is value:  # kept as sent (a boolean as a boolean, inside Any a free-form object's part): nothing converted
        return
    if isinstance(value, bool):
        if type(kept) in (int, float):
            raise InvalidRequest(f"{place}: Input should be a valid number, not {str(value).lower()}")
    elif type(kept) is bool:  # "yes", "false", 1, 0.0 read as a boolean (pydantic's words, as a strict field says)
        raise InvalidRequest(f"{place}: Input should be a valid boolean")
    elif isinstance(value, (dict, list)):
        refuse_lax_scalars(value, kept, place)
