"""Drives a real Label Studio through label-studio-sdk (run with the Label Studio venv's python, not ours).

    driver.py <label studio url> <api token> <backend url> <basic auth user> <basic auth pass>

Creates a text-classification project with tasks, connects the ML backend, asks Label Studio to retrieve
predictions for every task (the data manager's "Retrieve Predictions" action), annotates, asks for training,
retrieves again, and prints one JSON document of what Label Studio saw; the pytest side checks it.
"""

import base64
import json
import sys
import time
import uuid

from label_studio_sdk import LabelStudio

CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="Positive"/>
    <Choice value="Negative"/>
  </Choices>
</View>"""

TEXTS = {
    "what a great and wonderful day": "Positive",
    "I love this, it is excellent": "Positive",
    "great work, wonderful result": "Positive",
    "this is terrible and awful": "Negative",
    "I hate it, a horrible mess": "Negative",
    "awful service, terrible food": "Negative",
}


def predictions_by_task(client, task_ids):
    seen = {}
    for task_id in task_ids:
        task = client.tasks.get(id=task_id)
        seen[task_id] = [{"model_version": p.model_version, "score": p.score, "result": p.result}
                         for p in (task.predictions or [])]
    return seen


def retrieve_predictions(client, project_id):
    client.actions.create(id="retrieve_tasks_predictions", project=project_id,
                          selected_items={"all": True, "excluded": []})


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    return condition()


def main():
    url, token, backend_url, auth_user, auth_pass = sys.argv[1:6]
    client = LabelStudio(base_url=url, api_key=token)
    out = {}
    project = client.projects.create(title=f"railyard-ml {uuid.uuid4().hex[:6]}", label_config=CONFIG)
    out["project_id"] = project.id
    client.projects.import_tasks(id=project.id, request=[{"text": text} for text in TEXTS])
    tasks = list(client.tasks.list(project=project.id, fields="all"))
    task_ids = sorted(task.id for task in tasks)
    texts = {task.id: task.data["text"] for task in tasks}
    out["task_ids"] = task_ids

    backend = client.ml.create(project=project.id, url=backend_url, title="railyard-ml", auth_method="BASIC_AUTH",
                               basic_auth_user=auth_user, basic_auth_pass=auth_pass)
    # Label Studio's webhook to the backend carries no basic auth of its own: give it the header (the webhook
    # settings in the UI do the same), otherwise the backend refuses annotation events with 401
    auth = "Basic " + base64.b64encode(f"{auth_user}:{auth_pass}".encode()).decode()
    hooks = [hook for hook in client.webhooks.list(project=str(project.id)) if hook.url == backend_url + "/webhook"]
    out["webhooks"] = len(hooks)
    for hook in hooks:
        client.webhooks.update(id=hook.id, headers={"Authorization": auth})
    out["backend_state"] = client.ml.get(id=backend.id).state
    out["backend_model_version"] = client.ml.get(id=backend.id).model_version

    retrieve_predictions(client, project.id)
    out["predictions_before"] = predictions_by_task(client, task_ids)

    # annotate every task: each annotation fires ANNOTATION_CREATED at the backend's /webhook
    for task_id in task_ids:
        client.annotations.create(id=task_id, result=[{
            "from_name": "sentiment", "to_name": "text", "type": "choices",
            "value": {"choices": [TEXTS[texts[task_id]]]}}])
    out["labels"] = {task_id: TEXTS[texts[task_id]] for task_id in task_ids}

    def versions_past(count):
        return lambda: (lambda v: v if len(v) > count else None)(
            client.ml.list_model_versions(id=backend.id).versions or [])

    # each annotation's webhook started a fit in the background; wait for the versions they made
    out["versions_after_annotations"] = wait_for(versions_past(1))
    time.sleep(2)  # let the runs the last annotations started finish
    out["versions_after_annotations"] = client.ml.list_model_versions(id=backend.id).versions
    # "Start training" in the UI: Label Studio 1.23 sends START_TRAINING to /webhook
    client.ml.train(id=backend.id)
    out["versions_after_training"] = wait_for(versions_past(len(out["versions_after_annotations"])))
    retrieve_predictions(client, project.id)
    out["backend_model_version_after"] = client.ml.get(id=backend.id).model_version
    out["predictions_after"] = predictions_by_task(client, task_ids)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
