"""A task run's token may not consume over the bus what its owner staged from a session, nor a session what a run
staged (shared/staging.py `check_staged`; unit-tested in tests/unit/test_staging_scope.py): the real registry, lineage
and task scheduler, commands published on NATS as the front-door `client` identity."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from shared import subjects
from shared.messages import Reply
from shared.objectstore import BUCKET_ARTIFACTS, BUCKET_DATASETS, BUCKET_ORCHESTRATIONS, MinioObjectStore, content_key
from shared.sealed import sealed_request
from shared.staging import staged_key_for
from tests.integration.test_isolation import second_workspace, task_token

pytestmark = pytest.mark.integration

# (subject, bucket, the command but its staged_key, given the run's workspace)
CONSUMERS = [
    (subjects.REGISTRY_MODELS_UPLOAD, BUCKET_ARTIFACTS, lambda ws: {
        "workspace_id": ws, "name": "staged", "conversion": {"framework": "onnx"}, "file_name": "m.onnx"}),
    (subjects.LINEAGE_FILES_PUT, BUCKET_DATASETS, lambda ws: {"workspace_id": ws, "path": "/staged.csv"}),
    (subjects.TASKS_ORCHESTRATIONS_UPLOAD, BUCKET_ORCHESTRATIONS, lambda ws: {
        "workspace_id": ws, "file_name": "staged.zip"}),
]


async def test_a_run_and_a_session_cannot_take_each_others_staged_uploads(stack, alice):
    import nats

    run_workspace = await asyncio.to_thread(second_workspace, alice)
    run_token = await asyncio.to_thread(task_token, stack, alice.user_id, run_workspace)
    objects = MinioObjectStore(stack.settings().s3)
    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
    try:
        for subject, bucket, command in CONSUMERS:
            # the owner's session upload (what the gateway stages for a session) and the run's (scoped)
            for staged, token in ((staged_key_for(alice.user_id), run_token),
                                  (staged_key_for(alice.user_id, run_workspace), alice.token)):
                await objects.put_bytes(bucket, staged, b"not yours")
                message = await sealed_request(nc, subject, json.dumps({**command(run_workspace), "staged_key": staged})
                                               .encode(), timeout=10, headers={"authorization": f"Bearer {token}"})
                reply = Reply.model_validate_json(message.data)
                assert not reply.ok and reply.status == 403 and reply.error.code == "out_of_scope", (subject, reply)
                assert await objects.exists(bucket, staged), (subject, "the refused upload was deleted")
                await objects.delete(bucket, staged)
    finally:
        await nc.close()
    # nothing was kept in the run's workspace by any refused command: no model, workspace file or orchestration
    # listed, and the bytes were stored under their sha256 in no bucket
    assert alice.client.post("models/list", {"workspace_id": run_workspace})["models"] == []
    folder = alice.client.post("files/list", {"workspace_id": run_workspace})
    assert (folder["files"], folder["folders"]) == ([], []), folder
    assert alice.client.post("orchestration/list", {"workspace_id": run_workspace}) == []
    for _subject, bucket, _command in CONSUMERS:
        assert not await objects.exists(bucket, content_key(hashlib.sha256(b"not yours").hexdigest())), bucket
