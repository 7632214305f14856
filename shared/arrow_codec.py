"""Arrow is the data plane: IPC stream/file codecs and pandas-records JSON <-> Arrow.

Records follow the seed's rules for tensors: every row has the same columns; a column holds either
scalars of one type or tensors of one shape and one element type. Ragged tensors, mixed element
types and missing or extra keys are `InvalidRequest` errors naming the column. Integers mixed with
floats in one column are read as floats (JSON does not distinguish 1 from 1.0); booleans, strings and
numbers never mix. Tensors become (nested) fixed-size lists so their shape travels with the table.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from shared.errors import InvalidRequest, PayloadTooLarge
from shared.ipc_size import _Table as _Flatbuffer
from shared.ipc_size import ipc_decoded_bytes, message_decoded_bytes

ARROW_FILE_MAGIC = b"ARROW1"


IPC_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # a stream's end: a continuation marker and a zero length
CONTINUATION = IPC_EOS[:4]  # what starts every encapsulated message


_DICTIONARY = pa.dictionary(pa.int8(), pa.string()).id


def has_dictionary(kind: pa.DataType) -> bool:
    """Does a column of this type need a dictionary batch in an IPC stream: a dictionary anywhere in it, inside
    nested fields (struct, list, map, union, run-end encoded) or an extension type's storage (`num_fields` of an
    extension type is 0: without looking at its storage, `arrow.opaque` over a dictionary was written without
    its dictionary batch, unreadable)?"""
    if kind.id == _DICTIONARY:
        return True
    if isinstance(kind, pa.BaseExtensionType):
        return has_dictionary(kind.storage_type)
    fields = kind.num_fields
    return bool(fields) and any(has_dictionary(kind.field(index).type) for index in range(fields))


KNOWN_SCHEMAS = 256  # schemas remembered by their serialized message (a deployment has a few)
# The largest key (a serialized schema message, a request's head) any cache keyed by schema bytes keeps. Those bytes
# are the client's (column names, schema metadata: a body may carry 60 MB of them): 256 entries of a body each were
# gigabytes held by the gateway for anyone with an inference token. A deployment's schemas are a few hundred bytes;
# a larger one still works, uncached (the engine's fast_lane uses this limit too).
CACHED_SCHEMA_MAX_BYTES = 16 * 1024
_PLAIN: dict[bytes, bool] = {}  # a schema message -> it holds no dictionary
# a stream's schema message -> its schema; None: it holds a dictionary (every reader below: _stream_schema)
_SCHEMAS: dict[bytes, pa.Schema | None] = {}


def _remember(cache: dict, key: bytes, value: Any) -> None:
    if len(key) > CACHED_SCHEMA_MAX_BYTES:
        return
    if len(cache) >= KNOWN_SCHEMAS:
        cache.clear()
    cache[key] = value


def _plain(head: bytes, schema: pa.Schema) -> bool:
    """Does the schema (serialized as `head`) hold no dictionary? Looked up by its bytes after the first time."""
    plain = _PLAIN.get(head)
    if plain is None:
        plain = not any(has_dictionary(field.type) for field in schema)
        _remember(_PLAIN, head, plain)
    return plain


def to_ipc_stream(table: pa.Table) -> bytes:
    """The table as an Arrow IPC stream. Without dictionaries, the stream is its schema's and its batches'
    encapsulated messages and the end marker, joined: the bytes Arrow's stream writer writes (with the default
    options), without building a writer and a sink (~10 -> ~5 us for one row; tests/unit/test_arrow_codec_ipc.py)."""
    schema = table.schema
    head = schema.serialize().to_pybytes()
    if _plain(head, schema):  # the batches' Arrow buffers joined as they are: no bytes copy of each first
        return b"".join([head, *[batch.serialize() for batch in table.to_batches()], IPC_EOS])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


_FILE_HEAD = ARROW_FILE_MAGIC + b"\x00\x00"
# (schema message, each batch's (metadata, body) lengths) -> the file's footer: what follows the stream's messages
_FOOTERS: dict[tuple[bytes, tuple[tuple[int, int], ...]], bytes] = {}


def to_ipc_file(table: pa.Table) -> bytes:
    """The table as an Arrow IPC file. A file is the magic, the stream's messages and end marker, and a footer
    that holds the schema and where each batch's message is; for a schema and message sizes seen before (a
    deployment's answers of one row count), the footer the file writer wrote then is reused with the messages of
    this table (~14 -> ~5 us for one row); the first file of a kind is the writer's, and kept only when the
    assembled bytes equal it."""
    schema = table.schema
    head = schema.serialize().to_pybytes()
    if not _plain(head, schema):
        return _write_file(table, unify=True)
    messages = [batch.serialize() for batch in table.to_batches()]  # Arrow buffers, joined without a copy each
    # a message: continuation marker, int32 metadata length, metadata, body
    key = (head, tuple((length := 8 + int.from_bytes(message[4:8].to_pybytes(), "little"), message.size - length)
                       for message in messages))
    footer = _FOOTERS.get(key)
    if footer is not None:
        return b"".join([_FILE_HEAD, head, *messages, IPC_EOS, footer])
    written = _write_file(table)
    start = len(_FILE_HEAD) + len(head) + sum(message.size for message in messages) + len(IPC_EOS)
    footer_bytes = len(written) - start  # the footer holds the schema again, and 24 bytes a batch
    if (len(head) <= CACHED_SCHEMA_MAX_BYTES and footer_bytes <= CACHED_SCHEMA_MAX_BYTES
            and b"".join([_FILE_HEAD, head, *messages, IPC_EOS]) == written[:start]):
        if len(_FOOTERS) >= KNOWN_SCHEMAS:
            _FOOTERS.clear()
        _FOOTERS[key] = written[start:]
    return written


def _write_file(table: pa.Table, unify: bool = False) -> bytes:
    # A file holds one dictionary per field: chunks with dictionaries of their own (log segments of two pipeline
    # versions, each naming its own `metadata.pipeline_version`) are given one (`unify`: a schema with a dictionary
    # anywhere, nested ones too), or the writer refuses the table ("Dictionary replacement detected"); a stream may
    # replace them and needs none of this.
    if unify:
        table = table.unify_dictionaries()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes, max_decoded_bytes: int | None = None, validate: bool = False) -> pa.Table:
    """Read an Arrow IPC file or stream (told apart by the file magic). With `max_decoded_bytes`, a body whose
    batches would take more than that once decompressed is refused (413) before anything is decoded: a few KB
    of zstd can claim hundreds of MB. With `validate` (a client's body), every buffer is checked too: Arrow reads
    a corrupted offset or length as a table, which fails later, far from the body (1 us for 1,000 x 29 floats).
    A stream without dictionaries, and a file whose footer was read before, are read message by message
    (`_known_messages`); anything that reader does not take as it is goes to Arrow's readers, which say what is
    wrong."""
    if data[:4] == CONTINUATION or data[:6] == ARROW_FILE_MAGIC:
        known = _known_messages(data)
        if known is not None:
            table = _read_known(known, max_decoded_bytes, validate)
            if table is not None:
                return table
    if max_decoded_bytes is not None:
        try:
            decoded = ipc_decoded_bytes(data)
        # EOFError: a file's footer naming a block past a message's end
        except (ValueError, IndexError, struct.error, pa.ArrowException, OSError, EOFError):
            raise InvalidRequest("body is not a valid Arrow IPC file or stream") from None
        if decoded > max_decoded_bytes:
            raise PayloadTooLarge(f"the Arrow body decodes to {decoded} bytes, more than the {max_decoded_bytes}"
                                  " bytes a request may hold")
    try:
        if data[:6] == ARROW_FILE_MAGIC:
            table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
            _learn_file(data, table.schema)
        else:
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        if validate:
            table.validate(full=True)
        return table
    # EOFError: a stream cut inside a message; UnicodeDecodeError: a column name that is not UTF-8
    except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not a valid Arrow IPC file or stream: {exc}") from None


def _read_known(known: tuple[pa.Schema, list[pa.ipc.Message]], max_decoded_bytes: int | None,
                validate: bool) -> pa.Table | None:
    """The table of messages `_known_messages` found: their decoded size checked (PayloadTooLarge) before any is
    decoded, then read and (with `validate`) checked. None when anything fails: Arrow's readers then read the body
    again and give the error they give."""
    schema, messages = known
    try:
        if max_decoded_bytes is not None:
            decoded = sum(message_decoded_bytes(message) for message in messages)
            if decoded > max_decoded_bytes:
                raise PayloadTooLarge(f"the Arrow body decodes to {decoded} bytes, more than the "
                                      f"{max_decoded_bytes} bytes a request may hold")
        table = pa.Table.from_batches([pa.ipc.read_record_batch(message, schema) for message in messages], schema)
        if validate:
            table.validate(full=True)
        return table
    except PayloadTooLarge:
        raise
    except Exception:  # noqa: BLE001 - Arrow's readers read it again and say what is wrong
        return None


# a file's footer -> its schema and its record batches' blocks (offset, metadata length, body length), for a file
# without dictionaries that Arrow's file reader read before (a deployment's clients send a few layouts)
_FILES: dict[bytes, tuple[pa.Schema, tuple[tuple[int, int, int], ...]]] = {}


def _footer(data: bytes) -> bytes | None:
    """A file's footer (magic, ..., footer, its int32 length, magic), or None, also for a footer longer than any
    the cache keeps (CACHED_SCHEMA_MAX_BYTES): its size is checked before any byte of it is copied, so a client's
    body claiming a footer of most of its megabytes is not copied and hashed for a look-up that cannot find it."""
    if len(data) < 18 or data[-6:] != ARROW_FILE_MAGIC:
        return None
    size = int.from_bytes(data[-10:-6], "little", signed=True)
    start = len(data) - 10 - size
    return data[start:-10] if 0 < size <= CACHED_SCHEMA_MAX_BYTES and start >= 8 else None


def _learn_file(data: bytes, schema: pa.Schema) -> None:
    """Remember a file Arrow's reader read: its footer's batch blocks and the schema the reader found there."""
    try:
        footer = _footer(data)
        if footer is None or footer in _FILES \
                or any(has_dictionary(field.type) for field in schema):
            return
        root = _Flatbuffer(footer, struct.unpack_from("<I", footer, 0)[0])
        if root.structs(2, "<qi4xq"):  # dictionary blocks
            return
        blocks = tuple(root.structs(3, "<qi4xq"))  # Block {offset, metaDataLength, bodyLength}
        _remember(_FILES, footer, (schema, blocks))
    except (ValueError, IndexError, struct.error):
        return


def _known_messages(data: bytes) -> tuple[pa.Schema, list[pa.ipc.Message]] | None:
    """The schema and record batch messages of a stream without dictionaries, or of a file whose footer Arrow's
    file reader read before (the same bytes: the same schema and blocks; each block's message must have the
    block's lengths, as the file reader checks); None for anything else."""
    try:
        if data[:6] == ARROW_FILE_MAGIC:
            footer = _footer(data)
            layout = _FILES.get(footer) if footer is not None else None
            if layout is None:
                return None
            schema, blocks = layout
            buffer, messages = pa.py_buffer(data), []
            for offset, metadata_length, body_length in blocks:
                message = pa.ipc.read_message(buffer.slice(offset))
                if message.type != "record batch" or 8 + message.metadata.size != metadata_length \
                        or (message.body.size if message.body is not None else 0) != body_length:
                    return None
                messages.append(message)
            return schema, messages
        return _stream_messages(data)
    except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError, ValueError, IndexError):
        return None


def _stream_schema(head: bytes) -> pa.Schema | None:
    """The schema of a stream's first message `head` (its bytes: marker, length, metadata), remembered by those
    bytes; None when it holds a dictionary (dictionary batches come first in such a stream: the general reader or
    writer) or is not a schema message alone. Raises what Arrow raises for bytes that are no message."""
    schema = _SCHEMAS.get(head, False)
    if schema is False:  # not seen before
        message = pa.ipc.read_message(pa.py_buffer(head))
        if message.type != "schema" or 8 + message.metadata.size != len(head):
            return None
        schema = pa.ipc.read_schema(message)
        if any(has_dictionary(field.type) for field in schema):
            schema = None
        _remember(_SCHEMAS, head, schema)
    return schema


def _stream_messages(data: bytes) -> tuple[pa.Schema, list[pa.ipc.Message]] | None:
    """An IPC stream's schema and record batch messages, read message by message (its schema, then each record
    batch at the offset the previous message's lengths give) without building a stream reader (~7 -> ~4 us for
    one row). None for anything else (dictionaries, a legacy message without the continuation marker, a cut or
    malformed stream): the stream reader then reads it, or says what is wrong."""
    try:
        offset = 8 + int.from_bytes(data[4:8], "little")  # the schema message: marker, length, metadata (no body)
        schema = _stream_schema(data[:offset])
        if schema is None:
            return None
        buffer, end, messages = pa.py_buffer(data), len(data), []
        while offset < end:
            marker = data[offset:offset + 8]
            if marker == IPC_EOS:
                break
            if marker[:4] != IPC_EOS[:4]:
                return None
            message = pa.ipc.read_message(buffer.slice(offset))
            if message.type != "record batch":
                return None
            messages.append(message)
            offset += 8 + message.metadata.size + (message.body.size if message.body is not None else 0)
        return schema, messages
    except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError, ValueError, IndexError):
        return None


