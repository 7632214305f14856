"""The benchmark's second model: a seed-like MLP (29 inputs, hidden layers of 64 and 32 with ReLU, one sigmoid
output `dense_1`), built with onnx's helpers from fixed random weights (nothing downloaded or trained)."""

from __future__ import annotations

from functools import cache

import numpy as np

FEATURES = 29


@cache
def seed_mlp_onnx() -> bytes:
    """ONNX: input `tensor` float[N,29] -> `dense_1` float[N,1], like tests.models.ccfraud_onnx()."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(29)
    sizes = [FEATURES, 64, 32, 1]
    nodes, weights, current = [], [], "tensor"
    for layer, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = (rng.normal(size=(fan_in, fan_out)) * np.sqrt(2 / fan_in)).astype(np.float32)
        b = (rng.normal(size=fan_out) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{layer}"), numpy_helper.from_array(b, f"b{layer}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [f"z{layer}"]))
        last = layer == len(sizes) - 2
        current = "dense_1" if last else f"a{layer}"
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [f"z{layer}"], [current]))
    graph = helper.make_graph(nodes, "seed_mlp", [helper.make_tensor_value_info("tensor", TensorProto.FLOAT,
                                                                                [None, FEATURES])],
                              [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, [None, 1])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
