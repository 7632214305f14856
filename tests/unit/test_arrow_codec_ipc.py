"""The IPC shortcuts of shared.arrow_codec (issue 20, batch-1 CPU) give what pyarrow's stream writer and reader
give: the same bytes written, the same table read, every other stream left to the reader (and its errors)."""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pytest

from shared import arrow_codec
from shared.arrow_codec import (
    CACHED_SCHEMA_MAX_BYTES,
    _known_messages,
    _read_known,
    column_values,
    flat_array,
    flat_values,
    from_ipc,
    tensor_array,
    to_ipc_file,
    to_ipc_stream,
)
from shared.errors import InvalidRequest, PayloadTooLarge
from shared.ipc_size import ipc_decoded_bytes


def _writer_bytes(table: pa.Table, **options) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _tables() -> list[pa.Table]:
    rows = np.random.default_rng(0).random((3, 29)).astype(np.float32)
    tensors = pa.table({"tensor": tensor_array(rows)})
    words = pa.array(["a", "b", "a"]).dictionary_encode()
    return [
        tensors,
        pa.concat_tables([tensors, tensors]),  # two batches
        tensors.slice(1, 1),
        tensors.replace_schema_metadata({b"railyard.narrowed_for": b"v1"}),
        pa.table({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [True, None, False], "n": [None, None, None]}),
        pa.table({"a": pa.array([], pa.int64())}),
        pa.Table.from_batches([], pa.schema([("a", pa.int8())])),
        pa.table({"a": pa.chunked_array([[1], [2, 3]]), "b": pa.chunked_array([[1, 2], [3]])}),
        pa.table({"d": words}),  # dictionaries: the writer's own bytes
        pa.table({"l": pa.array([["x"]], pa.list_(pa.dictionary(pa.int32(), pa.string())))}),
        pa.table({"s": pa.array([{"x": 1, "y": [1.0, None]}])}),
        pa.table({"m": pa.array([[("a", 1)]], pa.map_(pa.string(), pa.int64()))}),
        pa.table({"h": pa.array([1.5], pa.float16()), "t": pa.array([1], pa.timestamp("ms", "UTC"))}),
        pa.table({"nested": tensor_array(np.arange(24, dtype=np.int64).reshape(2, 3, 4))}),
        pa.table({}),
    ]


@pytest.mark.parametrize("table", _tables())
def test_a_stream_is_the_writers_bytes_and_reads_back_as_the_reader_reads_it(table: pa.Table) -> None:
    written = _writer_bytes(table)
    assert to_ipc_stream(table) == written
    expected = pa.ipc.open_stream(pa.py_buffer(written)).read_all()
    read = from_ipc(written)
    assert read.equals(expected) and read.schema.equals(expected.schema, check_metadata=True)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_stream_reads_alike(codec: str) -> None:
    table = _tables()[1]
    assert from_ipc(_writer_bytes(table, compression=codec)).equals(table)


LIMIT = 1 << 30


def _shortcut(data: bytes, validate: bool = False) -> pa.Table | None:
    """What the message-by-message reader makes of a body (None: Arrow's readers read it)."""
    known = _known_messages(data)
    return None if known is None else _read_known(known, LIMIT, validate)


def test_a_cut_stream_is_never_read_as_something_the_reader_refuses() -> None:
    data = _writer_bytes(_tables()[1])
    for cut in range(len(data)):
        part = data[:cut]
        shortcut = _shortcut(part)
        try:
            expected = pa.ipc.open_stream(pa.py_buffer(part)).read_all()
        except (pa.ArrowException, OSError, EOFError):
            assert shortcut is None, cut
            with pytest.raises(InvalidRequest):
                from_ipc(part)
            continue
        assert shortcut is None or shortcut.equals(expected), cut


@pytest.mark.parametrize("table", _tables())
def test_a_file_read_again_by_its_footer_is_the_table_the_file_reader_reads(table: pa.Table) -> None:
    """The first read of a file is Arrow's file reader; a file with a footer seen before is read at the footer's
    blocks (no reader built), and gives the same table."""
    data = to_ipc_file(table)
    expected = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    first = from_ipc(data, max_decoded_bytes=1 << 30, validate=True)
    shortcut = _shortcut(data, validate=True)
    dictionaries = any(arrow_codec.has_dictionary(kind) for kind in table.schema.types)
    assert (shortcut is None) == dictionaries  # a file with dictionaries is the reader's every time
    again = from_ipc(data, max_decoded_bytes=1 << 30, validate=True)
    for read in (first, again, *([shortcut] if shortcut is not None else [])):
        assert read.equals(expected) and read.schema.equals(expected.schema, check_metadata=True)


