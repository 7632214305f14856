"""Odd files in datasets, through the gateway: an empty file in a files dataset (a YOLO label file of an image
without objects) is a file like any other, an empty image is not; `.` and `..` are no file names (the CLI's
`files --download` refused a whole dataset holding one); downloads name their file."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import httpx
import pytest

from tests.integration.conftest import post
from tests.integration.test_lineage import ok, upload_file, upload_workspace_file

pytestmark = pytest.mark.integration


def project_with(stack, account, *kinds: str) -> tuple[dict, list[dict]]:
    project = ok(post(stack, "projects/create", account.token, {
        "workspace_id": account.workspace_id, "name": f"odd-{uuid.uuid4().hex[:6]}"}))
    return project, [ok(post(stack, "datasets/create", account.token, {
        "project_id": project["id"], "name": kind, "kind": kind})) for kind in kinds]


def names(stack, account, dataset_id: int) -> list[str]:
    listed = ok(post(stack, "datasets/list_files", account.token, {"dataset_id": dataset_id}))
    return [f["name"] for f in listed["files"]]


def test_an_empty_file_is_a_file_and_an_empty_image_is_refused(stack, alice):
    project, (files, images) = project_with(stack, alice, "files", "images")
    stored = ok(upload_file(stack, alice, files["id"], "img7.txt", b""))  # was 400 "the uploaded file is empty"
    assert stored["size"] == 0 and stored["sha256"] == hashlib.sha256(b"").hexdigest()
    download = post(stack, "datasets/download_file", alice.token, {"dataset_id": files["id"], "name": "img7.txt"})
    assert download.status_code == 200 and download.content == b""
    version = ok(post(stack, "projects/create_version", alice.token, {"project_id": project["id"]}))
    assert ok(post(stack, "projects/verify_version", alice.token, {"version_id": version["id"]}))["ok"] is True
    saved = post(stack, "datasets/download_file", alice.token, {"dataset_id": files["id"], "name": "img7.txt",
                                                                 "version_id": version["id"]})
    assert saved.status_code == 200 and saved.content == b""

    refused = upload_file(stack, alice, images["id"], "blank.png", b"")
    assert refused.status_code == 400 and refused.json() == {
        "code": "invalid_request", "msg": "the uploaded file is empty: an images dataset takes images"}
    assert names(stack, alice, images["id"]) == []


def test_dot_names_are_refused_so_every_dataset_downloads(stack, alice, tmp_path, monkeypatch):
    _, (files,) = project_with(stack, alice, "files")
    ok(upload_file(stack, alice, files["id"], "a.txt", b"a"))
    for name in (".", ".."):
        refused = upload_file(stack, alice, files["id"], name, b"x")
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "invalid_request" and repr(name) in refused.json()["msg"]
    assert names(stack, alice, files["id"]) == ["a.txt"]

    # the CLI downloads the dataset (it refused all of it when one file was named '..')
    main = cli_as(stack, alice, tmp_path, monkeypatch)
    assert main(["datasets", "files", str(files["id"]), "--download", str(tmp_path / "out"), "--json"]) == 0
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"a"


def test_downloads_name_their_file(stack, alice):
    _, (files,) = project_with(stack, alice, "files")
    ok(upload_file(stack, alice, files["id"], 'r\u00e9sum\u00e9 "v2".pdf', b"%PDF-1.4"))
    download = post(stack, "datasets/download_file", alice.token,
                    {"dataset_id": files["id"], "name": 'r\u00e9sum\u00e9 "v2".pdf'})
    assert download.status_code == 200 and download.headers["content-type"] == "application/pdf"
    assert download.headers["content-disposition"] == (
        "attachment; filename=\"r_sum_ _v2_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.pdf")

    ok(upload_workspace_file(stack, alice, alice.workspace_id, "/runs/1/best.onnx", b"onnx"))
    download = httpx.post(f"{stack.api}/files/download", json={"workspace_id": alice.workspace_id,
                                                               "path": "/runs/1/best.onnx"},
                          headers={"Authorization": f"Bearer {alice.token}"}, timeout=30)
    assert download.status_code == 200 and download.content == b"onnx"
    assert download.headers["content-disposition"] == "attachment; filename=\"best.onnx\"; filename*=UTF-8''best.onnx"
    assert json.loads(post(stack, "files/get_info", alice.token, {
        "workspace_id": alice.workspace_id, "path": "/runs/1/best.onnx"}).text)["size"] == 4


def cli_as(stack, account, tmp_path, monkeypatch):
    from railyard_client.cli import main

    from tests.integration.conftest import PASSWORD

    for key in [k for k in os.environ if k.startswith("RAILYARD_CLIENT")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RAILYARD_CLIENT_URL", stack.base_url)
    monkeypatch.setenv("RAILYARD_CLIENT_USERNAME", account.email)
    monkeypatch.setenv("RAILYARD_CLIENT_PASSWORD", PASSWORD)
    monkeypatch.setenv("RAILYARD_CLIENT_SECRET", stack.secrets()["client_secret"])
    monkeypatch.setenv("RAILYARD_CLIENT_WORKSPACE", str(account.workspace_id))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return main


def test_the_cli_uploads_a_csv_as_rows_and_refuses_other_files_for_a_tabular_dataset(stack, alice, tmp_path,
                                                                                    monkeypatch, capsys):
    _, (table,) = project_with(stack, alice, "tabular")
    main = cli_as(stack, alice, tmp_path, monkeypatch)
    rows = tmp_path / "rows.csv"
    rows.write_text("x,label\n1.5,cat\n2.5,dog\n")
    picture = tmp_path / "cat.png"
    picture.write_bytes(b"\x89PNG not really")
    capsys.readouterr()
    # a .png among the files: refused before anything is sent (it was sent as a file: 400 "takes rows ... not files")
    assert main(["datasets", "upload", str(table["id"]), str(rows), str(picture), "--json"]) != 0
    assert f"{picture} is not a rows file: a tabular dataset takes rows from" in capsys.readouterr().err
    assert ok(post(stack, "datasets/get", alice.token, {"dataset_id": table["id"]}))["row_count"] == 0
    # the CSV alone: its rows (it was sent as a file and refused the same way)
    assert main(["datasets", "upload", str(table["id"]), str(rows), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["row_count"] == 2
    read = post(stack, "datasets/get_rows", alice.token, {"dataset_id": table["id"]})
    assert read.json() == [{"x": 1.5, "label": "cat"}, {"x": 2.5, "label": "dog"}]


def test_a_csv_the_cli_wrote_appends_with_the_dataset_s_types(stack, alice, tmp_path, monkeypatch, capsys):
    # `datasets read --out x.csv` writes 1.0 as '1' and quotes '01': read back by inference they were int64 columns,
    # and the append was refused ('appended rows must have the dataset's schema'), or '01' would have become 1
    _, (table,) = project_with(stack, alice, "tabular")
    main = cli_as(stack, alice, tmp_path, monkeypatch)
    first = tmp_path / "first.json"
    first.write_text(json.dumps([{"x": 1.5, "zip": "01234", "n": 3}, {"x": 2.0, "zip": "99", "n": 4}]))
    assert main(["datasets", "upload", str(table["id"]), str(first), "--json"]) == 0
    exported = tmp_path / "rows.csv"
    assert main(["datasets", "read", str(table["id"]), "--out", str(exported)]) == 0
    capsys.readouterr()
    assert main(["datasets", "upload", str(table["id"]), str(exported), "--json"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)[0]["row_count"] == 4
    rows = post(stack, "datasets/get_rows", alice.token, {"dataset_id": table["id"]}).json()
    assert rows[2:] == rows[:2] == [{"x": 1.5, "zip": "01234", "n": 3}, {"x": 2.0, "zip": "99", "n": 4}]

    # a value the dataset's column cannot hold is said naming the file, nothing sent
    bad = tmp_path / "bad.csv"
    bad.write_text("x,zip,n\nabc,1,2\n")
    assert main(["datasets", "upload", str(table["id"]), str(bad), "--json"]) != 0
    assert f"{bad} is not a readable csv file" in capsys.readouterr().err
    # a header line alone: no rows, and no types to give a new dataset's columns (they were stored as nulls)
    _, (empty,) = project_with(stack, alice, "tabular")
    header = tmp_path / "header.csv"
    header.write_text("x,zip,n\n")
    assert main(["datasets", "upload", str(empty["id"]), str(header), "--json"]) != 0
    assert f"{header} has a header line and no rows" in capsys.readouterr().err
    assert ok(post(stack, "datasets/get", alice.token, {"dataset_id": empty["id"]}))["rows_sha256"] is None


def test_replace_with_several_files_keeps_them_all(stack, alice, tmp_path, monkeypatch, capsys):
    # --replace replaced the rows with each file in turn: of 'a.csv b.csv' only b's rows were left
    _, (table,) = project_with(stack, alice, "tabular")
    main = cli_as(stack, alice, tmp_path, monkeypatch)
    old, a, b = tmp_path / "old.csv", tmp_path / "a.csv", tmp_path / "b.csv"
    old.write_text("x\n0.5\n")
    a.write_text("x\n1.5\n")
    b.write_text("x\n2.5\n")
    assert main(["datasets", "upload", str(table["id"]), str(old), "--json"]) == 0
    assert main(["datasets", "upload", str(table["id"]), str(a), str(b), "--replace", "--json"]) == 0
    assert post(stack, "datasets/get_rows", alice.token, {"dataset_id": table["id"]}).json() == [{"x": 1.5},
                                                                                                  {"x": 2.5}]
