"""An inference answer and its logged rows carry one `time`, and print float32 values alike.

The replica stamps a request's log rows when it takes the request; the gateway stamped the answer's own `time` just
before sending it, so the two could differ by a millisecond (or more on a loaded machine). The engine's answer now
says its rows' time (shared.logrecords.TIME_HEADER) and the gateway answers with it. And the records answer printed
float32 outputs as exact doubles (`0.10000000149011612`) where a JSON log page prints the same float32 in its
shortest form (`0.1`): both now print it shortest.

The replica part runs a real engine replica (its `serve` wiring: the fast lane, the general path and batched
requests) against a real nats-server with JetStream and a real ONNX model, as test_engine_replica_lane.py does."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import nats
import numpy as np
import orjson
import pyarrow as pa
import pytest

import services.gateway.inference as inference
from services.gateway.inference import EngineReply, Inference, answer_time, seed_records
from services.gateway.records_answer import seed_records_json
from shared import subjects
from shared.arrow_codec import from_ipc, tensor_array, to_ipc_stream
from shared.logrecords import REQUEST_ID, TIME_HEADER, seed_rows
from shared.table_transport import META_HEADER
from tests.local_nats import local_nats_server
from tests.models import sample_rows
from tests.unit.replica_world import ccfraud_replica, logged_tables, until_batcher_subscribed
from tests.unit.test_gateway_route_starting import ALICE, RUNNING, RUNTIME, deployer_says

ARROW = "application/vnd.apache.arrow.stream"
NUMPY = orjson.OPT_SERIALIZE_NUMPY


@pytest.fixture
def nats_url(tmp_path: Path):
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


def test_each_answer_says_the_time_of_its_logged_rows(nats_url, tmp_path):
    async def main():
        client = await nats.connect(nats_url)
        answered: dict[bytes, str] = {}  # a sent row's bytes -> its answer's time
        asked: list[np.ndarray] = []
        async with ccfraud_replica(client, nats_url, tmp_path, "timed") as (replica, serving):
            await until_batcher_subscribed(replica, serving)
            batcher = replica.request_batcher

            async def ask(rows: int) -> None:
                sent = sample_rows(rows, seed=len(asked) + 10)
                asked.append(sent)
                body = to_ipc_stream(pa.table({"tensor": tensor_array(sent)}))
                reply = await client.request(subjects.engine_infer("timed"), body, timeout=10,
                                             headers={REQUEST_ID: uuid.uuid4().hex})
                assert META_HEADER in reply.headers and from_ipc(reply.data).num_rows == rows
                for row in sent:  # each row's bytes: every request's rows are its own
                    answered[row.tobytes()] = reply.headers[TIME_HEADER]

            await ask(2)  # the general path: a replica's first request runs in a thread (its model's cost unknown)
            for rows in (1, 3):  # one at a time: the fast lane's answers
                await asyncio.sleep(0.005)  # another millisecond: times that could not tell requests apart
                await ask(rows)
            assert batcher.lane is not None and batcher.lane.answered == 2
            batcher.lane = None  # the general path
            await asyncio.gather(*(ask(rows) for rows in (1, 2, 4, 5)))  # queued together: shared calls
        assert len(asked) == 7 and len(answered) == 18 and all(said.isdigit() for said in answered.values())
        # each row's time in the log (published at the replica's stop at last)
        logged: dict[bytes, int] = {}
        for table in await logged_tables(client):
            rows = np.array(table.column("in.tensor").to_pylist(), np.float32)
            logged.update(zip((row.tobytes() for row in rows), table.column("time").to_pylist(), strict=True))
        await client.close()
        assert logged == {row: int(said) for row, said in answered.items()}

    asyncio.run(main())


def test_the_gateway_answers_with_the_engines_time_else_its_own():
    assert answer_time({TIME_HEADER: "1700000000123"}, 5) == 1_700_000_000_123
    assert answer_time({TIME_HEADER: "9" * 18}, 5) == 10**18 - 1  # still an int64
    for said in ({}, {TIME_HEADER: ""}, {TIME_HEADER: "-1"}, {TIME_HEADER: "1.5"}, {TIME_HEADER: "x"},
                 {TIME_HEADER: "\u00b2"}, {TIME_HEADER: "9" * 19}, {TIME_HEADER: "1" * 5000}):
        assert answer_time(said, 5) == 5  # none of these is a time: the gateway's own


@pytest.mark.parametrize("said", ["9" * 20, "1" * 5000])
async def test_a_time_header_past_int64_is_not_a_500(engine, said):
    """An engine's (or anything's) over-long Railyard-Time is not taken: past int64 the Arrow answer's time column
    and orjson refused it, past 4,300 digits int() did, each a 500 for an answered inference."""
    gateway = Inference(RUNTIME)
    body = json.dumps([{"tensor": [0.5] * 29}]).encode()
    engine[TIME_HEADER] = said
    before = int(time.time() * 1000)
    for accept in ("", ARROW):
        answer, media, _ = await gateway.run(ALICE, "t", "d", "p", "application/json", accept, body)
        times = orjson.loads(answer)[0]["time"] if media == "application/json" else \
            from_ipc(answer).column("time")[0].as_py()
        assert before <= times <= time.time() * 1000


@pytest.fixture
def engine(monkeypatch):
    """The gateway's engine answers every request with a score a row, its meta header and `said` as its time."""
    said: dict[str, str] = {}

    deployer_says(monkeypatch, RUNNING)

    async def ask_engine(runtime, deployment: str, payload: bytes) -> EngineReply:
        rows = from_ipc(payload).num_rows
        scores = tensor_array(np.full((rows, 1), 0.1, np.float32))
        meta = json.dumps({"last_model": "m", "pipeline_version": "v2", "elapsed": [1, 2]})
        return EngineReply({META_HEADER: meta, **said}, to_ipc_stream(pa.table({"dense_1": scores})))

    monkeypatch.setattr(inference, "_ask_engine", ask_engine)
    return said


