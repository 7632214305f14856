"""The log record layout: batches from requests, per-row sizes, dropping columns of oversized rows, dataset
selection, the seed's JSON rows, cursors and compaction runs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from services.log_store.handlers import _runs
from services.log_store.pages import decode_cursor, encode_cursor
from shared.arrow_codec import tensor_array
from shared.errors import InvalidRequest
from shared.logrecords import (
    InferenceRecord,
    build_batch,
    check_dataset_names,
    drop_oversized,
    dropped_columns,
    group_records,
    row_sizes,
    schema_fingerprint,
    seed_rows,
    select_columns,
    unknown_dataset_names,
)


def record(rows: int, width: int = 4, at: int = 1000, model: str = "m", shadows: dict | None = None):
    inputs = pa.table({"tensor": tensor_array(np.arange(rows * width, dtype=np.float32).reshape(rows, width))})
    outputs = pa.table({"dense_1": tensor_array(np.ones((rows, 1), np.float32))})
    return InferenceRecord(at, inputs, outputs, model, (5, 9), shadows or {})


def test_a_batch_keeps_rows_in_order_with_per_request_time_and_model():
    table = build_batch([record(2, at=1, model="a"), record(3, at=2, model="b")], "v7")
    assert table.num_rows == 5
    assert table.column("time").to_pylist() == [1, 1, 2, 2, 2]
    assert table.column("metadata.last_model").to_pylist() == ["a", "a", "b", "b", "b"]
    assert table.column("metadata.pipeline_version").to_pylist() == ["v7"] * 5
    assert table.column("metadata.elapsed").to_pylist() == [[5, 9]] * 5
    assert table.column("metadata.dropped").to_pylist() == [[]] * 5


def test_records_of_different_schemas_are_separate_batches():
    shadowed = record(1, shadows={"ch": pa.table({"dense_1": tensor_array(np.zeros((1, 1), np.float32))})})
    groups = group_records([record(1), shadowed, record(2, width=3), record(1)])
    assert [len(g) for g in groups] == [2, 1, 1]
    assert "out_ch.dense_1" in build_batch(groups[1], "v").column_names


def test_row_sizes_of_fixed_variable_and_string_columns():
    assert row_sizes(tensor_array(np.zeros((3, 10), np.float32))).tolist() == [40, 40, 40]
    assert row_sizes(pa.array([[1, 2], [], [3]], pa.list_(pa.int64()))).tolist() == [16, 0, 8]
    assert row_sizes(pa.array(["ab", "", "abcd"])).tolist() == [2, 0, 4]


def test_oversized_rows_lose_the_largest_input_first_then_outputs():
    big_in = pa.table({"small": tensor_array(np.zeros((2, 10), np.float32)),
                       "big": tensor_array(np.zeros((2, 1000), np.float32))})
    big_out = pa.table({"copy": tensor_array(np.zeros((2, 800), np.float32)),
                        "mean": tensor_array(np.zeros((2, 1), np.float32))})
    table = build_batch([InferenceRecord(1, big_in, big_out, "m", (1, 2))], "v")
    assert drop_oversized(table, 10_000_000) is table  # nothing to do
    kept = drop_oversized(table, 3500)  # 4000 in + 3200 out: the big input goes, then that is enough
    assert kept.column("metadata.dropped").to_pylist() == [["in.big"], ["in.big"]]
    assert kept.column("in.big").null_count == 2 and kept.column("out.copy").null_count == 0
    tight = drop_oversized(table, 1000)
    assert tight.column("metadata.dropped").to_pylist()[0] == ["in.big", "in.small", "out.copy"]
    assert tight.column("time").to_pylist() == [1, 1] and dropped_columns(tight) == ["in.big", "in.small", "out.copy"]
    row = seed_rows(tight.slice(0, 1))[0]
    assert row["in"] == {} and set(row["out"]) == {"mean"} and row["metadata"]["dropped"][0] == "in.big"


def test_a_dropped_value_leaves_the_serialized_record():
    """A row's 10 MB string input, dropped, no longer travels: the record fits the stream again."""
    from shared.arrow_codec import to_ipc_stream

    inputs = pa.table({"task": pa.array(["x" * 10_000_000, "small"])})
    outputs = pa.table({"prediction": pa.array(["{}", "{}"])})
    kept = drop_oversized(build_batch([InferenceRecord(1, inputs, outputs, "m", (1, 2))], "v"), 64 * 1024)
    assert kept.column("in.task").to_pylist() == [None, "small"]
    assert len(to_ipc_stream(kept)) < 64 * 1024


