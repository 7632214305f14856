"""Poison messages on the EVENTS stream's durable consumers (shared/consumers.py), on the real stack.

Every durable consumer (auth's two, lineage's `events.>`, monitoring's six) is handed a message that is not JSON on
its subject: it is delivered once, kept in the consuming service's `dead_letters` table with its subject and error,
terminated, and an event published after it is handled. Before, each was negatively acknowledged and redelivered
for ever.

A handler that fails for real (a trigger on auth's workspace_resources the test adds, raising for the test's
model ids: auth's own PostgreSQL refuses the insert) is redelivered with the backoff (the test stack's: 0.1 s
doubling up to 2 s) and handled once the failure passes; one that fails at every delivery is delivered exactly
`nats.consumer_max_deliver` times, its last failure kept as a dead letter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import nats as nats_client
import pytest

from shared import subjects
from shared.consumers import DeliveryPolicy
from shared.messages.assays import AssayThresholdCrossed
from shared.messages.auth import UserDeactivated
from shared.messages.deployer import PipelineVersionCreated
from shared.messages.monitoring_feedback import ReviewCreated
from shared.messages.registry import ModelUploaded, ModelVersionFinished
from shared.messages.tasks import TaskRunEvent
from shared.settings import NatsSettings
from tests.integration.conftest import post
from tests.stack import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LINEAGE = ("workflow_lineage", subjects.LINEAGE_EVENTS_DURABLE)
CONSUMERS: dict[str, list[tuple[str, str]]] = {  # subject: (schema, durable) of each consumer but lineage's
    subjects.EVENT_MODEL_UPLOADED: [("auth", "auth-model-uploaded"), ("monitoring", "monitoring-continuous-models")],
    subjects.EVENT_PIPELINE_VERSION_CREATED: [("auth", "auth-pipeline-created")],
    subjects.EVENT_MONITORING_REVIEW_CREATED: [("monitoring", "monitoring-continuous-reviews")],
    subjects.EVENT_ASSAY_ALERT: [("monitoring", "monitoring-continuous-assay-alerts")],
    subjects.EVENT_MODEL_VERSION_FINISHED: [("monitoring", "monitoring-continuous-conversions")],
    subjects.EVENT_TASK_RUN_SUCCEEDED: [("auth", "auth-task-runs-succeeded"),
                                        ("monitoring", "monitoring-continuous-runs-succeeded")],
    subjects.EVENT_TASK_RUN_FAILED: [("auth", "auth-task-runs-failed"),
                                     ("monitoring", "monitoring-continuous-runs-failed")],
}


def model_id() -> int:
    return random.randint(10**9, 2 * 10**9)


def valid_event(subject: str, workspace_id: int):
    """An event each consumer of `subject` handles (naming nothing monitoring knows: it has nothing to do)."""
    if subject == subjects.EVENT_MODEL_UPLOADED:
        return ModelUploaded(workspace_id=workspace_id, model_id=model_id(), model_version=uuid.uuid4(), name="m",
                             framework="onnx", status="ready")
    if subject == subjects.EVENT_PIPELINE_VERSION_CREATED:
        return PipelineVersionCreated(pipeline_id=model_id(), workspace_id=workspace_id, name="p",
                                      pipeline_version=str(uuid.uuid4()))
    if subject == subjects.EVENT_MONITORING_REVIEW_CREATED:
        return ReviewCreated(review_id=uuid.uuid4(), prediction_id=uuid.uuid4(), deployment_id=model_id(),
                             workspace_id=workspace_id)
    if subject == subjects.EVENT_ASSAY_ALERT:
        return AssayThresholdCrossed(assay_id=model_id(), name="a", workspace_id=workspace_id, pipeline_id=model_id(),
                                     pipeline_name="p", iopath="input 0 0", status="alert", score=1.0,
                                     warning_threshold=None, alert_threshold=0.5, window_start="2026-12-03T00:00:00Z",
                                     window_end="2026-12-03T01:00:00Z")
    if subject == subjects.EVENT_MODEL_VERSION_FINISHED:
        return ModelVersionFinished(workspace_id=workspace_id, model_id=model_id(), model_version=uuid.uuid4(),
                                    status="ready")
    return TaskRunEvent(run_id=uuid.uuid4(), task_id=uuid.uuid4(), orch_id=uuid.uuid4(), orch_sha="0" * 64,
                        workspace_id=workspace_id, owner_id="someone",
                        status="success" if subject == subjects.EVENT_TASK_RUN_SUCCEEDED else "failure")


def backoff_total(stack, deliveries: int) -> float:
    """Seconds of the waits between `deliveries` deliveries with the test stack's backoff (tests/stack.py)."""
    policy = DeliveryPolicy(deliveries, float(stack.env["RAILYARD_NATS__CONSUMER_BACKOFF"]),
                            float(stack.env["RAILYARD_NATS__CONSUMER_BACKOFF_MAX"]))
    return sum(policy.delay(n) for n in range(1, deliveries))