def read_batch(data: bytes) -> tuple[bytes, pa.RecordBatch] | None:
    """(the schema message's bytes, the record batch) of a stream that holds exactly a schema, one record batch and
    the end marker (a batch-1 request; the engine's fast lane keys on the schema's bytes), or None: then `from_ipc`
    reads it, and says what is wrong with it if anything is."""
    try:
        if data[:4] != CONTINUATION or data[-8:] != IPC_EOS:
            return None
        end = 8 + struct.unpack_from("<i", data, 4)[0]
        if end <= 8 or end > len(data):
            return None
        head = data[:end]
        schema = _stream_schema(head)
        if schema is None:
            return None
        reader = pa.BufferReader(pa.py_buffer(data)[end:])
        message = pa.ipc.read_message(reader)
        if message.type != "record batch" or end + reader.tell() != len(data) - 8:
            return None
        return head, pa.ipc.read_record_batch(message, schema)
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
    return b"".join((schema_bytes, batch.serialize(), IPC_EOS))


def write_stream(table: pa.Table, schema_bytes: bytes | None) -> bytes:
    """`to_ipc_stream(table)`, without serializing the schema again when the table is one non-empty batch and
    `schema_bytes` is its schema's message (`schema_message`; several tables of one schema, the parts of a batch's
    output, share it)."""
    if schema_bytes is None or table.num_rows == 0:
        return to_ipc_stream(table)
    batches = table.to_batches()
    if len(batches) != 1:
        return to_ipc_stream(table)
    return batch_stream(batches[0], schema_bytes)


