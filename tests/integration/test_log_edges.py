"""Inference logs at the edges (issue 14): an inference slower than the gateway's re-send timeout runs and is
logged once; records of a re-sent request that two replicas both ran are stored once; a redeploy under shadow
load loses no record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from typing import BinaryIO

import nats as nats_client
import numpy as np
import pyarrow as pa
import pytest
import requests

from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, REQUESTS_HEADER, log_header
from tests.integration.conftest import post, query
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_logs import _create, all_rows, marked, rows_with, wait_rows
from tests.integration.test_pipelines import RECORDS, _deploy_definition, _upload_bytes, _upload_framework
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration
BARRIER = -1000.0  # the first feature of test_inference_slower_than_the_resend_timeout's last request: not slowed
SLOW_STEP = f"""
import time
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    if float(data["tensor"][0][0]) != {BARRIER}:
        time.sleep(3.6)
    return [{{"score": [float(v[0])]}} for v in data["tensor"]]
""".encode()
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
        wait_rows(stack, alice, "slowlogged", 2, timeout=30)
        # a later request (not slowed) as the barrier: the deployment's one replica runs the step's requests one at a
        # time in its one worker, in the order they came (SandboxedRuntime.lock), so a second run of the re-sent
        # attempt would have run before this one; and the log store stores what it took in order (test_logs.rows_with):
        # once this row is stored, a second copy would be too. Before, a fixed 4-s sleep stood for it
        barrier = requests.post(url, data=json.dumps([{"tensor": [BARRIER] + [0.0] * (len(rows[0]) - 1)}]),
                                headers={"Authorization": f"Bearer {alice.token}", "Content-Type": RECORDS},
                                timeout=60)
        assert barrier.status_code == 200, barrier.text
        deadline = time.monotonic() + 30
        while True:  # a 503 while the log store (re)starts is polled past, as wait_rows polls it
            rows_logged = all_rows(stack, alice, "slowlogged", restarting_ok=True)
            scores = [r["out"]["score"][0] for r in rows_logged or []]
            if BARRIER in scores:
                break
            assert time.monotonic() < deadline, f"the barrier's row was never stored: {scores}"
            time.sleep(0.1)
        assert sorted(scores) == pytest.approx(sorted([float(r[0]) for r in rows] + [BARRIER])), scores
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
        # 2.0 is the second batch's own row: once it is stored the whole batch is (one flush), a second copy of the
        # request's rows included (a fixed wait could end before it showed)
        rows = await asyncio.to_thread(rows_with, stack, alice, "twice", 2.0, order="Asc")
        assert [r["out"]["dense_1"][0] for r in rows] == [1.0, 7.0, 7.0, 2.0]
    finally:
        await nc.close()


# The load of the redeploy test, in requests rather than seconds (it was 4 clients for 3 s, then 2 s after the
# redeploy returned: 700 to 6,000 requests depending on the machine, and what a failure showed depended on it too)
BEFORE_REDEPLOY = 400  # answered before the redeploy: the challenger (30 ms, ~33 a second) is behind by then
DURING_REDEPLOY = 2000  # at most this many more while the redeploy runs (its length is the machine's)
DURING_PACE = 0.016  # seconds a client waits between two of those (at most ~250 a second for 4 clients): the old set
# still has requests in flight when the new one takes over on a quick machine too (2,000 last 8 s or more)
AFTER_REDEPLOY = 400  # answered by the new set before the undeploy: it stops with a queue of its own


class BoundedLoad:
    """Clients that infer one marked record at a time, up to a number of requests the test raises phase by phase."""

    def __init__(self, url: str, token: str, clients: int = 4) -> None:
        self.url, self.token = url, token
        self.answered: list[int] = []
        self.failed: list[tuple[int, int]] = []
        self.sent = 0
        self.limit = 0
        self.pace = 0.0
        self.stopped = False
        self.changed = threading.Condition()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        session = requests.Session()
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.stopped or self.sent < self.limit)
                if self.stopped:
                    return
                value, pace = self.sent, self.pace
                self.sent += 1
            response = session.post(self.url, data=json.dumps(marked(range(value, value + 1))),
                                    headers={"Authorization": f"Bearer {self.token}", "Content-Type": RECORDS},
                                    timeout=60)
            with self.changed:
                (self.answered.append(value) if response.status_code == 200 else
                 self.failed.append((value, response.status_code)))
                self.changed.notify_all()
            if pace:
                time.sleep(pace)

    def allow(self, more: int, pace: float = 0.0) -> None:
        with self.changed:
            self.limit, self.pace = self.sent + more, pace
            self.changed.notify_all()

    def settle(self, timeout: float = 120.0) -> None:
        """Until every request allowed so far is answered (or failed)."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.answered) + len(self.failed) >= self.limit, timeout), \
                f"{len(self.answered) + len(self.failed)} of {self.limit} requests done in {timeout:.0f} s"

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()
        for thread in self.threads:
            thread.join(60)


def _stored_rows(stack, account, pipeline: str) -> tuple[int, int]:
    """(rows the log store indexed for the pipeline, its batches quarantined), from its tables."""
    stored = query(stack, "SELECT coalesce(sum(s.row_count), 0) AS n FROM log_store.segments s JOIN log_store.pipelines"
                   " p ON p.id = s.pipeline_id WHERE p.workspace_id = $1 AND p.name = $2 AND s.superseded_at IS NULL",
                   account.workspace_id, pipeline)[0]["n"]
    quarantined = query(stack, "SELECT count(*) AS n FROM log_store.quarantine WHERE workspace_id = $1 AND"
                        " pipeline = $2", account.workspace_id, pipeline)[0]["n"]
    return int(stored), int(quarantined)


