"""`railyard-ml deploy railyard`: a Label Studio backend trained where it runs, deployed to the real stack as a
bring-your-own-predict pipeline; Railyard then serves the same predictions and logs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import PASSWORD

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "railyard-ml")

pytestmark = pytest.mark.integration

TEXTS = [("what a great and wonderful day", "Positive"), ("I love this, it is excellent", "Positive"),
         ("great work, wonderful result", "Positive"), ("this is terrible and awful", "Negative"),
         ("I hate it, a horrible mess", "Negative"), ("awful service, terrible food", "Negative")]
QUESTIONS = ["a wonderful and excellent result", "terrible, horrible food"]


def test_a_trained_backend_deploys_to_railyard_and_serves_the_same_predictions(stack, alice, tmp_path):
    from railyard_client import Client
    from railyard_ml.cli import app_for

    from tests.ml_backend.conftest import TEXT_CONFIG, annotation_event, serve, versions, wait_until

    folder = tmp_path / "sentiment_backend"
    script = REPO / "examples" / "ml_backend" / "text_classifier" / "text_classifier.py"
    assert subprocess.run([CLI, "init", str(folder), "--script", str(script)], timeout=120).returncode == 0
    with serve(app_for(folder, model_dir=folder / "models")) as url:  # train where the backend runs
        for task_id, (text, label) in enumerate(TEXTS, start=1):
            assert httpx.post(f"{url}/webhook", json=annotation_event(task_id, text, label)).status_code == 201
        wait_until(lambda: versions(url)["current_version"] != "0.0.1"
                   and all(run["status"] not in ("running", "queued") for run in versions(url)["runs"]),
                   timeout=120)  # queued: a webhook's run not started yet (3e6cc3e), it would train another version
        trained = versions(url)["current_version"]
        local = httpx.post(f"{url}/predict", json={
            "tasks": [{"id": i, "data": {"text": q}} for i, q in enumerate(QUESTIONS)], "project": "1.1",
            "label_config": TEXT_CONFIG}).json()["results"]

    secrets = stack.secrets()
    deployed = subprocess.run(
        [CLI, "deploy", "railyard", str(folder), "--pipeline", "sentiment", "--url", stack.base_url,
         "--username", alice.email, "--password", PASSWORD, "--client-id", secrets["client_id"],
         "--client-secret", secrets["client_secret"], "--workspace", str(alice.workspace_id)],
        capture_output=True, text=True, timeout=600)
    assert deployed.returncode == 0, deployed.stderr
    assert f"model version {trained}" in deployed.stdout and "pipeline sentiment" in deployed.stdout

    client = Client(stack.base_url, username=alice.email, password=PASSWORD, client_id=secrets["client_id"],
                    client_secret=secrets["client_secret"], workspace=alice.workspace_id)
    pipeline = client.pipeline("sentiment")
    rows = [json.dumps({"data": {"text": QUESTIONS[0]}}), json.dumps({"text": QUESTIONS[1]})]  # a task, or its data
    answer = pipeline.infer(pd.DataFrame({"task": rows}))
    served = [json.loads(p) for p in answer["out.prediction"]]
    assert [p["result"] for p in served] == [p["result"] for p in local]
    assert [p["result"][0]["value"]["choices"] for p in served] == [["Positive"], ["Negative"]]
    assert list(answer["out.model_version"]) == [trained, trained]
    assert list(answer["out.score"]) == pytest.approx([p["score"] for p in local])

    # logged like any other inference (read as Arrow: the client's DataFrame path needs time zone data)
    logged = wait_until(lambda: (lambda table: table if table.num_rows >= 2 else None)(
        pipeline.logs(limit=10, arrow=True)), timeout=60)
    assert set(logged.column("out.model_version").to_pylist()) == {trained}
    assert [json.loads(p)["result"] for p in logged.column("out.prediction").to_pylist()] == [
        p["result"] for p in served]
