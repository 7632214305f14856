"""A batch the log store cannot store never stops ingestion (issue 14): a row that can be saved by changing its
form (an input column of an empty struct type) is stored with that column dropped and listed in
`metadata.dropped`; batches that cannot be stored at all go to quarantine (kept in object storage with the
reason, listed for administrators, an `events.logs.batch_quarantined` event) while the next 1,000 inferences
are all readable."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid

import nats as nats_client
import pyarrow as pa
import pytest
import requests
from nats.js.api import DeliverPolicy

from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, log_header
from tests.integration.conftest import post
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_logs import wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_framework
from tests.models import sample_rows

pytestmark = pytest.mark.integration
ARROW = "application/vnd.apache.arrow.file"
OWN_COLUMNS = b"""
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    return [{"score": [float(sum(v))]} for v in data["tensor"]]
"""


def _arrow_with_empty_struct(rows) -> bytes:
    table = pa.table({"tensor": tensor_array(rows),
                      "junk": pa.array([{}] * len(rows), pa.struct([]))})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_poison_batches_are_quarantined_and_ingestion_goes_on(stack, alice, admin):
    import asyncio

    _upload_framework(stack, alice, "ownscore", OWN_COLUMNS, "python")
    deployment, url, pipeline = _deploy_definition(
        stack, alice, "poisoned", {"steps": [{"ModelInference": {"models": [{"name": "ownscore"}]}}]})
    headers = {"Authorization": f"Bearer {alice.token}"}
    try:
        # 1. the case over HTTP: the logged input holds a struct<> column Parquet cannot store
        junk = requests.post(url, data=_arrow_with_empty_struct(sample_rows(1, seed=5)),
                             headers={**headers, "Content-Type": ARROW}, timeout=60)
        assert junk.status_code == 200, junk.text

        # 2. batches that cannot be stored at all, published onto the stream the engine publishes to
        quarantined_ids = [str(uuid.uuid4()) for _ in range(3)]
        events: list[dict] = []

        async def poison() -> None:
            nc = await nats_client.connect(stack.settings().nats.url)
            js = nc.jetstream()
            sub = await js.subscribe("events.logs.batch_quarantined", ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.NEW)
            subject = f"logs.inference.{deployment}"
            good_header = log_header(alice.workspace_id, "poisoned", deployment, "v")
            string_time = pa.table({"time": pa.array(["yesterday"]), "out.score": pa.array([1.0])})
            valid = pa.table({"time": pa.array([int(time.time() * 1000)], pa.int64()),
                              "out.score": tensor_array(sample_rows(1, seed=1)[:, :1])})
            bodies = [
                (b"not arrow at all", good_header),  # unreadable
                (to_ipc_stream(string_time), good_header),  # no usable time column
                # readable and encodable, but its workspace id is not its deployment's (nor fits the index)
                (to_ipc_stream(valid), json.dumps({"workspace_id": 2**70, "pipeline": "poisoned",
                                                   "deployment": deployment, "pipeline_version": "v"})),
            ]
            for batch_id, (body, header) in zip(quarantined_ids, bodies, strict=True):
                await js.publish(subject, body, headers={MSG_ID: batch_id, BATCH_ID: batch_id, LOG_HEADER: header})
            deadline = time.monotonic() + 60
            while len(events) < 3 and time.monotonic() < deadline:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats_client.errors.TimeoutError:
                    continue
                body = json.loads(msg.data)
                if body.get("batch_id") in quarantined_ids:
                    events.append(body)
            await nc.close()

        poisoner = threading.Thread(target=lambda: asyncio.run(poison()))
        poisoner.start()

        # 3. the next 1,000 inferences, from 4 clients, while the poison is dealt with
        results: list[int] = []
        lock = threading.Lock()
        todo = iter(range(1000))

        def load() -> None:
            session = requests.Session()
            while (index := next(todo, None)) is not None:
                row = sample_rows(1, seed=100 + index)
                row[0, 0] = float(index)
                status = session.post(url, data=json.dumps([{"tensor": row[0].tolist()}]),
                                      headers={**headers, "Content-Type": "application/json; format=pandas-records"},
                                      timeout=60).status_code
                with lock:
                    results.append(status)

        workers = [threading.Thread(target=load) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(180)
        poisoner.join(90)
        assert results.count(200) == 1000

        rows = wait_rows(stack, alice, "poisoned", 1001, timeout=60, order="Asc")
        assert len(rows) == 1001  # every inference once, the junk one included
        dropped = [r for r in rows if r["metadata"].get("dropped")]
        assert len(dropped) == 1 and dropped[0]["metadata"]["dropped"] == ["in.junk"]
        assert "junk" not in dropped[0]["in"] and len(dropped[0]["in"]["tensor"]) == 29
        assert sorted(r["in"]["tensor"][0] for r in rows if not r["metadata"].get("dropped")) == \
            [float(i) for i in range(1000)]

        # 4. quarantined: listed for administrators with the reason, kept in object storage, an event each
        assert sorted(e["batch_id"] for e in events) == sorted(quarantined_ids), events
        listed = admin.post("pipelines/list_quarantined_logs", {"limit": 1000})
        mine = {b["batch_id"]: b for b in listed["batches"] if b["batch_id"] in quarantined_ids}
        assert set(mine) == set(quarantined_ids) and listed["total"] >= 3
        assert "not an inference log batch" in mine[quarantined_ids[0]]["reason"]
        assert "time" in mine[quarantined_ids[1]]["reason"]
        assert mine[quarantined_ids[2]]["workspace_id"] is None and mine[quarantined_ids[2]]["rows"] == 1
        assert all(b["pipeline"] == "poisoned" and b["bytes"] > 0 for b in mine.values())
        scoped = admin.post("pipelines/list_quarantined_logs", {"workspace_id": alice.workspace_id})
        assert {b["batch_id"] for b in scoped["batches"]} == set(quarantined_ids[:2])
        from tests.integration.test_registry import s3

        kept = [o.object_name for o in s3(stack).list_objects("railyard-logs", prefix="quarantine/", recursive=True)
                if o.object_name.endswith(".arrows")]
        assert len(kept) >= 3
        # members who are not administrators see nothing of it
        refused = post(stack, "pipelines/list_quarantined_logs", alice.token, {})
        assert refused.status_code == 403, refused.text
        bad = post(stack, "pipelines/list_quarantined_logs", admin.token, {"limit": 0})
        assert bad.status_code == 400, bad.text
    finally:
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


async def test_a_quarantined_segment_description_keeps_its_segment_from_the_orphan_sweep(stack, alice, admin):
    """An engine-written segment whose description the log store cannot commit (a NUL in a dropped column's name,
    a user's output column) is quarantined; the segment holding its rows is named by the quarantine row, so
    maintenance's orphan sweep (store.known_keys) keeps it (rev2: it kept only the JSON and the rows were swept)."""
    import asyncio

    from services.engine.logbatcher import LogBatcher
    from services.log_store import store
    from shared.db import create_pool
    from shared.log_segments import SEGMENT_HEADER
    from shared.objectstore import MinioObjectStore
    from shared.settings import LogSettings
    from tests.integration.test_logs import _create
    from tests.unit.test_log_batcher import RefusingStream, record

    await asyncio.to_thread(_create, stack, alice, "qdesc")
    deployment = {"name": fake_deployment(alice.workspace_id, "qdesc"), "pipeline": "qdesc", "pipeline_version": "v",
                  "workspace_id": alice.workspace_id}
    stream = RefusingStream()
    stream.full = False
    batcher = LogBatcher(stream, deployment, LogSettings(), 8 << 20, objects=MinioObjectStore(stack.settings().s3))
    batcher.add(record(1.0, rows=10))
    await batcher.flush()
    (body, headers), = stream.published
    described = json.loads(body)
    described["dropped"] = ["out.a\u0000b"]
    batch_id = str(uuid.uuid4())
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        await announce(nc, alice.workspace_id, deployment["name"])
        await nc.jetstream().publish(f"logs.inference.{deployment['name']}", json.dumps(described).encode(), headers={
            MSG_ID: batch_id, BATCH_ID: batch_id, LOG_HEADER: headers[LOG_HEADER], SEGMENT_HEADER: "1"})
    finally:
        await nc.close()
    deadline = time.monotonic() + 60
    while not (mine := [b for b in (await asyncio.to_thread(admin.post, "pipelines/list_quarantined_logs",
                                                            {"limit": 1000}))["batches"] if b["batch_id"] == batch_id]):
        assert time.monotonic() < deadline, "the description was not quarantined"
        await asyncio.sleep(0.3)
    assert mine[0]["rows"] == 10
    pool = await create_pool(stack.settings().postgres, "log_store")
    try:
        assert await store.known_keys(pool, [described["key"], described["key"] + "x"]) == {described["key"]}
    finally:
        await pool.close()
