"""The SDK and the `railyard` command read pipelines/list and assays/list a page at a time (docs/api-paging.md):
asked whole, a workspace's pipelines or a pipeline's assays past the 8 MiB a bus reply carries were the 422
reply_too_large, which told the caller to page where the SDK had no way to. Shown through the real gateway with the
SDK's page size cut to 2 on lists of five (every item once, in the list's order, page after page, and the same
objects as a whole list gave), and at the SDK's own page size on the lists of test_request_bounds_http that pass
8 MiB, whose pages the services cut short at 4 MiB."""

from __future__ import annotations

import json

import numpy as np
import pytest
from railyard_client import Pipeline, cli
from railyard_client import session as sdk_session

from tests.integration.conftest import cli_env, post, requests_to, sdk_client
from tests.integration.test_request_bounds_http import BIG_NOTE, big_pipelines, new_pipeline, paged_lists, static_assays

pytestmark = pytest.mark.integration


def test_the_sdk_and_cli_read_pipelines_and_assays_page_by_page(stack, alice, tmp_path, monkeypatch, capsys):
    pipelines, assay_ids, whole_pipelines, whole_assays = paged_lists(stack, alice, "paged {}")
    first = pipelines[0]
    ids = [p["pipeline_pk_id"] for p in pipelines]

    client = sdk_client(stack, alice)
    sent = requests_to(client, "pipelines/list", "assays/list")
    workspace = client.current_workspace()
    # the SDK's own page size: one page of at most 1000 (the routes' most) holds these lists
    assert [p.to_dict() for p in workspace.pipelines()] == whole_pipelines["pipelines"]
    assert sent == [("pipelines/list", {"workspace_id": alice.workspace_id, "limit": 1000})]

    monkeypatch.setattr(sdk_session, "LIST_PAGE", 2)
    sent.clear()
    listed = workspace.pipelines()
    assert [p.id for p in listed] == ids  # oldest first, each once
    assert [p.to_dict() for p in listed] == whole_pipelines["pipelines"]
    assert sent == [("pipelines/list", {"workspace_id": alice.workspace_id, "limit": 2}),
                    ("pipelines/list", {"workspace_id": alice.workspace_id, "limit": 2, "cursor": str(ids[1])}),
                    ("pipelines/list", {"workspace_id": alice.workspace_id, "limit": 2, "cursor": str(ids[3])})]

    sent.clear()  # by name: the pages up to the one that holds it
    assert workspace.pipeline(pipelines[2]["name"]).id == ids[2]
    assert [body.get("cursor") for _, body in sent] == [None, str(ids[1])]
    sent.clear()  # a pipeline known by its name only (no id yet) finds its record in the list too
    assert Pipeline(client._session, alice.workspace_id, pipelines[4]["name"]).refresh().id == ids[4]
    assert [body.get("cursor") for _, body in sent] == [None, str(ids[1]), str(ids[3])]

    sent.clear()
    assays = workspace.pipeline(first["name"]).assays()
    assert [a.id for a in assays] == sorted(assay_ids, reverse=True)  # newest first, each once
    assert [a.to_dict() for a in assays] == whole_assays
    newest = sorted(assay_ids, reverse=True)
    assert [body for route, body in sent if route == "assays/list"] == [
        {"pipeline_id": ids[0], "limit": 2}, {"pipeline_id": ids[0], "limit": 2, "cursor": str(newest[1])},
        {"pipeline_id": ids[0], "limit": 2, "cursor": str(newest[3])}]

    # the command: the same pages (in this process, so with the page size of 2)
    cli_env(stack, alice, monkeypatch, tmp_path / "config")
    capsys.readouterr()
    assert cli.main(["pipelines", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == whole_pipelines["pipelines"]
    assert cli.main(["assays", "list", first["name"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == whole_assays


def test_the_sdk_reads_lists_larger_than_a_reply(stack, alice):
    """The lists of test_request_bounds_http, past 8 MiB (the whole list a 422 reply_too_large, which the SDK raised
    before): 50 assays of 10,000 values and 140 more pipelines of a ~62 KiB definition, read through the SDK at its
    own page size, whose pages the services cut short at 4 MiB (fewer items than asked, and a cursor)."""
    first = new_pipeline(stack, alice)
    assay_ids = static_assays(stack, alice, first, np.random.default_rng(13))
    names = [first["name"]] + big_pipelines(stack, alice)
    for route, body in (("assays/list", {"pipeline_id": first["pipeline_pk_id"]}),
                        ("pipelines/list", {"workspace_id": alice.workspace_id})):
        whole = post(stack, route, alice.token, body)
        assert whole.status_code == 422 and whole.json()["code"] == "reply_too_large", (route, whole.text[:300])

    client = sdk_client(stack, alice)
    sent = requests_to(client, "pipelines/list", "assays/list")
    workspace = client.current_workspace()
    listed = workspace.pipelines()
    assert [p.name for p in listed] == names
    assert listed[-1].definition["steps"][0]["ModelInference"]["note"] == BIG_NOTE
    pages = [body for route, body in sent if route == "pipelines/list"]
    assert len(pages) >= 3 and all(body["limit"] == 1000 for body in pages), pages  # 4 MiB pages: 140 in 3+
    assays = workspace.pipeline(first["name"]).assays()
    assert [a.id for a in assays] == sorted(assay_ids, reverse=True)
    assert all(len(a.to_dict()["baseline"]["Static"]["values"]) == 10_000 for a in assays)
    assert len([route for route, _ in sent if route == "assays/list"]) >= 3
