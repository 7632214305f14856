"""The Open Inference Protocol (KServe/Triton v2) over HTTP for the same deployments, with the binary tensor
data extension, so `tritonclient[http]` works unchanged. A model is addressed by its deployment name
(`<deploy_id>-<id>`); tokens are required as on every route (inference tokens included)."""

from __future__ import annotations

import base64
import functools
import math
import re
import sys
from array import array as _array
from itertools import chain
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.gateway.errors import error_response
from services.gateway.json_fast import count_brackets as _brackets
from services.gateway.json_fast import parse as _parse
from shared.arrow_codec import (
    NO_ROWS,
    check_column_count,
    flat_array,
    flat_values,
    rows_words,
    tensor_array,
)
from shared.authz import Principal
from shared.errors import InvalidRequest, RailyardError

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
             "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
             "UINT64": np.uint64, "BOOL": np.bool_}
NUMPY_TO_OIP = {np.dtype(v).str: k for k, v in DATATYPES.items()}
LITTLE_ENDIAN = {k: np.dtype(v).newbyteorder("<") for k, v in DATATYPES.items()}  # a request's element types
ARROW_TO_OIP = {"float": "FP32", "double": "FP64", "halffloat": "FP16", "int64": "INT64", "int32": "INT32",
                "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                "uint64": "UINT64", "bool": "BOOL", "string": "BYTES"}


def _tensor_metadata(schema_b64: str | None) -> list[dict[str, Any]]:
    if not schema_b64:
        return []
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema_b64)))
    tensors = []
    for field in schema:
        kind = field.type
        dims = []
        while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
            dims.append(kind.list_size if pa.types.is_fixed_size_list(kind) else -1)
            kind = kind.value_type
        tensors.append({"name": field.name, "datatype": ARROW_TO_OIP.get(str(kind), str(kind).upper()),
                        "shape": [-1, *dims]})
    return tensors


FLOATS = {"FP32", "FP64", "FP16"}
MAX_DIMS = 32  # a tensor's dimensions, batch included (numpy holds at most 64, ONNX models far fewer)
# bytes of JSON from which simdjson reads float data (1 row: 15 us against 11; 1,000 rows: 0.8 ms against 1.2)
FAST_BODY = 4096


def _plain(value: Any) -> Any:
    import simdjson

    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


_HOLDERS = (list, dict)


def _lists(value: Any) -> int:
    """How many JSON arrays a plain value holds (itself included). A list's items are looked into only when its
    types (a C loop) hold a list or an object: a call per value took ~2 ms for an INT64 tensor of 29,000 values."""
    if isinstance(value, list):
        if set(map(type, value)).isdisjoint(_HOLDERS):
            return 1
        return 1 + sum(_lists(item) for item in value if isinstance(item, _HOLDERS))
    if isinstance(value, dict):
        return sum(_lists(item) for item in value.values())
    return 0


