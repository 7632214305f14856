"""Definite answers first, through the gateway's routes (services/monitoring/reference.py; docs/monitoring.md
get_stats, docs/assays.md Training baseline):

- get_stats with a `model_version` the deployment's workspace does not have is a 404 naming it (the registry's words,
  as set_model answers), not a 200 of 0 predictions; a model the workspace has that served nothing is still 0.
- an assay on pipeline A whose Training baseline names a deployment of pipeline B is a 400 saying so, before the
  deployment's reference is looked at: before, a reference not ready answered 409 (wait for it), and only once it was
  ready did the 400 come."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.models import ccfraud_onnx

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "words")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def served(stack, owner, tmp_path_factory) -> dict:
    """A deployment of pipeline 'words-served' (its model 'words-model'), nothing predicted, no training reference;
    and a pipeline 'words-other' of the same workspace."""
    client = sdk(stack, owner)
    path = tmp_path_factory.mktemp("words") / "model.onnx"
    path.write_bytes(ccfraud_onnx())
    model = client.upload_model("words-model", path, progress=False)
    client.build_pipeline("words-served").add_model_step(model).deploy(replicas=1, cpus=0.5, timeout=180)
    other = post(stack, "pipelines/create", owner.token, {"pipeline_id": "words-other",
                                                          "workspace_id": owner.workspace_id, "definition": {}})
    assert other.status_code == 200, other.text
    pipelines = post(stack, "pipelines/list", owner.token, {"workspace_id": owner.workspace_id}).json()["pipelines"]
    return {"deployment": client.get_deployment("words-served").name, "model": model,
            "pipelines": {p["name"]: p["id"] for p in pipelines}}


def stats(stack, owner, served, service: str, model_version: dict):
    return post(stack, "deployments/get_stats", owner.token, {"deployment": served["deployment"], "service": service,
                                                               "model_version": model_version})


@pytest.mark.parametrize("service", ["PREDICTIONS_DATA", "AGGREGATED_LABEL_DISTRIBUTION",
                                     "REVIEWS_CLASSIFICATION_STATS"])
def test_get_stats_of_a_model_the_workspace_does_not_have_is_a_404_naming_it(stack, owner, served, service):
    for model_version, named in (({"name": "nope"}, "'nope'"),
                                 ({"name": "words-model", "version": (unknown := str(uuid.uuid4()))}, unknown),
                                 ({"name": "words-model", "version": "not-a-sha"}, "'not-a-sha'")):
        response = stats(stack, owner, served, service, model_version)
        assert response.status_code == 404, (model_version, response.text)
        assert response.json()["code"] == "not_found" and named in response.json()["msg"], response.text
    # a model (and a version) the workspace has, that served nothing yet: 0 predictions, as before
    for model_version in ({"name": "words-model"}, {"name": "words-model", "version": served["model"].version}):
        response = stats(stack, owner, served, service, model_version)
        assert response.status_code == 200 and response.json()["predictions"] == 0, response.text


def test_an_assay_on_another_pipeline_s_training_reference_is_a_400_before_the_reference_is_ready(stack, owner,
                                                                                                  served):
    start = (datetime.now(UTC) - timedelta(hours=2)).isoformat()

    def assay(pipeline: str) -> dict:
        return {"name": "brightness vs training", "pipeline_id": served["pipelines"][pipeline],
                "pipeline_name": pipeline, "iopath": "input brightness_mean",
                "baseline": {"Training": {"deployment": served["deployment"]}},
                "window": {"pipeline": pipeline, "width": "1 hour", "start": start},
                "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                               "metric": "PSI", "num_bins": 5}, "alert_threshold": 0.25,
                "workspace_id": owner.workspace_id}

    for route in ("assays/run_interactive_baseline", "assays/run_interactive", "assays/create"):
        response = post(stack, route, owner.token, assay("words-other"))
        assert response.status_code == 400, (route, response.text)
        assert response.json()["msg"] == (f"deployment {served['deployment']!r} serves pipeline 'words-served', not"
                                          " 'words-other': an assay on a training reference belongs to its pipeline")
        # its own pipeline's assay: the reference is what is missing (set_training_data, then wait)
        response = post(stack, route, owner.token, assay("words-served"))
        assert response.status_code == 409 and "no ready training-data reference" in response.json()["msg"], (
            route, response.text)
    assert post(stack, "assays/list", owner.token, {"pipeline_id": served["pipelines"]["words-other"]}).json() == []
