"""set_model's input check (services/monitoring/model_inputs.py): what the registry records of a model's inputs, and
when two versions differ. Before, set_model swapped in a model of other inputs (an ONNX model onto an ML backend's
deployment) and every request to the deployment was then refused."""

from __future__ import annotations

import asyncio
import base64
import json

import pyarrow as pa
import pytest

from services.monitoring import model_inputs
from shared.messages.registry import ResolvedModel


def schema_b64(*fields: pa.Field) -> str:
    return base64.b64encode(pa.schema(list(fields)).serialize().to_pybytes()).decode()


def onnx_field(name: str, value: pa.DataType, shape: list) -> pa.Field:
    """As services/registry/artifacts.py records an ONNX input."""
    arrow = value
    for dim in reversed(shape[1:]):
        arrow = pa.list_(arrow, dim) if isinstance(dim, int) and dim > 0 else pa.list_(arrow)
    return pa.field(name, arrow, metadata={"onnx_shape": json.dumps(shape)})


def resolved(name: str, schema: str | None, sha: str, framework: str = "onnx") -> ResolvedModel:
    return ResolvedModel(model_id=1, name=name, model_version="v-" + name, sha=sha, runtime=framework,
                         framework=framework, input_schema=schema)


CCFRAUD = schema_b64(onnx_field("tensor", pa.float32(), [None, 29]))


def test_the_same_inputs_match_across_float_widths_and_free_dimensions():
    wider = schema_b64(onnx_field("tensor", pa.float64(), [None, 29]))
    free = schema_b64(onnx_field("tensor", pa.float32(), [None, None]))
    ccfraud = model_inputs.from_schema(CCFRAUD)
    assert ccfraud == {"tensor": ("float", (29,))}
    assert model_inputs.differences(ccfraud, model_inputs.from_schema(wider)) == []
    assert model_inputs.differences(ccfraud, model_inputs.from_schema(free)) == []


def test_a_float_model_takes_an_integer_models_inputs_and_not_the_other_way():
    """The engine casts integers for a floating-point input (column_to_tensor) and refuses fractions for an integer
    one: an integer model's callers are served by a float model, a float model's are not by an integer one."""
    integer = model_inputs.from_schema(schema_b64(onnx_field("tensor", pa.int64(), [None, 29])))
    assert model_inputs.differences(integer, model_inputs.from_schema(CCFRAUD)) == []
    assert model_inputs.differences(model_inputs.from_schema(CCFRAUD), integer) != []


def test_the_gateway_waits_for_the_builtin_orchestrations_upload():
    """setup_continuous_training's route (gateway) counts the upload's extra wait monitoring gives it: the two
    constants are kept equal here (the gateway does not import monitoring)."""
    from services.gateway import monitoring_continuous
    from services.monitoring import ml_backend

    assert monitoring_continuous.REGISTER_EXTRA == ml_backend.REGISTER_EXTRA


@pytest.mark.parametrize(("other", "said"), [
    (schema_b64(onnx_field("image", pa.float32(), [None, 29])), ["it does not take ['tensor']",
                                                                 "it takes ['image'], which"]),
    (schema_b64(onnx_field("tensor", pa.float32(), [None, 30])), ["'tensor' is float[30] where the deployment's "
                                                                  "model takes float[29]"]),
    (schema_b64(onnx_field("tensor", pa.float32(), [None, 29, 3])), ["'tensor' is float[29, 3]"]),
    (schema_b64(onnx_field("tensor", pa.int64(), [None, 29])), ["'tensor' is integer[29]"]),
    (schema_b64(onnx_field("tensor", pa.float32(), [None, 29]), onnx_field("mask", pa.bool_(), [None])),
     ["it takes ['mask'], which the deployment's model does not"]),
])
def test_other_inputs_are_named(other, said):
    found = model_inputs.differences(model_inputs.from_schema(CCFRAUD), model_inputs.from_schema(other))
    assert len(found) == len(said) and all(f.startswith(s) for f, s in zip(found, said, strict=True)), found


