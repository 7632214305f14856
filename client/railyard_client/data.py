"""Conversions between what users hold (DataFrames, Arrow tables, files, numpy arrays) and the wire formats of
the inference and log APIs (Arrow IPC, pandas-records JSON, Open Inference Protocol v2 JSON)."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from railyard_client._lazy import np, pa, pd, pq
from railyard_client.errors import InvalidInput, InvalidRequest

ARROW_FILE = "application/vnd.apache.arrow.file"
RECORDS = "application/json; format=pandas-records"
ARROW_SUFFIXES = {".arrow", ".feather", ".ipc", ".arrows"}
JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}

OIP_DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64", "int32": "INT32",
                 "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                 "uint64": "UINT64", "bool": "BOOL"}
NUMPY_DTYPES = {v: k for k, v in OIP_DATATYPES.items()}
# the API's words for a request of no rows (a 400 in every format: docs/inference.md), said before sending
NO_ROWS = "the request holds no rows; send at least one"


def to_ipc_file(table: pa.Table) -> bytes:
    """An Arrow table as the bytes of an IPC file."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    """An Arrow table from IPC file or stream bytes."""
    buffer = pa.py_buffer(data)
    try:
        return pa.ipc.open_file(buffer).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(buffer).read_all()


def to_frame(table: pa.Table) -> pd.DataFrame:
    """An answer or log table as a DataFrame, its `time` column (epoch milliseconds on the wire) as UTC datetimes."""
    if "time" in table.column_names and pa.types.is_integer(table.schema.field("time").type):
        index = table.column_names.index("time")
        table = table.set_column(index, "time", table.column("time").cast(pa.int64()).cast(pa.timestamp("ms", "UTC")))
    return table.to_pandas()


def dataframe_to_table(frame: pd.DataFrame) -> pa.Table:
    """A DataFrame as an Arrow table; cells holding lists or numpy arrays become list (tensor) columns. A frame of
    no rows is InvalidInput (the API refuses a request or an upload of no rows)."""
    if not len(frame):
        raise InvalidInput(f"{NO_ROWS} (a DataFrame of 0 rows)")
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInput(f"the DataFrame cannot become an Arrow table: {exc}") from None


def refuse_no_rows(table: pa.Table, what: str = "an Arrow table") -> pa.Table:
    """The table, or InvalidInput in the API's words when it holds no rows (sent, it is the API's 400)."""
    if not table.num_rows:
        raise InvalidInput(f"{NO_ROWS} ({what} of 0 rows)")
    return table


def refuse_no_records(rows: list[Any], where: str = "the input") -> None:
    """InvalidInput in the API's words for records of no rows: `[]`, or records of no keys (`{}`, `[{}]`), which
    make no columns and so no rows."""
    if not rows:
        raise InvalidInput(f"{where}: {NO_ROWS} (an empty list of records)")
    if all(isinstance(row, dict) and not row for row in rows):
        raise InvalidInput(f"{where}: {NO_ROWS} (records of no columns)")


def tensor_lists(table: pa.Table) -> pa.Table:
    """List columns whose rows all hold the same number of numbers, booleans or strings (tensors; nested too, at
    every level or not at all) as fixed-size lists, as the inference API's pandas-records reader makes the same rows
    (`shared/arrow_codec._column_array`). A pipeline version's inference log then has one schema whether its rows
    came as DataFrames from the SDK or as JSON records: a list and a fixed-size list are two log schemas, and a log
    page ends at each change (`x-iteration-status: SchemaChange`), so a script reading the logs once got only the
    rows down to the change. Chunk by chunk over the same value buffers: nothing of the frame is copied."""
    for index, field in enumerate(table.schema):
        column = table.column(index)
        chunks = [_tensor_list(chunk) for chunk in column.chunks]
        kinds = {chunk.type for chunk in chunks}
        if len(kinds) == 1 and field.type not in kinds:  # every chunk the same tensor (a column of no chunks: none)
            kind = kinds.pop()
            table = table.set_column(index, field.with_type(kind), pa.chunked_array(chunks, kind))
    return table


def _tensor_list(array: pa.Array) -> pa.Array:
    """A list array of rectangular tensors as nested fixed-size lists, or the array as it is."""
    kind = array.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or array.null_count or not len(array):
        return array
    leaf = kind.value_type
    while pa.types.is_list(leaf) or pa.types.is_large_list(leaf):
        leaf = leaf.value_type
    if not (pa.types.is_integer(leaf) or pa.types.is_floating(leaf) or pa.types.is_boolean(leaf)
            or pa.types.is_string(leaf) or pa.types.is_large_string(leaf)):
        return array  # what the API's reader makes no tensor of (it refuses them)
    lengths = array.value_lengths().to_numpy()
    size = int(lengths[0])
    if size == 0 or (lengths != size).any():
        return array  # ragged (the API explains it) or empty lists: as they are
    values = _tensor_list(array.flatten())  # the values under the array's slice, not copied
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return array  # ragged, empty or missing rows further down: the whole column as it is
    return pa.FixedSizeListArray.from_arrays(values, size)


def _regular_file(path: str | Path) -> Path:
    """`path` if it is a regular file (or a link to one); else InvalidInput saying which: no such file, or a path that
    exists but is a directory, device or pipe (`/dev/null`, a `<(...)` process substitution's /dev/fd/N), which was
    "no such file" too. Such a path is not read: its kind is not in its name, and a pipe's reader waits for its
    writer; `railyard infer` takes a stream on stdin, its format guessed from its bytes or given by --format."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise InvalidInput(f"no such file: {path}")
    kind = "a directory" if path.is_dir() else "a pipe" if path.is_fifo() else \
        "a device" if path.is_char_device() or path.is_block_device() else "a socket" if path.is_socket() else \
        "another kind of file"
    raise InvalidInput(f"not a regular file: {path} ({kind}): give a .json, .arrow/.feather or .parquet file; "
                       "`railyard infer PIPELINE -` reads a stream from stdin (`cmd | railyard infer PIPELINE -`)")


def read_table(path: str | Path) -> tuple[pa.Table, str]:
    """A file of rows as an Arrow table, with its kind: `arrow` (IPC file or stream), `parquet` or `json`
    (pandas-records: a list of row objects, or one object per line). A file of no rows is InvalidInput (the API
    refuses a request or an upload of no rows)."""
    path = _regular_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:  # one file: ParquetFile, as pq.read_table's dataset layer imports pandas
            return _with_rows(pq.ParquetFile(path).read(), path, "a Parquet file"), "parquet"
        if suffix in ARROW_SUFFIXES:
            return _with_rows(from_ipc(path.read_bytes()), path, "an Arrow table"), "arrow"
        if suffix in JSON_SUFFIXES:
            raw = path.read_bytes()
            rows = parse_json_records(raw, str(path))
            refuse_no_records(rows, str(path))
            if _SURROGATE_ESCAPE.search(_json_text(raw)):  # Arrow cannot hold one either (UnicodeEncodeError)
                _refuse_lone_surrogates(rows, str(path))
            return records_to_table(rows), "json"
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"{path} is not a readable {suffix[1:]} file: {exc}") from None
    raise InvalidInput(f"{path}: unknown file type {suffix or '(none)'}; use .json, .arrow/.feather or .parquet")


