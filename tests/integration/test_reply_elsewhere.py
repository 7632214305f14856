"""A `client` cannot aim a service's answer at a subject that service may publish itself (audit F3, session 28).
Services publish on the callers' inboxes (`_INBOX.>`) and their own subjects only (test_bus_reply_subjects.py), but
a request's reply subject is the caller's to name: `registry.models.list` with reply `events.model.uploaded` had the
registry publish its answer into the EVENTS stream (its consumers dead-letter it; a flood fills the stream's byte
cap, and `discard: new` then refuses real events), and the command ran whatever the answer's fate, a reply on
`logs.inference.x` (which no command service may publish) included. Now the command subscriber and the log store's
raw responder run nothing and publish nothing for a reply subject that is not an inbox (shared/raw_bus.py,
`answers_elsewhere`). Real stack, real NATS with the stack's permissions; `ops` listens on every such subject."""

from __future__ import annotations

import asyncio
import json
import uuid

import nats
import pytest

from shared import sealed, subjects
from tests.integration.conftest import post
from tests.local_nats import subscribed

pytestmark = pytest.mark.integration


async def test_a_command_aimed_at_a_services_own_subject_is_not_run_and_not_answered(stack, alice):
    tag = uuid.uuid4().hex[:8]
    workspaces = {reply: f"elsewhere-{tag}-{n}" for n, reply in enumerate(
        (f"events.workspace.f3_{tag}", f"logs.inference.f3_{tag}", f"events.model.f3_{tag}"))}
    pipelines = {reply: f"elsewhere{tag}{n}" for n, reply in enumerate(
        (f"events.pipeline.f3_{tag}", f"logs.inference.f3p_{tag}"))}
    bearer = {"authorization": f"Bearer {alice.token}"}
    # (command, body, reply subject): each answering service may publish its reply subject's events itself
    # (auth events.workspace.>, registry events.model.>, deployer events.pipeline.>, log store events.logs.>)
    # but none logs.inference.> (there NATS dropped the answer, while the command still ran)
    requests = [
        *((subjects.AUTH_WORKSPACES_CREATE, {"workspace_name": name}, reply) for reply, name in workspaces.items()),
        *((subjects.DEPLOYER_PIPELINES_CREATE, {"pipeline_id": name, "workspace_id": alice.workspace_id,
                                                "definition": {}}, reply) for reply, name in pipelines.items()),
        (subjects.REGISTRY_MODELS_LIST, {"workspace_id": alice.workspace_id}, f"events.model.uploaded_{tag}"),
        (subjects.LOG_STORE_QUERY, {"pipeline_id": "anything", "workspace_id": alice.workspace_id},
         f"events.logs.f3_{tag}"),
    ]
    ops = await nats.connect(stack.nats_url("ops"))
    client = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
    heard: list[tuple[str, bytes]] = []

    async def keep(message) -> None:
        heard.append((message.subject, message.data))

    try:
        for _, _, reply in requests:
            await ops.subscribe(reply, cb=keep)
        # ops hears anything published to those subjects from here on (two flushes: tests/local_nats.py)
        await subscribed(ops)
        for command, body, reply in requests:
            data = json.dumps(body).encode()
            await client.publish(command, data, reply=reply, headers=bearer)
            # with a reply key as well: the check is the reply subject's, whatever else the request carries
            await client.publish(command, data, reply=reply,
                                 headers={**bearer, sealed.REPLY_KEY_HEADER: sealed.encode_key(sealed.new_key())})
        await client.flush()
        # each command again on the caller's own inbox (an empty body: refused, nothing made) is answered: its
        # subscription took the requests above before it
        for command in {command for command, _, _ in requests}:
            answer = await sealed.sealed_request(client, command, b"{}", headers=bearer, timeout=30)
            assert answer.data or answer.headers, command
            # and on ops's own inbox: what the service's connection published before this answer reached ops
            # first (one connection's messages stay in order)
            answer = await ops.request(command, b"{}", headers=bearer, timeout=30)
            assert answer.data or answer.headers, command
        # That is no barrier for the requests above: a service runs `nats.command_workers` (8) commands of a subject
        # at once, and an empty body is refused before any work, so its answer can overtake a forged create still
        # running. With answers_elsewhere made to say False, 3 of the 8 forged answers ops can hear came after these
        # answers (2 after the same requests, doing the same work, sent again on ops's inbox), all 8 within 2 s
        # (session 37, load ~0.3). Nothing outside the service tells when the commands it took are done (its stop
        # drains them: shared/bus_workers.py), so a fixed wait stays here, after the answers (docs/testing.md, Time)
        await asyncio.sleep(2.0)
        assert heard == [], heard
    finally:
        await client.close()
        await ops.close()
    # and the commands did nothing
    listed = post(stack, "workspaces/list", alice.token)
    assert listed.status_code == 200, listed.text
    assert not [name for name in workspaces.values() if name in listed.text], listed.text
    made = post(stack, "pipelines/list", alice.token, {"workspace_id": alice.workspace_id})
    assert made.status_code == 200, made.text
    assert not [name for name in pipelines.values() if name in made.text], made.text