async def publish(js, subject: str, data: bytes) -> int:
    return (await js.publish(subject, data, stream=subjects.EVENTS_STREAM)).seq


async def handled(js, durable: str, seq: int, within: float = 30.0) -> None:
    """Wait until `durable` has settled (acknowledged or terminated) every message up to stream sequence `seq` and
    holds none it redelivered."""
    deadline = time.monotonic() + within
    while True:
        info = await js.consumer_info(subjects.EVENTS_STREAM, durable)
        if info.ack_floor.stream_seq >= seq and not info.num_redelivered:
            return
        assert time.monotonic() < deadline, f"{durable} never settled the messages up to {seq}: {info}"
        await asyncio.sleep(0.05)


async def dead_letters(conn, schema: str, durable: str, seq: int) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT * FROM {schema}.dead_letters WHERE durable = $1 AND stream_seq = $2",
                            durable, seq)


@pytest.mark.parametrize("subject", list(CONSUMERS))
async def test_a_message_that_does_not_decode_is_a_dead_letter_at_once_and_the_next_is_handled(stack, alice, subject):
    nc = await nats_client.connect(stack.settings().nats.url)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        js = nc.jetstream()
        poison = b"{not json " + uuid.uuid4().hex.encode()
        bad = await publish(js, subject, poison)
        event = valid_event(subject, alice.workspace_id)
        good = await publish(js, subject, event.model_dump_json().encode())
        for schema, durable in [*CONSUMERS[subject], LINEAGE]:
            await handled(js, durable, good)
            (row,) = await dead_letters(conn, schema, durable, bad)
            assert (row["subject"], row["stream"], row["deliveries"]) == (subject, subjects.EVENTS_STREAM, 1), durable
            assert "JSONDecodeError" in row["error"] and row["payload"] == poison, dict(row)
            assert row["payload_size"] == len(poison)
            assert not await dead_letters(conn, schema, durable, good), durable
        assert await conn.fetchval("SELECT count(*) FROM workflow_lineage.event_log WHERE event_id = $1",
                                   event.event_id) == 1
        if subject == subjects.EVENT_MODEL_UPLOADED:
            assert await conn.fetchval("SELECT count(*) FROM auth.workspace_resources WHERE workspace_id = $1 AND"
                                       " kind = 'model' AND resource_id = $2", alice.workspace_id, event.model_id)
        if subject == subjects.EVENT_PIPELINE_VERSION_CREATED:
            assert await conn.fetchval("SELECT count(*) FROM auth.workspace_resources WHERE workspace_id = $1 AND"
                                       " kind = 'pipeline' AND resource_id = $2", alice.workspace_id,
                                       event.pipeline_id)
    finally:
        await conn.close()
        await nc.close()


async def test_lineage_keeps_a_json_object_without_an_event_id_as_a_dead_letter(stack):
    nc = await nats_client.connect(stack.settings().nats.url)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        js = nc.jetstream()
        bad = await publish(js, "events.project.changed", b'{"project_id": 1}')
        await handled(js, LINEAGE[1], bad)
        (row,) = await dead_letters(conn, *LINEAGE, bad)
        assert row["error"] == "not an event: no event_id" and row["deliveries"] == 1
    finally:
        await conn.close()
        await nc.close()


async def test_json_nested_past_the_recursion_limit_is_a_dead_letter_at_once(stack):
    # json.loads raises RecursionError for it, not a ValueError: before, that escaped the policy and FastStream
    # nak'ed the message without a delay, for ever
    nc = await nats_client.connect(stack.settings().nats.url)
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        js = nc.jetstream()
        bad = await publish(js, subjects.EVENT_PIPELINE_VERSION_CREATED, b"[" * 100_000)
        for schema, durable in [("auth", "auth-pipeline-created"), LINEAGE]:
            await handled(js, durable, bad)
            (row,) = await dead_letters(conn, schema, durable, bad)
            assert row["deliveries"] == 1 and row["error"].startswith("RecursionError"), (durable, row["error"])
            assert row["payload_size"] == 100_000
    finally:
        await conn.close()
        await nc.close()


