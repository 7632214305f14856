"""Model runtimes of the engine. Every runtime follows one lifecycle: `load()`, then
`predict(batch: pa.Table) -> pa.Table` any number of times, then `unload()`; `ready` tells whether it is loaded.
"""

from __future__ import annotations

import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from shared.arrow_codec import rows_words, tensor_array
from shared.errors import InvalidRequest
from shared.traceback_paths import BYOP_FOLDER, named_files, shown_file  # noqa: F401 - shown_file: the engine's name

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


def tensor_parts(name: str, array: pa.Array) -> tuple[pa.Array, list[int]]:
    """The flat element values of a column of (nested) list tensors and the shape of one row's tensor."""
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
    return values, shape


def column_to_tensor(name: str, column: pa.ChunkedArray | pa.Array, dims: list, dtype,
                     refuse_booleans: bool = True) -> np.ndarray:
    """An Arrow column of (nested) lists or scalars as an [N, ...] numpy array of the model's dtype, or
    InvalidRequest naming the column. `refuse_booleans`: the request's values (the first step's): booleans for a
    numeric input are refused, and values an integer input cannot hold exactly (_check_integers); else (what an
    earlier step of the pipeline made: OnnxRuntime.refuse_booleans) booleans are cast to 1/0 and numbers by numpy's
    cast, as before."""
    try:
        return _column_to_tensor(name, column, dims, dtype, refuse_booleans)
    except (pa.ArrowException, ValueError, TypeError):  # a union (no numpy form, no concatenation), a time of day
        raise InvalidRequest(f"column {name!r}: {column.type} values are not a tensor a model takes") from None


def _column_to_tensor(name: str, column: pa.ChunkedArray | pa.Array, dims: list, dtype,
                      refuse_booleans: bool = True) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    values, shape = tensor_parts(name, array)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        raise InvalidRequest(f"column {name!r}: strings where the model expects numbers")
    if values.null_count:
        raise InvalidRequest(f"column {name!r}: null values")
    # a boolean tensor for a numeric input is refused, as onnxruntime, Triton and MLServer refuse it: numpy's cast
    # would feed true/false as 1/0 and log a bool tensor the model never took. Integers for a float input are cast
    # (JSON has one number type); a bool input takes booleans only (below). Once per column, not per value.
    if refuse_booleans and pa.types.is_boolean(values.type) and dtype is not np.bool_:
        raise InvalidRequest(f"column {name!r}: booleans (true/false) where the model expects "
                             f"{np.dtype(dtype).name} numbers; send numbers (1.0 and 0.0 if that is what you mean)")
    flat = values.to_numpy(zero_copy_only=False)
    if flat.dtype.kind not in "biuf":  # before the shape: a struct, map or list view is no scalar of a wrong shape
        raise InvalidRequest(f"column {name!r}: {str(values.type)[:200]} values are not a tensor a model takes; send "
                             "numbers, or lists (fixed-size lists) of them")
    expected = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape, strict=False)):
        want = "x".join(str(e) if e else "?" for e in expected) or "a scalar"
        got = "x".join(str(s) for s in shape) or "a scalar"
        raise InvalidRequest(f"column {name!r}: the model expects tensors of shape {want}, got {got}")
    tensor = flat.reshape([rows, *shape])
    if dtype is np.bool_ and tensor.dtype != np.bool_:
        raise InvalidRequest(f"column {name!r}: the model expects booleans")
    target = np.dtype(dtype)
    if refuse_booleans and target.kind in "iu" and tensor.dtype != target and tensor.size \
            and not np.can_cast(tensor.dtype, target):  # the request's values (a later step's: cast, as before)
        _check_integers(name, tensor, target)
    return tensor.astype(dtype, copy=False)


def non_finite_rows(tensor: np.ndarray, shown: int = 5) -> str:
    """The words " in row 3" or " in rows 0, 4 and 7 (and 2 more)", with "(counted from 0)": the rows (the tensor's
    first axis: the request's rows, counted as in its JSON list) holding a NaN or infinity. A JSON body's refusal
    named the column only, and only the SDK's DataFrame and Arrow paths found the rows (client-side); a request that
    failed a shared batch is run alone, so these are its own rows. Empty for a tensor with no row axis."""
    return rows_words(_non_finite_at(tensor), shown)


def _non_finite_at(tensor: np.ndarray) -> np.ndarray:
    """The positions of the rows (first axis) holding a NaN or infinity; none for a tensor with no row axis."""
    if tensor.ndim == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(~np.isfinite(tensor.reshape(len(tensor), -1)).all(axis=1))


