"""datasets/upload_rows append takes the rows a user has in any of the documented forms (journey, session 28).

The same rows sent as pandas-records JSON (a `fixed_size_list<double>[29]` column, shared/arrow_codec) and by the
SDK or CLI (a DataFrame's `list<double>`) were two schemas: whichever came first, an append in the other form was a
400 whose message printed the dataset's schema with its pandas metadata and named no difference. Columns sent in
another order were refused the same way. Now a list column of another layout of the same values is cast to the
dataset's, columns are put in its order, and a refusal names the column and both types, changing nothing."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pyarrow as pa
import pytest

from shared.arrow_codec import to_ipc_file
from tests.integration.conftest import post
from tests.integration.test_lineage import ARROW_FILE, ok, upload_rows

pytestmark = pytest.mark.integration
JSON = "application/json"


def _dataset(stack, account) -> int:
    project = ok(post(stack, "projects/create", account.token, {
        "workspace_id": account.workspace_id, "name": f"layouts-{uuid.uuid4().hex[:6]}"}))
    return ok(post(stack, "datasets/create", account.token,
                   {"project_id": project["id"], "name": "rows", "kind": "tabular"}))["id"]


def _records(rows: list[dict]) -> bytes:
    return json.dumps(rows).encode()


def _dataframe(frame: pd.DataFrame) -> bytes:
    return to_ipc_file(pa.Table.from_pandas(frame, preserve_index=False))  # what Lineage.upload_rows sends


def _rows(stack, account, dataset: int) -> list[dict]:
    return post(stack, "datasets/get_rows", account.token, {"dataset_id": dataset}).json()


def test_records_append_to_dataframe_rows_and_the_other_way(stack, alice):
    first = _dataset(stack, alice)  # the SDK's DataFrame first, records appended
    ok(upload_rows(stack, alice, first, _dataframe(pd.DataFrame({"tensor": [[0.1] * 29], "label": [0]})),
                   ARROW_FILE))
    added = ok(upload_rows(stack, alice, first, _records([{"tensor": [0.5] * 29, "label": 1}]), JSON))
    assert added["row_count"] == 2
    second = _dataset(stack, alice)  # records first, the DataFrame appended with its columns in another order
    ok(upload_rows(stack, alice, second, _records([{"tensor": [0.1] * 29, "label": 0}]), JSON))
    added = ok(upload_rows(stack, alice, second,
                           _dataframe(pd.DataFrame({"label": [1], "tensor": [[0.5] * 29]})), ARROW_FILE))
    assert added["row_count"] == 2
    for dataset in (first, second):
        rows = _rows(stack, alice, dataset)
        assert [r["label"] for r in rows] == [0, 1]
        assert [r["tensor"] for r in rows] == [[0.1] * 29, [0.5] * 29]


def test_a_refused_append_names_the_difference_and_changes_nothing(stack, alice):
    dataset = _dataset(stack, alice)
    before = ok(upload_rows(stack, alice, dataset, _records([{"tensor": [0.1] * 29, "label": 0}]), JSON))
    for body, words in [
        (_records([{"tensor": [0.1] * 29}]), "missing 'label'"),
        (_records([{"tensor": [0.1] * 29, "label": 1, "extra": 2}]), "unexpected 'extra'"),
        (_records([{"tensor": [0.1] * 28, "label": 1}]),
         "'tensor' holds lists of other lengths than the dataset's fixed_size_list<double>[29]"),
        (_records([{"tensor": "x", "label": 1}]), "'tensor' is string, the dataset's is fixed_size_list<double>[29]"),
        (_records([{"tensor": [0.1] * 29, "label": 1.5}]), "'label' is double, the dataset's is int64"),
    ]:
        refused = upload_rows(stack, alice, dataset, body, JSON)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "invalid_request"
        message = refused.json()["msg"]
        assert message.startswith("appended rows must have the dataset's schema") and words in message, message
        assert "pandas" not in message, message  # the stored schema's metadata is no help to the sender
    after = ok(post(stack, "datasets/get", alice.token, {"dataset_id": dataset}))
    assert (after["row_count"], after["rows_sha256"]) == (1, before["rows_sha256"])


def test_the_same_values_in_another_type_are_appended_and_a_value_it_cannot_hold_is_refused(stack, alice):
    """review of ea23c9ba (session 28): only list columns were conformed. pandas 3 sends a DataFrame's str column as
    large_string and a category as a dictionary, JSON records make string, and JSON's 1 for 1.0 makes int64: a
    records append to any SDK dataset with a text column was still a 400. A value the dataset's type cannot hold
    (an integer past 2**53 in a double column, a 129th category of an int8 dictionary) is refused by Arrow's safe
    cast, naming it; a null in a column the dataset holds none in was Parquet's ArrowInvalid: a 500."""
    dataset = _dataset(stack, alice)
    frame = pd.DataFrame({"name": ["a"], "kind": pd.Categorical(["x"]), "amount": [1.5]})
    ok(upload_rows(stack, alice, dataset, _dataframe(frame), ARROW_FILE))
    added = ok(upload_rows(stack, alice, dataset, _records([{"name": "b", "kind": "y", "amount": 3}]), JSON))
    assert added["row_count"] == 2
    assert _rows(stack, alice, dataset) == [{"name": "a", "kind": "x", "amount": 1.5},
                                            {"name": "b", "kind": "y", "amount": 3.0}]
    for body, words in [
        (_records([{"name": "c", "kind": "z", "amount": 2**53 + 1}]),
         "'amount' (int64) holds values the dataset's double cannot hold"),
        (_records([{"name": "c", "kind": str(i), "amount": 1.0} for i in range(200)]),
         "more distinct values than its int8 index numbers"),
    ]:
        refused = upload_rows(stack, alice, dataset, body, JSON)
        assert refused.status_code == 400 and words in refused.json()["msg"], refused.text
    strict = _dataset(stack, alice)
    schema = pa.schema([pa.field("amount", pa.float64(), nullable=False)])
    ok(upload_rows(stack, alice, strict, to_ipc_file(pa.table({"amount": [1.0]}, schema=schema)), ARROW_FILE))
    refused = upload_rows(stack, alice, strict, to_ipc_file(pa.table({"amount": [None, 2.0]})), ARROW_FILE)
    assert refused.status_code == 400 and "'amount' holds 1 null(s)" in refused.json()["msg"], refused.text
    for name, count in [(dataset, 2), (strict, 1)]:
        assert ok(post(stack, "datasets/get", alice.token, {"dataset_id": name}))["row_count"] == count