def _leaf_types(values: list[Any]) -> set[type]:
    types: set[type] = set()
    stack = list(values)
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            types.add(type(item))
    return types


def uint64_range(values: np.ndarray) -> bool:
    """Does a float array hold a value in [2^63, 2^64], where an int past int64 (a JSON reader's uint64, which an
    int column refuses) would be? Then only a check of each value tells an int from a float."""
    return bool(((values >= 2.0**63) & (values <= 2.0**64)).any())


_ARROW_TYPES = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}
_NUMPY_TYPES = {"float": np.float64, "int": np.int64, "bool": np.bool_, "str": np.str_}


def _element_kind(name: str, types: set[type]) -> str:
    if not types:
        raise InvalidRequest(f"column {name!r}: empty tensor")
    if type(None) in types:
        raise InvalidRequest(f"column {name!r}: null values are not allowed in a tensor")
    if types and types <= {int, float}:
        return "float" if float in types else "int"
    if types == {bool}:
        return "bool"
    if types == {str}:
        return "str"
    found = sorted({"boolean" if t is bool else "string" if t is str else "number" if t in (int, float)
                    else t.__name__ for t in types})
    raise InvalidRequest(f"column {name!r}: mixed data types in one tensor ({', '.join(found)})")


def _column_array(name: str, values: list[Any]) -> pa.Array:
    tensors = sum(isinstance(v, list) for v in values)
    out_of_range = InvalidRequest(f"column {name!r}: an integer outside the 64-bit signed range, or too large for "
                                  "a float (write it as a float, e.g. 9.3e18, if that is what the model takes)")
    if tensors == 0:
        kind = _element_kind(name, {type(v) for v in values})
        try:  # floats through numpy: Arrow reads an int among floats through int64 (2^63 there failed)
            return pa.array(np.asarray(values, np.float64)) if kind == "float" else pa.array(values, _ARROW_TYPES[kind])
        except (OverflowError, pa.ArrowInvalid):  # an int past a float's range (1e400 written out), or past int64
            raise out_of_range from None
    if tensors != len(values):
        raise InvalidRequest(f"column {name!r}: mixes tensors and scalars")
    kind = _element_kind(name, _leaf_types(values))
    try:
        arr = np.asarray(values, dtype=_NUMPY_TYPES[kind])
    except OverflowError:
        raise out_of_range from None
    except ValueError:
        raise InvalidRequest(f"column {name!r}: ragged tensor (rows have different shapes)") from None
    return tensor_array(arr)


