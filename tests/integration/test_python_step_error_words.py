"""A Python step that raises answers with what its exception says, not only its type: a step refusing its input
(ValueError('row 0: task is not JSON ...')) read "the Python step failed: it raised ValueError", which a client
takes for a failing model. Through the real gateway and engine, the step in its sandboxed worker; the text is the
tenant's own code's, on one line and bounded (services/engine/runtimes.py: users_code_failed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import post
from tests.integration.test_pipelines import _deploy_definition, infer

pytestmark = pytest.mark.integration

NAME = "steperrors"
STEP = b'''
import json
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    rows = []
    for index, task in enumerate(data["task"]):
        if task == "long":
            raise ValueError("line one\\nline two " + "y" * 5000)
        try:
            rows.append({"keys": len(json.loads(task))})
        except json.JSONDecodeError:
            raise ValueError(f"row {index}: 'task' is not JSON: {task[:20]!r}") from None
    return rows
'''


@pytest.fixture
def step(stack, alice):
    response = requests.post(f"{stack.api}/models/upload_stream", files={"file": ("tasks.py", STEP)},
                             data={"name": "tasks", "workspace_id": alice.workspace_id, "framework": "python"},
                             headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    assert response.status_code == 200, response.text
    _, url, pipeline = _deploy_definition(stack, alice, NAME, {"steps": [{"ModelInference": {
        "models": [{"name": "tasks"}]}}]})
    yield url
    post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


def test_a_python_step_that_refuses_its_input_says_why(stack, alice, step):
    assert infer(step, alice.token, [{"task": json.dumps({"a": 1, "b": 2})}]).json()[0]["out"]["keys"] == 2

    refused = infer(step, alice.token, [{"task": "not json"}])
    assert refused.status_code == 400, refused.text
    answer = refused.json()
    assert answer["code"] == "invalid_request"
    assert answer["msg"].startswith("the Python step failed: it raised ValueError: row 0: 'task' is not JSON: "
                                    "'not json'"), answer
    # the stderr excerpt after it is the end of the traceback, from the user's code on: no frame of the platform's
    # that called it (its file, its source line), which docs/security.md promises the user never sees
    excerpt = answer["msg"].split("; its stderr ends with: ")[1]
    assert "in wallaroo_json" in excerpt and excerpt.endswith("ValueError: row 0: 'task' is not JSON: 'not json'")
    assert str(Path(__file__).parents[2]) not in answer["msg"] and "self.entry" not in answer["msg"], answer

    long = infer(step, alice.token, [{"task": "long"}]).json()["msg"]
    said = long.split("; its stderr ends with: ")[0]  # the worker's stderr excerpt follows (docs/security.md)
    assert said == f"the Python step failed: it raised ValueError: line one line two {'y' * 182}... (5018 characters)"
