"""Small real models for tests and benchmarks, made here with scikit-learn and skl2onnx (nothing is
downloaded): a credit-card-fraud-like 29-feature regressor as ONNX, and the same as a pickle."""

from __future__ import annotations

import pickle
from functools import cache

import numpy as np

FEATURES = 29


@cache
def _fitted():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(42)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 3] - x[:, 7] > 0).astype(int)
    return LogisticRegression(max_iter=500).fit(x, y), x


def sample_rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)


@cache
def ccfraud_onnx() -> bytes:
    """ONNX: input `tensor` float[N,29] -> `dense_1` float[N,1] (probability of fraud)."""
    import onnx
    from onnx import helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model, _ = _fitted()
    onx = convert_sklearn(model, initial_types=[("tensor", FloatTensorType([None, FEATURES]))],
                          options={id(model): {"zipmap": False}}, target_opset=17)
    # keep only the probability of class 1, as dense_1 [N, 1]
    graph = onx.graph
    prob = next(o.name for o in graph.output if "prob" in o.name)
    starts = helper.make_tensor("starts", onnx.TensorProto.INT64, [1], [1])
    ends = helper.make_tensor("ends", onnx.TensorProto.INT64, [1], [2])
    axes = helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])
    graph.initializer.extend([starts, ends, axes])
    graph.node.append(helper.make_node("Slice", [prob, "starts", "ends", "axes"], ["dense_1"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("dense_1", onnx.TensorProto.FLOAT, [None, 1]))
    return onx.SerializeToString()


def ccfraud_pickle() -> bytes:
    model, _ = _fitted()
    return pickle.dumps(model)


def sklearn_predict_proba(rows: np.ndarray) -> np.ndarray:
    model, _ = _fitted()
    return model.predict_proba(rows)[:, 1:2]


@cache
def _xgb():
    import xgboost

    _, x = _fitted()
    y = (x[:, 0] + 0.5 * x[:, 3] - x[:, 7] > 0).astype(int)
    return xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(x, y)


def xgboost_pickle() -> bytes:
    return pickle.dumps(_xgb())


def xgboost_json() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.json"
        _xgb().save_model(str(path))
        return path.read_bytes()


def xgboost_predict_proba(rows: np.ndarray) -> np.ndarray:
    return _xgb().predict_proba(rows)[:, 1:2]


@cache
def wide_onnx(width: int = 20_000) -> bytes:
    """ONNX with large rows: input `image` float[N,width] -> `mean` float[N,1] and `copy` float[N,width]
    (for the log store's oversized-row path)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=1, axes=[1]),
         helper.make_node("Identity", ["image"], ["copy"])],
        "wide",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("copy", TensorProto.FLOAT, [None, width])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def zero_size_onnx() -> bytes:
    """ONNX with a zero-size output dimension: input `x` float[N,3] -> `total` float[N,1] (the row's sum) and
    `none` float[N,0] (a slice of no columns: every row an empty tensor)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
         helper.make_node("Slice", ["x", "zero", "zero", "axes"], ["none"])],
        "zero_size",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("none", TensorProto.FLOAT, [None, 0])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
         helper.make_tensor("zero", TensorProto.INT64, [1], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


BYOP_SCRIPT = '''
import pickle
from typing import Any, Set

import numpy as np
from sklearn.linear_model import LogisticRegression

from mac.config.inference import CustomInferenceConfig
from mac.inference import Inference
from mac.inference.creation import InferenceBuilder
from mac.types import InferenceData

import helpers


class FraudInference(Inference):
    @property
    def expected_model_types(self) -> Set[Any]:
        return {LogisticRegression}

    @Inference.model.setter
    def model(self, model) -> None:
        self._raise_error_if_model_is_wrong_type(model)
        self._model = model

    def _predict(self, input_data: InferenceData) -> InferenceData:
        return {"dense_1": helpers.probability(self.model, input_data["tensor"]).astype(np.float32)}


class FraudInferenceBuilder(InferenceBuilder):
    @property
    def inference(self) -> FraudInference:
        return FraudInference()

    def create(self, config: CustomInferenceConfig) -> FraudInference:
        inference = self.inference
        with open(config.model_path / "model.pkl", "rb") as handle:
            inference.model = pickle.load(handle)
        return inference
'''


def byop_fraud_zip(requirements: str = "numpy\nscikit-learn>=1.0\n") -> bytes:
    """A bring-your-own-predict zip as the seed describes one: scripts extending mac's Inference and
    InferenceBuilder, a pickled scikit-learn model as an artifact, a helper module and requirements.txt."""
    import io
    import zipfile

    model, _ = _fitted()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fraud/requirements.txt", requirements)
        archive.writestr("fraud/model.pkl", pickle.dumps(model))
        archive.writestr("fraud/helpers.py",
                         "def probability(model, rows):\n    return model.predict_proba(rows)[:, 1:]\n")
        archive.writestr("fraud/custom_inference.py", BYOP_SCRIPT)
    return buffer.getvalue()


@cache
def slow_onnx(size: int = 512, iterations: int = 192) -> bytes:
    """ONNX whose every call is slow, whatever its rows: input `tensor` float[N,4] -> `score` float[N,1] (the row's
    sum plus a number from the work below). A Loop of `iterations` products of two size x size matrices, the first
    made from the request's values (so no optimiser folds it away): 2 * size^3 * iterations multiply-adds a call,
    ~0.5-1 s at the defaults on one core of the test VM. For the engine's inline-or-thread choice
    (tests/unit/test_engine_slow_model.py)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    weights = (rng.normal(size=(size, size)) / np.sqrt(size)).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "weights"], ["product"]),
         helper.make_node("Tanh", ["product"], ["state_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [size, size])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["tensor", "row_axes"], ["row_sum"], keepdims=1),
         helper.make_node("ReduceMean", ["row_sum"], ["level"], keepdims=0),
         helper.make_node("Add", ["weights", "level"], ["start"]),
         helper.make_node("Loop", ["trips", "keep_going", "start"], ["end"], body=body),
         helper.make_node("ReduceMean", ["end"], ["extra"], keepdims=0),
         helper.make_node("Add", ["row_sum", "extra"], ["score"])],
        "slow",
        [helper.make_tensor_value_info("tensor", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("row_axes", TensorProto.INT64, [1], [1]),
         helper.make_tensor("trips", TensorProto.INT64, [], [iterations]),
         helper.make_tensor("keep_going", TensorProto.BOOL, [], [True]),
         onnx.numpy_helper.from_array(weights, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()
