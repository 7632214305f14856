"""A real engine replica served in a unit test's own process (services/engine/replica.py, its `serve` wiring): a
one-step pipeline of the ccfraud ONNX model (tests/models.py) on a real nats-server with JetStream
(tests/local_nats.py), its steps built as load() builds them but without an object store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pyarrow as pa
from nats.js.api import StreamConfig

from services.engine.replica import Replica, Step, first_step_narrowing
from services.engine.runtimes import OnnxRuntime
from shared import subjects
from shared.logrecords import expand_runs
from shared.settings import Settings
from tests.models import ccfraud_onnx


@asynccontextmanager
async def ccfraud_replica(client, nats_url: str, tmp_path: Path, name: str, engine_config: dict | None = None,
                          onnx: bytes | None = None) -> AsyncIterator[tuple[Replica, asyncio.Task]]:
    """Replica "r1" of deployment `name` serving (the replica and its `serve` task), the inference logs' stream added
    through `client` first; stopped (and its last log rows published) at the exit. `onnx`: another model's bytes
    served in ccfraud's place."""
    model = tmp_path / "model.onnx"
    model.write_bytes(onnx if onnx is not None else ccfraud_onnx())
    settings = Settings(nats={"url": nats_url}, stack={"data_dir": tmp_path / "data"})
    spec = {"deployment": {"name": name, "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "ModelInference", "models": [{"name": "ccfraud", "model_version": "1", "sha": "abc",
                                                            "runtime": "onnx"}]}]}
    if engine_config is not None:
        spec["engine_config"] = engine_config
    await client.jetstream().add_stream(StreamConfig(name=subjects.INFERENCE_LOGS_STREAM,
                                                     subjects=list(subjects.INFERENCE_LOGS_SUBJECTS)))
    replica = Replica(spec, "r1", settings)
    runtime = OnnxRuntime(model)
    runtime.load()
    replica.steps = [Step(spec["steps"][0], [runtime])]
    replica.narrowing = first_step_narrowing(replica.steps)
    serving = asyncio.create_task(replica.serve())
    try:
        yield replica, serving
    finally:
        replica.stop.set()
        await asyncio.wait_for(serving, 30)


async def until_batcher_subscribed(replica: Replica, serving: asyncio.Task, timeout: float = 30.0) -> None:
    """A batched replica takes requests once its batcher's subscription is made (or its serve() ended)."""
    deadline = time.monotonic() + timeout
    while not (getattr(replica, "request_batcher", None) is not None
               and replica.request_batcher.subscription is not None or serving.done()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def until_status_answers(caller, status: str, serving: asyncio.Task) -> None:
    """Serving once its status subject answers (subscribed after the infer one)."""
    while True:
        assert not serving.done()
        try:
            await caller.request(status, b"{}", timeout=1)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.05)


async def logged_tables(client) -> list[pa.Table]:
    """The inference logs' stream's records, their runs expanded."""
    info = await client.jetstream().stream_info(subjects.INFERENCE_LOGS_STREAM)
    tables = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await client.jetstream().get_msg(subjects.INFERENCE_LOGS_STREAM, seq)
        tables.append(expand_runs(pa.ipc.open_stream(pa.py_buffer(stored.data)).read_all()))
    return tables
