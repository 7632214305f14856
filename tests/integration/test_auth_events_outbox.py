"""Auth's events (events.user.created, events.workspace.created, events.workspace.membership_changed, ...) are not
lost, and do not fail the request, when the EVENTS stream refuses them after the change committed: the auth service
writes each in the change's own transaction to its outbox (shared/outbox.py, migration 012) and it reaches the
stream once it accepts again, once, with Nats-Msg-Id = event_id. Before, they were published after the commit: a
refused or timed-out publish answered users/invite with a 500 although the user existed (the caller's retry got a
409; seen in CI right after test_logs loaded JetStream hard), and the event was gone for good.

The stack's real gateway and auth service handle the routes; the stream refuses as in test_assay_events (a real
JetStream error for every publish); the outbox table and the stream are read directly.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from shared import subjects
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.conftest import PASSWORD, inference_client, make_account, post
from tests.integration.test_assay_events import events_refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def outbox_rows(stack, subject: str, key: str, value: str) -> list[dict]:
    """The auth outbox's unsent rows of `subject` whose payload's `key` is `value`."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch("SELECT event_id, subject FROM auth.outbox WHERE subject = $1 AND payload->>$2 = $3",
                                subject, key, value)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def on_stream(stack, subject: str, key: str, value: str) -> list[dict]:
    """The stream's events of `subject` whose `key` is `value` (a workspace id is a number in the event's body)."""
    values = {value, int(value)} if value.isdigit() else {value}
    return [e for e in await stream_events(stack, subject, key, values) if e["_subject"] == subject]


def test_invite_and_workspace_changes_answer_and_keep_their_events_while_the_stream_refuses(stack, admin):
    email = f"aevents-{uuid.uuid4().hex[:10]}@example.com"
    name = f"ws-aev-{uuid.uuid4().hex[:10]}"
    watched: list[tuple[str, str, str]] = []  # (subject, key, value) of each event the changes committed

    async def while_refused() -> None:
        async with events_refused(stack):
            invited = await asyncio.to_thread(post, stack, "users/invite", admin.token,
                                              {"email": email, "password": PASSWORD})
            assert invited.status_code == 200, invited.text  # was a 500: the user committed, its publish refused
            user_id = invited.json()["user_id"]
            watched.append((subjects.EVENT_USER_CREATED, "user_id", user_id))
            created = await asyncio.to_thread(post, stack, "workspaces/create", admin.token, {"workspace_name": name})
            assert created.status_code == 200, created.text
            workspace_id = str(created.json()["workspace_id"])
            watched.append((subjects.EVENT_WORKSPACE_CREATED, "workspace_id", workspace_id))
            added = await asyncio.to_thread(post, stack, "workspaces/add_user", admin.token,
                                            {"workspace_id": int(workspace_id), "email": email})
            assert added.status_code == 200, added.text
            watched.append((subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED, "user_id", user_id))
            for subject, key, value in watched:  # committed with the change, kept while the stream refuses
                assert len(await outbox_rows(stack, subject, key, value)) == 1, (subject, value)
                assert await on_stream(stack, subject, key, value) == [], subject  # refused: none reached it

    asyncio.run(while_refused())
    deadline = time.monotonic() + 60
    for subject, key, value in watched:  # the sender's next rounds send them
        while not asyncio.run(on_stream(stack, subject, key, value)):
            assert time.monotonic() < deadline, f"the refused {subject} event of {value} never reached the stream"
            time.sleep(0.2)
    for _, key, value in watched:  # each row deleted once acknowledged: a copy would be on the stream too
        asyncio.run(outbox_sent(stack, "auth", key, {value}))
    for subject, key, value in watched:
        events = asyncio.run(on_stream(stack, subject, key, value))
        assert len(events) == 1, events  # once each
        assert events[0]["_msg_id"] == events[0]["event_id"]  # the stream's (and lineage's) de-duplication key
        assert asyncio.run(outbox_rows(stack, subject, key, value)) == []  # deleted once acknowledged
    created, workspace, membership = (asyncio.run(on_stream(stack, *w))[0] for w in watched)
    assert created["email"] == email
    assert workspace["name"] == name
    assert membership["workspace_id"] == workspace["workspace_id"] and membership["user_type"] == "COLLABORATOR"