async def test_a_failing_handler_is_redelivered_with_backoff_up_to_max_deliver_then_a_dead_letter(stack, alice):
    flaky, broken, after = model_id(), model_id() + 1, model_id() + 2
    schema = f"poison_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    nc = await nats_client.connect(stack.settings().nats.url)
    # auth's insert of these model ids fails in auth's own database: `flaky` twice, `broken` every time; each
    # attempt counted by a sequence (not rolled back with the failed insert)
    await conn.execute(f"""
        CREATE SCHEMA {schema};
        CREATE SEQUENCE {schema}.flaky; CREATE SEQUENCE {schema}.broken;
        CREATE FUNCTION {schema}.fail() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog AS $$
        BEGIN
            IF NEW.resource_id = {flaky} AND nextval('{schema}.flaky') <= 2 THEN
                RAISE EXCEPTION 'injected failure of %', NEW.resource_id;
            END IF;
            IF NEW.resource_id = {broken} AND nextval('{schema}.broken') > 0 THEN
                RAISE EXCEPTION 'injected failure of %', NEW.resource_id;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {schema}_fail BEFORE INSERT ON auth.workspace_resources
            FOR EACH ROW EXECUTE FUNCTION {schema}.fail();""")
    durable = "auth-model-uploaded"
    max_deliver = NatsSettings().consumer_max_deliver  # the stack leaves it at its default

    async def attempts(name: str) -> int:
        row = await conn.fetchrow(f"SELECT last_value, is_called FROM {schema}.{name}")
        return row["last_value"] if row["is_called"] else 0

    async def resource(model: int) -> int:
        return await conn.fetchval("SELECT count(*) FROM auth.workspace_resources WHERE workspace_id = $1 AND"
                                   " kind = 'model' AND resource_id = $2", alice.workspace_id, model)

    def uploaded(model: int) -> bytes:
        return ModelUploaded(workspace_id=alice.workspace_id, model_id=model, model_version=uuid.uuid4(), name="m",
                             framework="onnx", status="ready", occurred_at=datetime.now(UTC)).model_dump_json().encode()

    try:
        js = nc.jetstream()
        started = await conn.fetchval("SELECT clock_timestamp()")  # PostgreSQL's clock, as the rows' created_at
        first = await publish(js, subjects.EVENT_MODEL_UPLOADED, uploaded(flaky))
        second = await publish(js, subjects.EVENT_MODEL_UPLOADED, uploaded(broken))
        await handled(js, durable, second, within=90)  # 10 deliveries over ~11 s
        assert await resource(flaky) == 1 and await attempts("flaky") == 3  # failed twice, stored at the third
        assert not await dead_letters(conn, "auth", durable, first)
        (row,) = await dead_letters(conn, "auth", durable, second)
        assert row["deliveries"] == max_deliver and "injected failure" in row["error"], dict(row)
        # redelivered after the backoff's delays (0.1 s doubling up to 2 s: 11.1 s for 9), not at once
        assert (row["created_at"] - started).total_seconds() >= 0.9 * backoff_total(stack, max_deliver)
        assert await attempts("broken") == max_deliver and not await resource(broken)
        last = await publish(js, subjects.EVENT_MODEL_UPLOADED, uploaded(after))
        await handled(js, durable, last)
        assert await resource(after) == 1
        assert await attempts("broken") == max_deliver  # terminated: never delivered again
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")  # the trigger with its function
        await conn.close()
        await nc.close()


