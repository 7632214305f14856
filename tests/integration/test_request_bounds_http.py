"""Bounds on what users send, through HTTP and straight on the bus (docs/api-paging.md, docs/assays.md,
docs/inference.md, docs/lineage.md): an assay's Static baseline values, a task run's evaluation declaration, the
deployer's own subscribers (a caller on the bus is bounded as the gateway's routes are), refused DNS names echoed cut
short, and lists larger than a bus reply answered 422 with pages (limit, cursor) instead of failing."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import numpy as np
import pytest

from shared.messages.base import MAX_JSON_OBJECT
from shared.sealed import sealed_request
from tests.integration.conftest import Account, post, sdk_client
from tests.integration.test_assays import config, iso
from tests.integration.test_pipelines import upload_model

pytestmark = pytest.mark.integration

FUTURE = "2999-01-01T00:00:00+00:00"  # windows that never come: the scheduler leaves these assays alone


def new_pipeline(stack, account: Account, name: str | None = None, definition: dict | None = None) -> dict:
    name = name or f"bounds{uuid.uuid4().hex[:8]}"
    response = post(stack, "pipelines/create", account.token,
                    {"pipeline_id": name, "workspace_id": account.workspace_id, "definition": definition or {}})
    assert response.status_code == 200, response.text[:300]
    return {**response.json(), "name": name}


def static(values) -> dict:
    return {"Static": {"values": list(values)}}


BIG_NOTE = "x" * (62 * 1024)  # a pipeline definition's note under its 64 KiB bound


def static_assays(stack, account: Account, pipeline: dict, rng, name: str = "static {}", count: int = 50) -> list[int]:
    """`count` inactive assays of `pipeline` (named `name`.format(index)), each with a Static baseline of 10,000
    values (~200 KB of JSON): 50 make an assays/list past the 8 MiB a bus reply carries. Their ids, oldest first.

    The first is made by assays/create; the others are copies of its row under their own names (config's name too),
    inserted in PostgreSQL one after the other, as many_versions makes versions: the lists are what these tests read,
    and 49 more assays/create of ~200 KB each (the gateway and the assay runner reading and checking every value)
    were most of the time of the three files that build one (test_ui_list_pages, test_client_list_pages, this one)."""
    body = {**config(account, pipeline, name.format(0), static(rng.random(10_000).tolist()), FUTURE, "1 hours"),
            "active": False}
    created = post(stack, "assays/create", account.token, body)
    assert created.status_code == 200, created.text[:300]
    return [created.json()["assay_id"]] + asyncio.run(_copies(
        stack, created.json()["assay_id"], [name.format(index) for index in range(1, count)],
        "INSERT INTO assay_runner.assays (workspace_id, pipeline_id, pipeline_name, name, active, status, config,"
        " warning_threshold, alert_threshold, width_seconds, interval_seconds, run_until, last_run, next_run,"
        " baseline_summary, created_by) SELECT workspace_id, pipeline_id, pipeline_name, $2, active, status,"
        " jsonb_set(config, '{name}', to_jsonb($2::text)), warning_threshold, alert_threshold, width_seconds,"
        " interval_seconds, run_until, last_run, next_run, baseline_summary, created_by FROM assay_runner.assays"
        " WHERE id = $1 RETURNING id"))


async def _copies(stack, source: int, names: list[str], insert: str) -> list[int]:
    """The ids `insert` (a copy of row `source` named $2) returns for each of `names`, in order, in one transaction."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        async with conn.transaction():
            ids = [await conn.fetchval(insert, source, name) for name in names]
    finally:
        await conn.close()
    assert None not in ids and ids == sorted(ids), ids  # each copied, oldest first
    return ids


def big_pipelines(stack, account: Account, count: int = 140) -> list[str]:
    """`count` pipelines big0, big1, ... with a ~62 KiB definition (BIG_NOTE): 140 make a pipelines/list past the
    8 MiB a bus reply carries. Their names, oldest first.

    big0 is made by pipelines/create; the others are copies of its row and its version's under their own names,
    inserted in PostgreSQL, as static_assays does (in place of 139 more pipelines/create of 62 KiB each)."""
    names = [f"big{index}" for index in range(count)]
    upload_model(stack, account, "m")  # the model the definition names (pipelines/create looks it up)
    first = new_pipeline(stack, account, names[0], {"steps": [{"ModelInference": {"models": [{"name": "m"}],
                                                                                    "note": BIG_NOTE}}]})
    asyncio.run(_copies(
        stack, first["pipeline_pk_id"], names[1:],
        "WITH made AS (INSERT INTO deployer.pipelines (workspace_id, name, owner_id) SELECT workspace_id, $2,"
        " owner_id FROM deployer.pipelines WHERE id = $1 RETURNING id) INSERT INTO deployer.pipeline_versions"
        " (pipeline_id, version, definition) SELECT made.id, gen_random_uuid(), v.definition FROM made,"
        " deployer.pipeline_versions v WHERE v.pipeline_id = $1 RETURNING pipeline_id"))
    return names


def paged_lists(stack, account: Account, name: str) -> tuple[list[dict], list[int], dict, list]:
    """5 new pipelines and 5 inactive assays (named `name`.format(index)) of the first, small enough for a whole
    list: the pipelines, the assays' ids (oldest first), and the whole pipelines/list and assays/list answers."""
    pipelines = [new_pipeline(stack, account) for _ in range(5)]
    assay_ids = []
    for index in range(5):
        body = {**config(account, pipelines[0], name.format(index), static([0.1 * index, 0.5, 0.9]), FUTURE,
                         "1 hours"), "active": False}
        created = post(stack, "assays/create", account.token, body)
        assert created.status_code == 200, created.text[:300]
        assay_ids.append(created.json()["assay_id"])
    whole_pipelines = post(stack, "pipelines/list", account.token, {"workspace_id": account.workspace_id}).json()
    whole_assays = post(stack, "assays/list", account.token, {"pipeline_id": pipelines[0]["pipeline_pk_id"]}).json()
    return pipelines, assay_ids, whole_pipelines, whole_assays


def test_a_static_baseline_past_its_bound_is_400_and_nothing_is_stored(stack, alice):
    """A Static baseline's values are kept with the assay and repeated in every assays/list answer: 10,000 at most
    (as many as the gateway's 2 MiB JSON limit let through were stored before)."""
    pipeline = new_pipeline(stack, alice)
    rng = np.random.default_rng(7)
    body = {**config(alice, pipeline, "static", static(rng.random(10_001).tolist()), iso(int(time.time() * 1000)),
                     "1 hours"), "active": False}
    for route in ("assays/create", "assays/run_interactive", "assays/run_interactive_baseline"):
        response = post(stack, route, alice.token, body)
        assert response.status_code == 400, (route, response.text[:300])
        assert response.json() == {"code": "invalid_request", "msg": "baseline.Static.values: List should have at "
                                   "most 10000 items after validation, not 10001"}, route
    assert post(stack, "assays/list", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]}).json() == []
    at_bound = {**body, "baseline": static(rng.random(10_000).tolist())}
    created = post(stack, "assays/create", alice.token, at_bound)
    assert created.status_code == 200, created.text[:300]
    [listed] = post(stack, "assays/list", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]}).json()
    assert listed["id"] == created.json()["assay_id"] and len(listed["baseline"]["Static"]["values"]) == 10_000


