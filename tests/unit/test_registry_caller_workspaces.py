"""The registry reads the caller's workspaces (connections routes: which workspaces' names a connection shows, the
name of the workspace one is attached to) from workspaces/list a page at a time (services/registry/app.py
caller_workspaces): a workspace's record lists every model and pipeline id in it, so a user's whole list can pass a
bus reply (why 63169cc made workspaces/list pageable), and asked whole that 422 failed every connections route."""

from __future__ import annotations

import asyncio

from services.registry import app
from shared import pipeline_pages, subjects
from shared.messages.auth import WorkspaceRecord, Workspaces


def workspace(key: int) -> WorkspaceRecord:
    return WorkspaceRecord(id=key, name=f"w{key}", created_at="", created_by="u", archived=False, models=[],
                           pipelines=[])


def test_the_callers_workspaces_are_read_a_page_at_a_time(monkeypatch):
    pages = {None: Workspaces(workspaces=[workspace(1), workspace(4)], next_cursor="4"),
             "4": Workspaces(workspaces=[workspace(7)])}
    asked = []

    async def request(broker, subject, cmd, *, token, timeout, reply_model):
        assert subject == subjects.AUTH_WORKSPACES_LIST and token == "t"
        asked.append(cmd.cursor)
        assert cmd.limit is not None, "workspaces/list asked whole: 422 reply_too_large past a reply"
        return pages[cmd.cursor]

    monkeypatch.setattr(pipeline_pages, "request", request)  # caller_pages asks the pages
    assert asyncio.run(app.caller_workspaces(None, "t", 1.0)) == {1: "w1", 4: "w4", 7: "w7"}
    assert asked == [None, "4"]