async def test_rows_naming_a_column_twice_are_refused_and_nothing_is_stored(stack, alice):
    """A hand-made Arrow table may name a column twice (pandas and records JSON cannot): replace stored it, and the
    dataset's Parquet then answered every read and append 500 ("Multiple matches for FieldRef"). Refused in either
    mode with a 400 naming the names, the rows unchanged and the staged upload deleted as other refusals do."""
    import nats as nats_client

    from shared.objectstore import BUCKET_DATASETS, MinioObjectStore
    from shared.sealed import sealed_request

    dataset = _dataset(stack, alice)
    before = ok(upload_rows(stack, alice, dataset, _records([{"a": 1, "b": 2}]), JSON))
    twice = to_ipc_file(pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3]), pa.array(["x"])],
                                             names=["a", "b", "a", "b"]))
    for mode in ("replace", "append"):
        refused = upload_rows(stack, alice, dataset, twice, ARROW_FILE, mode=mode)
        assert refused.status_code == 400, (mode, refused.text)
        assert refused.json()["code"] == "invalid_request"
        assert refused.json()["msg"].startswith("rows name a column more than once ('a', 'b')"), refused.text
    after = ok(post(stack, "datasets/get", alice.token, {"dataset_id": dataset}))
    assert (after["row_count"], after["rows_sha256"]) == (1, before["rows_sha256"])
    assert _rows(stack, alice, dataset) == [{"a": 1, "b": 2}]  # still readable
    objects = MinioObjectStore(stack.settings().s3)  # on the bus, by a staged key of its own: deleted when refused
    key = f"staging/{alice.user_id}/{uuid.uuid4()}"
    await objects.put_bytes(BUCKET_DATASETS, key, twice)
    nc = await nats_client.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
    try:
        command = {"dataset_id": dataset, "staged_key": key, "mode": "replace"}
        reply = json.loads((await sealed_request(nc, "workflow_lineage.datasets.put_rows", json.dumps(command).encode(),
                                                 headers={"authorization": f"Bearer {alice.token}"}, timeout=30)).data)
    finally:
        await nc.close()
    assert not reply["ok"] and reply["status"] == 400, reply
    assert not await objects.exists(BUCKET_DATASETS, key)
