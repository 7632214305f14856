"""Bus identities against the real embedded NATS: no anonymous connections; every service is connected as itself;
the front-door `client` identity reaches token-checked commands and its own replies and nothing else (it cannot
read every subject, answer `auth.keys.get`, read other identities' replies, publish inference logs, events or
engine requests, or call the services' internal token-less subjects); a service identity cannot stand in for
another service, create or reconfigure the platform's streams (the bootstrap step's) or another service's
consumer."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import nats
import nats.errors
import pytest

from shared import bus_identities, subjects
from shared.messages import Reply
from shared.sealed import sealed_request

pytestmark = pytest.mark.integration


async def _connect(stack, identity: str, errors: list[str]):
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(stack.nats_url(identity), inbox_prefix=f"_INBOX.{identity}", error_cb=on_error,
                              allow_reconnect=False)


async def _settle(nc) -> None:
    await nc.flush()
    await asyncio.sleep(0.3)  # permission violations arrive asynchronously (-ERR)


async def test_a_connection_without_credentials_is_refused(stack):
    port = stack.env["RAILYARD_STACK__NATS_PORT"]
    for url in (f"nats://127.0.0.1:{port}", f"nats://client:wrong-password@127.0.0.1:{port}"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)


async def test_the_client_identity_reaches_token_checked_commands_only(stack, alice):
    errors: list[str] = []
    nc = await _connect(stack, "client", errors)
    try:
        # the front door works: a token-checked command and its reply
        reply = Reply.model_validate_json((await sealed_request(nc,
            subjects.AUTH_WORKSPACES_LIST_USERS, json.dumps({"workspace_id": alice.workspace_id}).encode(),
            timeout=10, headers={"authorization": f"Bearer {alice.token}"})).data)
        assert reply.ok, reply
        # ... on another service too (the client's list names every token-checked command one by one)
        projects = Reply.model_validate_json((await sealed_request(nc,
            subjects.LINEAGE_PROJECTS_LIST, json.dumps({"workspace_id": alice.workspace_id}).encode(),
            timeout=10, headers={"authorization": f"Bearer {alice.token}"})).data)
        assert projects.ok and "projects" in projects.data, projects
        assert not errors

        answers: list[str] = []

        async def answered(msg) -> None:
            answers.append(msg.subject)

        await nc.subscribe("_INBOX.client.probe.>", cb=answered)  # where answers to the publishes below would come
        for subject in (">", "auth.>", subjects.AUTH_KEYS_GET, "_INBOX.gateway.>", "logs.inference.>", "events.>"):
            await nc.subscribe(subject)
        forged = {"user_id": alice.user_id, "revoked_before": 9e9}
        # internal service-to-service subjects of several services: they trust the caller's bus identity, not a
        # token, so an outside caller could use them for any workspace (docs/security.md, Bus identities)
        by_id = {"workspace_id": alice.workspace_id, "deployment_id": 1, "feature": "x"}
        task_token = {"user_id": alice.user_id, "workspace_id": alice.workspace_id, "ttl": 60, "task_id": "t",
                      "run_id": "r"}
        for subject, body in ((f"{subjects.INFERENCE_LOGS_SUBJECTS[0][:-1]}forged", b"{}"),
                              (subjects.EVENT_USER_DEACTIVATED, json.dumps(forged).encode()),
                              (subjects.EVENT_SIGNING_KEY_ROTATED, b'{"kid": "forged"}'),
                              (subjects.engine_infer("anything-1"), b""),
                              (subjects.AUTH_TOKEN_ISSUE, b"{}"), (subjects.AUTH_KEYS_GET, b"{}"),
                              (subjects.AUTH_TOKEN_ISSUE_TASK, json.dumps(task_token).encode()),
                              (subjects.AUTH_REVOCATIONS_LIST, b"{}"),
                              (subjects.LOG_STORE_READ_FIELD, b"{}"), (subjects.LOG_STORE_MAINTENANCE, b"{}"),
                              (subjects.MONITORING_REFERENCE_FEATURE, json.dumps(by_id).encode()),
                              (subjects.LINEAGE_EVENTS_COUNT, b"{}"), (subjects.health("registry"), b"{}"),
                              ("$JS.API.STREAM.NAMES", b"{}")):
            await nc.publish(subject, body, reply=f"_INBOX.client.probe.{subject.replace('.', '_')}")
        await _settle(nc)
        assert not answers, answers  # nothing reached a service, nothing answered
    finally:
        await nc.close()
    said = "\n".join(errors).lower()  # nats.py lowercases the server's -ERR text
    for subject in (">", "auth.>", subjects.AUTH_KEYS_GET, "_INBOX.gateway.>", "logs.inference.>", "events.>"):
        assert f'permissions violation for subscription to "{subject.lower()}"' in said, (subject, said)
    for subject in ("logs.inference.forged", subjects.EVENT_USER_DEACTIVATED, subjects.EVENT_SIGNING_KEY_ROTATED,
                    subjects.engine_infer("anything-1"), subjects.AUTH_TOKEN_ISSUE, subjects.AUTH_KEYS_GET,
                    subjects.AUTH_TOKEN_ISSUE_TASK, subjects.AUTH_REVOCATIONS_LIST, subjects.LOG_STORE_READ_FIELD,
                    subjects.LOG_STORE_MAINTENANCE, subjects.MONITORING_REFERENCE_FEATURE,
                    subjects.LINEAGE_EVENTS_COUNT, subjects.health("registry"), "$JS.API.STREAM.NAMES"):
        assert f'permissions violation for publish to "{subject.lower()}"' in said, (subject, said)
    # the forged deactivation reached nobody: alice's token still works
    assert alice.client.post("workspaces/list", {})["workspaces"]


async def test_a_service_identity_cannot_stand_in_for_another(stack):
    errors: list[str] = []
    nc = await _connect(stack, "engine", errors)
    try:
        await nc.subscribe("auth.>")
        await nc.subscribe(subjects.LOG_STORE_QUERY)
        await nc.publish(subjects.EVENT_USER_DEACTIVATED, b"{}")
        await nc.publish(subjects.EVENT_PIPELINE_DEPLOYED, b"{}")
        await nc.publish(subjects.AUTH_TOKEN_ISSUE, b"{}")
        # the JetStream API: no deleting, reading, re-pointing or capturing streams, no other service's consumer
        for subject in JETSTREAM_REFUSED:
            await nc.publish(subject, b"{}", reply="_INBOX.engine.js")
        await _settle(nc)
    finally:
        await nc.close()
    said = "\n".join(errors).lower()
    assert 'permissions violation for subscription to "auth.>"' in said
    assert f'permissions violation for subscription to "{subjects.LOG_STORE_QUERY}"' in said
    for subject in (subjects.EVENT_USER_DEACTIVATED, subjects.EVENT_PIPELINE_DEPLOYED, subjects.AUTH_TOKEN_ISSUE,
                    *JETSTREAM_REFUSED):
        assert f'permissions violation for publish to "{subject.lower()}"' in said, (subject, said)


JETSTREAM_REFUSED = ("$JS.API.STREAM.DELETE.EVENTS", "$JS.API.STREAM.PURGE.INFERENCE_LOGS",
                     "$JS.API.STREAM.MSG.GET.EVENTS", "$JS.API.STREAM.CREATE.CAPTURE", "$JS.API.STREAM.UPDATE.EVENTS",
                     "$JS.API.STREAM.CREATE.EVENTS", "$JS.API.STREAM.CREATE.INFERENCE_LOGS",
                     f"$JS.API.CONSUMER.DURABLE.CREATE.INFERENCE_LOGS.{subjects.INFERENCE_LOGS_DURABLE}",
                     f"$JS.API.CONSUMER.MSG.NEXT.EVENTS.{subjects.LINEAGE_EVENTS_DURABLE}",
                     f"$JS.API.CONSUMER.DELETE.INFERENCE_LOGS.{subjects.INFERENCE_LOGS_DURABLE}")


async def test_no_service_makes_or_reconfigures_a_stream_or_the_log_stores_consumer(stack):
    """The platform's streams are the bootstrap step's (`bootstrap` identity, before any service starts) and the log
    store's consumer is the log store's: the former stream managers and the engine are refused creating or updating
    EVENTS and INFERENCE_LOGS with a capturing subject, and the lineage service and the engine creating or
    re-pointing the log store's consumer (a create also updates an existing consumer), through either create API;
    afterwards both streams and the consumer are as the stack made them."""
    from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

    logs, durable = subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE
    capture = {subjects.EVENTS_STREAM: [*subjects.EVENTS_SUBJECTS, subjects.AUTH_TOKEN_ISSUE],
               logs: [*subjects.INFERENCE_LOGS_SUBJECTS, "_INBOX.>"]}
    elsewhere = "logs.inference.nowhere"

    async def attempt(identity: str) -> tuple[list, str, list[str]]:
        errors: list[str] = []
        nc = await _connect(stack, identity, errors)
        js = nc.jetstream(timeout=1.0)
        tries, refused = [], []
        for stream, wanted in capture.items():
            tries += [js.add_stream(StreamConfig(name=stream, subjects=wanted)),
                      js.update_stream(StreamConfig(name=stream, subjects=wanted))]
            refused += [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]
        if identity != "log_store":
            tries += [js.add_consumer(logs, ConsumerConfig(durable_name=durable, filter_subject=elsewhere,
                                                           deliver_policy=DeliverPolicy.NEW)),
                      js.add_consumer(logs, ConsumerConfig(name=durable, durable_name=durable, filter_subject=elsewhere,
                                                           deliver_policy=DeliverPolicy.NEW))]
            refused += [f"$JS.API.CONSUMER.DURABLE.CREATE.{logs}.{durable}",
                        f"$JS.API.CONSUMER.CREATE.{logs}.{durable}.{elsewhere}"]
        try:
            outcomes = await asyncio.gather(*tries, return_exceptions=True)
            await _settle(nc)
        finally:
            await nc.close()
        return outcomes, "\n".join(errors).lower(), refused

    for identity, (outcomes, said, refused) in zip(
            ("workflow_lineage", "log_store", "engine"),
            await asyncio.gather(*(attempt(i) for i in ("workflow_lineage", "log_store", "engine"))), strict=True):
        assert all(isinstance(outcome, Exception) for outcome in outcomes), (identity, outcomes)
        for subject in refused:
            assert f'permissions violation for publish to "{subject.lower()}"' in said, (identity, subject, said)

    ops = await nats.connect(stack.nats_url("ops"), allow_reconnect=False)
    try:
        js = ops.jetstream()
        for stream in subjects.STREAMS:
            assert (await js.stream_info(stream)).config.subjects == list(subjects.STREAMS[stream]), stream
        consumer = (await js.consumer_info(logs, durable)).config
        assert consumer.filter_subject == subjects.INFERENCE_LOGS_SUBJECTS[0], consumer
        assert consumer.deliver_policy == DeliverPolicy.ALL, consumer
    finally:
        await ops.close()


async def test_the_assay_runner_reads_the_log_stores_consumer_info_and_nothing_more(stack):
    """The assay scheduler reads how far the log store has stored INFERENCE_LOGS (stream info, the log store
    consumer's info) and is refused pulling from, pausing or deleting that consumer."""
    logs, durable = subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE
    errors: list[str] = []
    nc = await _connect(stack, "assay_runner", errors)
    js = nc.jetstream(timeout=2.0)
    try:
        assert (await js.stream_info(logs)).state.last_seq >= 0
        info = await js.consumer_info(logs, durable)
        assert info.ack_floor is not None and info.config.durable_name == durable
        tries = [js.pause_consumer(logs, durable, "2999-01-01T00:00:00Z"), js.delete_consumer(logs, durable),
                 nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{logs}.{durable}", b'{"batch": 1, "expires": 100000000}',
                            timeout=1.0)]
        outcomes = await asyncio.gather(*tries, return_exceptions=True)
        await _settle(nc)
    finally:
        await nc.close()
    assert all(isinstance(outcome, Exception) for outcome in outcomes), outcomes
    said = "\n".join(errors).lower()
    for verb in ("pause", "delete", "msg.next"):
        assert f'permissions violation for publish to "$js.api.consumer.{verb}.{logs}.{durable}"'.lower() in said, \
            (verb, said)
    ops = await nats.connect(stack.nats_url("ops"), allow_reconnect=False)
    try:
        info = await ops.jetstream().consumer_info(logs, durable)
        assert not info.paused, info
    finally:
        await ops.close()