def _read_json_fast(body: bytes) -> dict[str, Any] | None:
    """The request with each flat `data` list of a float input read by simdjson straight into a float64 array
    (no Python float per value: 0.5 ms instead of 1.1 for 29,000 values), or None when the body is anything
    else — then the general path reads it and gives its exact error. Nothing of the simdjson document outlives
    this function (as_buffer copies, _plain makes Python objects), so the next call reuses its parser."""
    import simdjson

    if body.startswith(b"\xef\xbb\xbf"):  # simdjson skips a byte order mark, orjson (JSON's RFC 8259) refuses it
        return None
    try:
        document = _parse(body)
        inputs = document.get("inputs") if isinstance(document, simdjson.Object) else None
        if not isinstance(inputs, simdjson.Array) or not len(inputs):
            return None
        keys = list(document.keys())
        if len(set(keys)) != len(keys):  # simdjson's [key] is the first of a repeated key, orjson keeps the last
            return None
        request = {key: _plain(document[key]) for key in keys if key != "inputs"}
        tensors, lists = [], 1 + _lists(request)  # the `[`s the body may hold: `inputs` and every other list
        for tensor in inputs:
            if not isinstance(tensor, simdjson.Object):
                return None
            keys = list(tensor.keys())
            if len(set(keys)) != len(keys):
                return None
            plain = {key: _plain(tensor[key]) for key in keys if key != "data"}
            lists += _lists(plain)
            data = tensor.get("data")
            if isinstance(data, simdjson.Array) and (rows := _empty_rows(data, simdjson.Array)):
                # `[[], [], ...]`: no values, so whatever its shape says the request is refused (or the fill check
                # says "0 values", or the batch is 0); read without an object per row (1M rows: ~1 s before)
                plain["data"] = np.empty(0, np.float64)
                lists += 1 + rows  # each row one `[` (the bracket count below holds it to exactly that)
            elif plain.get("datatype") in FLOATS and isinstance(data, simdjson.Array):
                arrays = _tensor_arrays(data, simdjson.Array)  # 1, or a nested tensor's lists
                if arrays is None:
                    return None
                plain["data"] = np.frombuffer(data.as_buffer(of_type="d"), np.float64)
                lists += arrays
            elif data is not None:
                plain["data"] = _plain(data)
                lists += _lists(plain["data"])
            tensors.append(plain)
        # as_buffer flattens nested lists, even ragged ones: one `[` more than counted (a list deeper in one place
        # of `data` than _tensor_arrays looked, or one inside a string) and the general path reads the body instead
        if _brackets(body, lists) != lists:
            return None
        request["inputs"] = tensors
        return request
    except (ValueError, TypeError, RuntimeError):
        return None


def _empty_rows(data: Any, array: type) -> int:
    """How many rows a tensor's `data` (a simdjson Array) holds when it is rows of nothing (`[[], [], ...]`), else 0,
    from its length, its first row and as_buffer's count of its values (C: no Python object per row). With no value
    anywhere in it (as_buffer refuses a string, a bool, a null and an object, and found no number) every row is an
    array; that none holds another is the caller's bracket count, which holds the body to `1 + rows` `[` for it."""
    if not len(data) or type(first := data[0]) is not array or len(first):
        return 0
    try:
        return 0 if memoryview(data.as_buffer(of_type="d")).nbytes else len(data)
    except (TypeError, ValueError):
        return 0  # a value that is not a number: read as before, and refused in the general path's words


def _tensor_arrays(data: Any, array: type) -> int | None:
    """How many JSON arrays a float tensor's `data` (a simdjson Array) is made of when it is flat (1) or nested as a
    tensor is: each level's items all arrays of one length, down to the first level whose first item is not an
    array; None when it is not (ragged rows, a number beside a row): the general path then says what is wrong. A
    level's arrays are looked at, never the values (~0.1 ms for 1,000 rows, where the general path's orjson and
    its cast took ~2.4 ms more). Values are as_buffer's to check (it refuses a string, a bool, a null), and an
    array deeper in one place than in the first row is one `[` more than counted (the caller's bracket count)."""
    count, level = 1, [data]
    while len(level[0]) and isinstance(first := level[0][0], array):
        size, below = len(first), []
        for holder in level:
            for item in holder:
                if type(item) is not array or len(item) != size:
                    return None
                below.append(item)
        count += len(below)
        level = below
    return count


