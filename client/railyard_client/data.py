"""Conversions between what users hold (DataFrames, Arrow tables, files, numpy arrays) and the wire formats of
the inference and log APIs (Arrow IPC, pandas-records JSON, Open Inference Protocol v2 JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from railyard_client._lazy import np, pa, pd, pq
from railyard_client.errors import InvalidInput

ARROW_FILE = "application/vnd.apache.arrow.file"
RECORDS = "application/json; format=pandas-records"
ARROW_SUFFIXES = {".arrow", ".feather", ".ipc", ".arrows"}
JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}

OIP_DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64", "int32": "INT32",
                 "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                 "uint64": "UINT64", "bool": "BOOL"}
NUMPY_DTYPES = {v: k for k, v in OIP_DATATYPES.items()}


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
    """A DataFrame as an Arrow table; cells holding lists or numpy arrays become list (tensor) columns."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInput(f"the DataFrame cannot become an Arrow table: {exc}") from None


def read_table(path: str | Path) -> tuple[pa.Table, str]:
    """A file of rows as an Arrow table, with its kind: `arrow` (IPC file or stream), `parquet` or `json`
    (pandas-records: a list of row objects, or one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:  # one file: ParquetFile, as pq.read_table's dataset layer imports pandas
            return pq.ParquetFile(path).read(), "parquet"
        if suffix in ARROW_SUFFIXES:
            return from_ipc(path.read_bytes()), "arrow"
        if suffix in JSON_SUFFIXES:
            return records_to_table(parse_json_records(path.read_bytes())), "json"
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"{path} is not a readable {suffix[1:]} file: {exc}") from None
    raise InvalidInput(f"{path}: unknown file type {suffix or '(none)'}; use .json, .arrow/.feather or .parquet")


def parse_json_records(raw: bytes) -> list[dict[str, Any]]:
    """pandas-records JSON (a list of objects, one object, or JSON lines) as a list of row objects."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        value = json.loads(text) if text else None
    except ValueError:
        try:  # JSON lines
            value = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise InvalidInput(f"the input is not JSON: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(row, dict) for row in value):
        raise InvalidInput("expected pandas-records JSON: a non-empty list of row objects")
    return value


def read_json_records(path: str | Path) -> list[dict[str, Any]]:
    """A pandas-records JSON file as row objects, as they go to the API (no Arrow table: `pa.Table.from_pylist`
    imports pandas through pyarrow's pandas shim)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}")
    try:
        return parse_json_records(path.read_bytes())
    except OSError as exc:
        raise InvalidInput(f"{path} is not a readable {path.suffix[1:]} file: {exc}") from None


def reversed_rows(table: pa.Table) -> pa.Table:
    """The table's rows last first. The indices are an Arrow array made from a numpy buffer: `pa.array` (and
    `table[::-1]`, which calls it) imports pandas through pyarrow's pandas shim."""
    indices = np.arange(table.num_rows - 1, -1, -1, dtype=np.int64)
    return table.take(pa.Array.from_buffers(pa.int64(), len(indices), [None, pa.py_buffer(indices)]))


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


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a table to a file whose suffix picks the format (.parquet, .arrow/.feather, or .json records)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        pq.write_table(table, path)
    elif suffix in ARROW_SUFFIXES:
        path.write_bytes(to_ipc_file(table))
    elif suffix in JSON_SUFFIXES:
        path.write_text(json.dumps(table_to_jsonable(table), default=str))
    else:
        raise InvalidInput(f"{path}: unknown output type {suffix or '(none)'}; use .json, .arrow or .parquet")


def table_to_jsonable(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of a table as JSON-ready objects (times as ISO 8601 strings)."""
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if hasattr(value, "isoformat"):
                row[key] = value.isoformat()
    return rows


def oip_request(inputs: dict[str, Any] | pd.DataFrame) -> dict[str, Any]:
    """An Open Inference Protocol v2 request from named arrays (first dimension = batch) or a DataFrame."""
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
