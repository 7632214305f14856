"""The log store takes an inference log batch only when its `Railyard-Log` header agrees with the platform: the
deployment its subject names is the header's, and the deployer announced that deployment (events.pipeline.deployed)
in the workspace the header names (services/log_store/deployments.py). Every replica connects as `engine`, so before
this a compromised replica could log into another workspace by naming it in the header. Batches are published here as
the engine publishes them (tests/integration/log_owners.py announces the deployments no deployer made)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path

import asyncpg
import nats as nats_client
import pytest

from services.log_store.deployments import DURABLE
from shared import subjects
from shared.log_segments import ENGINE_SUFFIX, SEGMENT_HEADER, key_prefix
from shared.logrecords import BATCH_ID, LOG_HEADER, MSG_ID, log_header
from shared.messages.deployer import PipelineServing
from shared.settings import LogSettings
from tests.integration.conftest import query, service_schema
from tests.integration.log_owners import announce, fake_deployment
from tests.integration.test_logs import _values, all_rows, rows_with, wait_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _table(values: list[float], at_ms: int) -> bytes:
    import numpy as np
    import pyarrow as pa

    from shared.arrow_codec import tensor_array, to_ipc_stream

    n = len(values)
    return to_ipc_stream(pa.table({
        "time": pa.array([at_ms] * n, pa.int64()),
        "in.tensor": tensor_array(np.array([[v] * 3 for v in values], dtype=np.float32)),
        "out.dense_1": tensor_array(np.array([[v] for v in values], dtype=np.float32)),
        "metadata.last_model": pa.array(["{}"] * n), "metadata.pipeline_version": pa.array(["v"] * n),
        "metadata.elapsed": pa.array([[1, 2]] * n, pa.list_(pa.int64())),
        "metadata.dropped": pa.array([[]] * n, pa.list_(pa.string()))}))


async def _send(nc, subject_deployment: str, header: str, body: bytes, segment: bool = False) -> str:
    batch_id = str(uuid.uuid4())
    headers = {MSG_ID: batch_id, BATCH_ID: batch_id, LOG_HEADER: header}
    if segment:
        headers[SEGMENT_HEADER] = "1"
    await nc.jetstream().publish(f"logs.inference.{subject_deployment}", body, headers=headers)
    return batch_id


STORED_WITHIN = 6.0  # seconds from a late announcement until the batches held for it are stored (a wake-up)
WAITING = "wait for the deployer to announce it"  # the log store's line for a deployment whose batches it holds


def _unknown_retry(stack) -> float:
    """Seconds before a held batch first comes back (logs.unknown_retry, tests/stack.py): it comes back after 1, 3, 7,
    15, 31 ... times that (the delay doubles at each return, at most 60 s)."""
    return float(stack.env["RAILYARD_LOGS__UNKNOWN_RETRY"])


HOLD = 21  # times logs.unknown_retry the late-announcement tests hold their batches before announcing them


def _hold(stack, started: float) -> None:
    """The late-announcement tests' scenario, not a wait for something: until HOLD * r after `started` (taken before
    the batches were sent; r = logs.unknown_retry). A held batch is nak'd at the log store's next flush, ~flush_interval
    f after it arrived, so it comes back at ~r+f, 3r+2f, 7r+3f, 15r+4f and 31r+5f after it was sent, later under load
    (measured, one batch at load 5: 1.2, 2.5, 4.8, 9.0 and 17.3 s): at 21r (10.5 s) its fourth return has passed and
    its fifth is over 6 s away, and one more flush stores it, so code that leaves held batches to their nak's delay
    fails the STORED_WITHIN bound. At 16r (8 s, 61e7141f) the fourth return came after the announcement, and such code
    stored the batches within a second of it: the test could not fail on what it was written for."""
    retry = _unknown_retry(stack)
    flush = float(stack.env.get("RAILYARD_LOGS__FLUSH_INTERVAL", LogSettings().flush_interval))
    assert 31 * retry + 6 * flush - HOLD * retry >= STORED_WITHIN + 0.5, \
        "the test stack's unknown_retry leaves no time to tell a wake-up from a return at the nak's delay"
    time.sleep(max(0.0, started + HOLD * retry - time.monotonic()))


def _wait_held(log: Path, deployment: str, within: float = 30.0) -> None:
    """Until the log store writing `log` has held a batch of `deployment` (its line saying the batches wait)."""
    deadline = time.monotonic() + within
    while deployment not in "".join(line for line in log.read_text(errors="replace").splitlines() if WAITING in line):
        assert time.monotonic() < deadline, f"the log store never held a batch of {deployment}"
        time.sleep(0.1)


def _after_a_later_batch(stack, account, pipeline: str, deployment: str, value: float) -> list[float]:
    """The pipeline's logged values once a batch sent now (one row, `value`, on `deployment`, which is announced) is
    stored: every batch the log store took before is stored by then, a wrong copy included (test_logs.rows_with). A
    fixed sleep before asserting a batch was not stored proved nothing on a slow host. A held batch's return at its
    nak's delay (seconds later, after this batch) is not covered; a 1 s sleep did not cover it either."""
    async def publish() -> None:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await _send(nc, deployment, log_header(account.workspace_id, pipeline, deployment, "v"),
                        _table([value], int(time.time() * 1000)))
        finally:
            await nc.close()

    asyncio.run(publish())
    return _values(rows_with(stack, account, pipeline, value, order="Asc"))