@pytest.mark.parametrize("rows", [1, 20])  # the general path and the one written from numpy
async def test_records_and_arrow_answers_carry_the_engines_time(engine, rows):
    gateway = Inference(RUNTIME)
    body = json.dumps([{"tensor": [float(i)] * 29} for i in range(rows)]).encode()
    engine[TIME_HEADER] = "1700000000123"
    answer, media, _ = await gateway.run(ALICE, "t", "d", "p", "application/json", "", body)
    assert media == "application/json" and [r["time"] for r in orjson.loads(answer)] == [1_700_000_000_123] * rows
    assert b'"dense_1":[0.1]' in answer and b"0.10000000149011612" not in answer  # float32 0.1, shortest
    answer, media, _ = await gateway.run(ALICE, "t", "d", "p", "application/json", ARROW, body)
    assert from_ipc(answer).column("time").to_pylist() == [1_700_000_000_123] * rows
    engine.clear()  # an engine that does not say it: the gateway's own clock
    before = int(time.time() * 1000)
    answer, _, _ = await gateway.run(ALICE, "t", "d", "p", "application/json", "", body)
    assert all(before <= r["time"] <= time.time() * 1000 for r in orjson.loads(answer))


@pytest.mark.parametrize("rows", [3, 40])
def test_the_answer_prints_float32_as_a_log_page_does(rows):
    values = np.random.default_rng(rows).normal(size=(rows, 2)).astype(np.float32)
    values[0] = [0.1, 1 / 3]
    inputs = pa.table({"tensor": tensor_array(values)})
    outputs = pa.table({"dense_1": tensor_array(values[:, :1] * 3), "x": pa.array(values[:, 1])})
    answer = orjson.loads(seed_records_json(inputs, outputs, {}, 7, seed_records))
    logged = pa.table({"time": pa.array([7] * rows, pa.int64()),
                       **{f"in.{n}": inputs.column(n) for n in inputs.column_names},
                       **{f"out.{n}": outputs.column(n) for n in outputs.column_names}})
    page = orjson.loads(orjson.dumps(seed_rows(logged), option=NUMPY))
    assert [(r["in"], r["out"]) for r in answer] == [(r["in"], r["out"]) for r in page]
    assert answer[0]["in"]["tensor"] == [0.1, 0.33333334]
