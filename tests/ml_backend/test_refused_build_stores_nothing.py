"""A request whose model cannot be built stores nothing for its project (docs/ml-backend.md: bad requests "change
nothing; the model is not even built").

Until session 35 (walk) the constructor's writes went straight to the model directory's file: a /predict refused
400 label_config_required for project 2 left project 2's first version in the cache, and a /setup whose config the
model refused (500 model_error) left that config and a version, so GET /versions listed projects that never served
a prediction and a later /predict without a config was built from the refused one.
"""

from __future__ import annotations

import time

import httpx
from railyard_ml import LabelStudioMLBase, init_app

from tests.ml_backend.conftest import TEXT_CONFIG, annotation_event, serve, versions, wait_until
from tests.ml_backend.ls1_style_backend import MajorityModel


class OneChoices(LabelStudioMLBase):
    """As the seed's text classifier: the config must have exactly one <Choices>."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        choices = [name for name, info in self.parsed_label_config.items() if info["type"] == "Choices"]
        assert len(choices) == 1, "the config must have exactly one <Choices>"

    def predict(self, tasks, **kwargs):
        return [{"result": []} for _ in tasks]


def projects(url: str) -> dict:
    answer = httpx.get(f"{url}/versions", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["projects"]


def test_a_refused_build_stores_nothing_and_a_built_one_keeps_its_config(model_dir):
    with serve(init_app(MajorityModel, model_dir=model_dir / "ls1")) as url:
        answer = httpx.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": {"text": "x"}}], "project": "2.1"},
                            timeout=30)
        assert answer.status_code == 400 and answer.json()["code"] == "label_config_required", answer.text
        assert projects(url) == {}
    with serve(init_app(OneChoices, model_dir=model_dir / "one")) as url:
        answer = httpx.post(f"{url}/setup", json={"project": "3.1", "schema": "<View/>"}, timeout=30)
        assert answer.status_code == 500 and answer.json()["code"] == "model_error", answer.text
        assert projects(url) == {}
        # built: its config and first version are kept, and a /predict without a config is built from them
        answer = httpx.post(f"{url}/setup", json={"project": "3.1", "schema": TEXT_CONFIG}, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"model_version": "0.0.1"}, answer.text
        assert projects(url) == {"3": {"versions": ["0.0.1"], "current_version": "0.0.1"}}
    with serve(init_app(OneChoices, model_dir=model_dir / "one")) as url:  # a new process: read from the file
        answer = httpx.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": {"text": "x"}}], "project": "3.1"},
                            timeout=30)
        assert answer.status_code == 200, answer.text


def test_an_annotation_webhook_whose_task_or_annotation_is_no_object_is_refused_and_trains_nothing(model_dir):
    """Until session 35 such a webhook was acknowledged 201: its task and annotation were skipped, and the training
    run it queued fitted the same annotations again, moving the version on."""
    with serve(init_app(MajorityModel, model_dir=model_dir)) as url:
        good = annotation_event(1, "good film", "Positive")
        assert httpx.post(f"{url}/webhook", json=good, timeout=30).status_code == 201
        wait_until(lambda: versions(url)["runs"] and all(r["status"] not in ("queued", "running")
                                                         for r in versions(url)["runs"]))
        before = versions(url)
        for body in ({**good, "task": "not a task"}, {**good, "annotation": 5},
                     {**good, "annotation": [good["annotation"], 7]}):
            answer = httpx.post(f"{url}/webhook", json=body, timeout=30)
            assert answer.status_code == 400 and answer.json()["code"] == "invalid_request", answer.text
            assert "must be an object" in answer.json()["msg"], answer.text
        time.sleep(0.3)
        assert versions(url) == before