def test_a_dictionary_row_counts_the_value_it_names_and_a_dropped_value_leaves_the_dictionary():
    """A dictionary column's row was sized as its 4-byte index: a request whose categorical input named a 2 MiB
    value was never dropped for size, and as Arrow sends a dictionary whole with every slice of its batch, every
    payload of the batch was above the bus limit and all its rows were lost (tests/unit/test_log_batcher.py). A
    row counts the bytes of the value it names; a dropped value leaves the dictionary; the other rows keep theirs."""
    from shared.arrow_codec import to_ipc_stream

    tags = pa.array(["ab", "", "abcd", "ab", None]).dictionary_encode()
    assert row_sizes(tags).tolist() == [6, 4, 8, 6, 4]  # index + value; a null row its index
    assert row_sizes(tags.slice(2, 2)).tolist() == [8, 6]
    chunks = pa.chunked_array([pa.array(["x" * 100]).dictionary_encode(), tags.slice(0, 2)])  # two dictionaries
    assert row_sizes(chunks).tolist() == [104, 6, 4]
    assert row_sizes(pa.array([["ab", "abcd"], []], pa.list_(pa.dictionary(pa.int8(), pa.string())))).tolist() == [8, 0]
    big = "x" * (2 << 20)
    inputs = pa.table({"tag": pa.array(["small", big, "small", "other"]).dictionary_encode(),
                       "n": tensor_array(np.ones((4, 2), np.float32))})
    table = build_batch([InferenceRecord(1, inputs, pa.table({"y": pa.array([1.0, 2.0, 3.0, 4.0])}), "m",
                                         (1, 2))], "v")
    assert row_sizes(table.column("in.tag"))[1] > 2 << 20
    kept = drop_oversized(table, 1 << 20)
    assert kept.column("metadata.dropped").to_pylist() == [[], ["in.tag"], [], []]
    assert kept.column("in.tag").to_pylist() == ["small", None, "small", "other"]
    assert kept.column("in.tag").type == table.column("in.tag").type
    assert kept.column("in.tag").chunk(0).dictionary.to_pylist() == ["small", "other"]
    assert len(to_ipc_stream(kept)) < 64 * 1024 and len(to_ipc_stream(kept.slice(2, 1))) < 64 * 1024


def test_row_sizes_of_extension_run_end_encoded_map_and_view_columns():
    """Types an Arrow request may carry, sized by the bytes of their rows (they were each the column's average:
    one long row among short ones passed as short)."""
    shape = pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((3, 2, 5), np.float32))
    assert row_sizes(shape).tolist() == [40, 40, 40]
    runs = pa.RunEndEncodedArray.from_arrays(pa.array([2, 3, 6], pa.int32()), pa.array(["a", "x" * 1000, "bc"]))
    assert row_sizes(runs).tolist() == [1, 1, 1000, 2, 2, 2]
    assert row_sizes(runs.slice(1, 3)).tolist() == [1, 1000, 2]
    pairs = pa.array([[("a", 1)], [], [("bcd", 2), ("e", 3)]], pa.map_(pa.string(), pa.int64()))
    assert row_sizes(pairs).tolist() == [9, 0, 20]
    views = pa.array(["ab", None, "x" * 40, ""], pa.string_view())
    assert row_sizes(views).tolist() == [2, 0, 40, 0] and row_sizes(views.slice(2)).tolist() == [40, 0]
    assert row_sizes(pa.array([[1, 2], [], [3]], pa.list_view(pa.int64()))).tolist() == [16, 0, 8]
    assert row_sizes(pa.array(["ab", None, "abcd"], pa.large_string()).slice(1)).tolist() == [0, 4]
    table = pa.table({"time": pa.array([1, 2], pa.int64()), "in.t": pa.FixedShapeTensorArray.from_numpy_ndarray(
        np.zeros((2, 300, 300), np.float32)), "metadata.dropped": pa.array([[], []], pa.list_(pa.string()))})
    kept = drop_oversized(table, 100_000)  # an extension column can be dropped (if_else had no kernel for it)
    assert kept.column("in.t").null_count == 2 and kept.column("in.t").type == table.column("in.t").type
    table = pa.table({"time": pa.array([1, 2, 3], pa.int64()), "in.r": runs.slice(1, 3),
                      "metadata.dropped": pa.array([[], [], []], pa.list_(pa.string()))})
    kept = drop_oversized(table, 500)  # a run-end encoded row can lose its value (take() has no kernel for it)
    assert kept.column("in.r").to_pylist() == ["a", None, "bc"] and kept.column("in.r").type == runs.type
    assert kept.column("metadata.dropped").to_pylist() == [[], ["in.r"], []]


