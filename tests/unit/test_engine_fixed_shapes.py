"""A request's list column of one shape for a model's tensor input becomes, on arrival in the replica, the
fixed-size lists the pandas-records reader makes of the same rows (shared/arrow_codec.py: fixed_shapes;
services/engine/runtimes.py: tensor_inputs; replica.Replica.narrow): an Arrow table of Python lists (`list<double>`,
the README's `pa.table({"tensor": [[0.1] * 29]})`) and JSON rows then log one schema, and a get_logs page no longer
ends between them (j2's finding, session 27)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from services.engine.replica import Replica
from services.engine.runtimes import OnnxRuntime, narrowing
from shared.arrow_codec import from_ipc, records_json_to_table, to_ipc_stream
from tests.models import ccfraud_onnx


def _runtime(tmp_path, name: str, data: bytes) -> OnnxRuntime:
    path = tmp_path / name
    path.write_bytes(data)
    runtime = OnnxRuntime(path)
    runtime.load()
    return runtime


def _onnx(inputs: dict[str, list]) -> bytes:
    """A model of float inputs of the given shapes, answering the first (Identity)."""
    first = next(iter(inputs))
    graph = helper.make_graph([helper.make_node("Identity", [first], ["y"])], "m",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n, dims in inputs.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, inputs[first])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@pytest.fixture
def ccfraud(tmp_path):
    return _runtime(tmp_path, "ccfraud.onnx", ccfraud_onnx())


def _replica(runtimes: list, tensors: frozenset[str]) -> SimpleNamespace:
    return SimpleNamespace(spec={"deployment": {"pipeline_version": "v1"}}, narrowing=narrowing(runtimes),
                           tensors=tensors)


def _json(rows: list[dict]) -> pa.Table:
    return records_json_to_table(json.dumps(rows).encode())


def test_an_arrow_list_request_and_json_rows_arrive_as_one_schema(ccfraud):
    rows = [[0.1 * i + j for j in range(29)] for i in range(3)]
    listed = from_ipc(to_ipc_stream(pa.table({"tensor": rows})))  # list<double>, as a user's pa.table makes it
    assert pa.types.is_list(listed.schema.field("tensor").type)
    replica = _replica([ccfraud], frozenset(["tensor"]))
    from_arrow = Replica.narrow(replica, listed)
    from_json = Replica.narrow(replica, _json([{"tensor": r} for r in rows]))
    assert from_arrow.schema == from_json.schema  # the log's schema: fixed_size_list<item: float>[29] both
    assert str(from_arrow.schema.field("tensor").type) == "fixed_size_list<item: float>[29]"
    assert from_arrow.equals(from_json)  # the same float32 values (narrow's rounding)
    assert ccfraud.predict(from_arrow).equals(ccfraud.predict(from_json))


def test_nested_sliced_chunked_and_large_lists_become_the_readers_type():
    from shared.arrow_codec import fixed_shapes

    images = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
    nested = fixed_shapes(pa.table({"img": images}), ["img"])
    assert nested.schema == _json([{"img": i} for i in images]).schema
    assert nested.column("img").to_pylist() == images
    # a slice: offsets that do not start at 0 (rows 1-2 of a table whose row 0 is longer)
    sliced = fixed_shapes(pa.table({"t": [[1.0, 2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]}).slice(1, 2), ["t"])
    assert str(sliced.schema.field("t").type) == "fixed_size_list<item: double>[2]"
    assert sliced.column("t").to_pylist() == [[4.0, 5.0], [6.0, 7.0]]
    chunks = pa.chunked_array([pa.array([[1.0, 2.0]]), pa.array([], pa.list_(pa.float64())),
                               pa.array([[3.0, 4.0], [5.0, 6.0]])])
    chunked = fixed_shapes(pa.table({"t": chunks}), ["t"])
    assert str(chunked.schema.field("t").type) == "fixed_size_list<item: double>[2]"
    assert chunked.column("t").to_pylist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    large = fixed_shapes(pa.table({"t": pa.array([[1, 2], [3, 4]], pa.large_list(pa.int64()))}), ["t"])
    assert large.schema == _json([{"t": [1, 2]}, {"t": [3, 4]}]).schema
    mixed = fixed_shapes(pa.table({"t": pa.array([[[1.0], [2.0]]], pa.list_(pa.list_(pa.float64()), 2))}), ["t"])
    assert str(mixed.schema.field("t").type) == "fixed_size_list<item: fixed_size_list<item: double>[1]>[2]"


def test_the_values_buffer_is_shared_not_copied():
    from shared.arrow_codec import fixed_shapes

    values = np.arange(29 * 1000, dtype=np.float64)
    listed = pa.table({"t": pa.ListArray.from_arrays(pa.array(np.arange(0, 29 * 1001, 29, dtype=np.int32)),
                                                     pa.array(values))})
    shaped = fixed_shapes(listed, ["t"]).column("t").chunk(0)
    assert shaped.values.buffers()[1].address == listed.column("t").chunk(0).values.buffers()[1].address
    narrowed = fixed_shapes(listed, ["t"], {"t": pa.float32()}).column("t")
    assert str(narrowed.type) == "fixed_size_list<item: float>[29]"
    assert np.array_equal(narrowed.chunk(0).values.to_numpy(), values.astype(np.float32))


@pytest.mark.parametrize("column", [
    pa.array([[1.0, 2.0], [3.0]]),  # ragged: the model check says so
    pa.array([[1.0, 2.0], None]),  # a null tensor: likewise
    pa.array([[], []], pa.list_(pa.float64())),  # empty tensors
    pa.array([[[1.0], [2.0, 3.0]]]),  # ragged one level down: not half converted
    pa.array([1.0, 2.0]),  # a scalar column
    pa.array(["a", "b"]),
], ids=["ragged", "null-tensor", "empty", "ragged-inner", "scalars", "strings"])
def test_what_is_not_one_shape_is_left_as_sent(column):
    from shared.arrow_codec import fixed_shapes

    table = pa.table({"t": column})
    assert fixed_shapes(table, ["t"]) is table


def test_only_the_named_columns_change():
    from shared.arrow_codec import fixed_shapes

    table = pa.table({"tensor": [[1.0, 2.0]], "ids": [[1, 2]]})
    shaped = fixed_shapes(table, ["tensor", "absent"])
    assert pa.types.is_fixed_size_list(shaped.schema.field("tensor").type)
    assert shaped.schema.field("ids").type == table.schema.field("ids").type


def test_tensor_inputs_are_the_first_steps_inputs_of_rank_two_or_more(tmp_path, ccfraud):
    from services.engine.replica import Step, first_step_tensors
    from services.engine.runtimes import tensor_inputs

    assert tensor_inputs([ccfraud]) == {"tensor"}
    dynamic = _runtime(tmp_path, "dyn.onnx", _onnx({"tensor": [None, None], "scale": [None]}))
    assert tensor_inputs([dynamic]) == {"tensor"}  # a dynamic width too (the JSON reader makes fixed-size of it)
    assert tensor_inputs([ccfraud, dynamic]) == {"tensor"}
    other = _runtime(tmp_path, "other.onnx", _onnx({"features": [None, 3]}))
    assert tensor_inputs([ccfraud, other]) == set()  # an arm that does not take `tensor`
    assert tensor_inputs([object()]) == set()  # a Python step or BYOP: no declared inputs
    assert tensor_inputs([ccfraud], keep=frozenset(["tensor"])) == set()
    assert tensor_inputs([]) == set()
    plain = Step({"kind": "ModelInference", "models": [{"name": "m", "model_version": "1", "sha": "s"}]}, [ccfraud])
    assert first_step_tensors([plain]) == {"tensor"}
    assert first_step_tensors([]) == set()
