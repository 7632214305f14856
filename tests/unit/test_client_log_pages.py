"""Pipeline.logs joins the log store's pages, and a page never mixes schemas (docs/logs.md, `SchemaChange`): the next
page may type a column otherwise. Before, pages Arrow could not promote into one another (a bool tensor a float
model took: services/engine/runtimes.py takes JSON `true` as a number) made `pipeline.logs()` and `railyard
pipelines logs` fail with a raw ArrowTypeError for every read of the pipeline's history, whatever the limit.
Tensors of other sizes (a new pipeline version's model) Arrow promotes by itself: kept as it does."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pytest
from railyard_client import data
from railyard_client.pipelines import Pipeline


def _page(tensor: pa.Array, times: list[int]) -> pa.Table:
    return pa.table({"time": pa.array(times, pa.int64()), "in.tensor": tensor,
                     "out.dense_1": pa.array([[0.5]] * len(times), pa.list_(pa.float32(), 1))})


FLOATS = _page(pa.array([[0.25, 0.5]], pa.list_(pa.float32(), 2)), [3])
BOOL_TENSORS = pa.array([[True, False]], pa.list_(pa.field("element", pa.bool_()), 2))
BOOLS, NEWER_BOOLS = _page(BOOL_TENSORS, [2]), _page(BOOL_TENSORS, [4])
WIDER = _page(pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32(), 3)), [1])


class PagedSession:
    """Answers pipelines/get_logs with the given pages (newest first), each but the last with a cursor."""

    def __init__(self, pages: list[pa.Table]) -> None:
        self.pages = pages

    def send(self, method, path, json=None, headers=None, **kwargs):
        index = int(json.get("cursor") or 0)
        last = index == len(self.pages) - 1
        return SimpleNamespace(
            content=data.to_ipc_file(self.pages[index]),
            headers={"x-iteration-status": "All"} if last else
            {"x-iteration-status": "SchemaChange", "x-iteration-cursor": str(index + 1)})


@pytest.mark.parametrize("pages, tensor_type, tensors", [
    ([FLOATS, BOOLS], pa.list_(pa.float32(), 2), [[1.0, 0.0], [0.25, 0.5]]),
    ([NEWER_BOOLS, FLOATS], pa.list_(pa.float32(), 2), [[0.25, 0.5], [1.0, 0.0]]),  # not the floats as booleans
    ([FLOATS, WIDER], pa.list_(pa.float32()), [[1.0, 2.0, 3.0], [0.25, 0.5]]),
], ids=["float-then-bool", "bool-then-float", "2-then-3-values"])
def test_pages_of_other_tensor_types_read_as_one_table(pages, tensor_type, tensors):
    pipeline = Pipeline(PagedSession(pages), 1, "fraud")
    table = pipeline.logs(limit=None, arrow=True)
    assert table.column("time").to_pylist() == sorted(table.column("time").to_pylist())  # oldest first
    assert table.schema.field("in.tensor").type == tensor_type
    assert table.column("in.tensor").to_pylist() == tensors
    frame = pipeline.logs(limit=None)
    assert [list(value) for value in frame["in.tensor"]] == tensors


def test_what_has_no_common_type_is_kept_as_json_text_and_promotable_columns_as_before():
    text = pa.table({"time": [2], "x": pa.array(["a"]), "n": pa.array([1], pa.int64())})
    nested = pa.table({"time": [1], "x": pa.array([{"k": 1}]), "n": pa.array([2.5])})
    joined = data.concat_pages([text, nested])
    assert joined.column("x").to_pylist() == ['"a"', '{"k": 1}']
    assert joined.schema.field("n").type == pa.float64() and joined.column("n").to_pylist() == [1.0, 2.5]
    same = data.concat_pages([FLOATS, FLOATS])
    assert same.schema == FLOATS.schema and same.num_rows == 2


def test_booleans_joined_with_integers_keep_every_integer_exact():
    """A bool page against an int64 one was cast to float64 (safe=False): an id beyond 2**53 read back as another
    number, with no error. 64-bit integers hold both: True reads 1, the id as it was logged."""
    big = 2**53 + 1
    ids = pa.table({"time": [2], "in.ids": pa.array([[big, 3]], pa.list_(pa.int64(), 2)),
                    "n": pa.array([big], pa.int64())})
    flags = pa.table({"time": [1], "in.ids": pa.array([[True, None]], pa.list_(pa.bool_(), 2)),
                      "n": pa.array([False], pa.bool_())})
    joined = data.concat_pages([ids, flags])
    assert joined.schema.field("in.ids").type == pa.list_(pa.int64(), 2)
    assert joined.column("in.ids").to_pylist() == [[big, 3], [1, None]]
    assert joined.schema.field("n").type == pa.int64() and joined.column("n").to_pylist() == [big, 0]
    unsigned = data.concat_pages([pa.table({"n": pa.array([2**64 - 1], pa.uint64())}), pa.table({"n": [True]})])
    assert unsigned.column("n").to_pylist() == [2**64 - 1, 1]


def test_a_uint64_beyond_int64_against_signed_integers_does_not_fail_the_read():
    """Arrow promotes uint64 with int64 to int64, and its concat then failed (ArrowInvalid: not in range) on a
    uint64 above 2**63 - 1: every read of the logs failed, the very thing concat_pages is for. Now floats; when every
    value fits, Arrow's int64 as before."""
    beyond = pa.table({"time": [2], "n": pa.array([2**64 - 1], pa.uint64()),
                       "t": pa.array([[2**63]], pa.list_(pa.uint64()))})
    signed = pa.table({"time": [1], "n": pa.array([-1], pa.int64()), "t": pa.array([[-1]], pa.list_(pa.int64()))})
    joined = data.concat_pages([beyond, signed])
    assert joined.column("n").to_pylist() == [float(2**64 - 1), -1.0]
    assert joined.column("t").to_pylist() == [[float(2**63)], [-1.0]]
    fits = data.concat_pages([pa.table({"n": pa.array([5], pa.uint64())}), pa.table({"n": pa.array([-1])})])
    assert fits.schema.field("n").type == pa.int64() and fits.column("n").to_pylist() == [5, -1]
