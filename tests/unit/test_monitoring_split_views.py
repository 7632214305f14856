"""A deployment whose models sit in an A/B split (a `RandomSplit`, no model step), as seed 003's deployment methods
see it: retrieve_information / get_model_version list the arms with their weights and name the first arm as the
model version; monitor records the arm the caller names (or none), refusing one the split does not hold; set_model /
set_shadow_model refuse with a message saying why and what to deploy instead. The end to end path is
tests/integration/test_ml_backend_splits.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from services.monitoring import handlers, monitored_model
from shared.errors import Conflict, InvalidRequest
from shared.messages.monitoring import ModelVersionRef
from shared.messages.registry import ResolvedModel

A = {"name": "found", "version": "v1", "sha": "a" * 64}
A2 = {"name": "found", "version": "v2", "sha": "c" * 64}
B = {"name": "spotted", "version": "v3", "sha": "b" * 64}
PLAIN = {"steps": [{"ModelInference": {"models": [A]}}]}


def split(*models: dict[str, Any], weights: list[float] | None = None, **body: Any) -> dict[str, Any]:
    return {"steps": [{"RandomSplit": {"weights": weights or [1] * len(models), "models": list(models), **body}}]}


def view(definition: dict[str, Any]) -> Any:
    route = SimpleNamespace(name="ab-4", pipeline_name="ab", workspace_id=7)
    return SimpleNamespace(route=route, deploy_id="ab", definition=definition)


def test_a_splits_views_list_every_arm_with_its_weight_and_name_the_first_as_the_model_version():
    shown = handlers.model_split(split(A, B, weights=[3, 1]))
    assert [(arm.name, arm.version, arm.sha, arm.weight, arm.share) for arm in shown.arms] == [
        ("found", "v1", "a" * 64, 3, 0.75), ("spotted", "v3", "b" * 64, 1, 0.25)]
    assert shown.hash_key is None
    assert handlers.model_split(split(A, B, hash_key="user")).hash_key == "user"
    assert handlers._served_model(split(A, B)) == ModelVersionRef(**A)
    # a model step is the model version as before, and a later step's split is not the deployment's
    assert handlers.model_split(PLAIN) is None and handlers._served_model(PLAIN) == ModelVersionRef(**A)
    later = {"steps": [*PLAIN["steps"], *split(A, B)["steps"]]}
    assert handlers.model_split(later) is None and handlers._served_model(later) == ModelVersionRef(**A)
    assert handlers._served_model({"steps": []}) is None


def test_each_arm_keeps_its_own_weight_when_an_empty_model_entry_is_left_out():
    """The weights were zipped with the arms after empty model entries were filtered: [a, None, c] with [1, 1, 8]
    showed c with weight 1 (the empty entry's) and a share of 0."""
    shown = handlers.model_split(split(A, None, B, weights=[1, 1, 8]))
    assert [(arm.name, arm.weight, arm.share) for arm in shown.arms] == [("found", 1, 0.1), ("spotted", 8, 0.8)]
    shown = handlers.model_split(split(None, B, {}, A, weights=[5, 2, 3, 10]))
    assert [(arm.name, arm.weight, arm.share) for arm in shown.arms] == [("spotted", 2, 0.1), ("found", 10, 0.5)]


@pytest.mark.parametrize("shadow, verb, instead", [
    (False, "set_model replaces one model", ".add_random_split(weights, models).deploy(deploy_id='ab')"),
    (True, "set_shadow_model adds a challenger", ".add_shadow_deploy(champion, [challenger]).deploy(deploy_id='ab')")])
def test_set_model_on_a_split_says_why_and_what_to_deploy_instead(shadow, verb, instead):
    with pytest.raises(Conflict) as refused:
        handlers._refuse_split(view(split(A, B, weights=[3, 1])), shadow)
    message = str(refused.value)
    assert "'found' (weight 3), 'spotted' (weight 1) (an A/B split, RandomSplit)" in message
    assert verb in message and f"client.pipeline('ab').clear(){instead}" in message
    handlers._refuse_split(view(PLAIN), shadow)  # a model step is set as before


def test_monitor_on_a_split_records_the_arm_named_or_none():
    definition = split(A, B)
    assert monitored_model.matching_model(definition, "ab-4", None) is None
    for wanted in ({"name": "spotted"}, {"name": "spotted", "version": "v3"}, {"name": "spotted", "sha": "b" * 64}):
        assert monitored_model.matching_model(definition, "ab-4", ModelVersionRef(**wanted)) == ModelVersionRef(**B)
    # one model's two versions in the split: a name alone is ambiguous, its version says which
    both = split(A, A2)
    with pytest.raises(InvalidRequest, match="names 2 arms .* give its version or sha too"):
        monitored_model.matching_model(both, "ab-4", ModelVersionRef(name="found"))
    assert monitored_model.matching_model(both, "ab-4", ModelVersionRef(name="found", version="v2")) == \
        ModelVersionRef(**A2)


@pytest.mark.parametrize("wanted", [{"name": "other"}, {"name": "spotted", "version": "v9"},
                                    {"name": "found", "sha": "f" * 64}])
def test_monitor_refuses_a_model_version_the_split_does_not_hold(wanted):
    with pytest.raises(InvalidRequest) as refused:
        monitored_model.matching_model(split(A, B), "ab-4", ModelVersionRef(**wanted))
    assert refused.value.status == 400 and refused.value.code == "invalid_request"
    assert "is not an arm of deployment 'ab-4''s A/B split: give one of 'found' version v1, 'spotted' version v3, " \
           "or leave it out" in str(refused.value)


def test_monitor_on_one_model_records_it_whatever_model_version_says_as_the_seed_does():
    for wanted in (None, ModelVersionRef(name="found"), ModelVersionRef(name="spotted", version="old")):
        assert monitored_model.matching_model(PLAIN, "p-1", wanted) == ModelVersionRef(**A)
    assert monitored_model.matching_model({"steps": []}, "p-1", ModelVersionRef(name="found")) is None


def test_an_arm_named_by_its_model_alone_is_recorded_as_the_version_the_registry_resolves(monkeypatch):
    asked = []

    async def resolve(broker, subject, cmd, **kwargs):
        asked.append((cmd.workspace_id, cmd.name, cmd.version))
        return ResolvedModel(model_id=1, name=cmd.name, model_version="v7", sha="d" * 64, runtime="onnx",
                             framework="onnx")
    monkeypatch.setattr(monitored_model, "request", resolve)
    deps = SimpleNamespace(broker=None, timeout=1.0)
    unpinned = view(split({"name": "found"}, B))
    recorded = asyncio.run(monitored_model.monitored_model(deps, None, unpinned, ModelVersionRef(name="found",
                                                                                                version="v7")))
    assert recorded == ModelVersionRef(name="found", version="v7", sha="d" * 64) and asked == [(7, "found", "v7")]
    # a pinned arm needs no registry
    assert asyncio.run(monitored_model.monitored_model(deps, None, view(split(A, B)), ModelVersionRef(
        name="found"))) == ModelVersionRef(**A) and len(asked) == 1



def test_a_monitored_prediction_on_a_split_of_backends_is_checked_against_the_first_arms_labels(monkeypatch):
    from services.monitoring import ml_backend_predictions, predictions

    looked_up = []

    async def labeling(deps, token, workspace_id, model):
        looked_up.append(model.name)
        return ml_backend_predictions.BackendLabeling(control="found", kind="detection", labels=["Blue", "Red"],
                                                      value="image")
    monkeypatch.setattr(ml_backend_predictions, "labeling", labeling)
    labels = asyncio.run(predictions.model_labels(SimpleNamespace(), None, view(split(A, B))))
    assert labels == (["Blue", "Red"], "detection") and looked_up == ["found"]
