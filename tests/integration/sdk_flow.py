"""Run by test_client_sdk.py with the python of a virtual environment holding railyard-client ALONE (no server
code, no onnxruntime): the SDK's whole flow against the real stack. Prints one JSON object of what it saw.

Arguments: one JSON object (workspace_id, model_path, rows, parquet_path, url, client_secret, username).
Credentials come from RAILYARD_CLIENT_* variables, as a user's script would take them.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import railyard_client as rc
from railyard_client import Client

args = json.loads(sys.argv[1])
seen: dict = {"version": rc.__version__, "importable": []}
for module in ("shared", "services", "onnxruntime", "fastapi", "faststream"):
    try:
        importlib.import_module(module)
        seen["importable"].append(module)
    except ImportError:
        pass

client = Client()  # RAILYARD_CLIENT_URL / _USERNAME / _PASSWORD / _SECRET
workspace = client.set_current_workspace(args["workspace_id"])  # the shortcuts (get_deployment) act on it
version = workspace.upload_model("ccfraud", args["model_path"], progress=False)
seen["model"] = {"name": version.name, "status": version.status, "framework": version.framework,
                 "versions": len(workspace.model("ccfraud").versions())}

converted = workspace.upload_model("ccfraud-sklearn", open(args["pickle_path"], "rb").read(), framework="sklearn")
seen["converted"] = [converted.status, converted.to_dict()["runtime"]]  # bytes in, converted to ONNX, waited for

started = time.monotonic()
pipeline = workspace.build_pipeline("sdkpipeline").add_model_step(version).deploy(replicas=1, timeout=120)
seen["deploy_seconds"] = time.monotonic() - started
seen["status"] = pipeline.status()["status"]
seen["pipeline_versions"] = len(pipeline.versions())

seen["logs_before"] = [len(pipeline.logs()), pipeline.logs(arrow=True).num_rows]  # nothing logged yet

rows = np.asarray(args["rows"], dtype=np.float64)
frame = pd.DataFrame({"tensor": list(rows)})
answer = pipeline.infer(frame)
seen["frame_type"] = type(answer).__name__
seen["frame_columns"] = list(answer.columns)
seen["frame_out"] = np.stack(answer["out.dense_1"].to_numpy()).tolist()

table = pa.table({"tensor": pa.array(rows.tolist(), pa.list_(pa.float32(), 29))})
arrow_answer = pipeline.infer(table)
seen["arrow_type"] = type(arrow_answer).__name__
seen["arrow_out"] = arrow_answer.column("out.dense_1").to_pylist()

seen["parquet_type"] = type(pipeline.infer(args["parquet_path"])).__name__
seen["oip_out"] = pipeline.infer_v2({"tensor": rows.astype(np.float32)})["dense_1"].tolist()
seen["predict_type"] = type(client.get_deployment("sdkpipeline").predict(frame)).__name__
seen["records"] = pipeline.infer([{"tensor": rows[0].tolist()}])[0]["out"]

expected = 5 * len(rows) + 1
deadline = time.monotonic() + 30
logs = pipeline.logs(limit=None)
while len(logs) < expected and time.monotonic() < deadline:
    time.sleep(0.2)
    logs = pipeline.logs(limit=None)
seen["logs_type"] = type(logs).__name__
seen["logs_rows"] = len(logs)
seen["logs_columns"] = list(logs.columns)
seen["logs_first_in"] = np.asarray(logs["in.tensor"].iloc[0], dtype=np.float64).tolist()
newest = pipeline.logs(limit=2, arrow=True)
seen["logs_limited"] = [type(newest).__name__, newest.num_rows]
seen["logs_ordered"] = bool(logs["time"].is_monotonic_increasing)
seen["logs_time"] = str(logs["time"].dtype)

scoring = workspace.create_inference_client("scoring")  # an inference-only identity of this workspace
scorer = Client(args["url"], client_id=scoring["client_id"], client_secret=scoring["client_secret"])
scored = scorer.infer(pipeline.deployment().name, "sdkpipeline", frame)
seen["scorer"] = [type(scored).__name__, np.stack(scored["out.dense_1"].to_numpy()).tolist()]
try:
    scorer.workspaces()
except rc.APIError as exc:
    seen["scorer_refused"] = exc.status

assay = pipeline.create_assay("drift", "output dense_1 0", baseline_values=[0.1, 0.2, 0.3, 0.4], width="1 hours")
listed = pipeline.assays()
seen["assays"] = [[a.id, a.name] for a in listed] == [[assay.id, "drift"]]
assay.set_active(False)
seen["assay_results"] = assay.results()

copy = pipeline.copy("sdkcopy")
seen["copy"] = [copy.name, len(copy.versions()), copy.definition == pipeline.definition]

connection = client.create_connection(f"sdkconn-{args['workspace_id']}", "BIGQUERY", {"project": "railyard",
                                                                                 "token": "s3cret"})
workspace.add_connection(connection)
masked = [c.details for c in workspace.connections() if c.name == connection.name]
seen["connection"] = [client.connection(connection.name).details["token"], masked[0]["token"] != "s3cret"]
connection.remove_from_workspace(workspace.id)
connection.delete()

pipeline.undeploy()
seen["status_after"] = pipeline.status()["status"]

try:
    workspace.pipeline("no-such-pipeline")
except rc.NotFound as exc:
    seen["not_found"] = [exc.status, exc.code]
try:
    Client(args["url"], username=args["username"], password="not-the-password", client_secret=args["client_secret"])
except rc.AuthenticationError as exc:
    seen["wrong_password"] = [exc.status, exc.code]
seen["in_task"] = [rc.in_task(), rc.task_args()]
print(json.dumps(seen))