async def test_a_stream_made_again_keeps_a_new_dead_letter_at_an_old_one_s_sequence(stack):
    """A stream deleted and made again numbers its messages from 1 again. Dead letters were keyed by (durable,
    stream sequence): the new poison message at an old one's sequence found its row "there", nothing was written, and
    it was terminated unrecorded. Real JetStream messages (a scratch stream, a durable pull consumer of the name the
    rows carry) into auth's real dead_letters table, as its migrations made it."""
    from nats.js.api import StreamConfig

    from shared.consumers import record_dead_letter

    tag = uuid.uuid4().hex[:10]
    stream, subject, durable = f"DEADLETTER_TEST_{tag}", f"deadletter_test.{tag}", f"test-{tag}"
    nc = await nats_client.connect(stack.settings().nats.url)
    pool = await asyncpg.create_pool(stack.settings().postgres.dsn, min_size=1, max_size=1,
                                     server_settings={"search_path": "auth"})
    js = nc.jetstream()

    async def poison(data: bytes):
        await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
        assert (await js.publish(subject, data, stream=stream)).seq == 1
        sub = await js.pull_subscribe(subject, durable=durable, stream=stream)
        (msg,) = await sub.fetch(1, timeout=5)
        return sub, msg

    try:
        sub, old = await poison(b"old poison")
        assert await record_dead_letter(pool, durable, old, "old error")
        await old.nak()  # a redelivery of the same message (a crash between the insert and the term): no second row
        (again,) = await sub.fetch(1, timeout=5)
        assert again.metadata.num_delivered == 2 and again.metadata.timestamp == old.metadata.timestamp
        assert not await record_dead_letter(pool, durable, again, "old error")
        await again.term()
        await js.delete_stream(stream)
        _, new = await poison(b"new poison")  # the stream made again: sequence 1 again, another message
        assert new.metadata.sequence.stream == old.metadata.sequence.stream
        assert await record_dead_letter(pool, durable, new, "new error"), "the new dead letter was not recorded"
        rows = await pool.fetch("SELECT payload, error, stream_time FROM dead_letters WHERE durable = $1"
                                " ORDER BY stream_time", durable)
        assert [(r["payload"], r["error"]) for r in rows] == [(b"old poison", "old error"),
                                                              (b"new poison", "new error")]
        assert [r["stream_time"] for r in rows] == [old.metadata.timestamp, new.metadata.timestamp]
    finally:
        await pool.execute("DELETE FROM dead_letters WHERE durable = $1", durable)
        with contextlib.suppress(Exception):  # deleted already when an assertion failed before it was made again
            await js.delete_stream(stream)
        await pool.close()
        await nc.close()


def dead_letters_cli(stack, *args: str, **settings_env: str) -> subprocess.CompletedProcess:
    """`railyard dead-letters ...` as an operator runs it: the superuser's DSN, the bus's `ops` identity (or what
    `settings_env` sets instead)."""
    settings = stack.settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")}
    env |= {"RAILYARD_POSTGRES__DSN": settings.postgres.dsn, "RAILYARD_NATS__URL": settings.nats.url}
    env |= settings_env
    return subprocess.run([sys.executable, "-m", "shared.cli", "dead-letters", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


async def test_an_operator_lists_a_dead_letter_and_replays_it_to_its_subject(stack, alice):
    """A dead letter of auth's (a model upload whose handler gave up) is listed, replayed to events.model.uploaded
    with its headers and a new Nats-Msg-Id, handled by auth this time, and marked replayed: listed no more, not
    replayed twice. A row whose payload was cut is not replayed."""
    model = model_id()
    event = ModelUploaded(workspace_id=alice.workspace_id, model_id=model, model_version=uuid.uuid4(), name="m",
                          framework="onnx", status="ready")
    payload = event.model_dump_json().encode()
    durable = "auth-model-uploaded"
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        js = nc.jetstream()
        seq = model  # a sequence no test publishes up to: the row is the operator's to find, not the stream's
        row_id, cut_id = [await conn.fetchval(
            "INSERT INTO auth.dead_letters (durable, stream_seq, stream_time, stream, subject, deliveries, error,"
            " payload, payload_size, headers) VALUES ($1, $2, now(), 'EVENTS', $3, 10, 'OSError: away', $4, $5, $6)"
            " RETURNING id", durable, seq + i, subjects.EVENT_MODEL_UPLOADED, payload, len(payload) + 1000 * i,
            json.dumps({"Nats-Msg-Id": str(event.event_id), "Traceparent": "00-abc-def-01"})) for i in (0, 1)]
        listed = dead_letters_cli(stack, "list", "--service", "auth", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["id"]: r for r in map(json.loads, listed.stdout.splitlines())}
        assert rows[row_id]["subject"] == subjects.EVENT_MODEL_UPLOADED and rows[row_id]["durable"] == durable
        assert rows[row_id]["replayed_at"] is None and cut_id in rows

        replayed = dead_letters_cli(stack, "replay", "auth", str(row_id))
        assert replayed.returncode == 0, replayed.stderr
        deadline = time.monotonic() + 30
        while not await conn.fetchval("SELECT count(*) FROM auth.workspace_resources WHERE workspace_id = $1 AND"
                                      " kind = 'model' AND resource_id = $2", alice.workspace_id, model):
            assert time.monotonic() < deadline, "auth never handled the replayed event"
            await asyncio.sleep(0.05)
        row = await conn.fetchrow("SELECT replayed_at, replay_msg_id FROM auth.dead_letters WHERE id = $1", row_id)
        assert row["replayed_at"] is not None
        sent = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_MODEL_UPLOADED)
        assert sent.data == payload and str(sent.seq) in replayed.stdout
        assert sent.headers["Nats-Msg-Id"] == row["replay_msg_id"] != str(event.event_id)
        assert sent.headers["Railyard-Replay-Of"] == f"auth/{row_id}" and sent.headers["Traceparent"] == "00-abc-def-01"

        again = dead_letters_cli(stack, "replay", "auth", str(row_id))
        assert again.returncode == 1 and "was replayed" in again.stderr and "Traceback" not in again.stderr
        assert (await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_MODEL_UPLOADED)).seq == sent.seq
        cut = dead_letters_cli(stack, "replay", "auth", str(cut_id))
        assert cut.returncode == 1 and "not replayed" in cut.stderr
        listed = dead_letters_cli(stack, "list", "--service", "auth", "--json")
        assert row_id not in {json.loads(line)["id"] for line in listed.stdout.splitlines()}
        listed = dead_letters_cli(stack, "list", "--service", "auth", "--all")
        assert listed.returncode == 0 and any(line.split()[1] == str(row_id) and " yes " in line
                                              for line in listed.stdout.splitlines()[1:])
    finally:
        await conn.execute("DELETE FROM auth.dead_letters WHERE durable = $1 AND stream_seq IN ($2, $3)", durable,
                           model, model + 1)
        await conn.close()
        await nc.close()


