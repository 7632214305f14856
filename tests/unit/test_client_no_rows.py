"""The SDK and the CLI refuse a request of no rows before sending, in the API's words (the no-rows 400 of every
format, shared/arrow_codec.NO_ROWS): records `[]`, `{}`, `[{}]`, a DataFrame, Arrow table or record batch of 0 rows,
a .json, .arrow or .parquet file of none (client/railyard_client/data.py). Before, `[{}]` and `{}` passed the CLI's
check (it signed in, then got the server's 400) and 0-row tables and files were sent (r3's finding, session 27)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from railyard_client import data
from railyard_client.errors import InvalidInput
from railyard_client.pipelines import infer_at

from shared.arrow_codec import NO_ROWS, to_ipc_file


class _Session:
    """Records what would be sent; answers one row of JSON or an Arrow table."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, method: str, path: str, **kwargs):
        self.sent.append(kwargs)
        if kwargs["headers"].get("Accept") == data.ARROW_FILE:
            return type("R", (), {"content": to_ipc_file(pa.table({"out.y": [1.0]}))})()
        return type("R", (), {"json": lambda self: [{"out": {"y": 1.0}}]})()


EMPTY = pa.table({"tensor": pa.array([], pa.list_(pa.float64(), 2))})


@pytest.mark.parametrize("rows, detail", [
    ([], "an empty list of records"),
    ({}, "records of no columns"),
    ([{}], "records of no columns"),
    ([{}, {}], "records of no columns"),
    (EMPTY, "an Arrow table of 0 rows"),
    (pa.RecordBatch.from_pylist([], EMPTY.schema), "an Arrow table of 0 rows"),
    (pd.DataFrame({"tensor": pd.Series([], dtype=object)}), "a DataFrame of 0 rows"),
], ids=["list", "object", "one-empty-record", "empty-records", "table", "batch", "dataframe"])
def test_sdk_infer_refuses_no_rows_before_sending(rows, detail):
    session = _Session()
    with pytest.raises(InvalidInput) as refused:
        infer_at(session, "d", "p", rows)
    assert f"{NO_ROWS} ({detail})" in str(refused.value)
    assert session.sent == []  # nothing sent


@pytest.mark.parametrize("name, content, detail", [
    ("rows.json", b"[{}]", "records of no columns"),
    ("rows.json", b"{}", "records of no columns"),
    ("rows.jsonl", b"{}\n{}\n", "records of no columns"),
    ("rows.arrow", to_ipc_file(EMPTY), "an Arrow table of 0 rows"),
    ("rows.parquet", None, "a Parquet file of 0 rows"),
], ids=["json-list", "json-object", "jsonl", "arrow", "parquet"])
def test_files_of_no_rows_are_refused_naming_the_file(tmp_path, name, content, detail):
    path = tmp_path / name
    if content is None:
        pq.write_table(EMPTY, path)
    else:
        path.write_bytes(content)
    session = _Session()
    with pytest.raises(InvalidInput) as refused:
        infer_at(session, "d", "p", str(path))
    assert str(refused.value) == f"{path}: {NO_ROWS} ({detail})"
    assert session.sent == []
    with pytest.raises(InvalidInput) as read:
        data.read_table(path)  # the CLI's read of .arrow / .parquet (and cli_lineage's upload) says the same
    assert str(read.value) == str(refused.value)


@pytest.mark.parametrize("raw", [b"[{}]", b"{}", b"[{}, {}]", b"{}\n{}\n"], ids=["list", "object", "two", "lines"])
def test_the_clis_json_check_refuses_records_of_no_keys(raw):
    with pytest.raises(InvalidInput) as refused:
        data.inference_records(raw, "stdin")
    assert str(refused.value) == f"stdin: {NO_ROWS} (records of no columns)"


def test_records_of_differing_keys_keep_their_own_message_and_rows_are_still_sent():
    with pytest.raises(InvalidInput, match="record 1 has different columns than record 0"):
        data.inference_records(json.dumps([{}, {"x": 1}]).encode())
    session = _Session()
    assert infer_at(session, "d", "p", [{"x": 1.0}]) == [{"out": {"y": 1.0}}]
    assert infer_at(session, "d", "p", pa.table({"x": [1.0]})).num_rows == 1
    assert len(session.sent) == 2


class _Uploads:
    """A session for Lineage: records what would be sent and answers the dataset's info."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, method: str, path: str, **kwargs):
        self.sent.append((path, kwargs))
        return type("R", (), {"json": lambda self: {"id": 7, "rows": 1}})()


@pytest.mark.parametrize("rows, detail", [
    (EMPTY, "an Arrow table of 0 rows"),
    (pa.RecordBatch.from_pylist([], EMPTY.schema), "an Arrow table of 0 rows"),
    (pd.DataFrame({"x": pd.Series([], dtype=float)}), "a DataFrame of 0 rows"),
], ids=["table", "batch", "dataframe"])
def test_upload_rows_refuses_no_rows_before_sending(rows, detail):
    """Lineage.upload_rows sent a 0-row Arrow table (answered the gateway's no-rows 400 after the upload went) and
    could not take a record batch; a DataFrame of none was already refused. `datasets upload` reads files with
    read_table, which refuses them first (test_files_of_no_rows_are_refused_naming_the_file)."""
    from railyard_client.lineage import Lineage

    session = _Uploads()
    lineage = Lineage(type("Client", (), {"_session": session})(), 3)
    with pytest.raises(InvalidInput) as refused:
        lineage.upload_rows(7, rows)
    assert str(refused.value) == f"{NO_ROWS} ({detail})"
    assert session.sent == []
    one = pa.table({"x": [1.0]})
    assert lineage.upload_rows(7, one) == {"id": 7, "rows": 1}
    assert lineage.upload_rows(7, one.to_batches()[0], replace=True) == {"id": 7, "rows": 1}
    assert [(path, kwargs["params"]["mode"]) for path, kwargs in session.sent] == [
        ("/v1/api/datasets/upload_rows", "append"), ("/v1/api/datasets/upload_rows", "replace")]
