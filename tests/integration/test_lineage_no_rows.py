"""datasets/upload_rows refuses an Arrow body of 0 rows with the no-rows 400 that records `[]` and `{}` get
(services/gateway/lineage.py upload_rows, shared/arrow_codec.NO_ROWS), nothing staged or put: before, an Arrow
file or stream of a schema alone was accepted (200) and put (r3's finding, session 27)."""

from __future__ import annotations

import json
import uuid

import httpx
import pyarrow as pa
import pytest

from shared.arrow_codec import NO_ROWS, to_ipc_file, to_ipc_stream
from tests.integration.conftest import post
from tests.integration.test_lineage import ARROW_FILE, ok, upload_rows

pytestmark = pytest.mark.integration
ARROW_STREAM = "application/vnd.apache.arrow.stream"


def test_an_arrow_body_of_no_rows_is_refused_as_records_of_none_are(stack, alice):
    project = ok(post(stack, "projects/create", alice.token, {
        "workspace_id": alice.workspace_id, "name": f"norows-{uuid.uuid4().hex[:6]}"}))
    dataset = ok(post(stack, "datasets/create", alice.token,
                      {"project_id": project["id"], "name": "rows", "kind": "tabular"}))["id"]
    ok(upload_rows(stack, alice, dataset, to_ipc_file(pa.table({"x": [1.5], "y": ["a"]})), ARROW_FILE))
    empty = pa.table({"x": pa.array([], pa.float64()), "y": pa.array([], pa.string())})
    for body, kind, mode, detail in [
        (to_ipc_file(empty), ARROW_FILE, "append", "an Arrow table of 0 rows"),
        (to_ipc_stream(empty), ARROW_STREAM, "replace", "an Arrow table of 0 rows"),
        (b"[]", "application/json", "replace", "an empty list of records"),
        (b"{}", "application/json", "append", "records of no columns"),
    ]:
        refused = upload_rows(stack, alice, dataset, body, kind, mode=mode)
        assert refused.status_code == 400, (kind, mode, refused.text)
        assert refused.json()["code"] == "invalid_request"
        assert refused.json()["msg"] == f"{NO_ROWS} ({detail})", refused.text
    rows = httpx.post(f"{stack.api}/datasets/get_rows", json={"dataset_id": dataset}, timeout=30,
                      headers={"Authorization": f"Bearer {alice.token}"})
    assert json.loads(rows.content) == [{"x": 1.5, "y": "a"}]  # nothing appended, nothing replaced