def _with_rows(table: pa.Table, path: Path, what: str) -> pa.Table:
    if not table.num_rows:
        raise InvalidInput(f"{path}: {NO_ROWS} ({what} of 0 rows)")
    return table


class _PastInt64(InvalidInput):
    """A column's integer outside int64 (an integer column) or a float's range (a float column)."""


class _NotOrjson(ValueError):
    """JSON the API's reader (orjson) refuses, so that it reads the whole body with Python's reader instead."""


def _json_int(text: str) -> int | float:
    """A JSON integer as the inference API's reader (orjson) reads it: past the 64-bit integers (below -2^63 or
    above 2^64 - 1) a float, so 1e26 written out is a number of a float column there, not an integer out of range;
    past a float's range it refuses the body (then Python's reader reads it, integers whole)."""
    value = int(text)
    if -(2**63) <= value < 2**64:
        return value
    number = float(text)
    if math.isinf(number):
        raise _NotOrjson(text)
    return number


def _json_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e400: orjson refuses it, Python's reader takes it for infinity
        raise _NotOrjson(text)
    return number


def _no_constant(name: str) -> Any:
    raise _NotOrjson(name)  # NaN, Infinity: only Python's reader takes them


def _loads(text: str) -> Any:
    """JSON as the inference API reads a body: with orjson (`_json_int`), or, for a body orjson refuses (NaN,
    Infinity, a number past a float's range), with Python's reader, integers whole. (Python hooks on every number:
    only for rows that hold an integer past int64, `inference_records`.)"""
    try:
        return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_no_constant)
    except _NotOrjson:
        return json.loads(text)


