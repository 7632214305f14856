"""Whether a model version takes the inputs a deployment's model takes, before monitoring swaps it in.

set_model, set_shadow_model and continuous deployment's delivery (DEPLOY_AUTO, DEPLOY_SHADOW) put another model
version in a deployment's model step under the same name and URL: its callers go on sending what the served model
takes. A version that takes other inputs would answer every request 400 (the engine's "the model takes columns ..."),
so the swap is refused first (400 incompatible_model, nothing created or deployed).

A version's inputs are what the registry records (`ResolvedModel.input_schema`: an Arrow schema, one field per input,
its ONNX shape in the field's `onnx_shape` metadata), or, for an ML backend package (`railyard-ml deploy railyard`),
its one column `task` (a Label Studio task as JSON, ml_backend_predictions.TASK_COLUMN). Two versions match when they
name the same inputs, each of the same kind of value (floating point, integer, boolean, text: the engine casts within
a kind, e.g. float64 numbers for a float32 input, and integers for a floating-point one, not the other way), of the
same rank, and of the same size in every dimension both fix (a dimension one leaves free takes what the other fixes).
A version whose inputs are not known (a Python step, a bring-your-own-predict model uploaded without input_schema)
cannot be compared: swapped in for a model whose inputs are known (what the callers send), it is refused too (400
model_inputs_unknown: upload it with input_schema, which seed 001 asks of every non-native runtime, or deploy a
pipeline that feeds it); before 2026-12-05 (session 30) it was swapped in unchecked. Over a model whose inputs are
not known, anything goes: nothing says what its callers send, and refusing would hold the deployment to such models.
ONNX models always have theirs: the registry reads them at upload (artifacts.inspect_onnx, refusing a model whose
inputs it cannot read) and again from a converted file. A `custom` version's package that cannot be read (the object
store failing) is a 503 to retry (ml_backend.PackageUnreadable), not a version of unknown inputs.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from services.monitoring.ml_backend import BACKEND_CONFIG, holds_backend_config
from shared.errors import InvalidRequest

if TYPE_CHECKING:
    from shared.messages.registry import ResolvedModel

INCOMPATIBLE_MODEL = "incompatible_model"
MODEL_INPUTS_UNKNOWN = "model_inputs_unknown"
FRAMEWORKS = {"onnx": "an ONNX model", "custom": "a bring-your-own-predict model",  # how a message names them
              "python": "a Python step"}
BACKEND_INPUTS = {"task": ("text", ())}  # an ML backend's step takes one column: a Label Studio task as JSON


class IncompatibleModel(InvalidRequest):
    """The model version takes inputs other than the deployment's model: swapping it in would fail every request."""

    code = INCOMPATIBLE_MODEL


class UnknownInputs(IncompatibleModel):
    """The model version's inputs are not recorded, the deployment's model's are: whether it takes what the callers
    send cannot be told (an IncompatibleModel, so a continuous deployment's delivery fails on it the same way)."""

    code = MODEL_INPUTS_UNKNOWN


@dataclass(frozen=True)
class Inputs:
    """A model version's inputs: name -> (kind, dimensions after the row's, None where free), and how to name it."""

    columns: dict[str, tuple[str, tuple[int | None, ...]]]
    what: str  # e.g. "an ML backend", "an ONNX model"


def _kind(value_type: pa.DataType) -> str:
    if pa.types.is_floating(value_type):
        return "float"
    if pa.types.is_integer(value_type):
        return "integer"
    if pa.types.is_boolean(value_type):
        return "boolean"
    if pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
        return "text"
    return str(value_type)


def _column(field: pa.Field) -> tuple[str, tuple[int | None, ...]]:
    """A schema field as (kind, dimensions after the row's): its ONNX shape when the registry recorded one, else the
    nesting of its list types (a fixed-size list fixes its dimension)."""
    value_type, dims = field.type, []
    while pa.types.is_list(value_type) or pa.types.is_large_list(value_type) or pa.types.is_fixed_size_list(
            value_type):
        dims.append(value_type.list_size if pa.types.is_fixed_size_list(value_type) else None)
        value_type = value_type.value_type
    shape = (field.metadata or {}).get(b"onnx_shape")
    if shape is not None:
        try:
            recorded = json.loads(shape)
        except ValueError:
            recorded = None
        if isinstance(recorded, list) and len(recorded) == len(dims) + 1:
            dims = [d if isinstance(d, int) and d > 0 else None for d in recorded[1:]]
    return _kind(value_type), tuple(dims)


