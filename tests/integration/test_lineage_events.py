"""events.project.changed under concurrent changes: a change of a project's content that overlaps another one
(commands run concurrently, RAILYARD_NATS__COMMAND_WORKERS) publishes a content hash that includes the other's
change, so the last hash published is the project's final state's. What orders them: `_content_changed` takes the
project row's lock (touch_project) before it reads the manifest, so the read waits for the other change's commit,
and writes its event to the outbox after the other's, which sends one project's events in that order."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import httpx
import nats as nats_client
import pytest

from tests.integration.bus_events import stream_events
from tests.integration.conftest import post
from tests.local_nats import subscribed

pytestmark = pytest.mark.integration


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_change_that_waited_on_another_publishes_the_hash_with_both(stack, alice):
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                               "name": "overlapping-adds"}))
    first, second = (ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": name,
                                                                     "kind": "files"}))["id"] for name in ("a", "b"))
    # the datasets' content_changed events leave lineage's outbox after the answers: sent before the subscription
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM workflow_lineage.outbox WHERE payload->>'project_id' = $1",
                                  str(project["id"])):
            assert time.monotonic() < deadline, "the datasets' events never left the outbox"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    nc = await nats_client.connect(stack.settings().nats.url)
    published: list[str] = []
    arrived = asyncio.Event()

    async def collect(msg) -> None:
        event = json.loads(msg.data)
        if event["project_id"] == project["id"] and event["action"] == "content_changed":
            published.append(event["content_sha256"])
            arrived.set()

    await nc.subscribe("events.project.changed", cb=collect)
    await subscribed(nc)  # the subscription is on the server before the upload
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    threads = ThreadPoolExecutor(1)
    try:
        # the test's transaction stands for one add_file in the middle of _content_changed: its file is in, the
        # project row locked, not committed yet
        async with conn.transaction():
            await conn.execute("INSERT INTO workflow_lineage.dataset_files (dataset_id, name, sha256, size,"
                               " content_type) VALUES ($1, 'first.txt', $2, 5, 'text/plain')", first, "ab" * 32)
            await conn.execute("UPDATE workflow_lineage.projects SET updated_at = now() WHERE id = $1", project["id"])
            mine = await conn.fetchval("SELECT transactionid::text FROM pg_locks WHERE locktype = 'transactionid'"
                                       " AND pid = pg_backend_pid() AND granted")
            # another add_file, to the other dataset, through the API: it waits for the project row
            added = asyncio.get_running_loop().run_in_executor(threads, lambda: httpx.post(
                f"{stack.api}/datasets/upload_file", data={"dataset_id": str(second), "name": "second.txt"},
                files={"file": ("second.txt", b"second")}, headers={"Authorization": f"Bearer {alice.token}"},
                timeout=60))
            deadline = time.monotonic() + 30
            while not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
                                          " AND NOT granted AND transactionid::text = $1", mine):
                assert time.monotonic() < deadline, "the upload never waited for the project row"
                assert not added.done(), (await added).text
                await asyncio.sleep(0.02)
        ok(await added)
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        await conn.close()
        await nc.close()
        threads.shutdown()
    final = ok(post(stack, "projects/get", alice.token, {"project_id": project["id"]}))
    files = {d["name"]: d["file_count"] for d in final["datasets"]}
    assert files == {"a": 1, "b": 1}, final["datasets"]
    assert published == [final["content_sha256"]]  # read before the lock, it was the hash without first.txt


async def _outbox_left(stack, project_id: int) -> None:
    """Wait until lineage's outbox holds no row of the project (its events are on the stream)."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM workflow_lineage.outbox WHERE payload->>'project_id' = $1",
                                  str(project_id)):
            assert time.monotonic() < deadline, "the project's events never left the outbox"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_a_dataset_deleted_with_its_project_meanwhile_publishes_no_change(stack, alice):
    """datasets/delete whose dataset went with its project after the call looked it up deletes nothing and tells
    of no change: it published a content_changed (the empty manifest's hash) after the project was gone, so the
    project's last events.project.changed was no longer its final state's. The other delete locks as projects/delete
    does (the project's row, then its datasets' by the cascade): datasets/delete deleted the dataset's row before it
    waited for the project's, so the two deadlocked and PostgreSQL aborted one (a 500); it takes the project's row
    first now (store.lock_project)."""
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                               "name": "deleted-under-a-dataset-delete"}))
    dataset = ok(post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "d",
                                                              "kind": "files"}))["id"]
    await _outbox_left(stack, project["id"])
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    threads = ThreadPoolExecutor(1)
    try:
        # the test's transaction stands for a projects/delete (its own events.project.changed aside): the project's
        # row locked, datasets/delete waits for it, then the project deleted with its dataset and committed
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM workflow_lineage.projects WHERE id = $1 FOR UPDATE", project["id"])
            mine = await conn.fetchval("SELECT transactionid::text FROM pg_locks WHERE locktype = 'transactionid'"
                                       " AND pid = pg_backend_pid() AND granted")
            deleting = asyncio.get_running_loop().run_in_executor(threads, lambda: post(
                stack, "datasets/delete", alice.token, {"dataset_id": dataset}))
            deadline = time.monotonic() + 30
            while not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
                                          " AND NOT granted AND transactionid::text = $1", mine):
                assert time.monotonic() < deadline, "datasets/delete never waited for the project's row"
                assert not deleting.done(), (await deleting).text
                await asyncio.sleep(0.02)
            await conn.execute("DELETE FROM workflow_lineage.projects WHERE id = $1", project["id"])
        assert ok(await deleting)["deleted"] == 0
    finally:
        await conn.close()
        threads.shutdown()
    await _outbox_left(stack, project["id"])
    events = await stream_events(stack, "events.project.changed", "project_id", {project["id"]})
    assert [e["action"] for e in events] == ["created", "content_changed"], events  # the dataset's creation only


