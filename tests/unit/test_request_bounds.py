"""Bounds on the free text and JSON blobs users send, where they travel in events and replies: a 400 naming the
field and its limit for new input, while what is stored from before still loads (the models that read it keep no
bounds)."""

from __future__ import annotations

import importlib
import json

import pytest
from pydantic import ValidationError

from services.assay_runner.handlers import plan
from shared.errors import validation_message
from shared.messages.assays import AssayConfig, NewAssayConfig


def assay(**change) -> dict:
    body = {"name": "drift", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output dense_1 0",
            "baseline": {"Fixed": {"pipeline": "p", "model": "m", "start_at": "2026-01-01T00:00:00Z",
                                   "end_at": "2026-01-02T00:00:00Z"}},
            "window": {"pipeline": "p", "model": "m", "width": "1 hours", "interval": "1 hours"},
            "summarizer": {}, "alert_threshold": 0.1, "workspace_id": 1, "model_insights_url": "/insights"}
    return {**body, **change}


def refusal(model, body: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return validation_message(caught.value.errors())


def test_a_new_assay_config_bounds_its_free_text_and_names_the_field_and_limit():
    good = assay()
    cases = [({"name": "n" * 256}, "name", 255), ({"pipeline_name": "p" * 256}, "pipeline_name", 255),
             ({"status": "s" * 256}, "status", 255), ({"iopath": "i" * 1025}, "iopath", 1024),
             ({"model_insights_url": "/" * 2049}, "model_insights_url", 2048),
             ({"window": {**good["window"], "pipeline": "p" * 256}}, "window.pipeline", 255),
             ({"window": {**good["window"], "model": "m" * 256}}, "window.model", 255),
             ({"window": {**good["window"], "width": "1" * 101}}, "window.width", 100),
             ({"window": {**good["window"], "interval": "1" * 101}}, "window.interval", 100),
             ({"baseline": {"Fixed": {**good["baseline"]["Fixed"], "pipeline": "p" * 256}}}, "baseline.Fixed.pipeline",
              255),
             ({"baseline": {"Fixed": {**good["baseline"]["Fixed"], "model": "m" * 256}}}, "baseline.Fixed.model", 255)]
    for change, field, limit in cases:
        assert refusal(NewAssayConfig, assay(**change)) == f"{field}: String should have at most {limit} characters"
    at_bounds = assay(name="n" * 255, iopath="output " + "d" * 1015 + " 0", model_insights_url="/" * 2048)
    assert NewAssayConfig.model_validate(at_bounds).name == "n" * 255


def test_a_stored_config_past_the_bounds_still_loads_and_plans():
    """The scheduler reads stored configurations with AssayConfig: one stored before the bounds (a 300-character name
    and model) must not turn into a warning each tick and an assay that never runs again."""
    stored = assay(name="n" * 300, window={"pipeline": "p", "model": "m" * 300, "width": "1 hours"})
    cfg = AssayConfig.model_validate_json(json.dumps(stored))
    assert cfg.name == "n" * 300 and plan(cfg).column == "out.dense_1"
    # and what create stores from a new config reads back with the stored-row model
    new = NewAssayConfig.model_validate(assay(name="n" * 255))
    assert AssayConfig.model_validate(new.model_dump(mode="json")).model_dump() == new.model_dump()


def test_the_gateway_and_the_assay_runner_take_new_configs_from_callers():
    """Both entry points validate the bounded model: the gateway's routes and the assay runner's subscribers (a caller
    on the bus is refused too)."""
    from faststream.specification import AsyncAPI

    from services.gateway.http import JSON_ROUTES
    from shared.service import Runtime, build_broker
    from shared.settings import Settings

    routes = {route.path: route.model for route in JSON_ROUTES}
    paths = ("/assays/create", "/assays/run_interactive_baseline", "/assays/run_interactive")
    assert all(routes[path] is NewAssayConfig for path in paths)
    spec = importlib.import_module("services.assay_runner.app").SPEC
    broker = build_broker(spec, Runtime(name="assay_runner", settings=Settings.model_construct()))
    channels = json.loads(AsyncAPI(broker, schema_version="3.0.0").to_specification().to_json())["channels"]
    for subject in ("assays.create", "assays.run_interactive_baseline", "assays.run_interactive"):
        assert f"assay_runner.{subject}:NewAssayConfig" in channels, sorted(channels)


def test_a_new_pipeline_definition_is_bounded_at_the_gateway_and_stored_ones_still_pass_the_deployer():
    from services.gateway.http import JSON_ROUTES
    from shared.messages.base import MAX_JSON_OBJECT
    from shared.messages.deployer import CreatePipeline, NewPipeline

    big = {"steps": [{"ModelInference": {"models": [{"name": "m"}], "note": "x" * MAX_JSON_OBJECT}}]}
    body = {"pipeline_id": "p", "workspace_id": 1, "definition": big}
    size = len(json.dumps(big, separators=(",", ":")))
    assert refusal(NewPipeline, body) == f"definition: must take at most {MAX_JSON_OBJECT} bytes of JSON, not {size}"
    assert {route.path: route.model for route in JSON_ROUTES}["/pipelines/create"] is NewPipeline
    # the monitoring service sends a stored definition back (a model swapped) as CreatePipeline: one stored before
    # the bound must still pass
    assert CreatePipeline.model_validate(body).definition == big
    fits = {"steps": [{"ModelInference": {"models": [{"name": "m"}], "note": "x" * (MAX_JSON_OBJECT - 100)}}]}
    assert NewPipeline.model_validate({**body, "definition": fits}).definition == fits


def test_registries_connections_and_continuous_training_bound_what_users_name_and_send():
    from shared.messages.base import MAX_JSON_OBJECT
    from shared.messages.monitoring_continuous import SetupContinuousTraining
    from shared.messages.registry import CreateConnection, CreateRegistry

    registry = {"workspace_id": 1, "name": "r", "url": "https://mlflow.example.com", "token": "t"}
    assert CreateRegistry.model_validate(registry).name == "r"
    for change, field, limit in (({"name": "r" * 201}, "name", 200), ({"url": "h" * 2049}, "url", 2048),
                                 ({"token": "t" * 16385}, "token", 16384)):
        assert refusal(CreateRegistry, {**registry, **change}) == \
            f"{field}: String should have at most {limit} characters"
    connection = {"name": "c", "type": "kafka", "details": {}}
    assert refusal(CreateConnection, {**connection, "type": "k" * 101}) == \
        "type: String should have at most 100 characters"
    assert refusal(CreateConnection, {**connection, "name": "c" * 201}) == \
        "name: String should have at most 200 characters"
    setup = {"deployment": "d-1", "project_id": 1, "threshold": 10}
    for field in ("experiment_parameters", "scan_config"):
        assert refusal(SetupContinuousTraining, {**setup, field: {"x": "y" * MAX_JSON_OBJECT}}).startswith(
            f"{field}: must take at most {MAX_JSON_OBJECT} bytes of JSON, not ")
    assert SetupContinuousTraining.model_validate({**setup, "experiment_parameters": {"epochs": 3}})


def test_engine_config_is_bounded_for_new_deploys_and_copies_but_not_for_stored_ones():
    from services.gateway.http import JSON_ROUTES
    from shared.messages.base import MAX_JSON_OBJECT
    from shared.messages.deployer import CopyPipeline, DeployPipeline, NewDeployment

    big = {"replica_count": 1, "note": "x" * MAX_JSON_OBJECT}
    deploy = {"deploy_id": "d", "pipeline_version_pk_id": 1, "pipeline_id": 1, "engine_config": big}
    said = "engine_config: must take at most 65536 bytes of JSON, not "
    assert refusal(NewDeployment, deploy).startswith(said)
    assert refusal(CopyPipeline, {"name": "c", "workspace_id": 1, "source_pipeline": 1, "engine_config": big}
                   ).startswith(said)
    assert {route.path: route.model for route in JSON_ROUTES}["/pipelines/deploy"] is NewDeployment
    # the monitoring service redeploys with a deployment's stored engine_config as DeployPipeline
    assert DeployPipeline.model_validate(deploy).engine_config == big
    assert NewDeployment.model_validate({**deploy, "engine_config": {"replica_count": 2}}).engine_config


def test_a_labeling_job_link_bounds_its_url_as_a_card_meta_url():
    from shared.messages.lineage import JobLink

    link = {"workspace_id": 1, "task_id": "run-1", "id": "job-1", "url": "/jobs/1"}
    assert JobLink.model_validate(link).url == "/jobs/1"
    assert refusal(JobLink, {**link, "url": "/" + "j" * 2000}) == "url: String should have at most 2000 characters"


def test_a_new_static_baseline_takes_at_most_10000_values_and_a_stored_one_still_loads():
    from shared.messages.assays import MAX_STATIC_VALUES

    assert MAX_STATIC_VALUES == 10_000
    over = assay(baseline={"Static": {"values": [0.5] * 10_001}})
    assert refusal(NewAssayConfig, over) == \
        "baseline.Static.values: List should have at most 10000 items after validation, not 10001"
    assert len(NewAssayConfig.model_validate(assay(baseline={"Static": {"values": [0.5] * 10_000}})).baseline.Static
               .values) == 10_000
    # the scheduler reads stored configurations with AssayConfig: one stored before the bound still plans
    stored = AssayConfig.model_validate_json(json.dumps(over))
    assert len(stored.baseline.Static.values) == 10_001 and plan(stored).column == "out.dense_1"


def test_an_evaluation_declaration_is_bounded_on_links_and_a_stored_one_still_loads():
    from shared.messages.lineage import DatasetLink, EvaluationSpec, NewEvaluationSpec, ProjectLink

    link = {"workspace_id": 1, "task_id": "run-1", "dataset_id": 1}
    good = {"label_column": "label", "output_column": "probabilities"}
    for change, said in (({"output_column": "o" * 1025}, "evaluation.output_column: String should have at most 1024 "
                          "characters"),
                         ({"label_column": "l" * 1025}, "evaluation.label_column: String should have at most 1024 "
                          "characters"),
                         ({"dataset_name": "d" * 201}, "evaluation.dataset_name: String should have at most 200 "
                          "characters"),
                         ({"class_names": ["c"] * 10_001}, "evaluation.class_names: List should have at most 10000 "
                          "items after validation, not 10001")):
        assert refusal(DatasetLink, {**link, "evaluation": {**good, **change}}) == said
    large = {**good, "class_names": ["c" * 1000] * 100}
    assert refusal(DatasetLink, {**link, "evaluation": large}).startswith(
        "evaluation: must take at most 65536 bytes of JSON, not ")
    project = {"workspace_id": 1, "task_id": "run-1", "project_id": 1, "version_id": 1}
    assert refusal(ProjectLink, {**project, "evaluation": large}).startswith("evaluation: must take at most 65536")
    assert type(DatasetLink.model_validate({**link, "evaluation": good}).evaluation) is NewEvaluationSpec
    # the automatic benchmark reads the stored declaration with EvaluationSpec: one stored before the bounds loads
    assert EvaluationSpec.model_validate(large).class_names == ["c" * 1000] * 100


def test_a_refused_name_is_echoed_cut_short():
    from shared.errors import echo

    assert echo("ok-name") == "'ok-name'"
    assert echo("n" * 64) == repr("n" * 64)
    assert echo("n" * 1_000_000) == f"'{'n' * 64}'… (1000000 characters)"


def test_the_deployers_subscribers_bound_what_any_caller_sends():
    """The gateway's routes and the deployer's own subscribers take the bounded models: a user's token on the bus's
    front door reaches deployer.pipelines.create and deploy without the gateway."""
    from faststream.specification import AsyncAPI

    from shared.service import Runtime, build_broker
    from shared.settings import Settings

    spec = importlib.import_module("services.deployer.app").SPEC
    broker = build_broker(spec, Runtime(name="deployer", settings=Settings.model_construct()))
    channels = json.loads(AsyncAPI(broker, schema_version="3.0.0").to_specification().to_json())["channels"]
    assert "deployer.pipelines.create:NewPipeline" in channels and "deployer.pipelines.deploy:NewDeployment" in \
        channels, sorted(channels)


def test_a_page_holds_at_most_limit_items_and_stops_at_its_byte_budget():
    import asyncio

    from shared import paging
    from shared.errors import InvalidRequest

    rows = [{"id": i} for i in (9, 7, 5, 3)]
    assert asyncio.run(paging.page(rows, None, lambda r: r)) == (rows, None)  # no limit: the whole list
    assert asyncio.run(paging.page(rows, 2, lambda r: r)) == (rows[:2], "7")
    assert asyncio.run(paging.page(rows, 4, lambda r: r)) == (rows, None)

    async def big(row):
        return {"id": row["id"], "blob": "x" * (paging.PAGE_BYTES // 3)}

    items, cursor = asyncio.run(paging.page(rows, 1000, big))
    assert [i["id"] for i in items] == [9, 7] and cursor == "7"  # a third one would pass PAGE_BYTES
    huge, cursor = asyncio.run(paging.page(rows, 1000, lambda r: {"blob": "x" * paging.PAGE_BYTES * 2, **r}))
    assert [i["id"] for i in huge] == [9] and cursor == "9"  # never an empty page: paging always advances
    assert paging.after("42", "x/list") == 42 and paging.after(None, "x/list") is None
    for bad in ("", "-1", "4.2", "1" * 20, "٣"):
        with pytest.raises(InvalidRequest, match="cursor: not a next_cursor of x/list"):
            paging.after(bad, "x/list")


def test_pages_reads_a_paged_list_to_its_end():
    import asyncio
    from types import SimpleNamespace

    from shared import paging

    asked = []

    async def ask(cursor):
        asked.append(cursor)
        return SimpleNamespace(items=[cursor], next_cursor={None: "a", "a": "b"}.get(cursor))

    async def read():
        return [page.items async for page in paging.pages(ask)]

    assert asyncio.run(read()) == [[None], ["a"], ["b"]] and asked == [None, "a", "b"]


def test_the_paged_lists_keep_their_reply_schema_and_answer_a_whole_list_as_before():
    """17befb2's serializer dropping an unset next_cursor was annotated `-> dict[str, Any]`, which pydantic takes for
    the reply's serialization schema: the gateway's OpenAPI document then described pipelines/list's answer as any
    object (no `pipelines`), for every existing caller and every client generated from it."""
    from types import SimpleNamespace

    from services.gateway.http import create_app
    from shared.messages.assays import Assays
    from shared.messages.deployer import Pipelines
    from shared.settings import Settings

    for model, items in ((Pipelines, "pipelines"), (Assays, "assays")):
        schema = model.model_json_schema(mode="serialization")
        assert {items, "next_cursor"} <= set(schema.get("properties", {})), (model.__name__, schema)
        assert model.model_validate({items: []}).model_dump(mode="json") == {items: []}  # no new key, as before
        assert model.model_validate({items: [], "next_cursor": "7"}).model_dump(mode="json")["next_cursor"] == "7"
    app = create_app(SimpleNamespace(settings=Settings(), extras={}, broker=None, objects=None))
    while not hasattr(app, "openapi"):  # under the inference fast path and the body limits
        app = app.app
    document = app.openapi()
    answer = document["paths"]["/v1/api/pipelines/list"]["post"]["responses"]["200"]["content"]["application/json"]
    named = answer["schema"]["$ref"].rpartition("/")[2]
    assert "pipelines" in document["components"]["schemas"][named].get("properties", {})


def test_a_benchmark_deployment_not_found_is_echoed_cut_short():
    """05fbea4 cut a deployment name looked up and not found to 64 characters (shared.errors.echo) in the deployer
    and authz; benchmarks/run's own 404 (a name the deployer does not know, or one in another workspace) still
    repeated it whole: a 1 MB name came back as a 1 MB message."""
    import asyncio

    from services.workflow_lineage.benchmark_runs import _routes
    from shared.errors import NotFound

    name = "d" * 1_000_000

    async def unknown(token, asked):
        raise NotFound("deployment 'ddd…' (1000000 characters) not found")

    async def elsewhere(token, asked):
        return {"workspace_id": 2}

    for resolve in (unknown, elsewhere):
        with pytest.raises(NotFound) as caught:
            asyncio.run(_routes(resolve, None, 1, [name]))
        assert len(caught.value.msg) < 200 and "(1000000 characters)" in caught.value.msg, caught.value.msg[:200]
