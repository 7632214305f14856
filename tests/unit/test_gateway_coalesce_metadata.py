"""Which concurrent requests the gateway's coalescer lets share one table (services/gateway/coalesce.py): tables of
equal schemas whose schema metadata differs travel apart, each message keeping its own (the pipeline version a
table was typed for, `railyard.narrowed_for`, is the replica's `stale_route` check); tables that differ only in field
metadata, or in their dictionary columns' dictionaries, share one table and each gets its own rows back, answered
by a real ONNX model (nothing reads field metadata; each dictionary chunk is decoded with its own)."""

from __future__ import annotations

import asyncio

import pyarrow as pa
from onnx import TensorProto, helper

from services.engine.runtimes import OnnxRuntime
from services.gateway.coalesce import Coalescer, _key
from shared.arrow_codec import NARROWED_FOR, from_ipc, to_ipc_stream

FLOATS = pa.float32()


def _doubler(tmp_path) -> OnnxRuntime:
    """ONNX: x float[N] -> y float[N] = x + x."""
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "doubler",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    path = tmp_path / "doubler.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    runtime = OnnxRuntime(path)
    runtime.load()
    return runtime


def _ask_all(runtime: OnnxRuntime, tables: list[pa.Table]) -> tuple[list[pa.Table], list]:
    """The messages the engine got (decoded) and each request's answer, all asked in one turn of the loop."""
    received: list[pa.Table] = []

    async def send(deployment: str, payload: bytes) -> tuple[dict[str, str], bytes]:
        table = from_ipc(payload)
        received.append(table)
        await asyncio.sleep(0)
        return {}, to_ipc_stream(runtime.predict(table))

    async def main():
        coalescer = Coalescer(send)
        return await asyncio.gather(*(coalescer.ask("d-1", t) for t in tables))

    return received, asyncio.run(main())


def _x(values: list[float], metadata: dict | None = None) -> pa.Table:
    return pa.table({"x": pa.array(values, FLOATS)}).replace_schema_metadata(metadata)


def test_a_table_typed_for_a_version_never_shares_a_message_with_one_that_is_not(tmp_path):
    runtime = _doubler(tmp_path)
    plain, typed_v1, typed_v2 = _x([1.0]), _x([2.0], {NARROWED_FOR: b"1"}), _x([3.0], {NARROWED_FOR: b"2"})
    assert plain.schema == typed_v1.schema == typed_v2.schema  # what pa.Schema == says: metadata is not compared
    assert len({_key(t.schema) for t in (plain, typed_v1, typed_v2)}) == 3
    first = _x([0.0])  # goes at once; the others queue behind it in one turn of the loop
    received, answers = _ask_all(runtime, [first, plain, typed_v1, plain, typed_v2, typed_v1])
    marks = sorted(((t.schema.metadata or {}).get(NARROWED_FOR, b""), t.num_rows) for t in received[1:])
    assert marks == [(b"", 2), (b"1", 2), (b"2", 1)], marks  # one message per mark, each message keeps its own
    for table, (_, outputs) in zip([first, plain, typed_v1, plain, typed_v2, typed_v1], answers, strict=True):
        assert outputs.column("y").to_pylist() == [2 * v for v in table.column("x").to_pylist()]


def test_field_metadata_and_other_dictionaries_share_a_message_and_are_answered_right(tmp_path):
    runtime = _doubler(tmp_path)
    described = pa.table({"x": pa.array([5.0, 6.0], FLOATS)},
                         schema=pa.schema([pa.field("x", FLOATS, metadata={b"unit": b"m"})]))
    dictionaries = [pa.table({"x": pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()),
                                                                  pa.array(values, FLOATS))})
                    for indices, values in (([0, 1, 0], [1.5, 2.5]), ([1, 0], [7.0, 9.0]))]
    first = _x([0.0])
    received, answers = _ask_all(runtime, [first, _x([1.0]), described, _x([3.0]), *dictionaries])
    assert [t.num_rows for t in received] == [1, 4, 5]  # the plain and described ones together, the dictionaries
    wanted = [[0.0], [2.0], [10.0, 12.0], [6.0], [3.0, 5.0, 3.0], [18.0, 14.0]]
    assert [outputs.column("y").to_pylist() for _, outputs in answers] == wanted