class NonFiniteValues(InvalidRequest):
    """OnnxRuntime.predict's refusal of NaN or infinity, naming the rows of the table the model was given. After a
    step that changed the number of rows (a Python step's filter or expansion) those are not the request's rows:
    the replica then says whose they are (`after_step`, Replica.run)."""

    def __init__(self, column: str, rows: np.ndarray, of: str = "", note: str = "") -> None:
        super().__init__(f"column {column!r}: NaN or infinite values{rows_words(rows, of=of, note=note)}")
        self.column, self.rows = column, rows

    def for_request(self, previous: dict[str, Any] | None, step_rows: int, request_rows: int) -> NonFiniteValues:
        """The refusal as the request's caller reads it, raised by a model given `step_rows` rows, `previous` the
        model of the step before (None: the model is the first step's): itself when those are the request's rows
        (every step before kept their number), else one saying they are of the `step_rows` rows that step returned:
        "... in rows 0 and 2 of the 4 rows step 'prep' returned (counted from 0; the request had 3)". Both ways a
        pipeline runs (Replica.run, handlers.run_awaiting_workers) say it."""
        if previous is None or step_rows == request_rows:
            return self
        of = f" of the {step_rows} row{'s' * (step_rows != 1)} step {str(previous['name'])!r} returned"
        return NonFiniteValues(self.column, self.rows, of, f"; the request had {request_rows}")


def _check_integers(name: str, tensor: np.ndarray, target: np.dtype) -> None:
    """Values for an integer model input that its type cannot hold exactly are refused, not cast: numpy's cast
    made 1.5 a 1, NaN and 1e300 -2**63, and wrapped an integer past the type's range (2**40 for int32 is 0), so the
    model got a value the client never sent. Only when the column's type is not safely cast (floats, wider or
    unsigned-to-signed integers): an int64 column for an int64 input costs nothing."""
    info = np.iinfo(target)
    if tensor.dtype.kind == "f":
        if not np.isfinite(tensor).all():
            raise InvalidRequest(f"column {name!r}: NaN or infinite values{non_finite_rows(tensor)} where the model "
                                 f"expects {target.name} integers")
        fractions = tensor != np.trunc(tensor)
        if fractions.any():
            example = float(tensor[fractions].flat[0])
            raise InvalidRequest(f"column {name!r}: a number with a fraction ({example!r}) where the model expects "
                                 f"{target.name} integers; send whole numbers")
        low, high = float(tensor.min()), float(tensor.max())
        outside = low < float(info.min) or high >= float(info.max) + 1  # info.max + 1 and info.min: powers of two
    else:
        low, high = int(tensor.min()), int(tensor.max())
        outside = low < info.min or high > info.max
    if outside:
        value = low if low < info.min else high
        raise InvalidRequest(f"column {name!r}: a value ({value!r}) outside the range of {target.name} the model "
                             f"expects ({info.min} to {info.max})")


NARROW = (np.float32, np.float16, np.float64)


def narrowing(runtimes: list, keep: frozenset[str] = frozenset()) -> dict[str, pa.DataType]:
    """The columns a step's models take as a float type, as {column: float32, float16 or float64}: a column every
    model of the step (ONNX, all of them: a challenger or an A/B arm included) takes as the same float type.
    A JSON request's numbers arrive as float64 (the records typing rules) and each model call cast them anyway;
    cast once when the request arrives, the bus, the model call and the inference log carry what the models
    consume, at half the bytes (docs/logs.md, "Types"). An integer column for such an input (JSON integers, an
    Arrow int64 column, an OIP INT64 tensor) is cast the same way (arrow_codec.narrow), so the log holds one tensor
    type whether a client wrote 1 or 1.0, not int64 pages among float32 (or float64) ones; a float64 column for a
    float64 input is left as it is, and an integer narrower than the float type (uint8 pixels, an int32 for
    float64) stays as sent (arrow_codec.narrows). Columns in `keep` stay as sent: an
    A/B split's hash key, whose value as sent picks the arm (0.11 narrowed prints as 0.10999999940395355 and
    would move the request)."""
    if not runtimes or not all(isinstance(r, OnnxRuntime) for r in runtimes):
        return {}
    taken: dict[str, set] = {}
    for runtime in runtimes:
        for name, _, dtype in runtime.inputs:
            taken.setdefault(name, set()).add(dtype)
    found = {}
    for name, dtypes in taken.items():
        (dtype,) = dtypes if len(dtypes) == 1 else (None,)
        if name not in keep and dtype in NARROW and all(name in {n for n, _, _ in r.inputs} for r in runtimes):
            found[name] = pa.from_numpy_dtype(dtype)
    return found