def test_a_known_files_damaged_messages_are_refused_as_the_file_reader_refuses_them() -> None:
    """The footer is the same bytes as a file read before, the messages are not: every byte of a two-batch file
    overwritten in turn, the outcome (a table, 413 for a decoded size over the limit, or InvalidRequest) is the
    decoded-size check's and the file reader's, and the shortcut never reads what they refuse."""
    data = to_ipc_file(pa.table({"t": tensor_array(np.arange(6, dtype=np.float32).reshape(3, 2)),
                                 "s": ["x", "y", "z"]}).slice(0, 3).combine_chunks())
    data = to_ipc_file(pa.concat_tables([pa.ipc.open_file(data).read_all()] * 2))
    from_ipc(data, validate=True)  # the footer is known from here on
    footer_start = len(data) - 10 - int.from_bytes(data[-10:-6], "little")
    for at in range(8, footer_start):
        for value in (0x00, 0xFF, data[at] ^ 0x01):
            damaged = data[:at] + bytes([value]) + data[at + 1:]
            try:
                decoded = ipc_decoded_bytes(damaged)
            except (ValueError, IndexError, struct.error, pa.ArrowException, OSError, EOFError):
                decoded = None
            if decoded is not None and decoded > LIMIT:
                with pytest.raises(PayloadTooLarge, match=f"decodes to {decoded} bytes"):
                    from_ipc(damaged, max_decoded_bytes=LIMIT, validate=True)
                continue
            try:
                if decoded is None:
                    raise EOFError
                expected = pa.ipc.open_file(pa.py_buffer(damaged)).read_all()
                expected.validate(full=True)
            except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError):
                assert _shortcut(damaged, validate=True) is None, at
                with pytest.raises(InvalidRequest):
                    from_ipc(damaged, max_decoded_bytes=LIMIT, validate=True)
                continue
            read = from_ipc(damaged, max_decoded_bytes=LIMIT, validate=True)  # NaN != NaN: compared as bytes
            assert read.schema.equals(expected.schema) and to_ipc_stream(read) == to_ipc_stream(expected), at


@pytest.mark.parametrize("encode", [to_ipc_file, to_ipc_stream])
def test_a_known_body_over_the_decoded_limit_is_refused_with_the_same_figure(encode) -> None:
    table = pa.table({"t": tensor_array(np.ones((4, 29), np.float32))})
    for codec in (None, "zstd"):
        options = pa.ipc.IpcWriteOptions(compression=codec)
        sink = pa.BufferOutputStream()
        opener = pa.ipc.new_file if encode is to_ipc_file else pa.ipc.new_stream
        with opener(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        decoded = ipc_decoded_bytes(data)
        for _ in range(2):  # the first read of a file learns its footer, the second reads by it
            assert from_ipc(data, max_decoded_bytes=decoded, validate=True).equals(table)
            with pytest.raises(PayloadTooLarge, match=f"decodes to {decoded} bytes"):
                from_ipc(data, max_decoded_bytes=decoded - 1, validate=True)


def test_numpy_numbers_become_the_array_pa_array_makes() -> None:
    arrays = [np.arange(5, dtype=kind) for kind in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                                    np.uint32, np.uint64, np.float16, np.float32, np.float64)]
    arrays += [np.array([np.nan, 1.0]), np.array([True, False]), np.arange(10.0)[::2], np.array([], np.float32),
               np.array(["a", "b"])]
    for values in arrays:
        made, expected = flat_array(values), pa.array(values)
        assert made.type == expected.type and len(made) == len(expected) and made.null_count == 0
        assert made.to_numpy(zero_copy_only=False).tobytes() == expected.to_numpy(zero_copy_only=False).tobytes()
        made.validate(full=True)


