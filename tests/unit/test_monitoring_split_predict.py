"""Seed 003's predict on an A/B split (a `RandomSplit` holding the deployment's models): which arm answered is read
from the engine's `_model_split`, ML-backend arms are looked up side by side and must agree (kind, labels among the
first arm's), a split by `hash_key` is refused, and the task holds the image under every arm's image value. The end
to end path (the engine's split choosing, the row recorded under that arm) is tests/integration/
test_ml_backend_splits.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from services.monitoring import handlers, ml_backend_predictions, predictions
from shared.errors import Conflict
from shared.messages.monitoring import ModelVersionRef
from tests.image_models import detector_image_config

A = ModelVersionRef(name="found", version="v1", sha="a" * 64)
B = ModelVersionRef(name="spotted", version="v2", sha="b" * 64)
FOUND = ml_backend_predictions.BackendLabeling(control="found", kind="detection", labels=["Blue", "Red"],
                                               value="image")
SPOTTED = ml_backend_predictions.BackendLabeling(control="spotted", kind="detection", labels=["Red"], value="picture")


def split_view(*arms: ModelVersionRef, **body: Any) -> Any:
    step = {"RandomSplit": {"weights": [1] * len(arms), "models": [arm.model_dump() for arm in arms], **body}}
    return SimpleNamespace(route=SimpleNamespace(workspace_id=7, name="ab-1"), definition={"steps": [step]})


def backends(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any]) -> None:
    async def labeling(deps, token, workspace_id, model):
        return answers[model.name]
    monkeypatch.setattr(ml_backend_predictions, "labeling", labeling)


def test_the_arm_that_answered_is_the_one_model_split_names():
    arm = json.dumps({"name": "spotted", "version": "v2", "sha": "b" * 64})
    answer = pa.table({"prediction": ["{}"], "_model_split": pa.array([[arm]], pa.list_(pa.string()))})
    assert predictions._split_answered(answer) == B.model_dump()
    assert predictions._split_answered(pa.table({"prediction": ["{}"]})) is None  # no split
    garbled = pa.table({"_model_split": pa.array([["not json"]], pa.list_(pa.string()))})
    assert predictions._split_answered(garbled) is None
    # the column is the engine's naming, not one of the model's outputs
    assert set(predictions._row_outputs(answer.append_column("scores", pa.array([[0.5]])), None)) == {
        "prediction", "scores"}


def test_a_split_holds_the_models_and_its_image_configuration():
    view = split_view(A, B, image=detector_image_config())
    assert handlers.split_arms(view.definition) == [A, B]
    assert predictions.image_config(view.definition).input == "image"
    # a ShadowDeploy or ModelInference step holds the models when there is one: no split then
    both = {"steps": [{"ModelInference": {"models": [A.model_dump()]}}, *view.definition["steps"]]}
    assert handlers.split_arms(both) is None and predictions.image_config(both) is None


def test_a_split_by_hash_key_is_refused_saying_why():
    with pytest.raises(Conflict, match="'camera' column, which an image has not"):
        predictions._check_split(split_view(A, B, hash_key="camera"))
    predictions._check_split(split_view(A, B))  # by weight: fine


def test_ml_backend_arms_are_looked_up_and_must_agree(monkeypatch: pytest.MonkeyPatch):
    backends(monkeypatch, {"found": FOUND, "spotted": SPOTTED})
    first, arms = asyncio.run(predictions._split_backends(None, "t", split_view(A, B), [A, B]))
    assert first == FOUND and arms == [(A, FOUND), (B, SPOTTED)]
    # the spotted arm's answer is read with its own control, as the first arm's class ids
    image = SimpleNamespace(backend=FOUND, arms=arms)
    reading = asyncio.run(predictions._arm_labeling(None, "t", split_view(A, B), image, B.model_dump()))
    assert (reading.control, reading.labels) == ("spotted", ["Blue", "Red"])

    backends(monkeypatch, {"found": None, "spotted": None})  # no ML backends: the image configuration's path
    assert asyncio.run(predictions._split_backends(None, "t", split_view(A, B), [A, B])) == (None, [])
    backends(monkeypatch, {"found": FOUND, "spotted": None})
    with pytest.raises(Conflict, match="'spotted', which is not one"):
        asyncio.run(predictions._split_backends(None, "t", split_view(A, B), [A, B]))
    backends(monkeypatch, {"found": SPOTTED, "spotted": FOUND})  # "Blue" is not among the first arm's labels
    with pytest.raises(Conflict, match="answer differently"):
        asyncio.run(predictions._split_backends(None, "t", split_view(A, B), [A, B]))
    backends(monkeypatch, {"found": FOUND, "spotted": SPOTTED.__class__(control="c", kind="classification",
                                                                       labels=["Red"], value="image")})
    with pytest.raises(Conflict, match="answer differently"):
        asyncio.run(predictions._split_backends(None, "t", split_view(A, B), [A, B]))


def test_the_task_holds_the_image_under_every_arms_value():
    task = json.loads(ml_backend_predictions.task_json(FOUND, b"\x89PNG", "image/png", SPOTTED, FOUND))
    assert set(task["data"]) == {"image", "picture"}
    assert task["data"]["image"] == task["data"]["picture"] == "data:image/png;base64,iVBORw=="
