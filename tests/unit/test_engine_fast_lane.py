"""The engine's fast lane (services/engine/fast_lane.py) and its one-batch Arrow streams (shared/arrow_codec): what the
lane answers is byte for byte what the general path (RequestBatcher.run_queued) answers, its log record holds the
same tables, and everything it cannot answer exactly so it leaves to the general path (None)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pytest

from services.engine.batching import RequestBatcher
from services.engine.fast_lane import FastLane, meta_header, meta_prefix
from services.engine.logbatcher import _record_bytes
from services.engine.logpolicy import LogPolicy
from services.engine.replica import Step
from services.engine.runtimes import OnnxRuntime, narrowing
from shared.arrow_codec import (
    NARROWED_FOR,
    narrow,
    read_batch,
    schema_message,
    tensor_array,
    to_ipc_file,
    to_ipc_stream,
    write_stream,
)
from shared.logrecords import InferenceRecord, build_batch, group_records
from shared.table_transport import META_HEADER
from tests.models import ccfraud_onnx, sample_rows


@dataclass
class Msg:
    data: bytes
    reply: str = "r"
    headers: dict = field(default_factory=dict)


class Pipeline:
    workers: list = []
    store = None
    spec = {"deployment": {"pipeline_version": "v1"}}

    def __init__(self, path) -> None:
        runtime = OnnxRuntime(path)
        runtime.load()
        self.steps = [Step({"kind": "ModelInference", "models": [{"name": "m", "sha": "abc"}]}, [runtime])]
        self.narrowing = narrowing(self.steps[0].runtimes)

    def narrow(self, table: pa.Table) -> pa.Table:
        return narrow(table, self.narrowing)

    def run(self, table: pa.Table):
        output, model, _ = self.steps[0].run(table)
        return output, [1], model, []


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    path = tmp_path_factory.mktemp("lane") / "model.onnx"
    path.write_bytes(ccfraud_onnx())
    return Pipeline(path)


@pytest.fixture(scope="module")
def lane(pipeline):
    return FastLane(pipeline.steps[0].runtimes[0], pipeline.narrowing, {"name": "m", "sha": "abc"}, "v1", 1 << 20)


def _general(pipeline, data: bytes):
    """The general path's answer to one request (a batch of one)."""
    answers = []

    async def deliver(msg, answer, received, at_ms):
        answers.append(answer)

    async def run_alone(msg, received, at_ms):
        raise AssertionError("a request the general path answers alone is not a lane case")

    async def main():
        batcher = RequestBatcher(pipeline, 0.0, 4096, 1 << 20, run_alone, deliver, lambda msg: False)
        await batcher.run_queued([(Msg(data), time.perf_counter_ns(), 0)])

    asyncio.run(main())
    (answer,) = answers
    return answer


def _stream(columns: dict, metadata=None) -> bytes:
    return to_ipc_stream(pa.table(columns, metadata=metadata))


@pytest.mark.parametrize("rows", [1, 3, 256])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])  # integers: narrowed as float64 is
def test_the_lane_answers_as_the_general_path_does(pipeline, lane, rows, dtype):
    values = sample_rows(rows, seed=rows) * (100 if dtype is np.int64 else 1)
    data = _stream({"tensor": tensor_array(values.astype(dtype))})
    fast, general = lane.answer(data, time.perf_counter_ns()), _general(pipeline, data)
    assert fast is not None
    assert fast.body == general.body  # the same answer, byte for byte
    fast_meta, general_meta = json.loads(fast.headers[META_HEADER]), json.loads(general.headers[META_HEADER])
    assert fast_meta.keys() == general_meta.keys() and fast_meta["last_model"] == general_meta["last_model"]
    assert fast_meta["pipeline_version"] == general_meta["pipeline_version"] and len(fast_meta["elapsed"]) == 2
    assert fast.headers[META_HEADER] == json.dumps(fast_meta)  # json.dumps' own spelling
    assert fast.last_model == general.last_model
    # the log record: the narrowed request and the output, same schemas (the log batches group by them)
    record = fast.record(0, None)
    plain = InferenceRecord(0, general.table, general.output, general.last_model, (0, 0))
    assert record.key() == plain.key() and hash(record.key()) == hash(plain.key()) and record.rows == rows
    assert record.inputs.schema.equals(general.table.schema, check_metadata=True)
    assert record.inputs.equals(general.table) and record.outputs.equals(general.output)
    assert record.outputs.schema.equals(general.output.schema, check_metadata=True)
    assert record.inputs.schema.field("tensor").type.value_type == pa.float32()
    assert fast.log_bytes == _record_bytes(plain)  # what the log buffer counts, without measuring the tables
    again = lane.answer(data, time.perf_counter_ns())  # read by its known head this time: the same
    assert again.body == fast.body and again.record(0, None).inputs.equals(general.table)