def from_schema(input_schema: str) -> dict[str, tuple[str, tuple[int | None, ...]]] | None:
    """The inputs of a registry's base64 Arrow input schema (None when it does not read as one)."""
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(input_schema)))
    except (ValueError, TypeError, pa.ArrowException):
        return None
    return {field.name: _column(field) for field in schema}


async def inputs_of(objects: Any, resolved: ResolvedModel) -> Inputs | None:
    """What `resolved` takes, or None when that is not known (not compared); ml_backend.PackageUnreadable (503,
    retry) when a `custom` version's package could not be read to tell whether it is an ML backend."""
    if resolved.input_schema:
        columns = from_schema(resolved.input_schema)
        if columns is not None:
            return Inputs(columns, FRAMEWORKS.get(resolved.framework, f"a {resolved.framework} model"))
    if resolved.framework == "custom" and objects is not None and resolved.sha:
        # PackageUnreadable (503) when the store fails: before, that read as "not a package", so an ML backend with
        # no input_schema was refused 400 model_inputs_unknown ("uploaded without input_schema"), for good
        if await holds_backend_config(objects, resolved.sha):
            return Inputs(dict(BACKEND_INPUTS), f"an ML backend ({BACKEND_CONFIG} in its package)")
    return None


def _shown(column: tuple[str, tuple[int | None, ...]]) -> str:
    kind, dims = column
    return kind + (f"[{', '.join('?' if d is None else str(d) for d in dims)}]" if dims else "")


def _takes(kind: str, new_kind: str) -> bool:
    """Whether an input of `new_kind` takes what callers send an input of `kind`: the same kind, or integers for a
    floating-point input, which the engine casts (services/engine/runtimes.py column_to_tensor: JSON has one number
    type). Not floats for an integer input: a fraction is refused there, so a float model's callers would be."""
    return kind == new_kind or (kind, new_kind) == ("integer", "float")


def differences(current: dict[str, tuple[str, tuple[int | None, ...]]],
                new: dict[str, tuple[str, tuple[int | None, ...]]]) -> list[str]:
    """How `new`'s inputs differ from `current`'s (empty: it takes what `current` takes)."""
    found = []
    missing, extra = sorted(set(current) - set(new)), sorted(set(new) - set(current))
    if missing:
        found.append(f"it does not take {missing}")
    if extra:
        found.append(f"it takes {extra}, which the deployment's model does not")
    for name in sorted(set(current) & set(new)):
        (kind, dims), (new_kind, new_dims) = current[name], new[name]
        if not _takes(kind, new_kind) or len(dims) != len(new_dims) or any(
                a is not None and b is not None and a != b for a, b in zip(dims, new_dims, strict=True)):
            found.append(f"{name!r} is {_shown(new[name])} where the deployment's model takes {_shown(current[name])}")
    return found


def _label(resolved: ResolvedModel) -> str:
    return f"{resolved.name!r} version {resolved.model_version}"


async def check(objects: Any, current: ResolvedModel, new: ResolvedModel, what: str, remedy: str) -> None:
    """IncompatibleModel when `new` takes other inputs than `current` (the deployment's model), both known;
    UnknownInputs when `current`'s are known and `new`'s are not. `what` names the change (e.g. "set_model"),
    `remedy` what to do instead."""
    if current.sha == new.sha:
        return  # the same artifact (sha256) takes the same inputs
    current_inputs = await inputs_of(objects, current)
    if current_inputs is None:
        return  # what the callers send is not known: nothing to hold the new version to
    takes = ", ".join(f"{name!r} ({_shown(column)})" for name, column in sorted(current_inputs.columns.items()))
    new_inputs = await inputs_of(objects, new)
    if new_inputs is None:
        kind = FRAMEWORKS.get(new.framework, f"a {new.framework} model")
        raise UnknownInputs(
            f"{what}: model {_label(new)} ({kind}) has no recorded inputs (uploaded without input_schema), so "
            f"whether it takes the inputs of the deployment's model {_label(current)} ({current_inputs.what}, inputs "
            f"{takes}) cannot be checked, and if it does not, every request sent to the deployment would be "
            "refused; nothing was changed. Upload the version again with input_schema (an Arrow schema of the "
            "inputs it takes, base64; SDK: upload_model(..., input_schema=pyarrow schema)) so it is checked, or "
            f"{remedy}")
    found = differences(current_inputs.columns, new_inputs.columns)
    if not found:
        return
    raise IncompatibleModel(
        f"{what}: model {_label(new)} ({new_inputs.what}) does not take the inputs of the deployment's model "
        f"{_label(current)} ({current_inputs.what}, inputs {takes}): {'; '.join(found)}. Every request sent to the "
        f"deployment would be refused, so nothing was changed; {remedy}")