def test_each_service_creates_pulls_and_acknowledges_its_own_consumers(stack, alice):
    """Without `$JS.API.>`, every durable consumer in deploy/nats-permissions.json exists, has a pull request
    waiting (its service may fetch), and the lineage consumer's acknowledgements advance (its service may ack);
    no service was refused anything on the way."""
    wanted = {(stream, name) for service in subjects.SERVICES
              for stream, names in bus_identities.durables(service).items() for name in names}
    port = stack.env["RAILYARD_STACK__NATS_MONITOR_PORT"]
    deadline = time.monotonic() + 20
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz?consumers=true", timeout=10) as response:
            report = json.loads(response.read())
        consumers = {(stream["name"], consumer["name"]): consumer for account in report.get("account_details", [])
                     for stream in account.get("stream_detail", []) for consumer in stream.get("consumer_detail", [])}
        missing = wanted - set(consumers)
        idle = {key for key in wanted & set(consumers) if not consumers[key].get("num_waiting")}
        lineage = consumers.get((subjects.EVENTS_STREAM, subjects.LINEAGE_EVENTS_DURABLE), {})
        acked = lineage.get("ack_floor", {}).get("consumer_seq", 0) > 0
        if not missing and not idle and acked:
            break
        assert time.monotonic() < deadline, (missing, idle, lineage)
        time.sleep(0.2)
    refused = [line for log in (stack.data_dir / "logs").glob("*.log")
               for line in log.read_text(errors="replace").splitlines() if "permissions violation" in line.lower()]
    assert not refused, refused[:5]