def test_a_log_batch_of_lane_records_is_the_batch_of_their_tables(lane):
    requests = [tensor_array(sample_rows(n, seed=n).astype(np.float64)) for n in (1, 1, 4, 1)]
    answers = [lane.answer(_stream({"tensor": column}), 0) for column in requests]
    records = [answer.record(100 + i, None) for i, answer in enumerate(answers)]
    plain = [InferenceRecord(r.at_ms, r.inputs, r.outputs, r.last_model, r.elapsed) for r in records]
    fresh = [answer.record(100 + i, None) for i, answer in enumerate(answers)]  # no table built yet
    assert [len(g) for g in group_records(fresh + plain)] == [8]  # one schema: one group, lane or not
    built = build_batch(fresh, "v1")
    assert built.equals(build_batch(plain, "v1")) and built.schema.equals(build_batch(plain, "v1").schema)
    assert all(record._inputs is None for record in fresh)  # built from the arrays, no table per record
    # a log policy's selection makes an ordinary record of it
    outputs_only = LogPolicy("outputs").apply(answers[2].record(0, None))
    assert outputs_only.inputs.num_columns == 0 and outputs_only.rows == 4 and outputs_only.layout is None
    assert outputs_only.key() == (outputs_only.inputs.schema, plain[2].outputs.schema, ())
    sampled = LogPolicy("sampled", 0.5, seed=3).apply(answers[2].record(0, None))
    kept = sampled.inputs.to_pylist()
    assert sampled.rows == len(kept) and all(row in plain[2].inputs.to_pylist() for row in kept)


def _nulls() -> pa.Array:
    values = pa.array(sample_rows(2).reshape(-1).astype(np.float64))
    return pa.FixedSizeListArray.from_arrays(values, 29, mask=pa.array([False, True]))


def _bad(value: float) -> bytes:
    rows = sample_rows(2).astype(np.float64)
    rows[1, 3] = value
    return _stream({"tensor": tensor_array(rows)})


@pytest.mark.parametrize("data", [
    _bad(np.nan), _bad(np.inf), _bad(1e300), _bad(-3.5e38),  # the model check's error (beyond float32: inf)
    _stream({"tensor": tensor_array(sample_rows(1)[:, :28])}),  # the wrong shape
    _stream({"tensor": tensor_array(sample_rows(1)), "extra": pa.array([1.0])}),  # a column too many
    _stream({"other": tensor_array(sample_rows(1))}),  # a column the model does not take
    _stream({"tensor": tensor_array(sample_rows(1).astype(np.float16))}),
    _stream({"tensor": _nulls()}),
    _stream({"tensor": tensor_array(sample_rows(1))}, {NARROWED_FOR: b"v1"}),  # the replica's version check
    _stream({"tensor": tensor_array(sample_rows(300))}),  # above INLINE_ROWS: the general path (a thread)
    _stream({"tensor": tensor_array(sample_rows(0))}),
    _stream({"tensor": pa.array([[1.0] * 29], pa.list_(pa.float64()))}),  # a variable-size list
    to_ipc_file(pa.table({"tensor": tensor_array(sample_rows(1))})),  # the file format
    to_ipc_stream(pa.concat_tables([pa.table({"tensor": tensor_array(sample_rows(1))})] * 2)),  # two batches
    _stream({"tensor": tensor_array(sample_rows(1))})[:-20],  # cut short
    b"not arrow at all",
])
def test_what_the_lane_cannot_answer_exactly_goes_to_the_general_path(lane, data):
    assert lane.answer(data, time.perf_counter_ns()) is None


def test_a_request_with_a_dictionary_column_is_not_read_by_the_lane():
    table = pa.table({"s": pa.array(["a", "b"]).dictionary_encode()})
    assert read_batch(to_ipc_stream(table)) is None