async def test_a_replay_run_again_after_its_mark_failed_is_not_sent_twice(stack, alice):
    """A replay whose publish the stream stored but whose mark failed (here: a trigger refuses the UPDATE) leaves
    the row unmarked; run again, it sends the same Nats-Msg-Id, which the stream drops as a duplicate: the event is on
    the stream once, and the row is marked with that id. With a new random id each run, every consumer of the
    subject received the event twice. `--again` afterwards is a new message."""
    model = model_id()
    event = ModelUploaded(workspace_id=alice.workspace_id, model_id=model, model_version=uuid.uuid4(), name="m",
                          framework="onnx", status="ready")
    payload = event.model_dump_json().encode()
    durable = "auth-model-uploaded"
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    nc = await nats_client.connect(stack.settings().nats.url)
    trigger = f"refuse_mark_{model}"
    try:
        js = nc.jetstream()
        row_id = await conn.fetchval(
            "INSERT INTO auth.dead_letters (durable, stream_seq, stream_time, stream, subject, deliveries, error,"
            " payload, payload_size, headers) VALUES ($1, $2, now(), 'EVENTS', $3, 10, 'OSError: away', $4, $5, '{}')"
            " RETURNING id", durable, model, subjects.EVENT_MODEL_UPLOADED, payload, len(payload))
        await conn.execute(f"CREATE FUNCTION public.{trigger}() RETURNS trigger LANGUAGE plpgsql AS"
                           " $$ BEGIN RAISE EXCEPTION 'mark refused'; END $$")
        await conn.execute(f"CREATE TRIGGER {trigger} BEFORE UPDATE ON auth.dead_letters FOR EACH ROW"
                           f" WHEN (NEW.id = {int(row_id)}) EXECUTE FUNCTION public.{trigger}()")

        failed = dead_letters_cli(stack, "replay", "auth", str(row_id))
        assert failed.returncode == 1 and "mark refused" in failed.stderr, failed.stderr
        sent = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_MODEL_UPLOADED)
        assert sent.data == payload and sent.headers["Railyard-Replay-Of"] == f"auth/{row_id}"
        assert await conn.fetchval("SELECT replayed_at FROM auth.dead_letters WHERE id = $1", row_id) is None

        await conn.execute(f"DROP TRIGGER {trigger} ON auth.dead_letters")
        replayed = dead_letters_cli(stack, "replay", "auth", str(row_id))
        assert replayed.returncode == 0, replayed.stderr
        assert "the stream kept it once" in replayed.stdout
        assert (await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_MODEL_UPLOADED)).seq == sent.seq
        assert await conn.fetchval("SELECT replay_msg_id FROM auth.dead_letters WHERE id = $1 AND replayed_at IS NOT"
                                   " NULL", row_id) == sent.headers["Nats-Msg-Id"]

        again = dead_letters_cli(stack, "replay", "auth", str(row_id), "--again")
        assert again.returncode == 0, again.stderr
        resent = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_MODEL_UPLOADED)
        assert resent.seq > sent.seq and resent.headers["Nats-Msg-Id"] != sent.headers["Nats-Msg-Id"]
    finally:
        await conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON auth.dead_letters")
        await conn.execute(f"DROP FUNCTION IF EXISTS public.{trigger}()")
        await conn.execute("DELETE FROM auth.dead_letters WHERE durable = $1 AND stream_seq = $2", durable, model)
        await conn.close()
        await nc.close()


