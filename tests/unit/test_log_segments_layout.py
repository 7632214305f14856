"""What a segment's write works out once per schema (`log_segments.layout`) and the description read without
pyarrow.compute give what was computed per write before (docs/performance.md item 82): the same description
for tables off the fast path, the same packing for a table of a known schema whose tensor now holds a null."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from services.log_store.segments import TENSOR, encode_segment, unpack_tensors
from shared import log_segments
from shared.arrow_codec import tensor_array
from shared.logrecords import META_DROPPED, META_VERSION, TIME, schema_fingerprint


def _reference(table: pa.Table) -> dict:
    """The description as every write computed it before item 82."""
    times = table.column(TIME)
    versions = pc.unique(table.column(META_VERSION)).to_pylist() if META_VERSION in table.column_names else []
    flat = pc.list_flatten(table.column(META_DROPPED)) if META_DROPPED in table.column_names else pa.array([])
    return {"rows": table.num_rows, "min_time": int(pc.min(times).as_py()), "max_time": int(pc.max(times).as_py()),
            "schema_fp": schema_fingerprint(table.schema), "versions": [str(v) for v in versions],
            "dropped": sorted(set(flat.to_pylist())) if len(flat) else []}


def _versions(values: list[str | None], dictionary: list[str]) -> pa.Array:
    codes = pa.array([None if v is None else dictionary.index(v) for v in values], pa.int32())
    return pa.DictionaryArray.from_arrays(codes, pa.array(dictionary))


def _table(times: list[int], versions: pa.Array, dropped: list) -> pa.Table:
    rows = len(times)
    return pa.table({TIME: pa.array(times, pa.int64()),
                     "in.x": tensor_array(np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)),
                     META_VERSION: versions, META_DROPPED: pa.array(dropped, pa.list_(pa.string()))})


CASES = {
    "one_version_nothing_dropped": _table([5, 1, 9], _versions(["a"] * 3, ["a"]), [[], [], []]),
    "two_versions": _table([5, 1, 9], _versions(["a", "b", "a"], ["a", "b"]), [[], [], []]),
    "one_used_of_two": _table([5, 1, 9], _versions(["b"] * 3, ["a", "b"]), [[], [], []]),
    "a_null_version": _table([5, 1, 9], _versions(["a", None, "a"], ["a"]), [[], None, []]),
    "plain_strings": _table([2, 3], pa.array(["v1", "v2"]), [["in.x"], []]),
    "dropped_and_null": _table([2, 3, 4], _versions(["a"] * 3, ["a"]), [None, ["in.x", "out.y"], ["in.x"]]),
    "a_slice_past_the_dropped_row": _table([2, 3, 4], _versions(["a"] * 3, ["a"]), [["in.x"], [], []]).slice(1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_description_is_the_one_computed_with_pyarrow_compute(name):
    table = CASES[name]
    ref = log_segments.describe(table, "k", 10)
    assert ref.model_dump(exclude={"key", "bytes"}) == _reference(table)


def test_chunked_and_versionless_tables_are_described_alike():
    one = CASES["two_versions"]
    chunked = pa.concat_tables([one.slice(0, 1), one.slice(1)])
    assert chunked.column(TIME).num_chunks == 2
    assert log_segments.describe(chunked, "k", 1).model_dump(exclude={"key", "bytes"}) == _reference(chunked)
    bare = one.drop_columns([META_VERSION, META_DROPPED])
    assert log_segments.describe(bare, "k", 1).model_dump(exclude={"key", "bytes"}) == _reference(bare)


def test_a_known_schema_with_a_null_tensor_is_stored_as_it_is_and_then_packed_again():
    """The layout of a schema says how its tensors are packed; whether a table's tensor is packed is still
    decided per table (a null row keeps it a list), and the next table of that schema is packed again."""
    clean = _table([1, 2], _versions(["a"] * 2, ["a"]), [[], []])
    holes = clean.set_column(1, "in.x", pa.FixedSizeListArray.from_arrays(pa.array([1.0, None, 2.0] * 2,
                                                                                    pa.float32()), 3))
    assert holes.schema.equals(clean.schema, check_metadata=True)
    for table, packed in ((clean, True), (holes, False), (clean, True)):
        data = encode_segment(table, row_group_rows=8)
        stored = pq.read_schema(pa.BufferReader(data)).field("in.x")
        assert (stored.metadata is not None and TENSOR in stored.metadata) is packed
        assert unpack_tensors(pq.read_table(pa.BufferReader(data))).equals(table)


def test_field_metadata_makes_another_layout():
    plain = pa.schema([pa.field("in.x", pa.list_(pa.float32(), 2))])
    noted = pa.schema([pa.field("in.x", pa.list_(pa.float32(), 2), metadata={b"k": b"v"})])
    assert log_segments.layout(plain) is log_segments.layout(pa.schema(list(plain)))
    assert log_segments.layout(noted) is not log_segments.layout(plain)
    assert log_segments.layout(noted).packs[0][-1].metadata[b"k"] == b"v"


@pytest.mark.parametrize("moment", [0.0, 86_399.999, 86_400.0, -0.5, 1_764_892_800.0 - 0.001, 1_764_892_800.0])
def test_a_keys_day_folder_is_its_moments_utc_day(moment):
    day = datetime.fromtimestamp(moment, UTC).strftime("%Y/%m/%d")
    assert log_segments.segment_key(1, "p", now=moment).split("/")[2:5] == day.split("/")
    assert log_segments.segment_key(1, "p", now=86_400.0 * 3).split("/")[2:5] == ["1970", "01", "04"]


def test_layouts_are_kept_for_a_bounded_number_of_column_lists(monkeypatch):
    monkeypatch.setattr(log_segments, "_LAYOUTS", {})
    monkeypatch.setattr(log_segments, "LAYOUTS_KEPT", 2)
    schemas = [pa.schema([(TIME, pa.int64()), (f"in.x{n}", pa.float32())]) for n in range(3)]
    first = log_segments.layout(schemas[0])
    assert log_segments.layout(schemas[0]) is first
    for schema in schemas[1:]:
        log_segments.layout(schema)
    assert len(log_segments._LAYOUTS) == 2
    again = log_segments.layout(schemas[0])  # the oldest went: worked out again, the same
    assert again is not first and again.order == first.order and again.fingerprint == first.fingerprint


def test_a_moment_that_rounds_to_the_next_day_does_not_name_the_day_before_after_it(monkeypatch):
    """A moment within half a microsecond of midnight rounds up (datetime.fromtimestamp keeps microseconds); the
    day folder kept for its day number must still be that day's, or every key made later in that day (another
    thread's moment taken a few ms before) lands in the next day's folder, where its name's time (`key_moment`)
    does not belong and the orphan sweep's listing of that folder by time never reaches it."""
    monkeypatch.setattr(log_segments, "_DAY", (0, "1970/01/01"))
    midnight = 1_764_892_800.0  # 2025-12-05 00:00 UTC
    last = math.nextafter(midnight, 0)
    assert datetime.fromtimestamp(last, UTC).day == 5  # the rounding this is about
    log_segments.segment_key(1, "p", now=last)
    earlier = log_segments.segment_key(1, "p", now=midnight - 0.005)
    assert earlier.split("/")[2:5] == ["2025", "12", "04"]
    assert log_segments.key_moment(earlier) == pytest.approx(midnight - 0.005, abs=0.001)
    assert log_segments.segment_key(1, "p", now=midnight).split("/")[2:5] == ["2025", "12", "05"]