def test_dataset_selection_keeps_time_and_groups_or_columns():
    names = ["time", "in.tensor", "in.id", "out.dense_1", "out_ch.dense_1", "metadata.elapsed"]
    assert select_columns(names, ["*"], []) == names
    assert select_columns(names, ["in"], []) == ["time", "in.tensor", "in.id"]
    assert select_columns(names, ["in.id", "metadata"], []) == ["time", "in.id", "metadata.elapsed"]
    assert select_columns(names, ["*"], ["in", "out_ch"]) == ["time", "out.dense_1", "metadata.elapsed"]
    assert select_columns(names, ["out"], []) == ["time", "out.dense_1"]  # out_<challenger> is its own group


def test_dataset_names_that_select_nothing_are_refused_with_the_valid_ones():
    valid = ["*", "time", "in", "out", "metadata", "out_ch", "in.tensor", "out._model_split", "out_ch.dense_1",
             "metadata.elapsed", "metadata.dropped", "metadata.last_model", "metadata.pipeline_version"]
    assert unknown_dataset_names(valid) == []
    wrong = ["anomaly", "inputs", "in.", "out_", "time.x", "metadata.nope", "", "IN", "**"]
    assert unknown_dataset_names(wrong) == wrong
    check_dataset_names(valid, valid)
    with pytest.raises(InvalidRequest) as refused:
        check_dataset_names(["in", "outs"], ["anomaly"])
    assert refused.value.code == "unknown_log_dataset"
    assert "dataset ['outs']; dataset_exclude ['anomaly']" in refused.value.msg and "'in.<input>'" in refused.value.msg


def test_fingerprint_ignores_values_but_not_types():
    a, b = build_batch([record(1)], "v1"), build_batch([record(2)], "v2")
    assert schema_fingerprint(a.schema) == schema_fingerprint(b.schema)
    assert schema_fingerprint(a.schema) != schema_fingerprint(build_batch([record(1, width=3)], "v").schema)


def test_cursors_round_trip_and_refuse_another_order_or_garbage():
    assert decode_cursor(encode_cursor(1_700_000_000_000, 12345, "Desc"), "Desc") == (1_700_000_000_000, 12345)
    with pytest.raises(InvalidRequest, match="order"):
        decode_cursor(encode_cursor(0, 5, "Desc"), "Asc")
    for bad in ("x", "eyJwIjogLTF9", "!!!"):
        with pytest.raises(InvalidRequest):
            decode_cursor(bad, "Desc")


def test_compaction_runs_are_contiguous_one_schema_and_bounded():
    def seg(first: int, rows: int, fp: str = "a") -> dict:
        return {"first_pos": first, "last_pos": first + rows - 1, "row_count": rows, "schema_fp": fp}

    segments = [seg(0, 10), seg(10, 10), seg(20, 10, "b"), seg(30, 10, "b"), seg(45, 10, "b"), seg(55, 10, "b"),
                seg(65, 10, "b")]
    runs = _runs(segments, target=20)
    assert [[s["first_pos"] for s in run] for run in runs] == [[0, 10], [20, 30], [45, 55]]


