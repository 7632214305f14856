"""A model with a zero-size output dimension (tests/models.zero_size_onnx: `none` float[N,0] beside `total`
float[N,1]) along the whole inference path, each hop the real code and the real model, handed on in process: the
engine's fast lane and general path answer it (the same bytes), the gateway answers those bytes in each format
(records JSON, Arrow, OIP) with an empty list a row (OIP shape [N, 0]), the lane's log record goes as the engine's own
segment (the write succeeds: no rows through the stream), and a log page read from that segment (the log store's
SegmentReader, the bus's Arrow hop, the gateway's JSON and Arrow page answers) holds the column as empty lists.

These replace most of tests/integration/test_infer_zero_size_output.py (session 30: the same assertions through the
running stack): what is zero-size-specific is each hop's code, checked here with the same assertions. One pass through
the stack stays (tests/integration/test_oip.py, the zero-size test: the registry's upload, the replica, NATS,
SeaweedFS and the log store's own index and pages, which read a segment here only through SegmentReader)."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import orjson
import pyarrow as pa
import pytest

import services.gateway.inference as inference
from services.engine.fast_lane import FastLane
from services.gateway.inference import EngineReply, Inference
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_file, to_ipc_stream
from shared.logrecords import seed_rows
from tests.models import zero_size_onnx
from tests.unit.test_engine_fast_lane import Pipeline, _general
from tests.unit.test_gateway_route_starting import ALICE, RUNNING, RUNTIME, deployer_says

ARROW = "application/vnd.apache.arrow.stream"
ROWS = np.arange(12, dtype=np.float32).reshape(4, 3)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    path = tmp_path_factory.mktemp("zero") / "model.onnx"
    path.write_bytes(zero_size_onnx())
    return Pipeline(path)


@pytest.fixture(scope="module")
def lane(pipeline):
    return FastLane(pipeline.steps[0].runtimes[0], pipeline.narrowing, {"name": "m", "sha": "abc"}, "v1", 1 << 20)


def test_the_engine_answers_it_alike_on_both_paths(pipeline, lane):
    data = to_ipc_stream(pa.table({"x": tensor_array(ROWS[:2])}))
    fast, general = lane.answer(data, time.perf_counter_ns()), _general(pipeline, data)
    assert fast is not None and fast.body == general.body
    answer = from_ipc(fast.body)
    assert answer.schema.field("none").type == pa.list_(pa.float32(), 0)
    assert answer.column("none").to_pylist() == [[], []] and answer.column("total").to_pylist() == [[3.0], [12.0]]


@pytest.fixture
def engine(monkeypatch, lane, pipeline):
    """The gateway's engine: the replica's answer (the fast lane's, else the general path's: a loop of its own, as
    the replica's) to the bytes sent."""
    deployer_says(monkeypatch, RUNNING)

    async def ask_engine(runtime, deployment: str, payload: bytes) -> EngineReply:
        answer = lane.answer(payload, time.perf_counter_ns()) or await asyncio.to_thread(_general, pipeline, payload)
        return EngineReply(dict(answer.headers), answer.body)

    monkeypatch.setattr(inference, "_ask_engine", ask_engine)


async def test_the_gateway_answers_each_format_with_an_empty_list_a_row(engine):
    gateway = Inference(RUNTIME)
    body, media, _ = await gateway.run(ALICE, "t", "d", "p", "application/json", "",
                                       json.dumps([{"x": row} for row in ROWS[:2].tolist()]).encode())
    assert media == "application/json"
    assert [row["out"] for row in orjson.loads(body)] == [{"total": [3.0], "none": []},
                                                          {"total": [12.0], "none": []}]
    body, media, _ = await gateway.run(ALICE, "t", "d", "p", ARROW, ARROW,
                                       to_ipc_stream(pa.table({"x": ROWS[2:3].tolist()})))
    answer = from_ipc(body)
    assert media == ARROW
    assert answer.column("out.none").to_pylist() == [[]] and answer.column("out.total").to_pylist() == [[21.0]]
    oip = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": ROWS[3].tolist()}]}
    body, _ = await gateway.run_oip(ALICE, "t", "d", None, orjson.dumps(oip))
    outputs = {out["name"]: out for out in orjson.loads(body)["outputs"]}
    assert outputs["none"]["shape"] == [1, 0] and outputs["none"]["data"] == []
    assert outputs["total"]["shape"] == [1, 1] and outputs["total"]["data"] == [30.0]
    # the binary extension's answer of it: no bytes, a size of 0
    oip["outputs"] = [{"name": "none", "parameters": {"binary_data": True}}]
    body, headers = await gateway.run_oip(ALICE, "t", "d", None, orjson.dumps(oip))
    length = int(headers["Inference-Header-Content-Length"])
    (described,) = orjson.loads(body[:length])["outputs"]
    assert described["shape"] == [1, 0] and described["parameters"] == {"binary_data_size": 0}
    assert len(body) == length


def test_its_log_record_is_stored_as_a_segment_and_a_page_reads_it_back(lane):
    from services.engine.logbatcher import LogBatcher
    from services.log_store.segments import SegmentReader
    from shared.log_segments import SEGMENT_HEADER, SegmentRef
    from shared.settings import LogSettings
    from tests.unit.test_log_batcher import DEPLOYMENT, Objects, RefusingStream
    from tests.unit.test_log_segments import _CountingStore

    stream, objects = RefusingStream(), Objects()
    stream.full = False
    batcher = LogBatcher(stream, DEPLOYMENT, LogSettings(), 8 * 1024 * 1024, objects=objects)
    for at, rows in ((20, ROWS[:2]), (10, ROWS[2:])):
        answer = lane.answer(to_ipc_stream(pa.table({"x": tensor_array(rows)})), time.perf_counter_ns())
        batcher.add(answer.record(at, None))
    asyncio.run(batcher.flush())
    (published, headers), = stream.published
    assert headers.get(SEGMENT_HEADER) == "1", "the rows went through the stream: the segment write failed"
    ref = SegmentRef.from_json(published, 1, "p")
    assert ref.rows == 4
    stored = objects.stored[ref.key]
    page = SegmentReader(_CountingStore({ref.key: stored})).read(ref.key, len(stored), 0, 4, None)  # type: ignore
    page = from_ipc(to_ipc_stream(page))  # the log store's answer over the bus
    assert page.column("time").to_pylist() == [10, 10, 20, 20]
    assert page.column("out.none").to_pylist() == [[]] * 4
    assert sorted(row[0] for row in page.column("out.total").to_pylist()) == [3.0, 12.0, 21.0, 30.0]
    as_arrow = from_ipc(to_ipc_file(page))  # the gateway's Arrow page (services/gateway/logs.py)
    assert as_arrow.column("out.none").to_pylist() == [[]] * 4
    as_json = orjson.loads(orjson.dumps(seed_rows(page), option=orjson.OPT_SERIALIZE_NUMPY))  # and its JSON page
    assert [row["out"]["none"] for row in as_json] == [[]] * 4
    assert sorted(row["out"]["total"][0] for row in as_json) == [3.0, 12.0, 21.0, 30.0]
