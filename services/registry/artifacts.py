"""Checking and converting uploaded model files, run in a separate, time- and memory-limited process
(`python -m services.registry.artifacts inspect|convert ...`): loading a model or unpickling a user's
file never happens inside the registry service itself.

Prints one JSON object: `{"ok": true, ...}` or `{"ok": false, "error": "<reason a user can act on>"}`.
"""

from __future__ import annotations

import ast
import base64
import errno
import json
import os
import posixpath
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_UNCOMPRESSED = 4 * 1024**3
MAX_COMPRESSION_RATIO = 200
MAX_SCRIPT_BYTES = 1024 * 1024


class Rejected(Exception):
    """The file is not acceptable; the message says why."""


def _schema_b64(schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


_ONNX_TO_ARROW = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
    "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool", "tensor(string)": "string",
    "tensor(float16)": "float16",
}


def _arrow_field(name: str, onnx_type: str, shape: list) -> Any:
    """One ONNX input/output as an Arrow column: the first dimension is the row, the others the tensor."""
    import pyarrow as pa

    if onnx_type not in _ONNX_TO_ARROW:
        raise Rejected(f"{name}: ONNX type {onnx_type} is not supported")
    arrow_type = pa.type_for_alias(_ONNX_TO_ARROW[onnx_type])
    for dim in reversed(shape[1:]):
        arrow_type = pa.list_(arrow_type, dim) if isinstance(dim, int) and dim > 0 else pa.list_(arrow_type)
    return pa.field(name, arrow_type, metadata={"onnx_shape": json.dumps([d if isinstance(d, int) else None
                                                                           for d in shape])})


