"""workflow_lineage's events (events.project.changed, events.project.version_created, events.workflow.link_added,
events.benchmark.completed) are not lost, and do not fail the request, when the EVENTS stream refuses them: the
service writes each in the change's own transaction to its outbox (shared/outbox.py, migration 008) and it reaches
the stream once it accepts again, once, with Nats-Msg-Id = event_id, one project's in the order they were committed
(the last events.project.changed of a project carries its final content hash). Before, they were published after
the commit (a content change's inside its transaction, before the commit): a refused or timed-out publish answered
projects/create with an error although the project was stored (the caller's retry then got 409), an upload's was
rolled back with its file, and the event was gone for good.

The stack's real gateway and lineage service handle the routes; the stream refuses as in test_assay_events (a real
JetStream error for every publish); the outbox table and the stream are read directly.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from tests.integration.bus_events import stream_events
from tests.integration.conftest import post
from tests.integration.test_assay_events import events_refused
from tests.integration.test_lineage import ok, png, upload_file

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WATCHED = ("events.project.>", "events.workflow.>", "events.benchmark.>")


async def outbox_rows(stack, workspace_id: int) -> list[dict]:
    """The lineage outbox's unsent rows of the workspace, oldest first."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        rows = await conn.fetch("SELECT event_id, subject, payload::text FROM workflow_lineage.outbox"
                                " WHERE payload->>'workspace_id' = $1 ORDER BY id", str(workspace_id))
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def on_stream(stack, workspace_id: int) -> list[dict]:
    """The stream's lineage events of the workspace, in stream order."""
    found = []
    for subject in WATCHED:
        found += await stream_events(stack, subject, "workspace_id", {workspace_id})
    return sorted(found, key=lambda e: e["_seq"])


def test_lineage_changes_answer_and_keep_their_events_while_the_stream_refuses(stack, alice):
    workspace = alice.workspace_id
    run = f"run-{uuid.uuid4().hex[:8]}"
    box = {"bbox": [1.0, 1.0, 5.0, 5.0], "category": "cat"}
    made: dict[str, dict] = {}

    async def while_refused() -> None:
        async with events_refused(stack):
            async def call(path: str, body: dict) -> dict:
                answer = await asyncio.to_thread(post, stack, path, alice.token, body)
                assert answer.status_code == 200, (path, answer.text)  # was an error with the change committed
                return answer.json()

            made["project"] = await call("projects/create", {"workspace_id": workspace, "name": "refused"})
            project_id = made["project"]["id"]
            images = await call("datasets/create", {"project_id": project_id, "name": "val", "kind": "images"})
            uploaded = await asyncio.to_thread(upload_file, stack, alice, images["id"], "a.png", png((9, 9, 9), 16),
                                               {"boxes": [box]})
            assert uploaded.status_code == 200, uploaded.text  # was rolled back: published inside its transaction
            made["version"] = await call("projects/create_version", {"project_id": project_id})
            await call("workflow/add_input_project", {"workspace_id": workspace, "task_id": run,
                                                      "project_id": project_id})
            made["report"] = await call("benchmarks/evaluate_detections", {
                "workspace_id": workspace, "name": "refused", "dataset_id": images["id"],
                "candidates": [{"name": "v1", "detections": {"a.png": [{**box, "score": 0.9}]}}]})
            made["restored"] = (await call("projects/restore_version", {"project_id": project_id,
                                                                        "version_num": 1}))["project"]
            await call("projects/delete", {"project_id": made["restored"]["id"]})
            kept = await outbox_rows(stack, workspace)  # committed with the changes, kept while the stream refuses
            assert [r["subject"] for r in kept] == [
                "events.project.changed", "events.project.changed", "events.project.changed",
                "events.project.version_created", "events.workflow.link_added", "events.benchmark.completed",
                "events.project.changed", "events.project.changed"], kept
            assert await on_stream(stack, workspace) == []  # refused: none reached it

    asyncio.run(while_refused())
    project_id = made["project"]["id"]
    # a change once the stream accepts again: its event goes out after the project's held ones, never before
    ok(post(stack, "datasets/create", alice.token, {"project_id": project_id, "name": "after", "kind": "files"}))
    deadline = time.monotonic() + 90  # a row refused OWN_RETRIES times is tried at the outbox's IDLE rounds
    while len(events := asyncio.run(on_stream(stack, workspace))) < 9 or asyncio.run(outbox_rows(stack, workspace)):
        assert time.monotonic() < deadline, f"the refused events never all reached the stream: {events}"
        time.sleep(0.2)
    # the outbox's rows are gone: each was deleted once JetStream acknowledged it, so a copy is on the stream too
    events = asyncio.run(on_stream(stack, workspace))
    assert len(events) == 9, events  # once each
    assert len({e["event_id"] for e in events}) == 9
    assert all(e["_msg_id"] == e["event_id"] for e in events)  # the stream's (and lineage's) de-duplication key
    changes = [e for e in events if e["_subject"] == "events.project.changed" and e["project_id"] == project_id]
    assert [e["action"] for e in changes] == ["created", "content_changed", "content_changed", "content_changed"]
    final = ok(post(stack, "projects/get", alice.token, {"project_id": project_id}))
    assert {d["name"]: d["file_count"] for d in final["datasets"]} == {"val": 1, "after": 0}  # the upload stayed
    assert changes[-1]["content_sha256"] == final["content_sha256"]  # the last hash is the final state's
    restored = [e["action"] for e in events if e["_subject"] == "events.project.changed"
                and e["project_id"] == made["restored"]["id"]]
    assert restored == ["restored", "deleted"]
    version, = (e for e in events if e["_subject"] == "events.project.version_created")
    assert (version["version_id"], version["manifest_sha256"]) == (made["version"]["id"],
                                                                  made["version"]["manifest_sha256"])
    link, = (e for e in events if e["_subject"] == "events.workflow.link_added")
    assert (link["target_ref"], link["relation"], link["origin"]) == (run, "input", "explicit")
    report, = (e for e in events if e["_subject"] == "events.benchmark.completed")
    assert (report["report_id"], report["task"]) == (made["report"]["id"], "detection")