# the engine's phrasings (services/engine/runtimes.py, replica.py) that name a request's tensors as the records and
# Arrow routes see them, columns, and the Open Inference Protocol's word for them
_ENGINE_PREFIXES = (("column ", "input "), ("the A/B split hashes column ", "the A/B split hashes input "))
# runtimes.check_columns: "the model takes columns [..]: missing columns [..]; unexpected columns [..]", each list a
# Python repr of names (a name may hold any character, the phrases and brackets too: the lists are read whole, by the
# quoting repr gives them, so a name is never rewritten)
_NAME = r"""(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
_NAMES = rf"\[(?:{_NAME}(?:, {_NAME})*)?\]"
_ENGINE_LISTS = re.compile(rf"the model takes columns (?P<takes>{_NAMES}): (?:missing columns (?P<missing>{_NAMES}))?"
                           rf"(?P<both>; )?(?:unexpected columns (?P<unexpected>{_NAMES}))?", re.DOTALL)


def _lists_in_oip_words(msg: str) -> str:
    found = _ENGINE_LISTS.fullmatch(msg)
    if found is None or not (found["missing"] or found["unexpected"]) or \
            bool(found["both"]) != bool(found["missing"] and found["unexpected"]):
        return msg  # not the engine's phrasing as check_columns writes it: said as it came
    parts = [f"missing inputs {found['missing']}" if found["missing"] else "",
             f"unexpected inputs {found['unexpected']}" if found["unexpected"] else ""]
    return f"the model takes inputs {found['takes']}: " + "; ".join(p for p in parts if p)


def in_oip_words(exc: RailyardError) -> RailyardError:
    """The engine's error, said in OIP's words (an input, not a column), its class, code and status unchanged: the
    engine serves every route alike and names a request's tensors columns, as the records and Arrow routes do. Only
    the engine's own words change: a name in the message (a model's input, a request's column) stays as given."""
    msg = exc.msg
    for engine, oip in _ENGINE_PREFIXES:
        if msg.startswith(engine):
            msg = oip + msg[len(engine):]
            break
    else:
        if msg.startswith("the model takes columns ["):
            msg = _lists_in_oip_words(msg)
    if msg != exc.msg:
        exc.msg, exc.args = msg, (msg,)
    return exc


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], pa.Table]:
    """An OIP inference request (JSON, or JSON + binary tensors) as its JSON part and an Arrow table."""
    named: list[bool] = []  # a refusal came from the values of a tensor the fast reader read
    try:
        return _parse_request(body, header_length, fast=True, named=named)
    except InvalidRequest:
        if not named:  # the general path's words already: both readers give the same JSON values but the fast
            # reader's float data, and this refusal did not come from those (its count, its shape, another input)
            raise
        # refused: in the general path's words. The fast reader holds float data as float64, so a value it names
        # (one beyond FP16's range) read 9007199254740992.0 where the body wrote 9007199254740993; such a refusal
        # reads the body twice, a request taken once. Before session 32 every refusal of a body the fast reader read
        # was read again: a body of 1M empty rows (`[[], ...]`, 3 MB) made 1M Python lists to say "0 values"
        return _parse_request(body, header_length, fast=False)