def _json_text(raw: bytes, source: str = "the input") -> str:
    """JSON bytes as text, in the encoding the API's reader finds as Python's does (JSON's own rule: UTF-8, with or
    without a byte order mark, or UTF-16/32, which Windows PowerShell 5 writes for `>`): decoded as UTF-8 alone, a
    file with a BOM was 'not JSON' here and taken there. Bytes that are not text in that encoding (a file saved as
    Latin-1/cp1252: 'café' as b'caf\xe9') are refused, as the API refuses them ('body is not valid JSON'): they
    were replaced by U+FFFD here, so the rows went (and a dataset stored them) with their text changed."""
    try:
        return raw.decode(json.detect_encoding(raw)).strip()
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.end]
        raise InvalidInput(f"{source} is not text in UTF-8 (or UTF-16/32): byte {exc.start} ({bad!r}) is not "
                           f"{exc.encoding}; save the file as UTF-8 (the API refuses it too)") from None


def parse_json_records(raw: bytes, source: str = "the input") -> list[dict[str, Any]]:
    """pandas-records JSON (a list of objects, one object, or JSON lines) as a list of row objects; `source` names
    the input in the errors."""
    if raw[:4] == b"PAR1" or raw[:6] == b"ARROW1":  # a table file named .json: say what it is
        kind = "Parquet" if raw[:4] == b"PAR1" else "an Arrow IPC file"
        raise InvalidInput(f"{source} is {kind}, not JSON: give it its own suffix (.parquet / .arrow) or --format")
    text = _json_text(raw, source)
    if not text:  # an empty file or stdin: no rows (it said "found nothing")
        raise InvalidInput(f"{source}: {NO_ROWS} (it is empty)")
    try:
        value = json.loads(text)
    except ValueError as whole:
        if text.startswith("[") or "\n" not in text:  # one JSON document: its own error
            raise InvalidInput(f"{source} is not JSON: {whole}") from None
        value = []
        for number, line in enumerate(text.splitlines(), 1):  # JSON lines: the line that is not JSON
            if line.strip():
                try:
                    value.append(json.loads(line))
                except ValueError as exc:
                    raise InvalidInput(f"{source} is neither JSON nor JSON lines: line {number}: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if value == []:  # the API's no-rows words, as for `{}` and `[{}]` (it said "a non-empty list ..., found nothing")
        raise InvalidInput(f"{source}: {NO_ROWS} (an empty list of records)")
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        if isinstance(value, list):
            found = f"a list holding a {_json_kind(next(row for row in value if not isinstance(row, dict)))}"
        else:
            found = f"a {_json_kind(value)}"
        raise InvalidInput(f"{source}: expected pandas-records JSON: a non-empty list of row objects, found {found}")
    return value


def inference_records(raw: bytes, source: str = "the input") -> list[dict[str, Any]]:
    """pandas-records JSON for the inference API (`railyard infer`'s JSON file or stdin), refused here, before
    anything is sent, when the API would refuse it (`check_records`), with where and why."""
    rows = parse_json_records(raw, source)
    if len(rows) == 1 and _json_text(raw)[:1] == "{":  # a top-level object only: a list `[...]` is rows
        _refuse_other_shapes(rows[0], source)
    try:
        check_records(rows, source)
    except _PastInt64:
        # the API reads the body the SDK sends (`infer_at`: these rows as json.dumps writes them) with orjson,
        # which takes an integer past 64 bits for a float: read them as it will, and check that
        rows = _loads(json.dumps(rows))
        check_records(rows, source)
    if _SURROGATE_ESCAPE.search(_json_text(raw)):  # only an escape can make one (a file's bytes are decoded)
        _refuse_lone_surrogates(rows, source)
    return rows


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any) -> bool:
    """Whether a string (a key or value, at any depth) holds a lone UTF-16 surrogate, which Python's JSON reader
    lets through from a `\\ud800` escape without its pair and no UTF-8 text can hold."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(key) or _lone_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(item) for item in value)
    return False


def _refuse_lone_surrogates(rows: list[dict[str, Any]], source: str) -> None:
    """The API refuses a body whose string holds a lone surrogate ('not valid JSON', 400); the SDK could not even
    write it as UTF-8 ('unexpected UnicodeEncodeError' after signing in): say where it is."""
    for index, row in enumerate(rows):
        for name, value in row.items():
            if _lone_surrogate(name) or _lone_surrogate(value):
                raise InvalidInput(f"{source}: column {ascii(name)}: record {index} holds a string with a lone UTF-16 "
                                   "surrogate (a \\ud800-\\udfff escape without its pair), which is no text: the "
                                   "API refuses the body as not valid JSON")


def read_json_records(path: str | Path) -> list[dict[str, Any]]:
    """A pandas-records JSON file as row objects, as they go to the inference API, checked as it reads them (no
    Arrow table: `pa.Table.from_pylist` imports pandas through pyarrow's pandas shim)."""
    path = _regular_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path} is not a readable {path.suffix[1:]} file: {exc}") from None
    return inference_records(raw, str(path))