_ARROW_OF_NUMPY: dict[np.dtype, pa.DataType] = {}


def flat_array(values: np.ndarray) -> pa.Array:
    """A 1-D numpy array as an Arrow array. Numbers in native byte order become an array over the same memory, as
    `pa.array` makes it (no nulls, NaN a value), without its checks (~3 -> ~1 us); anything else goes to it."""
    if values.dtype.kind in "iuf" and values.dtype.isnative and values.flags.c_contiguous:
        kind = _ARROW_OF_NUMPY.get(values.dtype)
        if kind is None:
            kind = _ARROW_OF_NUMPY[values.dtype] = pa.from_numpy_dtype(values.dtype)
        return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])
    return pa.array(values)


def tensor_array(arr: np.ndarray) -> pa.Array:
    """An (n, d1, d2, ...) array as a column of n nested fixed-size-list tensors."""
    flat: pa.Array = flat_array(arr.reshape(-1)) if arr.dtype.kind != "U" \
        else pa.array(arr.reshape(-1).tolist(), pa.string())  # typed: no values would make a null column
    for depth in range(arr.ndim - 1, 0, -1):  # a zero-size level (size 0) needs its list count, worked out then only
        size = arr.shape[depth]
        flat = pa.FixedSizeListArray.from_arrays(flat, size) if size else \
            fixed_size_lists(flat, 0, math.prod(arr.shape[:depth]))
    return flat