async def _quarantine_reasons(stack, batch_ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch("SELECT batch_id, reason FROM log_store.quarantine WHERE batch_id = ANY($1::text[])",
                                batch_ids)
    finally:
        await conn.close()
    return {r["batch_id"]: r["reason"] for r in rows}


def test_a_batch_naming_another_workspace_than_its_deployment_s_is_quarantined_and_readable_nowhere(
        stack, alice, bob, admin):
    """Workspaces A (alice) and B (bob) both have a pipeline named `shared`; B's deployment logs. A batch on B's
    deployment whose header names workspace A (rows, or a segment description under A's prefix), and one whose
    subject is B's deployment but whose header names A's: quarantined, saying why, listed for administrators; none of
    their rows shows in either workspace's log. B's own batch is stored. A description whose header is B's but whose
    key lies under A's prefix is refused too. On the old code the forged rows were stored in A's log."""
    pipeline = "shared"
    for account in (alice, bob):
        _create_once(stack, account, pipeline)
    dep_a, dep_b = fake_deployment(alice.workspace_id, pipeline), fake_deployment(bob.workspace_id, pipeline)
    now = int(time.time() * 1000)
    header_a = log_header(alice.workspace_id, pipeline, dep_b, "v")  # B's deployment, A's workspace
    header_b = log_header(bob.workspace_id, pipeline, dep_b, "v")
    key_a = f"{key_prefix(alice.workspace_id, pipeline)}2026/12/04/{uuid.uuid4().hex}{ENGINE_SUFFIX}"
    description = json.dumps({"key": key_a, "bytes": 100, "rows": 1, "min_time": now, "max_time": now,
                              "schema_fp": "fp", "versions": ["v"], "dropped": []}).encode()

    async def publish() -> tuple[list[str], str]:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await announce(nc, alice.workspace_id, dep_a)
            await announce(nc, bob.workspace_id, dep_b)
            forged = [
                await _send(nc, dep_b, header_a, _table([666.0], now)),  # rows into A from B's deployment
                await _send(nc, dep_b, header_a, description, segment=True),  # a segment of A's, from B's
                # the subject is A's deployment, the header B's: which one it is, nothing says
                await _send(nc, dep_a, header_b, _table([667.0], now)),
                # B's own header, but the segment lies under A's prefix
                await _send(nc, dep_b, header_b, description, segment=True),
            ]
            good = await _send(nc, dep_b, header_b, _table([1.0, 2.0], now))
        finally:
            await nc.close()
        return forged, good

    forged, _ = asyncio.run(publish())
    assert _values(wait_rows(stack, bob, pipeline, 2, order="Asc")) == [1.0, 2.0]  # the correct batch is stored
    deadline = time.monotonic() + 60
    while len(reasons := asyncio.run(_quarantine_reasons(stack, forged))) < len(forged):
        assert time.monotonic() < deadline, f"quarantined: {reasons}"
        time.sleep(0.2)
    expected = f"belongs to workspace {bob.workspace_id}, not to workspace {alice.workspace_id}"
    assert expected in reasons[forged[0]] and expected in reasons[forged[1]], reasons
    assert "its subject names deployment" in reasons[forged[2]], reasons
    assert "not one of the pipeline's engine-written segments" in reasons[forged[3]], reasons
    listed = admin.post("pipelines/list_quarantined_logs", {"limit": 1000})
    assert set(forged) <= {b["batch_id"] for b in listed["batches"]}
    # every forged batch was decided (quarantined) before these later ones were sent: once they are stored, a wrongly
    # stored copy of a forged one would be too
    assert _after_a_later_batch(stack, alice, pipeline, dep_a, 3.0) == [3.0]
    assert _after_a_later_batch(stack, bob, pipeline, dep_b, 4.0) == [1.0, 2.0, 4.0]


def test_a_batch_of_a_deployment_not_announced_yet_waits_and_is_stored_once_it_is(stack, alice):
    """The deployer's announcement of a deployment may come after its first batches (its outbox behind, the deployer
    away): they are neither stored unverified nor quarantined but left unacknowledged, and stored, once, when the
    announcement comes. On the old code they were stored at once, whatever the header said."""
    pipeline = f"late-{uuid.uuid4().hex[:6]}"
    _create_once(stack, alice, pipeline)
    deployment = fake_deployment(alice.workspace_id, pipeline)
    now = int(time.time() * 1000)

    async def publish() -> list[str]:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            header = log_header(alice.workspace_id, pipeline, deployment, "v")
            return [await _send(nc, deployment, header, _table([float(i)], now + i)) for i in range(3)]
        finally:
            await nc.close()

    batches = asyncio.run(publish())
    # the log store has fetched them, held them and had them back at least once (at 1 and 3 times unknown_retry)
    _wait_held(stack.data_dir / "logs" / "log_store.log", deployment)
    time.sleep(3 * _unknown_retry(stack))
    assert all_rows(stack, alice, pipeline) == []  # not stored unverified
    assert asyncio.run(_quarantine_reasons(stack, batches)) == {}  # nor quarantined

    async def announce_it() -> None:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await announce(nc, alice.workspace_id, deployment)
        finally:
            await nc.close()

    asyncio.run(announce_it())
    assert _values(wait_rows(stack, alice, pipeline, 3, timeout=30, order="Asc")) == [0.0, 1.0, 2.0]
    assert _after_a_later_batch(stack, alice, pipeline, deployment, 3.0) == [0.0, 1.0, 2.0, 3.0]  # each once


def test_batches_held_for_a_late_announcement_are_stored_as_soon_as_it_lands(stack, alice):
    """A held batch comes back at its nak's delay, which doubles at each return (logs.unknown_retry r, then 2r, 4r,
    8r ... at most 60 s; the test stack's r is 0.5 s, the default 2 s): held 21r (10.5 s), its next return is
    over 6 s away (_hold). Once the announcement lands the log store asks its held batches back at once (a plain
    NAK: the server delivers them again now): they are stored within a few seconds, each once, and a batch of another
    deployment still not announced stays held (neither stored nor quarantined). On the old code they waited for their
    delay to run out (stored over 6 s after the announcement, _hold)."""
    pipeline, other = f"later-{uuid.uuid4().hex[:6]}", f"never-{uuid.uuid4().hex[:6]}"
    for name in (pipeline, other):
        _create_once(stack, alice, name)
    deployment, unannounced = fake_deployment(alice.workspace_id, pipeline), fake_deployment(alice.workspace_id, other)
    now = int(time.time() * 1000)

    async def publish() -> list[str]:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            header = log_header(alice.workspace_id, pipeline, deployment, "v")
            batches = [await _send(nc, deployment, header, _table([float(i)], now + i)) for i in range(3)]
            return batches + [await _send(nc, unannounced, log_header(alice.workspace_id, other, unannounced, "v"),
                                          _table([9.0], now))]
        finally:
            await nc.close()

    started = time.monotonic()
    batches = asyncio.run(publish())
    _hold(stack, started)  # each batch back four times, the fifth over 6 s after the announcement
    assert all_rows(stack, alice, pipeline) == []

    async def announce_it() -> None:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await announce(nc, alice.workspace_id, deployment)
        finally:
            await nc.close()

    announced = time.monotonic()
    asyncio.run(announce_it())
    rows = wait_rows(stack, alice, pipeline, 3, timeout=30, order="Asc")
    took = time.monotonic() - announced
    assert took < STORED_WITHIN, f"the held batches were stored {took:.1f} s after their deployment's announcement"
    assert _values(rows) == [0.0, 1.0, 2.0]
    assert _after_a_later_batch(stack, alice, pipeline, deployment, 3.0) == [0.0, 1.0, 2.0, 3.0]  # each once
    assert all_rows(stack, alice, other) == []  # the other deployment's batch is still held, not stored
    assert asyncio.run(_quarantine_reasons(stack, batches)) == {}  # nor quarantined

    async def announce_the_other() -> None:  # a batch held for the rest of the session would hold the ack floor
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await announce(nc, alice.workspace_id, unannounced)
        finally:
            await nc.close()

    asyncio.run(announce_the_other())
    assert _values(wait_rows(stack, alice, other, 1, timeout=30)) == [9.0]


def _create_once(stack, account, name: str) -> None:
    from tests.integration.conftest import post

    response = post(stack, "pipelines/create", account.token,
                    {"pipeline_id": name, "workspace_id": account.workspace_id, "definition": {}})
    assert response.status_code in (200, 409), response.text


def test_a_deployment_the_deployer_names_serving_at_its_start_has_its_batches_stored(stack, alice):
    """A deployment whose events.pipeline.deployed EVENTS no longer has (older than its retention, at an upgrade):
    the deployer names it again at its start (events.pipeline.serving), and the log store takes its batches held
    meanwhile. On the old code the log store did not read that subject: held, then quarantined."""
    pipeline = f"serving-{uuid.uuid4().hex[:6]}"
    _create_once(stack, alice, pipeline)
    deployment = fake_deployment(alice.workspace_id, pipeline)
    now = int(time.time() * 1000)

    async def publish() -> None:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            header = log_header(alice.workspace_id, pipeline, deployment, "v")
            await _send(nc, deployment, header, _table([5.0], now))
            event = PipelineServing(deployment_id=0, name=deployment, pipeline_id=0, workspace_id=alice.workspace_id,
                                    pipeline_version=str(uuid.uuid4()))
            await nc.jetstream().publish(subjects.EVENT_PIPELINE_SERVING, event.model_dump_json().encode(),
                                         headers={"Nats-Msg-Id": str(event.event_id)})
        finally:
            await nc.close()

    asyncio.run(publish())
    assert _values(wait_rows(stack, alice, pipeline, 1, timeout=30)) == [5.0]


def test_an_announcement_that_is_not_one_is_a_dead_letter_of_the_log_store(stack):
    """On the old code an events.pipeline.deployed the log store could not read was a line in its log, acknowledged:
    its deployment's batches were quarantined an hour later and nothing an operator lists said why. Now it is a row
    of log_store.dead_letters (`railyard dead-letters list --service log_store`), kept once."""
    marker = f"malformed-{uuid.uuid4().hex[:8]}"
    payload = json.dumps({"event_id": str(uuid.uuid4()), "name": marker}).encode()  # no workspace, no deployment id

    async def publish() -> None:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await nc.jetstream().publish(subjects.EVENT_PIPELINE_DEPLOYED, payload)
        finally:
            await nc.close()

    asyncio.run(publish())
    deadline = time.monotonic() + 60
    while not (rows := query(stack, "SELECT durable, subject, error, payload FROM log_store.dead_letters"
                                    " WHERE payload = $1", payload)):
        assert time.monotonic() < deadline, "the malformed announcement was never kept"
        time.sleep(0.2)
    assert [(r["durable"], r["subject"]) for r in rows] == [(DURABLE, subjects.EVENT_PIPELINE_DEPLOYED)]
    assert "workspace_id" in rows[0]["error"]


async def test_serving_events_the_previous_log_stores_consumer_read_past_are_read_after_the_upgrade(
        stack, monkeypatch):
    """The log store before events.pipeline.serving read `log-store-deployments`, filtered on events.pipeline.deployed
    alone. An upgraded deployer's start writes its serving events while that log store still runs: its next fetch
    finds nothing of its subject and the consumer's next sequence moves to the stream's end (so does a deployed event
    read after them). The upgraded log store must still read those serving events: 58cadbb changed that consumer's
    filter (add_consumer), which does not take it back, so they were never read (the lookup below stayed empty for
    60 s). Now it reads its own new durable from the stream's first event. Runs the log store's Deployments in the
    test's process, on durables named after the real ones (the previous one's name is history, hence the literal) with
    the test's suffix, and a schema of the test's own."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from services.log_store import deployments

    suffix = f"test-{uuid.uuid4().hex[:6]}"
    previous = f"log-store-deployments-{suffix}"  # the consumer the log store before this version made
    monkeypatch.setattr(deployments, "DURABLE", f"{deployments.DURABLE}-{suffix}")
    nc = await nats_client.connect(stack.settings().nats.url)
    js = nc.jetstream()
    try:
        old = await js.pull_subscribe(subjects.EVENT_PIPELINE_DEPLOYED, durable=previous,
                                      stream=subjects.EVENTS_STREAM, config=ConsumerConfig(
                                          durable_name=previous, ack_policy=AckPolicy.EXPLICIT,
                                          deliver_policy=DeliverPolicy.ALL, ack_wait=30.0, max_deliver=-1,
                                          filter_subject=subjects.EVENT_PIPELINE_DEPLOYED))

        async def fetch_all() -> None:  # as the previous log store does, until a fetch finds nothing
            for _ in range(1000):
                try:
                    msgs = await old.fetch(batch=256, timeout=1.0)
                except (TimeoutError, nats_client.errors.TimeoutError):  # nats-py 2.15 also raises the builtin
                    return  # one when the deadline runs out between fetch's two pull requests (deployments.py does)
                for msg in msgs:
                    await msg.ack()
            raise AssertionError("the previous consumer never ran out of deployed events")

        await fetch_all()
        # the upgraded deployer starts and names its deployment; the previous log store still runs and fetches
        name = f"upgraded-{uuid.uuid4().hex[:8]}-0"
        event = PipelineServing(deployment_id=0, name=name, pipeline_id=0, workspace_id=41,
                                pipeline_version=str(uuid.uuid4()), pipeline_name="p")
        await js.publish(subjects.EVENT_PIPELINE_SERVING, event.model_dump_json().encode())
        await fetch_all()
        await old.unsubscribe()
        async with service_schema(stack, "logstoreupgrade", Path("services/log_store/migrations")) as pool:
            known = deployments.Deployments(pool)
            await known.start(js)
            try:
                deadline = time.monotonic() + 60
                while not await known.lookup([name]):
                    assert time.monotonic() < deadline, "the serving event written before the upgrade was never read"
                    await asyncio.sleep(0.2)
                assert await known.lookup([name]) == {name: deployments.Owner(41, "p")}
            finally:
                await known.stop()
    finally:
        for durable in (previous, deployments.DURABLE):
            with contextlib.suppress(Exception):
                await js.delete_consumer(subjects.EVENTS_STREAM, durable)
        await nc.close()


def test_a_batch_naming_another_pipeline_of_its_workspace_is_quarantined(stack, alice):
    """The deployer's announcement names the deployment's pipeline: a batch of pipeline `a`'s deployment whose header
    names pipeline `b` of the same workspace is quarantined, saying why, and nothing of it is in `b`'s log; `a`'s own
    batch is stored. On the old code only the workspace was checked and its rows went into `b`'s log."""
    suffix = uuid.uuid4().hex[:6]
    pipe_a, pipe_b = f"pa-{suffix}", f"pb-{suffix}"
    for pipeline in (pipe_a, pipe_b):
        _create_once(stack, alice, pipeline)
    deployment = fake_deployment(alice.workspace_id, pipe_a)
    now = int(time.time() * 1000)

    async def publish() -> tuple[str, str]:
        nc = await nats_client.connect(stack.settings().nats.url)
        try:
            await announce(nc, alice.workspace_id, deployment, pipeline_name=pipe_a)
            forged = await _send(nc, deployment, log_header(alice.workspace_id, pipe_b, deployment, "v"),
                                 _table([666.0], now))
            good = await _send(nc, deployment, log_header(alice.workspace_id, pipe_a, deployment, "v"),
                               _table([1.0], now))
        finally:
            await nc.close()
        return forged, good

    forged, _ = asyncio.run(publish())
    assert _values(wait_rows(stack, alice, pipe_a, 1)) == [1.0]
    deadline = time.monotonic() + 60
    while not (reasons := asyncio.run(_quarantine_reasons(stack, [forged]))):
        assert time.monotonic() < deadline, "the batch naming another pipeline was never quarantined"
        time.sleep(0.2)
    assert f"belongs to pipeline {pipe_a!r}, not to pipeline {pipe_b!r}" in reasons[forged], reasons
    assert all_rows(stack, alice, pipe_b) == []


async def test_a_later_announcement_fills_in_the_pipeline_name_an_older_deployer_left_out(stack):
    """A deployment announced by a deployer before `pipeline_name` is checked by workspace only; the deployer's next
    start names it again (events.pipeline.serving, with the name), which fills the name in (the first announcement's
    workspace stands), so its batches are checked by pipeline from then on. On the old code the second announcement
    changed nothing."""
    from services.log_store.deployments import Deployments, Owner

    async with service_schema(stack, "logstorepipeline", Path("services/log_store/migrations")) as pool:
        known = Deployments(pool)
        old = PipelineServing(deployment_id=3, name="d-3", pipeline_id=2, workspace_id=9, pipeline_version="v")
        await known.record(old)
        assert await known.lookup(["d-3"]) == {"d-3": Owner(9, None)}  # cached so
        await known.record(old.model_copy(update={"pipeline_name": "p", "workspace_id": 10}))
        assert await known.lookup(["d-3"]) == {"d-3": Owner(9, "p")}
        await known.record(old.model_copy(update={"pipeline_name": "q"}))  # a name once known stands
        assert await known.lookup(["d-3"]) == {"d-3": Owner(9, "p")}