def tensor_inputs(runtimes: list, keep: frozenset[str] = frozenset()) -> frozenset[str]:
    """The columns every model of a step (ONNX, all of them) takes as a tensor (an input of rank 2 or more): a list
    column of one shape for them becomes fixed-size lists on arrival (arrow_codec.fixed_shapes), the type the
    pandas-records reader makes of the same rows, so the log holds one type per input whatever the request's
    format (an Arrow table of Python lists is `list<double>`). The model takes either type alike (tensor_parts).
    Columns in `keep` (an A/B split's hash key) stay as sent, as in `narrowing`."""
    if not runtimes or not all(isinstance(r, OnnxRuntime) for r in runtimes):
        return frozenset()
    found = None
    for runtime in runtimes:
        names = {name for name, dims, _ in runtime.inputs if len(dims) >= 2}
        found = names if found is None else found & names
    return frozenset(found - keep)


class OnnxRuntime:
    """An ONNX model in an onnxruntime session."""

    def __init__(self, path: Path, threads: int = 1, refuse_booleans: bool = True) -> None:
        self.path = path
        self.threads = threads
        # booleans for a numeric input refused: what a request sends to the first step. A later step's input is what
        # the pipeline's own steps made (an ONNX model's bool output, a Python step's `x > 0` column): cast to 1/0,
        # as before the refusal (84b44e2), which answered every request of such a pipeline "send numbers"
        self.refuse_booleans = refuse_booleans
        self.session = None
        self.ready = False
        # the Linux ids of the threads of the session's own pool (threads - 1 of them: the caller is the other),
        # whose CPU replica.Replica.cpu_clock counts with the calling thread's; None: not known (not Linux, or the
        # session made none while it was created), () for a session of one thread
        self.pool_threads: tuple[int, ...] | None = ()

    def load(self) -> None:
        import onnxruntime as ort  # here, not at the top: the sandboxed worker never loads it

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        before = _threads() if self.threads > 1 else set()
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        if self.threads > 1:  # onnxruntime starts a session's pool as it creates it: the threads that appeared
            after = _threads()
            found = tuple(sorted(after - before)) if after is not None and before is not None else ()
            self.pool_threads = found or None
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
            tensor = column_to_tensor(name, batch.column(name), dims, dtype, self.refuse_booleans)
            if tensor.dtype.kind == "f" and not np.isfinite(tensor).all():
                raise NonFiniteValues(name, _non_finite_at(tensor))
            feeds[name] = tensor
        outputs = self.session.run(self.output_names, feeds)
        columns = [tensor_array(np.asarray(o)) if np.asarray(o).ndim > 1 else pa.array(np.asarray(o))
                   for o in outputs]
        result = pa.Table.from_arrays(columns, names=self.output_names)
        if result.num_rows != batch.num_rows:
            raise InvalidRequest(f"the model returned {result.num_rows} rows for {batch.num_rows} (equal rows rule)")
        return result

    def warm_up(self) -> None:
        """One call on zeros (a row of each input's shape, 1 for a dimension the model leaves open), its answer and
        any failure dropped: the session's first call does one-time set-up (6.7-14.7 ms of CPU in a new replica,
        ccfraud, against ~0.1 ms after), which replica.Replica.load has done here, in a thread, before serving, so
        that the first request's measured call is the model's (docs/performance.md item 108). Before 2026-12-06 the
        first request's call read slow and kept the replica's next 35-77 runs in a thread (replica.ModelCost)."""
        try:
            columns = {}
            for name, dims, dtype in self.inputs:
                if dtype is None:
                    return  # a type the engine does not feed: no request reaches the model either
                shape = [1] + [d if isinstance(d, int) and d > 0 else 1 for d in list(dims or [None])[1:]]
                zeros = np.zeros(shape, dtype)
                columns[name] = tensor_array(zeros) if zeros.ndim > 1 else pa.array(zeros)
            self.predict(pa.table(columns))
        except Exception:  # noqa: BLE001, S110 - a model refusing zeros is warmed by its first request, as before
            pass

    def unload(self) -> None:
        self.session = None
        self.ready = False


