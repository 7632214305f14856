"""A JSON request's float64 columns are cast once, on arrival in the replica, to the float type every model of the
first step takes (services/engine/runtimes.py: narrowing, narrow): the model call, the bus and the inference log
then carry float32, as the model consumes it, instead of twice the bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from onnx import TensorProto, helper

from services.engine.runtimes import OnnxRuntime, narrowing
from shared.arrow_codec import narrow, tensor_array
from tests.models import ccfraud_onnx


def _identity_onnx(name: str, kind: int) -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "identity",
                              [helper.make_tensor_value_info(name, kind, [None, 29])],
                              [helper.make_tensor_value_info("y", kind, [None, 29])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _runtime(tmp_path, name: str, data: bytes) -> OnnxRuntime:
    path = tmp_path / name
    path.write_bytes(data)
    runtime = OnnxRuntime(path)
    runtime.load()
    return runtime


@pytest.fixture
def ccfraud(tmp_path):
    return _runtime(tmp_path, "ccfraud.onnx", ccfraud_onnx())


def test_a_column_every_model_takes_as_float32_is_narrowed(tmp_path, ccfraud):
    assert narrowing([ccfraud]) == {"tensor": pa.float32()}
    twin = _runtime(tmp_path, "twin.onnx", _identity_onnx("tensor", TensorProto.FLOAT))
    assert narrowing([ccfraud, twin]) == {"tensor": pa.float32()}  # a challenger or A/B arm of the same type


def test_models_that_disagree_or_take_other_columns_or_run_code_narrow_nothing(tmp_path, ccfraud):
    doubles = _runtime(tmp_path, "doubles.onnx", _identity_onnx("tensor", TensorProto.DOUBLE))
    other = _runtime(tmp_path, "other.onnx", _identity_onnx("features", TensorProto.FLOAT))
    assert narrowing([doubles]) == {"tensor": pa.float64()}  # integers cast to it (a float64 column is left alone)
    assert narrowing([ccfraud, doubles]) == {}  # a shadow taking float64 must get the request's own values
    assert narrowing([ccfraud, other]) == {}  # an arm that does not take `tensor` at all
    assert narrowing([object()]) == {}  # a Python step or BYOP: no declared types
    assert narrowing([ccfraud], keep=frozenset(["tensor"])) == {}  # an A/B split's hash key picks the arm as sent
    assert narrowing([]) == {}


def test_narrow_casts_float64_and_integer_scalars_and_tensors_and_leaves_the_rest():
    rows = np.array([[0.1, 2.5, 1e39], [3.0, -0.25, 7.0]])
    table = pa.table({
        "tensor": tensor_array(rows),
        "ragged": pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float64())),
        "scalar": pa.array([0.5, 1.5]),
        "ints": pa.array([1, 2]),
        "already": pa.array([1.0, 2.0], pa.float32()),
    })
    wanted = {name: pa.float32() for name in ("tensor", "ragged", "scalar", "ints", "already", "absent")}
    with np.errstate(over="ignore"):
        out = narrow(table, wanted)
        expected = rows.astype(np.float32).ravel()
    assert out.schema.field("tensor").type == pa.list_(pa.field("item", pa.float32()), 3)
    assert out.schema.field("ragged").type == pa.list_(pa.float32())
    assert out.schema.field("scalar").type == pa.float32()
    assert out.schema.field("already").type == pa.float32()
    assert out.schema.field("ints").type == pa.float32()  # integers too: the log holds what the model takes
    # numpy's rounding, as column_to_tensor's cast did; beyond float32's range is inf, which the model check refuses
    flat = np.asarray(out.column("tensor").combine_chunks().flatten())
    assert np.array_equal(flat, expected)
    assert np.isinf(flat[2])
    assert out.column("ragged").to_pylist() == pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float32())).to_pylist()
    assert narrow(table, {}) is table


def test_for_a_float64_input_integers_are_cast_and_float64_columns_are_left_as_they_are():
    table = pa.table({
        "tensor": tensor_array(np.array([[0.1, 2.5], [3.0, -0.25]])),
        "ints": pa.array([1, 2**53 + 1]),
        "small": pa.array([1, 2], pa.int32()),  # narrower than float64: the model's own cast is exact
        "single": pa.array([0.5, 1.5], pa.float32()),  # a narrower float: as sent, as before
    })
    out = narrow(table, {name: pa.float64() for name in table.column_names})
    assert out.schema.field("ints").type == pa.float64()
    assert out.column("ints").to_pylist() == [1.0, float(2**53)]  # numpy's rounding, as the model's cast
    assert [out.schema.field(n).type for n in ("small", "single")] == [pa.int32(), pa.float32()]
    assert out.column("tensor").equals(table.column("tensor"))
    untouched = table.select(["tensor"])
    assert narrow(untouched, {"tensor": pa.float64()}) is untouched  # no cast, no new table, per request


def _route(input_schema: pa.Schema | None, version: str = "v1"):
    import base64

    from shared.messages.deployer import DeploymentRoute

    encoded = base64.b64encode(input_schema.serialize().to_pybytes()).decode() if input_schema else None
    return DeploymentRoute(deployment_id=1, name="d", pipeline_name="p", workspace_id=1, status="Running",
                           pipeline_version=version, input_schema=encoded, batchable=True)


def test_the_gateway_narrows_for_its_routes_model_and_marks_the_version():
    from services.gateway.inference import NARROW_MIN_ROWS, RouteCache
    from shared.arrow_codec import NARROWED_FOR

    cache = RouteCache()
    model = pa.schema([pa.field("tensor", pa.list_(pa.float32(), 3))])
    one = pa.table({"tensor": tensor_array(np.array([[0.1, 0.2, 0.3]]))})
    assert cache.narrowed(_route(model), one) is one  # a small request: the replica narrows it, the bytes are few
    sent = pa.table({"tensor": tensor_array(np.tile([0.1, 0.2, 0.3], (NARROW_MIN_ROWS, 1)))})
    narrowed = cache.narrowed(_route(model), sent)
    assert narrowed.schema.field("tensor").type.value_type == pa.float32()
    assert narrowed.schema.metadata[NARROWED_FOR] == b"v1"
    assert sent.schema.field("tensor").type.value_type == pa.float64()  # the echo's table is untouched
    float32 = pa.table({"tensor": tensor_array(np.tile([0.1, 0.2, 0.3], (NARROW_MIN_ROWS, 1)).astype(np.float32))})
    assert cache.narrowed(_route(model), float32) is float32  # nothing to cast: sent as it is, unmarked
    assert cache.narrowed(_route(None), sent) is sent  # no schema known (a Python step first)
    doubles = pa.schema([pa.field("tensor", pa.list_(pa.float64(), 3))])
    assert cache.narrowed(_route(doubles), sent) is sent


async def test_a_request_typed_for_a_stale_route_is_resent_as_sent():
    from services.gateway.coalesce import Coalescer
    from services.gateway.inference import NARROW_MIN_ROWS, RouteCache
    from shared.arrow_codec import NARROWED_FOR, STALE_ROUTE, from_ipc, to_ipc_stream
    from shared.bus import ERROR_HEADER

    payloads: list[pa.Table] = []

    async def send(deployment: str, payload: bytes):  # a replica of the new version: float64 model, "v2"
        table = from_ipc(payload)
        payloads.append(table)
        if NARROWED_FOR in (table.schema.metadata or {}):
            import json
            return {ERROR_HEADER: json.dumps({"code": STALE_ROUTE, "msg": "resend", "status": 409})}, b""
        return {}, to_ipc_stream(pa.table({"y": pa.array(np.ones(table.num_rows))}))

    cache = RouteCache()
    cache.coalescer = Coalescer(send)
    cache.routes["d"] = (0.0, None)
    sent = pa.table({"tensor": tensor_array(np.tile([0.1, 0.2, 0.3], (NARROW_MIN_ROWS, 1)))})
    model = pa.schema([pa.field("tensor", pa.list_(pa.float32(), 3))])
    _, outputs = await cache.ask(None, _route(model), "token", sent)
    assert outputs.num_rows == NARROW_MIN_ROWS
    assert [t.schema.field("tensor").type.value_type for t in payloads] == [pa.float32(), pa.float64()]
    assert payloads[1].column("tensor").to_pylist()[0] == [0.1, 0.2, 0.3]  # the request's own values
    assert "d" not in cache.routes  # the next request asks the deployer for the new version's route


def test_the_replica_refuses_a_table_typed_for_another_version_and_strips_the_mark():
    from types import SimpleNamespace

    from services.engine.replica import Replica
    from shared.arrow_codec import NARROWED_FOR, STALE_ROUTE
    from shared.errors import Conflict

    replica = SimpleNamespace(spec={"deployment": {"pipeline_version": "v2"}}, narrowing={"tensor": pa.float32()},
                              tensors=frozenset())
    marked = pa.table({"tensor": tensor_array(np.array([[0.5, 1.5]], np.float32))}).replace_schema_metadata(
        {NARROWED_FOR: b"v1", b"other": b"kept"})
    with pytest.raises(Conflict) as refused:
        Replica.narrow(replica, marked)
    assert refused.value.code == STALE_ROUTE
    ours = Replica.narrow(replica, marked.replace_schema_metadata({NARROWED_FOR: b"v2", b"other": b"kept"}))
    assert ours.schema.metadata == {b"other": b"kept"}  # the log keeps no transport mark


def test_an_ab_splits_hash_key_is_not_narrowed(tmp_path, ccfraud):
    from services.engine.replica import Step, first_step_narrowing

    models = [{"name": "a", "sha": "1"}, {"name": "b", "sha": "2"}]
    plain = Step({"kind": "RandomSplit", "models": models, "weights": [1, 1]}, [ccfraud, ccfraud])
    keyed = Step({"kind": "RandomSplit", "models": models, "weights": [1, 1], "hash_key": "tensor"}, [ccfraud, ccfraud])
    assert first_step_narrowing([plain]) == {"tensor": pa.float32()}
    assert first_step_narrowing([keyed]) == {}  # the key's value as sent picks the arm
    assert first_step_narrowing([]) == {}


def test_an_onnx_model_among_several_takes_its_own_columns_and_a_column_no_model_takes_is_refused(tmp_path, ccfraud):
    """An ONNX champion next to users' code (an ML backend reading `task`, which declares no inputs) is given its
    tensor alone; in an all-ONNX step a column none of its models takes is still a 400."""
    from services.engine.replica import Step
    from shared.errors import InvalidRequest

    class Backend:  # a sandboxed runtime's face: it declares no inputs
        inputs: list = []

    models = [{"name": "champion"}, {"name": "challenger"}]
    rows = np.zeros((1, 29), np.float32)
    table = pa.table({"tensor": tensor_array(rows), "task": ['{"data": {}}']})
    shadowed = Step({"kind": "ShadowDeploy", "models": models}, [ccfraud, Backend()])
    output, answered, shadows = shadowed.run(table)
    assert answered["name"] == "champion" and output.num_rows == 1
    assert [(name, work.column_names) for name, _, work in shadows] == [("challenger", ["tensor", "task"])]
    onnx_only = Step({"kind": "ShadowDeploy", "models": models}, [ccfraud, ccfraud])
    with pytest.raises(InvalidRequest, match=r"unexpected columns \['task'\]"):
        onnx_only.run(table)


def test_a_split_arms_own_model_split_column_is_replaced_by_the_engines():
    """`_model_split` names the arm that answered; an arm (users' code) answering a column of that name would make
    the answer carry it twice, which monitoring's predict reads as a 500 for every request of the split."""
    import json

    from services.engine.replica import Step

    class UserCode:  # a sandboxed runtime's face: no declared inputs, answers its own `_model_split`
        inputs: list = []

        def predict(self, table: pa.Table) -> pa.Table:
            rows = table.num_rows  # its own `_model_split`, twice (pyarrow tables allow a name twice)
            return pa.Table.from_arrays([pa.array([1.0] * rows), pa.array([["mine"]] * rows), pa.array(["x"] * rows)],
                                        names=["out", "_model_split", "_model_split"])

    models = [{"name": "a", "model_version": "v1", "sha": "1"}, {"name": "b", "model_version": "v2", "sha": "2"}]
    split = Step({"kind": "RandomSplit", "models": models, "weights": [1, 0]}, [UserCode(), UserCode()])
    output, answered, _ = split.run(pa.table({"task": ['{"data": {}}']}))
    assert output.column_names == ["out", "_model_split"] and answered["name"] == "a"
    assert json.loads(output.column("_model_split")[0].as_py()[0]) == {"name": "a", "version": "v1", "sha": "1"}
