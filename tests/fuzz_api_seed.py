"""Real things for `make fuzz-api` to aim at (tests/fuzz_api.py; docs/testing.md).

Generated ids name nothing, so nearly every generated request stopped at a 404 before reaching a handler. `seed`
creates one of each thing the API names, in the fuzz workspace, through the Python SDK as the stack's admin (the
fuzzer's identity): a model, a deployed pipeline with a logged inference and a monitored prediction, an
orchestration and a task of it, a project with a version and two datasets, a benchmark report, an assay, a
connection, a registry, an inference client. It returns their ids and names as plain JSON, which
tests/fuzz_api_hooks.py (loaded into schemathesis's own environment) substitutes into a share of the generated
requests.
"""

from __future__ import annotations

import base64
import io
import zipfile
from typing import Any

import pandas as pd
import pyarrow as pa

from shared.arrow_codec import tensor_array
from shared.client import RailyardClient
from tests.image_models import squares_png
from tests.models import ccfraud_onnx, sample_rows

ORCHESTRATION_MAIN = "print('fuzz seed task')\n"


def _zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def seed(stack, admin: RailyardClient, workspace_id: int) -> dict[str, Any]:
    """Create the fuzz workspace's things as the admin; their ids and names, by the field names requests use."""
    from railyard_client import Client, Lineage, Orchestrations

    secrets = stack.secrets()
    sdk = Client(stack.base_url, username=secrets["admin_username"], password=secrets["admin_password"],
                 client_id=secrets["client_id"], client_secret=secrets["client_secret"], workspace=workspace_id)
    workspace = sdk.workspace(workspace_id)
    model = sdk.upload_model("fuzzmodel", ccfraud_onnx(), progress=False)
    pipeline = sdk.build_pipeline("fuzzpipe").add_model_step(model).deploy(replicas=1, cpus=0.5, timeout=180)
    deployment = pipeline.deployment()
    versions = pipeline.versions()
    inference = workspace.create_inference_client("fuzz")
    assay = pipeline.create_assay("fuzzassay", "output dense_1 0", baseline_values=[0.1, 0.2, 0.3, 0.4])

    orchestrations = Orchestrations(sdk, workspace_id)
    orchestration = orchestrations.upload(_zip({"main.py": ORCHESTRATION_MAIN}), name="fuzzorch", progress=False)
    task = orchestrations.run_once(orchestration["id"], {}, timeout=60)
    run = orchestrations.wait_for_run(task["id"], timeout=120)

    lineage = Lineage(sdk, workspace_id)
    project = lineage.create_project("fuzzproject")
    tabular = lineage.create_dataset(project["id"], "fuzzrows")
    rows = sample_rows(8, seed=2)
    lineage.upload_rows(tabular["id"], pa.table({"tensor": tensor_array(rows), "label": ["0"] * 6 + ["1"] * 2}))
    images = lineage.create_dataset(project["id"], "fuzzimages", kind="images")
    version = lineage.create_version(project["id"], version_title="fuzz")
    report = lineage.benchmark_classification("fuzzbench", [deployment.name], "label", "dense_1",
                                              dataset_id=tabular["id"])
    pipeline.infer(pd.DataFrame({"tensor": list(rows)}))  # a log to page through
    image = base64.b64encode(squares_png({(0, 1): 255}, size=40)).decode()
    prediction = admin.post("deployments/monitor", {
        "deployment": deployment.name, "image": image, "content_type": "image/png", "filename": "fuzz.png",
        "latency": 0.01, "height": 40, "width": 40,
        "prediction": {"detection_classes": [1], "detection_scores": [0.9]}})

    connection = sdk.create_connection("fuzzconn", "HTTP", {"url": "http://127.0.0.1:9/"})
    registry = workspace.create_registry("fuzzregistry", "http://127.0.0.1:9/")
    users = admin.post("users/query", {})["users"]
    user_id = next(key for key, user in users.items() if user.get("email") == secrets["admin_username"]
                   or user.get("username") == secrets["admin_username"])
    return {
        "workspace_id": workspace_id,
        "user_id": user_id, "admin_email": secrets["admin_username"],  # shielded only (never aimed)
        "client_id": inference["client_id"],
        "model_pk": model.model_pk, "model_version_id": model._record.get("id"),
        "model_name": model.name, "model_version": model.version, "model_sha": model.sha,
        "pipeline_pk": pipeline.id, "pipeline_name": pipeline.name,
        "pipeline_version_pk": versions[-1].get("id") if versions else None,
        "deployment_id": deployment.id, "deployment_name": deployment.name,
        "assay_id": assay.id,
        "orchestration_id": orchestration["id"], "orchestration_sha": orchestration["sha"],
        "task_id": task["id"], "run_id": run.get("run_id"),
        "project_id": project["id"], "dataset_ids": [tabular["id"], images["id"]],
        "version_id": version.get("id") or version.get("version_id"),
        "connection_id": connection.id, "connection_name": connection.name,
        "registry_id": registry.id,
        "report_id": report["id"], "prediction_id": prediction["id"],
    }