@pytest.mark.parametrize("table", [
    pa.table({"f": pa.array([1.5, None, 3.0]), "s": ["a", "bb", None], "i": pa.array([1, 2, 3], pa.int32())}),
    pa.table({"t": tensor_array(np.arange(24, dtype=np.float32).reshape(3, 2, 4)),
              "l": pa.array([[1], [], [2, 3]]), "b": [True, False, None]}, metadata={b"k": b"v"}),
])
def test_one_batch_streams_are_written_as_the_stream_writer_writes_them(table):
    schema_bytes = schema_message(table.schema)
    for offset, length in ((0, 3), (0, 1), (1, 2), (2, 1)):
        part = table.slice(offset, length)
        assert write_stream(part, schema_bytes) == to_ipc_stream(part)
        key, batch = read_batch(to_ipc_stream(part))
        assert pa.Table.from_batches([batch]).equals(part) and batch.schema.metadata == table.schema.metadata


def test_the_meta_header_is_json_dumps_spelling():
    for version in ("v1", 7, 'a "quoted" version'):
        last_model = json.dumps({"model_name": "m", "model_sha": "abc"})
        expected = json.dumps({"last_model": last_model, "pipeline_version": version, "elapsed": [12, 345]})
        assert meta_header(meta_prefix(last_model, version), (12, 345)) == expected


class Subscription:
    def __init__(self, pending: int) -> None:
        self.pending_msgs = pending


@pytest.mark.parametrize("behind", [0, 2])
def test_a_lone_request_runs_at_once_and_one_with_others_behind_it_is_queued(pipeline, lane, behind):
    delivered = []

    async def deliver(msg, answer, received, at_ms):
        delivered.append(answer)

    async def main():
        batcher = RequestBatcher(pipeline, 0.0, 4096, 1 << 20, None, deliver, lambda msg: False)
        batcher.subscription, batcher.lane = Subscription(behind), lane
        await batcher.submit(Msg(_stream({"tensor": tensor_array(sample_rows(1))})))
        return batcher

    answered = lane.answered
    batcher = asyncio.run(main())
    if behind:  # others are about to be handed over: it waits for them in the queue, as before
        assert delivered == [] and len(batcher.pending) == 1 and lane.answered == answered
    else:
        assert len(delivered) == 1 and batcher.pending == [] and lane.answered == answered + 1


def test_a_failure_inside_the_lane_leaves_the_request_to_the_general_path(pipeline, monkeypatch):
    lane = FastLane(pipeline.steps[0].runtimes[0], pipeline.narrowing, {"name": "m", "sha": "abc"}, "v1", 1 << 20)

    def broken(schema):
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(lane, "_make_plan", broken)  # while learning a new head
    assert lane.answer(_stream({"tensor": tensor_array(sample_rows(1))}), 0) is None


def _bool_output_onnx() -> bytes:
    """x float[N,29] -> y = x (float) and b = x > 0 (bool)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("tensor", TensorProto.FLOAT, [None, 29])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 29])
    b = helper.make_tensor_value_info("b", TensorProto.BOOL, [None, 29])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    graph = helper.make_graph([helper.make_node("Identity", ["tensor"], ["y"]),
                               helper.make_node("Greater", ["tensor", "zero"], ["b"])], "g", [x], [y, b], [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _zipmap_onnx() -> bytes:
    """A scikit-learn classifier as skl2onnx writes it by default: a label tensor and a ZipMap (a sequence of maps)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from tests.models import _fitted

    model, _ = _fitted()
    return convert_sklearn(model, initial_types=[("tensor", FloatTensorType([None, 29]))],
                           target_opset=17).SerializeToString()


