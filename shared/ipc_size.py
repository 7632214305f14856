"""The decoded size of an Arrow IPC stream or file, read from its messages' metadata without decoding (or
decompressing) anything, so a compression bomb is refused before it costs memory."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from shared.lean_imports import lazy_module

if TYPE_CHECKING:
    import pyarrow as pa
else:  # imported by the first table measured (the log store's idle start does without)
    pa = lazy_module("pyarrow")


ARROW_FILE_MAGIC = b"ARROW1"
# Arrow's IPC format (format/Message.fbs, format/File.fbs): a compressed body buffer starts with its uncompressed
# length as a little-endian int64 (-1: stored uncompressed); the footer's blocks name the messages a file reader
# decodes. Only these few flatbuffer fields are read here, so no generated code is needed.
_RECORD_BATCH, _DICTIONARY_BATCH = 3, 2  # MessageHeader union tags (Schema.fbs / Message.fbs)


class _Table:
    """A flatbuffer table: just enough to read scalar fields, sub-tables and vectors of structs."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        size = struct.unpack_from("<H", buf, vtable)[0]
        self.offsets = [struct.unpack_from("<H", buf, vtable + 4 + 2 * i)[0] for i in range((size - 4) // 2)]

    def _field(self, index: int) -> int | None:
        offset = self.offsets[index] if index < len(self.offsets) else 0
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return default if at is None else struct.unpack_from(fmt, self.buf, at)[0]

    def table(self, index: int) -> _Table | None:
        at = self._field(index)
        return None if at is None else _Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0])

    def structs(self, index: int, fmt: str) -> list[tuple]:
        at = self._field(index)
        if at is None:
            return []
        vector = at + struct.unpack_from("<I", self.buf, at)[0]
        count = struct.unpack_from("<I", self.buf, vector)[0]
        size = struct.calcsize(fmt)
        return [struct.unpack_from(fmt, self.buf, vector + 4 + i * size) for i in range(count)]


KNOWN_METADATA = 256  # uncompressed messages' metadata remembered (a deployment's requests have a few layouts)
KNOWN_METADATA_MAX_BYTES = 16 * 1024  # the largest metadata remembered (the client's bytes: a larger one is walked)
_UNCOMPRESSED: dict[bytes, int] = {}  # an uncompressed message's metadata -> its buffers' bytes


def message_decoded_bytes(message: pa.ipc.Message) -> int:
    """Bytes a record or dictionary batch message's buffers take once decoded. Without compression the metadata
    alone says it, so it is remembered by the metadata's bytes (a batch-1 request's metadata is the same every
    time: its walk was ~5 us a request); a compressed body's buffers are read each time."""
    meta = message.metadata.to_pybytes()
    known = _UNCOMPRESSED.get(meta)
    if known is not None:
        return known
    total, compressed = _batch_bytes(message, meta)
    if not compressed and len(meta) <= KNOWN_METADATA_MAX_BYTES:
        if len(_UNCOMPRESSED) >= KNOWN_METADATA:
            _UNCOMPRESSED.clear()
        _UNCOMPRESSED[meta] = total
    return total


def _batch_bytes(message: pa.ipc.Message, meta: bytes | None = None) -> tuple[int, bool]:
    """(the decoded bytes, whether the body is compressed)."""
    meta = message.metadata.to_pybytes() if meta is None else meta
    root = _Table(meta, struct.unpack_from("<I", meta, 0)[0])
    kind = root.scalar(1, "<B")
    header = root.table(2)
    if kind == _DICTIONARY_BATCH and header is not None:
        header = header.table(1)
    elif kind != _RECORD_BATCH:
        return 0, False
    if header is None:
        return 0, False
    body = message.body
    compressed = header.table(3) is not None
    total = 0
    for offset, length in header.structs(2, "<qq"):
        if compressed and length >= 8 and 0 <= offset and offset + 8 <= body.size:
            declared = struct.unpack_from("<q", body, offset)[0]
            total += length - 8 if declared < 0 else declared
        else:
            total += max(length, 0)
    return total, compressed


def _messages(data: bytes):
    """The messages a reader decodes: a stream's in order; a file's at the blocks its footer names."""
    reader = pa.BufferReader(pa.py_buffer(data))
    if data[:6] != ARROW_FILE_MAGIC:
        while True:
            try:
                yield pa.ipc.read_message(reader)
            except (EOFError, StopIteration):
                return
    footer_size = struct.unpack_from("<i", data, len(data) - 10)[0]
    start = len(data) - 10 - footer_size
    footer = data[start:len(data) - 10]
    root = _Table(footer, struct.unpack_from("<I", footer, 0)[0])
    for index in (2, 3):  # dictionaries, recordBatches: vectors of Block {offset, metaDataLength, bodyLength}
        for offset, _, _ in root.structs(index, "<qi4xq"):
            reader.seek(offset)
            yield pa.ipc.read_message(reader)


def ipc_decoded_bytes(data: bytes) -> int:
    """Bytes the buffers of every record and dictionary batch take once decoded (decompressed), read from the
    messages' metadata and the 8-byte uncompressed length that prefixes each compressed buffer, without
    decoding anything. Raises ValueError/struct.error/pa.ArrowInvalid on malformed input."""
    return sum(message_decoded_bytes(message) for message in _messages(data))
