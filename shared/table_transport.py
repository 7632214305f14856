"""Tables on the bus: the `Railyard-*` headers of raw Arrow replies and the by-reference transport.

A raw reply (engine inference, the log store's pages and field reads) carries an Arrow IPC stream as its body
and its metadata in headers. A table above the bus payload limit (less `BUS_HEADROOM` for the headers) goes to
the object store's tables bucket instead, and the message carries its key in `TABLE_REF`; the reader fetches it
and deletes it (`take_table`). Other headers live where their protocol does: `Railyard-Error` in shared/bus.py,
the inference-log headers in shared/logrecords.py.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.objectstore import BUCKET_TABLES

TABLE_REF = "Railyard-Table-Ref"  # the object key of a table sent by reference
META_HEADER = "Railyard-Meta"  # an inference answer's model identity and timings (JSON)
PAGE_HEADER = "Railyard-Page"  # a log page's cursor and counts (LogPage JSON)
FIELD_HEADER = "Railyard-Field"  # a log field read's counts (LogField JSON)
SHADOWS_HEADER = "Railyard-Shadows"  # "inline" on an inference request: challengers run before the answer, which
# carries their outputs as `out_<challenger>.<output>` columns after the champion's (the monitoring service's predict)
SHADOWS_INLINE = "inline"
INFERENCE_PREFIX = "inference/"  # keys of inference tables (requests and answers)
FIELD_PREFIX = "fields/"  # keys of log field reads
BUS_HEADROOM = 64 * 1024  # bytes kept under the bus payload limit for headers


def above_bus_limit(body: bytes, max_payload: int) -> bool:
    """Whether `body` must travel by reference on a bus with this payload limit."""
    return len(body) > max_payload - BUS_HEADROOM


async def put_table(objects: Any, prefix: str, body: bytes) -> str:
    """Store a table's bytes for a by-reference message; its key."""
    key = f"{prefix}{uuid.uuid4()}"
    await objects.put_bytes(BUCKET_TABLES, key, body)
    return key


async def take_table(objects: Any, headers: dict[str, str] | None, body: bytes) -> bytes:
    """A message's table: its body, or the object its TABLE_REF names (read, then deleted)."""
    key = (headers or {}).get(TABLE_REF)
    if not key:
        return body
    data = await objects.get_bytes(BUCKET_TABLES, key)
    await objects.delete(BUCKET_TABLES, key)
    return data
