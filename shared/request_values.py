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

Its cost is kept to what can differ: a body with no JSON boolean anywhere (orjson's encoding holds no `true` or
`false`; a string holding those words only costs the whole walk) is walked only in the fields whose type may hold
a boolean (per model class, cached), so a benchmark's 40,000 submitted detections (all numbers and strings) are
not walked a second time on the bus. A field is matched by the key the client sends: its alias where it has one.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import types
import typing
import uuid
from typing import Any

import orjson
from pydantic import BaseModel

from shared.errors import InvalidRequest


def refuse_lax_scalars(payload: Any, validated: Any, place: str = "") -> None:
    """InvalidRequest naming the field (`place` prefixes it: "metadata") where `payload` (the parsed JSON) holds a
    boolean that `validated` holds as a number, or anything but a boolean that `validated` holds as a boolean.
    Walks nested models, lists and dicts of them (a detection's score in {"image.png": [{"score": true}]}); a field
    of type Any keeps what was sent and is left alone, a free-form object's booleans and strings too."""
    _walk(payload, validated, [place] if place else [], _holds_boolean(payload))


def _holds_boolean(payload: Any) -> bool:
    """Whether the JSON may hold a true or false: its encoding has the word (inside a string too: then it is walked
    as if it held one). Encoded in C: a few ms for MBs, where walking them is a second per 40,000 detections."""
    try:
        encoded = orjson.dumps(payload)
    except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits, a value no JSON parser gives
        return True
    return b"true" in encoded or b"false" in encoded


def _walk(payload: Any, validated: Any, path: list[Any], booleans: bool) -> None:
    if isinstance(validated, BaseModel):
        if not isinstance(payload, dict):
            return
        names, may_hold_bool = _fields(type(validated))
        for key, value in payload.items():
            name = names.get(key)
            if name is None or not (booleans or name in may_hold_bool):  # no boolean sent: only a boolean's field
                continue
            kept = getattr(validated, name, None)
            if kept is not value:
                path.append(key)
                _refuse_at(value, kept, path, booleans)
                path.pop()
    elif isinstance(payload, dict) and isinstance(validated, dict):
        for key, value in payload.items():
            if key in validated and (kept := validated[key]) is not value:
                path.append(key)
                _refuse_at(value, kept, path, booleans)
                path.pop()
    elif isinstance(payload, list) and isinstance(validated, list) and len(payload) == len(validated):
        for index, value in enumerate(payload):
            if (kept := validated[index]) is not value:
                path.append(index)
                _refuse_at(value, kept, path, booleans)
                path.pop()


def _refuse_at(value: Any, kept: Any, path: list[Any], booleans: bool) -> None:
    # kept is not value: a value kept as sent (a boolean as a boolean, inside Any a free-form object's part) is
    # skipped by the caller, nothing converted
    if value is True or value is False:
        if type(kept) in (int, float):
            raise InvalidRequest(f"{_place(path)}: Input should be a valid number, not {str(value).lower()}")
    elif type(kept) is bool:  # "yes", "off", 1, 0.0 read as a boolean (pydantic's words, as a strict field says)
        raise InvalidRequest(f"{_place(path)}: Input should be a valid boolean")
    elif isinstance(value, (dict, list)):
        _walk(value, kept, path, booleans)


def _place(path: list[Any]) -> str:
    return ".".join(str(part) for part in path)


@functools.cache
def _fields(model: type[BaseModel]) -> tuple[dict[str, str], frozenset[str]]:
    """A model's fields by the key a client sends (its alias, and its name where the model takes names too), and
    those whose type may hold a boolean (the only ones walked in a body without a JSON boolean)."""
    by_key: dict[str, str] = {}
    by_name = bool(model.model_config.get("populate_by_name") or model.model_config.get("validate_by_name"))
    for name, field in model.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
        by_key[alias or name] = name
        if by_name or not alias:
            by_key[name] = name
    return by_key, frozenset(name for name, field in model.model_fields.items()
                             if _may_hold_bool(field.annotation, (model,)))


_NO_BOOL = (str, bytes, int, float, decimal.Decimal, enum.Enum, datetime.date, datetime.time, datetime.timedelta,
            uuid.UUID, type(None))
"""Types that hold no boolean (bool, an int subclass, is answered before them)."""


def _may_hold_bool(annotation: Any, seen: tuple[type, ...]) -> bool:
    """Whether a field of this type may hold a boolean (a bool, a model or container with one, a Literal of one);
    Any keeps what was sent and holds none of pydantic's; a type not known here may (it is walked)."""
    if annotation is bool:
        return True
    if annotation is Any:
        return False
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return any(isinstance(arg, bool) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _may_hold_bool(typing.get_args(annotation)[0], seen)
    if origin is not None or isinstance(annotation, types.UnionType):  # list[...], dict[...], X | Y, Optional
        return any(_may_hold_bool(arg, seen) for arg in typing.get_args(annotation) if arg is not Ellipsis)
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            if annotation in seen:  # a model inside itself (not known yet): walked
                return True
            return any(_may_hold_bool(field.annotation, (*seen, annotation))
                       for field in annotation.model_fields.values())
        return not issubclass(annotation, _NO_BOOL)
    return True