def _offset_tensors() -> dict[str, pa.Array]:
    """Six-row tensor columns whose rows start inside their buffers at every level: a child array that is itself a
    slice, a nested fixed-size list sliced at both levels, a parent sliced over a sliced child."""
    child = pa.array(np.arange(40, dtype=np.int32)).slice(5, 24)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(200, dtype=np.float64)).slice(7, 120), 4)
    return {"child_offset": pa.FixedSizeListArray.from_arrays(child, 3).slice(1, 6),
            "nested": pa.FixedSizeListArray.from_arrays(inner.slice(3, 24), 2).slice(2, 6),
            "uint8": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(64, dtype=np.uint8)).slice(1, 56), 7)
            .slice(1, 6)}


@pytest.mark.parametrize("name", list(_offset_tensors()))
@pytest.mark.parametrize("chunks", [1, 3])
def test_a_tensor_whose_rows_start_inside_its_buffers_is_packed_as_its_rows(name, chunks):
    """_pack slices the child as the list is (not flatten, which honours every offset): each level's offset must be
    taken, the child's own too, in one chunk or several (sliced) ones; read back, the rows are the table's."""
    tensor = _offset_tensors()[name]
    assert tensor.offset and tensor.values.offset  # rows start inside the parent's and the child's buffers
    parts = [tensor.slice(0, 2), tensor.slice(2, 1), tensor.slice(3)] if chunks == 3 else [tensor]
    table = pa.table({TIME: pa.array(np.arange(6), pa.int64()), "in.x": pa.chunked_array(parts)})
    assert table.column("in.x").num_chunks == chunks
    data = encode_segment(table, row_group_rows=4)
    stored = pq.read_table(pa.BufferReader(data))
    assert TENSOR in stored.schema.field("in.x").metadata  # stored packed
    assert unpack_tensors(stored).column("in.x").to_pylist() == tensor.to_pylist()