def _parse_request(body: bytes, header_length: str | None, *, fast: bool,
                   named: list[bool] | None = None) -> tuple[dict[str, Any], pa.Table]:
    try:
        split = int(header_length) if header_length else len(body)
    except ValueError:
        raise InvalidRequest(f"{HEADER_LENGTH} is {header_length[:40]!r}, not a whole number of bytes: the length "
                             "of the JSON part of the body") from None
    try:
        if not 0 <= split <= len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} is {split}, outside the body's {len(body)} bytes")
        fast = fast and split == len(body) > FAST_BODY  # below it orjson's own path is quicker (set-up)
        request = _read_json_fast(body) if fast else None
        request = request or orjson.loads(body[:split])
    except (ValueError, UnicodeDecodeError) as exc:  # the reader's reason: where, and what (1e400: "infinity")
        raise InvalidRequest(f"the request is not valid JSON: {str(exc)[:200]}") from None
    binary = memoryview(body)[split:]
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InvalidRequest("the request needs a non-empty `inputs` list")
    if request.get("id") is not None and not isinstance(request["id"], str):
        # OIP's `id` is a string, echoed in the answer; MLServer and KServe (pydantic `Optional[str]`) refuse any
        # other type too. Before, 5 or {} was echoed as given, which a client typed to the protocol cannot read
        raise InvalidRequest(f"`id` must be a string (it is echoed in the answer); got {_json_type(request['id'])}")
    check_column_count(len(request["inputs"]), "inputs")
    columns, names, seen, offset, rows = [], [], set(), 0, None
    letters: bool | None = None  # does the body hold an `r` or an `l` (found once, when needed)
    words: bool | None = None  # does its JSON part hold `true` or `false` (found once, when needed)
    for tensor in request["inputs"]:
        try:
            name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
        except (KeyError, TypeError, IndexError):
            raise InvalidRequest("every input needs name, shape and datatype") from None
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise InvalidRequest("every input needs name and datatype as strings and shape as a list")
        if name in seen:
            raise InvalidRequest(f"input {name!r} is given twice")
        seen.add(name)
        if datatype not in DATATYPES:
            raise InvalidRequest(f"input {name!r}: datatype {datatype} is not supported")
        if not shape or len(shape) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape) or \
                0 in shape[1:]:
            raise InvalidRequest(f"input {name!r}: shape must be a list of at most {MAX_DIMS} positive integers, "
                                 "the batch dimension first")
        if math.prod(shape[1:]) >= 2**31:  # Arrow's list sizes are int32 (and numpy's shapes must fit its sizes)
            raise InvalidRequest(f"input {name!r}: shape {shape} puts 2^31 values or more in one row")
        dtype = LITTLE_ENDIAN[datatype]
        size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(
            tensor.get("parameters"), dict) else None
        if size is not None:
            if type(size) is not int or size < 0 or size % dtype.itemsize:
                raise InvalidRequest(f"input {name!r}: binary_data_size must be a whole number of {datatype} "
                                     f"values ({dtype.itemsize} bytes each)")
            if offset + size > len(binary):
                raise InvalidRequest(f"input {name!r}: binary_data_size says {size} bytes, the body holds "
                                     f"{len(binary) - offset} after the previous inputs")
            array = np.frombuffer(binary[offset:offset + size], dtype=dtype)
            offset += size
        else:
            data = tensor.get("data")
            if data is None:
                raise InvalidRequest(f"input {name!r} has no data")
            try:
                plain = _plain_numbers(data, dtype, datatype) if type(data) is list and dtype.kind != "b" else None
                if plain is not None:  # numbers of the type's range only (bools aside): no string, null or fraction
                    flat, array = plain
                    # a bool is a number to array() and numpy: the values are looked at only when the body may hold
                    # one (it has an `r` or an `l`; for more than a few values, `true` or `false`)
                    if letters is None:
                        letters = _R in body or _L in body
                    maybe = letters
                    if maybe and array.size > _TYPES_CHECKED:
                        if words is None:
                            words = _holds_bools(body, split)
                        maybe = words
                    if maybe and bool in set(map(type, flat)):
                        raise _not_of_type(name, datatype, shape, data)
                else:
                    with np.errstate(over="ignore"):
                        array = np.asarray(data, dtype=dtype).reshape(-1)
                    # numpy's cast reads a string of a number ("1.5") and a bool (true: 1) as the number
                    if dtype.kind != "b" and not isinstance(data, np.ndarray) and _foreign(data):
                        raise _not_of_type(name, datatype, shape, data)
                # JSON has no Infinity or NaN: a NaN is a null the cast took for a missing value (FP64 passed it to
                # the model as NaN, FP32 called it out of range), a non-finite FP32/FP16 value is a number beyond
                # the type's range, which the cast turned into inf (the engine would refuse it as "infinite")
                if dtype.kind == "f" and not np.isfinite(array).all():
                    nulls = np.flatnonzero(np.isnan(array))
                    if len(nulls):
                        raise InvalidRequest(f"input {name!r}: {datatype} data holds null"
                                             f"{_rows_of(name, shape, nulls, array.size)}; every value must be a "
                                             "number")
                    if dtype.itemsize < 8:
                        at = int(np.flatnonzero(np.isinf(array))[0])
                        raise _outside(name, datatype, shape, _leaves(data)[at], at, array.size)
                # numpy's cast reads a null as False and any non-empty string ("false" too) as True: a missing or
                # mistyped value would reach the model as a real one. true/false, or the numbers 0 and 1
                if dtype.kind == "b" and not isinstance(data, np.ndarray):
                    given = np.asarray(data, dtype=object).reshape(-1)
                    nulls = [at for at, value in enumerate(given) if value is None]
                    if nulls:
                        raise InvalidRequest(f"input {name!r}: BOOL data holds null"
                                             f"{_rows_of(name, shape, nulls, len(given))}; every value must be true "
                                             "or false")
                    wrong = [at for at, value in enumerate(given)
                             if not (type(value) is bool or (type(value) is int and value in (0, 1)))]
                    if wrong:
                        raise InvalidRequest(f"input {name!r}: BOOL data must be true or false (or 0 and 1), not "
                                             f"strings or other numbers: {_json_text(given[wrong[0]])}"
                                             f"{_rows_of(name, shape, wrong[:1], len(given))}")
                if dtype.kind in "iu" and plain is None and not isinstance(data, np.ndarray):  # numpy: 1.5 -> 1
                    given = np.asarray(data).reshape(-1)
                    if given.dtype.kind == "f" and not np.array_equal(given, array):
                        at = int(np.flatnonzero(given != array)[0])
                        raise InvalidRequest(f"input {name!r}: {datatype} data holds a number with a fraction "
                                             f"({float(given[at])!r}){_rows_of(name, shape, [at], given.size)}; "
                                             "send whole numbers")
            except InvalidRequest:
                if named is not None and isinstance(data, np.ndarray):  # the fast reader's (float64) values
                    named.append(True)
                raise
            except OverflowError:  # numpy's cast of a Python int (or float) past an integer type's range
                raise _out_of_range(name, datatype, shape, _leaves(data)) from None
            except (ValueError, TypeError):
                raise _not_of_type(name, datatype, shape, data) from None
        if array.size != math.prod(shape):  # Python's ints: numpy's int64 product wraps (2^32 x 2^32 is 0)
            raise InvalidRequest(f"input {name!r}: {array.size} values do not fill shape {shape}")
        if rows is not None and shape[0] != rows:
            raise InvalidRequest("all inputs must have the same batch size (first dimension)")
        rows = shape[0]
        matrix = array.reshape(shape)
        columns.append(tensor_array(matrix) if matrix.ndim > 1 else flat_array(matrix))
        names.append(name)
    if not rows:  # one rule for every format (records `[]`, an Arrow table of 0 rows): shared.arrow_codec.NO_ROWS
        raise InvalidRequest(f"{NO_ROWS} (the inputs' batch dimension is 0)")
    if offset != len(binary):
        raise InvalidRequest(f"the body holds {len(binary) - offset} bytes of binary data no input's "
                             "binary_data_size accounts for")
    wanted = request.get("outputs")
    if wanted is not None and (not isinstance(wanted, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted)):
        raise InvalidRequest("`outputs` must be a list of the outputs to answer, each an object with a name (a "
                             "string)")
    return request, pa.Table.from_arrays(columns, names=names)


