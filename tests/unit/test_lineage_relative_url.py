"""A card's url (WorkflowSettings, the workflow/add_* calls' meta) and a labeling job's (workflow/add_*_job `url`,
services/workflow_lineage/links.py) stay relative to the instance. Besides a scheme and '//host', the API refused
neither '/\\evil.example/x' nor '/<tab>/evil.example/y', which a browser reads as '//evil.example/...' (another
site behind an instance link): now a backslash, whitespace or a control character anywhere is refused, with a
message saying what to write instead (a ValidationError is the API's 400 invalid_request; links.py raises
InvalidRequest itself). A url stored before then is left out of the graph's answer (workflow_lineage/graph.py)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.workflow_lineage import graph, links
from shared.errors import InvalidRequest
from shared.messages.lineage import JobLink, WorkflowMeta, WorkflowSettings, relative_url_problem

TRICKS = ["/\\evil.example/x", "/\\\\evil.example/x", "/\t/evil.example/y", "/\n/evil.example/y",
          "/\r/evil.example/y", "/ /evil.example/y", "/projects/1\x01", "/projects/\x7f1", "/projects/\x851",
          "/projects/\u20281", "/projects/\u30001", "/projects/1 "]
REFUSED_BEFORE = ["\\/evil.example/x", "https://evil.example/", "//evil.example/x", "projects/1", ""]
FINE = ["/", "/projects/1", "/datasets/7?tab=files#top", "/files/a%20b%5Cc", "/files/données/é.bin", "/a/b/../c"]


@pytest.mark.parametrize("url", TRICKS + REFUSED_BEFORE)
def test_a_card_url_that_could_leave_the_instance_is_refused(url):
    with pytest.raises(ValidationError) as refused:
        WorkflowSettings(url=url)
    assert "url must" in str(refused.value)
    with pytest.raises(ValidationError):
        WorkflowMeta(relation_settings={"url": url})


@pytest.mark.parametrize("url", TRICKS)
def test_the_message_says_what_was_found_and_what_to_write(url):
    problem = relative_url_problem(url)
    assert problem is not None and "backslash, whitespace or control character" in problem
    assert "percent-encode" in problem and "position" in problem


@pytest.mark.parametrize("url", FINE)
def test_a_relative_url_is_kept(url):
    assert relative_url_problem(url) is None
    assert WorkflowSettings(url=url).url == url


async def _job_target(url: str | None):
    # the job card names nothing in the database: no connection is used
    return await links._target(None, "input", "job", JobLink(workspace_id=1, task_id="r", id="job-7", url=url))


@pytest.mark.parametrize("url", TRICKS + REFUSED_BEFORE)
def test_a_job_url_that_could_leave_the_instance_is_refused(url):
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(_job_target(url))
    assert refused.value.msg.startswith("url must")


@pytest.mark.parametrize("url", [*FINE, None])
def test_a_relative_job_url_is_kept(url):
    (kind, ref, _title, data), customizable = asyncio.run(_job_target(url))
    assert (kind, ref, customizable) == ("labeling_job", "job-7", True)
    assert data == ({"url": url} if url else {})


@pytest.mark.parametrize("url", TRICKS[:7] + ["/a b"])
def test_a_url_stored_before_the_check_is_left_out_of_the_graph(url):
    """Cards kept before the check (their url accepted then) are still answered, without the url: building their
    WorkflowSettings failed, and with it the workspace's whole workflow/graph."""
    now = datetime.now(UTC)
    settings = json.dumps({"url": url, "url_title": "open", "title": "Job"})
    node = graph.node_model({"id": 1, "kind": "labeling_job", "ref": "job-7", "title": "Labeling job job-7",
                             "settings": settings, "data": "{}", "created_at": now, "updated_at": now})
    assert (node.title, node.settings.url, node.settings.url_title) == ("Job", None, "open")
    edge = graph.edge_model({"id": 2, "source": 1, "target": 3, "relation": "input", "origin": "explicit",
                             "settings": settings})
    assert (edge.settings.url, edge.settings.title) == (None, "Job")
    kept = graph.node_model({"id": 1, "kind": "labeling_job", "ref": "job-7", "title": "t", "data": {},
                             "settings": {"url": "/jobs/7"}, "created_at": now, "updated_at": now})
    assert kept.settings.url == "/jobs/7"


@pytest.mark.parametrize("look, shown", [
    ({"icon": "folder\n", "icon_color": "#2196F3\n", "icon_bg_color": "#fff\n"},
     {"icon": "folder", "icon_color": "#2196F3", "icon_bg_color": "#fff"}),
    ({"icon": "zmdi-folder", "icon_color": "blue"}, {"icon": "collection-image", "icon_color": None}),
])
def test_an_icon_or_colour_stored_before_the_fullmatch_check_still_reads(look, shown):
    """The icon and colour checks were re.match on patterns ending in '$' until cb581b6e, which took 'folder\\n' and
    '#fff\\n' too: cards stored so are answered without the newline (a value refused otherwise is left out, a node
    then has its kind's icon), not a ValidationError that failed the workspace's whole workflow/graph."""
    now = datetime.now(UTC)
    settings = json.dumps(look | {"title": "Photos"})
    node = graph.node_model({"id": 1, "kind": "project", "ref": "7", "title": "p", "settings": settings,
                             "data": "{}", "created_at": now, "updated_at": now})
    assert {key: getattr(node.settings, key) for key in shown} == shown and node.settings.title == "Photos"
    edge = graph.edge_model({"id": 2, "source": 1, "target": 3, "relation": "input", "origin": "explicit",
                             "settings": settings})
    assert {key: getattr(edge.settings, key) for key in shown if key != "icon"} == {
        key: value for key, value in shown.items() if key != "icon"}