def test_column_values_of_sliced_and_chunked_tensors() -> None:
    cube = tensor_array(np.arange(24, dtype=np.int64).reshape(4, 2, 3))
    pairs = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2, 3, 4, 5, 6]), 2)
    cases = [
        (cube.slice(1, 2), np.arange(24).reshape(4, 2, 3)[1:3].tolist()),
        (pa.chunked_array([cube.slice(1, 2)]), np.arange(24).reshape(4, 2, 3)[1:3].tolist()),
        (pa.chunked_array([pairs, pairs.slice(2)]), [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [5.0, 6.0]]),
        (pairs[1:2], [[3.0, 4.0]]),
        (pa.array([[1.0, None]], pa.list_(pa.float64(), 2)), [[1.0, None]]),
        (pa.chunked_array([], pa.int64()), []),
    ]
    for column, expected in cases:
        assert column_values(column) == expected


@pytest.mark.parametrize("table", _tables())
def test_a_file_is_the_writers_bytes_the_first_time_and_every_time_after(table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    written = sink.getvalue().to_pybytes()
    assert to_ipc_file(table) == written
    assert to_ipc_file(table) == written  # from the kept footer
    same_sizes = pa.Table.from_batches([batch for batch in table.to_batches()], table.schema)
    assert to_ipc_file(same_sizes) == written
    read = pa.ipc.open_file(pa.py_buffer(to_ipc_file(table))).read_all()
    assert read.equals(table) and read.schema.equals(table.schema, check_metadata=True)


def test_files_of_one_schema_with_other_values_and_row_counts() -> None:
    for rows in (1, 2, 1, 3, 1000, 1):
        for seed in range(3):
            values = np.random.default_rng(seed).random((rows, 29)).astype(np.float32)
            table = pa.table({"time": np.full(rows, seed, np.int64), "in.tensor": tensor_array(values),
                              "words": pa.array([str(seed) * (i % 5) for i in range(rows)])})
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            assert to_ipc_file(table) == sink.getvalue().to_pybytes()


def test_flat_values_are_flatten() -> None:
    pairs = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2, 3, 4, 5, 6, 7, 8]), 2)
    nested = tensor_array(np.arange(48, dtype=np.int32).reshape(4, 3, 2, 2))
    with_null = pa.array([[1, 2], None, [5, 6]], pa.list_(pa.int64(), 2))
    for array in (pairs, pairs.slice(1), pairs.slice(1, 2), pairs[3:], nested, nested.slice(2), with_null,
                  with_null.slice(1)):
        assert flat_values(array).equals(array.flatten())


def _file_writer_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _cached_bytes() -> list[bytes]:
    """Every key (and footer) the schema-keyed caches hold."""
    return [*arrow_codec._PLAIN, *arrow_codec._SCHEMAS,
            *(key[0] for key in arrow_codec._FOOTERS), *arrow_codec._FOOTERS.values()]


