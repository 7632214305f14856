"""A script that infers through the SDK (DataFrames) and through the HTTP API (pandas-records JSON, seed 001's
requests) on one pipeline version reads its logs as the guide does, one `pipelines/get_logs` call: every row comes
back (`x-iteration-status: All`). The SDK sent a DataFrame's tensor column as an Arrow list while the API's JSON
reader makes a fixed-size list of the same rows; the log store keeps them as two schemas and ends a page at each
change, so the guide's single read got the rows down to the first change with `SchemaChange`."""

from __future__ import annotations

import json
import time

import pandas as pd
import pyarrow as pa
import requests
from railyard_client import data

from tests.integration.conftest import sdk_client
from tests.models import ccfraud_onnx


def test_sdk_and_json_inferences_read_back_in_one_log_page(stack, alice, tmp_path):
    wl = sdk_client(stack, alice)
    workspace = wl.current_workspace()
    version = workspace.upload_model("ccfraud", ccfraud_onnx())
    pipeline = workspace.build_pipeline("mixed").add_model_step(version).deploy()
    pipeline.infer(pd.DataFrame({"tensor": [[0.1] * 29]}))
    url = wl.request("admin/get_pipeline_external_url",
                     {"workspace_id": workspace.id, "pipeline_name": "mixed"})["url"]
    headers = wl.auth.auth_header()
    headers["Content-Type"] = "application/json; format=pandas-records"
    assert requests.post(url, json=[{"tensor": [0.2] * 29}], headers=headers, timeout=60).status_code == 200
    pipeline.infer(pd.DataFrame({"tensor": [[0.3] * 29, [0.4] * 29]}))
    (tmp_path / "rows.json").write_text(json.dumps([{"tensor": [0.5] * 29}]))
    pipeline.infer(str(tmp_path / "rows.json"))  # a .json file: its records, sent as Arrow

    deadline = time.monotonic() + 30  # the log store writes after the answer
    while True:
        response = requests.post(f"{stack.base_url}/v1/api/pipelines/get_logs", headers=wl.auth.auth_header(),
                                 json={"pipeline_id": "mixed", "workspace_id": workspace.id}, timeout=60)
        rows = pd.DataFrame.from_records(response.json())
        if len(rows) == 5 or response.headers["x-iteration-status"] != "All" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response.headers["x-iteration-status"] == "All" and "x-iteration-cursor" not in response.headers
    assert sorted(round(row["tensor"][0], 1) for row in rows["in"]) == [0.1, 0.2, 0.3, 0.4, 0.5]
    pipeline.undeploy()
    wl.close()


def test_only_rectangular_list_columns_become_fixed_size():
    table = data.tensor_lists(pa.table({
        "tensor": [[0.1, 0.2], [0.3, 0.4]], "nested": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "n": [1, 2],
        "ragged": [[1.0], [1.0, 2.0]], "words": [["a", "b"], ["c", "d"]], "holes": [[1.0, 2.0], None],
        "empty": pa.array([[], []], pa.list_(pa.float64()))}))
    assert table.schema.field("tensor").type == pa.list_(pa.float64(), 2)
    assert table.schema.field("nested").type == pa.list_(pa.list_(pa.int64(), 2), 2)
    assert table.column("nested").to_pylist() == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    assert table.schema.field("words").type == pa.list_(pa.string(), 2)  # as the API's reader makes them too
    for name, kind in (("n", pa.int64()), ("ragged", pa.list_(pa.float64())), ("holes", pa.list_(pa.float64())),
                       ("empty", pa.list_(pa.float64()))):
        assert table.schema.field(name).type == kind, name