def rows_words(rows: Any, shown: int = 5, of: str = "", note: str = "") -> str:
    """The words " in row 3" or " in rows 0, 4 and 7 (and 2 more)", then `of` (whose rows they are, when not the
    request's), then "(counted from 0)" (`note` added inside): the first `shown` of the row positions `rows` (in
    order, each once). Empty for none. One phrasing for every refusal naming a request's rows (the engine's NaN
    refusal, OIP's data checks)."""
    rows = [int(row) for row in rows]
    if not rows:
        return ""
    named = [str(row) for row in rows[:shown]]
    words = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    more = f" (and {len(rows) - shown} more)" if len(rows) > shown else ""
    return f" in row{'s' if len(rows) > 1 else ''} {words}{more}{of} (counted from 0{note})"


def fixed_size_lists(values: pa.Array, size: int, count: int) -> pa.Array:
    """`count` lists of `size` of `values` (FixedSizeListArray.from_arrays), lists of no values (a zero-size
    dimension: a model output of shape [N, 0]) too: pyarrow refuses a list size of 0 there (ArrowInvalid), and
    given the type instead divides by it (SIGFPE, the process ends)."""
    if size:
        return pa.FixedSizeListArray.from_arrays(values, size)
    return pa.Array.from_buffers(pa.list_(values.type, 0), count, [None], children=[values])


