"""An engine replica answers on its caller's inbox only (services/engine/replica.py; shared/raw_bus.py). The engine
identity keeps NATS's `allow_responses` (shared/bus_identities.py, ANSWER_RECEIVED_ONLY), which lets a replica publish
its answer on whatever reply subject a request names: a holder of the gateway's, lineage's, monitoring's or the
deployer's password (those may publish engine subjects; no `client` may) had a replica's answer published on
`events.>`, `logs.inference.>` or another service's command. Now such a request is not run and not answered. Real
stack, real NATS with the stack's permissions, a deployed ONNX pipeline; `ops` listens on every such subject."""

from __future__ import annotations

import asyncio
import uuid

import nats
import pyarrow as pa
import pytest

from shared import subjects
from shared.arrow_codec import tensor_array, to_ipc_stream
from shared.logrecords import REQUEST_ID
from tests.integration.conftest import post
from tests.integration.test_pipelines import deployed, infer  # noqa: F401 - the fixture is reused
from tests.local_nats import subscribed
from tests.models import sample_rows

pytestmark = pytest.mark.integration


async def test_a_replica_publishes_no_answer_but_on_its_callers_inbox(stack, alice, deployed):  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    elsewhere = (f"events.pipeline.engine_{tag}", f"logs.inference.engine_{tag}", subjects.AUTH_USERS_INVITE,
                 f"_INBOXES.engine_{tag}")
    rows = sample_rows(1)
    request = to_ipc_stream(pa.table({"tensor": tensor_array(rows)}))
    name = deployed["name"]
    engines = post(stack, "status/get_deployment", alice.token, {"name": name}).json()["engines"]
    replica = engines[0]["name"].rsplit("-", 1)[1]  # engine-<deployment>-<replica id>
    infer_subject, status_subject = subjects.engine_infer(name), subjects.engine_replica_status(name, replica)
    ops = await nats.connect(stack.nats_url("ops"))
    gateway = await nats.connect(stack.nats_url("gateway"), inbox_prefix="_INBOX.gateway")
    deployer = await nats.connect(stack.nats_url("deployer"), inbox_prefix="_INBOX.deployer")
    heard: list[tuple[str, bytes]] = []

    async def keep(message) -> None:
        heard.append((message.subject, message.data[:60]))

    try:
        for reply in elsewhere:
            await ops.subscribe(reply, cb=keep)
        await subscribed(ops)  # listening before anything is asked: else `heard == []` could pass without it
        # the replica serves: its status on the deployer's inbox, an inference on the gateway's
        status = await deployer.request(status_subject, b"{}", timeout=30)
        assert b"Running" in status.data, status.data
        for reply in elsewhere:
            await gateway.publish(infer_subject, request, reply=reply, headers={REQUEST_ID: uuid.uuid4().hex})
            await deployer.publish(status_subject, b"{}", reply=reply)
        await gateway.flush()
        await deployer.flush()
        answer = await gateway.request(infer_subject, request, timeout=30, headers={REQUEST_ID: uuid.uuid4().hex})
        assert answer.data and "Railyard-Error" not in (answer.headers or {}), answer.headers
        assert b"Running" in (await deployer.request(status_subject, b"{}", timeout=30)).data
        # the replica's status on ops's own inbox: answered after whatever it published for the requests above, which
        # the server passed on to ops first (one connection's messages stay in order), so once ops has it, anything
        # published elsewhere reached ops (a fixed sleep could end first on a slow host); a few loop turns more let
        # the other subscriptions' callbacks run what they were handed
        assert b"Running" in (await ops.request(status_subject, b"{}", timeout=30)).data
        for _ in range(20):
            await asyncio.sleep(0)
        assert heard == [], heard
    finally:
        await deployer.close()
        await gateway.close()
        await ops.close()
    # and an inference through the gateway, as users make it, is answered
    response = infer(deployed["url"], alice.token, [{"tensor": rows[0].tolist()}])
    assert response.status_code == 200, response.text
