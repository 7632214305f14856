"""Inference logs at the edges (issue 14): an inference slower than the gateway's re-send timeout runs and is
logged once; records of a re-sent request that two replicas both ran are stored once; a redeploy under shadow
load loses no record."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import nats as nats_client
import numpy as np
import pyarrow as pa
import pytest
import requests

from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, REQUESTS_HEADER, log_header
from tests.integration.conftest import post
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_logs import _create, all_rows, marked, wait_rows
from tests.integration.test_pipelines import RECORDS, _deploy_definition, _upload_bytes, _upload_framework
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration
SLOW_STEP = b"""
import time
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    time.sleep(3.6)
    return [{"score": [float(v[0])]} for v in data["tensor"]]
"""
SLOW_CHALLENGER = b"""
import time
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    time.sleep(0.03)
    return [{"score": [float(v[0])]} for v in data["tensor"]]
"""


def test_inference_slower_than_the_resend_timeout_runs_and_is_logged_once(stack, alice):
    _upload_framework(stack, alice, "sleepy", SLOW_STEP, "python")
    _, url, pipeline = _deploy_definition(stack, alice, "slowlogged",
                                          {"steps": [{"ModelInference": {"models": [{"name": "sleepy"}]}}]})
    try:
        rows = sample_rows(2, seed=21)
        started = time.monotonic()
        response = requests.post(url, data=json.dumps([{"tensor": r.tolist()} for r in rows]),
                                 headers={"Authorization": f"Bearer {alice.token}", "Content-Type": RECORDS},
                                 timeout=60)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started > 3.0  # the gateway did re-send it
        assert [r["out"]["score"][0] for r in response.json()] == pytest.approx([float(r[0]) for r in rows])
        logged = wait_rows(stack, alice, "slowlogged", 2, timeout=30)
        time.sleep(4.0)  # a second run of the re-sent attempt would have finished and been logged by now
        logged = all_rows(stack, alice, "slowlogged")
        assert len(logged) == 2, [r["time"] for r in logged]
    finally:
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


async def test_a_request_run_by_two_replicas_is_stored_once(stack, alice):
    """The gateway's second attempt reached another replica: both publish the request's record with its id."""
    await asyncio.to_thread(_create, stack, alice, "twice")
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        now = int(time.time() * 1000)
        request_id = uuid.uuid4().hex

        async def publish(values: list[float], requests_header: dict | None) -> None:
            n = len(values)
            table = pa.table({"time": pa.array([now] * n, pa.int64()),
                              "in.tensor": tensor_array(np.array([[v] * 3 for v in values], dtype=np.float32)),
                              "out.dense_1": tensor_array(np.array([[v] for v in values], dtype=np.float32)),
                              "metadata.dropped": pa.array([[]] * n, pa.list_(pa.string()))})
            batch = str(uuid.uuid4())
            deployment = fake_deployment(alice.workspace_id, "twice")
            await announce(nc, alice.workspace_id, deployment)
            headers = {MSG_ID: batch, BATCH_ID: batch, LOG_HEADER: log_header(alice.workspace_id, "twice", deployment,
                                                                             "v")}
            if requests_header:
                headers[REQUESTS_HEADER] = json.dumps(requests_header)
            await nc.jetstream().publish(f"logs.inference.{deployment}", to_ipc_stream(table), headers=headers)

        # replica A: another request's row, then the slow request's two rows
        await publish([1.0, 7.0, 7.0], {request_id: [1, 2]})
        await asyncio.sleep(0.5)
        # replica B ran the re-sent attempt: the same request's rows, next to a row of its own
        await publish([7.0, 7.0, 2.0], {request_id: [0, 2]})
        rows = await asyncio.to_thread(wait_rows, stack, alice, "twice", 4, order="Asc")
        await asyncio.sleep(1.0)
        rows = await asyncio.to_thread(all_rows, stack, alice, "twice", order="Asc")
        assert [r["out"]["dense_1"][0] for r in rows] == [1.0, 7.0, 7.0, 2.0]
    finally:
        await nc.close()


def test_redeploy_under_shadow_load_loses_no_record(stack, alice):
    _upload_bytes(stack, alice, "shadowchamp", ccfraud_onnx())
    _upload_framework(stack, alice, "shadowslow", SLOW_CHALLENGER, "python")
    definition = {"steps": [{"ShadowDeploy": {"champion": {"name": "shadowchamp"},
                                              "challengers": [{"name": "shadowslow"}]}}]}
    _, url, pipeline = _deploy_definition(stack, alice, "redeployed", definition)
    answered: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(1_000_000))

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            with lock:
                value = next(counter)
            response = session.post(url, data=json.dumps(marked(range(value, value + 1))),
                                    headers={"Authorization": f"Bearer {alice.token}", "Content-Type": RECORDS},
                                    timeout=60)
            if response.status_code == 200:
                with lock:
                    answered.append(value)

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(3.0)  # challengers (30 ms each) fall behind: a queue of shadow work builds up
        redeployed = post(stack, "pipelines/deploy", alice.token, {
            "deploy_id": "redeployed", "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
            "pipeline_id": pipeline["pipeline_pk_id"]})
        assert redeployed.status_code == 200, redeployed.text
        time.sleep(2.0)
        stop.set()
        for worker in workers:
            worker.join(60)
        assert len(answered) > 100
        # and the replicas that took over stop gracefully too, with their own backlog of shadow work
        undeployed = post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"],
                                                                     "deployment_id": redeployed.json()["id"]})
        assert undeployed.status_code == 200, undeployed.text
        rows = wait_rows(stack, alice, "redeployed", len(answered), timeout=60, dataset=["in", "out_shadowslow"])
        time.sleep(1.0)
        rows = all_rows(stack, alice, "redeployed", dataset=["in", "out_shadowslow"])
        logged = sorted(int(r["in"]["tensor"][0]) for r in rows)
        assert logged == sorted(answered)  # every answered inference once, none lost at the redeploy
    finally:
        stop.set()
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})