def _numeric_column(values: list[Any]) -> pa.Array | None:
    """The column as a numeric tensor when numpy reads it as one (rectangular, numbers only), else None so the
    checking path explains what is wrong. Only used when the body has no booleans or nulls at all."""
    first = values[0]
    while isinstance(first, list) and first:
        first = first[0]
    try:  # numpy converts fast when told the type; ints need its own inference (a later float makes floats)
        arr = np.array(values, dtype=np.float64) if isinstance(first, float) else np.asarray(values)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an integer past a float's range (1e400)
        return None
    if arr.dtype.kind not in "fi" or arr.size == 0:
        return None
    if arr.dtype.kind == "f" and not isinstance(first, float) and uint64_range(arr):
        return None  # numpy made floats of an int past int64, or of a float that follows ints: the check says which
    if arr.dtype.kind == "i":
        arr = arr.astype(np.int64, copy=False)
    return tensor_array(arr) if arr.ndim > 1 else pa.array(arr)


# columns (OIP inputs) an inference body may carry: each costs ~10-25 us of the gateway's event loop, so a 64 MiB
# body of a million one-value columns would hold every other request for half a minute
# A request table narrowed by the gateway for a pipeline version carries that version in its schema metadata: a
# replica of another version (a model swap under way) refuses it as `stale_route` and the gateway resends it as sent
NARROWED_FOR = b"railyard.narrowed_for"
STALE_ROUTE = "stale_route"


def float_narrowing(schema: pa.Schema) -> dict[str, pa.DataType]:
    """{column: float32 or float16} for a model input schema's columns of those float types (scalars or tensors)."""
    found = {}
    for field in schema:
        kind = field.type
        while pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
        if pa.types.is_float32(kind) or pa.types.is_float16(kind):
            found[field.name] = kind
    return found


def narrows(kind: pa.DataType, to: pa.DataType) -> bool:
    """Whether a column of scalar type `kind` is cast to the model's float type `to` on arrival: float64 (not for a
    float64 input: nothing to cast), and an integer at least as wide as `to` (int64, int32 for float32; int64 for
    float64). A narrower integer (uint8 pixels, an int16) stays as sent: the cast would widen it (a uint8 image 4x
    the bytes on the bus and in the log), and the model's own cast of it is exact. The fast lane
    (services/engine/fast_lane.py) follows the same rule."""
    return kind != to and (pa.types.is_float64(kind) or (pa.types.is_integer(kind) and kind.bit_width >= to.bit_width))


def _narrowed_type(kind: pa.DataType, to: pa.DataType) -> pa.DataType | None:
    if narrows(kind, to):
        return to
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _narrowed_type(kind.value_type, to)
        if inner is None:
            return None
        if pa.types.is_fixed_size_list(kind):
            return pa.list_(pa.field(kind.value_field.name, inner), kind.list_size)
        return (pa.large_list if pa.types.is_large_list(kind) else pa.list_)(pa.field(kind.value_field.name, inner))
    return None


