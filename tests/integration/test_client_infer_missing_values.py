"""A DataFrame holding NaN (pandas' missing value) sent to a model that takes no missing values: pyarrow's
conversion (pa.Table.from_pandas) carries each NaN as an Arrow null, and the API refused the rows with "column
'tensor': null values" (a NaN nobody sent as null, no row, nothing to do). The SDK now adds to the API's 400 which
rows of the column hold them and what to do (railyard_client.data.explain_missing, called by infer_at); what the API
refuses is unchanged (a Python step, which gets the rows as a DataFrame, takes them). JSON records holding NaN or
Infinity get the rows and the column in the API's own message (services/engine/runtimes.py, non_finite_rows)."""

from __future__ import annotations

import json
import math

import httpx
import pandas as pd
import pyarrow as pa
import pytest
from railyard_client.errors import InvalidInput, InvalidRequest

from tests.integration.conftest import post, sdk_client
from tests.integration.test_pipelines import _deploy_definition, _upload_bytes
from tests.models import ccfraud_onnx

pytestmark = pytest.mark.integration


def test_the_apis_refusal_of_missing_values_names_the_rows_and_what_to_do(stack, alice):
    client = sdk_client(stack, alice)
    try:
        workspace = client.current_workspace()
        version = workspace.upload_model("ccfraud", ccfraud_onnx())
        pipeline = workspace.build_pipeline("holes").add_model_step(version).deploy()
        good = [0.1] * 29
        frame = pd.DataFrame({"tensor": [good, good[:5] + [math.nan] + good[6:], good, good[:-1] + [math.nan]]},
                             index=[10, 11, 12, 13])
        with pytest.raises(InvalidRequest) as refused:
            pipeline.infer(frame)
        message = str(refused.value)
        assert not isinstance(refused.value, InvalidInput)  # the API's refusal (sent), not the SDK's own
        assert refused.value.status == 400 and refused.value.code == "invalid_request", message
        assert "column 'tensor': null values" in message, message  # the API's words, kept
        assert "rows 1 and 3 (index 11, 13)" in message, message
        assert "inside the tensor" in message and "frame.drop(index=[11, 13])" in message, message
        # an Arrow table holding NaN (a value, not a null): the API's NaN refusal, its rows named
        table = pa.table({"tensor": pa.array([good, good[:-1] + [math.inf]], pa.list_(pa.float64(), 29))})
        with pytest.raises(InvalidRequest) as refused:
            pipeline.infer(table)
        message = str(refused.value)
        assert "column 'tensor': NaN or infinite values" in message and "row 1" in message, message
        # JSON records holding NaN and Infinity (Python's json writes them): the API's own message names the rows
        # and the column (it named the column only, and the SDK finds rows for frames and tables alone)
        body = json.dumps([{"tensor": good}, {"tensor": good[:3] + [math.nan] + good[4:]}, {"tensor": good},
                           {"tensor": good[:-1] + [-math.inf]}])
        answer = httpx.post(pipeline.url(), content=body, timeout=60, headers={
            "Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request", answer.text
        assert answer.json()["msg"] == ("column 'tensor': NaN or infinite values in rows 1 and 3 (counted from 0)"), \
            answer.text
        assert len(pipeline.infer(frame.iloc[[0, 2]])) == 2  # the other rows are taken
        pipeline.undeploy()
    finally:
        client.close()


STEP_DROPS_FIRST_ROW = b'''
import pandas as pd

def wallaroo_json(data: pd.DataFrame):
    return {"tensor": [list(row) for row in data["tensor"]][1:]}
'''


def test_nan_rows_after_a_python_step_that_dropped_a_row_are_said_to_be_the_steps(stack, alice):
    """A model after a Python step that returned fewer rows than the request: the NaN's row is the step's, said so
    (services/engine/replica.py, Replica.run); before session 30 the message named it as if it were the request's
    (row 1 here, where the request's NaN is in row 2)."""
    _upload_bytes(stack, alice, "ccfraud", ccfraud_onnx())
    uploaded = httpx.post(f"{stack.api}/models/upload_stream", files={"file": ("dropfirst.py", STEP_DROPS_FIRST_ROW)},
                          data={"name": "dropfirst", "workspace_id": alice.workspace_id, "framework": "python"},
                          headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    steps = [{"ModelInference": {"models": [{"name": name}]}} for name in ("dropfirst", "ccfraud")]
    deployment, url, pipeline = _deploy_definition(stack, alice, "stepholes", {"steps": steps})
    try:
        good = [0.1] * 29
        headers = {"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"}
        body = json.dumps([{"tensor": good}, {"tensor": good}, {"tensor": good[:3] + [math.nan] + good[4:]}])
        answer = httpx.post(url, content=body, timeout=60, headers=headers)
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request", answer.text
        assert answer.json()["msg"] == ("column 'tensor': NaN or infinite values in row 1 of the 2 rows step "
                                        "'dropfirst' returned (counted from 0; the request had 3)"), answer.text
        # rows the model takes: the pipeline's answer has 2 rows for the request's 3, which no answer can pair with
        # them (nor the log): the same 400 in every format (services/engine/handlers.py, rows_changed), where the
        # records and Arrow answers were a 500 "internal error" and OIP answered 2 rows (its record failing its log
        # batch)
        refusal = ("step 'dropfirst' returned 2 rows for a request of 3: a pipeline answers one row for each row of "
                   "the request (the answer and the inference log pair them); a step may drop or add rows for the "
                   "steps after it, but the last must give back 3 (to filter, mark rows instead of dropping them)")
        rows = pa.table({"tensor": pa.array([good] * 3, pa.list_(pa.float32(), 29))})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        arrow = "application/vnd.apache.arrow.stream"
        for content, media, accept in ((json.dumps([{"tensor": good}] * 3), "application/json", "application/json"),
                                       (sink.getvalue().to_pybytes(), arrow, arrow)):
            answer = httpx.post(url, content=content, timeout=60, headers={**headers, "Content-Type": media,
                                                                           "Accept": accept})
            assert answer.status_code == 400, answer.text
            assert (answer.json()["code"], answer.json()["msg"]) == ("invalid_request", refusal), answer.text
        oip = {"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [3, 29], "data": good * 3}]}
        answer = httpx.post(f"{stack.base_url}/v2/models/{deployment}/infer", json=oip, timeout=60,
                            headers={"Authorization": f"Bearer {alice.token}"})
        assert answer.status_code == 400 and answer.json()["code"] == "invalid_request", answer.text
        assert answer.json()["msg"] == refusal, answer.text
    finally:
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]})
