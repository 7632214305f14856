"""The loops that follow a paged list's cursors (the SDK's Session.post_pages and Pipeline.versions(), so every CLI
list; shared.paging.pages in the services) stop with an error when the server answers a cursor it answered before,
instead of asking for the same pages for ever (docs/api-paging.md). A server whose keyset advances never does; a
bug, an old deployer or a caching proxy that answers the same page again would hang every SDK list call."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest
from railyard_client.errors import RailyardError
from railyard_client.pipelines import Pipeline
from railyard_client.session import Session, read_route_timeouts

from shared import paging


def _session(answers):
    """A Session whose requests get the next of `answers` (an answer object, or (bare list, header cursor))."""
    session = Session.__new__(Session)
    session.timeout = 5.0
    session.route_timeouts = read_route_timeouts(None, {})  # what __init__ sets (no user's waits)
    asked = []

    def send(method, path, **kwargs):
        asked.append(kwargs["json"])
        if len(asked) > 10:
            raise AssertionError("still paging after 10 requests")
        answer = answers[min(len(asked), len(answers)) - 1]
        if isinstance(answer, tuple):
            items, cursor = answer
            return httpx.Response(200, json=items, headers={"x-next-cursor": cursor} if cursor else {})
        return httpx.Response(200, json=answer)

    session.send = send
    session.post = lambda route, body, **kw: send("POST", route, json=body).json()
    return session, asked


def test_post_pages_stops_at_a_cursor_answered_again():
    session, asked = _session([{"models": [{"id": 3}], "next_cursor": "3"}, {"models": [{"id": 2}], "next_cursor": "2"},
                               {"models": [{"id": 2}], "next_cursor": "3"}])
    with pytest.raises(RailyardError) as raised:
        list(session.post_pages("models/list", {"workspace_id": 1}, "models"))
    assert raised.value.code == "repeated_cursor" and len(asked) == 3


def test_post_pages_stops_at_a_header_cursor_answered_again():
    session, asked = _session([([{"id": 1}], "1.ab")])
    with pytest.raises(RailyardError, match="again"):
        list(session.post_pages("task/list", {"workspace_id": 1}))
    assert len(asked) == 2


def test_post_pages_reads_pages_that_advance():
    session, asked = _session([([{"id": 1}], "a"), ([{"id": 2}], "b"), ([{"id": 3}], None)])
    assert [item["id"] for item in session.post_pages("task/list", {"workspace_id": 1})] == [1, 2, 3]
    assert [body.get("cursor") for body in asked] == [None, "a", "b"]


def test_pipeline_versions_stops_at_a_versions_cursor_answered_again():
    record = {"id": 4, "name": "p", "workspace_id": 1, "versions": [{"id": 9, "definition": {}}],
              "versions_cursor": "9", "deployment": None}
    session, asked = _session([record, {**record, "versions": [{"id": 8, "definition": {}}], "versions_cursor": "9"}])
    with pytest.raises(RailyardError) as raised:
        Pipeline(session, 1, "p", record).versions()
    assert raised.value.code == "repeated_cursor" and len(asked) == 2


def test_the_services_pages_stop_at_a_cursor_answered_again():
    asked = []

    async def ask(cursor):
        asked.append(cursor)
        if len(asked) > 10:
            raise AssertionError("still paging after 10 requests")
        return SimpleNamespace(next_cursor="7")

    async def read():
        return [page async for page in paging.pages(ask)]

    with pytest.raises(RuntimeError, match="again"):
        asyncio.run(read())
    assert asked == [None, "7"]