def narrow(table: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    """The table with its float64 or integer columns (scalars or tensors) in `columns` cast to the narrower float
    type the models take (`narrows`: not an integer narrower than it); the same rounding as numpy's cast in
    column_to_tensor (a value beyond the type's range becomes inf there as here, and the model check refuses it
    alike; an integer past 2**24 is rounded to the nearest float32, as the model got it before, not refused).
    Anything else (booleans, strings) is left as it is."""
    for name, to in columns.items():
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        field = table.schema.field(index)
        kind = _narrowed_type(field.type, to)
        if kind is None:
            continue
        try:
            column = table.column(index).cast(kind, safe=False)  # safe: Arrow refuses an int it cannot hold exactly
        except pa.ArrowException:
            continue
        table = table.set_column(index, pa.field(name, kind, field.nullable, field.metadata), column)
    return table


def _fixed_size(array: pa.Array, to: pa.DataType | None) -> pa.Array | None:
    """A (nested) list array whose rows hold the same number of items at every level as fixed-size lists over the
    same values buffer, or None when a level is ragged, holds a null list or empty lists only. A fixed-size level
    is kept; the leaf values are cast to `to` as `narrow` casts them (one cast of the flat values, not of the
    lists: ~10 instead of ~17 us for 1,000 x 29), else returned as they are."""
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        if array.null_count:
            return None
        inner = _fixed_size(flat_values(array), to)
        if inner is None:
            return None
        return pa.FixedSizeListArray.from_arrays(inner, kind.list_size) if inner.type != kind.value_type else array
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        if to is not None and narrows(kind, to):
            try:
                return array.cast(to, safe=False)
            except pa.ArrowException:  # as narrow: left as sent
                return array
        return array
    rows = len(array)
    if array.null_count or not rows:
        return None
    offsets = array.offsets.to_numpy()  # this slice's rows + 1
    first = int(offsets[0])
    size = (int(offsets[-1]) - first) // rows
    if not size or (offsets[1:] - offsets[:-1] != size).any():
        return None
    inner = _fixed_size(array.values.slice(first, rows * size), to)
    return None if inner is None else pa.FixedSizeListArray.from_arrays(inner, size)


def fixed_shapes(table: pa.Table, columns: Iterable[str], narrowing: dict[str, pa.DataType] | None = None) -> pa.Table:
    """The table with its list (or large list) columns in `columns` whose tensors all have one shape as the
    fixed-size lists the pandas-records reader makes of the same rows (tensor_array), over the same buffers (no
    copy): a model input then has one type in the log whether the client sent JSON, OIP or an Arrow table of
    `list<double>` (pa.table of Python lists, pandas' object columns), and a log page does not end at every change
    of request format. A ragged column, or one holding a null tensor, is left as sent: the model check names it.
    A column converted here is also narrowed to its type in `narrowing` (`narrow`'s rule, done on the flat values;
    `narrow` then leaves it)."""
    for name in columns:
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        field = table.schema.field(index)
        if not (pa.types.is_list(field.type) or pa.types.is_large_list(field.type) or
                (pa.types.is_fixed_size_list(field.type) and not _all_fixed(field.type))):
            continue
        to = narrowing.get(name) if narrowing else None
        chunks = [_fixed_size(chunk, to) for chunk in table.column(index).chunks if len(chunk)]
        if not chunks or any(c is None or c.type != chunks[0].type for c in chunks):
            continue
        table = table.set_column(index, pa.field(name, chunks[0].type, field.nullable, field.metadata),
                                 pa.chunked_array(chunks, chunks[0].type))
    return table


def _all_fixed(kind: pa.DataType) -> bool:
    while pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return not (pa.types.is_list(kind) or pa.types.is_large_list(kind))


MAX_COLUMNS = 10_000
# an inference request of no rows, in every format (records `[]`, an Arrow table of 0 rows, an OIP batch of 0): a 400
# before the bus, nothing run or logged (docs/inference.md, "Inference API")
NO_ROWS = "the request holds no rows; send at least one"


def check_column_count(count: int, what: str = "columns") -> None:
    if count > MAX_COLUMNS:
        raise InvalidRequest(f"the body has {count} {what}; at most {MAX_COLUMNS} are accepted (send a wide input as "
                             "one tensor column)")


def records_to_table(records: Any, numbers_only: bool = False) -> pa.Table:
    """pandas-records JSON (a list of row objects) to a table, validating tensors. `numbers_only` says the
    body holds no booleans or nulls, so a column numpy reads as a numeric array needs no element-wise check."""
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not records:
        raise InvalidRequest("expected a non-empty list of records (pandas 'records' orientation)")
    if not all(isinstance(r, dict) for r in records):
        raise InvalidRequest("every record must be a JSON object")
    columns = list(records[0].keys())
    check_column_count(len(columns))
    expected = set(columns)
    for index, row in enumerate(records):
        if row.keys() != expected:
            missing = sorted(expected - row.keys())
            extra = sorted(row.keys() - expected)
            detail = "; ".join(p for p in (f"missing {missing}" if missing else "",
                                             f"extra {extra}" if extra else "") if p)
            raise InvalidRequest(f"record {index} has different columns than record 0: {detail}")
    arrays = []
    for column in columns:
        values = [r[column] for r in records]
        fast = _numeric_column(values) if numbers_only else None
        arrays.append(fast if fast is not None else _column_array(column, values))
    return pa.Table.from_arrays(arrays, names=columns)


def flat_values(array: pa.FixedSizeListArray) -> pa.Array:
    """A fixed-size list array's values one level down, as `flatten()` gives them, without the compute function
    flatten() calls (~3 us for one row): the child array cut to this array's slice when no list is null."""
    if array.null_count:
        return array.flatten()
    size = array.type.list_size
    values = array.values
    if array.offset or len(values) != len(array) * size:
        values = values.slice(array.offset * size, len(array) * size)
    return values


def column_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column as Python values: numeric fixed-size tensors through numpy (several times faster than Arrow's
    to_pylist for them), anything else through Arrow."""
    if isinstance(column, pa.ChunkedArray):
        if not column.num_chunks:
            return []  # a stream of a schema alone: combine_chunks cannot build a dictionary of nulls from nothing
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        array = column
    shape = []
    values = array
    while pa.types.is_fixed_size_list(values.type) and not values.null_count:
        shape.append(values.type.list_size)
        values = flat_values(values)
    if shape and not values.null_count and (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        return values.to_numpy().reshape([len(array), *shape]).tolist()
    return array.to_pylist()


def table_to_records(table: pa.Table) -> list[dict[str, Any]]:
    """A table to pandas-records rows (tensors as nested lists)."""
    return table.to_pylist()


def records_json_to_table(body: bytes) -> pa.Table:
    try:
        parsed = orjson.loads(body)
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        try:  # Python's json also reads NaN and Infinity (json.dumps writes them): the model check names them
            parsed = json.loads(body)
        except RecursionError:  # nested past Python's stack
            raise InvalidRequest("body is not valid JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:  # the reader's reason and place, as OIP's route says them
            raise InvalidRequest(f"body is not valid JSON: {str(exc)[:200]}") from None
    if isinstance(parsed, list) and not parsed:  # a request's (a Python step's empty answer: records_to_table's words)
        raise InvalidRequest(f"{NO_ROWS} (an empty list of records)")
    try:
        table = records_to_table(parsed, numbers_only=not (b"true" in body or b"false" in body or b"null" in body))
    except UnicodeEncodeError:  # json.loads let a lone UTF-16 surrogate ("\ud800") through; Arrow cannot hold it
        raise InvalidRequest("body is not valid JSON: a string holds a lone UTF-16 surrogate") from None
    if not table.num_rows:  # `{}`, `[{}, ...]`: records of no keys make no columns, so no rows (sent on as 0 rows)
        raise InvalidRequest(f"{NO_ROWS} (records of no columns)")
    return table