async def test_a_replay_that_cannot_be_sent_says_why_in_one_line_with_the_readme_s_exit_status(stack, alice):
    """Not found: 4. The bus away: 5, within seconds (nats-py's defaults retried for two minutes, a traceback on
    stderr for each attempt, while the row was locked). An identity that may not publish the subject: its
    permissions violation (it was a bare timeout). A cluster's comma-separated URL, its first server away: sent."""
    payload = ModelUploaded(workspace_id=alice.workspace_id, model_id=model_id(), model_version=uuid.uuid4(), name="m",
                            framework="onnx", status="ready").model_dump_json().encode()
    seq = model_id()
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        row_id = await conn.fetchval(
            "INSERT INTO auth.dead_letters (durable, stream_seq, stream_time, stream, subject, deliveries, error,"
            " payload, payload_size, headers) VALUES ('auth-model-uploaded', $1, now(), 'EVENTS', $2, 10, 'e', $3, $4,"
            " '{}') RETURNING id", seq, subjects.EVENT_MODEL_UPLOADED, payload, len(payload))
        missing = dead_letters_cli(stack, "replay", "auth", str(row_id + 10**6))
        assert missing.returncode == 4 and "has no dead letter" in missing.stderr

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            away = f"nats://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        unreachable = dead_letters_cli(stack, "replay", "auth", str(row_id), RAILYARD_NATS__URL=away)
        assert time.monotonic() - started < 30 and unreachable.returncode == 5, unreachable.stderr
        assert len(unreachable.stderr.splitlines()) == 1 and "Connect call failed" in unreachable.stderr

        port = stack.env["RAILYARD_STACK__NATS_PORT"]
        # auth's identity may read its durable's info (the replay checks the durable is there) but not publish
        refused = dead_letters_cli(stack, "replay", "auth", str(row_id), RAILYARD_NATS__URL=f"nats://127.0.0.1:{port}",
                                   RAILYARD_NATS__USER="auth",
                                   RAILYARD_NATS__PASSWORD=stack.secrets()["nats_password_auth"])
        assert refused.returncode == 1 and refused.stderr.splitlines() == [
            f'railyard: Error: nats: permissions violation for publish to "{subjects.EVENT_MODEL_UPLOADED}"']
        # the client identity may not even read the durable's info: that violation, nothing sent
        blind = dead_letters_cli(stack, "replay", "auth", str(row_id), RAILYARD_NATS__URL=f"nats://127.0.0.1:{port}",
                                 RAILYARD_NATS__USER="client",
                                 RAILYARD_NATS__PASSWORD=stack.secrets()["nats_password_client"])
        assert blind.returncode == 1 and blind.stderr.splitlines() == [
            'railyard: Error: nats: permissions violation for publish to'
            f' "$js.api.consumer.info.{subjects.EVENTS_STREAM.lower()}.auth-model-uploaded"'], blind.stderr
        assert await conn.fetchval("SELECT replayed_at FROM auth.dead_letters WHERE id = $1", row_id) is None

        cluster = dead_letters_cli(stack, "replay", "auth", str(row_id),
                                   RAILYARD_NATS__URL=f"{away}, nats://127.0.0.1:{port}", RAILYARD_NATS__USER="ops",
                                   RAILYARD_NATS__PASSWORD=stack.secrets()["nats_password_ops"])
        assert cluster.returncode == 0, cluster.stderr
        assert await conn.fetchval("SELECT replayed_at FROM auth.dead_letters WHERE id = $1", row_id) is not None
    finally:
        await conn.execute("DELETE FROM auth.dead_letters WHERE durable = 'auth-model-uploaded' AND stream_seq = $1",
                           seq)
        await conn.close()