def test_a_json_log_page_prints_float32_in_its_shortest_form_and_answers_keep_theirs():
    """docs/logs.md "Types": a logged float32 `0.1` reads `0.1` on a JSON log page (orjson prints numpy float32 in
    its shortest round-tripping form), float64 stays float64's, nulls and variable lists too; the inference answer's
    values (`column_values`) keep the exact doubles they always had."""
    import orjson

    from shared.arrow_codec import column_values
    from shared.logrecords import page_values

    def page(column) -> bytes:
        return orjson.dumps(page_values(column), option=orjson.OPT_SERIALIZE_NUMPY)

    tensor = tensor_array(np.array([[0.1, 1 / 3], [16777217.0, -2.5e-38]], np.float32))
    assert page(tensor) == b"[[0.1,0.33333334],[16777216.0,-2.5e-38]]"
    assert page(pa.chunked_array([tensor.slice(1), tensor.slice(0, 1)])) == b"[[16777216.0,-2.5e-38],[0.1,0.33333334]]"
    assert page(pa.array([0.1, None, float("nan")], pa.float32())) == b"[0.1,null,null]"
    assert page(pa.array([[0.1], None], pa.list_(pa.float32(), 1))) == b"[[0.1],null]"
    assert page(pa.array([[0.1, None], [0.2]], pa.list_(pa.float32()))) == b"[[0.1,null],[0.2]]"
    assert page(pa.array([0.1], pa.float64())) == b"[0.1]" and page(pa.array([1 / 3])) == b"[0.3333333333333333]"
    assert page(pa.array([2**62], pa.int64())) == b"[4611686018427387904]"
    # every printed value reads back as the very float32 that was logged
    values = np.random.default_rng(3).standard_normal(2000).astype(np.float32)
    assert np.array_equal(np.array(orjson.loads(page(pa.array(values))), np.float32), values)

    assert orjson.dumps(column_values(tensor)) == (
        b"[[0.10000000149011612,0.3333333432674408],[16777216.0,-2.4999999777439474e-38]]")
    outputs = pa.table({"y": pa.array([0.1, 0.2], pa.float32())})
    table = build_batch([InferenceRecord(1, pa.table({"tensor": tensor}), outputs, "m", (1, 2))], "v")
    text = orjson.dumps(seed_rows(table), option=orjson.OPT_SERIALIZE_NUMPY)
    assert b'"in":{"tensor":[0.1,0.33333334]},"out":{"y":0.1}' in text and b"0.1000000014" not in text


def test_per_record_columns_travel_as_runs_and_come_back_as_they_were():
    """docs/performance.md item 19: the engine sends time and the metadata a value per record (run-end encoded),
    the log store's parse_batch turns them back: the same table as build_batch made, through IPC, sliced (the
    batcher halves a batch above the bus limit), with dictionaries, a row that lost a column, and batch-1
    records (left dense: the runs would not pay)."""
    from types import SimpleNamespace

    from services.log_store.handlers import parse_batch
    from shared.arrow_codec import to_ipc_stream
    from shared.logrecords import LOG_HEADER, encode_runs, expand_runs, log_header

    def records(sizes: list[int]) -> list[InferenceRecord]:
        rng = np.random.default_rng(len(sizes))
        return [InferenceRecord(1_000 + i, pa.table({"tensor": tensor_array(rng.random((n, 3), np.float32))}),
                                pa.table({"y": tensor_array(rng.random((n, 1), np.float32))}), f"m{i % 2}",
                                (10 + i, 20 + i)) for i, n in enumerate(sizes)]

    sizes = [1000, 0, 300, 1000]
    table = build_batch(records(sizes), "v1")
    sent = encode_runs(table, sizes)
    encoded = [f.name for f in sent.schema if pa.types.is_run_end_encoded(f.type)]
    assert encoded == ["time", "metadata.last_model", "metadata.pipeline_version", "metadata.elapsed",
                       "metadata.dropped"]
    assert len(to_ipc_stream(sent)) < 0.85 * len(to_ipc_stream(table))
    for start, length in ((0, table.num_rows), (999, 302), (1299, 1), (700, 1600)):
        payload = to_ipc_stream(sent.slice(start, length))
        back = expand_runs(pa.ipc.open_stream(payload).read_all())
        assert back.equals(table.slice(start, length)) and back.schema.equals(table.schema)
        msg = SimpleNamespace(data=payload, subject="logs.inference.d", metadata=None,
                              headers={LOG_HEADER: log_header(1, "p", "d", "v1"), "Railyard-Batch-Id": "b"})
        assert parse_batch(msg).table.column("metadata.last_model").to_pylist() == \
            table.slice(start, length).column("metadata.last_model").to_pylist()

    wide = drop_oversized(build_batch(records([100, 100]), "v1"), 40)  # every row loses its tensor
    sent = encode_runs(wide, [100, 100])
    assert not pa.types.is_run_end_encoded(sent.schema.field("metadata.dropped").type)
    assert expand_runs(pa.ipc.open_stream(to_ipc_stream(sent)).read_all()).equals(wide)

    single = build_batch(records([1, 1, 2]), "v1")
    assert encode_runs(single, [1, 1, 2]) is single


def test_a_row_whose_columns_share_memory_is_sized_per_column():
    """A step echoing its input tensor as an output: in.x and out.x are one buffer, 600 KB each in the row."""
    x = tensor_array(np.random.default_rng(1).random((1, 75_000)))
    table = pa.table({"time": pa.array([1], pa.int64()), "in.x": x, "out.x": x,
                      "metadata.dropped": pa.array([[]], pa.list_(pa.string()))})
    assert table.get_total_buffer_size() < 1 << 20 < table.nbytes  # the shared buffer counted once / per column
    kept = drop_oversized(table, 1 << 20)
    assert kept.column("metadata.dropped").to_pylist() == [["in.x"]] and kept.column("out.x").null_count == 0
    record = InferenceRecord(1, pa.table({"x": x}), pa.table({"x": x}), "m", (1, 2))
    assert drop_oversized(build_batch([record], "v"), 1 << 20).column("metadata.dropped").to_pylist() == [["in.x"]]


