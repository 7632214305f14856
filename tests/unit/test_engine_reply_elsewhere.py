"""An engine replica answers on its caller's inbox only (services/engine/replica.py, shared/raw_bus.py): the engine
identity keeps NATS's `allow_responses` (shared/bus_identities.py), which lets a replica publish its answer on any
subject a request names, so a holder of the gateway's, lineage's, monitoring's or the deployer's password could have
it published on `events.>`, `logs.inference.>` or another service's command. A real replica served in this process
(a real ONNX model) on a bare nats-server, batched (the batcher's `submit`, the fast lane) and not (`infer`): an
inference, a repeat of an answered one (`resend`) and a status probe aimed elsewhere, or with no reply subject, are
not run, nothing reaches those subjects, one warning per subject (rate-limited); the same requests on an inbox are
answered."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pytest

import services.engine.answers
import shared.raw_bus
from services.engine.replica import Replica, Step, first_step_narrowing
from services.engine.runtimes import OnnxRuntime
from shared import subjects
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import REQUEST_ID, expand_runs
from shared.settings import Settings
from tests.local_nats import local_nats_server, subscribed
from tests.models import ccfraud_onnx, sample_rows

ELSEWHERE = ("events.pipeline.x", "logs.inference.x", "registry.models.list", "_INBOXES.x", "x._INBOX.y")
"""Reply subjects a caller names that are no caller's inbox."""


@pytest.fixture
def nats_url(tmp_path: Path):
    """A nats-server with JetStream (tests/local_nats.py), no permissions: only the replica's check stops an answer."""
    with local_nats_server(tmp_path, jetstream=True) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_warning_counts(monkeypatch):
    monkeypatch.setattr(shared.raw_bus, "_refused_logged", {})


def _warnings(caplog, subject: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and f"a request on {subject} named the reply subject" in r.getMessage()]


@pytest.mark.parametrize("batched", [True, False], ids=["submit", "infer"])
def test_a_replica_answers_no_subject_but_an_inbox(nats_url, tmp_path, caplog, monkeypatch, batched):
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(services.engine.answers, "SLOW", 0.0)  # every answer kept for a re-sent attempt
    model = tmp_path / "model.onnx"
    model.write_bytes(ccfraud_onnx())
    settings = Settings(nats={"url": nats_url}, stack={"data_dir": tmp_path / "data"})
    spec = {"deployment": {"name": "elsewhere", "pipeline": "p", "pipeline_version": "v1", "workspace_id": 1},
            "steps": [{"kind": "ModelInference", "models": [{"name": "ccfraud", "model_version": "1", "sha": "abc",
                                                            "runtime": "onnx"}]}],
            "engine_config": {} if batched else {"batch_max_delay_ms": -1}}
    request = to_ipc_stream(pa.table({"tensor": tensor_array(sample_rows(1).astype(np.float64))}))
    infer, status = subjects.engine_infer("elsewhere"), subjects.engine_replica_status("elsewhere", "r1")

    async def main():
        from nats.js.api import StreamConfig

        caller = await nats.connect(nats_url, inbox_prefix="_INBOX.gateway")
        listener = await nats.connect(nats_url)
        await caller.jetstream().add_stream(StreamConfig(name=subjects.INFERENCE_LOGS_STREAM,
                                                         subjects=list(subjects.INFERENCE_LOGS_SUBJECTS)))
        seen: list = []

        async def keep(msg) -> None:
            seen.append((msg.subject, msg.data[:40]))

        for subject in ELSEWHERE:
            await listener.subscribe(subject, cb=keep)
        await subscribed(listener)  # listening before anything is asked: else `seen == []` could pass without it
        replica = Replica(spec, "r1", settings)
        runtime = OnnxRuntime(model)
        runtime.load()
        replica.steps = [Step(spec["steps"][0], [runtime])]  # as load() builds them, without an object store
        replica.narrowing = first_step_narrowing(replica.steps)
        serving = asyncio.create_task(replica.serve())
        try:
            while True:  # serving once its status subject answers (subscribed after the infer one)
                assert not serving.done()
                try:
                    await caller.request(status, b"{}", timeout=1)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.05)
            assert (getattr(replica, "request_batcher", None) is not None) == batched
            answered_id = uuid.uuid4().hex
            for reply in ELSEWHERE:
                await caller.publish(infer, request, reply=reply, headers={REQUEST_ID: uuid.uuid4().hex})
                await caller.publish(status, b"{}", reply=reply)
            await caller.publish(infer, request, headers={REQUEST_ID: uuid.uuid4().hex})  # no reply: not run either
            await caller.flush()
            # on an inbox, answered: taken after the ones above (one subscription each, in order)
            answer = await caller.request(infer, request, timeout=10, headers={REQUEST_ID: answered_id})
            assert answer.data and "Railyard-Error" not in (answer.headers or {})
            assert b"Running" in (await caller.request(status, b"{}", timeout=10)).data
            # a repeat of the answered request (the replica re-sends the answer it kept) aimed elsewhere: not re-sent
            for reply in ELSEWHERE:
                await caller.publish(infer, request, reply=reply, headers={REQUEST_ID: answered_id})
            again = await caller.request(infer, request, timeout=10, headers={REQUEST_ID: answered_id})
            assert again.data == answer.data  # the repeat on an inbox still gets the first answer
            await asyncio.sleep(0.5)  # anything published elsewhere reached the listener by now
            assert seen == []
            assert replica.served == 1  # the refused requests ran nothing
            for subject in (infer, status):
                warned = _warnings(caplog, subject)
                assert len(warned) == 1 and ELSEWHERE[0] in warned[0] and "not run, nothing answered" in warned[0]
        finally:
            replica.stop.set()
            await asyncio.wait_for(serving, 30)
        # one record logged: the answered request's
        info = await caller.jetstream().stream_info(subjects.INFERENCE_LOGS_STREAM)
        logged = 0
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            stored = await caller.jetstream().get_msg(subjects.INFERENCE_LOGS_STREAM, seq)
            logged += expand_runs(pa.ipc.open_stream(pa.py_buffer(stored.data)).read_all()).num_rows
        assert logged == 1
        await caller.close()
        await listener.close()

    asyncio.run(main())