def test_check_refuses_a_different_model_and_one_whose_inputs_are_unknown():
    current = resolved("ccfraud", CCFRAUD, "a" * 64)
    image = resolved("images", schema_b64(onnx_field("image", pa.float32(), [None, 3, 8, 8])), "b" * 64)
    with pytest.raises(model_inputs.IncompatibleModel) as refused:
        asyncio.run(model_inputs.check(None, current, image, "set_model", "do this instead"))
    assert refused.value.status == 400 and refused.value.code == "incompatible_model"
    assert "'images' version v-images" in refused.value.msg and "'tensor' (float[29])" in refused.value.msg
    assert refused.value.msg.endswith("do this instead")
    # a Python step or a bring-your-own-predict model without input_schema swapped in for a model whose inputs are
    # known: it cannot be checked, so it is refused too (session 30; it was swapped in unchecked)
    python = resolved("step", None, "c" * 64, framework="python")
    custom = resolved("byop", None, "e" * 64, framework="custom")
    for unknown, kind in ((python, "a Python step"), (custom, "a bring-your-own-predict model")):
        with pytest.raises(model_inputs.UnknownInputs) as refused:
            asyncio.run(model_inputs.check(None, current, unknown, "set_model", "do this instead"))
        assert refused.value.status == 400 and refused.value.code == "model_inputs_unknown"
        assert isinstance(refused.value, model_inputs.IncompatibleModel)  # a delivery fails on it as on a difference
        assert f"({kind}) has no recorded inputs" in refused.value.msg and "'tensor' (float[29])" in refused.value.msg
        assert "input_schema" in refused.value.msg and refused.value.msg.endswith("do this instead")
    # the same version with its inputs declared at upload: compared as any other
    declared = resolved("step", CCFRAUD, "c" * 64, framework="python")
    asyncio.run(model_inputs.check(None, current, declared, "set_model", ""))
    # over a model whose inputs are not known, anything goes (nothing says what its callers send)
    asyncio.run(model_inputs.check(None, python, image, "set_model", ""))
    asyncio.run(model_inputs.check(None, python, custom, "set_model", ""))
    asyncio.run(model_inputs.check(None, current, resolved("ccfraud", CCFRAUD, "d" * 64), "set_model", ""))


class Artifacts:
    """A stand-in object store holding one zip (the ML backend package's index is read by ranges)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def size(self, bucket: str, key: str) -> int:
        return len(self.data)

    def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


def test_an_ml_backend_takes_task_and_an_onnx_model_does_not():
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("backend/railyard-ml.json", "{}")
    backend = resolved("colors", None, "e" * 64, framework="custom")
    objects = Artifacts(buffer.getvalue())
    assert asyncio.run(model_inputs.inputs_of(objects, backend)).columns == {"task": ("text", ())}
    with pytest.raises(model_inputs.IncompatibleModel, match=r"an ML backend .*'task' \(text\).*it does not take "
                                                             r"\['task'\]"):
        asyncio.run(model_inputs.check(objects, backend, resolved("ccfraud", CCFRAUD, "a" * 64), "set_model", ""))
    # another backend package (a trained version of it): the same input
    asyncio.run(model_inputs.check(objects, backend, resolved("colors", None, "f" * 64, "custom"), "set_model", ""))


class FailingStore:
    """An object store that does not answer (every call raises, as minio does when S3 is down)."""

    async def size(self, bucket: str, key: str) -> int:
        raise OSError("connection refused")

    def read_range_sync(self, bucket: str, key: str, offset: int, length: int) -> bytes:
        raise OSError("connection refused")


class ReadFailingStore(FailingStore):
    """One whose stat answers and whose ranged reads fail (the zip reader turned that into "not a package")."""

    async def size(self, bucket: str, key: str) -> int:
        return 4096


def test_a_store_that_cannot_be_read_is_a_503_not_unknown_inputs():
    """A bring-your-own-predict version without input_schema swapped in while the object store fails: whether it is
    an ML backend (its inputs known) cannot be told, so 503 to retry, not 400 model_inputs_unknown "uploaded without
    input_schema" (which a continuous deployment's delivery failed with for good)."""
    from services.monitoring.ml_backend import PackageUnreadable

    current = resolved("ccfraud", CCFRAUD, "a" * 64)
    custom = resolved("byop", None, "e" * 64, framework="custom")
    for store in (FailingStore(), ReadFailingStore()):
        with pytest.raises(PackageUnreadable) as unavailable:
            asyncio.run(model_inputs.check(store, current, custom, "set_model", "do this instead"))
        assert unavailable.value.status == 503 and unavailable.value.code == "unavailable"
        assert not isinstance(unavailable.value, model_inputs.IncompatibleModel)
        # the served model's own package unreadable: the same
        with pytest.raises(PackageUnreadable):
            asyncio.run(model_inputs.check(store, custom, current, "set_model", ""))