class CountingSession:
    def __init__(self, session) -> None:
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.mark.parametrize("model", [_bool_output_onnx, _zipmap_onnx])
def test_a_model_with_a_non_numeric_output_runs_once_per_request(tmp_path, model):
    path = tmp_path / "model.onnx"
    path.write_bytes(model())
    pipeline = Pipeline(path)
    runtime = pipeline.steps[0].runtimes[0]
    session = runtime.session = CountingSession(runtime.session)
    delivered = []

    async def deliver(msg, answer, received, at_ms):
        delivered.append(answer)

    async def run_alone(msg, received, at_ms):  # the general path failed (the engine cannot write a ZipMap's maps)
        delivered.append("its error")

    async def main():
        batcher = RequestBatcher(pipeline, 0.0, 4096, 1 << 20, run_alone, deliver, lambda msg: False)
        batcher.subscription = Subscription(0)
        if FastLane.applies(pipeline):  # as the replica does
            batcher.lane = FastLane(runtime, pipeline.narrowing, {"name": "m", "sha": "abc"}, "v1", 1 << 20)
        task = asyncio.create_task(batcher.run())  # what the lane does not answer goes to the batch task
        for seed in range(3):
            await batcher.submit(Msg(_stream({"tensor": tensor_array(sample_rows(1, seed=seed))})))
            await batcher.idle(5)
        task.cancel()

    asyncio.run(main())
    assert len(delivered) == 3 and session.runs == 3  # the general path alone: once per request, not twice
    # a lane made for it anyway runs it once, sees the outputs it cannot write, and stays out from then on
    lane = FastLane(runtime, pipeline.narrowing, {"name": "m", "sha": "abc"}, "v1", 1 << 20)
    for seed in range(3):
        assert lane.answer(_stream({"tensor": tensor_array(sample_rows(1, seed=seed))}), 0) is None
    assert session.runs == 4 and lane.refused


def _opaque_dictionary_table() -> pa.Table:
    """A column of an extension type over a dictionary (as a users' Python step may return): its stream needs the
    dictionary batch."""
    dictionary = pa.array(["a", "b", "a"]).dictionary_encode()
    opaque = pa.ExtensionArray.from_storage(pa.opaque(dictionary.type, "t", "v"), dictionary)
    return pa.table({"x": opaque, "s": pa.StructArray.from_arrays([opaque], ["y"])})


def test_a_dictionary_inside_an_extension_type_is_left_to_the_stream_writer():
    table = _opaque_dictionary_table()
    for name in table.column_names:
        part = table.select([name])
        assert schema_message(part.schema) is None  # not a schema message and a batch alone
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, part.schema) as writer:
            writer.write_table(part)
        assert read_batch(sink.getvalue().to_pybytes()) is None  # the general reader reads its dictionary
        written = write_stream(part, schema_message(part.schema))  # an answer's stream: with its dictionary batch
        assert written == sink.getvalue().to_pybytes() and pa.ipc.open_stream(written).read_all().equals(part)


def test_a_schema_of_megabytes_is_not_kept(lane):
    """The request's schema bytes are the client's: caches keyed by them keep only small ones (a huge metadata value
    or column name in every request would otherwise pin up to MAX_SCHEMAS x a body)."""
    from shared import arrow_codec

    tensor = tensor_array(sample_rows(1))
    for value in (b"x" * (1 << 20), b"y" * (1 << 20)):
        data = _stream({"tensor": tensor}, metadata={b"k": value})
        for _ in range(2):
            assert read_batch(data) is not None and lane.answer(data, 0) is None
    assert all(len(key) < 1 << 20 for key in arrow_codec._SCHEMAS)  # none of the 1 MB ones
    assert all(len(key) < 1 << 20 for key in [*lane.heads, *lane.plans])
    small = _stream({"tensor": tensor})  # an ordinary request still takes the lane
    assert lane.answer(small, 0) is not None and small[:len(schema_message(pa.schema([("tensor", tensor.type)])))] \
        in arrow_codec._SCHEMAS


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_learnt_head_with_a_nan_or_inf_goes_to_the_general_path(pipeline, dtype):
    """Values change, the head does not: a learnt head's NaN or inf (a float32 column is not cast, a float64 one
    is) is still the general path's error."""
    lane = FastLane(pipeline.steps[0].runtimes[0], pipeline.narrowing, {"name": "m", "sha": "abc"}, "v1", 1 << 20)
    rows = sample_rows(2).astype(dtype)
    good = _stream({"tensor": tensor_array(rows)})
    assert lane.answer(good, 0) is not None and len(lane.heads) == 1
    for value in (np.nan, np.inf, -np.inf):
        rows[1, 3] = value
        bad = _stream({"tensor": tensor_array(rows)})
        assert bad[:-8 - rows.nbytes] == good[:-8 - rows.nbytes]  # the same head: the values alone differ
        assert lane.answer(bad, 0) is None and lane.answered == 1  # the general path gives the model check's error