def inspect_onnx(path: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import pyarrow as pa
    from google.protobuf.message import DecodeError

    if path.stat().st_size == 0:
        raise Rejected("the file is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError):
        raise Rejected("not an ONNX model (the file does not parse as an ONNX protobuf)") from None
    if not model.graph.node:
        raise Rejected("not an ONNX model (the graph has no nodes)")
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            normalized = posixpath.normpath(location.replace("\\", "/"))
            if location.startswith(("/", "\\")) or normalized.startswith("..") or ":" in location:
                raise Rejected(f"tensor {tensor.name!r} points at external data {location!r} outside the model's"
                               " folder")
            raise Rejected(f"tensor {tensor.name!r} keeps its data in an external file ({location!r}); upload a"
                           " single self-contained .onnx file")
    supported = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > supported:
            raise Rejected(f"opset {opset.version} is newer than the supported {supported}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented classes
        first = str(exc).replace(str(path), path.name).strip().splitlines()[0][:300]
        raise Rejected(f"onnxruntime cannot load the model: {first}") from None
    inputs = pa.schema([_arrow_field(i.name, i.type, i.shape) for i in session.get_inputs()])
    outputs = pa.schema([_arrow_field(o.name, o.type, o.shape) for o in session.get_outputs()])
    return {"runtime": "onnx", "input_schema": _schema_b64(inputs), "output_schema": _schema_b64(outputs)}


def inspect_python(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_SCRIPT_BYTES:
        raise Rejected(f"a Python step script may be at most {MAX_SCRIPT_BYTES} bytes")
    try:
        tree = ast.parse(path.read_bytes(), filename=path.name)
    except SyntaxError as exc:
        raise Rejected(f"Python syntax error at line {exc.lineno}: {exc.msg}") from None
    except ValueError:
        raise Rejected("not a Python script (it contains NUL bytes)") from None
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    if "wallaroo_json" not in names:
        raise Rejected("a Python step must define a top-level function `wallaroo_json(data)`")
    return {"runtime": "python"}


def _base_names(node: ast.ClassDef) -> set[str]:
    names = set()
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def inspect_custom(path: Path) -> dict[str, Any]:
    """Bring-your-own-predict: a zip of scripts, artifacts and requirements.txt."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise Rejected("not a zip archive") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise Rejected(f"the archive has {len(infos)} entries; at most {MAX_ZIP_ENTRIES} are allowed")
        total = 0
        for info in infos:
            name = info.filename
            normalized = posixpath.normpath(name.replace("\\", "/"))
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or normalized.startswith(".."):
                raise Rejected(f"archive entry {name!r} would be written outside the model's folder")
            kind = info.external_attr >> 16  # the Unix mode, when the archive was made on Unix
            if kind and stat.S_ISLNK(kind):
                raise Rejected(f"archive entry {name!r} is a symbolic link, which could point outside the model's"
                               " folder; archive the file it points to instead")
            if kind and stat.S_IFMT(kind) and not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
                raise Rejected(f"archive entry {name!r} is neither a file nor a folder")
            if "\0" in name or any(part == ".." for part in name.replace("\\", "/").split("/")):
                raise Rejected(f"archive entry {name!r} would be written outside the model's folder")
            total += info.file_size
            if total > MAX_ZIP_UNCOMPRESSED:
                raise Rejected(f"the archive unpacks to more than {MAX_ZIP_UNCOMPRESSED} bytes")
            if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                raise Rejected(f"archive entry {name!r} is compressed more than {MAX_COMPRESSION_RATIO}:1")
        files = [i for i in infos if not i.is_dir()]
        if not any(posixpath.basename(i.filename) == "requirements.txt" for i in files):
            raise Rejected("the archive has no requirements.txt")
        bases: set[str] = set()
        for info in files:
            if info.filename.endswith(".py") and info.file_size <= MAX_SCRIPT_BYTES:
                try:
                    tree = ast.parse(archive.read(info), filename=info.filename)
                except (SyntaxError, ValueError) as exc:
                    raise Rejected(f"{info.filename}: Python syntax error: {getattr(exc, 'msg', exc)}") from None
                for node in ast.walk(tree):
                    if isinstance(node, ast.ClassDef):
                        bases |= _base_names(node)
        missing = {"Inference", "InferenceBuilder"} - bases
        if missing:
            raise Rejected("the archive needs classes that extend Inference and InferenceBuilder"
                           f" (missing: {', '.join(sorted(missing))})")
    return {"runtime": "custom"}


SEE = "see docs/security.md#conversions"
# libraries whose own error messages are worth showing (bounded); anything else was raised by the user's code
_LIBRARY_MODULES = ("skl2onnx", "onnxmltools", "onnxconverter_common", "onnx", "sklearn", "xgboost")


def _kind_of_failure(exc: BaseException) -> str:
    """The class of an exception, named only when it is Python's or pickle's own (a class the user's code
    defined can carry any name, and its message any text)."""
    import builtins
    import pickle

    kind = type(exc)
    if kind is pickle.UnpicklingError or getattr(builtins, kind.__name__, None) is kind:
        return kind.__name__
    return "an exception class of its own"


def _library_message(exc: BaseException) -> str:
    """A converter's own message (bounded), or only the class of failure when the user's code raised it."""
    module = type(exc).__module__ or ""
    if module.split(".")[0] in _LIBRARY_MODULES:
        return " ".join(str(exc).split())[:200]
    return f"the model's code raised {_kind_of_failure(exc)}"


def _unpickle(source: Path, what: str) -> Any:
    import pickle

    try:
        with source.open("rb") as handle:
            return pickle.load(handle)  # noqa: S301 - this process exists to contain exactly this
    except MemoryError:
        raise
    except OSError as exc:
        if exc.errno == errno.EFBIG:  # RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write fails instead)
            raise Rejected(f"{what} could not be loaded: it wrote a file larger than the registry allows;"
                           f" {SEE}") from None
        raise Rejected(f"{what} could not be loaded: Python could not unpickle it ({_kind_of_failure(exc)});"
                       f" {SEE}") from None
    except Exception as exc:  # any unpickling failure is the user's file; its text is theirs, so not shown
        raise Rejected(f"{what} could not be loaded: Python could not unpickle it ({_kind_of_failure(exc)});"
                       f" {SEE}") from None


def _type_name(model: Any) -> str:
    return "".join(ch for ch in type(model).__name__ if ch.isalnum() or ch == "_")[:60] or "?"


def _write_converted(onx: Any, target: Path, model: Any) -> dict[str, Any]:
    """Write a converted model and check it exactly as an uploaded ONNX file is checked."""
    target.write_bytes(onx.SerializeToString())
    result = inspect_onnx(target)
    result["converted_from"] = type(model).__name__
    return result


def convert_xgboost(source: Path, target: Path) -> dict[str, Any]:
    """An XGBoost model (a pickled XGBClassifier/XGBRegressor, or XGBoost's own JSON/UBJSON model file)
    converted to ONNX with onnxmltools (its XGBoost converter supports opset 15)."""
    head = source.read_bytes()[:2]
    if head[:1] in (b"{", b"["):  # XGBoost's JSON or UBJSON model file
        import xgboost

        try:
            model = xgboost.Booster(model_file=str(source))
        except xgboost.core.XGBoostError as exc:
            raise Rejected(f"not an XGBoost model file: {str(exc).splitlines()[0][:200]}") from None
        features = model.num_features()
    else:
        model = _unpickle(source, "the uploaded XGBoost pickle")  # before importing xgboost: see convert_sklearn
        import xgboost

        if not isinstance(model, xgboost.XGBModel | xgboost.Booster):
            raise Rejected(f"not an XGBoost model (found {_type_name(model)})")
        features = model.num_features() if isinstance(model, xgboost.Booster) else getattr(model, "n_features_in_",
                                                                                           None)
    if not isinstance(features, int) or features < 1:
        raise Rejected("the XGBoost model does not say how many features it takes (is it fitted?)")
    from onnxmltools.convert import convert_xgboost as to_onnx
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        onx = to_onnx(model, initial_types=[("tensor", FloatTensorType([None, features]))], target_opset=15)
    except Exception as exc:  # onnxmltools raises many kinds for unsupported objectives
        raise Rejected(f"onnxmltools cannot convert this XGBoost model: {_library_message(exc)}") from None
    return _write_converted(onx, target, model)


def convert_sklearn(source: Path, target: Path) -> dict[str, Any]:
    """Unpickle a scikit-learn model (in this limited process only) and convert it to ONNX.

    The converter is imported after the pickle loaded: importing skl2onnx (sklearn, scipy, pandas) takes ~2.5 s of
    CPU, which a pickle that cannot be loaded (a missing module, another Python's pickle, a hostile one) does not
    need, and a model's pickle imports the sklearn modules it names anyway. Its code runs in this process either
    way, before or after the import, so the order changes nothing of what it can do: a module it puts in
    sys.modules, which the import then takes for skl2onnx, does no more than patching the imported converter
    or writing the file and the answer itself did, and the registry trusts neither (handlers._convert checks
    the written file again in a fresh sandbox)."""
    model = _unpickle(source, "the uploaded sklearn pickle")
    try:
        features = getattr(model, "n_features_in_", None)
    except Exception as exc:  # a property of the user's class
        raise Rejected(f"not a fitted scikit-learn model: {_library_message(exc)}") from None
    if not isinstance(features, int):
        raise Rejected("not a fitted scikit-learn model (no n_features_in_)")
    from skl2onnx import convert_sklearn as to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    try:
        onx = to_onnx(model, initial_types=[("tensor", FloatTensorType([None, features]))], options=options,
                      target_opset=17)
    except Exception as exc:  # skl2onnx raises many kinds for unsupported estimators
        raise Rejected(f"skl2onnx cannot convert {_type_name(model)}: {_library_message(exc)}") from None
    return _write_converted(onx, target, model)


INSPECTORS = {"onnx": inspect_onnx, "python": inspect_python, "custom": inspect_custom}
CONVERTERS = {"sklearn": convert_sklearn, "xgboost": convert_xgboost}


def main(argv: list[str]) -> int:
    try:
        if argv[0] == "inspect":
            framework, path = argv[1], Path(argv[2])
            result = INSPECTORS[framework](path)
        elif argv[0] == "convert":
            result = CONVERTERS[argv[1]](Path(argv[2]), Path(argv[3]))
        else:
            raise Rejected(f"unknown command {argv[0]!r}")
    except Rejected as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 0
    except MemoryError:
        print(json.dumps({"ok": False, "limit": "memory",  # not a verdict on the bytes (worker.answer_and_verdict)
                          "error": "the uploaded model could not be checked or converted: it needed more memory"
                                   f" than the registry allows; {SEE}"}))
        return 0
    print(json.dumps({"ok": True, **result}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