def test_an_assay_list_larger_than_a_reply_is_422_and_pages_through_it(stack, alice):
    """50 assays of 10,000 values (~200 KB of JSON each) make a ~10 MB assays/list, above the 8 MiB a bus reply
    carries: the whole list is a 422 reply_too_large telling how to page, at once; with `limit` the answer is still
    the seed's bare list, at most 4 MiB of it, and the cursor of the next page is the x-next-cursor header."""
    pipeline = new_pipeline(stack, alice)
    ids = static_assays(stack, alice, pipeline, np.random.default_rng(11))
    asked = {"pipeline_id": pipeline["pipeline_pk_id"]}
    started = time.monotonic()
    whole = post(stack, "assays/list", alice.token, asked)
    assert whole.status_code == 422 and whole.json()["code"] == "reply_too_large", whole.text[:300]
    assert "ask assays/list for pages: pass limit (at most 1000), then each page's cursor" in whole.json()["msg"]
    assert time.monotonic() - started < 10  # answered, not left to the bus timeout
    pages, cursor = [], None
    while True:
        response = post(stack, "assays/list", alice.token, {**asked, "limit": 1000, **({"cursor": cursor} if cursor
                                                                                       else {})})
        assert response.status_code == 200, response.text[:300]
        assert isinstance(response.json(), list) and len(response.content) <= 4 * 1024 * 1024 + 1024
        pages.append([assay["id"] for assay in response.json()])
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
        assert len(pages) < 10, pages
    assert len(pages) >= 3 and sum(pages, []) == sorted(ids, reverse=True)  # newest first, each once
    small = post(stack, "assays/list", alice.token, {**asked, "limit": 2, "cursor": str(ids[10])})
    assert [a["id"] for a in small.json()] == [ids[9], ids[8]] and small.headers["x-next-cursor"] == str(ids[8])
    for bad, words in (({"limit": 0}, "limit: Input should be greater than or equal to 1"),
                       ({"limit": 1001}, "limit: Input should be less than or equal to 1000"),
                       ({"limit": 2, "cursor": "-1"}, "cursor: not a next_cursor of assays/list")):
        refused = post(stack, "assays/list", alice.token, {**asked, **bad})
        assert refused.status_code == 400 and words in refused.json()["msg"], refused.text[:300]


