"""A service answers a request on its caller's inbox and nowhere else (shared/bus_identities.py: services may publish
`_INBOX.>`, no `allow_responses`). With NATS's `allow_responses` a responder may publish to whatever reply subject a
request names, so until 2026-12-05 anyone holding the `client` identity, which may publish the token-checked commands
only, had any service publish its answer (an error about the missing token is enough) wherever they chose: on
`logs.inference.>` and `events.>` (kept by the INFERENCE_LOGS and EVENTS streams, whose consumers then read it, and
whose byte limits refuse new messages once full), on another service's command subject, on the JetStream API. Real
NATS with the stack's rendered permissions; the `ops` identity listens on every such subject."""

from __future__ import annotations

import asyncio

import nats
import pytest

from shared import subjects
from tests.local_nats import subscribed

pytestmark = pytest.mark.integration

# none in the publish list of the services answering below (registry, auth, deployer): a service may still publish
# its own subjects, so an answer sent to one of those (the registry's on `events.model.x`) is refused by the command
# subscriber's own check of the reply subject, not by NATS (shared/bus.py)
TARGETS = ("logs.inference.audit-reply", "events.assay.audit_reply", subjects.AUTH_USERS_INVITE,
           subjects.AUTH_TOKEN_ISSUE_TASK, "$JS.API.CONSUMER.INFO.EVENTS.audit-reply", "$JS.API.STREAM.PURGE.EVENTS")


async def test_a_command_answers_on_its_callers_inbox_only(stack):
    ops = await nats.connect(stack.nats_url("ops"))
    client = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
    seen: list[str] = []

    async def heard(message) -> None:
        seen.append(message.subject)

    try:
        for target in TARGETS:
            await ops.subscribe(target, cb=heard)
        await subscribed(ops)  # listening before anything is asked: else `seen == []` could pass without it
        for command in (subjects.REGISTRY_MODELS_LIST, subjects.AUTH_USERS_QUERY, subjects.DEPLOYER_PIPELINES_LIST):
            for target in TARGETS:
                await client.publish(command, b"{}", reply=target)
            await client.flush()
            # the same command on the caller's own inbox is answered (a refusal: no token), so the services got the
            # requests above and had their answers to give
            answer = await client.request(command, b"{}", timeout=10)
            assert answer.data, command
            # and on ops's own inbox: that answer comes from the service's connection after whatever it published
            # for the requests above, and the server passes one connection's messages on to ops in order, so once
            # ops has it, anything published elsewhere reached ops (a fixed sleep could end first on a slow host);
            # a few loop turns more let the other subscriptions' callbacks run what they were handed. (A service
            # runs `nats.command_workers` (8) commands of a subject at once, so "after" rests on these requests all
            # doing the same: no token, refused before any work, without a wait. test_reply_elsewhere.py's forged
            # commands do work, and their answers came after such an answer: a fixed wait stays there)
            assert (await ops.request(command, b"{}", timeout=10)).data, command
        for _ in range(20):
            await asyncio.sleep(0)
        assert seen == [], seen
    finally:
        await client.close()
        await ops.close()


async def test_an_engine_replica_answers_what_it_was_asked_and_publishes_into_no_inbox(stack):
    """Replicas keep `allow_responses` (only services ask them; shared/bus_identities.py ANSWER_RECEIVED_ONLY): a
    replica answers a request it received, and cannot publish into another identity's inbox, where with `_INBOX.>`
    it could answer the gateway's inferences meant for other tenants' replicas (their inboxes count up under one
    prefix every replica sees)."""
    ops = await nats.connect(stack.nats_url("ops"))
    engine = await nats.connect(stack.nats_url("engine"), inbox_prefix="_INBOX.engine")
    gateway = await nats.connect(stack.nats_url("gateway"), inbox_prefix="_INBOX.gateway")
    seen: list[str] = []
    arrived = asyncio.Event()

    async def heard(message) -> None:
        seen.append(message.subject)
        arrived.set()

    async def answer(message) -> None:
        await message.respond(b"answered")

    try:
        for target in ("_INBOX.gateway.>", "_INBOX.deployer.>", "_INBOX.client.>"):
            await ops.subscribe(target, cb=heard)
        await ops.flush()
        await engine.subscribe(subjects.engine_infer("audit-reply"), cb=answer)
        await subscribed(engine)  # at the server before the gateway's request (else: no responders)
        reply = await gateway.request(subjects.engine_infer("audit-reply"), b"{}", timeout=10)
        assert reply.data == b"answered"
        # ops hears that answer on the gateway's inbox: its wildcard subscriptions are live, so the forged publishes
        # below would reach it
        async with asyncio.timeout(5):
            while reply.subject not in seen:
                arrived.clear()
                await arrived.wait()
        forged = ("_INBOX.gateway.forged.1", "_INBOX.deployer.forged.1", "_INBOX.client.forged.1")
        for target in forged:
            await engine.publish(target, b"forged")
        await engine.flush()
        await asyncio.sleep(1.0)
        # only the forged subjects count: the stack's own gateway and deployer answer their requests (revocation
        # pages, health reads) on inboxes under the same prefixes meanwhile (ci29b heard two such answers)
        assert [subject for subject in seen if subject in forged] == [], seen
    finally:
        await gateway.close()
        await engine.close()
        await ops.close()
