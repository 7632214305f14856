"""`build_batch` makes exactly the table its records stand for, whichever way it builds it (docs/performance.md item
79): the fast lane's records (`ArrayRecord`, columns from their arrays at once) and ordinary ones (tables), mixed,
with shadows, after a log policy set a table, of several layouts, with nulls, strings, lists, several outputs, rows
of 0, arrays that are views; each table is compared with one built here from Python values, column by column
(types, nulls, values, dictionaries) and as Arrow IPC bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import ArrayRecord, InferenceRecord, RecordLayout, build_batch, group_records

IN_TYPES = {"in.id": pa.int64(), "in.tensor": pa.list_(pa.float32(), 3)}
OUT_TYPES = {"out.score": pa.float32(), "out.probs": pa.list_(pa.float32(), 2),
             "out.grid": pa.list_(pa.list_(pa.int32(), 2), 2)}
LAYOUT = RecordLayout(pa.schema([(name[3:], kind) for name, kind in IN_TYPES.items()]), (None, 3),
                      pa.schema([(name[4:], kind) for name, kind in OUT_TYPES.items()]))
# another request shape: one float64 input of 2, one int64 output of one value a row
OTHER_IN, OTHER_OUT = {"in.x": pa.list_(pa.float64(), 2)}, {"out.y": pa.list_(pa.int64(), 1)}
OTHER = RecordLayout(pa.schema([("x", OTHER_IN["in.x"])]), (2,), pa.schema([("y", OTHER_OUT["out.y"])]))


class Made:
    """A record and the Python values it holds (what the expected table is built from)."""

    def __init__(self, record: InferenceRecord, at: int, model: str, elapsed, rows: int, values: dict) -> None:
        self.record, self.at, self.model, self.elapsed, self.rows, self.values = \
            record, at, model, elapsed, rows, values


def lane(rows: int, seed: int, at: int = 1000, model: str = "m", elapsed=(5, 9)) -> Made:
    rng = np.random.default_rng(seed)
    ids = rng.integers(-2**40, 2**40, rows)
    # the fast lane's input values are views of the request's bytes
    tensor = np.frombuffer(rng.random(rows * 3, np.float32).tobytes(), np.float32)
    score = rng.random(rows, np.float32)
    probs = rng.random((rows, 2), np.float32)
    grid = rng.integers(-100, 100, (rows, 2, 2)).astype(np.int32)
    record = ArrayRecord(at, LAYOUT, [ids, tensor], [score, probs, grid], rows, model, elapsed)
    values = {"in.id": ids.tolist(), "in.tensor": tensor.reshape(rows, 3).tolist(), "out.score": score.tolist(),
              "out.probs": probs.tolist(), "out.grid": grid.tolist()}
    return Made(record, at, model, elapsed, rows, values)


def other(rows: int, seed: int, at: int = 2000, model: str = "o") -> Made:
    rng = np.random.default_rng(seed)
    x, y = rng.random(rows * 2), rng.integers(0, 9, (rows, 1))
    record = ArrayRecord(at, OTHER, [x], [y], rows, model, (1, 2))
    return Made(record, at, model, (1, 2), rows, {"in.x": x.reshape(rows, 2).tolist(), "out.y": y.tolist()})


def plain(made: Made) -> Made:
    """The same record as tables (the general path's record)."""
    record = made.record
    copy = InferenceRecord(made.at, record.inputs, record.outputs, made.model, made.elapsed)
    return Made(copy, made.at, made.model, made.elapsed, made.rows, made.values)


def expected(made: list[Made], types: dict[str, pa.DataType], version: str) -> pa.Table:
    """The log table of these records, from their Python values: time, in, out, out_<challenger> as the records
    give them, then the four metadata columns (model and version dictionary-encoded, int32 indices, the
    dictionary's values sorted)."""
    counts = [m.rows for m in made]
    columns = {"time": pa.array([m.at for m, n in zip(made, counts, strict=True) for _ in range(n)], pa.int64())}
    for name, kind in types.items():
        columns[name] = pa.array([value for m in made for value in m.values[name]], kind)
    names = sorted({m.model for m in made})
    columns["metadata.last_model"] = pa.DictionaryArray.from_arrays(
        pa.array([names.index(m.model) for m in made for _ in range(m.rows)], pa.int32()), pa.array(names))
    columns["metadata.pipeline_version"] = pa.DictionaryArray.from_arrays(
        pa.array([0] * sum(counts), pa.int32()), pa.array([version]))
    columns["metadata.elapsed"] = pa.array([list(m.elapsed) for m in made for _ in range(m.rows)],
                                           pa.list_(pa.int64()))
    columns["metadata.dropped"] = pa.array([[] for _ in range(sum(counts))], pa.list_(pa.string()))
    return pa.table(columns)


def same(table: pa.Table, want: pa.Table) -> None:
    assert table.schema.equals(want.schema, check_metadata=True), (table.schema, want.schema)
    for name in want.column_names:
        column, wanted = table.column(name), want.column(name)
        assert column.null_count == wanted.null_count, name
        assert column.to_pylist() == wanted.to_pylist(), name
        assert column.equals(wanted), name
    assert table.equals(want) and to_ipc_stream(table) == to_ipc_stream(want)


TYPES = IN_TYPES | OUT_TYPES


def test_fast_lane_records_of_any_rows_and_models():
    made = [lane(1, 1, 10, "b", (7, 8)), lane(1, 2, 11, "a"), lane(4, 3, 12, "b", (2**40, 3)), lane(0, 4, 13, "c"),
            lane(2, 5, 14, "a", (0, 0))]
    same(build_batch([m.record for m in made], "v3"), expected(made, TYPES, "v3"))
    assert all(m.record._inputs is None and m.record._outputs is None for m in made)  # no table per record


def test_a_flush_of_one_row_requests_of_one_model_as_the_replica_makes_at_batch_1():
    made = [lane(1, seed, 1_700_000_000_000 + seed, "ccfraud", (40_000 + seed, 51_000)) for seed in range(300)]
    same(build_batch([m.record for m in made], "6d1a7f2c"), expected(made, TYPES, "6d1a7f2c"))


@pytest.mark.parametrize("rows", [[1], [3], [0], [0, 0]])
def test_one_record_and_no_rows(rows):
    made = [lane(n, 20 + i, 100 + i) for i, n in enumerate(rows)]
    same(build_batch([m.record for m in made], "v"), expected(made, TYPES, "v"))
    tables = [plain(m) for m in made]
    same(build_batch([m.record for m in tables], "v"), expected(tables, TYPES, "v"))


def test_lane_records_that_are_views_of_other_memory():
    """Values that are not one contiguous block (a strided view, a Fortran-ordered tensor, a slice) are read as
    numpy reads them."""
    made = [lane(3, 30), lane(2, 31), lane(1, 32)]
    strided = np.repeat(made[0].record.input_values[1], 2)[::2]
    made[0].record.input_values[1] = strided
    made[1].record.output_values[1] = np.asfortranarray(made[1].record.output_values[1])
    made[2].record.output_values[2] = np.ascontiguousarray(
        np.concatenate([made[2].record.output_values[2]] * 2)[1:])
    assert not strided.flags.c_contiguous and not made[1].record.output_values[1].flags.c_contiguous
    same(build_batch([m.record for m in made], "v"), expected(made, TYPES, "v"))


def test_lane_arrays_numpy_joins_its_own_way():
    """Arrays the layout does not promise (the lane never makes them) give the column np.concatenate gives: another
    byte order, an output of float64 beside float32 ones (upcast)."""
    made = [lane(2, 35), lane(1, 36), lane(3, 37)]
    for m in made:
        m.record.input_values[1] = m.record.input_values[1].astype(">f4")
    made[1].record.output_values[1] = made[1].record.output_values[1].astype(np.float64)
    types = TYPES | {"out.probs": pa.list_(pa.float64(), 2)}
    same(build_batch([m.record for m in made], "v"), expected(made, types, "v"))


def test_lane_and_table_records_of_one_schema_together():
    made = [lane(2, 40, 1), plain(lane(1, 41, 2, "x")), lane(1, 42, 3), plain(lane(3, 43, 4))]
    assert len(group_records([m.record for m in made])) == 1
    same(build_batch([m.record for m in made], "v"), expected(made, TYPES, "v"))
    same(build_batch([m.record for m in made[::-1]], "v"), expected(made[::-1], TYPES, "v"))


def test_a_lane_record_whose_table_a_log_policy_set():
    made = [lane(2, 50), lane(1, 51), lane(2, 52)]
    record = made[1].record
    record.outputs = record.outputs  # what LogPolicy does with its selection: an ordinary record from here on
    assert record.layout is None
    same(build_batch([m.record for m in made], "v"), expected(made, TYPES, "v"))


def test_lane_records_with_a_shadow_challengers_outputs():
    made = [lane(2, 60), lane(1, 61, model="z")]
    for index, m in enumerate(made):
        shadow = np.arange(m.rows * 2, dtype=np.float32).reshape(m.rows, 2) + index
        m.record.shadows = {"ch": pa.table({"probs": tensor_array(shadow)}), "c2": pa.table({"s": pa.array(
            [f"r{index}{row}" if row else None for row in range(m.rows)], pa.string())})}
        m.values["out_ch.probs"] = shadow.tolist()
        m.values["out_c2.s"] = [f"r{index}{row}" if row else None for row in range(m.rows)]
    types = TYPES | {"out_ch.probs": pa.list_(pa.float32(), 2), "out_c2.s": pa.string()}
    table = build_batch([m.record for m in made], "v")
    same(table, expected(made, types, "v"))
    assert table.column("out_c2.s").null_count == 2


def test_table_records_with_nulls_strings_lists_structs_and_several_outputs():
    types = {"in.text": pa.string(), "in.ragged": pa.list_(pa.float64()), "in.point": pa.struct(
        [("a", pa.int32()), ("b", pa.string())]), "in.flag": pa.bool_(), "out.label": pa.string(),
        "out.scores": pa.list_(pa.float32(), 2), "out.n": pa.int64()}
    rows = [
        {"in.text": ["a", None], "in.ragged": [[1.5], None], "in.point": [{"a": 1, "b": "x"}, None],
         "in.flag": [True, None], "out.label": ["yes", None], "out.scores": [[0.25, 0.75], None], "out.n": [1, None]},
        {"in.text": [""], "in.ragged": [[]], "in.point": [{"a": None, "b": None}], "in.flag": [False],
         "out.label": [""], "out.scores": [[1.0, 0.0]], "out.n": [-3]},
        {name: [] for name in types},
    ]
    made = []
    for index, values in enumerate(rows):
        tables = [pa.table({name.split(".", 1)[1]: pa.array(values[name], kind) for name, kind in types.items()
                            if name.startswith(prefix)}) for prefix in ("in.", "out.")]
        # elapsed as a list (a record read back from JSON) makes the same column
        elapsed = [index, 10 * index] if index == 1 else (index, 10 * index)
        record = InferenceRecord(500 + index, tables[0], tables[1], f"model-{2 - index}", elapsed)
        made.append(Made(record, 500 + index, f"model-{2 - index}", elapsed, len(values["in.text"]), values))
    for part in (made, made[:1], made[1:]):
        same(build_batch([m.record for m in part], "v9"), expected(part, types, "v9"))


def test_records_of_several_schemas_group_then_build_each():
    made = [lane(1, 70, 1), other(2, 71, 2), plain(lane(1, 72, 3)), other(1, 73, 4), lane(2, 74, 5)]
    changed = plain(lane(1, 75, 6))  # the same columns, another type of one input: a schema of its own
    changed.values["in.id"] = [-7]
    changed.record.inputs = changed.record.inputs.set_column(0, "id", pa.array([-7], pa.int32()))
    made.append(changed)
    groups = group_records([m.record for m in made])
    assert [[made.index(next(m for m in made if m.record is r)) for r in g] for g in groups] == [[0, 2, 4], [1, 3], [5]]
    by_record = {id(m.record): m for m in made}
    for group, types in zip(groups, (TYPES, OTHER_IN | OTHER_OUT, TYPES | {"in.id": pa.int32()}), strict=True):
        part = [by_record[id(r)] for r in group]
        same(build_batch(group, "v"), expected(part, types, "v"))