def test_a_pipeline_list_larger_than_a_reply_is_422_and_pages_through_it(stack, alice):
    """140 pipelines of a ~62 KiB definition (under the 64 KiB bound) make a ~9 MB pipelines/list: 422
    reply_too_large naming limit and cursor; pages of at most 4 MiB with next_cursor follow every pipeline once, and
    an answer without limit that fits is as before (no next_cursor key)."""
    few = [new_pipeline(stack, alice) for _ in range(3)]
    asked = {"workspace_id": alice.workspace_id}
    whole = post(stack, "pipelines/list", alice.token, asked).json()
    assert list(whole) == ["pipelines"] and [p["id"] for p in whole["pipelines"]] == [p["pipeline_pk_id"] for p in few]
    first = post(stack, "pipelines/list", alice.token, {**asked, "limit": 2}).json()
    assert [p["id"] for p in first["pipelines"]] == [p["pipeline_pk_id"] for p in few[:2]]
    assert first["next_cursor"] == str(few[1]["pipeline_pk_id"])
    last = post(stack, "pipelines/list", alice.token, {**asked, "limit": 2, "cursor": first["next_cursor"]}).json()
    assert last == {"pipelines": whole["pipelines"][2:]}  # the last page: no next_cursor
    refused = post(stack, "pipelines/list", alice.token, {**asked, "limit": 2, "cursor": "one"})
    assert refused.status_code == 400 and "cursor: not a next_cursor of pipelines/list" in refused.json()["msg"]

    big_pipelines(stack, alice)
    started = time.monotonic()
    too_large = post(stack, "pipelines/list", alice.token, asked)
    assert too_large.status_code == 422 and too_large.json()["code"] == "reply_too_large", too_large.text[:300]
    assert "ask pipelines/list for pages: pass limit" in too_large.json()["msg"]
    assert time.monotonic() - started < 10
    seen, cursor = [], None
    while True:
        page = post(stack, "pipelines/list", alice.token, {**asked, "limit": 1000, **({"cursor": cursor} if cursor
                                                                                      else {})})
        assert page.status_code == 200 and len(page.content) <= 4 * 1024 * 1024 + 64 * 1024, page.text[:300]
        seen += [p["name"] for p in page.json()["pipelines"]]
        cursor = page.json().get("next_cursor")
        if cursor is None:
            break
    assert seen == [p["name"] for p in few] + [f"big{index}" for index in range(140)]
    # the log store looks a pipeline that logged nothing yet up in pipelines/list, page after page: asked whole, the
    # list's 422 came back as get_logs' answer
    logs = post(stack, "pipelines/get_logs", alice.token, {"pipeline_id": "big139", "workspace_id": alice.workspace_id})
    assert logs.status_code == 200, logs.text[:300]


