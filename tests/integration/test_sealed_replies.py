"""Sealed replies on the real stack (shared/sealed.py, docs/security.md): every outside bus caller connects as the
shared `client` identity and may subscribe to `_INBOX.client.>`, so another holder of that password listening there
must see ciphertext only of alice's replies (her workspaces, her workspace's members, a page of her inference log),
while alice's own caller opens them; and a request without a reply key, or with a malformed one, is refused (400)
by each kind of handler a client reaches (a typed command, the log store's raw query) having done nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import nats
import pytest

from shared import sealed, subjects
from shared.arrow_codec import from_ipc
from shared.messages import Reply
from shared.raw_bus import ERROR_HEADER
from shared.table_transport import PAGE_HEADER
from tests.integration.conftest import post
from tests.integration.test_logs import _create, _publish
from tests.local_nats import subscribed

pytestmark = pytest.mark.integration


async def _client(stack) -> nats.NATS:
    return await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _log_page(nc, alice, pipeline: str, rows: int) -> sealed.OpenedReply:
    """alice's log page once `rows` rows are stored (the log store takes them from the stream a moment later)."""
    body = json.dumps({"pipeline_id": pipeline, "workspace_id": alice.workspace_id}).encode()
    deadline = time.monotonic() + 30
    while True:
        page = await sealed.sealed_request(nc, subjects.LOG_STORE_QUERY, body, headers=_bearer(alice.token),
                                           timeout=30)
        assert not (page.headers or {}).get(ERROR_HEADER), page.headers
        if from_ipc(page.data).num_rows >= rows or time.monotonic() > deadline:
            return page
        await asyncio.sleep(0.2)


async def test_an_eavesdropper_on_the_client_inbox_sees_ciphertext_only(stack, alice):
    secret_workspace = f"sealed-secret-{uuid.uuid4().hex[:8]}"
    pipeline = f"sealedlogs{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(_create, stack, alice, pipeline)
    publisher = await nats.connect(stack.settings().nats.url)
    try:
        await _publish(publisher, pipeline, alice.workspace_id, [1.5, 2.5, 3.5], int(time.time() * 1000))
    finally:
        await publisher.close()

    eavesdropper, caller = await _client(stack), await _client(stack)
    overheard: list = []

    async def keep(msg) -> None:
        overheard.append(msg)

    try:
        await eavesdropper.subscribe("_INBOX.client.>", cb=keep)  # what the shared identity lets anyone do
        await subscribed(eavesdropper)  # at the server before the first request
        created = await sealed.sealed_request(caller, subjects.AUTH_WORKSPACES_CREATE,
                                              json.dumps({"workspace_name": secret_workspace}).encode(),
                                              headers=_bearer(alice.token), timeout=10)
        assert Reply.model_validate_json(created.data).ok, created.data
        listed = Reply.model_validate_json((await sealed.sealed_request(
            caller, subjects.AUTH_WORKSPACES_LIST, b"{}", headers=_bearer(alice.token), timeout=10)).data)
        assert secret_workspace in [w["name"] for w in listed.data["workspaces"]], listed
        members = Reply.model_validate_json((await sealed.sealed_request(
            caller, subjects.AUTH_WORKSPACES_LIST_USERS, json.dumps({"workspace_id": alice.workspace_id}).encode(),
            headers=_bearer(alice.token), timeout=10)).data)
        assert alice.user_id in [u["user_id"] for u in members.data["users"]], members
        users = Reply.model_validate_json((await sealed.sealed_request(
            caller, subjects.AUTH_USERS_QUERY, json.dumps({"workspace_id": alice.workspace_id}).encode(),
            headers=_bearer(alice.token), timeout=10)).data)
        assert alice.email in [u["email"] for u in users.data["users"].values()], users
        page = await _log_page(caller, alice, pipeline, 3)
        table = from_ipc(page.data)
        assert table.num_rows == 3 and "out.dense_1" in table.column_names
        assert json.loads(page.headers[PAGE_HEADER])["status"] == "All"
        for _ in range(1500):  # the eavesdropper's copies, on its own connection: at most 30 s
            if len(overheard) >= 5:
                break
            await asyncio.sleep(0.02)
    finally:
        await caller.close()
        await eavesdropper.close()
    # every reply above reached the eavesdropper too (the identity's inbox is shared) and none could be read
    assert len(overheard) >= 5, [m.subject for m in overheard]
    secrets = (secret_workspace.encode(), alice.email.encode(), alice.user_id.encode(), b"dense_1", b"in.tensor",
               b'"ok"', b"workspaces", b"ARROW")
    for msg in overheard:
        headers = json.dumps(msg.headers or {}).encode()
        assert sealed.is_sealed(msg.headers), msg.headers
        assert not [s for s in secrets if s in msg.data or s in headers], msg.subject
        assert PAGE_HEADER not in (msg.headers or {}) and ERROR_HEADER not in (msg.headers or {})
        with pytest.raises(ValueError):
            json.loads(msg.data)


async def test_requests_without_a_valid_key_are_refused_and_do_nothing(stack, alice):
    workspace = f"unsealed-{uuid.uuid4().hex[:8]}"
    pipeline = f"unsealed{uuid.uuid4().hex[:6]}"
    nc = await _client(stack)
    try:
        for key_headers, code in (({}, "reply_key_required"), ({sealed.REPLY_KEY_HEADER: "not-a-key"}, "bad_reply_key"),
                                  ({sealed.REPLY_KEY_HEADER: sealed.encode_key(b"short")}, "bad_reply_key")):
            headers = {**_bearer(alice.token), **key_headers}
            # typed commands of two services: each would create something
            for subject, body in ((subjects.AUTH_WORKSPACES_CREATE, {"workspace_name": workspace}),
                                  (subjects.DEPLOYER_PIPELINES_CREATE,
                                   {"pipeline_id": pipeline, "workspace_id": alice.workspace_id, "definition": {}})):
                reply = Reply.model_validate_json((await nc.request(subject, json.dumps(body).encode(), timeout=10,
                                                                    headers=headers)).data)
                assert (reply.ok, reply.status, reply.error.code) == (False, 400, code), (subject, reply)
                assert sealed.REPLY_KEY_HEADER in reply.error.msg
            # the log store's raw query: the refusal in the typed error header, no page
            raw = await nc.request(subjects.LOG_STORE_QUERY, json.dumps(
                {"pipeline_id": "anything", "workspace_id": alice.workspace_id}).encode(), timeout=10,
                headers=headers)
            error = json.loads(raw.headers[ERROR_HEADER])
            assert (error["status"], error["code"]) == (400, code) and raw.data == b""
            assert PAGE_HEADER not in raw.headers
        # nothing was created: the same caller, with a key, sees neither
        listed = Reply.model_validate_json((await sealed.sealed_request(
            nc, subjects.AUTH_WORKSPACES_LIST, b"{}", headers=_bearer(alice.token), timeout=10)).data)
        assert workspace not in [w["name"] for w in listed.data["workspaces"]]
    finally:
        await nc.close()
    pipelines = post(stack, "pipelines/list", alice.token, {"workspace_id": alice.workspace_id})
    assert pipelines.status_code == 200 and pipeline not in pipelines.text
    # the gateway (its own inbox) needs no key: the same command over HTTP works
    made = post(stack, "workspaces/create", alice.token, {"workspace_name": workspace})
    assert made.status_code == 200, made.text
