"""Booleans a pipeline's own earlier step made (an ONNX model's bool output, a Python step's `x > 0` column) for a
later ONNX step's numeric input are cast to 1/0 as before; only a request's booleans for the first step's numeric
input are refused (84b44e2's decision, docs/inference.md). 84b44e2 put the refusal in column_to_tensor, which every
step's model call goes through, so a pipeline whose later model took an earlier step's booleans answered every
request 400 "booleans (true/false) where the model expects float32 numbers; send numbers", naming what the caller
never sent. The replica is loaded as the deployer starts one (Replica.load builds its steps from the spec), its
artifacts stood in by local files."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from services.engine import replica as replica_module
from services.engine.replica import Replica
from shared.arrow_codec import tensor_array
from shared.errors import InvalidRequest
from shared.settings import Settings


def _onnx(node: str, input_type: int, output_type: int, **attributes) -> bytes:
    """One node from a [N, 3] tensor `x` (step 1) or `flag` (step 2) to its output."""
    from onnx import TensorProto, helper

    first = node == "Greater"
    name_in, name_out = ("x", "flag") if first else ("flag", "y")
    inputs = [name_in, "half"] if first else [name_in]
    initializers = [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])] if first else []
    graph = helper.make_graph(
        [helper.make_node(node, inputs, [name_out], **attributes)], "g",
        [helper.make_tensor_value_info(name_in, input_type, [None, 3])],
        [helper.make_tensor_value_info(name_out, output_type, [None, 3])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture
def two_steps(tmp_path, monkeypatch):
    """A replica of x float[N,3] -> (x > 0.5) bool 'flag' -> a model taking 'flag' as float[N,3] (Identity)."""
    from onnx import TensorProto

    artifacts = {"gt": _onnx("Greater", TensorProto.FLOAT, TensorProto.BOOL),
                 "id": _onnx("Identity", TensorProto.FLOAT, TensorProto.FLOAT)}
    for sha, data in artifacts.items():
        (tmp_path / sha).write_bytes(data)

    async def fetch_artifact(store, sha, cache):
        return tmp_path / sha

    monkeypatch.setattr(replica_module, "fetch_artifact", fetch_artifact)
    monkeypatch.setattr(replica_module, "MinioObjectStore", lambda settings: None)
    spec = {"deployment": {"name": "d-1", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "ModelInference", "models": [{"name": name, "sha": sha, "runtime": "onnx"}]}
                      for name, sha in (("greater", "gt"), ("identity", "id"))]}
    replica = Replica(spec, "r1", Settings(stack={"data_dir": tmp_path / "data"}))
    asyncio.run(replica.load())
    return replica


def test_a_later_step_takes_the_booleans_an_earlier_step_made_as_numbers(two_steps):
    x = np.array([[0.1, 0.9, 0.5], [1.0, 0.0, 0.7]], np.float32)
    output, *_ = two_steps.run(pa.table({"x": tensor_array(x)}))
    assert output.column("y").to_pylist() == (x > 0.5).astype(np.float32).tolist()


def test_a_requests_booleans_for_the_first_steps_float_input_are_still_refused(two_steps):
    flags = np.array([[True, False, True]])
    with pytest.raises(InvalidRequest, match=r"column 'x': booleans \(true/false\) where the model expects float32"):
        two_steps.run(pa.table({"x": tensor_array(flags)}))