def test_every_service_is_connected_as_itself(stack):
    port = stack.env["RAILYARD_STACK__NATS_MONITOR_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?auth=true&limit=1024", timeout=10) as response:
        connections = json.loads(response.read())["connections"]
    users = {c.get("name", ""): c.get("authorized_user") for c in connections}
    for service in subjects.SERVICES:
        named = [user for name, user in users.items() if name == f"railyard-{service}"]
        assert named and set(named) == {service}, (service, users)
    assert all(user for user in users.values()), users  # nobody anonymous
    engines = [user for name, user in users.items() if name.startswith("railyard-engine-")]
    assert set(engines) <= {"engine"}, engines


@pytest.fixture
def empty_nats(stack, tmp_path):
    """A second, empty nats-server with the stack's identities and permissions; its URL without credentials."""
    import subprocess

    from shared.embedded import servers
    from shared.settings import StackSettings
    from tests.stack import free_ports

    client, monitor = free_ports(2)
    cfg = StackSettings(nats_port=client, nats_monitor_port=monitor)
    spec = servers.nats_server(cfg, tmp_path)
    servers.add_nats_authorization(tmp_path, servers.Secrets(stack.secrets()))
    process = subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        servers.wait_until(lambda: servers.nats_ready(cfg), "NATS", 30, lambda: process.poll() is None)
        yield f"nats://127.0.0.1:{client}"
    finally:
        process.kill()
        process.wait()