def test_revocations_and_user_changes_answer_and_keep_their_events_while_the_stream_refuses(stack, admin):
    """The other paths: a revoked inference client and a password reset (events.auth.tokens_revoked), a membership
    removed, a user deactivated then activated again: each answers while the stream refuses, its event is kept and
    reaches the stream once after, one user's in the order they were committed."""
    account = make_account(stack, admin, "aevrev")
    client_id, _ = inference_client(account)
    name = f"ws-aevr-{uuid.uuid4().hex[:10]}"
    shared_id = admin.post("workspaces/create", {"workspace_name": name})["workspace_id"]
    admin.post("workspaces/add_user", {"workspace_id": shared_id, "email": account.email})

    async def service_account() -> str:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            return str(await conn.fetchval("SELECT service_account_id FROM auth.clients WHERE client_id = $1",
                                           client_id))
        finally:
            await conn.close()

    client_account = asyncio.run(service_account())
    user = account.user_id
    watched = [(subjects.EVENT_TOKENS_REVOKED, "subject", client_account),
               (subjects.EVENT_TOKENS_REVOKED, "subject", user),
               (subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED, "workspace_id", str(shared_id)),
               (subjects.EVENT_USER_DEACTIVATED, "user_id", user),
               (subjects.EVENT_USER_ACTIVATED, "user_id", user)]
    deadline = time.monotonic() + 30
    while not asyncio.run(on_stream(stack, *watched[2])):  # the add_user's membership event, sent before the refusal
        assert time.monotonic() < deadline, "the add_user's membership event never reached the stream"
        time.sleep(0.2)
    before = {w: len(asyncio.run(on_stream(stack, *w))) for w in watched}

    async def while_refused() -> None:
        async with events_refused(stack):
            for path, token, body in (
                    ("workspaces/revoke_inference_client", account.token,
                     {"workspace_id": account.workspace_id, "client_id": client_id}),
                    ("users/update_password", admin.token, {"email": account.email, "password": "reset-by-admin"}),
                    ("workspaces/remove_user", admin.token, {"workspace_id": shared_id, "user_id": user}),
                    ("users/deactivate", admin.token, {"email": account.email}),
                    ("users/activate", admin.token, {"email": account.email})):
                answer = await asyncio.to_thread(post, stack, path, token, body)
                assert answer.status_code == 200, (path, answer.text)  # was a 500 with the change committed
            for w in watched:
                assert len(await outbox_rows(stack, *w)) == 1, w
                assert len(await on_stream(stack, *w)) == before[w], w  # refused: none reached it

    asyncio.run(while_refused())
    deadline = time.monotonic() + 60
    for w in watched:
        while len(asyncio.run(on_stream(stack, *w))) == before[w]:
            assert time.monotonic() < deadline, f"the refused {w} event never reached the stream"
            time.sleep(0.2)
    for _, key, value in watched:  # each row deleted once acknowledged: a copy would be on the stream too
        asyncio.run(outbox_sent(stack, "auth", key, {value}))
    events = {w: asyncio.run(on_stream(stack, *w))[before[w]:] for w in watched}
    for w, sent in events.items():
        assert len(sent) == 1, (w, sent)  # once each
        assert sent[0]["_msg_id"] == sent[0]["event_id"]
        assert asyncio.run(outbox_rows(stack, *w)) == []
    removed = events[(subjects.EVENT_WORKSPACE_MEMBERSHIP_CHANGED, "workspace_id", str(shared_id))][0]
    assert removed["user_id"] == user and removed["user_type"] is None
    deactivated = events[(subjects.EVENT_USER_DEACTIVATED, "user_id", user)][0]
    activated = events[(subjects.EVENT_USER_ACTIVATED, "user_id", user)][0]
    assert deactivated["_seq"] < activated["_seq"]  # one user's events in the order they were committed
    assert events[(subjects.EVENT_TOKENS_REVOKED, "subject", user)][0]["session"] is None