_INT64 = range(-(2**63), 2**63)
_FLOAT_MAX = 1.7976931348623157e308


_KINDS = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object",
          type(None): "null"}


def _json_kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _refuse_other_shapes(value: dict[str, Any], source: str) -> None:
    """One object that is not a row but another JSON shape users hold: an OIP v2 body, or a DataFrame written
    with `to_json()`'s default (columns) or split orientation."""
    if isinstance(value.get("inputs"), list) and all(isinstance(t, dict) and "datatype" in t for t in value["inputs"]):
        raise InvalidInput(f"{source} is an Open Inference Protocol v2 body, not pandas-records rows: send it with"
                           " Pipeline.infer_v2 or to /v2/models/<deployment>/infer, or write its rows as a list of"
                           " objects")
    split = isinstance(value.get("columns"), list) and isinstance(value.get("data"), list) and all(
        isinstance(row, list) for row in value["data"])
    if split or value and all(isinstance(v, dict) for v in value.values()):
        raise InvalidInput(f"{source} looks like a DataFrame written with to_json()'s columns or split orientation:"
                           " write it with to_json(orient='records') (a list of row objects)")


def _tensor_shape(value: list[Any], leaves: set[type], wide: list[bool]) -> tuple[int, ...] | None:
    """The shape of a nested list (None when it is ragged or mixes lists and values); its leaves' types are
    added to `leaves`, and `wide` gets True when an innermost list of numbers holds an int outside int64."""
    kinds = set(map(type, value))
    if list not in kinds:
        leaves |= kinds
        if int in kinds and kinds <= {int, float} and not (_INT64[0] <= min(value) and max(value) <= _INT64[-1]):
            wide.append(True)
        return (len(value),)
    if kinds != {list}:
        return None
    inner = [_tensor_shape(item, leaves, wide) for item in value]
    if inner[0] is None or any(shape != inner[0] for shape in inner):
        return None
    return (len(value), *inner[0])


