"""A tenant naming another workspace's things from inside its own workspace.

test_isolation.py and the per-area isolation tests send an outsider's token at routes that take the victim's
workspace or resource. Here bob stays in his own workspace, on his own deployment, pipeline and project, and points
them at alice's things by id or name: her model version as his deployment's model, her dataset as his datalake,
feedback loop, training data or benchmark set, her deployment in his benchmark or assay, her project version as the
one his project restores, her orchestration as his task. Each is refused exactly as if the thing did not exist (404
not_found), and nothing of his or hers changes. (Found holding on a live stack in session 27's adversarial audit;
these keep it so.)"""

from __future__ import annotations

import pytest

from tests.integration.conftest import post, undeploy_all
from tests.integration.test_lineage import make_project, ok
from tests.integration.test_orchestrations import make_zip, upload
from tests.integration.test_pipelines import _deploy_definition, infer, upload_model

pytestmark = pytest.mark.integration

SUMMARIZER = {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density", "metric": "PSI",
              "num_bins": 2, "add_outlier_edges": True}


def test_pointing_at_another_workspaces_things_is_not_found_and_changes_nothing(stack, alice, bob):
    version = upload_model(stack, alice, "alicemodel")
    upload_model(stack, bob, "bobmodel")
    models = {"ModelInference": {"models": [{"name": "alicemodel"}]}}
    alice_deployment, alice_url, _ = _deploy_definition(stack, alice, "alicepipe", {"steps": [models]})
    bob_deployment, bob_url, bob_pipeline = _deploy_definition(
        stack, bob, "bobpipe", {"steps": [{"ModelInference": {"models": [{"name": "bobmodel"}]}}]})
    theirs, mine = make_project(stack, alice), make_project(stack, bob)
    alice_version = ok(post(stack, "projects/create_version", alice.token, {"project_id": theirs["project"]["id"]}))
    orch = upload(stack, alice, make_zip({"main.py": "print('alice')\n"}))
    assert orch.status_code == 200, orch.text
    try:
        alice_ref = {"name": version["model_id"], "version": version["model_version"], "sha": version["sha"]}
        images, table = theirs["images"]["id"], theirs["table"]["id"]
        before = {
            "bob": post(stack, "deployments/retrieve_information", bob.token, {"deployment": bob_deployment}).json(),
            "alice_files": ok(post(stack, "datasets/list_files", alice.token, {"dataset_id": images})),
            "bob_project": ok(post(stack, "projects/get", bob.token, {"project_id": mine["project"]["id"]})),
        }
        attempts = {
            "deployments/set_model": {"deployment": bob_deployment, "model_version": alice_ref},
            "deployments/set_shadow_model": {"deployment": bob_deployment, "model_version": alice_ref},
            "deployments/update": {"deployment": bob_deployment, "target_datalake": str(images)},
            "deployments/setup_feedback_loop": {"deployment": bob_deployment,
                                                "dataset_version": {"dataset_id": images}},
            "deployments/set_training_data": {"deployment": bob_deployment, "dataset_version": {"dataset_id": table}},
            "benchmarks/run_classification": {
                "workspace_id": bob.workspace_id, "name": "stolen", "dataset_id": table, "label_column": "y",
                "output_column": "dense_1", "deployments": [bob_deployment]},
            "projects/restore_version": {"project_id": mine["project"]["id"], "version_id": alice_version["id"]},
            "task/run_once": {"workspace_id": bob.workspace_id, "orch_id": orch.json()["id"], "json": {}},
            "task/run_scheduled": {"workspace_id": bob.workspace_id, "orch_id": orch.json()["id"], "json": {},
                                   "schedule": "0 0 * * *"},
        }
        # her deployment inside his benchmark (his own data) and as his assay's training reference
        benchmark_on_hers = {"workspace_id": bob.workspace_id, "name": "borrowed", "dataset_id": mine["table"]["id"],
                             "label_column": "y", "output_column": "dense_1", "deployments": [alice_deployment]}
        assay_on_hers = {"name": "borrowed", "pipeline_id": bob_pipeline["pipeline_pk_id"], "pipeline_name": "bobpipe",
                         "iopath": "input tensor 0", "baseline": {"Training": {"deployment": alice_deployment}},
                         "window": {"pipeline": "bobpipe", "width": "1 minute"}, "summarizer": SUMMARIZER,
                         "alert_threshold": 0.1, "workspace_id": bob.workspace_id}
        for path, body in [*attempts.items(), ("benchmarks/run_classification", benchmark_on_hers),
                           ("assays/create", assay_on_hers),
                           ("benchmarks/run_classification", {**attempts["benchmarks/run_classification"],
                                                              "dataset_id": None, "version_id": alice_version["id"],
                                                              "dataset_name": "meta"})]:
            answer = post(stack, path, bob.token, body)
            assert answer.status_code == 404 and answer.json()["code"] == "not_found", (path, answer.text)
        # a definition naming her model names a model his workspace does not have: pipelines/create looks it up in
        # his workspace only, and answers as for a model that does not exist (nothing of hers told), creating nothing
        stolen = post(stack, "pipelines/create", bob.token, {"pipeline_id": "stolen", "workspace_id": bob.workspace_id,
                                                             "definition": {"steps": [{"ModelInference": {
                                                                 "models": [alice_ref]}}]}})
        assert stolen.status_code == 400 and stolen.json()["code"] == "invalid_request", stolen.text
        assert (f"definition.steps[0].ModelInference: model {alice_ref['name']!r} (version {alice_ref['version']}) "
                "not found in the workspace") in stolen.json()["msg"], stolen.text
        assert "stolen" not in [p["name"] for p in post(stack, "pipelines/list", bob.token,
                                                        {"workspace_id": bob.workspace_id}).json()["pipelines"]]

        after = post(stack, "deployments/retrieve_information", bob.token, {"deployment": bob_deployment}).json()
        assert after == before["bob"]
        assert after["model_version"]["name"] == "bobmodel" and after["target_datalake"] is None
        assert ok(post(stack, "datasets/list_files", alice.token, {"dataset_id": images})) == before["alice_files"]
        assert ok(post(stack, "projects/get", bob.token, {"project_id": mine["project"]["id"]})) == \
            before["bob_project"]
        assert post(stack, "task/list", bob.token, {"workspace_id": bob.workspace_id}).json() == []
        assert post(stack, "benchmarks/list", bob.token, {"workspace_id": bob.workspace_id}).json()["reports"] == []
        assert infer(bob_url, bob.token, [{"tensor": [0.1] * 29}]).status_code == 200
        assert infer(alice_url, alice.token, [{"tensor": [0.1] * 29}]).status_code == 200
    finally:
        undeploy_all(stack, alice)
        undeploy_all(stack, bob)
