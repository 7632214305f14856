"""The monitoring service reads a workspace's orchestration/list a page at a time (services/monitoring/ml_backend.py
orchestration_pages: the built-in ML-backend recipe's look-up, and continuous training's check of a given
orchestration_id): bd86971 made the list pageable because a workspace's orchestrations can pass a bus reply, and
asked whole such a list is a 422 reply_too_large, so continuous training could not be set up there."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from types import SimpleNamespace

from services.monitoring import ml_backend
from shared import pipeline_pages, subjects
from shared.messages.tasks import OrchestrationRecord, Orchestrations

ARCHIVE = b"the built-in recipe"


def orchestration(name: str, sha: str, status: str = "ready") -> OrchestrationRecord:
    return OrchestrationRecord(id=uuid.uuid4(), task_id=uuid.uuid4(), workspace_id=1, sha=sha, name=name,
                               file_name="x.zip", status=status, reason=None, owner_id="u", created_at="",
                               updated_at="")


def test_the_built_in_recipe_is_found_on_a_later_page(monkeypatch):
    sha = hashlib.sha256(ARCHIVE).hexdigest()
    wanted = orchestration("railyard-ml-ct", sha)
    pages = {None: Orchestrations(orchestrations=[orchestration("other", "0" * 64)], next_cursor="1.ab"),
             "1.ab": Orchestrations(orchestrations=[orchestration("railyard-ml-ct", sha, "failed"), wanted])}
    asked = []

    async def request(broker, subject, cmd, *, token, timeout, reply_model):
        assert subject == subjects.TASKS_ORCHESTRATIONS_LIST
        asked.append(cmd.cursor)
        assert cmd.limit is not None, "orchestration/list asked whole: 422 reply_too_large past a reply"
        return pages[cmd.cursor]

    monkeypatch.setattr(pipeline_pages, "request", request)  # caller_pages asks the pages
    monkeypatch.setattr(ml_backend, "_orchestration", lambda: ("railyard-ml-ct", ARCHIVE))
    deps = SimpleNamespace(broker=None, timeout=1.0, objects=None)  # nothing uploaded: objects is never reached
    found = asyncio.run(ml_backend.builtin_orchestration(deps, "t", 1, owner=None))
    assert found == wanted.id and asked == [None, "1.ab"]
