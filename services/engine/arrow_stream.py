"""Arrow IPC streams of one record batch, read and written with the schema message cached.

A batch-1 request's stream is a schema message, one record batch and the end-of-stream marker; so is its answer.
`shared.arrow_codec.from_ipc` / `to_ipc_stream` build a stream reader or writer (options, environment lookups,
a sink) for each, ~4x the work of the batch itself, and on a replica answering one request at a time that showed
as 7-8 % of its CPU (docs/performance.md, issue 20). Here the schema message is parsed once per distinct bytes and
the batch alone is read or serialized. The bytes written are the same as `to_ipc_stream`'s (tests/unit/
test_engine_fast_lane.py compares them); anything else (several batches, dictionaries, the file format, a
malformed stream) is left to the general codec: `read_batch` answers None, `write_stream` calls it.
"""

from __future__ import annotations

import struct

import pyarrow as pa

from shared.arrow_codec import CACHED_SCHEMA_MAX_BYTES, has_dictionary, to_ipc_stream

CONTINUATION = b"\xff\xff\xff\xff"
END_OF_STREAM = CONTINUATION + b"\x00\x00\x00\x00"
MAX_SCHEMAS = 64  # distinct request schemas remembered (a replica sees a handful)
# CACHED_SCHEMA_MAX_BYTES (shared.arrow_codec, one rule for every cache keyed by schema bytes): the largest schema
# message (and, in fast_lane, request head) remembered. Those bytes are the client's (column names, schema metadata:
# a body may carry megabytes of them), so the caches are bounded in bytes, not only in count; a larger schema is
# read each time.

_schemas: dict[bytes, pa.Schema | None] = {}  # a schema message's bytes -> its schema (None: has dictionaries)


def _schema_of(message: bytes) -> pa.Schema | None:
    schema = _schemas.get(message, False)
    if schema is False:
        schema = pa.ipc.read_schema(pa.py_buffer(message))
        if any(has_dictionary(field.type) for field in schema):
            schema = None  # dictionary batches come first in such a stream: the general reader
        if len(message) > CACHED_SCHEMA_MAX_BYTES:
            return schema
        if len(_schemas) >= MAX_SCHEMAS:
            _schemas.clear()
        _schemas[message] = schema
    return schema


def read_batch(data: bytes) -> tuple[bytes, pa.RecordBatch] | None:
    """(the schema message's bytes, the record batch) of a stream that holds exactly a schema, one record batch and
    the end marker, or None (then `from_ipc` reads it, and says what is wrong with it if anything is)."""
    try:
        if data[:4] != CONTINUATION or data[-8:] != END_OF_STREAM:
            return None
        end = 8 + struct.unpack_from("<i", data, 4)[0]
        if end <= 8 or end > len(data):
            return None
        schema = _schema_of(data[:end])
        if schema is None:
            return None
        reader = pa.BufferReader(pa.py_buffer(data)[end:])
        message = pa.ipc.read_message(reader)
        if message.type != "record batch" or end + reader.tell() != len(data) - 8:
            return None
        return data[:end], pa.ipc.read_record_batch(message, schema)
    except (pa.ArrowException, OSError, EOFError, ValueError, struct.error, UnicodeDecodeError):
        return None


def schema_message(schema: pa.Schema) -> bytes | None:
    """The schema's IPC message as a stream writer writes it, or None when the schema has dictionary columns
    (their dictionaries are messages of their own: the general writer)."""
    if any(has_dictionary(kind) for kind in schema.types):
        return None
    return schema.serialize().to_pybytes()


def batch_stream(batch: pa.RecordBatch, schema_bytes: bytes) -> bytes:
    """A stream of one record batch whose schema's message is `schema_bytes` (from `schema_message`): the bytes
    `to_ipc_stream` writes for a table of that one batch."""
    return b"".join((schema_bytes, batch.serialize(), END_OF_STREAM))


def write_stream(table: pa.Table, schema_bytes: bytes | None) -> bytes:
    """`to_ipc_stream(table)`, without a stream writer when the table is one non-empty batch and `schema_bytes` is
    its schema's message (`schema_message`; several tables of one schema, the parts of a batch's output, share it)."""
    if schema_bytes is None or table.num_rows == 0:
        return to_ipc_stream(table)
    batches = table.to_batches()
    if len(batches) != 1:
        return to_ipc_stream(table)
    return batch_stream(batches[0], schema_bytes)
