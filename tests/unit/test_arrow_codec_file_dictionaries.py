"""An Arrow IPC file of a table whose chunks carry dictionaries of their own (a logs page across two pipeline
versions: each segment dictionary-encodes its own `metadata.pipeline_version`). The file format holds one dictionary
per field, so the writer refused such a table ("Dictionary replacement detected") and `pipelines/get_logs` with
`Accept: application/vnd.apache.arrow.file` answered 500 for any page spanning a redeploy."""

import pyarrow as pa

from shared.arrow_codec import from_ipc, to_ipc_file, to_ipc_stream


def _two_versions() -> pa.Table:
    first = pa.table({"time": pa.array([1, 2], pa.int64()),
                      "metadata.pipeline_version": pa.array(["v1", "v1"]).dictionary_encode()})
    second = pa.table({"time": pa.array([3], pa.int64()),
                       "metadata.pipeline_version": pa.array(["v2"]).dictionary_encode()})
    return pa.concat_tables([first, second])


def test_a_file_of_chunks_with_different_dictionaries_reads_back_the_same_rows():
    table = _two_versions()
    assert table.column("metadata.pipeline_version").num_chunks == 2
    back = from_ipc(to_ipc_file(table))
    assert back.column("time").to_pylist() == [1, 2, 3]
    assert back.column("metadata.pipeline_version").to_pylist() == ["v1", "v1", "v2"]
    assert pa.types.is_dictionary(back.schema.field("metadata.pipeline_version").type)


def test_the_stream_of_the_same_table_is_unchanged():
    table = _two_versions()
    back = from_ipc(to_ipc_stream(table))
    assert back.column("metadata.pipeline_version").to_pylist() == ["v1", "v1", "v2"]


def test_a_file_with_one_dictionary_per_field_and_a_plain_table_still_write():
    one = pa.table({"v": pa.array(["a", "b", "a"]).dictionary_encode()})
    assert from_ipc(to_ipc_file(one)).column("v").to_pylist() == ["a", "b", "a"]
    plain = pa.table({"x": [1.0, 2.0]})
    assert from_ipc(to_ipc_file(plain)).column("x").to_pylist() == [1.0, 2.0]


def test_a_dictionary_nested_in_a_struct_is_unified_too():
    """Parquet's read-back keeps a nested column's dictionary: a struct of one per chunk failed the same way."""
    def chunk(values: list[str]) -> pa.Table:
        return pa.table({"metadata": pa.StructArray.from_arrays([pa.array(values).dictionary_encode()], ["version"])})

    table = pa.concat_tables([chunk(["v1"]), chunk(["v2"])])
    back = from_ipc(to_ipc_file(table))
    assert back.column("metadata").to_pylist() == [{"version": "v1"}, {"version": "v2"}]