async def test_a_project_deleted_meanwhile_is_not_told_deleted_again(stack, alice):
    """projects/delete whose project was deleted after the call looked it up (another projects/delete committed
    first) deletes nothing and tells of nothing: it published a second events.project.changed "deleted"."""
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                               "name": "deleted-twice"}))
    await _outbox_left(stack, project["id"])
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    threads = ThreadPoolExecutor(1)
    try:
        # the test's transaction stands for the other projects/delete (its own event aside), committed while this
        # one waits for the project's row
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM workflow_lineage.projects WHERE id = $1 FOR UPDATE", project["id"])
            mine = await conn.fetchval("SELECT transactionid::text FROM pg_locks WHERE locktype = 'transactionid'"
                                       " AND pid = pg_backend_pid() AND granted")
            deleting = asyncio.get_running_loop().run_in_executor(threads, lambda: post(
                stack, "projects/delete", alice.token, {"project_id": project["id"]}))
            deadline = time.monotonic() + 30
            while not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
                                          " AND NOT granted AND transactionid::text = $1", mine):
                assert time.monotonic() < deadline, "projects/delete never waited for the project's row"
                assert not deleting.done(), (await deleting).text
                await asyncio.sleep(0.02)
            await conn.execute("DELETE FROM workflow_lineage.projects WHERE id = $1", project["id"])
        assert ok(await deleting)["deleted"] == 0
    finally:
        await conn.close()
        threads.shutdown()
    await _outbox_left(stack, project["id"])
    events = await stream_events(stack, "events.project.changed", "project_id", {project["id"]})
    assert [e["action"] for e in events] == ["created"], events


async def test_a_dataset_created_in_a_project_deleted_meanwhile_is_a_404(stack, alice):
    """datasets/create whose project was deleted after the call looked it up (it waited for projects/delete's lock
    on the project's row) answers 404 and tells of nothing: its insert failed on the foreign key, a 500."""
    project = ok(post(stack, "projects/create", alice.token, {"workspace_id": alice.workspace_id,
                                                               "name": "deleted-under-a-dataset-create"}))
    await _outbox_left(stack, project["id"])
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    threads = ThreadPoolExecutor(1)
    try:
        async with conn.transaction():  # stands for projects/delete, as above
            await conn.execute("SELECT 1 FROM workflow_lineage.projects WHERE id = $1 FOR UPDATE", project["id"])
            mine = await conn.fetchval("SELECT transactionid::text FROM pg_locks WHERE locktype = 'transactionid'"
                                       " AND pid = pg_backend_pid() AND granted")
            creating = asyncio.get_running_loop().run_in_executor(threads, lambda: post(
                stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "d", "kind": "files"}))
            deadline = time.monotonic() + 30
            while not await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
                                          " AND NOT granted AND transactionid::text = $1", mine):
                assert time.monotonic() < deadline, "datasets/create never waited for the project's row"
                assert not creating.done(), (await creating).text
                await asyncio.sleep(0.02)
            await conn.execute("DELETE FROM workflow_lineage.projects WHERE id = $1", project["id"])
        answer = await creating
        assert answer.status_code == 404, answer.text
    finally:
        await conn.close()
        threads.shutdown()
    await _outbox_left(stack, project["id"])
    events = await stream_events(stack, "events.project.changed", "project_id", {project["id"]})
    assert [e["action"] for e in events] == ["created"], events
