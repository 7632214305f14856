"""An Arrow request whose tensor column is `list<double>` (the README's `pa.table({"tensor": [[0.1] * 29]})`, any
table of Python lists) is logged as the fixed-size lists JSON and OIP rows are (services/engine/replica.py narrow,
arrow_codec.fixed_shapes), through the real gateway, engine and log store: one get_logs call reads every row of the
pipeline, status All. Before, the Arrow rows were logged `list<float>` beside the JSON rows'
`fixed_size_list<float>[29]`, and the log's page ended at each schema change (x-iteration-status SchemaChange), so a
user's single read got part of the rows (j2's finding, session 27)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pytest

from shared.arrow_codec import from_ipc, to_ipc_stream
from tests.integration.conftest import post
from tests.integration.test_logs import ARROW as ARROW_FILE
from tests.integration.test_logs import get_logs, wait_rows
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes, onnx_outputs
from tests.models import ccfraud_onnx, sample_rows

pytestmark = pytest.mark.integration

NAME = "listinputs"
ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture
def listinputs(stack, alice):
    _upload_bytes(stack, alice, "ccfraud", ccfraud_onnx())
    definition = {"steps": [{"ModelInference": {"models": [{"name": "ccfraud"}]}}]}
    deployment, url, pipeline = _deploy_definition(stack, alice, NAME, definition)
    yield {"deployment": deployment, "url": url}
    post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})


def _listed(values: np.ndarray) -> bytes:
    table = pa.table({"tensor": values.tolist()})  # as a user writes it: list<double>
    assert table.schema.field("tensor").type == pa.list_(pa.float64())
    return to_ipc_stream(table)


def test_arrow_list_rows_and_json_rows_read_back_in_one_get_logs_call(stack, alice, listinputs):
    from services.gateway.inference import NARROW_MIN_ROWS

    url = listinputs["url"]
    oip_url = f"{stack.base_url}/v2/models/{listinputs['deployment']}/infer"
    auth = {"Authorization": f"Bearer {alice.token}"}
    as_json, as_arrow = {**auth, "Content-Type": "application/json"}, {**auth, "Content-Type": ARROW}
    readme = np.array([[0.1] * 29])
    small = sample_rows(2, seed=21)
    large = sample_rows(NARROW_MIN_ROWS + 2, seed=22)  # the gateway narrows it to list<float> first
    as_records = sample_rows(3, seed=23)
    sent = [readme, small, large, as_records, small]
    with httpx.Client(timeout=60) as client:
        answers = [
            client.post(url, content=_listed(readme), headers=as_arrow),
            client.post(url, content=_listed(small), headers=as_arrow),
            client.post(url, content=_listed(large), headers=as_arrow),
            client.post(url, content=json.dumps([{"tensor": row} for row in as_records.tolist()]), headers=as_json),
            client.post(oip_url, headers=as_json, content=json.dumps({"inputs": [
                {"name": "tensor", "shape": [2, 29], "datatype": "FP64", "data": small.reshape(-1).tolist()}]})),
        ]
    for response in answers:
        assert response.status_code == 200, response.text
    for response, values in zip(answers[:4], sent[:4], strict=True):
        rows = response.json()
        assert [row["in"]["tensor"] for row in rows] == values.tolist()  # the answer echoes the request as sent
        assert np.allclose([row["out"]["dense_1"] for row in rows], onnx_outputs(values.astype(np.float32)),
                           atol=1e-6)

    logged = sum(len(values) for values in sent)
    wait_rows(stack, alice, NAME, logged)
    page = get_logs(stack, alice, {"pipeline_id": NAME, "workspace_id": alice.workspace_id, "order": "Asc",
                                   "page_size": 10_000}, accept=ARROW_FILE)
    assert page.status_code == 200, page.text
    assert page.headers["x-iteration-status"] == "All", page.headers  # old code: SchemaChange after the Arrow rows
    table = from_ipc(page.content)
    assert table.num_rows == logged
    assert str(table.schema.field("in.tensor").type) == "fixed_size_list<item: float>[29]"
    tensors = np.array(table.column("in.tensor").to_pylist(), dtype=np.float32)
    assert np.array_equal(tensors, np.concatenate(sent).astype(np.float32))  # what the model was given, in order