def test_a_schema_with_megabytes_of_metadata_works_and_is_not_cached() -> None:
    # a client's body may carry its own schema metadata (and column names): kept as cache keys, 256 of them of up
    # to the body limit each were gigabytes held by the gateway (rev1, /tmp/rev1_plain.py)
    for i in range(2):
        table = pa.table({"x": [1.0]}).replace_schema_metadata({b"k": (b"%06d" % i) * (4 * 2**20 // 6)})
        written = _writer_bytes(table)
        for _ in range(2):
            assert to_ipc_stream(table) == written
            assert from_ipc(written).equals(table, check_metadata=True)
            assert from_ipc(written, max_decoded_bytes=2**20, validate=True).equals(table, check_metadata=True)
            assert to_ipc_file(table) == _file_writer_bytes(table)
    assert all(len(key) <= CACHED_SCHEMA_MAX_BYTES for key in _cached_bytes())
    assert max(map(len, _cached_bytes()), default=0) <= CACHED_SCHEMA_MAX_BYTES
    # a long column name alike
    wide = pa.table({"c" * (CACHED_SCHEMA_MAX_BYTES + 1): [1]})
    assert to_ipc_stream(wide) == _writer_bytes(wide) and from_ipc(to_ipc_stream(wide)).equals(wide)
    assert to_ipc_file(wide) == _file_writer_bytes(wide)
    assert all(len(key) <= CACHED_SCHEMA_MAX_BYTES for key in _cached_bytes())
    # a small schema is still remembered
    small = pa.table({"small": [1.0]})
    to_ipc_stream(small), to_ipc_file(small), from_ipc(to_ipc_stream(small))
    head = small.schema.serialize().to_pybytes()
    assert head in arrow_codec._PLAIN and head in arrow_codec._SCHEMAS


class _Labels(pa.ExtensionType):
    """A registered extension type whose storage is a dictionary."""

    def __init__(self) -> None:
        super().__init__(pa.dictionary(pa.int32(), pa.string()), "railyard.test_labels")

    def __arrow_ext_serialize__(self) -> bytes:
        return b""

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _Labels:
        return cls()


def _extension_tables() -> list[pa.Table]:
    words = pa.array(["a", "b", "a"]).dictionary_encode()
    opaque = pa.ExtensionArray.from_storage(pa.opaque(words.type, "t", "v"), words)
    labels = pa.ExtensionArray.from_storage(_Labels(), words)
    offsets = pa.array([0, 2, 3], pa.int32())
    return [
        pa.table({"x": opaque}),
        pa.table({"x": labels}),
        pa.table({"l": pa.ListArray.from_arrays(offsets, opaque)}),  # nested: list of an extension over a dictionary
        pa.table({"s": pa.StructArray.from_arrays([labels, pa.array([1, 2, 3])], ["e", "n"])}),
        pa.table({"m": pa.MapArray.from_arrays(offsets, pa.array(["k", "l", "m"]), opaque)}),
        pa.table({"u": pa.UnionArray.from_sparse(pa.array([0, 1, 0], pa.int8()), [opaque, pa.array([1, 2, 3])])}),
        pa.table({"r": pa.RunEndEncodedArray.from_arrays(pa.array([3], pa.int32()), words.slice(0, 1))}),
    ]


@pytest.fixture(scope="module", autouse=False)
def labels_registered():
    pa.register_extension_type(_Labels())
    yield
    pa.unregister_extension_type("railyard.test_labels")


@pytest.mark.parametrize("index", range(len(_extension_tables())))
def test_a_dictionary_inside_an_extension_or_nested_type_is_written_and_read(index: int, labels_registered) -> None:
    # an extension type has no fields: its dictionary storage was missed, the stream written without its
    # dictionary batch and unreadable (rev1, /tmp/rev1_ext.py)
    table = _extension_tables()[index]
    written = _writer_bytes(table)
    for _ in range(2):  # the second time from the caches
        assert to_ipc_stream(table) == written
        assert from_ipc(to_ipc_stream(table)).equals(table)
        assert from_ipc(written, validate=True).equals(table)
        assert to_ipc_file(table) == _file_writer_bytes(table)
        assert from_ipc(to_ipc_file(table)).equals(table)


def test_a_claimed_footer_larger_than_the_cache_keeps_is_never_copied_or_hashed(monkeypatch) -> None:
    """A body ending in a footer length of most of its bytes: the footer cache's look-up copied and hashed every
    claimed byte (megabytes of a client's body per request) although no footer above CACHED_SCHEMA_MAX_BYTES is
    ever kept. Its size is checked first; a footer the cache can hold is still looked up."""
    looked_up: list[int] = []

    class Files(dict):
        def get(self, key, default=None):
            looked_up.append(len(key))
            return super().get(key, default)

        def __contains__(self, key) -> bool:
            looked_up.append(len(key))
            return super().__contains__(key)

    monkeypatch.setattr(arrow_codec, "_FILES", Files())
    magic = arrow_codec.ARROW_FILE_MAGIC
    for claimed in (4 << 20, CACHED_SCHEMA_MAX_BYTES + 1):
        body = magic + b"\x00\x00" + bytes(claimed) + claimed.to_bytes(4, "little") + magic
        assert _known_messages(body) is None
        with pytest.raises(InvalidRequest):
            from_ipc(body, max_decoded_bytes=1 << 30, validate=True)
    assert looked_up == []
    small = CACHED_SCHEMA_MAX_BYTES
    assert _known_messages(magic + b"\x00\x00" + bytes(small) + small.to_bytes(4, "little") + magic) is None
    assert looked_up == [small]
