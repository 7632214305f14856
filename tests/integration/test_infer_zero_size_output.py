"""A model with a zero-size output dimension (tests/models.zero_size_onnx: `none` float[N,0] beside `total`
float[N,1]) through the real gateway, engine, object storage and log store: every format answers each row with an
empty list, the engine stores the rows as its own segment (a `.e.parquet` key: the write succeeds, the rows do not
go through the stream after a failed one), and get_logs reads the column back as empty lists. Before session 30 every
request failed (pyarrow refuses a fixed-size list of size 0 where the engine built the answer), and once that was
past, every segment write ("Invalid FIXED_LEN_BYTE_ARRAY length: 0")."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import from_ipc, to_ipc_stream
from tests.integration.conftest import post, query
from tests.integration.test_logs import ARROW as ARROW_FILE
from tests.integration.test_logs import get_logs, wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes
from tests.models import zero_size_onnx

pytestmark = pytest.mark.integration

NAME = "zerosize"
ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture
def zerosize(stack, alice):
    _upload_bytes(stack, alice, "zerosize", zero_size_onnx())
    definition = {"steps": [{"ModelInference": {"models": [{"name": "zerosize"}]}}]}
    deployment, url, pipeline = _deploy_definition(stack, alice, NAME, definition)
    yield {"deployment": deployment, "url": url}
    post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


def test_a_zero_size_output_is_answered_and_logged_as_empty_lists(stack, alice, zerosize):
    auth = {"Authorization": f"Bearer {alice.token}"}
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    with httpx.Client(timeout=60) as client:
        as_json = client.post(zerosize["url"], headers={**auth, "Content-Type": "application/json"},
                              content=json.dumps([{"x": row} for row in rows[:2].tolist()]))
        as_arrow = client.post(zerosize["url"], headers={**auth, "Content-Type": ARROW, "Accept": ARROW},
                               content=to_ipc_stream(pa.table({"x": rows[2:3].tolist()})))
        as_oip = client.post(f"{stack.base_url}/v2/models/{zerosize['deployment']}/infer",
                             headers={**auth, "Content-Type": "application/json"},
                             content=json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                             "data": rows[3].tolist()}]}))
    for response in (as_json, as_arrow, as_oip):
        assert response.status_code == 200, response.text
    assert [row["out"] for row in as_json.json()] == [{"total": [3.0], "none": []}, {"total": [12.0], "none": []}]
    answer = from_ipc(as_arrow.content)
    assert answer.column("out.none").to_pylist() == [[]] and answer.column("out.total").to_pylist() == [[21.0]]
    outputs = {out["name"]: out for out in as_oip.json()["outputs"]}
    assert outputs["none"]["shape"] == [1, 0] and outputs["none"]["data"] == []
    assert outputs["total"]["data"] == [30.0]

    logged = wait_rows(stack, alice, NAME, 4, timeout=30)
    assert sorted(row["out"]["total"][0] for row in logged) == [3.0, 12.0, 21.0, 30.0]
    assert [row["out"]["none"] for row in logged] == [[]] * 4
    assert all(row["metadata"]["dropped"] == [] for row in logged)  # the column was stored, not set aside
    page = get_logs(stack, alice, {"pipeline_id": NAME, "workspace_id": alice.workspace_id, "page_size": 100},
                    accept=ARROW_FILE)
    assert page.status_code == 200, page.text
    assert from_ipc(page.content).column("out.none").to_pylist() == [[]] * 4
    keys = [r["object_key"] for r in query(
        stack, "SELECT s.object_key FROM log_store.segments s JOIN log_store.pipelines p ON p.id = s.pipeline_id "
        "WHERE p.workspace_id = $1 AND p.name = $2", alice.workspace_id, NAME)]
    assert keys and all(key.endswith(".e.parquet") for key in keys), keys  # the engine's own writes