def _leaves(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    return [leaf for item in value for leaf in _leaves(item)]


def _column_kind(name: str, values: list[Any], leaves: set[type], where: str) -> str:
    """numbers, boolean or string, as the API's reader allows them; else the record where it goes wrong."""
    if leaves <= {int, float}:
        return "float" if float in leaves else "int"
    if leaves in ({bool}, {str}):
        return "other"
    for index, value in enumerate(values):  # the error path only: which record holds what
        found = {_json_kind(leaf) for leaf in _leaves(value)}
        if "null" in found:
            raise InvalidInput(f"{where}: column {name!r}: record {index} holds a null; the API takes no missing"
                               " values (fill them in, or leave the column out of every record)")
        bad = found - {"number", "boolean", "string"}
        if bad:
            raise InvalidInput(f"{where}: column {name!r}: record {index} holds a JSON {sorted(bad)[0]}; a column"
                               " holds numbers, booleans or strings, or lists (tensors) of them")
    kinds = sorted({_KINDS.get(kind, kind.__name__) for kind in leaves})
    first = {kind: next(i for i, v in enumerate(values) if kind in {_json_kind(x) for x in _leaves(v)})
             for kind in kinds}
    raise InvalidInput(f"{where}: column {name!r} mixes data types: " + ", ".join(
        f"{kind}s (first in record {first[kind]})" for kind in kinds) + "; a column holds one type")


def _check_column(name: str, values: list[Any], where: str) -> None:
    tensors = [isinstance(value, list) for value in values]
    scalars = not any(tensors)
    if scalars:
        leaves = set(map(type, values))
    elif not all(tensors):
        raise InvalidInput(f"{where}: column {name!r} mixes tensors and scalars: record {tensors.index(True)} holds"
                           f" a list, record {tensors.index(False)} a {_json_kind(values[tensors.index(False)])}")
    else:
        leaves = set()
        wide: list[bool] = []
        shapes = [_tensor_shape(value, leaves, wide) for value in values]
        for index, shape in enumerate(shapes):
            if shape is None:
                raise InvalidInput(f"{where}: column {name!r}: record {index}'s tensor is ragged (its lists have"
                                   " different lengths, or mix lists and values)")
            if shape != shapes[0]:
                raise InvalidInput(f"{where}: column {name!r}: record {index}'s tensor has shape {list(shape)},"
                                   f" record 0's {list(shapes[0])}; every record's tensor has the same shape")
        if not leaves:
            raise InvalidInput(f"{where}: column {name!r}: empty tensors")
    kind = _column_kind(name, values, leaves, where)
    if int not in leaves or not scalars and not wide:  # (tensors: no int outside int64, the narrower range)
        return
    for index, value in enumerate(values):  # ints: in int64 (an int column), or within a float's range
        # a tensor's integers, each (min and max missed them beside a NaN, which compares false with anything)
        ends = (value,) if scalars else [leaf for leaf in _leaves(value) if type(leaf) is int]
        if kind == "int" and any(end not in _INT64 for end in ends) or kind == "float" and any(
                type(end) is int and abs(end) > _FLOAT_MAX for end in ends):
            raise _PastInt64(f"{where}: column {name!r}: record {index} holds an integer outside the 64-bit"
                               " signed range or a float's (write it as a float, e.g. 9.3e18, if that is what the"
                               " model takes)")


def check_records(rows: list[dict[str, Any]], where: str = "the input") -> None:
    """The rules the inference API reads pandas-records rows by (`shared/arrow_codec.records_to_table`), checked
    before anything is sent, with the record that breaks one: every record has record 0's columns; a column
    holds numbers, booleans or strings (no nulls, one type), as scalars in every record or as tensors (nested
    lists) of one shape; records of no keys (`{}`, `[{}]`) are no rows. What the values mean to the model (its
    inputs' names, types, shapes) only the server knows. Pure Python: no pyarrow, no pandas."""
    refuse_no_records(rows, where)
    columns = rows[0].keys()
    for index, row in enumerate(rows):
        if row.keys() != columns:
            missing = [c for c in columns if c not in row]
            extra = [c for c in row if c not in columns]
            detail = "; ".join(p for p in (f"missing {missing}" if missing else "",
                                           f"extra {extra}" if extra else "") if p)
            raise InvalidInput(f"{where}: record {index} has different columns than record 0 ({detail}); every"
                               " record needs the same keys")
    for column in columns:
        _check_column(column, [row[column] for row in rows], where)


def reversed_rows(table: pa.Table) -> pa.Table:
    """The table's rows last first. The indices are an Arrow array made from a numpy buffer: `pa.array` (and
    `table[::-1]`, which calls it) imports pandas through pyarrow's pandas shim."""
    indices = np.arange(table.num_rows - 1, -1, -1, dtype=np.int64)
    return table.take(pa.Array.from_buffers(pa.int64(), len(indices), [None, pa.py_buffer(indices)]))


def concat_pages(tables: list[pa.Table]) -> pa.Table:
    """Pages of one read (the log store's, docs/logs.md: a page never mixes schemas, the next one may have
    another) as one table. Types Arrow promotes by itself (int and float, a null column, a column a page lacks,
    tensors of other sizes) are promoted; a column whose types it cannot (a float tensor against a bool one: a
    request a model took as another type) is cast to a type holding them all: booleans with integers as 64-bit
    integers (exact: as floats an id beyond 2**53 read back another number), numbers with a float among them as
    floats, tensors as lists of that, text as strings, and anything else as its values' JSON text; so is a column
    Arrow promotes but cannot cast (a uint64 above 2**63 - 1 into its int64: floats). Before, one such row made
    every read of the pipeline's logs fail."""
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    seen: dict[str, list[Any]] = {}
    for table in tables:
        for field in table.schema:
            kinds = seen.setdefault(field.name, [])
            if field.type not in kinds and not pa.types.is_null(field.type):
                kinds.append(field.type)
    targets: dict[str, Any] = {}
    for name, kinds in seen.items():
        if len(kinds) < 2:
            continue
        try:
            unified = pa.unify_schemas([pa.schema([pa.field(name, kind)]) for kind in kinds],
                                       promote_options="permissive").field(name).type
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
            targets[name] = _common_type(kinds)
            continue
        if not _casts_exactly(tables, name, unified):  # Arrow's own: a uint64 above 2**63 - 1 fails its int64
            targets[name] = _common_type(kinds)
    cast = []
    for table in tables:
        for name, target in targets.items():
            index = table.schema.get_field_index(name)
            if index >= 0:
                table = table.set_column(index, name, _cast_column(table.column(index), target))
        cast.append(table)
    return pa.concat_tables(cast, promote_options="permissive")


def _casts_exactly(tables: list[pa.Table], name: str, target: Any) -> bool:
    """Whether every page's column `name` casts to `target` (Arrow's promotion of its types) with no value lost."""
    for table in tables:
        index = table.schema.get_field_index(name)
        if index >= 0 and table.schema.field(index).type != target:
            try:
                table.column(index).cast(target)
            except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return False
    return True


def _common_type(kinds: list[Any]) -> Any:
    """A type every one of `kinds` casts to without losing a value, or None (then: JSON text)."""
    types = pa.types
    if all(types.is_boolean(k) or types.is_integer(k) or types.is_floating(k) for k in kinds):
        floats = [k for k in kinds if types.is_floating(k)]
        integers = [k for k in kinds if types.is_integer(k)]
        if not floats and not integers:
            return pa.bool_()  # booleans stay booleans (lists of them of other kinds)
        if not floats:  # booleans and integers: exact as 64-bit integers (a float64 is not beyond 2**53)
            if all(types.is_unsigned_integer(k) for k in integers):
                return pa.uint64()
            if pa.uint64() not in integers:
                return pa.int64()
            return pa.float64()  # a uint64 with a signed integer: no integer type holds both
        if not integers:
            return max(floats, key=lambda k: k.bit_width)  # a bool is exact in any float
        return pa.float64()
    if all(types.is_list(k) or types.is_large_list(k) or types.is_fixed_size_list(k) for k in kinds):
        inner = _common_type(list({k.value_type: None for k in kinds if not types.is_null(k.value_type)}) or
                             [pa.null()])
        if inner is None:
            return None
        sizes = {k.list_size if types.is_fixed_size_list(k) else None for k in kinds}
        return pa.list_(inner, sizes.pop()) if len(sizes) == 1 and None not in sizes else pa.list_(inner)
    if all(types.is_string(k) or types.is_large_string(k) or
           (types.is_dictionary(k) and types.is_string(k.value_type)) for k in kinds):
        return pa.string()
    return None


def _cast_column(column: pa.ChunkedArray, target: Any) -> pa.ChunkedArray:
    if target is not None:
        return column.cast(target, safe=False)  # chosen to hold every value (an int64 and a float: above 2**53 rounds)
    texts = [None if value is None else json.dumps(value, default=str) for value in column.to_pylist()]
    return pa.chunked_array([pa.array(texts, pa.string())], pa.string())


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Row objects as an Arrow table."""
    try:
        return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInput(f"the rows cannot become a table: {exc}") from None


def read_ipc_or_parquet(raw: bytes) -> pa.Table:
    """Bytes of an Arrow IPC file/stream or a Parquet file as a table (for stdin, whose type is unknown)."""
    if raw[:4] == b"PAR1":
        return pq.ParquetFile(pa.BufferReader(raw)).read()
    return from_ipc(raw)


def check_output_suffix(path: str | Path) -> None:
    """Refuse an output file whose suffix names no format `write_table` writes (before anything is sent)."""
    suffix = Path(path).suffix.lower()
    if suffix not in PARQUET_SUFFIXES | ARROW_SUFFIXES | JSON_SUFFIXES:
        raise InvalidInput(f"{path}: unknown output type {suffix or '(none)'}; use .json, .arrow or .parquet")


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a table to a file whose suffix picks the format (.parquet, .arrow/.feather, .json records, or JSON
    lines for .jsonl/.ndjson)."""
    path = Path(path)
    check_output_suffix(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        pq.write_table(table, path)
    elif suffix in ARROW_SUFFIXES:
        path.write_bytes(to_ipc_file(table))
    else:
        write_json_rows(table_to_jsonable(table), path)


def write_json_rows(rows: list[Any], path: str | Path) -> None:
    """JSON rows to a file: one array for .json, one object a line for .jsonl and .ndjson (JSON lines)."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        path.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows, default=str))


def _narrow_float(kind: Any) -> bool:
    """A float32 or float16 column, or lists (of lists...) of them."""
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return pa.types.is_float32(kind) or pa.types.is_float16(kind)


def _shortest(value: Any) -> Any:
    """A float32 value (read by Arrow as the exact double) as the shortest decimal that reads back as the same
    float32, 0.1 not 0.10000000149011612, as the log store's JSON pages print it (docs/logs.md); lists as lists."""
    if isinstance(value, float):
        return float(str(np.float32(value))) if math.isfinite(value) else value
    if isinstance(value, list):
        return [_shortest(v) for v in value]
    return value


def table_to_jsonable(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of a table as JSON-ready objects (times as ISO 8601 strings; float32 and float16 values in their
    shortest float32 form, as the log store's JSON pages print them)."""
    rows = table.to_pylist()
    narrow = [field.name for field in table.schema if _narrow_float(field.type)]
    for row in rows:
        for key, value in row.items():
            if hasattr(value, "isoformat"):
                row[key] = value.isoformat()
        for key in narrow:
            row[key] = _shortest(row[key])
    return rows


def oip_request(inputs: dict[str, Any] | pd.DataFrame) -> dict[str, Any]:
    """An Open Inference Protocol v2 request from named arrays (first dimension = batch) or a DataFrame."""
    if not isinstance(inputs, (pd.DataFrame, Mapping)):
        raise InvalidInput(f"cannot send a {type(inputs).__name__} as Open Inference Protocol inputs: give a dict of "
                           "named arrays (first dimension = batch), e.g. {'tensor': [[0.1] * 29]}, or a DataFrame")
    if isinstance(inputs, pd.DataFrame):
        inputs = {name: np.stack([np.asarray(v) for v in inputs[name]]) if inputs[name].dtype == object
                  else inputs[name].to_numpy() for name in inputs.columns}
    tensors = []
    for name, values in inputs.items():
        array = np.asarray(values)
        datatype = OIP_DATATYPES.get(array.dtype.name)
        if datatype is None:
            raise InvalidInput(f"input {name!r}: dtype {array.dtype} has no Open Inference Protocol datatype")
        tensors.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                        "data": array.reshape(-1).tolist()})
    return {"inputs": tensors}


def oip_outputs(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    """The outputs of an Open Inference Protocol v2 answer as numpy arrays of their shapes."""
    return {out["name"]: np.asarray(out["data"], dtype=NUMPY_DTYPES.get(out["datatype"], "float64"))
            .reshape(out["shape"]) for out in answer.get("outputs", [])}


# the API's refusals of a column holding nulls or NaN/infinity (services/engine/runtimes.py: column_to_tensor,
# tensor_parts, OnnxRuntime.predict, _check_integers): nulls by column only, NaN/infinity with the rows of the
# request since session 29 (non_finite_rows: " in rows 1 and 3 (counted from 0)"), which an explanation leaves out
# of the API's words as it names the rows itself, with the index and what to do
_MISSING = re.compile(r"""column ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"): """
                      r"(null values|null tensor|NaN or infinite values)")
_API_ROWS = re.compile(r" in rows? \d+(?:(?:, | and )\d+)*(?: \(and \d+ more\))? \(counted from 0\)")
SHOWN_ROWS = 5  # rows named in an explained refusal; the count says how many more


def explain_missing(refused: InvalidRequest, table: pa.Table, index: Any = None) -> InvalidRequest:
    """The API's 400 for a column holding nulls or NaN ("column 'tensor': null values"), with which rows of the rows
    sent hold them and what to do; `index` the DataFrame's index they came from (its labels named too). A DataFrame's
    NaN (and None) is pandas' missing value, which pyarrow's conversion sends as an Arrow null, so a frame with NaN
    got "null values", naming neither the rows nor NaN. `refused` itself when the message is not one of those, or
    names a column the rows sent do not hold (an earlier step's output) or hold nothing missing in."""
    found = _MISSING.search(refused.message)
    if found is None:
        return refused
    try:
        name = ast.literal_eval(found.group(1))
    except (ValueError, SyntaxError):
        return refused
    if name not in table.column_names:
        return refused
    nan = found.group(2).startswith("NaN")
    column = table.column(name)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    found_rows = _rows_missing(array, nan)
    if found_rows is None:  # values this pyarrow does not flatten as it counts them: the API's words alone
        return refused
    rows, nested = found_rows
    if not len(rows):
        return refused
    shown = [int(row) for row in rows[:SHOWN_ROWS]]
    words = ", ".join(map(str, shown[:-1])) + (" and " if len(shown) > 1 else "") + str(shown[-1])
    where = f"row{'s' if len(rows) > 1 else ''} {words}"
    if index is not None:
        labels = [_plain(index[row]) for row in shown]
        where += f" (index {', '.join(map(str, labels))})"
    if len(rows) > SHOWN_ROWS:
        where += f" and {len(rows) - SHOWN_ROWS} more"
    what = "NaN or infinity" if nan else (
        "a missing value (NaN or None, which pyarrow sends as null)" if index is not None else "a null")
    inside = " inside the tensor" if nested else ""
    them, those_rows = ("it", "that row") if len(rows) == 1 else ("them", "those rows")
    if index is not None and not nested:
        todo = f"fill {them} (frame.fillna(...)) or drop {those_rows} (frame.dropna(subset=[{name!r}]))"
    elif index is not None and not index.is_unique:  # drop(index=) would drop every row of a label, clean ones too
        todo = (f"replace {them} in the tensors (e.g. numpy.nan_to_num) or drop {those_rows} by position (the index"
                f" repeats labels: frame.iloc[[i for i in range(len(frame)) if i not in {{{_positions(rows)}}}]])")
    elif index is not None:
        todo = (f"replace {them} in the tensors (e.g. numpy.nan_to_num) or drop {those_rows} "
                f"(frame.drop(index=[{', '.join(map(repr, labels))}{', ...' if len(rows) > SHOWN_ROWS else ''}]))")
    else:
        todo = f"replace {them} or leave {those_rows} out (the model takes no missing values)"
    api = refused.message[:found.end()] + _API_ROWS.sub("", refused.message[found.end():], count=1)
    message = (f"{api}: {where} of column {name!r} hold{'s' if len(rows) == 1 else ''} {what}{inside};"
               f" {todo}, then infer again")
    return type(refused)(refused.status, refused.code, message)


def _positions(rows: np.ndarray) -> str:
    """Row positions as a Python set's items, the first SHOWN_ROWS, `...` for more."""
    return ", ".join(map(str, map(int, rows[:SHOWN_ROWS]))) + (", ..." if len(rows) > SHOWN_ROWS else "")


def _plain(label: Any) -> Any:
    """An index label as Python has it (numpy's 11, not np.int64(11), in what a user copies; a MultiIndex's tuple
    of them too)."""
    if isinstance(label, tuple):
        return tuple(map(_plain, label))
    return label.item() if isinstance(label, np.generic) else label


def _rows_missing(array: pa.Array, nan: bool) -> tuple[np.ndarray, bool] | None:
    """The positions of the rows of `array` holding a null (`nan`: a NaN or infinity) at any depth of their (nested
    list) tensors, in order, and whether any was below the top level; None when a level's values cannot be told
    apart by row. Each value's row comes from its list's length (0 for a null list), as `flatten` leaves out the
    values behind a null list: `list_parent_indices` counts those, which for a null list backed by values
    (`ListArray.from_arrays(..., mask=)`, a compute kernel's output) put the rows out of step (an IndexError
    instead of the API's 400)."""
    import pyarrow.compute as pc

    owners = np.arange(len(array))  # the row each value of this level belongs to
    found = np.zeros(len(array), dtype=bool)
    nested = False
    depth = 0
    while True:
        if nan and pa.types.is_floating(array.type):
            values = array.to_numpy(zero_copy_only=False)
            hit = ~np.isfinite(values) & ~array.is_null().to_numpy(zero_copy_only=False)
        elif nan:
            hit = np.zeros(len(array), dtype=bool)
        else:
            hit = array.is_null().to_numpy(zero_copy_only=False)
        if hit.any():
            found[owners[hit]] = True
            nested = nested or depth > 0
        if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)
                or pa.types.is_fixed_size_list(array.type)):
            return np.flatnonzero(found), nested
        lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
        array = array.flatten()
        if len(array) != lengths.sum():  # a pyarrow whose flatten keeps a null fixed-size list's values
            return None
        owners = np.repeat(owners, lengths)
        depth += 1