def _threads() -> set[int] | None:
    """The Linux ids of this process's threads (None: no /proc, not Linux)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except (OSError, ValueError):
        return None


RESOURCE_LIMIT = "resource_limit"  # the code of a user's error that was a sandbox limit (its worker is replaced)


USERS_MESSAGE_CHARS = 200  # of the user's exception text in a request's error (the stderr excerpt follows it)


def users_code_failed(what: str, exc: BaseException) -> InvalidRequest:
    """The error a request gets when the user's code raised: a sentence written by Railyard naming the exception
    type, then what the exception says (the tenant's own code's words, on one line, at most USERS_MESSAGE_CHARS
    characters: a step refusing its input says why, not only "it raised ValueError"); the traceback goes to the
    worker's stderr, of which the replica adds a bounded excerpt."""
    import errno

    written = "".join(traceback.format_exception(type(exc), exc, _users_frames(exc.__traceback__)))
    sys.stderr.write(named_files(written))
    sys.stderr.flush()
    if isinstance(exc, MemoryError):
        return InvalidRequest(f"{what}: it exceeded its memory limit", code=RESOURCE_LIMIT)
    # a refused fork raises BlockingIOError (EAGAIN); a refused thread, Python's RuntimeError with these words
    if (isinstance(exc, OSError) and exc.errno == errno.EAGAIN) or (
            isinstance(exc, RuntimeError) and exc.args == ("can't start new thread",)):  # no user's __str__ run
        return InvalidRequest(f"{what}: it exceeded its process limit (a fork or thread failed)",
                              code=RESOURCE_LIMIT)
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return InvalidRequest(f"{what}: it exceeded its file size limit", code=RESOURCE_LIMIT)
    said = _users_words(exc)
    return InvalidRequest(f"{what}: it raised {type(exc).__name__}" + (f": {said}" if said else ""))


# services/: these runtimes, the compat `mac`; as imported (a frame's file) and resolved (a symlinked checkout)
PLATFORM_CODE = tuple({str(Path(__file__).parents[1]) + os.sep, str(Path(__file__).resolve().parents[1]) + os.sep})


def _users_frames(frames: types.TracebackType | None) -> types.TracebackType | None:
    """A traceback from the user's first frame on: the frames of the platform that called their code (this
    module, services/engine/compat's `mac`, the import machinery loading a script) are internals a client's error
    must not show (the replica puts the traceback's end in it: sandboxed._with_excerpt)."""
    while frames is not None and frames.tb_frame.f_code.co_filename.startswith((*PLATFORM_CODE, "<frozen importlib")):
        frames = frames.tb_next
    return frames


def _users_words(exc: BaseException) -> str:
    """str(exc) on one line, cut to USERS_MESSAGE_CHARS, an OSError's or ImportError's file named as the traceback
    names it (named_files); "" when it says nothing or its __str__ raises (the user's class)."""
    try:
        raw = named_files(str(exc))
    except Exception:  # noqa: BLE001 - the user's __str__: whatever it raises, the type is still named
        return ""
    text = " ".join(raw[:4 * USERS_MESSAGE_CHARS].split())  # the head only: a text of megabytes is not split
    if len(text) <= USERS_MESSAGE_CHARS and len(raw) <= 4 * USERS_MESSAGE_CHARS:
        return text
    return f"{text[:USERS_MESSAGE_CHARS]}... ({len(raw)} characters)"


class PythonStepRuntime:
    """A Python step: a script whose `wallaroo_json(data: pandas.DataFrame)` returns a DataFrame, a list of
    row objects or a dict of columns. It runs in the engine's sandboxed worker (services/engine/worker.py),
    never in the replica process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entry = None
        self.ready = False
        self.inputs: list = []

    def load(self) -> None:
        namespace: dict = {"__name__": "railyard_python_step"}
        try:
            code = compile(self.path.read_bytes(), f"<python step {self.path.name[:12]}>", "exec")
            exec(code, namespace)  # noqa: S102 - running the user's step is this runtime's purpose
        except Exception as exc:
            raise users_code_failed("the Python step failed to load", exc) from None
        self.entry = namespace.get("wallaroo_json")
        if not callable(self.entry):
            raise InvalidRequest("the Python step has no callable wallaroo_json(data)")
        self.ready = True

    def predict(self, batch: pa.Table) -> pa.Table:
        from services.engine.step_tables import step_output

        try:
            result = self.entry(batch.to_pandas())
        except Exception as exc:  # the user's code failed: say how, without its internals
            raise users_code_failed("the Python step failed", exc) from None
        return step_output(result)  # a DataFrame, a list of row objects or a dict of columns, as a table

    def unload(self) -> None:
        self.entry = None
        self.ready = False


COMPAT = Path(__file__).parent / "compat"


def _check_requirements(path: Path) -> None:
    """Every line of requirements.txt must already be installed in the engine's environment (nothing is
    downloaded when a model loads); the first that is not is named."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    for line in path.read_text(errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise InvalidRequest(f"requirements.txt: cannot read {line!r}") from None
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            raise InvalidRequest(f"requirements.txt needs {requirement.name}, which is not installed where the "
                                 "engine runs (install it in the engine's environment)") from None
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            raise InvalidRequest(f"requirements.txt needs {line}; the engine has {requirement.name} {installed}")