def _open_replica_logs(stack, deployment: str, files: contextlib.ExitStack) -> dict[str, BinaryIO]:
    """The deployment's replicas' logs, opened (closed with `files`) before its undeploy: the deployer removes
    deployments/<name>/ once the undeploy's replicas have exited (services/deployer/backend.py LocalBackend._release,
    since session 32), and a file opened before is still read whole after that, with what the replicas wrote while
    they drained (_log_lines)."""
    opened: dict[str, BinaryIO] = {}
    for path in sorted((stack.data_dir / "deployments" / deployment).glob("replica-*.log")):
        with contextlib.suppress(OSError):  # one gone meanwhile (KEPT_LOGS): the others
            opened[path.stem] = files.enter_context(open(path, "rb"))  # noqa: SIM115 - closed with `files`
    return opened


def _log_lines(stack, deployment: str, replica_logs: dict[str, BinaryIO]) -> list[str]:
    """What the stack's services and the deployment's replicas said about it: warnings and errors of the replicas
    (their logs opened before the undeploy, _open_replica_logs, and any still in the folder), the lines of the
    deployer and the log store that name it, a quarantine, a failure or a replica killed."""
    lines: list[str] = []
    logs = dict(replica_logs)
    for path in sorted((stack.data_dir / "deployments" / deployment).glob("replica-*.log")):
        if path.stem not in logs:
            with contextlib.suppress(OSError):
                logs[path.stem] = path.read_bytes()
    for stem, log in sorted(logs.items()):
        if not isinstance(log, bytes):
            log.seek(0)
            log = log.read()
        lines += [f"{stem}: {line[:300]}" for line in log.decode(errors="replace").splitlines()
                  if " WARNING " in line or " ERROR " in line]
    for service in ("deployer", "log_store"):
        path = stack.data_dir / "logs" / f"{service}.log"
        with contextlib.suppress(OSError), open(path, "rb") as handle:
            handle.seek(stack.log_sizes.get(path.name, 0))
            lines += [f"{service}: {line[:300]}" for line in handle.read().decode(errors="replace").splitlines()
                      if deployment in line or any(word in line.lower() for word in ("quarantin", "failed", "killed"))]
    return lines[-40:]


def test_redeploy_under_shadow_load_loses_no_record(stack, alice):
    """A redeploy while four clients infer on a shadow deployment whose challenger is far behind, then an undeploy
    of the new set with its own queue: every answered inference is logged once. A stopping replica lets queued
    challengers run for 2 s and logs the rest of its queue without their columns (replica.drain_shadows), so the
    queue's length does not decide how long the rows take: the deployer returns once the replicas have exited,
    their rows acknowledged by the stream, and the log store has them within seconds (1-6 s measured at load 1-20,
    up to 1,900 queued records a replica). The load is counted in requests (2,800 at most whatever the machine's
    speed; it was 700 to 6,000 when it ran for a time); on a failure the message says where the missing rows are
    (stored or not, quarantined, what the replicas, the deployer and the log store logged)."""
    _upload_bytes(stack, alice, "shadowchamp", ccfraud_onnx())
    _upload_framework(stack, alice, "shadowslow", SLOW_CHALLENGER, "python")
    definition = {"steps": [{"ShadowDeploy": {"champion": {"name": "shadowchamp"},
                                              "challengers": [{"name": "shadowslow"}]}}]}
    deployment, url, pipeline = _deploy_definition(stack, alice, "redeployed", definition)
    load = BoundedLoad(url, alice.token)
    files = contextlib.ExitStack()
    try:
        load.allow(BEFORE_REDEPLOY)
        load.settle()
        load.allow(DURING_REDEPLOY, DURING_PACE)  # the swap happens under load
        redeployed = post(stack, "pipelines/deploy", alice.token, {
            "deploy_id": "redeployed", "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
            "pipeline_id": pipeline["pipeline_pk_id"]})
        assert redeployed.status_code == 200, redeployed.text
        during = load.sent
        load.allow(AFTER_REDEPLOY)
        load.settle()
        assert not load.failed, load.failed[:10]
        answered = sorted(load.answered)
        replica_logs = _open_replica_logs(stack, deployment, files)  # the undeploy removes them
        # and the replicas that took over stop gracefully too, with their own backlog of shadow work
        undeployed = post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"],
                                                                     "deployment_id": redeployed.json()["id"]})
        assert undeployed.status_code == 200, undeployed.text
        deadline = time.monotonic() + 60
        while True:
            rows = all_rows(stack, alice, "redeployed", dataset=["in", "out_shadowslow"], restarting_ok=True)
            if rows is not None and len(rows) >= len(answered) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        rows = all_rows(stack, alice, "redeployed", dataset=["in", "out_shadowslow"])
        logged = sorted(int(r["in"]["tensor"][0]) for r in rows)
        if logged != answered:
            missing = sorted(set(answered) - set(logged))
            phases = {"before the redeploy": sum(v < BEFORE_REDEPLOY for v in missing),
                      "sent while it ran": sum(BEFORE_REDEPLOY <= v < during for v in missing),
                      "sent after it": sum(v >= during for v in missing)}
            stored, quarantined = _stored_rows(stack, alice, "redeployed")
            pytest.fail(f"{len(logged)} rows logged ({len(logged) - len(set(logged))} twice) of {len(answered)} "
                        f"answered; missing: {phases}, e.g. {missing[:10]}; the log store indexed {stored} rows and "
                        f"quarantined {quarantined} batches of the pipeline; logs:\n" +
                        "\n".join(_log_lines(stack, deployment, replica_logs)))
    finally:
        load.stop()
        files.close()
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})