def test_a_large_batch_of_small_rows_is_not_sized_row_by_row_and_a_long_list_row_still_loses_its_column():
    """drop_oversized's bound: a list of fixed-width items counts its longest list, a dictionary its values, so
    a 40,000-row batch whose `metadata.elapsed` alone is above max_row_bytes is returned as it is; a row whose
    own list is above it loses its columns (inputs first, as always)."""
    rows = 40_000
    tensor = pa.FixedSizeListArray.from_arrays(pa.array(np.ones(rows * 4, np.float32)), 4)
    elapsed = pa.array([[1, 2, 3]] * rows, pa.list_(pa.int64()))
    model = pa.array(["m"] * rows).dictionary_encode()
    table = pa.table({"time": pa.array(np.arange(rows)), "in.x": tensor, "metadata.elapsed": elapsed,
                      "metadata.last_model": model})
    assert table.column("metadata.elapsed").nbytes > 1024 * 1024
    assert drop_oversized(table, 1024 * 1024) is table
    long = pa.array([[1.0]] * (rows - 1) + [[1.0] * 200_000], pa.list_(pa.float64()))
    table = table.append_column("out.y", long)
    out = drop_oversized(table, 1024 * 1024)
    assert out.column("metadata.dropped").to_pylist()[-1] == ["in.x", "out.y"]  # inputs go first
    assert out.column("metadata.dropped").to_pylist()[0] == [] and out.column("out.y")[0].as_py() == [1.0]


def test_a_large_batch_of_small_rows_is_not_sized_row_by_row(monkeypatch):
    """drop_oversized's quick check bounded a list or string column's rows by the column's whole bytes, offsets
    included (4 bytes a row): above 262,144 rows the empty `metadata.dropped` lists alone passed max_row_bytes'
    1 MiB, and every row of a flush that size (an overflow flush of 300,000 rows) was sized one by one. A batch of
    small rows passes without a row sized; a row that is over the limit at that size is still found."""
    import shared.logrecords as logrecords

    sized: list[int] = []
    real = logrecords.row_sizes

    def row_sizes(array):
        sized.append(len(array))
        return real(array)

    monkeypatch.setattr(logrecords, "row_sizes", row_sizes)
    rows, per = 300_000, 1000
    records = [InferenceRecord(i, pa.table({"tensor": tensor_array(np.ones((per, 29), np.float32)),
                                            "tag": pa.array(["abc"] * per)}),
                               pa.table({"y": tensor_array(np.ones((per, 1), np.float32))}), "m", (1, 2))
               for i in range(rows // per)]
    table = build_batch(records, "v")
    assert table.column("metadata.dropped").nbytes > 1024 * 1024  # the offsets alone: what the check summed
    assert drop_oversized(table, 1024 * 1024) is table and sized == []
    # at that size a row over the limit is still found and loses its column: a long string, a list of strings
    tags = ["abc"] * rows
    tags[123_456] = "x" * (2 * 1024 * 1024)
    notes = pa.array([[]] * rows, pa.list_(pa.string()))
    wide = table.set_column(table.schema.get_field_index("in.tag"), "in.tag", pa.array(tags))
    kept = drop_oversized(wide, 1024 * 1024)
    assert kept.column("in.tag")[123_456].as_py() is None and kept.column("in.tag").null_count == 1
    assert kept.column("metadata.dropped")[123_456].as_py() == ["in.tag"]
    listed = [[] for _ in range(rows)]
    listed[7] = ["y" * (1024 * 1024), "z"]
    noted = table.append_column("in.notes", pa.array(listed, pa.list_(pa.string())))
    kept = drop_oversized(noted, 1024 * 1024)
    assert kept.column("in.notes").null_count == 1 and kept.column("metadata.dropped")[7].as_py() == ["in.notes"]
    # a slice of the table whose big row is left out is not sized either
    sized.clear()
    assert drop_oversized(noted.slice(100, 200_000), 1024 * 1024).num_rows == 200_000 and sized == []
    assert notes.nbytes > 1024 * 1024