async def test_a_record_published_before_the_log_store_ever_ran_is_kept(stack, empty_nats):
    """On a brand-new bus the bootstrap step alone (no service has run yet) makes the streams and the log store's
    consumer, so an engine's record published before the log store first starts waits in INFERENCE_LOGS for it:
    with interest retention and no consumer, the acknowledged record would have been dropped."""
    from shared.bus_streams import bootstrap_streams
    from shared.settings import NatsSettings, Settings

    def as_identity(identity: str) -> str:
        return empty_nats.replace("nats://", f"nats://{identity}:{stack.secrets()[f'nats_password_{identity}']}@")

    bootstrap = NatsSettings(url=empty_nats, user=bus_identities.BOOTSTRAP,
                             password=stack.secrets()[f"nats_password_{bus_identities.BOOTSTRAP}"])
    await bootstrap_streams(Settings().model_copy(update={"nats": bootstrap}))
    engine = await nats.connect(as_identity(bus_identities.ENGINE), inbox_prefix="_INBOX.engine",
                                allow_reconnect=False)
    try:
        ack = await engine.jetstream().publish("logs.inference.early", b"a record", timeout=5)
        assert ack.stream == subjects.INFERENCE_LOGS_STREAM
    finally:
        await engine.close()
    ops = await nats.connect(as_identity("ops"), allow_reconnect=False)
    try:
        js = ops.jetstream()
        assert (await js.stream_info(subjects.INFERENCE_LOGS_STREAM)).state.messages == 1
        consumer = await js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)
        assert consumer.num_pending == 1, consumer
    finally:
        await ops.close()