def _fills(name: str, shape: list[int], count: int) -> None:
    """The refusal of `count` values that do not fill `shape` (before a refusal names their rows: only values that
    fill the shape have rows)."""
    if count != math.prod(shape):  # Python's ints: numpy's int64 product wraps (2^32 x 2^32 is 0)
        raise InvalidRequest(f"input {name!r}: {count} values do not fill shape {shape}")


def _rows_of(name: str, shape: list[int], positions: Any, count: int) -> str:
    """" in rows 1 and 3 (counted from 0)" for values at `positions` of a tensor's `count` flat (row-major) values,
    as the engine names a request's rows (arrow_codec.rows_words); the fill refusal when they do not fill `shape`."""
    _fills(name, shape, count)
    per_row = math.prod(shape[1:])
    return rows_words(np.unique(np.asarray(positions, np.int64) // per_row))


def _leaves(data: Any) -> list[Any]:
    """A tensor's `data` as its flat (row-major) JSON values, nested lists read in order (a refusal's look)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).tolist()
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _json_text(value: Any) -> str:
    """A JSON value as the request wrote it (at most 40 characters): "yes", 2, null."""
    text = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode() if not isinstance(value, float) \
        else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _outside(name: str, datatype: str, shape: list[int], value: Any, at: int, count: int) -> InvalidRequest:
    return InvalidRequest(f"input {name!r}: a value ({_json_text(value)}) outside the range of {datatype}"
                          f"{_rows_of(name, shape, [at], count)}")


def _out_of_range(name: str, datatype: str, shape: list[int], values: list[Any]) -> InvalidRequest:
    """The refusal of the first of `values` an integer `datatype` cannot hold (numpy's OverflowError names none)."""
    info = np.iinfo(DATATYPES[datatype])
    for at, value in enumerate(values):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not info.min <= value <= info.max:
            return _outside(name, datatype, shape, value, at, len(values))
    return InvalidRequest(f"input {name!r}: a value is outside the range of {datatype}")


# array() type codes of each number type when they are its size and byte order: array(code, values) casts a flat list
# of Python numbers as fast as numpy's asarray, and unlike it refuses a string ("1.5"), a null, a list and a number
# outside an integer type's range (FP16 has no code: read as FP64, then cast)
_ARRAY_CODES = {datatype: code for datatype, code in (
    ("FP32", "f"), ("FP64", "d"), ("FP16", "d"), ("INT8", "b"), ("UINT8", "B"), ("INT16", "h"), ("UINT16", "H"),
    ("INT32", "i"), ("UINT32", "I"), ("INT64", "q"), ("UINT64", "Q"))
    if sys.byteorder == "little" and _array(code).itemsize == np.dtype(DATATYPES[datatype] if datatype != "FP16"
                                                                         else np.float64).itemsize}


def _plain_numbers(data: list, dtype: np.dtype, datatype: str) -> tuple[list, np.ndarray] | None:
    """`data` (a JSON list) as (its values, flat in row-major order; their flat array of `datatype`) when every value
    is a number of the type (ints in an integer type's range, any number for a float type; a bool counts as a
    number here: the caller looks for them), else None: then numpy's cast and its checks read it and say what is
    wrong, as before (or take it: a whole float like 2.0 for an integer type). A nested list is flattened first
    (`_flattened`), so it is read as a flat one is: before, numpy's own reading of it made float64 (or int64) and
    then cast it, ~6 % slower than the old direct cast for 1,000 FP32 rows."""
    if data and type(data[0]) is list:
        data = _flattened(data)
        if data is None:
            return None
    code = _ARRAY_CODES.get(datatype)
    if code is None:
        return None
    try:
        values = np.frombuffer(_array(code, data), np.float64 if datatype == "FP16" else dtype)
    except (TypeError, ValueError, OverflowError):
        return None
    if datatype == "FP16":
        with np.errstate(over="ignore"):
            values = values.astype(dtype)
    return data, values


_LIST = {list}


def _flattened(data: list) -> list | None:
    """A nested JSON list's values in row-major order, a level at a time (a C loop each: ~0.1 ms for 30,000 values),
    or None when it is no full tensor: a level whose items are not all lists of one length (ragged, a number beside
    a list). A list deeper in one place only (`[[1, [2]], [3, 4]]`) is left among the values, which array() then
    refuses. None sends the list to numpy's cast, whose refusal says what is wrong."""
    while data and type(data[0]) is list:
        if set(map(type, data)) != _LIST or len(set(map(len, data))) != 1:
            return None
        data = list(chain.from_iterable(data))
    return data


_LETTERS_CHECKED = 16  # occurrences of `r` or `l` looked at one by one; past them the body is searched for the word
# `true` needs an `r` and `false` an `l`: a body holding neither holds no bool (~50 ns each for a 1-row body: `int in
# bytes` is a memchr, where `bytes in bytes` and find took ~0.2-0.4 us)
_R, _L = ord("r"), ord("l")
_TYPES_CHECKED = 256  # values whose types are looked at when the body has those letters, rather than search it first


def _holds_bools(body: bytes, end: int) -> bool:
    """Does body[:end] hold `true` or `false` (a literal, or in a string: then its values are looked at)? Found
    from their letters `r` and `l`, which no key of a body of numbers holds but `parameters` (and a name may), by
    memchr: ~12 us for a 1,000-row body, where a search for the words took ~700 (CPython's search steps a few bytes
    at a time)."""
    for letter, word, back in ((b"r", b"true", 1), (b"l", b"false", 2)):
        at = body.find(letter, 0, end)
        for _ in range(_LETTERS_CHECKED):
            if at < 0:
                break
            if at >= back and body.startswith(word, at - back, end):
                return True
            at = body.find(letter, at + 1, end)
        else:
            if at >= 0 and body.find(word, max(at - back, 0), end) >= 0:
                return True
    return False


def _foreign(data: list) -> bool:
    """Does a JSON list, nested or not, hold a string, a bool or anything else that is not a number or null?"""
    return any(type(value) is bool or not (value is None or isinstance(value, (int, float)))
               for value in _leaves(data))


def _not_of_type(name: str, datatype: str, shape: list[int], data: Any) -> InvalidRequest:
    """The refusal of `data` that is not of `datatype`: the first value that is not a number (a string, a bool, a
    null for an integer type, an object), or lists of different lengths."""
    values = _leaves(data)
    for at, value in enumerate(values):
        if value is None:
            return InvalidRequest(f"input {name!r}: {datatype} data holds null"
                                  f"{_rows_of(name, shape, [at], len(values))}; every value must be a number")
        if type(value) is bool or not isinstance(value, (int, float)):
            return InvalidRequest(f"input {name!r}: data is not {datatype}: {_json_text(value)}"
                                  f"{_rows_of(name, shape, [at], len(values))}")
    return InvalidRequest(f"input {name!r}: data is not {datatype} (nested lists of different lengths)")


def _json_type(value: Any) -> str:
    """A parsed JSON value's type as JSON names it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else "a string"


@functools.lru_cache(maxsize=256)
def _output_names(output_schema: str) -> frozenset[str]:
    """A route's output names, from its base64 Arrow schema (decoded once per schema)."""
    return frozenset(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(output_schema))).names)


def check_outputs(request: dict[str, Any], route: Any) -> None:
    """The outputs a request asks for by name are the model's (as Triton, which refuses an unexpected output),
    checked before the model runs, so a misspelt name is a 400 that changes nothing rather than an answer without
    that output and a logged inference. Known for a pipeline of plain ONNX steps (`batchable`: the last step's one
    model gives every output); for others (Python steps, BYOP, A/B arms, which may answer other outputs) an unknown
    name is left out of the answer, as before."""
    wanted = request.get("outputs")
    if not wanted or not route.batchable or not route.output_schema:
        return
    names = _output_names(route.output_schema)
    for entry in wanted:
        if entry["name"] not in names:
            given = entry["name"]
            shown = repr(given[:64]) + (f" ({len(given)} characters)" if len(given) > 64 else "")
            raise InvalidRequest(f"output {shown} is not an output of the model; its outputs are {sorted(names)}")


def encode_response(request: dict[str, Any], model: str, version: str, outputs: pa.Table) -> tuple[bytes, dict]:
    def parameters(entry: dict) -> dict:
        found = entry.get("parameters")
        return found if isinstance(found, dict) else {}

    outputs_wanted = request.get("outputs")
    wanted = {o["name"]: o for o in (outputs_wanted if isinstance(outputs_wanted, list) else [])
              if isinstance(o, dict) and isinstance(o.get("name"), str)}
    all_binary = bool(parameters(request).get("binary_data_output"))
    described, blobs = [], []
    for name in outputs.column_names:
        if wanted and name not in wanted:
            continue
        column = outputs.column(name)
        if pa.types.is_list(column.type) and pa.types.is_string(column.type.value_type):
            continue  # split bookkeeping (_model_split) is not a tensor
        array = _to_numpy(column)
        datatype = NUMPY_TO_OIP.get(array.dtype.newbyteorder("<").str if array.dtype.byteorder == ">"
                                    else array.dtype.str)
        entry = {"name": name, "datatype": datatype or "BYTES", "shape": list(array.shape)}
        binary = all_binary or parameters(wanted.get(name, {})).get("binary_data")
        if datatype is None:  # strings (a Python step's), or anything else OIP has no numeric type for: BYTES
            values = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
            if binary:  # the binary extension's BYTES: each element a 4-byte little-endian length, then its bytes
                raw = b"".join(len(v).to_bytes(4, "little") + v for v in values)
            else:
                entry["data"] = [v.decode("utf-8", "replace") for v in values]
        elif binary:
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        else:
            entry["data"] = _json_values(array)
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        described.append(entry)
    header = orjson.dumps({"model_name": model, "model_version": version, "id": request.get("id") or "",
                           "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def _json_values(array: np.ndarray) -> np.ndarray:
    """A numeric tensor's values as orjson writes them from numpy (OPT_SERIALIZE_NUMPY), without a Python object
    per value. FP32 (and FP16) values print in their shortest form that reads back as the same float32 (0.1f as
    `0.1`), as the records answer and a JSON log page print them; before session 35 they were widened to float64
    first (`0.10000000149011612`, the bytes `tolist()` gave)."""
    return np.ascontiguousarray(array.reshape(-1))


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    shape = [len(array)]
    while pa.types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        array = flat_values(array)  # flatten() without its compute-function call
    return array.to_numpy(zero_copy_only=False).reshape(shape)


def add_oip_routes(app: FastAPI, runtime, caller, inference) -> None:
    """The protocol's routes. `inference` is the gateway's services.gateway.inference.Inference: its route cache,
    and its run_oip for an inference, which the raw ASGI fast path in front of the application serves too."""
    cache = inference.cache

    async def route_for(model: str, request: Request, principal: Principal):
        token = request.headers["authorization"].partition(" ")[2].strip()
        return await cache.reach(runtime, principal, token, model)

    def oip_error(exc: RailyardError) -> Response:
        return error_response(exc, "oip")

    @app.get("/v2/health/live", tags=["open inference protocol"])
    async def live(principal: Principal = Depends(caller)) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open inference protocol"])
    async def ready(principal: Principal = Depends(caller)) -> dict:
        return {"ready": True}

    @app.get("/v2/models/{model}", tags=["open inference protocol"])
    async def metadata(model: str, request: Request, principal: Principal = Depends(caller)) -> Response:
        try:
            route = await route_for(model, request, principal)
        except RailyardError as exc:
            return oip_error(exc)
        return JSONResponse({"name": model, "versions": [route.pipeline_version], "platform": "railyard",
                             "inputs": _tensor_metadata(route.input_schema),
                             "outputs": _tensor_metadata(route.output_schema)})

    @app.get("/v2/models/{model}/ready", tags=["open inference protocol"])
    async def model_ready(model: str, request: Request, principal: Principal = Depends(caller)) -> Response:
        try:
            route = await route_for(model, request, principal)
        except RailyardError as exc:
            return oip_error(exc)
        running = route.status == "Running"
        return JSONResponse({"name": model, "ready": running}, status_code=200 if running else 400)

    @app.post("/v2/models/{model}/infer", tags=["open inference protocol"])
    async def oip_infer(model: str, request: Request, principal: Principal = Depends(caller)) -> Response:
        """Run an inference: JSON, or JSON and binary tensors (the binary data extension)."""
        # served by the fast path in front of the application; this route documents it and answers as it does, by
        # Inference.run_oip (a copy of it here sent to the engine's queue without the route's word: no replica
        # serving was 503 'has no running engine' where the fast path said 'starting' from the deployer, or 404
        # once undeployed; no coalescing, no stale-route resend)
        token = request.headers["authorization"].partition(" ")[2].strip()
        try:
            body, response_headers = await inference.run_oip(principal, token, model,
                                                             request.headers.get(HEADER_LENGTH), await request.body())
        except RailyardError as exc:
            return oip_error(exc)
        return Response(body, headers=response_headers)