async def many_versions(stack, pipeline_id: int, count: int = 140) -> list[int]:
    """`count` more versions of the pipeline with a ~62 KiB definition (BIG_NOTE and its index), as rows (140 make
    ~8.9 MB of definitions, past a reply); the ids of all its versions, oldest first."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        await conn.execute("INSERT INTO deployer.pipeline_versions (pipeline_id, version, definition) SELECT $1,"
                           " gen_random_uuid(), jsonb_build_object('steps', '[]'::jsonb, 'note', $2::text || g)"
                           " FROM generate_series(1, $3) g", pipeline_id, BIG_NOTE, count)
        return [row["id"] for row in await conn.fetch(
            "SELECT id FROM deployer.pipeline_versions WHERE pipeline_id = $1 ORDER BY id", pipeline_id)]
    finally:
        await conn.close()


async def test_a_pipeline_whose_versions_pass_a_reply_lists_its_newest_and_reads_the_rest(stack, alice):
    """140 versions of a ~62 KiB definition (~8.9 MB, inserted as rows: 140 pipelines/create take long) made
    pipelines/get, the pipeline's assay routes and the pipelines/list page holding it a 422 reply_too_large, and no
    cursor got past it. Its record now lists the newest versions up to 4 MiB with versions_cursor / versions_omitted;
    pipelines/get with versions_cursor reads the older ones, each once; pages step over it."""
    before = new_pipeline(stack, alice)
    big = new_pipeline(stack, alice, definition={"steps": []})
    ids = await many_versions(stack, big["pipeline_pk_id"])
    after = new_pipeline(stack, alice)
    asked = {"pipeline_id": big["pipeline_pk_id"]}
    got = post(stack, "pipelines/get", alice.token, asked)
    assert got.status_code == 200 and len(got.content) <= 4 * 1024 * 1024 + 64 * 1024, got.text[:300]
    record = got.json()
    listed = [v["id"] for v in record["versions"]]
    assert listed == ids[-len(listed):] and 40 < len(listed) < 141, listed  # the newest, oldest first as before
    assert record["versions"][-1]["definition"]["note"] == BIG_NOTE + "140"
    assert record["versions_omitted"] == len(ids) - len(listed) and record["versions_cursor"] == str(listed[0])
    read = listed
    while cursor := record.get("versions_cursor"):
        older = post(stack, "pipelines/get", alice.token, {**asked, "versions_cursor": cursor})
        assert older.status_code == 200, older.text[:300]
        record = older.json()
        read = [v["id"] for v in record["versions"]] + read
        assert len(read) <= len(ids), read
    assert read == ids  # every version once, in order
    # the SDK's Pipeline.versions() reads them all the same way
    client = sdk_client(stack, alice)
    try:
        assert [v["id"] for v in client.current_workspace().pipeline(big["name"]).versions()] == ids
    finally:
        client.close()
    refused = post(stack, "pipelines/get", alice.token, {**asked, "versions_cursor": "x"})
    assert refused.status_code == 400 and "versions_cursor" in refused.json()["msg"], refused.text[:300]
    # a pipeline whose versions fit is answered as before: no new keys
    assert list(post(stack, "pipelines/get", alice.token, {"pipeline_id": after["pipeline_pk_id"]}).json()) == [
        "id", "name", "workspace_id", "created_at", "updated_at", "versions", "deployment"]
    # its assay routes ask pipelines/get: they answered its 422
    assays = post(stack, "assays/list", alice.token, asked)
    assert assays.status_code == 200 and assays.json() == [], assays.text[:300]
    # pages of pipelines/list step over it (a page of it alone was a 422, and no cursor led past it)
    seen, cursor = [], None
    while True:
        page = post(stack, "pipelines/list", alice.token, {"workspace_id": alice.workspace_id, "limit": 1000,
                                                            **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text[:300]
        seen += [p["id"] for p in page.json()["pipelines"]]
        if (cursor := page.json().get("next_cursor")) is None:
            break
    assert seen == [before["pipeline_pk_id"], big["pipeline_pk_id"], after["pipeline_pk_id"]]


def test_a_refused_dns_name_is_echoed_cut_short(stack, alice):
    """A 1 MB name (under the gateway's 2 MiB JSON limit) was repeated whole in the 400's message: its first 64
    characters now, and its length."""
    huge = "N" * 1_000_000
    shown = f"'{'N' * 64}'… (1000000 characters)"  # the first 64 characters and the length
    pipeline = new_pipeline(stack, alice)
    for route, body, what in [
            ("pipelines/create", {"pipeline_id": huge, "workspace_id": alice.workspace_id, "definition": {}},
             "pipeline name"),
            ("pipelines/deploy", {"deploy_id": huge, "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
                                  "pipeline_id": pipeline["pipeline_pk_id"]}, "deploy_id"),
            ("pipelines/copy", {"name": huge, "workspace_id": alice.workspace_id,
                                "source_pipeline": pipeline["pipeline_pk_id"]}, "pipeline name"),
            ("workspaces/create", {"workspace_name": huge.lower()}, "workspace name")]:
        response = post(stack, route, alice.token, body)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", \
            (route, response.text[:200])
        message = response.json()["msg"]
        assert len(message) < 400, (route, len(message))
        assert message.startswith(f"invalid {what} {shown.lower() if route == 'workspaces/create' else shown}: use "
                                  "1-63"), (route, message)
    # a name looked up, not found: the same cut (the deployer's external URL and deployment status)
    for route, body, said in [
            ("admin/get_pipeline_external_url", {"workspace_id": alice.workspace_id, "pipeline_name": huge},
             f"pipeline {shown} not found"),
            ("status/get_deployment", {"name": huge + "-1"},
             f"deployment {shown.replace('1000000', '1000002')} not found")]:
        response = post(stack, route, alice.token, body)
        assert response.status_code == 404 and response.json()["msg"] == said, (route, response.text[:200])


async def test_the_deployers_bus_subjects_bound_definitions_and_engine_configs(stack, alice):
    """A user's token on the bus's front door (the `client` identity) reaches deployer.pipelines.create and deploy
    without the gateway: a definition or engine_config past 64 KiB of JSON was stored from there."""
    import nats

    from shared import subjects
    from shared.messages import Reply

    pipeline = new_pipeline(stack, alice)
    big = "x" * MAX_JSON_OBJECT
    headers = {"authorization": f"Bearer {alice.token}"}
    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
    try:
        async def ask(subject: str, body: dict) -> Reply:
            import json

            return Reply.model_validate_json((await sealed_request(nc, subject, json.dumps(body).encode(), timeout=30,
                                                                   headers=headers)).data)

        created = await ask(subjects.DEPLOYER_PIPELINES_CREATE, {
            "pipeline_id": "busdefinition", "workspace_id": alice.workspace_id,
            "definition": {"steps": [{"ModelInference": {"models": [{"name": "m"}], "note": big}}]}})
        deployed = await ask(subjects.DEPLOYER_PIPELINES_DEPLOY, {
            "deploy_id": "busengine", "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
            "pipeline_id": pipeline["pipeline_pk_id"], "engine_config": {"replica_count": 1, "note": big}})
    finally:
        await nc.close()
    for reply, field in ((created, "definition"), (deployed, "engine_config")):
        assert not reply.ok and reply.status == 400 and reply.error.code == "invalid_request", reply
        assert reply.error.msg.startswith(f"{field}: must take at most 65536 bytes of JSON, not "), reply.error.msg
    listed = post(stack, "pipelines/list", alice.token, {"workspace_id": alice.workspace_id}).json()["pipelines"]
    assert [p["name"] for p in listed] == [pipeline["name"]] and listed[0]["deployment"] is None  # nothing stored


def test_an_evaluation_declaration_is_bounded_and_nothing_is_stored(stack, alice):
    """A task run's `evaluation` is kept on its card (data.evaluation), shown in every workflow graph answer: its
    names are bounded and the whole declaration takes at most 64 KiB of JSON, a 400 naming which."""
    ws = alice.workspace_id
    project = post(stack, "projects/create", alice.token, {"workspace_id": ws, "name": "bounded-eval"}).json()
    dataset = post(stack, "datasets/create", alice.token, {"project_id": project["id"], "name": "eval",
                                                           "kind": "tabular"}).json()
    run = f"run-{uuid.uuid4().hex[:8]}"
    link = {"workspace_id": ws, "task_id": run, "dataset_id": dataset["id"]}
    good = {"label_column": "label", "output_column": "probabilities"}
    for evaluation, words in [
            ({**good, "output_column": "o" * 1025}, "evaluation.output_column: String should have at most 1024"),
            ({**good, "label_column": "l" * 1025}, "evaluation.label_column: String should have at most 1024"),
            ({**good, "class_names": ["c"] * 10_001}, "evaluation.class_names: List should have at most 10000"),
            ({**good, "class_names": ["c" * 1000] * 100}, "evaluation: must take at most 65536 bytes of JSON, not ")]:
        response = post(stack, "workflow/add_input_dataset", alice.token, {**link, "evaluation": evaluation})
        assert response.status_code == 400 and words in response.json()["msg"], response.text[:300]
    assert post(stack, "workflow/graph", alice.token, {"workspace_id": ws, "kind": "task_run",
                                                       "ref": run}).status_code == 404  # nothing stored
    fits = {**good, "class_names": [f"class {i}" for i in range(1000)]}
    added = post(stack, "workflow/add_input_dataset", alice.token, {**link, "evaluation": fits})
    assert added.status_code == 200, added.text[:300]
