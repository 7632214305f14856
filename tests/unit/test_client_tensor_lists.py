"""The SDK sends a DataFrame's (or a .json file's) tensor columns typed as the inference API's pandas-records reader
types the same rows (`shared.arrow_codec.records_json_to_table`), so that a pipeline version's log keeps one schema
whichever way its rows came (a log page ends at each schema change: 6cf8d49). Review of 6cf8d49:

- boolean and string tensors: the API's reader makes them fixed-size lists as it does numbers (`_column_array` ->
  `tensor_array`), the SDK left them lists (its comment said the reader made numeric tensors only), so a bool or
  string tensor column still split the log;
- a nested column whose inner rows are ragged was half converted (a fixed-size list of lists), a type neither the
  API's reader makes (it answers 'ragged tensor') nor the DataFrame had: now all levels or none;
- `combine_chunks` copied every column of the frame (even one chunk, pyarrow 26), changed or not: the conversion
  now reuses the frame's value buffers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from railyard_client import data

from shared import arrow_codec

SAME_AS_THE_API = {
    "floats": [[0.1, 0.2], [0.3, 0.4]],
    "ints": [[1, 2], [3, 4]],
    "booleans": [[True, False], [False, True]],
    "strings": [["a", "b"], ["c", "d"]],
    "nested": [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]],
    "nested strings": [[["a"], ["b"]], [["c"], ["d"]]],
    "scalars": [1.5, 2.5],
}


@pytest.mark.parametrize("name", sorted(SAME_AS_THE_API))
def test_a_dataframe_column_is_typed_as_the_api_reads_the_same_records(name):
    values = SAME_AS_THE_API[name]
    sent = data.tensor_lists(data.dataframe_to_table(pd.DataFrame({"c": values})))
    read = arrow_codec.records_json_to_table(json.dumps([{"c": value} for value in values]).encode())
    assert sent.schema.field("c").type == read.schema.field("c").type
    assert sent.column("c").to_pylist() == values


@pytest.mark.parametrize("name", sorted(SAME_AS_THE_API))
def test_a_json_file_is_typed_as_the_api_reads_it(name, tmp_path):
    values = SAME_AS_THE_API[name]
    body = json.dumps([{"c": value} for value in values])
    (tmp_path / "rows.json").write_text(body)
    table, kind = data.read_table(tmp_path / "rows.json")
    sent = data.tensor_lists(table)
    assert kind == "json"
    assert sent.schema.field("c").type == arrow_codec.records_json_to_table(body.encode()).schema.field("c").type


@pytest.mark.parametrize("values", [
    [[[1.0, 2.0], [3.0]], [[5.0, 6.0], [7.0, 8.0]]],  # inner rows ragged: the API answers 'ragged tensor'
    [[[1.0, 2.0], None], [[5.0, 6.0], [7.0, 8.0]]],  # an inner row missing
    [[[]], [[]]],  # empty inner tensors
], ids=["ragged-inner", "null-inner", "empty-inner"])
def test_a_nested_column_is_converted_at_every_level_or_not_at_all(values):
    table = data.dataframe_to_table(pd.DataFrame({"c": values}))
    assert data.tensor_lists(table).schema.field("c").type == table.schema.field("c").type


def test_the_frame_is_not_copied():
    frame = pd.DataFrame({"tensor": list(np.arange(3000.0).reshape(1000, 3)), "n": np.arange(1000)})
    table = data.dataframe_to_table(frame)
    sent = data.tensor_lists(table)
    assert sent.schema.field("tensor").type == pa.list_(pa.float64(), 3)
    assert sent.column("n").chunk(0).buffers()[1].address == table.column("n").chunk(0).buffers()[1].address
    assert sent.column("tensor").chunk(0).values.buffers()[1].address == \
        table.column("tensor").chunk(0).values.buffers()[1].address
    assert sent.schema.metadata == table.schema.metadata  # the pandas metadata kept


def test_a_column_of_several_chunks_is_converted_when_every_chunk_is_the_same_tensor():
    one = pa.table({"t": [[1.0, 2.0], [3.0, 4.0]]})
    same = data.tensor_lists(pa.concat_tables([one, one]))
    assert same.schema.field("t").type == pa.list_(pa.float64(), 2) and same.column("t").num_chunks == 2
    assert same.column("t").to_pylist() == [[1.0, 2.0], [3.0, 4.0]] * 2
    other = pa.table({"t": [[1.0, 2.0, 3.0]]})
    mixed = pa.concat_tables([one, other])
    assert data.tensor_lists(mixed).schema.field("t").type == pa.list_(pa.float64())
