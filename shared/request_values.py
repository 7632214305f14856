"""A request's booleans are JSON booleans and its numbers JSON numbers: the check beside pydantic's lax mode.

pydantic (lax, every request model) reads `true`/`false` as 1 and 0 where a field is a number, so
`{"workspace_id": true}` listed workspace 1's models, and reads words and numbers as booleans where a field is a
boolean (`"yes"`, `"on"`, `"t"`, `1` as true; `"no"`, `"off"`, `"false"`, `0` as false; any other string refused), so
`{"active": "yes"}` resumed an assay and `{"dry_run": 0}` collected objects: a client's wrongly typed value chose
silently, by a table of words the API documents nowhere. It also reads a string holding a number as the number where
a field is one (`{"workspace_id": "5"}`, `" 5 "`, `"1_000"`, `"5.0"`; and `"nan"`, `"inf"` into a float, values a
JSON number cannot be). All are a 400 `invalid_request` naming the field, as any other wrong type.

`refuse_lax_scalars` walks what the client sent beside what it was validated into. It runs where a request comes
in: the gateway's JSON bodies and multipart metadata (services/gateway/json_body.py) and every bus command
(shared/bus.py run_command). It is not a model setting (`strict=True` on each field) because the same models read
back what services stored: a stored assay's AssayConfig, a pipeline definition's ImageConfig (`flatten`,
`box_normalized`) read as written before this check, and must keep reading it. Multipart form fields are text by
nature: seed 001's `models/upload_stream` example posts `workspace_id` as a form field (`requests`' `data=`), and
`datasets/upload_file` takes `dataset_id` so; their numbers are read from the text (`numbers=False`, or not checked
here at all), a JSON `metadata` part's are not.

Its cost is kept to what can differ: a body with no JSON boolean anywhere (orjson's encoding holds no `true` or
`false`; a string holding those words only costs the whole walk) and no string that reads as a number (NUMBER_TEXT
finds none in the same encoding; a string field's or a free-form value that does only costs the walk of the number
fields) is walked only in the fields whose type may hold a boolean (per model class, cached), so a benchmark's
40,000 submitted detections (all numbers and strings) are not walked a second time on the bus. A field is matched by
the key the client sends: its alias where it has one.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import re
import types
import typing
import uuid
from typing import Any

import orjson
from pydantic import BaseModel

from shared.errors import InvalidRequest


def refuse_lax_scalars(payload: Any, validated: Any, place: str = "", *, numbers: bool = True) -> None:
    """InvalidRequest naming the field (`place` prefixes it: "metadata") where `payload` (the parsed JSON) holds a
    boolean or (`numbers`) a string that `validated` holds as a number, or anything but a boolean that `validated`
    holds as a boolean. Walks nested models, lists, tuples and dicts of them (a detection's score in {"image.png":
    [{"score": true}]}); a field of type Any keeps what was sent and is left alone, a free-form object's booleans
    and strings too. `numbers=False`: a payload of form fields (text), whose numbers are read from their text."""
    encoded = _encoded(payload)
    booleans = encoded is None or b"true" in encoded or b"false" in encoded
    texts = numbers and (encoded is None or NUMBER_TEXT.search(encoded) is not None)
    _walk(payload, validated, [place] if place else [], _Sent(booleans, texts, numbers))


class _Sent(typing.NamedTuple):
    booleans: bool  # a true or false may be anywhere: every field walked
    texts: bool  # a string may read as a number: the fields that may hold a number walked too
    numbers: bool  # a string read as a number is refused (not for form fields)


_SPACE = rb"(?:[ \t\r\n]|\\[tnrfb]|\\u[0-9a-fA-F]{4}|[\x80-\xff])*"
_NUMBER = rb"[-+]?(?:[0-9_.]*[0-9][0-9_.]*(?:[eE][-+]?[0-9_]+)?|(?i:inf(?:inity)?|nan))"
NUMBER_TEXT = re.compile(rb'"(?=[-+.0-9 \\\x80-\xffiInN])' + _SPACE + _NUMBER + _SPACE + rb'"(?!:)')
r"""A JSON string, in orjson's encoding, that may read as a number (what pydantic's lax mode reads into an int or a
float: `"5"`, `" -5 "`, `"1_000"`, `"5."`, `".5e3"`, `"Infinity"`, `"nan"`, between any spaces, which the encoding
escapes, `\t`, or writes as UTF-8, a no-break space), as a value: not a key (followed by `:`), which no field holds
as a number (`{"0": "cat"}`). More than it reads (`"1.2.3"`, `"5\u00e9"`): those only cost the walk of the number
fields. Searched in C, ~9 ms for 2.5 MB (the lookahead fails most strings at their first character: without it,
50 ms)."""


def _encoded(payload: Any) -> bytes | None:
    """The JSON's encoding, to look for a true or false and for a string that reads as a number in it (a few ms for
    MBs, where walking them is a second per 40,000 detections); None when it cannot be encoded (then walked)."""
    try:
        return orjson.dumps(payload)
    except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits, a value no JSON parser gives
        return None


def _walk(payload: Any, validated: Any, path: list[Any], sent: _Sent) -> None:
    if isinstance(validated, BaseModel):
        if not isinstance(payload, dict):
            return
        names, may_hold_bool, may_hold_number = _fields(type(validated))
        for key, value in payload.items():
            name = names.get(key)
            # no boolean sent: only a boolean's field, and a number's when a string may read as one
            if name is None or not (sent.booleans or name in may_hold_bool or (sent.texts and name in may_hold_number)):
                continue
            kept = getattr(validated, name, None)
            if kept is not value:
                if not sent.booleans and name not in may_hold_bool and type(value) is list and value == kept:
                    # no boolean sent and none in this field's type, so an equal list (compared in C) holds no
                    # string read as a number ("5" == 5 is false): a detection's bbox is not walked a number at a time
                    continue
                path.append(key)
                _refuse_at(value, kept, path, sent)
                path.pop()
    elif isinstance(payload, dict) and isinstance(validated, dict):
        for key, value in payload.items():
            if key in validated and (kept := validated[key]) is not value:
                path.append(key)
                _refuse_at(value, kept, path, sent)
                path.pop()
    elif isinstance(payload, list) and isinstance(validated, (list, tuple)) and len(payload) == len(validated):
        for index, value in enumerate(payload):
            if (kept := validated[index]) is not value:
                path.append(index)
                _refuse_at(value, kept, path, sent)
                path.pop()


def _refuse_at(value: Any, kept: Any, path: list[Any], sent: _Sent) -> None:
    # kept is not value: a value kept as sent (a boolean as a boolean, inside Any a free-form object's part) is
    # skipped by the caller, nothing converted
    if value is True or value is False:
        if _number(kept):
            raise InvalidRequest(f"{_place(path)}: Input should be a valid number, not {str(value).lower()}")
    elif type(kept) is bool:  # "yes", "off", 1, 0.0 read as a boolean (pydantic's words, as a strict field says)
        raise InvalidRequest(f"{_place(path)}: Input should be a valid boolean")
    elif isinstance(value, str):
        if sent.numbers and _number(kept):  # "5" read as 5, "nan" as a float, "5" as an IntEnum's member
            said = f"{_place(path)}: Input should be a valid number, not a string"
            raise InvalidRequest(f"{said}: send {value.strip()} without quotes" if _json_number(value) else said)
    elif isinstance(value, (dict, list)):
        _walk(value, kept, path, sent)


def _number(kept: Any) -> bool:
    """Whether pydantic kept a number: an int or a float, or a member of an IntEnum (or a float enum), which its lax
    mode reads from "5" and from true as well; not a boolean (`_refuse_at` answers those apart)."""
    return isinstance(kept, (int, float)) and not isinstance(kept, bool)


def _json_number(text: str) -> bool:
    """Whether `text` is a number JSON can write as it is (then the message says to send it unquoted)."""
    try:
        orjson.loads(text.strip())
    except orjson.JSONDecodeError:
        return False
    return True


def _place(path: list[Any]) -> str:
    return ".".join(str(part) for part in path)


@functools.cache
def _fields(model: type[BaseModel]) -> tuple[dict[str, str], frozenset[str], frozenset[str]]:
    """A model's fields by the key a client sends (its alias, and its name where the model takes names too), those
    whose type may hold a boolean (the only ones walked in a body without a JSON boolean) and those whose type may
    hold a number (walked too when a string may read as one)."""
    by_key: dict[str, str] = {}
    by_name = bool(model.model_config.get("populate_by_name") or model.model_config.get("validate_by_name"))
    for name, field in model.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
        by_key[alias or name] = name
        if by_name or not alias:
            by_key[name] = name
    fields = model.model_fields.items()
    return (by_key, frozenset(name for name, field in fields if _may_hold(field.annotation, bool, (model,))),
            frozenset(name for name, field in fields if _may_hold(field.annotation, int, (model,))))


_HOLD_NONE = (str, bytes, decimal.Decimal, enum.Enum, datetime.date, datetime.time, datetime.timedelta, uuid.UUID,
              type(None))
"""Types that hold neither a boolean nor a number read from a string (int and float are answered before them)."""


def _may_hold(annotation: Any, scalar: type, seen: tuple[type, ...]) -> bool:
    """Whether a field of this type may hold a `scalar`: bool (a bool, a model or container with one, a Literal of
    one) or int (an int, a float or an IntEnum, as bool is answered apart: a model or container with one, a Literal
    of one). Any keeps what was sent and holds none of pydantic's; a type not known here may (it is walked)."""
    if annotation is bool:
        return scalar is bool
    if annotation in (int, float):
        return scalar is int
    if annotation is Any:
        return False
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return any(isinstance(arg, bool) if scalar is bool else isinstance(arg, (int, float))
                   and not isinstance(arg, bool) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _may_hold(typing.get_args(annotation)[0], scalar, seen)
    if origin is not None or isinstance(annotation, types.UnionType):  # list[...], dict[...], X | Y, Optional
        return any(_may_hold(arg, scalar, seen) for arg in typing.get_args(annotation) if arg is not Ellipsis)
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            if annotation in seen:  # a model inside itself (not known yet): walked
                return True
            return any(_may_hold(field.annotation, scalar, (*seen, annotation))
                       for field in annotation.model_fields.values())
        if issubclass(annotation, (bool, int, float)):  # subclasses: an IntEnum (lax: "5" and true read as a member)
            return issubclass(annotation, bool) == (scalar is bool)
        return not issubclass(annotation, _HOLD_NONE)
    return True
