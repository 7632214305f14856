"""Model runtimes of the engine. Every runtime follows one lifecycle: `load()`, then
`predict(batch: pa.Table) -> pa.Table` any number of times, then `unload()`; `ready` tells whether it is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from shared.arrow_codec import tensor_array
from shared.errors import InvalidRequest

ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
    "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_, "tensor(float16)": np.float16,
}


class Runtime(Protocol):
    """What the engine runs for one model version."""

    ready: bool

    def load(self) -> None: ...
    def predict(self, batch: pa.Table) -> pa.Table: ...
    def unload(self) -> None: ...


def column_to_tensor(name: str, column: pa.ChunkedArray | pa.Array, dims: list, dtype) -> np.ndarray:
    """An Arrow column of (nested) lists or scalars as an [N, ...] numpy array of the model's dtype."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    shape: list[int] = []
    values = array
    while pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type) or \
            pa.types.is_large_list(values.type):
        if values.null_count:
            raise InvalidRequest(f"column {name!r}: null tensor")
        if pa.types.is_fixed_size_list(values.type):
            shape.append(values.type.list_size)
        else:
            lengths = np.diff(values.offsets.to_numpy())
            if len(lengths) and (lengths != lengths[0]).any():
                raise InvalidRequest(f"column {name!r}: ragged tensor (rows have different shapes)")
            shape.append(int(lengths[0]) if len(lengths) else 0)
        values = values.flatten()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        raise InvalidRequest(f"column {name!r}: strings where the model expects numbers")
    if values.null_count:
        raise InvalidRequest(f"column {name!r}: null values")
    flat = values.to_numpy(zero_copy_only=False)
    expected = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape, strict=False)):
        want = "x".join(str(e) if e else "?" for e in expected) or "a scalar"
        got = "x".join(str(s) for s in shape) or "a scalar"
        raise InvalidRequest(f"column {name!r}: the model expects tensors of shape {want}, got {got}")
    if flat.dtype.kind not in "biuf":
        raise InvalidRequest(f"column {name!r}: not numeric")
    tensor = flat.reshape([rows, *shape])
    if dtype is np.bool_ and tensor.dtype != np.bool_:
        raise InvalidRequest(f"column {name!r}: the model expects booleans")
    return tensor.astype(dtype, copy=False)


class OnnxRuntime:
    """An ONNX model in an onnxruntime session."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = path
        self.threads = threads
        self.session: ort.InferenceSession | None = None
        self.ready = False

    def load(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, i.shape, ORT_TO_NUMPY.get(i.type)) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True

    def check_columns(self, batch: pa.Table) -> None:
        wanted = {name for name, _, _ in self.inputs}
        present = set(batch.column_names)
        missing, extra = sorted(wanted - present), sorted(present - wanted)
        if missing or extra:
            parts = [f"missing columns {missing}" if missing else "", f"unexpected columns {extra}" if extra else ""]
            raise InvalidRequest(f"the model takes columns {sorted(wanted)}: " + "; ".join(p for p in parts if p))

    def predict(self, batch: pa.Table) -> pa.Table:
        self.check_columns(batch)
        feeds = {}
        for name, dims, dtype in self.inputs:
            if dtype is None:
                raise InvalidRequest(f"input {name!r} has a type the engine does not feed")
            tensor = column_to_tensor(name, batch.column(name), dims, dtype)
            if tensor.dtype.kind == "f" and not np.isfinite(tensor).all():
                raise InvalidRequest(f"column {name!r}: NaN or infinite values")
            feeds[name] = tensor
        outputs = self.session.run(self.output_names, feeds)
        columns = [tensor_array(np.asarray(o)) if np.asarray(o).ndim > 1 else pa.array(np.asarray(o))
                   for o in outputs]
        result = pa.Table.from_arrays(columns, names=self.output_names)
        if result.num_rows != batch.num_rows:
            raise InvalidRequest(f"the model returned {result.num_rows} rows for {batch.num_rows} (equal rows rule)")
        return result

    def unload(self) -> None:
        self.session = None
        self.ready = False


class PythonStepRuntime:
    """A Python step: a script whose `wallaroo_json(data: pandas.DataFrame)` returns a DataFrame, a list of
    row objects or a dict of columns. It runs inside the engine replica process only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entry = None
        self.ready = False
        self.inputs: list = []

    def load(self) -> None:
        namespace: dict = {"__name__": "railyard_python_step"}
        code = compile(self.path.read_bytes(), f"<python step {self.path.name[:12]}>", "exec")
        exec(code, namespace)  # noqa: S102 - running the user's step is this runtime's purpose
        self.entry = namespace.get("wallaroo_json")
        if not callable(self.entry):
            raise InvalidRequest("the Python step has no callable wallaroo_json(data)")
        self.ready = True

    def predict(self, batch: pa.Table) -> pa.Table:
        import pandas as pd

        from shared.arrow_codec import records_to_table

        try:
            result = self.entry(batch.to_pandas())
        except Exception as exc:  # the user's code failed: say how, without its internals
            raise InvalidRequest(f"the Python step failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        if isinstance(result, pd.DataFrame):
            records = result.to_dict(orient="records")
        elif isinstance(result, dict):
            records = pd.DataFrame(result).to_dict(orient="records")
        elif isinstance(result, list):
            records = result
        else:
            raise InvalidRequest(f"the Python step returned {type(result).__name__}, not a DataFrame, list or dict")
        return records_to_table([{k: _plain(v) for k, v in row.items()} for row in records])

    def unload(self) -> None:
        self.entry = None
        self.ready = False


def _plain(value):
    """numpy values (as pandas hands them back) as plain Python for JSON-like conversion."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
