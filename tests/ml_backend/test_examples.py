"""The examples in examples/ml_backend, trained through webhooks and queried through the real server."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import sys
from pathlib import Path

import httpx
import pytest
from railyard_ml import init_app

from tests.ml_backend.conftest import REPO, TEXT_CONFIG, annotation_event, serve, versions, wait_until

sys.path.insert(0, str(REPO / "examples" / "ml_backend" / "text_classifier"))
sys.path.insert(0, str(REPO / "examples" / "ml_backend" / "image_classifier"))

from image_classifier import ImageClassifier  # noqa: E402
from text_classifier import TextClassifier  # noqa: E402

TEXTS = [("what a great and wonderful day", "Positive"), ("I love this, it is excellent", "Positive"),
         ("great work, wonderful result", "Positive"), ("this is terrible and awful", "Negative"),
         ("I hate it, a horrible mess", "Negative"), ("awful service, terrible food", "Negative")]

GOING = ("running", "queued")  # a run not ended yet, as /versions lists it


def test_text_classifier_learns_from_annotations(model_dir):
    with serve(init_app(TextClassifier, model_dir=model_dir)) as url:
        project = "3.1764547200"
        assert httpx.post(f"{url}/setup", json={"project": project, "schema": TEXT_CONFIG}).json() == {
            "model_version": "0.0.1"}
        cold = httpx.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": {"text": "great"}}],
                                                  "project": project, "label_config": TEXT_CONFIG}).json()
        assert cold["results"][0]["score"] == pytest.approx(0.5)  # knows the label names only

        for task_id, (text, label) in enumerate(TEXTS, start=1):
            answer = httpx.post(f"{url}/webhook", json=annotation_event(task_id, text, label, project=3))
            assert answer.status_code == 201
        listed = wait_until(lambda: (lambda v: v if v["runs"] and all(r["status"] not in GOING for r in v["runs"])
                                     and v["current_version"] != "0.0.1" else None)(versions(url, 3)), timeout=60)
        assert {run["status"] for run in listed["runs"]} <= {"ok", "skipped"}  # one label alone teaches nothing

        tasks = [{"id": 10, "data": {"text": "wonderful, great and excellent"}},
                 {"id": 11, "data": {"text": "terrible, awful and horrible"}}]
        body = httpx.post(f"{url}/predict", json={"tasks": tasks, "project": project,
                                                  "label_config": TEXT_CONFIG}).json()
        assert [r["result"][0]["value"]["choices"][0] for r in body["results"]] == ["Positive", "Negative"]
        assert all(r["score"] > 0.5 and r["model_version"] == listed["current_version"] for r in body["results"])

    from railyard_ml.store import Store

    output = json.loads(Store(model_dir).get("3", "train_output"))  # what the last fit returned, kept on disk
    assert Path(output["model_file"]).exists() and sorted(output["labels"]) == ["Negative", "Positive"]


def test_text_classifier_refuses_a_task_without_text_with_a_400_naming_the_field(model_dir):
    """A task whose data has no `text` (the config's <Text value="$text">) is the request's fault: 400
    `invalid_request` saying which task and which field, not the 500 model_error it was (scikit-learn's
    "AttributeError: 'NoneType' object has no attribute 'lower'"). A good task still gets its prediction."""
    with serve(init_app(TextClassifier, model_dir=model_dir)) as url:
        project = "4.1764547200"
        cases = [({"id": 7, "data": {"body": "great"}}, "task 1 (id 7) has no text to classify: it needs data.text "
                  "as a string (the labeling config's <Text value=\"$text\">); its data has 'body'"),
                 ({"id": 8, "data": {"text": 5}}, "task 1 (id 8) has no text to classify: it needs data.text as a "
                  "string (the labeling config's <Text value=\"$text\">); data.text is int")]
        for task, said in cases:
            answer = httpx.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": {"text": "fine"}}, task],
                                                        "project": project, "label_config": TEXT_CONFIG})
            assert answer.status_code == 400, answer.text
            assert answer.json() == {"code": "invalid_request", "msg": said}
        good = httpx.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": {"text": "great"}}],
                                                  "project": project, "label_config": TEXT_CONFIG})
        assert good.status_code == 200 and len(good.json()["results"]) == 1, good.text


IMAGE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="colour" toName="image"><Choice value="Red"/><Choice value="Blue"/></Choices>
</View>"""


def image(colour: str, seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    base = (200, 40, 40) if colour == "Red" else (40, 40, 200)
    picture = Image.new("RGB", (24, 24))
    picture.putdata([tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in base) for _ in range(24 * 24)])
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_classifier_learns_from_annotations(model_dir, tmp_path):
    tasks = []
    for i, colour in enumerate(["Red", "Blue"] * 4, start=1):
        path = tmp_path / f"{i}.png"
        path.write_bytes(image(colour, i))
        tasks.append(({"id": i, "data": {"image": str(path)}, "project": 5}, colour))
    with serve(init_app(ImageClassifier, model_dir=model_dir)) as url:
        first = httpx.post(f"{url}/predict", json={"tasks": [t for t, _ in tasks[:2]], "project": "5.1",
                                                   "label_config": IMAGE_CONFIG}).json()
        assert first["results"] == [{"result": [], "score": 0.0, "model_version": "image-classifier-0.0.1"}] * 2

        for task, colour in tasks:
            event = annotation_event(task["id"], "", colour, project=5)
            event["project"]["label_config"] = IMAGE_CONFIG
            event["task"] = task
            event["annotation"]["result"][0].update(from_name="colour", to_name="image")
            assert httpx.post(f"{url}/webhook", json=event).status_code == 201
        wait_until(lambda: versions(url, 5)["current_version"] != "image-classifier-0.0.1"
                   and all(r["status"] not in GOING for r in versions(url, 5)["runs"]), timeout=60)

        fresh = [{"id": 20, "data": {"image": "file://" + str(_write(tmp_path / "r.png", image("Red", 99)))}},
                 {"id": 21, "data": {"image": "data:image/png;base64," + base64.b64encode(image("Blue", 98)).decode()}}]
        body = httpx.post(f"{url}/predict", json={"tasks": fresh, "project": "5.1", "label_config": IMAGE_CONFIG})
        assert body.status_code == 200, body.text
        results = body.json()["results"]
        assert [r["result"][0]["value"]["choices"] for r in results] == [["Red"], ["Blue"]]
        assert all(r["result"][0]["from_name"] == "colour" and r["score"] > 0.5 for r in results)
        assert os.path.exists(model_dir / "downloads")  # the data: URI was materialised once


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path
