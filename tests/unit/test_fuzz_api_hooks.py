"""`make fuzz-api`'s seeding hook (tests/fuzz_api_hooks.py, which runs inside schemathesis's own environment): which
fields get the real ids, that destructive routes never get them (and lose any they were generated with), and that
the aimed share is what was asked. schemathesis itself is not in .venv: a stand-in records the registered hooks."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

HOOKS = Path(__file__).resolve().parents[1] / "fuzz_api_hooks.py"
SEEDS = {"workspace_id": 2, "user_id": "0f0f0f0f-1d87-4955-8157-24cf711aa824", "admin_email": "admin",
         "client_id": "inference-af8b", "model_pk": 3, "model_version_id": 4, "model_name": "fuzzmodel",
         "model_version": "4b10514d-ef5c-43a2-8b9e-ea7c243a25cc", "model_sha": "86f8", "pipeline_pk": 5,
         "pipeline_name": "fuzzpipe", "pipeline_version_pk": 6, "deployment_id": 7, "deployment_name": "fuzzpipe-7",
         "assay_id": 8, "orchestration_id": "f4ed5044-d097-40a8-a26b-2ac477fd98ae", "orchestration_sha": "f137",
         "task_id": "69c4f4ba-9d35-420d-8ec6-36a3a9003224", "run_id": "28566664-0394-4119-851b-89b5b726465f",
         "project_id": 9, "dataset_ids": [10, 11], "version_id": 12,
         "connection_id": "dfb66f51-1d9a-4e25-85bd-feb112c7a113", "connection_name": "fuzzconn",
         "registry_id": "ebea822e-9b1f-4adb-bf90-eb7a534992e1", "report_id": 13,
         "prediction_id": "b3d2a083-8c5d-483b-bc67-0af75b9cd86c"}


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    seeds = tmp_path_factory.mktemp("fuzz") / "seeds.json"
    seeds.write_text(json.dumps(SEEDS))
    registered = {}
    stand_in = types.ModuleType("schemathesis")
    stand_in.hook = lambda function: registered.setdefault(function.__name__, function)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "schemathesis", stand_in)
        patch.setenv("RAILYARD_FUZZ_SEEDS", str(seeds))
        patch.setenv("RAILYARD_FUZZ_SEED_SHARE", "1")
        spec = importlib.util.spec_from_file_location("fuzz_api_hooks_under_test", HOOKS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    module.registered = registered
    return module


def call(hooks, route: str, body=None, path_parameters=None, query=None, share: float = 1.0):
    case = types.SimpleNamespace(operation=types.SimpleNamespace(path=route), body=body,
                                 path_parameters=path_parameters, query=query)
    hooks.SHARE = share
    hooks.registered["before_call"](None, case, {})
    return case


def test_the_fields_that_name_things_get_the_seeded_ones(hooks):
    assert call(hooks, "/v1/api/pipelines/get", {"pipeline_id": 0}).body == {"pipeline_id": 5}
    logs = call(hooks, "/v1/api/pipelines/get_logs", {"pipeline_id": "x", "workspace_id": 0, "page_size": 3}).body
    assert logs == {"pipeline_id": "fuzzpipe", "workspace_id": 2, "page_size": 3}  # the rest stays generated
    assert call(hooks, "/v1/api/models/get_by_id", {"id": -1}).body == {"id": 3}
    assert call(hooks, "/v1/api/task/get_logs_for_run", {"id": "x", "lines": 5}).body["id"] == SEEDS["run_id"]
    assert call(hooks, "/v1/api/task/get_tasks_by_orch_sha", {"sha": "x"}).body == {"sha": "f137"}
    deploy = call(hooks, "/v1/api/pipelines/deploy", {"deploy_id": "", "pipeline_id": 0, "pipeline_version_pk_id": 0,
                                                      "models": [{"name": "", "version": "", "sha": ""}]},
                  share=10).body  # COSTLY: aimed at a tenth of the share
    assert deploy == {"deploy_id": "fuzzpipe", "pipeline_id": 5, "pipeline_version_pk_id": 6,
                      "models": [{"name": "fuzzmodel", "version": SEEDS["model_version"], "sha": "86f8"}]}
    nested = call(hooks, "/v1/api/deployments/set_training_data",
                  {"deployment": "", "dataset_version": {"dataset_id": 0, "version_id": None}}).body
    assert nested["deployment"] == "fuzzpipe-7" and nested["dataset_version"]["dataset_id"] in (10, 11)
    assert nested["dataset_version"]["version_id"] == 12
    oip = call(hooks, "/v2/models/{model}/infer", None, {"model": "x"})
    assert oip.path_parameters == {"model": "fuzzpipe-7"}
    infer = call(hooks, "/v1/api/pipelines/infer/{deployment}/{pipeline}", None, {"deployment": "", "pipeline": ""})
    assert infer.path_parameters == {"deployment": "fuzzpipe-7", "pipeline": "fuzzpipe"}
    assert call(hooks, "/v1/api/datasets/upload_rows", None, None, {"dataset_id": 0}).query["dataset_id"] in (10, 11)
    assert call(hooks, "/v1/api/benchmarks/compare", {"report_ids": [1, 2, 3]}).body == {"report_ids": [13]}
    review = call(hooks, "/v1/api/deployments/review_prediction", {"deployment": "", "prediction_id": "x"}).body
    assert review == {"deployment": "fuzzpipe-7", "prediction_id": SEEDS["prediction_id"]}
    assert call(hooks, "/v1/api/pipelines/get", [1, {"pipeline_id": 0}]).body == [1, {"pipeline_id": 5}]
    assert call(hooks, "/v1/api/pipelines/get", "not json").body == "not json"


def test_destructive_routes_never_get_a_seeded_id_and_lose_any_they_were_generated_with(hooks):
    assert call(hooks, "/v1/api/projects/delete", {"project_id": 9}).body == {"project_id": hooks.NOWHERE_ID}
    assert call(hooks, "/v1/api/projects/delete", {"project_id": 1}).body == {"project_id": 1}  # not aimed either
    undeploy = call(hooks, "/v1/api/pipelines/undeploy", {"pipeline_id": 5, "deployment_id": 7}).body
    assert undeploy == {"pipeline_id": hooks.NOWHERE_ID, "deployment_id": hooks.NOWHERE_ID}
    assert call(hooks, "/v1/api/task/kill", {"id": SEEDS["task_id"]}).body == {"id": hooks.NOWHERE_UUID}
    assert call(hooks, "/v1/api/connections/delete", {"name": "fuzzconn"}).body == {"name": "nowhere"}
    assert call(hooks, "/v1/api/deployments/delete", {"deployment": "fuzzpipe-7", "force_delete": True}).body == {
        "deployment": "nowhere", "force_delete": True}  # True == 1, but a bool is not an id
    assert call(hooks, "/v1/api/users/deactivate", {"email": "admin"}).body == {"email": "nowhere"}
    # a file in the fuzz workspace may go; the admin may not leave it
    assert call(hooks, "/v1/api/files/delete", {"workspace_id": 2, "path": "/x"}).body == {"workspace_id": 2,
                                                                                          "path": "/x"}
    removed = call(hooks, "/v1/api/workspaces/remove_user", {"workspace_id": 2, "user_id": "x"}).body
    assert removed == {"workspace_id": hooks.NOWHERE_ID, "user_id": "x"}


def test_the_share_of_aimed_requests_is_the_one_asked_and_a_tenth_of_it_where_work_starts(hooks):
    def aimed(route: str, share: float) -> int:
        return sum(call(hooks, route, {"project_id": -n}, share=share).body["project_id"] == 9 for n in range(2000))

    assert 900 < aimed("/v1/api/projects/get", 0.5) < 1100
    assert 60 < aimed("/v1/api/task/run_once", 0.5) < 140  # COSTLY: a tenth of the share
    assert aimed("/v1/api/projects/get", 0) == 0
    first = call(hooks, "/v1/api/datasets/get", {"dataset_id": 123456}).body
    assert call(hooks, "/v1/api/datasets/get", {"dataset_id": 123456}).body == first  # stable: --seed reproduces


def test_only_the_seeded_registrys_unavailable_answer_is_dropped(hooks):
    keep = hooks.registered["filter_failure"]

    def answer(status: int, body: dict):
        return types.SimpleNamespace(status_code=status, json=lambda: body)

    registry = types.SimpleNamespace(operation=types.SimpleNamespace(path="/v1/api/models/list_registry_models"))
    other = types.SimpleNamespace(operation=types.SimpleNamespace(path="/v1/api/models/list"))
    assert keep(None, None, registry, answer(503, {"code": "unavailable"})) is False
    assert keep(None, None, registry, answer(500, {"code": "internal"})) is True
    assert keep(None, None, registry, answer(503, {"code": "internal"})) is True
    assert keep(None, None, other, answer(503, {"code": "unavailable"})) is True