def stack_cli(stack, *args: str, **settings_env: str) -> subprocess.CompletedProcess:
    """`railyard dead-letters ...` against the embedded stack with no database or bus setting at all: only where
    its data directory is (`settings_env`; or `--data-dir` in `args`), as after `make run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILYARD_")} | settings_env
    return subprocess.run([sys.executable, "-m", "shared.cli", "dead-letters", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


async def insert_dead_letter(conn, schema: str, durable: str, seq: int, payload: bytes) -> int:
    return await conn.fetchval(
        f"INSERT INTO {schema}.dead_letters (durable, stream_seq, stream_time, stream, subject, deliveries, error,"
        " payload, payload_size, headers) VALUES ($1, $2, now(), 'EVENTS', $3, 10, 'OSError: away', $4, $5, '{}')"
        " RETURNING id", durable, seq, subjects.EVENT_MODEL_UPLOADED, payload, len(payload))


async def test_the_command_finds_the_stack_s_credentials_in_its_data_directory(stack, alice):
    """Against a `make run` stack, `railyard dead-letters list|replay` needs no setting: the database's and the bus's
    credentials come from the data directory's secrets.json and ports from its run/stack.json (RAILYARD_STACK__DATA_DIR
    or --data-dir), as `railyard login` finds its. Before, it read the environment only: no DSN (PostgreSQL refused
    the default role without a password) and no bus identity, and --data-dir was not an option (exit 2)."""
    model = model_id()
    payload = ModelUploaded(workspace_id=alice.workspace_id, model_id=model, model_version=uuid.uuid4(), name="m",
                            framework="onnx", status="ready").model_dump_json().encode()
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        row_id = await insert_dead_letter(conn, "auth", "auth-model-uploaded", model, payload)
        listed = stack_cli(stack, "list", "--service", "auth", "--json", RAILYARD_STACK__DATA_DIR=str(stack.data_dir))
        assert listed.returncode == 0, listed.stderr
        assert row_id in {json.loads(line)["id"] for line in listed.stdout.splitlines()}
        replayed = stack_cli(stack, "replay", "auth", str(row_id), "--data-dir", str(stack.data_dir))
        assert replayed.returncode == 0, replayed.stderr
        assert await conn.fetchval("SELECT replayed_at FROM auth.dead_letters WHERE id = $1", row_id) is not None
        deadline = time.monotonic() + 30
        while not await conn.fetchval("SELECT count(*) FROM auth.workspace_resources WHERE workspace_id = $1 AND"
                                      " kind = 'model' AND resource_id = $2", alice.workspace_id, model):
            assert time.monotonic() < deadline, "auth never handled the replayed event"
            await asyncio.sleep(0.05)
    finally:
        await conn.execute("DELETE FROM auth.dead_letters WHERE durable = 'auth-model-uploaded' AND stream_seq = $1",
                           model)
        await conn.close()


@pytest.mark.parametrize("schema, durable, other", [
    ("auth", "auth-model-uploaded", LINEAGE[1]),
    LINEAGE + ("auth-model-uploaded",),
], ids=["auth-s", "lineage-s"])
async def test_a_replay_reaches_only_the_durable_that_gave_up_on_it(stack, alice, schema, durable, other):
    """Two durables of one subject on EVENTS (auth's `auth-model-uploaded` and lineage's `events.>`): a dead letter
    of one, replayed, is handled by that one, and the other acknowledges it without handling it. Before, the replay
    went to every consumer of the subject: lineage recorded an event auth had dead-lettered (its event_id new to
    it), auth inserted the resource of an event only lineage had given up on."""
    model = model_id()
    event = ModelUploaded(workspace_id=alice.workspace_id, model_id=model, model_version=uuid.uuid4(), name="m",
                          framework="onnx", status="ready")
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    nc = await nats_client.connect(stack.settings().nats.url)

    async def recorded() -> dict[str, int]:
        return {
            "auth-model-uploaded": await conn.fetchval(
                "SELECT count(*) FROM auth.workspace_resources WHERE workspace_id = $1 AND kind = 'model' AND"
                " resource_id = $2", alice.workspace_id, model),
            LINEAGE[1]: await conn.fetchval("SELECT count(*) FROM workflow_lineage.event_log WHERE event_id = $1",
                                            event.event_id)}

    try:
        js = nc.jetstream()
        row_id = await insert_dead_letter(conn, schema, durable, model, event.model_dump_json().encode())
        replayed = dead_letters_cli(stack, "replay", schema, str(row_id))
        assert replayed.returncode == 0, replayed.stderr
        sent = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_MODEL_UPLOADED)
        for name in (durable, other, "monitoring-continuous-models"):
            await handled(js, name, sent.seq)
        assert await recorded() == {durable: 1, other: 0}
        assert sent.headers["Railyard-Replay-For"] == durable and f"for {durable}" in replayed.stdout
        assert not await conn.fetchval(f"SELECT count(*) FROM {schema}.dead_letters WHERE stream_seq = $1", sent.seq)
    finally:
        await conn.execute(f"DELETE FROM {schema}.dead_letters WHERE durable = $1 AND stream_seq = $2", durable, model)
        await conn.close()
        await nc.close()


async def test_a_replay_is_not_applied_again_by_the_services_revocation_caches(stack, alice):
    """A lineage dead letter of `events.user.deactivated`, replayed for lineage: the gateway's and every service's
    revocation cache (shared/authz.py's VerifierFeed, core NATS subscribers of the subject) ignore it, having applied
    the original when it was published. Here no original was (the row is made by hand, naming alice with a moment
    after her token), so a cache that applied the replay refuses her token. Before, every core subscriber of the
    subject applied the replay: alice was signed out everywhere until the next revocation poll."""
    event = UserDeactivated(user_id=uuid.UUID(alice.user_id), revoked_before=time.time() + 60)
    payload = event.model_dump_json().encode()
    assert post(stack, "workspaces/list", alice.token).status_code == 200
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    nc = await nats_client.connect(stack.settings().nats.url)
    seq = model_id()
    try:
        row_id = await conn.fetchval(
            "INSERT INTO workflow_lineage.dead_letters (durable, stream_seq, stream_time, stream, subject, deliveries,"
            " error, payload, payload_size, headers) VALUES ($1, $2, now(), 'EVENTS', $3, 10, 'OSError: away', $4, $5,"
            " '{}') RETURNING id", LINEAGE[1], seq, subjects.EVENT_USER_DEACTIVATED, payload, len(payload))
        replayed = dead_letters_cli(stack, "replay", LINEAGE[0], str(row_id))
        assert replayed.returncode == 0, replayed.stderr
        js = nc.jetstream()
        sent = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_USER_DEACTIVATED)
        assert sent.headers["Railyard-Replay-For"] == LINEAGE[1]
        await handled(js, LINEAGE[1], sent.seq)  # lineage recorded it: the core subscribers had it before
        assert await conn.fetchval("SELECT count(*) FROM workflow_lineage.event_log WHERE event_id = $1",
                                   event.event_id) == 1
        await asyncio.sleep(0.5)
        for route, body in (("workspaces/list", {}), ("models/list", {"workspace_id": alice.workspace_id})):
            answer = post(stack, route, alice.token, body)  # the gateway's cache, auth's, the registry's
            assert answer.status_code == 200, (route, answer.text[:300])  # on the old code: 401, token revoked
    finally:
        await conn.execute("DELETE FROM workflow_lineage.dead_letters WHERE durable = $1 AND stream_seq = $2",
                           LINEAGE[1], seq)
        await conn.close()
        await nc.close()


async def last_uploaded(js) -> int:
    """The stream sequence of the newest events.model.uploaded on EVENTS (0: none)."""
    from nats.js.errors import NotFoundError

    try:
        return (await js.get_last_msg(subjects.EVENTS_STREAM, subjects.EVENT_MODEL_UPLOADED)).seq
    except NotFoundError:
        return 0


@pytest.mark.parametrize("durable", ["auth-gone-" + uuid.uuid4().hex[:8], "auth-pipeline-created"],
                         ids=["durable-gone", "durable-reads-another-subject"])
async def test_a_replay_nobody_would_handle_is_refused_and_not_marked(stack, alice, durable):
    """A replay is handled by its own durable only (every other acknowledges it unread): a dead letter whose durable
    no longer exists on EVENTS (a consumer renamed or removed since), or no longer reads the subject, is refused
    in one line, nothing published and the row left unmarked. Before, it was published, handled by nobody, and the
    row marked replayed: the event lost with the command saying it was replayed."""
    event = ModelUploaded(workspace_id=alice.workspace_id, model_id=model_id(), model_version=uuid.uuid4(),
                          name="m", framework="onnx", status="ready")
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    nc = await nats_client.connect(stack.settings().nats.url)
    seq = model_id()
    try:
        js = nc.jetstream()
        before = await last_uploaded(js)
        row_id = await insert_dead_letter(conn, "auth", durable, seq, event.model_dump_json().encode())
        replayed = dead_letters_cli(stack, "replay", "auth", str(row_id))
        assert replayed.returncode == 1, (replayed.stdout, replayed.stderr)
        assert replayed.stderr.count("\n") == 1 and durable in replayed.stderr and "not replayed" in replayed.stderr
        assert await conn.fetchval("SELECT replayed_at FROM auth.dead_letters WHERE id = $1", row_id) is None
        assert await last_uploaded(js) == before, "published"
    finally:
        await conn.execute("DELETE FROM auth.dead_letters WHERE durable = $1 AND stream_seq = $2", durable, seq)
        await conn.close()
        await nc.close()