def table_to_inference_data(batch: pa.Table) -> dict[str, np.ndarray]:
    """Columns as numpy arrays, rows first: tensors as [N, ...] arrays (strings as object arrays)."""
    data: dict[str, np.ndarray] = {}
    for name in batch.column_names:
        column = batch.column(name).combine_chunks()
        values, shape = tensor_parts(name, column)
        data[name] = values.to_numpy(zero_copy_only=False).reshape([len(column), *shape])
    return data


def inference_data_to_table(data: dict[str, np.ndarray], rows: int) -> pa.Table:
    columns, names = [], []
    for name, value in data.items():
        array = np.asarray(value)
        if array.ndim == 0 or len(array) != rows:
            raise InvalidRequest(f"the model returned {len(array) if array.ndim else 0} rows of {name!r} for {rows}"
                                 " (equal rows rule)")
        columns.append(tensor_array(array) if array.ndim > 1 else pa.array(array.tolist() if array.dtype == object
                                                                            else array))
        names.append(str(name))
    return pa.Table.from_arrays(columns, names=names)


class ByopRuntime:
    """Bring your own predict: a zip of scripts, artifacts and requirements.txt whose classes extend
    `mac.inference.Inference` and `mac.inference.creation.InferenceBuilder` (services/engine/compat has our
    `mac`). Unpacked once next to the artifact cache, its builder creates the Inference with
    `model_path` set to the folder holding requirements.txt; it runs in the engine's sandboxed worker
    (services/engine/worker.py), never in the replica process."""

    def __init__(self, path: Path, work_dir: Path) -> None:
        self.path = path
        self.work_dir = work_dir
        self.inference = None
        self.ready = False
        self.inputs: list = []

    def _unpack(self) -> Path:
        import shutil
        import zipfile

        target = self.work_dir / f"{self.path.name}{BYOP_FOLDER}"
        if not (target / ".complete").exists():
            partial = self.work_dir / f"{self.path.name}.byop.{os.getpid()}.part"
            shutil.rmtree(partial, ignore_errors=True)
            with zipfile.ZipFile(self.path) as archive:
                for info in archive.infolist():
                    destination = (partial / info.filename).resolve()
                    if not destination.is_relative_to(partial.resolve()):
                        raise InvalidRequest(f"archive entry {info.filename!r} is outside the model's folder")
                archive.extractall(partial)
            (partial / ".complete").touch()
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        found = sorted(target.rglob("requirements.txt"), key=lambda p: len(p.parts))
        if not found:
            raise InvalidRequest("the archive has no requirements.txt")
        return found[0].parent

    def load(self) -> None:
        import importlib.util
        import inspect

        folder = self._unpack()
        _check_requirements(folder / "requirements.txt")
        for extra in (str(COMPAT), str(folder)):
            if extra not in sys.path:
                sys.path.insert(0, extra)
        from mac.config.inference import CustomInferenceConfig
        from mac.inference.creation import InferenceBuilder

        builders = []
        for script in sorted(folder.rglob("*.py")):
            module_name = f"railyard_byop_{self.path.name[:12]}_{script.stem}"
            spec = importlib.util.spec_from_file_location(module_name, script)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                raise users_code_failed(f"{script.name} failed to load", exc) from None
            builders += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                         if issubclass(obj, InferenceBuilder) and obj is not InferenceBuilder
                         and not inspect.isabstract(obj) and obj.__module__ == module_name]
        if not builders:
            raise InvalidRequest("no concrete class extends InferenceBuilder in the archive")
        try:
            self.inference = builders[0]().create(CustomInferenceConfig(model_path=folder))
        except Exception as exc:
            raise users_code_failed("the InferenceBuilder failed", exc) from None
        self.ready = True

    def predict(self, batch: pa.Table) -> pa.Table:
        data = table_to_inference_data(batch)
        try:
            output = self.inference.predict(data)
        except Exception as exc:  # the user's code failed: say how, without its internals
            raise users_code_failed("the model failed", exc) from None
        return inference_data_to_table(output, batch.num_rows)

    def unload(self) -> None:
        self.inference = None
        self.ready = False
